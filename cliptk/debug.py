"""Visual debugging of a re-id model and audits of a re-id dataset.

Start from embeddings that are already computed (:func:`cliptk.embed`) and build a
:class:`Ranking` with :func:`rank_gallery`: the query x gallery distances, labels, per-query AP
and first-match rank (computed by :func:`cliptk.evaluate_reid`, so every view agrees with the
reported mAP) and, optionally, the images for thumbnails. Then:

* **ranked results** - :func:`plot_ranked` (one query's top-k, correct / wrong / same-camera junk
  marked by border colour), :func:`worst_queries_html` (all queries ordered by AP, worst first,
  paged) and :class:`RankBrowser` (an ipywidgets browser whose result buttons call
  ``on_pick(query_index, gallery_index)``, e.g. to explain that pair with Score-CAM);
* **failure analysis** - :func:`ap_breakdown` (mAP per identity, camera, sequence or any
  metadata column), :func:`confused_pairs` (identity pairs whose images outrank the true match),
  :func:`pos_neg_similarities`, :func:`similarity_threshold` (the operating point at a chosen
  false-match rate) and :func:`plot_similarity_hist`;
* **dataset audit** - :func:`find_leaks` (near-duplicates between train and test, or inside one
  set) and :func:`label_noise_suspects` (images closer to another identity's centroid than to
  their own).

Tables are ``pandas.DataFrame`` ranked worst / most suspicious first; :func:`table_html` renders
any of them with thumbnails next to the index columns. Figures are plotly.

The ranking protocol is torchreid's ``eval_market1501`` as in :func:`cliptk.evaluate_reid`: a
gallery item of the query's identity *and* camera is "junk" (removed, it takes no rank); a
gallery item of another identity (pid ``-1`` included) is wrong.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> centres = rng.normal(size=(4, 8))
    >>> q = centres + 0.1 * rng.normal(size=(4, 8))
    >>> g = np.repeat(centres, 3, axis=0) + 0.3 * rng.normal(size=(12, 8))
    >>> r = rank_gallery(q, g, [0, 1, 2, 3], np.repeat([0, 1, 2, 3], 3))
    >>> r.top_k(0, 3)["status"].tolist()
    ['match', 'match', 'match']
    >>> fig = plot_ranked(0, r, k=5)          # a plotly Figure; fig.show() in a notebook
"""
from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from .data import ReIdDataset
from .metrics import ReIdResult, evaluate_reid

__all__ = [
    "Ranking",
    "rank_gallery",
    "plot_ranked",
    "worst_queries_html",
    "RankBrowser",
    "ap_breakdown",
    "confused_pairs",
    "pos_neg_similarities",
    "similarity_threshold",
    "plot_similarity_hist",
    "find_leaks",
    "label_noise_suspects",
    "table_html",
    "HtmlFragment",
]

#: Where thumbnails come from: a dataset (``ds[i]`` loads image ``i``), a list of PIL images, or nothing.
ImageSource = Union[ReIdDataset, Sequence[Image.Image], None]

COLOURS = {"match": "#2ca02c", "wrong": "#d62728", "junk": "#9e9e9e", "query": "#1f77b4"}
_BLOCK_ELEMENTS = 1 << 22


class HtmlFragment(str):
    """A string of HTML that Jupyter renders (``_repr_html_``); write it to a file as it is."""

    def _repr_html_(self) -> str:
        return str(self)


# --------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------


def _image(source: ImageSource, i: int) -> Image.Image | None:
    if source is None:
        return None
    img = source[int(i)]
    return None if img is None else img.convert("RGB")


def _thumbnail_uri(img: Image.Image, height: int = 96, fmt: str = "JPEG") -> str:
    """A ``data:`` URI of ``img`` scaled to ``height`` pixels (aspect kept), for ``<img src=...>``
    or a plotly layout image. ``fmt`` is ``"JPEG"`` or ``"WEBP"``.

    Example:
        >>> _thumbnail_uri(Image.new("RGB", (32, 64)), 32)[:23]
        'data:image/jpeg;base64,'
    """
    img = img.convert("RGB")
    w = max(1, round(img.width * height / img.height))
    buf = io.BytesIO()
    img.resize((w, height), Image.BILINEAR).save(buf, fmt, quality=85)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _jpeg_bytes(img: Image.Image, height: int) -> bytes:
    return base64.b64decode(_thumbnail_uri(img, height).split(",", 1)[1])


def _img_tag(source: ImageSource, i: int, height: int, border: str | None = None) -> str:
    img = _image(source, i)
    style = f"height:{height}px;" + (f"border:3px solid {border};" if border else "")
    if img is None:
        return f"<div style='{style}width:{height // 2}px;display:inline-block;background:#eee'></div>"
    return f"<img src='{_thumbnail_uri(img, height)}' style='{style}' title='{int(i)}'>"


