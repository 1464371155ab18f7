"""Interactive explorers used by the lessons.

Each explorer keeps its logic here, where it is unit-tested headlessly: set a control's
``value`` and assert on the data that is drawn. In a notebook, ``display(explorer)`` shows
the controls above a figure that re-renders when a control moves.
"""
from dcn_lessons.widgets.base import FigureExplorer, render_png
from dcn_lessons.widgets.tour import OffsetExplorer

__all__ = ["FigureExplorer", "OffsetExplorer", "render_png"]
