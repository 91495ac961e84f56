"""An interactive embedding explorer for Jupyter: click a point to see its image and nearest
neighbours, lasso or box-select to fill a thumbnail grid.

Built from a plotly ``FigureWidget`` (plotly >= 6.1 renders it through ``anywidget``) and
ipywidgets. What the current plotly does, and how :class:`Explorer` copes:

* callbacks are registered **per trace** and, for one click or selection, plotly calls every
  trace's callback, most of them with an **empty** point list: empty lists are ignored, and a
  selection is collected over all traces before the grid is filled;
* point indices are **per trace**: each trace's ``customdata[:, 0]`` holds the dataset rows
  (:func:`cliptk.viz.trace_rows`), so a trace-local index is mapped back to an image;
* hover labels cannot show images: hover shows the metadata, a click shows the image; above
  :data:`cliptk.viz.figures.LARGE_FIGURE` points hover shows only the row (the metadata of every
  point would be most of what the page is sent), and the click shows the rest.

Above :data:`cliptk.viz.figures.LARGE_FIGURE` points in 2-D the plot is a jupyter-scatter WebGL
widget instead (:mod:`cliptk.widgets.webgl_scatter`, ``backend="auto"``): plotly's FigureWidget
takes seconds to serialise and validate 100k points. The panels and methods are the same.

The handlers are plain methods (:meth:`Explorer.on_click`, :meth:`Explorer.on_selection`,
:meth:`Explorer.select`, :meth:`Explorer.show_neighbours`), so tests and scripts can drive the app
without a browser.

Example (skipped by the doctest run: it needs embeddings of a dataset with images, and a widget
is only seen in a notebook front end):
    >>> ex = ct.Explorer(emb, ds, k=8, color_by="team")   # doctest: +SKIP
    >>> ex                                 # shows the app                # doctest: +SKIP
    >>> ex.show_neighbours(42)             # same as clicking row 42      # doctest: +SKIP
"""
from __future__ import annotations

import html
import warnings
from typing import Any, Sequence

import ipywidgets as widgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .._util import as_rows, thumbnail_bytes, unit_rows
from ..data import ReIdDataset
from ..metrics import NeighbourIndex
from ..viz import ArrayLike, plot_embeddings, project, trace_rows
from ..viz.figures import LARGE_FIGURE, check_dataset
from .webgl_scatter import WebGLScatter, available

__all__ = ["Explorer"]

_SAME, _OTHER = "#1a9850", "#d73027"  # green: same identity, red: another identity


def _image_format(data: bytes) -> str:
    """The ``ipywidgets.Image`` format of encoded thumbnail bytes (WEBP, or JPEG where Pillow lacks it)."""
    return "jpeg" if data[:2] == b"\xff\xd8" else "webp"