# --------------------------------------------------------------------------------------------------
# the ranking
# --------------------------------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class Ranking:
    """Query x gallery distances with labels, per-query results and (optionally) images.

    Build it with :func:`rank_gallery`. Attributes:
        distances: ``(n_q, n_g)`` distances that were ranked (``1 - cos``, or k-reciprocal
            re-ranked); smaller = more similar.
        query_pids, gallery_pids: ``(n_q,)`` / ``(n_g,)`` identities.
        query_camids, gallery_camids: cameras, or ``None`` (then nothing is junk).
        result: the :class:`~cliptk.metrics.ReIdResult` (``ap``, ``first_match``, ``mAP``).
        query_images, gallery_images: thumbnail sources (dataset, list of PIL images or None).
        query_table, gallery_table: per-row metadata (``pid``, ``camid``, ``sequence`` ...).
    """

    distances: np.ndarray
    query_pids: np.ndarray
    gallery_pids: np.ndarray
    query_camids: np.ndarray | None
    gallery_camids: np.ndarray | None
    result: ReIdResult
    query_images: ImageSource = None
    gallery_images: ImageSource = None
    query_table: pd.DataFrame | None = None
    gallery_table: pd.DataFrame | None = None

    @property
    def n_queries(self) -> int:
        return self.distances.shape[0]

    @property
    def ap(self) -> np.ndarray:
        """Per-query average precision (NaN = no valid match, skipped)."""
        return self.result.ap

    @property
    def first_match(self) -> np.ndarray:
        """Per-query 1-based rank of the first true match (-1 = skipped)."""
        return self.result.first_match

    @property
    def similarity(self) -> np.ndarray:
        """``1 - distances``: the cosine similarity unless re-ranked."""
        return 1.0 - self.distances

    def _check(self, q: int) -> int:
        if not -self.n_queries <= q < self.n_queries:
            raise IndexError(f"query index {q} is out of range for {self.n_queries} queries")
        return int(q) % self.n_queries

    def ranked(self, q: int) -> pd.DataFrame:
        """The whole gallery ranked for query ``q`` (nearest first, stable on ties).

        Columns: ``gallery_index``, ``pid``, ``camid`` (if known), ``similarity`` (``1 - d``),
        ``status`` (``match`` / ``wrong`` / ``junk``) and ``rank`` (1-based among non-junk items,
        ``<NA>`` for junk, which the protocol removes).
        """
        q = self._check(q)
        order = np.argsort(self.distances[q], kind="stable")
        same = self.gallery_pids[order] == self.query_pids[q]
        junk = np.zeros_like(same)
        if self.query_camids is not None and self.gallery_camids is not None:
            junk = same & (self.gallery_camids[order] == self.query_camids[q])
        status = np.where(junk, "junk", np.where(same, "match", "wrong"))
        rank = pd.array(np.cumsum(~junk), dtype="Int64")
        rank[junk] = pd.NA
        out = pd.DataFrame({"gallery_index": order, "pid": self.gallery_pids[order]})
        if self.gallery_camids is not None:
            out["camid"] = self.gallery_camids[order]
        out["similarity"] = 1.0 - self.distances[q, order]
        out["status"] = status
        out["rank"] = rank
        return out

    def top_k(self, q: int, k: int = 10, include_junk: bool = True) -> pd.DataFrame:
        """The first ``k`` rows of :meth:`ranked` (``k`` non-junk items; junk in between kept
        unless ``include_junk=False``)."""
        r = self.ranked(q)
        keep = r["rank"].isna() | (r["rank"] <= k) if include_junk else r["rank"].notna() & (r["rank"] <= k)
        r = r[keep.to_numpy(dtype=bool)]
        last = np.flatnonzero(r["rank"].notna().to_numpy())
        return r.iloc[: (last[-1] + 1 if len(last) else 0)].reset_index(drop=True)

    def worst_queries(self) -> pd.DataFrame:
        """One row per query, ordered by AP ascending (worst first; skipped queries last).

        Columns: ``query_index``, ``pid``, ``camid`` (if known), ``ap``, ``first_match``.
        """
        t = pd.DataFrame({"query_index": np.arange(self.n_queries), "pid": self.query_pids})
        if self.query_camids is not None:
            t["camid"] = self.query_camids
        t["ap"] = self.ap
        t["first_match"] = self.first_match
        return t.sort_values(["ap", "first_match"], ascending=[True, False], na_position="last",
                             kind="stable").reset_index(drop=True)

    def __repr__(self) -> str:
        return (f"Ranking({self.n_queries} queries x {self.distances.shape[1]} gallery, mAP={self.result.mAP:.4f}, "
                f"rank-1={self.result.cmc.get(1, float('nan')):.4f}, skipped={self.result.n_skipped}"
                f"{', re-ranked' if self.result.reranked else ''})")

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(repr(self))}</p>" + self.result._repr_html_()


