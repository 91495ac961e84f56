"""An interactive pair picker for similarity explanations (ipywidgets + plotly).

:class:`CamPairPicker` shows a query from one split of a dataset and a gallery image from another,
with their Score-CAM (or Grad-CAM) maps side by side (:func:`cliptk.explain.similarity_cam`). The
gallery list is ordered by similarity to the query (rank 1 first, right matches ticked), and a rank
slider walks down it. Other widgets drive it through :meth:`CamPairPicker.select` (e.g. on a click
in an embedding plot), and :meth:`CamPairPicker.on_result` tells them what was explained.

Example (skipped by the doctests: it needs a dataset with query and gallery splits, e.g.
``ct.players()``, and a notebook to show the widget in):
    >>> picker = CamPairPicker(model, ds)            # doctest: +SKIP
    >>> picker        # shows the widget in a notebook  # doctest: +SKIP
    >>> picker.select(query=3, gallery=120)          # doctest: +SKIP
"""
from __future__ import annotations

from typing import Callable

import ipywidgets as widgets
import numpy as np
from IPython.display import display

from ..data import ReIdDataset
from ..embed import embed
from ..explain import CamConfig, SimilarityCam, similarity_cam

__all__ = ["CamPairPicker"]


class CamPairPicker:
    """Pick a query and a gallery image of ``dataset`` and see the maps of both.

    Args:
        model: a :class:`cliptk.ClipModel`.
        dataset: a :class:`cliptk.ReIdDataset` holding both splits.
        query_split, gallery_split: split names (``dataset.split_names`` lists them).
        rank_gallery: order the gallery by similarity to the query (embeds both splits once with
            :func:`cliptk.embed`); otherwise keep dataset order.
        symmetric: start with B's map shown too.
        config, options: a :class:`cliptk.explain.CamConfig` and/or its fields. Without
            ``config``, Score-CAM takes cliptk's fast path (``fast=True``) with the config's
            default ``top_channels="auto"``: exact on cliptk's tiny towers and on a CUDA device,
            approximate (channel groups) for a large tower on the CPU, where an exact map takes
            minutes (:meth:`cliptk.explain.CamConfig.for_model`). ``top_channels=None`` is exact
            everywhere, ``top_channels=16`` always approximate, ``fast=False`` the library's
            Score-CAM. Grad-CAM (the method toggle) always runs the library and is always exact.
            No progress bar (``progress=False``): the status line says when a map is being made.

    Attributes:
        result: the last :class:`SimilarityCam` (``None`` before the first).
        figure: the last plotly figure.
        widget: the ``ipywidgets.VBox`` (displayed when the picker is the cell's value).
        query, gallery, rank, method, symmetric: the control widgets (values are dataset row indices).

    Raises:
        KeyError: a split is missing (the message lists the dataset's splits).
    """

    def __init__(self, model, dataset: ReIdDataset, *, query_split: str = "query", gallery_split: str = "gallery",
                 rank_gallery: bool = True, symmetric: bool = True, config: CamConfig | dict | None = None,
                 **options):
        self.model, self.dataset = model, dataset
        if config is None:
            options.setdefault("fast", True)
            options.setdefault("progress", False)   # the status line says "explaining…"
        self.config = CamConfig.from_options(config, **{k: v for k, v in options.items() if k != "method"})
        splits = dataset.splits
        self.query_rows = np.flatnonzero(splits == query_split)
        self.gallery_rows = np.flatnonzero(splits == gallery_split)
        for name, rows in ((query_split, self.query_rows), (gallery_split, self.gallery_rows)):
            if len(rows) == 0:
                raise KeyError(f"CamPairPicker: dataset {dataset.name!r} has no split {name!r}; "
                               f"its splits are {dataset.split_names}")
        self._sim: np.ndarray | None = None
        if rank_gallery:
            q = embed(model, dataset.select(self.query_rows), progress=False)
            g = embed(model, dataset.select(self.gallery_rows), progress=False)
            self._sim = (q @ g.T).numpy()
        self.result: SimilarityCam | None = None
        self.figure = None
        self._cache: dict[tuple, SimilarityCam] = {}
        self._callbacks: list[Callable[[SimilarityCam], None]] = []
        self._hold = False

        pids = dataset.pids
        self.query = widgets.Dropdown(options=[(f"{dataset.name}[{r}] pid {pids[r]}", int(r)) for r in self.query_rows],
                                      description="query")
        self.gallery = widgets.Dropdown(description="gallery", layout=widgets.Layout(width="340px"))
        self.rank = widgets.IntSlider(min=0, max=len(self.gallery_rows) - 1, description="rank",
                                      readout=False, continuous_update=False)
        self.method = widgets.ToggleButtons(options=["scorecam", "gradcam"],
                                            value=options.get("method", "scorecam"), description="method")
        self.symmetric = widgets.Checkbox(value=symmetric, description="map of B too", indent=False)
        self.status = widgets.HTML()
        # the figure is a FigureWidget child of this box, replaced per pair: no Output widget capturing a display
        # (papermill runs of notebook 04 hung there, the kernel idle and its outputs never reaching the client)
        self.view = widgets.Box()
        self._fill_gallery()
        widgets.link((self.rank, "value"), (self.gallery, "index"))
        self.query.observe(self._on_query, names="value")
        for w in (self.gallery, self.method, self.symmetric):
            w.observe(lambda _change: self._render(), names="value")
        self.widget = widgets.VBox([widgets.HBox([self.query, self.gallery, self.rank]),
                                    widgets.HBox([self.method, self.symmetric]), self.status, self.view])

    # --- gallery ordering --------------------------------------------------------------------------
    def _fill_gallery(self) -> None:
        q = self.query.value
        pids = self.dataset.pids
        rows = self.gallery_rows
        sims = None
        if self._sim is not None:
            sims = self._sim[int(np.flatnonzero(self.query_rows == q)[0])]
            order = np.argsort(-sims, kind="stable")
            rows, sims = rows[order], sims[order]
        labels = []
        for i, r in enumerate(rows):
            tick = "\u2713" if pids[r] == pids[q] else "\u2717"
            sim = "" if sims is None else f" sim {sims[i]:.3f}"
            labels.append((f"#{i + 1} {self.dataset.name}[{r}] pid {pids[r]} {tick}{sim}", int(r)))
        self._hold = True
        try:
            self.gallery.options = labels
            self.gallery.index = 0
        finally:
            self._hold = False

    def _on_query(self, _change) -> None:
        if self._hold:
            return
        self._fill_gallery()
        self._render()

    # --- explaining ----------------------------------------------------------------------------------
    def explain(self, query: int | None = None, gallery: int | None = None) -> SimilarityCam:
        """The explanation of a pair of dataset rows (default: the current selection); cached."""
        q = self.query.value if query is None else int(query)
        g = self.gallery.value if gallery is None else int(gallery)
        key = (q, g, self.method.value, bool(self.symmetric.value))
        if key not in self._cache:
            scorecam = self.method.value == "scorecam"   # Grad-CAM: the library, exact
            cfg = CamConfig.from_options(self.config, method=self.method.value,
                                         fast=self.config.fast if scorecam else False,
                                         top_channels=self.config.top_channels if scorecam else None)
            if len(self._cache) >= 64:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = similarity_cam(self.model, q, g, dataset=self.dataset,
                                              symmetric=bool(self.symmetric.value), config=cfg)
        return self._cache[key]

    def _render(self) -> None:
        if self._hold or self.gallery.value is None:
            return
        self.status.value = "<i>explaining…</i>"
        try:
            cam = self.explain()
        except Exception as err:  # shown in the widget: a callback's exception would otherwise vanish
            self.status.value = f"<span style='color:#b00'>{type(err).__name__}: {err}</span>"
            return
        self.result, self.figure = cam, cam.figure()
        pids = self.dataset.pids
        same = pids[self.query.value] == pids[self.gallery.value]
        self.status.value = (f"similarity <b>{cam.similarity:.3f}</b> — "
                             f"{'same identity' if same else 'different identities'}")
        import plotly.graph_objects as go   # loaded with the first figure, as cam.figure() loads plotly

        self.view.children = [go.FigureWidget(self.figure)]
        for callback in self._callbacks:
            callback(cam)

    def select(self, query: int, gallery: int | None = None) -> SimilarityCam:
        """Show the pair (dataset rows); ``gallery=None`` takes the query's rank-1 gallery image.
        Meant as the callback of another widget. Returns the explanation.

        Raises:
            ValueError: ``query`` / ``gallery`` is not a row of the query / gallery split.
        """
        if int(query) not in set(self.query_rows.tolist()):
            raise ValueError(f"select: row {query} is not in the query split of {self.dataset.name!r}")
        if gallery is not None and int(gallery) not in set(self.gallery_rows.tolist()):
            raise ValueError(f"select: row {gallery} is not in the gallery split of {self.dataset.name!r}")
        self._hold = True
        try:
            self.query.value = int(query)
        finally:
            self._hold = False
        self._fill_gallery()
        self._hold = True
        try:
            if gallery is not None:
                self.gallery.value = int(gallery)
        finally:
            self._hold = False
        self._render()
        return self.result

    def on_result(self, callback: Callable[[SimilarityCam], None]) -> None:
        """Call ``callback(result)`` after each new explanation (to link other widgets)."""
        self._callbacks.append(callback)

    def _ipython_display_(self) -> None:
        if self.result is None:
            self._render()
        display(self.widget)

    def __repr__(self) -> str:
        return (f"CamPairPicker({self.dataset.name!r}: {len(self.query_rows)} queries x {len(self.gallery_rows)} "
                f"gallery images, method={self.method.value!r})")
