"""Interactive explorers used by the lessons.

Each explorer keeps its logic here, where it is unit-tested headlessly: set a control's
``value`` and assert on the data that is drawn. In a notebook, ``display(explorer)`` shows
the controls above a figure that re-renders when a control moves.

:class:`SupportExplorer` (lesson 08) is imported on first use: it pulls in :mod:`dcn_lessons.analysis`, which the
early lessons do not need.
"""
from typing import Any

from dcn_lessons.widgets.base import FigureExplorer, render_png
from dcn_lessons.widgets.tour import OffsetExplorer

__all__ = ["FigureExplorer", "OffsetExplorer", "SupportExplorer", "render_png"]


def __getattr__(name: str) -> Any:
    if name == "SupportExplorer":
        from dcn_lessons.widgets.support import SupportExplorer

        return SupportExplorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
