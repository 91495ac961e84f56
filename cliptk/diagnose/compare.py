"""Before / after, per query: which queries did a change of model help, which did it hurt, and why.

A mAP gain is an average; behind it some queries improve a lot and some get worse.
:func:`compare_rankings` takes two :class:`~cliptk.diagnose.Ranking`\\ s of the same queries and
gallery (e.g. zero-shot and fine-tuned, or two checkpoints; :func:`compare_models` and
:func:`compare_embeddings` build them) and returns a :class:`QueryComparison`: a table with each
query's AP under both (``delta_ap``), the rank of its first true match under both and how far its
true matches moved (``rank_change``: the mean rank of its true matches after minus before, so
negative = they moved up), sortable (:meth:`~QueryComparison.most_improved`,
:meth:`~QueryComparison.most_hurt`), a figure of one query's top-k under both models side by side
(:meth:`~QueryComparison.figure`) and a widget (:meth:`~QueryComparison.widget`: click a query in
the AP-before vs AP-after scatter, see its top-k under both).

Ranks follow :func:`cliptk.evaluate_reid`'s protocol (the per-query AP *is* its ``ap``): a gallery
item of the query's identity and camera is junk and takes no rank; a query of unknown camera
(camid -1) has no junk.

Example:
    >>> rng = np.random.default_rng(0)
    >>> centres = rng.normal(size=(4, 8))
    >>> g = np.repeat(centres, 3, axis=0) + 0.3 * rng.normal(size=(12, 8))
    >>> noisy, clean = centres + rng.normal(size=(4, 8)), centres + 0.05 * rng.normal(size=(4, 8))
    >>> cmp = compare_embeddings(noisy, g, clean, g, [0, 1, 2, 3], np.repeat([0, 1, 2, 3], 3))
    >>> bool((cmp.table["ap_after"] == 1).all()), bool((cmp.table["delta_ap"] >= 0).all())
    (True, True)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .._util import thumbnail_uri
from .ranking import Ranking, rank_gallery, source_image
from .views import COLOURS, JPEG_QUALITY

__all__ = ["QueryComparison", "compare_rankings", "compare_embeddings", "compare_models", "match_ranks"]


def match_ranks(ranking: Ranking) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the mean 1-based rank of its true matches (NaN: none) and their number.

    Ranks count non-junk gallery items only, as :meth:`Ranking.ranked` and
    :func:`cliptk.evaluate_reid` do.

    Example:
        >>> r = rank_gallery(np.eye(2), np.eye(2)[[1, 0, 0]], [0, 1], [0, 1, 0])
        >>> match_ranks(r)                # query 0 (pid 0) ranks gallery 1 (pid 1), 2, 0: matches at 2 and 3
        (array([2.5, 2. ]), array([2, 1]))
    """
    d = ranking.distances
    order = np.argsort(d, axis=1, kind="stable")
    same = ranking.gallery_pids[order] == ranking.query_pids[:, None]
    if ranking.query_camids is not None and ranking.gallery_camids is not None:
        qc = np.asarray(ranking.query_camids)
        junk = same & (np.asarray(ranking.gallery_camids)[order] == qc[:, None])
        if qc.dtype.kind in "iuf":
            junk &= (qc >= 0)[:, None]          # unknown camera: nothing is junk
    else:
        junk = np.zeros_like(same)
    hits = same & ~junk
    pos = np.cumsum(~junk, axis=1)
    n = hits.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, (pos * hits).sum(1) / np.maximum(n, 1), np.nan)
    return mean.astype(np.float64), n


