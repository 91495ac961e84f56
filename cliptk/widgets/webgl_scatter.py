"""The explorer's plot for large ``N``: a jupyter-scatter (regl-scatterplot, WebGL) widget.

plotly's ``FigureWidget`` serialises every point's coordinates, colour and customdata as JSON and
re-validates them in Python; at 100k points that alone is seconds before anything is drawn.
jupyter-scatter (an anywidget on regl-scatterplot, made for millions of points) sends the points
as one binary array and draws them with WebGL, so :class:`cliptk.Explorer` uses it above
:data:`cliptk.viz.figures.LARGE_FIGURE` points in 2-D (``backend="auto"``; ``"plotly"`` /
``"webgl"`` force either). 3-D projections always use plotly (jupyter-scatter is 2-D only).

:class:`WebGLScatter` is only the plot: the same colours as :func:`cliptk.plot_embeddings`
(categories cycled through :data:`cliptk.viz.figures.PALETTE`, floats on viridis), a tooltip with
a few metadata columns, and the one event the explorer needs: jupyter-scatter reports clicks
and lasso selections alike as its ``selection`` trait, so a one-point selection is a click
(``on_click(row)``) and more points are a selection (``on_select(rows)``). Neighbours are
highlighted by selecting them from Python, which the handler recognises and ignores.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..data import ReIdDataset
from ..viz.figures import PALETTE, _categories, _colour_values, _is_continuous

__all__ = ["WebGLScatter", "available"]

#: the tooltip's columns, where the dataset has them (each is sent for every point)
TOOLTIP_COLUMNS = ("pid", "camid", "split")


def available() -> bool:
    """Whether jupyter-scatter can be imported (it is a cliptk dependency; a trimmed install may lack it)."""
    try:
        import jscatter  # noqa: F401
    except ImportError:
        return False
    return True


class WebGLScatter:
    """A 2-D jupyter-scatter plot of ``projection`` coloured like :func:`cliptk.plot_embeddings`.

    Args:
        projection: ``[N, 2]`` coordinates.
        dataset: the rows' dataset (tooltip and column colours), or ``None``.
        color_by: as in :func:`cliptk.plot_embeddings` (a column, ``"correct"``, an array, ``None``).
        embeddings: the high-dimensional rows (only for ``color_by="correct"``).
        on_click, on_select: called with a row (one point selected: a click) or the rows of a
            lasso selection (``[]`` when it is cleared).
        width, height: pixel size of the plot.

    Attributes:
        scatter: the ``jscatter.Scatter``; ``widget`` its anywidget, ``view`` what is displayed
            (the plot with its buttons).
    """

    def __init__(self, projection: np.ndarray, dataset: ReIdDataset | None, color_by: Any, *,
                 embeddings: np.ndarray | None = None, on_click: Callable[[int], Any] | None = None,
                 on_select: Callable[[np.ndarray], Any] | None = None, width: int = 700, height: int = 520):
        import jscatter

        p = np.asarray(projection, dtype=np.float32)
        if p.ndim != 2 or p.shape[1] != 2:
            raise ValueError(f"WebGLScatter draws 2-D projections; got shape {p.shape} (3-D uses plotly)")
        n = len(p)
        frame = pd.DataFrame({"x": p[:, 0], "y": p[:, 1]})
        cols = [c for c in TOOLTIP_COLUMNS if dataset is not None and c in dataset.table.columns]
        for c in cols:
            frame[c] = dataset.table[c].to_numpy()
        values, name = _colour_values(color_by, dataset, n, embeddings)
        colour: dict[str, Any] = {}
        if values is not None:
            key = "colour: " + (name or "value")
            if _is_continuous(values):
                frame[key] = np.nan_to_num(values.astype(np.float64), nan=np.nanmin(values) if np.isfinite(values).any() else 0.0)
                colour = dict(color_by=key, color_map="viridis")
            else:
                cats = [str(c) for c in _categories(values)]
                labels = pd.Series(values).astype(object).where(pd.notna(values), "nan").astype(str)
                frame[key] = pd.Categorical(labels, categories=cats)
                colour = dict(color_by=key, color_map={c: PALETTE[i % len(PALETTE)] for i, c in enumerate(cats)})
        self.scatter = jscatter.Scatter(x="x", y="y", data=frame, width=width, height=height,
                                        size=3 if n > 20_000 else 5, legend=False, **colour)
        self.scatter.tooltip(True, properties=[c for c in (cols + [k for k in frame.columns if k.startswith("colour: ")])])
        self.widget = self.scatter.widget
        self.view = self.scatter.show()
        self._on_click, self._on_select = on_click, on_select
        self._own: np.ndarray | None = None   # the rows last selected from Python (a highlight)
        self.widget.observe(self._changed, names=["selection"])

    def _changed(self, change: dict) -> None:
        """jupyter-scatter's ``selection`` changed: a click, a lasso, a clear, or our own highlight."""
        rows = np.asarray(change["new"] if change["new"] is not None else [], dtype=np.int64).ravel()
        if self._own is not None and np.array_equal(rows, self._own):
            return
        self._own = None
        if rows.size == 1:
            if self._on_click is not None:
                self._on_click(int(rows[0]))
        elif self._on_select is not None:
            self._on_select(rows)

    def highlight(self, rows: Sequence[int] | np.ndarray) -> None:
        """Select ``rows`` in the plot (jupyter-scatter outlines them) without calling the handlers."""
        own = np.asarray(rows, dtype=np.int64).ravel()
        self._own = own
        self.scatter.selection(own)
        # the widget may hand back the rows in its own dtype / order; remember what it holds now
        held = self.widget.selection
        self._own = np.asarray(held if held is not None else [], dtype=np.int64).ravel()

    def selection(self, rows: Sequence[int] | np.ndarray) -> None:
        """As a user's click or lasso: set the plot's selection and call the handler."""
        self._own = None
        self.scatter.selection(np.asarray(rows, dtype=np.int64).ravel())