def _labels(side: Any, name: str, camids: Any) -> tuple[np.ndarray, np.ndarray | None, pd.DataFrame, ImageSource]:
    """pids, camids, metadata table and image source of one side (dataset, table or pid array)."""
    if isinstance(side, ReIdDataset):
        return side.pids, side.camids, side.table.reset_index(drop=True), side
    if isinstance(side, pd.DataFrame):
        if "pid" not in side.columns:
            raise ValueError(f"{name} table needs a 'pid' column, got {list(side.columns)}")
        t = side.reset_index(drop=True)
        cams = t["camid"].to_numpy() if "camid" in t.columns else (None if camids is None else np.asarray(camids))
        return t["pid"].to_numpy(), cams, t, None
    pids = np.asarray(side)
    t = pd.DataFrame({"pid": pids})
    if camids is not None:
        t["camid"] = np.asarray(camids)
    return pids, None if camids is None else np.asarray(camids), t, None


def rank_gallery(query_emb: Any, gallery_emb: Any, query: Any, gallery: Any, *,
                 query_camids: Any = None, gallery_camids: Any = None,
                 query_images: ImageSource = None, gallery_images: ImageSource = None,
                 rerank: bool = False, **rerank_kwargs: Any) -> Ranking:
    """Rank the gallery for every query and keep what the debugging views need.

    Args:
        query_emb, gallery_emb: ``(n_q, d)`` / ``(n_g, d)`` embeddings (tensor or array).
        query, gallery: a :class:`ReIdDataset` (pids, cameras, metadata and images), a
            ``DataFrame`` with a ``pid`` column (and optionally ``camid`` and metadata), or an
            array of pids.
        query_camids, gallery_camids: cameras when ``query`` / ``gallery`` are arrays.
        query_images, gallery_images: thumbnail sources overriding the datasets (a dataset or
            a list of PIL images, same order as the embeddings).
        rerank: apply k-reciprocal re-ranking (``rerank_kwargs``: ``k1``, ``k2``, ``lambda_value``).

    Returns:
        A :class:`Ranking`; its ``result`` is exactly :func:`cliptk.evaluate_reid`'s.

    Raises:
        ValueError: as :func:`cliptk.evaluate_reid` (shapes, no valid query ...), or when only one
            side has cameras.

    Example:
        >>> r = rank_gallery(embed(model, q_ds), embed(model, g_ds), q_ds, g_ds)   # doctest: +SKIP
        >>> r.worst_queries().head()                                                 # doctest: +SKIP
    """
    qp, qc, qt, qi = _labels(query, "query", query_camids)
    gp, gc, gt, gi = _labels(gallery, "gallery", gallery_camids)
    if (qc is None) != (gc is None):
        raise ValueError("cameras are known for only one of query and gallery; give both (or neither)")
    res = evaluate_reid(query_emb, gallery_emb, qp, gp, qc, gc, rerank=rerank, return_distances=True,
                        **rerank_kwargs)
    return Ranking(res.distances, qp, gp, qc, gc, res,
                   query_images if query_images is not None else qi,
                   gallery_images if gallery_images is not None else gi, qt, gt)


# --------------------------------------------------------------------------------------------------
# ranked results
# --------------------------------------------------------------------------------------------------


def _title(ranking: Ranking, q: int, k: int) -> str:
    ap, fm = ranking.ap[q], int(ranking.first_match[q])
    where = "no true match in the gallery" if fm < 0 else f"first true match at rank {fm}" + (
        f" (beyond top {k})" if fm > k else "")
    return f"query {q} (pid {ranking.query_pids[q]}): AP {ap:.3f}, {where}"


