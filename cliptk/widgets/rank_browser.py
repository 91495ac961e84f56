"""An ipywidgets browser of ranked re-id results: a slider over queries, a row of result cards,
and a button per card that hands the picked (query, gallery) pair to your code.

The typical use is to pick a pair to explain with Score-CAM (``on_pick=lambda q, g: ...``). The
views it mirrors, as static figures and HTML, are in :mod:`cliptk.diagnose.views`.

Example (skipped by the doctest run: a widget is only seen in a notebook front end):
    >>> b = RankBrowser(r, k=6, on_pick=lambda q, g: print(q, g))    # doctest: +SKIP
    >>> b                                                           # doctest: +SKIP
"""
from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd

from .._util import thumbnail_bytes
from ..diagnose import COLOURS, JPEG_QUALITY, ImageSource, Ranking, source_image

__all__ = ["RankBrowser"]


class RankBrowser:
    """An ipywidgets browser of ranked results: a slider over queries, a row of result cards.

    The slider walks the queries worst AP first (``order="worst"``) or in row order
    (``order="index"``). Each result card shows the thumbnail with a coloured border and a
    button; clicking it calls ``on_pick(query_index, gallery_index)`` (e.g. to explain that pair
    with Score-CAM) and records the pair in :attr:`picked`. The handlers are plain methods,
    :meth:`show` and :meth:`pick`, so code (and tests) can drive the browser without a front end.

    Example:
        >>> from cliptk.diagnose import rank_gallery
        >>> r = rank_gallery(np.eye(3), np.eye(3), [0, 1, 2], [0, 1, 2])
        >>> b = RankBrowser(r, k=2, on_pick=lambda q, g: print("picked", q, g))
        >>> b.pick(0)
        picked 0 0
        (0, 0)
    """

    def __init__(self, ranking: Ranking, k: int = 8, *, on_pick: Callable[[int, int], Any] | None = None,
                 order: str = "worst", thumb_height: int = 96):
        if order not in ("worst", "index"):
            raise ValueError(f"order must be 'worst' or 'index', got {order!r}")
        self.ranking, self.k, self.on_pick, self.thumb_height = ranking, k, on_pick, thumb_height
        self.order = (ranking.worst_queries()["query_index"].to_numpy() if order == "worst"
                      else np.arange(ranking.n_queries))
        self.picked: tuple[int, int] | None = None
        self.query_index = int(self.order[0])
        self.current = pd.DataFrame()
        self.slider = W.IntSlider(value=0, min=0, max=len(self.order) - 1, description="query",
                                  continuous_update=False)
        self.title = W.HTML()
        self.query_image = W.Image(format="jpeg", layout=W.Layout(border=f"3px solid {COLOURS['query']}"))
        self.images, self.buttons, cards = [], [], []
        for j in range(k + 8):  # room for junk items inside the top k
            img = W.Image(format="jpeg")
            btn = W.Button(layout=W.Layout(width="auto"))
            btn.on_click(lambda _b, j=j: self.pick(j))
            self.images.append(img)
            self.buttons.append(btn)
            cards.append(W.VBox([img, btn]))
        self.cards = cards
        self.row = W.HBox([W.VBox([self.query_image, W.Label("query")])] + cards,
                          layout=W.Layout(overflow="auto"))
        self.slider.observe(self._on_slider, names="value")
        self.widget = W.VBox([self.slider, self.title, self.row])
        self.show(0)

    def _on_slider(self, change: dict) -> None:
        self.show(int(change["new"]))

    def _bytes(self, source: ImageSource, i: int) -> bytes:
        img = source_image(source, i)
        return b"" if img is None else thumbnail_bytes(img, self.thumb_height, "JPEG", JPEG_QUALITY)

    def show(self, position: int) -> None:
        """Display the query at ``position`` of the slider's order (0 = worst AP)."""
        if not 0 <= position < len(self.order):
            raise IndexError(f"position {position} is out of range for {len(self.order)} queries")
        if self.slider.value != position:
            self.slider.value = position  # the observer calls back here once
            return
        r, q = self.ranking, int(self.order[position])
        self.query_index = q
        self.current = r.top_k(q, self.k).head(len(self.cards))
        self.title.value = f"<b>{html.escape(r.describe(q, self.k))}</b>"
        self.query_image.value = self._bytes(r.query_images, q)
        for j, card in enumerate(self.cards):
            if j < len(self.current):
                row = self.current.iloc[j]
                rank = "junk" if pd.isna(row["rank"]) else f"#{row['rank']}"
                self.images[j].value = self._bytes(r.gallery_images, int(row["gallery_index"]))
                self.images[j].layout.border = f"3px solid {COLOURS[row['status']]}"
                self.buttons[j].description = f"{rank} {row['similarity']:.3f} pid {row['pid']}"
                self.buttons[j].tooltip = f"gallery {int(row['gallery_index'])} ({row['status']}): pick this pair"
                card.layout.display = None
            else:
                card.layout.display = "none"

    def pick(self, j: int) -> tuple[int, int]:
        """Pick result card ``j`` (0 = top): record and return ``(query_index, gallery_index)``
        and call ``on_pick`` with them."""
        if not 0 <= j < len(self.current):
            raise IndexError(f"result {j} is not shown; this query shows {len(self.current)} results")
        self.picked = (self.query_index, int(self.current["gallery_index"].iat[j]))
        if self.on_pick is not None:
            self.on_pick(*self.picked)
        return self.picked

    def _repr_mimebundle_(self, **kwargs: Any):
        return self.widget._repr_mimebundle_(**kwargs)