class Explorer:
    """Embedding explorer: scatter + clicked image + its top-``k`` neighbours + a selection grid.

    Args:
        embeddings: ``[N, D]`` embeddings (neighbours are ranked by cosine similarity here).
        dataset: the :class:`ReIdDataset` of the rows (images, pids, hover metadata).
        projection: a precomputed ``[N, 2|3]`` projection; default :func:`cliptk.project` with
            ``method``, ``n_components`` and ``seed``.
        k: number of neighbours shown on click.
        color_by: as in :func:`cliptk.plot_embeddings` (``"pid"``, ``"team"``, ``"correct"``, an array ...).
        thumb_height: pixel height of the clicked image and neighbour thumbnails.
        grid_height: pixel height of the selection grid's thumbnails.
        max_grid: most thumbnails shown for a selection (the count of all is reported).
        backend: ``"plotly"`` (a ``FigureWidget``), ``"webgl"`` (jupyter-scatter, 2-D only) or
            ``"auto"``: webgl above :data:`cliptk.viz.figures.LARGE_FIGURE` points in 2-D when
            jupyter-scatter is installed, else plotly.

    Attributes:
        figure: the ``FigureWidget`` (a plain ``go.Figure`` if anywidget is missing: then clicks do
            nothing in the browser, but the methods still work); ``None`` with the webgl backend.
        scatter: the :class:`~cliptk.widgets.webgl_scatter.WebGLScatter` with the webgl backend, else ``None``.
        backend: the backend in use (``"plotly"`` or ``"webgl"``).
        widget: the whole app (an ``ipywidgets.VBox``); displaying the explorer displays it.
        query_box, neighbour_box, grid, status: the panels, for tests and custom layouts.
        selected: the rows of the current selection.
        last_neighbours: the table of the last :meth:`show_neighbours` call.

    Raises:
        ValueError: the dataset and embeddings have different row counts, ``k`` is not in
            ``[1, N - 1]``, or ``backend`` is unknown or ``"webgl"`` for a 3-D projection.
    """

    def __init__(self, embeddings: ArrayLike, dataset: ReIdDataset, projection: ArrayLike | None = None, k: int = 8, *,
                 color_by: str | ArrayLike | None = "pid", method: str = "umap", n_components: int = 2,
                 seed: int | None = 0, thumb_height: int = 96, grid_height: int = 64, max_grid: int = 60,
                 backend: str = "auto"):
        x = as_rows(embeddings, "embeddings", np.float32)
        n = x.shape[0]
        check_dataset(dataset, n)
        if not 1 <= k < n:
            raise ValueError(f"Explorer: k={k} must be in [1, {n - 1}] for {n} images")
        self.embeddings = unit_rows(x, "embeddings", np.float32)   # checked here: errors name "embeddings"
        self.index = NeighbourIndex(self.embeddings)   # a click: one product with its row, an exact top-k
        self.dataset = dataset
        self.k = k
        self.thumb_height, self.grid_height, self.max_grid = thumb_height, grid_height, max_grid
        self.projection = (project(x, method, n_components, seed=seed) if projection is None
                           else as_rows(projection, "projection", np.float32))
        self._selection_parts: dict[int, np.ndarray] = {}
        self._thumbs: dict[tuple[int, int], bytes] = {}
        self.selected = np.zeros(0, dtype=np.int64)
        self.last_neighbours: pd.DataFrame | None = None
        self.backend = self._pick_backend(backend, n, self.projection.shape[1])
        self.figure: Any = None
        self.scatter: WebGLScatter | None = None
        if self.backend == "webgl":
            self.scatter = WebGLScatter(self.projection, dataset, color_by, embeddings=x,
                                        on_click=self.show_neighbours, on_select=self.select)
            plot = self.scatter.view
        else:
            plot = self._plotly(x, dataset, color_by, n > LARGE_FIGURE)
        self.status = widgets.HTML("Click a point to see its image and nearest neighbours; "
                                   "lasso or box-select to fill the grid below.")
        self.query_box = widgets.VBox(layout=widgets.Layout(min_width="160px", padding="4px"))
        self.neighbour_box = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.grid = widgets.GridBox(layout=widgets.Layout(
            grid_template_columns=f"repeat(auto-fill, minmax({max(grid_height // 2, 40)}px, 1fr))", grid_gap="4px"))
        self.widget = widgets.VBox([
            widgets.HBox([plot, self.query_box]),
            self.status,
            widgets.HTML(f"<b>{k} nearest neighbours</b> (cosine similarity; "
                         f"<span style='color:{_SAME}'>green = same identity</span>, "
                         f"<span style='color:{_OTHER}'>red = another identity</span>)"),
            self.neighbour_box,
            widgets.HTML("<b>selection</b>"),
            self.grid,
        ])

    @staticmethod
    def _pick_backend(backend: str, n: int, dims: int) -> str:
        if backend not in ("auto", "plotly", "webgl"):
            raise ValueError(f"Explorer: backend={backend!r}; use 'auto', 'plotly' or 'webgl'")
        if backend == "webgl" and dims != 2:
            raise ValueError(f"Explorer: backend='webgl' draws 2-D projections only (this one has {dims} "
                             "components); use backend='plotly' or n_components=2")
        if backend == "auto":
            return "webgl" if n > LARGE_FIGURE and dims == 2 and available() else "plotly"
        return backend

    def _plotly(self, x: np.ndarray, dataset: ReIdDataset, color_by: Any, large: bool) -> Any:
        """The plotly plot (a ``FigureWidget`` with click / selection callbacks) and what to display."""
        fig = plot_embeddings(x, dataset, color_by, projection=self.projection, hover_columns=[] if large else None)
        fig.update_layout(dragmode="lasso", height=520, width=700, margin=dict(l=10, r=10, t=20, b=10))
        three = self.projection.shape[1] == 3
        ring = dict(size=14, color="rgba(0,0,0,0)", line=dict(width=2, color="black"))
        highlight = (go.Scatter3d(x=[], y=[], z=[], customdata=[], mode="markers", marker=ring, name="neighbours",
                                  hoverinfo="skip", showlegend=False) if three else
                     go.Scatter(x=[], y=[], customdata=[], mode="markers", marker=ring, name="neighbours",
                                hoverinfo="skip", showlegend=False))
        fig.add_trace(highlight)
        try:
            self.figure = go.FigureWidget(fig)
        except ImportError:  # plotly >= 6.1 needs anywidget for FigureWidget
            warnings.warn("Explorer: plotly's FigureWidget needs the 'anywidget' package (pip install anywidget); "
                          "showing a static figure: clicks and selections will not reach Python", stacklevel=3)
            self.figure = fig
            out = widgets.Output()
            with out:
                fig.show()
            return out
        for tr in self.figure.data:
            tr.on_click(self.on_click)
            tr.on_selection(self.on_selection)
            tr.on_deselect(self.on_deselect)
        return self.figure

    # --- display -----------------------------------------------------------------------------
    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # --- pure computation ----------------------------------------------------------------------
    def neighbours(self, index: int, k: int | None = None) -> pd.DataFrame:
        """The ``k`` most cosine-similar other images of row ``index`` (exact:
        :class:`cliptk.metrics.NeighbourIndex`, ties to the lower row).

        Returns:
            ``DataFrame`` with columns ``rank`` (1 = nearest), ``row``, ``similarity``, ``pid``,
            ``same_identity`` (same pid as the query; False for pid ``-1``).

        Raises:
            IndexError: ``index`` is not a row of the dataset.
        """
        index = self._check_row(index)
        k = self.k if k is None else k
        idx, sim = self.index.search([index], k)
        order, sims = idx[0], sim[0]
        pids = self.dataset.pids
        qpid = pids[index]
        return pd.DataFrame({"rank": np.arange(1, len(order) + 1), "row": order, "similarity": sims,
                             "pid": pids[order], "same_identity": (pids[order] == qpid) & (qpid >= 0)})

    # --- handlers --------------------------------------------------------------------------------
    def on_click(self, trace: Any, points: Any, state: Any = None) -> None:
        """plotly ``on_click`` callback: show the neighbours of the clicked point.

        Called once per trace for every click; traces that were not clicked get an empty
        ``points.point_inds`` and are ignored. ``points.point_inds`` are indices *within*
        ``trace``; its ``customdata`` maps them to dataset rows.
        """
        inds = list(getattr(points, "point_inds", []) or [])
        if not inds:
            return
        self.show_neighbours(int(trace_rows(trace)[inds[0]]))

    def on_selection(self, trace: Any, points: Any, selector: Any = None) -> None:
        """plotly ``on_selection`` callback (lasso / box): collect this trace's selected rows and,
        once the last trace has reported, fill the grid with all of them (:meth:`select`)."""
        inds = list(getattr(points, "point_inds", []) or [])
        rows = trace_rows(trace)[inds] if inds else np.zeros(0, dtype=np.int64)
        pos = self._trace_position(trace)
        if pos is None:  # a trace not in this figure: take its points alone
            self.select(rows)
            return
        self._selection_parts[pos] = rows
        if pos == len(self.figure.data) - 1:  # plotly reports traces in order: this is the last
            parts = [self._selection_parts.get(i, np.zeros(0, dtype=np.int64)) for i in range(len(self.figure.data))]
            self._selection_parts = {}
            self.select(np.concatenate(parts))

    def on_deselect(self, trace: Any, points: Any = None) -> None:
        """plotly ``on_deselect`` callback (double click): empty the grid."""
        self._selection_parts = {}
        self.select([])

    def select(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Show the thumbnails of dataset rows ``indices`` in the grid (first ``max_grid`` of them).

        Duplicates are dropped (first occurrence kept). Returns the selected rows.

        Raises:
            IndexError: an index is not a row of the dataset.
        """
        rows = np.asarray(indices, dtype=np.int64).ravel()
        rows = rows[np.sort(np.unique(rows, return_index=True)[1])] if rows.size else rows
        if rows.size and (rows.min() < 0 or rows.max() >= len(self.dataset)):
            bad = int(rows[(rows < 0) | (rows >= len(self.dataset))][0])
            self._check_row(bad)
        self.selected = rows
        pids = self.dataset.pids
        cards = []
        for r in rows[: self.max_grid]:
            label = f"pid {pids[r]}" if pids[r] >= 0 else "unknown"
            cards.append(self._card(int(r), self.grid_height, f"<small>{html.escape(label)}</small>", None))
        self.grid.children = cards
        shown = f" (showing the first {self.max_grid})" if len(rows) > self.max_grid else ""
        n_ids = len(np.unique(pids[rows])) if rows.size else 0
        self.status.value = f"{len(rows)} selected from {n_ids} identities{shown}." if rows.size else "Nothing selected."
        return rows

    def show_neighbours(self, index: int) -> pd.DataFrame:
        """Show row ``index``'s image and its ``k`` nearest neighbours (thumbnail, similarity,
        same / other identity) and ring them in the plot. Returns :meth:`neighbours`' table."""
        index = self._check_row(index)
        table = self.neighbours(index)
        self.last_neighbours = table
        t = self.dataset.table
        meta = [f"<b>row {index}</b>", f"pid {t['pid'].iat[index]}", f"camid {t['camid'].iat[index]}",
                html.escape(str(t["split"].iat[index]))]
        if t["caption"].iat[index]:
            meta.append(f"<i>{html.escape(str(t['caption'].iat[index]))}</i>")
        self.query_box.children = [self._card(index, 2 * self.thumb_height, "<br>".join(meta), None)]
        self.neighbour_box.children = [
            self._card(int(r.row), self.thumb_height,
                       f"#{r.rank} &nbsp;{r.similarity:.3f}<br>{'same id' if r.same_identity else 'other id'} "
                       f"(pid {r.pid})", bool(r.same_identity))
            for r in table.itertuples()]
        rows = np.concatenate([[index], table["row"].to_numpy()])
        if self.scatter is not None:
            self.scatter.highlight(rows)
        else:
            self._ring(rows)
        same = int(table["same_identity"].sum())
        self.status.value = f"Row {index}: {same} of {len(table)} nearest neighbours share its identity."
        return table

    def _ring(self, rows: np.ndarray) -> None:
        """Ring ``rows`` in the plotly figure (its last trace)."""
        hl = self.figure.data[-1]
        p = self.projection[rows]
        update = dict(x=p[:, 0], y=p[:, 1], customdata=rows[:, None])
        if p.shape[1] == 3:
            update["z"] = p[:, 2]
        hl.update(**update)

    # --- helpers -------------------------------------------------------------------------------
    def _check_row(self, index: Any) -> int:
        i = int(index)
        if not 0 <= i < len(self.dataset):
            raise IndexError(f"row {index} is not in dataset {self.dataset.name!r} (rows 0..{len(self.dataset) - 1})")
        return i

    def _trace_position(self, trace: Any) -> int | None:
        for i, t in enumerate(self.figure.data):
            if t is trace or (getattr(t, "uid", None) is not None and t.uid == getattr(trace, "uid", object())):
                return i
        return None

    def _thumbnail(self, row: int, height: int) -> bytes:
        key = (row, height)
        if key not in self._thumbs:
            img = self.dataset[row]
            self._thumbs[key] = b"" if img is None else thumbnail_bytes(img, height, "WEBP", 80)
        return self._thumbs[key]

    def _card(self, row: int, height: int, label_html: str, same: bool | None) -> widgets.VBox:
        """A thumbnail with a label; bordered green/red when ``same`` is True/False."""
        data = self._thumbnail(row, height)
        image = widgets.Image(value=data, format=_image_format(data),
                              layout=widgets.Layout(height=f"{height}px", width="auto", object_fit="contain"))
        border = "1px solid #ccc" if same is None else f"3px solid {_SAME if same else _OTHER}"
        return widgets.VBox([image, widgets.HTML(label_html)],
                            layout=widgets.Layout(border=border, padding="2px", margin="2px", align_items="center"))