def plot_ranked(query_idx: int, ranking: Ranking, k: int = 10, *, thumb_height: int = 128,
                include_junk: bool = True) -> go.Figure:
    """One query and its top-``k`` gallery items as a plotly figure.

    Borders: blue = query, green = correct identity, red = wrong identity, grey = same identity
    seen by the same camera (junk: removed by the protocol, takes no rank). Each item is labelled
    with its rank, similarity and pid; the title gives the query's AP and the rank of its first
    true match. Hovering shows the gallery index (``customdata`` of the marker trace), so a
    ``FigureWidget`` click handler can pick a pair.

    Args:
        query_idx: row of the query in ``ranking``.
        ranking: from :func:`rank_gallery`.
        k: number of non-junk results shown.
        thumb_height: pixel height of the thumbnails (images are embedded as JPEG data URIs).
        include_junk: also show junk items that fall inside the top ``k``.

    Raises:
        IndexError: ``query_idx`` is out of range.

    Example:
        >>> plot_ranked(int(r.worst_queries().query_index[0]), r, k=8).show()    # doctest: +SKIP
    """
    q = ranking._check(query_idx)
    top = ranking.top_k(q, k, include_junk)
    cells = [("query", q, f"query<br>pid {ranking.query_pids[q]}", ranking.query_images)]
    for row in top.itertuples():
        rank = "junk" if pd.isna(row.rank) else f"#{row.rank}"
        cells.append((row.status, row.gallery_index, f"{rank} {row.similarity:.3f}<br>pid {row.pid}",
                      ranking.gallery_images))
    fig = go.Figure()
    xs, hover, custom = [], [], []
    for c, (status, idx, label, source) in enumerate(cells):
        colour = COLOURS[status]
        img = _image(source, idx)
        fig.add_shape(type="rect", x0=c + 0.06, x1=c + 0.94, y0=0.22, y1=1.0, xref="x", yref="y",
                      line=dict(color=colour, width=4),
                      fillcolor=colour if img is None else "rgba(0,0,0,0)", opacity=1.0 if img is not None else 0.25)
        if img is not None:
            fig.add_layout_image(source=_thumbnail_uri(img, thumb_height), x=c + 0.5, y=0.61, sizex=0.84,
                                 sizey=0.74, xref="x", yref="y", xanchor="center", yanchor="middle",
                                 sizing="contain", layer="below")
        fig.add_annotation(x=c + 0.5, y=0.1, text=label, showarrow=False, font=dict(size=11, color=colour),
                           xref="x", yref="y")
        xs.append(c + 0.5)
        hover.append(f"{'query' if status == 'query' else 'gallery'} {idx} ({status})")
        custom.append(int(idx))
    fig.add_trace(go.Scatter(x=xs, y=[0.61] * len(xs), mode="markers", marker=dict(size=40, opacity=0),
                             hovertext=hover, hoverinfo="text", customdata=custom, showlegend=False))
    fig.update_xaxes(visible=False, range=[0, len(cells)], fixedrange=True)
    fig.update_yaxes(visible=False, range=[0, 1.02], fixedrange=True)
    fig.update_layout(title=dict(text=_title(ranking, q, k), font=dict(size=13)), width=max(400, 95 * len(cells)),
                      height=thumb_height + 150, margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white")
    return fig


def _result_cell(ranking: Ranking, row: Any, height: int) -> str:
    colour = COLOURS[row.status]
    rank = "junk" if pd.isna(row.rank) else f"#{row.rank}"
    return (f"<td style='text-align:center;padding:2px'>{_img_tag(ranking.gallery_images, row.gallery_index, height, colour)}"
            f"<br><span style='color:{colour};font-size:11px'>{rank} {row.similarity:.3f}<br>"
            f"pid {html.escape(str(row.pid))}</span></td>")


def worst_queries_html(ranking: Ranking, k: int = 8, *, page: int = 0, per_page: int = 10,
                       thumb_height: int = 80) -> HtmlFragment:
    """One page of queries ordered by AP (worst first), each with its top-``k`` results.

    Same colours as :func:`plot_ranked`. Page ``page`` (0-based) shows queries
    ``page * per_page .. (page + 1) * per_page - 1`` of :meth:`Ranking.worst_queries`.

    Raises:
        ValueError: ``page`` is outside the available pages.

    Example:
        >>> from IPython.display import HTML
        >>> HTML(worst_queries_html(r, page=0))                 # doctest: +SKIP
    """
    order = ranking.worst_queries()
    n_pages = max(1, -(-len(order) // per_page))
    if not 0 <= page < n_pages:
        raise ValueError(f"page {page} is out of range: {len(order)} queries make {n_pages} page(s) of {per_page}")
    rows = []
    for w in order.iloc[page * per_page:(page + 1) * per_page].itertuples():
        q = int(w.query_index)
        cells = "".join(_result_cell(ranking, r, thumb_height) for r in ranking.top_k(q, k).itertuples())
        fm = "-" if w.first_match < 0 else str(int(w.first_match))
        rows.append(f"<tr><td style='text-align:left;font-size:12px'>query {q}<br>pid {html.escape(str(w.pid))}"
                    f"<br>AP {w.ap:.3f}<br>1st match {fm}</td>"
                    f"<td style='padding:2px 8px 2px 2px'>{_img_tag(ranking.query_images, q, thumb_height, COLOURS['query'])}</td>"
                    f"{cells}</tr>")
    head = (f"<p>Queries by AP, worst first: page {page + 1} of {n_pages} ({len(order)} queries; mAP "
            f"{ranking.result.mAP:.4f}). Border: <span style='color:{COLOURS['match']}'>correct</span>, "
            f"<span style='color:{COLOURS['wrong']}'>wrong</span>, "
            f"<span style='color:{COLOURS['junk']}'>same-camera junk</span>.</p>")
    return HtmlFragment(f"<div class='cliptk-worst'>{head}<table>{''.join(rows)}</table></div>")


class RankBrowser:
    """An ipywidgets browser of ranked results: a slider over queries, a row of result cards.

    The slider walks the queries worst AP first (``order="worst"``) or in row order
    (``order="index"``). Each result card shows the thumbnail with a coloured border and a
    button; clicking it calls ``on_pick(query_index, gallery_index)`` (e.g. to explain that pair
    with Score-CAM) and records the pair in :attr:`picked`. The handlers are plain methods,
    :meth:`show` and :meth:`pick`, so code (and tests) can drive the browser without a front end.

    Example:
        >>> b = RankBrowser(r, k=6, on_pick=lambda q, g: print(q, g))    # doctest: +SKIP
        >>> b                                                           # doctest: +SKIP
    """

    def __init__(self, ranking: Ranking, k: int = 8, *, on_pick: Callable[[int, int], Any] | None = None,
                 order: str = "worst", thumb_height: int = 96):
        import ipywidgets as W

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
        img = _image(source, i)
        return b"" if img is None else _jpeg_bytes(img, self.thumb_height)

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
        self.title.value = f"<b>{html.escape(_title(r, q, self.k))}</b>"
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


# --------------------------------------------------------------------------------------------------
# failure analysis
# --------------------------------------------------------------------------------------------------


def ap_breakdown(ranking: Ranking, by: str | Sequence[Any] = "pid") -> pd.DataFrame:
    """Mean AP, rank-1 rate and mean first-match rank per group of queries, worst first.

    Args:
        ranking: from :func:`rank_gallery`.
        by: ``"pid"`` (per identity), ``"camid"``, any column of the query table (e.g.
            ``"sequence"`` for DeepSportRadar, ``"team"`` for the synthetic players), or an array
            with one group label per query.

    Returns:
        A DataFrame indexed by group with columns ``queries``, ``evaluated`` (queries with a
        valid match), ``mAP``, ``rank1`` and ``mean_first_match`` over the evaluated queries,
        sorted by ``mAP`` ascending (groups with no evaluated query last).

    Raises:
        KeyError: ``by`` names no column of the query table (the message lists them).
        ValueError: an array ``by`` of the wrong length.

    Example:
        >>> ap_breakdown(r, "sequence").head()       # doctest: +SKIP
    """
    if isinstance(by, str):
        table = ranking.query_table
        if table is None or by not in table.columns:
            cols = [] if table is None else list(table.columns)
            raise KeyError(f"ap_breakdown: no query column {by!r}; available: {cols}")
        groups, name = table[by].to_numpy(), by
    else:
        groups, name = np.asarray(by), "group"
        if groups.shape != (ranking.n_queries,):
            raise ValueError(f"ap_breakdown: by has shape {groups.shape}; give one label per query ({ranking.n_queries})")
    ok = ranking.first_match > 0
    t = pd.DataFrame({name: groups, "ap": ranking.ap, "ok": ok,
                      "rank1": np.where(ok, ranking.first_match == 1, np.nan),
                      "fm": np.where(ok, ranking.first_match, np.nan)})
    out = t.groupby(name, sort=True).agg(queries=("ap", "size"), evaluated=("ok", "sum"), mAP=("ap", "mean"),
                                        rank1=("rank1", "mean"), mean_first_match=("fm", "mean"))
    return out.sort_values("mAP", na_position="last", kind="stable")


def _pair(a: Any, b: Any) -> tuple[Any, Any]:
    a, b = (v.item() if isinstance(v, np.generic) else v for v in (a, b))
    try:
        return (a, b) if a <= b else (b, a)
    except TypeError:  # mixed types: order by text
        return (a, b) if str(a) <= str(b) else (b, a)


def confused_pairs(ranking: Ranking, top: int | None = 20) -> pd.DataFrame:
    """Identity pairs most often confused: gallery images of one identity ranked above the first
    true match of a query of the other.

    Every evaluated query contributes each wrong-identity gallery item that it ranks before its
    first correct match (an "impostor": what costs rank-1). Counts are pooled per unordered pair
    of identities.

    Returns:
        A DataFrame, most confused first (``count`` then ``max_similarity``), with columns
        ``pid_a``, ``pid_b`` (sorted within the pair), ``count`` (impostor events),
        ``queries`` (distinct queries affected), ``max_similarity``, ``mean_similarity`` and an
        example pair: ``query_index`` / ``gallery_index`` of the most similar impostor (show
        them with :func:`table_html`).

    Example:
        >>> t = confused_pairs(r)                                                        # doctest: +SKIP
        >>> table_html(t, {"query_index": r.query_images, "gallery_index": r.gallery_images})  # doctest: +SKIP
    """
    records = []
    for q in np.flatnonzero(ranking.first_match > 0):
        r = ranking.ranked(q)
        first = int(np.flatnonzero((r["status"] == "match").to_numpy())[0])
        before = r.iloc[:first]
        before = before[before["status"] == "wrong"]
        for g, pid, sim in zip(before["gallery_index"], before["pid"], before["similarity"]):
            a, b = _pair(ranking.query_pids[q], pid)
            records.append((a, b, int(q), int(g), float(sim)))
    cols = ["pid_a", "pid_b", "count", "queries", "max_similarity", "mean_similarity", "query_index", "gallery_index"]
    if not records:
        return pd.DataFrame(columns=cols)
    ev = pd.DataFrame(records, columns=["pid_a", "pid_b", "query_index", "gallery_index", "similarity"])
    best = ev.loc[ev.groupby(["pid_a", "pid_b"])["similarity"].idxmax(), ["pid_a", "pid_b", "query_index", "gallery_index"]]
    agg = ev.groupby(["pid_a", "pid_b"]).agg(count=("similarity", "size"), queries=("query_index", "nunique"),
                                             max_similarity=("similarity", "max"),
                                             mean_similarity=("similarity", "mean")).reset_index()
    out = agg.merge(best, on=["pid_a", "pid_b"]).sort_values(["count", "max_similarity"], ascending=False,
                                                            kind="stable")
    out = out[cols].reset_index(drop=True)
    return out if top is None else out.head(top)


def pos_neg_similarities(ranking: Ranking) -> tuple[np.ndarray, np.ndarray]:
    """Similarities (``1 - distance``) of all positive and all negative query-gallery pairs.

    Positive: same identity, not junk (same identity and camera pairs are left out); negative:
    different identities. Returns ``(pos, neg)`` as flat float arrays.

    Example:
        >>> pos, neg = pos_neg_similarities(r)              # doctest: +SKIP
        >>> similarity_threshold(pos, neg, fmr=0.01)        # doctest: +SKIP
    """
    same = ranking.query_pids[:, None] == ranking.gallery_pids[None, :]
    junk = np.zeros_like(same)
    if ranking.query_camids is not None and ranking.gallery_camids is not None:
        junk = same & (ranking.query_camids[:, None] == ranking.gallery_camids[None, :])
    sim = ranking.similarity
    return sim[same & ~junk], sim[~same]


def _scores(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{name} is empty; need at least one similarity")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def similarity_threshold(pos: Any, neg: Any, fmr: float = 0.01) -> float:
    """The lowest similarity threshold whose false-match rate on ``neg`` is at most ``fmr``.

    A pair "matches" when its similarity is ``>= threshold``. Among thresholds with
    ``mean(neg >= t) <= fmr`` the lowest one maximises the true-match rate ``mean(pos >= t)``;
    it is returned as an observed score (the smallest of ``pos`` and ``neg`` above the
    ``floor(fmr * len(neg)) + 1``-th highest negative), or just above the highest negative
    when no score lies above it. With ``fmr >= 1`` every pair matches: ``-inf``.

    Args:
        pos, neg: similarities of positive and negative pairs (any shape; flattened).
        fmr: allowed false-match rate in ``[0, 1]``.

    Raises:
        ValueError: empty inputs, NaN/inf, or ``fmr`` outside ``[0, 1]``.

    Example:
        >>> similarity_threshold([0.9, 0.8, 0.4], [0.1, 0.2, 0.5, 0.3], fmr=0.25)
        0.4
        >>> similarity_threshold([0.9, 0.8, 0.4], [0.1, 0.2, 0.5, 0.3], fmr=0.0)
        0.8
    """
    p, n = _scores(pos, "pos"), _scores(neg, "neg")
    if not 0.0 <= fmr <= 1.0:
        raise ValueError(f"fmr must be a rate in [0, 1], got {fmr}")
    m = int(np.floor(fmr * n.size + 1e-9))  # negatives allowed at or above the threshold
    if m >= n.size:
        return float("-inf")
    bound = np.sort(n)[::-1][m]  # this negative (and all below it) must be rejected
    above = np.concatenate([p, n])
    above = above[above > bound]
    return float(above.min()) if above.size else float(np.nextafter(bound, np.inf))


def plot_similarity_hist(pos: Any, neg: Any, fmr: float | None = 0.01, bins: int = 60,
                         title: str = "Similarity of positive and negative pairs") -> go.Figure:
    """Overlaid density histograms of positive and negative similarities, with the threshold at
    false-match rate ``fmr`` (and the true-match rate it gives) as a vertical line.

    Example:
        >>> plot_similarity_hist(*pos_neg_similarities(r), fmr=0.01).show()     # doctest: +SKIP
    """
    p, n = _scores(pos, "pos"), _scores(neg, "neg")
    lo, hi = float(min(p.min(), n.min())), float(max(p.max(), n.max()))
    size = (hi - lo) / bins if hi > lo else 1.0
    fig = go.Figure()
    for data, name, colour in ((n, f"negative ({n.size})", COLOURS["wrong"]), (p, f"positive ({p.size})", COLOURS["match"])):
        fig.add_trace(go.Histogram(x=data, name=name, histnorm="probability density", opacity=0.6,
                                   marker_color=colour, xbins=dict(start=lo, end=hi + size, size=size)))
    if fmr is not None:
        t = similarity_threshold(p, n, fmr)
        tmr, real = float(np.mean(p >= t)), float(np.mean(n >= t))
        x = t if np.isfinite(t) else lo
        fig.add_vline(x=x, line=dict(color="black", dash="dash"),
                      annotation_text=f"FMR {real:.2%} (≤ {fmr:.2%}): threshold {t:.3f}, TMR {tmr:.2%}",
                      annotation_position="top left")
    fig.update_layout(barmode="overlay", title=title, xaxis_title="similarity (1 - distance)",
                      yaxis_title="density", width=750, height=400)
    return fig


# --------------------------------------------------------------------------------------------------
# dataset audit
# --------------------------------------------------------------------------------------------------


def _unit(x: Any, name: str) -> np.ndarray:
    a = x.detach().cpu().float().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (items x dim), got shape {a.shape}")
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if not np.all(np.isfinite(a)) or np.any(norms == 0):
        bad = int(np.flatnonzero(~np.isfinite(a).all(axis=1) | (norms[:, 0] == 0))[0])
        raise ValueError(f"{name} row {bad} is NaN/inf or all zeros (an unreadable image?); drop it first")
    return a / norms


def find_leaks(emb_train: Any, emb_test: Any = None, threshold: float = 0.95, *, train_pids: Any = None,
               test_pids: Any = None, max_pairs: int | None = 10_000) -> pd.DataFrame:
    """Near-duplicate pairs: cosine similarity ``>= threshold`` between train and test rows, or
    between rows of one set (``emb_test=None``; each pair once, ``index_a < index_b``).

    A test (query/gallery) image that is nearly identical to a training image is a leak: the
    model may have memorised it, so its score is optimistic. Inside one set, duplicates inflate
    an identity and, across identities, betray label noise.

    Args:
        emb_train: ``(n_a, d)`` embeddings (rows ``index_a``).
        emb_test: ``(n_b, d)`` embeddings (rows ``index_b``), or ``None``.
        threshold: cosine similarity at or above which a pair is reported.
        train_pids, test_pids: optional identities; adds ``pid_a``, ``pid_b``, ``same_pid``.
        max_pairs: keep at most this many pairs (the most similar); ``None`` keeps all.

    Returns:
        DataFrame ``index_a, index_b, similarity[, pid_a, pid_b, same_pid]``, most similar first.
        Show the pairs side by side with :func:`table_html`.

    Raises:
        ValueError: bad shapes, different dimensions, NaN or zero rows, pid counts.

    Example:
        >>> t = find_leaks(embed(model, train), embed(model, gallery), 0.97)               # doctest: +SKIP
        >>> table_html(t, {"index_a": train, "index_b": gallery})                          # doctest: +SKIP
    """
    a = _unit(emb_train, "emb_train")
    within = emb_test is None
    b = a if within else _unit(emb_test, "emb_test")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"emb_train has dimension {a.shape[1]} but emb_test has {b.shape[1]}; embed both with one model")
    hits_a, hits_b, hits_s = [], [], []
    step = max(1, _BLOCK_ELEMENTS // b.shape[0])
    for s in range(0, a.shape[0], step):
        sim = a[s:s + step] @ b.T
        if within:
            sim[np.arange(sim.shape[0])[:, None] + s >= np.arange(b.shape[0])[None, :]] = -np.inf
        i, j = np.nonzero(sim >= threshold)
        hits_a.append(i + s)
        hits_b.append(j)
        hits_s.append(sim[i, j])
    out = pd.DataFrame({"index_a": np.concatenate(hits_a), "index_b": np.concatenate(hits_b),
                        "similarity": np.concatenate(hits_s)})
    out = out.sort_values(["similarity", "index_a", "index_b"], ascending=[False, True, True], kind="stable")
    if max_pairs is not None:
        out = out.head(max_pairs)
    out = out.reset_index(drop=True)
    if train_pids is not None:
        pa = np.asarray(train_pids)
        pb = pa if within else (None if test_pids is None else np.asarray(test_pids))
        if pa.shape != (a.shape[0],) or pb is None or pb.shape != (b.shape[0],):
            raise ValueError("give train_pids with one pid per emb_train row (and test_pids, one per emb_test row)")
        out["pid_a"] = pa[out["index_a"].to_numpy()]
        out["pid_b"] = pb[out["index_b"].to_numpy()]
        out["same_pid"] = out["pid_a"] == out["pid_b"]
    return out


def label_noise_suspects(emb: Any, pids: Any, *, include_all: bool = False, ignore_pid: Any = -1) -> pd.DataFrame:
    """Images closer to another identity's centroid than to their own: likely mislabelled.

    For image ``i`` of identity ``p``: ``own_similarity`` is its cosine similarity to the
    centroid of the *other* images of ``p`` (leave-one-out, so an image does not vouch for
    itself); ``nearest_similarity`` is the highest similarity to the centroid of any other
    identity (``nearest_pid``). ``margin = nearest_similarity - own_similarity``; a positive
    margin makes a suspect. Centroids are means of L2-normalised embeddings, normalised.
    Identities with a single image cannot be checked (``own_similarity`` NaN); rows with pid
    ``ignore_pid`` (unknown) are skipped.

    Returns:
        DataFrame ``index, pid, n_images, own_similarity, nearest_pid, nearest_similarity,
        margin``, largest margin first; only suspects (``margin > 0``) unless ``include_all``.

    Raises:
        ValueError: bad shapes or fewer than two identities.

    Example:
        >>> t = label_noise_suspects(embed(model, train), train.pids)             # doctest: +SKIP
        >>> table_html(t.head(20), {"index": train})                              # doctest: +SKIP
    """
    x = _unit(emb, "emb")
    p = np.asarray(pids)
    if p.shape != (x.shape[0],):
        raise ValueError(f"pids has shape {p.shape}; give one pid per embedding row ({x.shape[0]})")
    rows = np.flatnonzero(p != ignore_pid) if ignore_pid is not None else np.arange(len(p))
    ids, codes = np.unique(p[rows], return_inverse=True)
    codes = codes.ravel()
    if len(ids) < 2:
        raise ValueError(f"label_noise_suspects needs at least two identities, got {len(ids)}")
    xs = x[rows]
    sums = np.zeros((len(ids), x.shape[1]))
    np.add.at(sums, codes, xs)
    counts = np.bincount(codes, minlength=len(ids))
    centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    loo = sums[codes] - xs
    loo_norm = np.linalg.norm(loo, axis=1)
    own = np.where((counts[codes] > 1) & (loo_norm > 1e-12),
                   (loo * xs).sum(axis=1) / np.maximum(loo_norm, 1e-12), np.nan)
    other = xs @ centroids.T
    other[np.arange(len(rows)), codes] = -np.inf
    nearest = other.argmax(axis=1)
    near_sim = other[np.arange(len(rows)), nearest]
    out = pd.DataFrame({"index": rows, "pid": p[rows], "n_images": counts[codes], "own_similarity": own,
                        "nearest_pid": ids[nearest], "nearest_similarity": near_sim,
                        "margin": near_sim - own})
    out = out.sort_values("margin", ascending=False, na_position="last", kind="stable")
    if not include_all:
        out = out[out["margin"] > 0]
    return out.reset_index(drop=True)


def table_html(table: pd.DataFrame, images: dict[str, ImageSource] | None = None, *, max_rows: int = 50,
               thumb_height: int = 80, float_format: str = "{:.4f}") -> HtmlFragment:
    """Render a table as HTML with a thumbnail beside each image-index column.

    Args:
        table: any of this module's tables (or your own).
        images: ``{column: image source}``: for each such column (holding row indices into the
            source), a thumbnail column is inserted right after it, e.g.
            ``{"index_a": train_ds, "index_b": gallery_ds}`` for :func:`find_leaks`.
        max_rows: render at most this many rows (the first ones: the tables are ranked).

    Raises:
        KeyError: an ``images`` key is not a column of ``table``.

    Example:
        >>> table_html(label_noise_suspects(emb, ds.pids), {"index": ds})   # doctest: +SKIP
    """
    images = images or {}
    missing = [c for c in images if c not in table.columns]
    if missing:
        raise KeyError(f"table_html: no column {missing} in the table (columns: {list(table.columns)})")
    t = table.head(max_rows)
    cols = list(t.columns)
    head = "".join(f"<th>{html.escape(str(c))}</th>" + ("<th></th>" if c in images else "") for c in cols)
    body = []
    for row in t.itertuples(index=False):  # keeps each column's dtype (iterrows would upcast ints)
        cells = []
        for c, v in zip(cols, row):
            text = float_format.format(v) if isinstance(v, (float, np.floating)) else str(v)
            cells.append(f"<td>{html.escape(text)}</td>")
            if c in images:
                cells.append(f"<td>{_img_tag(images[c], int(v), thumb_height)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = f"<p>first {max_rows} of {len(table)} rows</p>" if len(table) > max_rows else ""
    return HtmlFragment(f"<table class='cliptk-table'><thead><tr>{head}</tr></thead>"
                        f"<tbody>{''.join(body)}</tbody></table>{note}")