@dataclass(eq=False, repr=False)
class QueryComparison:
    """Two rankings of the same queries and gallery, compared query by query.

    Attributes:
        before, after: the two :class:`~cliptk.diagnose.Ranking`\\ s.
        names: what to call them (``("zero-shot", "fine-tuned")`` ...).
        table: one row per query: ``query_index``, ``pid`` (and ``camid``), ``ap_before``,
            ``ap_after``, ``delta_ap``, ``first_match_before``, ``first_match_after``,
            ``mean_rank_before``, ``mean_rank_after``, ``rank_change`` (after - before: negative =
            the true matches moved up) and ``n_matches``; in query order.
    """

    before: Ranking
    after: Ranking
    names: tuple[str, str]
    table: pd.DataFrame

    def most_improved(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` queries whose AP rose most (ties: true matches that moved up most first)."""
        return self.table.sort_values(["delta_ap", "rank_change"], ascending=[False, True], na_position="last",
                                      kind="stable").head(n).reset_index(drop=True)

    def most_hurt(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` queries whose AP fell most (ties: true matches that moved down most first)."""
        return self.table.sort_values(["delta_ap", "rank_change"], ascending=[True, False], na_position="last",
                                      kind="stable").head(n).reset_index(drop=True)

    def summary(self) -> str:
        """One line: mAP under both, how many queries improved / got worse."""
        d = self.table["delta_ap"]
        return (f"{self.names[0]} mAP {self.before.result.mAP:.4f} -> {self.names[1]} mAP "
                f"{self.after.result.mAP:.4f}: {int((d > 1e-9).sum())} queries improved, {int((d < -1e-9).sum())} "
                f"got worse, {int((d.abs() <= 1e-9).sum())} unchanged")

    def figure(self, query: int, k: int = 5, *, thumb_height: int = 96) -> go.Figure:
        """Query ``query``'s top-``k`` under both rankings, one row each (borders: green =
        true match, red = wrong, grey = junk; labels: rank, similarity, pid)."""
        q = self.before._check(query)
        row = self.table.iloc[q]
        rows = []
        for ranking, name, key in ((self.before, self.names[0], "before"), (self.after, self.names[1], "after")):
            top = ranking.top_k(q, k, include_junk=False)
            rows.append((ranking, f"{name}: AP {row[f'ap_{key}']:.3f}", top))
        width = k + 1
        fig = go.Figure()
        xs, ys, hover, custom = [], [], [], []
        for r_i, (ranking, label, top) in enumerate(rows):
            y0 = (1 - r_i) * 1.25
            cells = [("query", q, f"query<br>pid {ranking.query_pids[q]}", ranking.query_images)]
            cells += [(t.status, int(t.gallery_index), f"#{t.rank} {t.similarity:.3f}<br>pid {t.pid}",
                       ranking.gallery_images) for t in top.itertuples()]
            for c, (status, idx, text, source) in enumerate(cells):
                colour = COLOURS[status]
                img = source_image(source, idx)
                fig.add_shape(type="rect", x0=c + 0.06, x1=c + 0.94, y0=y0 + 0.22, y1=y0 + 1.0,
                              line=dict(color=colour, width=4),
                              fillcolor=colour if img is None else "rgba(0,0,0,0)",
                              opacity=1.0 if img is not None else 0.25)
                if img is not None:
                    fig.add_layout_image(source=thumbnail_uri(img, thumb_height, "JPEG", JPEG_QUALITY), x=c + 0.5,
                                         y=y0 + 0.61, sizex=0.84, sizey=0.74, xref="x", yref="y", xanchor="center",
                                         yanchor="middle", sizing="contain", layer="below")
                fig.add_annotation(x=c + 0.5, y=y0 + 0.1, text=text, showarrow=False, font=dict(size=11, color=colour))
                xs.append(c + 0.5)
                ys.append(y0 + 0.61)
                hover.append(f"{label.split(':')[0]}: {'query' if status == 'query' else 'gallery'} {idx} ({status})")
                custom.append(idx)
            fig.add_annotation(x=-0.05, y=y0 + 0.61, text=label.replace(": ", "<br>"), showarrow=False,
                               xanchor="right", font=dict(size=12))
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", marker=dict(size=40, opacity=0), hovertext=hover,
                                 hoverinfo="text", customdata=custom, showlegend=False))
        fig.update_xaxes(visible=False, range=[-1.3, width], fixedrange=True)
        fig.update_yaxes(visible=False, range=[0, 2.3], fixedrange=True)
        dr, fm_b, fm_a = row["rank_change"], int(row["first_match_before"]), int(row["first_match_after"])
        moved = "" if np.isnan(dr) else f"; true matches moved {abs(dr):.1f} ranks {'up' if dr < 0 else 'down'}"
        fig.update_layout(title=dict(text=f"query {q} (pid {self.before.query_pids[q]}): ΔAP {row['delta_ap']:+.3f}, first true "
                                          f"match #{fm_b} -> #{fm_a}{moved}", font=dict(size=13)),
                          width=max(500, 95 * (width + 1.3)), height=2 * thumb_height + 220,
                          margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white")
        return fig

    def scatter(self) -> go.Figure:
        """AP before (x) vs AP after (y), one point per query (``customdata`` = query index),
        coloured by ``delta_ap``: points above the diagonal improved."""
        t = self.table
        fig = go.Figure(go.Scatter(
            x=t["ap_before"], y=t["ap_after"], mode="markers", customdata=t["query_index"],
            marker=dict(color=t["delta_ap"], colorscale="RdYlGn", cmid=0, size=9, line=dict(width=0.5, color="#333"),
                        colorbar=dict(title="ΔAP")),
            hovertext=[f"query {i} (pid {p}): AP {a:.3f} -> {b:.3f}" for i, p, a, b in
                       zip(t["query_index"], t["pid"], t["ap_before"], t["ap_after"])], hoverinfo="text"))
        fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line=dict(color="#999", dash="dot"))
        fig.update_layout(title=self.summary(), xaxis_title=f"AP {self.names[0]}", yaxis_title=f"AP {self.names[1]}",
                          width=520, height=480, xaxis_range=[-0.03, 1.03], yaxis_range=[-0.03, 1.03],
                          title_font_size=12, margin=dict(l=50, r=10, t=60, b=50))
        return fig

    def widget(self, k: int = 5, query: int | None = None):
        """Click a query in :meth:`scatter` (or pick it in the dropdown, most improved first, most
        hurt last) and see :meth:`figure` of it. ipywidgets loads here.

        Returns:
            an ``ipywidgets.VBox``; ``.scatter`` and ``.topk`` are its ``FigureWidget``\\ s,
            ``.select(q)`` shows query ``q``.
        """
        import ipywidgets as widgets   # lazy: only the widget needs it

        order = self.most_improved(len(self.table))
        first = int(order["query_index"].iloc[0]) if query is None else self.before._check(query)
        sc = go.FigureWidget(self.scatter())
        top = go.FigureWidget(self.figure(first, k))
        options = [(f"query {int(r.query_index)}: ΔAP {r.delta_ap:+.3f}", int(r.query_index))
                   for r in order.itertuples()]
        pick = widgets.Dropdown(options=options, value=first, description="query")

        def select(q: int) -> None:
            new = self.figure(int(q), k)
            with top.batch_update():
                top.layout.images, top.layout.shapes, top.layout.annotations = (), (), ()
                top.layout.images, top.layout.shapes = new.layout.images, new.layout.shapes
                top.layout.annotations, top.layout.title = new.layout.annotations, new.layout.title
                top.data[0].update(x=new.data[0].x, y=new.data[0].y, hovertext=new.data[0].hovertext,
                                   customdata=new.data[0].customdata)
                top.layout.width = new.layout.width
            with sc.batch_update():
                sizes = np.full(len(self.table), 9)
                sizes[int(q)] = 18
                sc.data[0].marker.size = sizes
            if pick.value != int(q):
                pick.value = int(q)

        sc.data[0].on_click(lambda trace, points, state: points.point_inds and
                            select(int(trace.customdata[points.point_inds[0]])))
        pick.observe(lambda ch: select(ch["new"]), names="value")
        box = widgets.VBox([pick, widgets.HBox([sc, top])])
        box.scatter, box.topk, box.select = sc, top, select
        select(first)
        return box

    def __repr__(self) -> str:
        return f"QueryComparison({self.summary()})"

    def _repr_html_(self) -> str:
        return f"<p>{self.summary()}</p>" + self.most_improved(5).to_html(index=False, float_format="{:.3f}".format)


def compare_rankings(before: Ranking, after: Ranking, names: Sequence[str] = ("before", "after")) -> QueryComparison:
    """Compare two rankings of the same queries and gallery, query by query.

    Raises:
        ValueError: the rankings have other shapes or other identities (not the same images).
    """
    shape_b = (len(before.query_pids), len(before.gallery_pids))
    shape_a = (len(after.query_pids), len(after.gallery_pids))
    if shape_b != shape_a:
        raise ValueError(f"rankings of {shape_b} and {shape_a} (queries x gallery): "
                         "rank the same query and gallery images, in the same order, with both models")
    if not (np.array_equal(before.query_pids, after.query_pids) and np.array_equal(before.gallery_pids, after.gallery_pids)):
        raise ValueError("the two rankings have different identities: rank the same query and gallery images, in the "
                         "same order, with both models")
    if len(names) != 2:
        raise ValueError(f"names must be two strings, got {names!r}")
    mb, n = match_ranks(before)
    ma, _ = match_ranks(after)
    t = pd.DataFrame({"query_index": np.arange(before.n_queries), "pid": before.query_pids})
    if before.query_camids is not None:
        t["camid"] = before.query_camids
    t["ap_before"], t["ap_after"] = before.ap, after.ap
    t["delta_ap"] = after.ap - before.ap
    t["first_match_before"], t["first_match_after"] = before.first_match, after.first_match
    t["mean_rank_before"], t["mean_rank_after"] = mb, ma
    t["rank_change"] = ma - mb
    t["n_matches"] = n
    return QueryComparison(before, after, (str(names[0]), str(names[1])), t)


def compare_embeddings(query_before: Any, gallery_before: Any, query_after: Any, gallery_after: Any, query: Any,
                       gallery: Any, *, names: Sequence[str] = ("before", "after"), **rank_options) -> QueryComparison:
    """:func:`compare_rankings` of two embedding sets of the same images (``query``/``gallery``: a
    :class:`~cliptk.ReIdDataset`, a table with ``pid``, or pids, as :func:`rank_gallery` takes;
    ``rank_options`` go to it, e.g. ``query_camids=``)."""
    return compare_rankings(rank_gallery(query_before, gallery_before, query, gallery, **rank_options),
                            rank_gallery(query_after, gallery_after, query, gallery, **rank_options), names)


def compare_models(model_before, model_after, query, gallery, *, names: Sequence[str] = ("before", "after"),
                   flip: bool = False, batch_size: int = 64) -> QueryComparison:
    """Embed ``query`` and ``gallery`` (:class:`~cliptk.ReIdDataset`\\ s) with both models and
    compare (any two :class:`cliptk.ClipModel`\\ s, e.g. zero-shot and fine-tuned).

    Example:
        >>> cmp = compare_models(zero_shot, tuned, ds.subset("query"), ds.subset("gallery"),
        ...                      names=("zero-shot", "fine-tuned"))            # doctest: +SKIP
        >>> cmp.most_hurt(5)                                                     # doctest: +SKIP
    """
    from ..embed import embed

    def emb(m, d):
        return embed(m, d, flip=flip, batch_size=batch_size, progress=False)

    return compare_embeddings(emb(model_before, query), emb(model_before, gallery), emb(model_after, query),
                              emb(model_after, gallery), query, gallery, names=names)
