"""The mechanism every explorer shares: controls -> redraw a matplotlib figure -> PNG image widget.

The figure is a plain :class:`matplotlib.figure.Figure` (no pyplot state, no interactive backend),
rendered to PNG bytes and shown in an :class:`ipywidgets.Image`. This works in any Jupyter front
end with ipywidgets and nothing else, and it makes the drawn data easy to test: subclasses keep
the artists they update as attributes.
"""
from __future__ import annotations

import io
from typing import Any

import ipywidgets as widgets
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def render_png(fig: Figure, dpi: int = 90) -> bytes:
    """Render a figure to PNG bytes with the Agg backend."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


class FigureExplorer:
    """Base class: a row of controls over a figure that is redrawn whenever a control changes.

    Subclasses build ``self.fig`` and their artists in ``setup()``, and update the artists from
    the current control values in ``update(**values)``. ``self.redraws`` counts renders, which
    lets tests check that moving a control redrew the figure.
    """

    dpi = 90

    def __init__(self, controls: dict[str, widgets.Widget], figsize: tuple[float, float] = (8.0, 4.0)) -> None:
        self.controls = dict(controls)
        self.fig = Figure(figsize=figsize, layout="constrained")
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.image.add_class("dcn-figure")
        self.redraws = 0
        self._hold = False
        self.setup()
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        rows = [widgets.HBox(list(self.controls.values())[i : i + 3]) for i in range(0, len(self.controls), 3)]
        self.widget = widgets.VBox([*rows, self.image])
        self.refresh()

    # -- to override -------------------------------------------------------------------------
    def setup(self) -> None:
        """Create axes and artists on ``self.fig``."""
        raise NotImplementedError

    def update(self, **values: Any) -> None:
        """Update the artists from the control values."""
        raise NotImplementedError

    # -- mechanism ---------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        return {name: control.value for name, control in self.controls.items()}

    def set(self, **values: Any) -> None:
        """Set several controls at once and redraw once."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise ValueError(f"unknown control(s) {sorted(unknown)}; this explorer has {sorted(self.controls)}")
        self._hold = True
        try:
            for name, value in values.items():
                self.controls[name].value = value
        finally:
            self._hold = False
        self.refresh()

    def refresh(self) -> None:
        self.update(**self.values())
        self.image.value = render_png(self.fig, dpi=self.dpi)
        self.redraws += 1

    def _on_change(self, change: dict[str, Any]) -> None:
        if not self._hold:
            self.refresh()

    def _ipython_display_(self) -> None:  # pragma: no cover - exercised in the browser test
        from IPython.display import display

        display(self.widget)
