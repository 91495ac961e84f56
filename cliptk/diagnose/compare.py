"""Before / after, per query: which queries did a change of model help, which did it hurt, and why.

A mAP gain is an average; behind it some queries improve a lot and some get worse.
:func:`compare_rankings` takes two :class:`~cliptk.diagnose.Ranking`\\ s of the same queries and
gallery (e.g. zero-shot and fine-tuned, or two checkpoints; :func:`compare_models` and
:func:`compare_embeddings` build them) and returns a :class:`QueryComparison`: a table with each
query's AP under both (``delta_ap``), the rank of its first true match under both and how far its
true matches moved (``rank_change``: the mean rank of its true matches after minus before, so
negative = they moved up), sortable (:meth:`~QueryComparison.most_improved`,
:meth:`~QueryComparison.most_hurt`), a figure of one query's top-k under both models side by side
(:meth:`~QueryComparison.figure`), the aligned before/after projection of queries and gallery with
one query's true matches and top-k marked in both (:meth:`~QueryComparison.projection`), the table
as HTML with thumbnails whose columns sort on a click (:meth:`~QueryComparison.table_html`, for a
notebook or a report) and a widget (:meth:`~QueryComparison.widget`: click a query in the AP-before
vs AP-after scatter or in the projection, see its top-k under both, and where it and its matches
sit in both projections).

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

import html
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .._util import thumbnail_uri
from ..viz.project import aligned_projection
from .ranking import Ranking, rank_gallery, source_image
from .views import COLOURS, JPEG_QUALITY, HtmlFragment

#: The orders of :meth:`QueryComparison.sorted` (and the widget's "sort by"): columns, ascending.
SORTS = {
    "most improved": (["delta_ap", "rank_change"], [False, True]),
    "most hurt": (["delta_ap", "rank_change"], [True, False]),
    "matches moved up most": (["rank_change", "delta_ap"], [True, False]),
    "matches moved down most": (["rank_change", "delta_ap"], [False, True]),
    "query order": (["query_index"], [True]),
}

# click a header to sort by it (numbers by value, again to reverse); one copy per table, no library
_SORT_JS = """<script>(function(){const t=document.getElementById('%s');if(!t)return;
t.querySelectorAll('thead th').forEach((th,c)=>{th.style.cursor='pointer';th.title='click to sort';
th.addEventListener('click',()=>{const up=th.dataset.dir!=='asc';th.dataset.dir=up?'asc':'desc';
const b=t.tBodies[0],rows=Array.from(b.rows),v=r=>{const x=r.cells[c].dataset.v;return x===undefined?r.cells[c].textContent:+x;};
rows.sort((p,q)=>{const a=v(p),z=v(q);const n=(typeof a==='number')?(isNaN(a)?1:isNaN(z)?-1:a-z):String(a).localeCompare(z);
return up?n:-n;});rows.forEach(r=>b.appendChild(r));});});})();</script>"""

__all__ = ["QueryComparison", "compare_rankings", "compare_embeddings", "compare_models", "match_ranks", "SORTS"]


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
    _layouts: dict = field(default_factory=dict, repr=False)

    def sorted(self, by: str = "most improved") -> pd.DataFrame:
        """The table in one of the :data:`SORTS` orders (``"most improved"``, ``"most hurt"``,
        ``"matches moved up most"``, ``"matches moved down most"``, ``"query order"``); NaN last."""
        if by not in SORTS:
            raise ValueError(f"sort by {by!r}: choose one of {list(SORTS)}")
        cols, ascending = SORTS[by]
        out = self.table.sort_values(cols, ascending=ascending, na_position="last", kind="stable")
        return out.reset_index(drop=True)

    def most_improved(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` queries whose AP rose most (ties: true matches that moved up most first)."""
        return self.sorted("most improved").head(n)

    def most_hurt(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` queries whose AP fell most (ties: true matches that moved down most first)."""
        return self.sorted("most hurt").head(n)

    def table_html(self, max_rows: int | None = None, *, by: str = "most improved", thumb_height: int = 48,
                   float_format: str = "{:.3f}") -> HtmlFragment:
        """The table as HTML, ``by`` one of :data:`SORTS` first, with each query's thumbnail;
        clicking a column header sorts by it (a few lines of inline JavaScript: it works in a saved
        report and in a trusted notebook; elsewhere the table stays in its first order).
        ``max_rows``: the first rows only (``None``: all)."""
        t = self.sorted(by)
        shown = t if max_rows is None else t.head(max_rows)
        cols = list(shown.columns)
        head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" + ("<th>image</th>" if c == "query_index" else "")
                       for c in cols)
        rows = []
        for r in shown.itertuples(index=False):
            cells = []
            for c, v in zip(cols, r):
                num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                text = (float_format.format(v) if isinstance(v, (float, np.floating)) and v == v
                        else "–" if isinstance(v, (float, np.floating)) else str(v))
                attr = f" data-v='{float(v)}'" if num else ""   # NaN: 'nan', sorted last
                cells.append(f"<td{attr}>{html.escape(text)}</td>")
                if c == "query_index":
                    img = source_image(self.before.query_images, int(v))
                    cells.append("<td></td>" if img is None else
                                 f"<td><img src='{thumbnail_uri(img, thumb_height, 'JPEG', JPEG_QUALITY)}' "
                                 f"style='height:{thumb_height}px'></td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        tid = f"cliptk-compare-{uuid.uuid4().hex[:8]}"   # unique on a page holding several
        note = f"<p class='note'>first {max_rows} of {len(t)} queries ({by} first)</p>" if len(shown) < len(t) else ""
        return HtmlFragment(f"<p>{html.escape(self.summary())}</p><table id='{tid}' class='cliptk-table'>"
                            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{note}"
                            + _SORT_JS % tid)

    def summary(self) -> str:
        """One line: mAP under both, how many queries improved / got worse."""
        d = self.table["delta_ap"]
        return (f"{self.names[0]} mAP {self.before.result.mAP:.4f} → {self.names[1]} mAP "
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
        moved = ("" if np.isnan(dr) else "; true matches kept their ranks" if abs(dr) < 0.05
                 else f"; true matches moved {abs(dr):.1f} ranks {'up' if dr < 0 else 'down'}")
        fig.update_layout(title=dict(text=f"query {q} (pid {self.before.query_pids[q]}): ΔAP {row['delta_ap']:+.3f}, first true "
                                          f"match #{fm_b} → #{fm_a}{moved}", font=dict(size=13)),
                          width=max(500, 95 * (width + 1.3)), height=2 * thumb_height + 220,
                          margin=dict(l=10, r=10, t=40, b=10), plot_bgcolor="white")
        return fig

    def scatter(self) -> go.Figure:
        """AP before (x) vs AP after (y), one point per query (``customdata`` = query index),
        coloured by ``delta_ap``: points above the diagonal improved."""
        t = self.table
        fig = go.Figure(go.Scatter(
            x=t["ap_before"].tolist(), y=t["ap_after"].tolist(), mode="markers", customdata=t["query_index"].tolist(),
            marker=dict(color=t["delta_ap"].tolist(), colorscale="RdYlGn", cmid=0, size=9, line=dict(width=0.5, color="#333"),
                        colorbar=dict(title="ΔAP")),
            hovertext=[f"query {i} (pid {p}): AP {a:.3f} → {b:.3f}" for i, p, a, b in
                       zip(t["query_index"], t["pid"], t["ap_before"], t["ap_after"])], hoverinfo="text"))
        fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line=dict(color="#999", dash="dot"))
        fig.update_layout(title=self.summary(), xaxis_title=f"AP {self.names[0]}", yaxis_title=f"AP {self.names[1]}",
                          width=520, height=480, xaxis_range=[-0.03, 1.03], yaxis_range=[-0.03, 1.03],
                          title_font_size=12, margin=dict(l=50, r=10, t=60, b=50))
        return fig

    def layouts(self, method: str = "pca", *, seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
        """The aligned before/after projection of queries then gallery: ``(before, after)``, each
        ``[n_q + n_g, 2]`` (rows ``0..n_q-1`` are the queries), from
        :func:`cliptk.viz.aligned_projection` (``"pca"``: Procrustes-aligned PCA, fast and
        deterministic; ``"aligned_umap"``, ``"umap"``, ``"tsne"``). Computed once per method."""
        key = (method, seed)
        if key not in self._layouts:
            both = [np.vstack([r._q, r._g]) for r in (self.before, self.after)]   # the rankings' unit rows
            self._layouts[key] = aligned_projection(both[0], both[1], method, seed=seed)
        return self._layouts[key]

    def _marks(self, q: int, k: int, side: int, xy: np.ndarray) -> tuple[dict, dict]:
        """The selected query in panel ``side`` (0 = before): lines to its top-``k`` there, and
        markers for the query (star), its true matches (green rings) and its wrong top-k (red)."""
        ranking = (self.before, self.after)[side]
        n_q = ranking.n_queries
        top = ranking.top_k(q, k, include_junk=False)
        hits = np.flatnonzero((ranking.gallery_pids == ranking.query_pids[q]) & ~ranking.junk_mask(q))
        wrong = top.loc[top["status"] != "match", "gallery_index"].astype(int).to_numpy()
        rank = {int(g): int(r) for g, r in zip(top["gallery_index"], top["rank"])}
        qx, qy = xy[q]
        lx, ly = [], []
        for g in top["gallery_index"].astype(int):
            lx += [qx, xy[n_q + g, 0], None]
            ly += [qy, xy[n_q + g, 1], None]
        pts = [(q, "query", "star", 16)] + [(n_q + g, "match", "circle-open", 13) for g in hits] \
            + [(n_q + g, "wrong", "x", 10) for g in wrong]
        hover = [f"query {q} (pid {ranking.query_pids[q]})"] + [
            f"gallery {i - n_q} ({s}, pid {ranking.gallery_pids[i - n_q]})"
            + (f", #{rank[i - n_q]} under {self.names[side]}" if i - n_q in rank else "")
            for i, s, _, _ in pts[1:]]
        lines = dict(x=lx, y=ly)
        colours = [COLOURS[s] for _, s, _, _ in pts]
        marks = dict(x=[xy[i, 0] for i, *_ in pts], y=[xy[i, 1] for i, *_ in pts], hovertext=hover,
                     customdata=[[0 if i < n_q else 1, i if i < n_q else i - n_q] for i, *_ in pts],
                     marker=dict(symbol=[m for *_, m, _ in pts], size=[z for *_, z in pts],
                                 color=colours, line=dict(width=2, color=colours)))
        return lines, marks

    def projection(self, query: int | None = None, k: int = 5, *, method: str = "pca", seed: int | None = 0,
                   height: int = 460) -> go.Figure:
        """Queries (blue diamonds) and gallery (grey dots) under both models in one aligned
        projection (:meth:`layouts`), side by side; with ``query``, that query (star), its true
        matches (green rings) and its wrong top-``k`` (red crosses) with lines to its top-``k``,
        in each panel: how far its matches moved. ``customdata`` of every point is ``[kind, index]``
        (kind 0 = query, 1 = gallery)."""
        layouts = self.layouts(method, seed=seed)
        n_q = self.before.n_queries
        fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.04, subplot_titles=[
            f"{name}: mAP {r.result.mAP:.3f}" for name, r in zip(self.names, (self.before, self.after))])
        for side, (xy, ranking) in enumerate(zip(layouts, (self.before, self.after))):
            col = side + 1
            fig.add_trace(go.Scatter(x=xy[n_q:, 0], y=xy[n_q:, 1], mode="markers", name="gallery",
                                     marker=dict(size=5, color="#bdbdbd"), showlegend=side == 0,
                                     customdata=[[1, j] for j in range(ranking.n_gallery)],
                                     hovertext=[f"gallery {j} (pid {p})" for j, p in enumerate(ranking.gallery_pids)],
                                     hoverinfo="text"), row=1, col=col)
            fig.add_trace(go.Scatter(x=xy[:n_q, 0], y=xy[:n_q, 1], mode="markers", name="queries (click one)",
                                     marker=dict(size=8, symbol="diamond", color=COLOURS["query"], opacity=0.55),
                                     showlegend=side == 0, customdata=[[0, i] for i in range(n_q)],
                                     hovertext=[f"query {i} (pid {p}): AP {a:.3f} → {b:.3f}" for i, p, a, b in
                                                zip(range(n_q), ranking.query_pids, self.table["ap_before"],
                                                    self.table["ap_after"])], hoverinfo="text"), row=1, col=col)
            lines, marks = ({"x": [], "y": []}, {"x": [], "y": []}) if query is None else \
                self._marks(self.before._check(query), k, side, xy)
            fig.add_trace(go.Scatter(mode="lines", line=dict(color="#ff7f0e", width=1), hoverinfo="skip",
                                     showlegend=False, name="top-k", **lines), row=1, col=col)
            fig.add_trace(go.Scatter(mode="markers", name="selected", showlegend=False, hoverinfo="text", **marks),
                          row=1, col=col)
        lo, hi = np.vstack(layouts).min(0), np.vstack(layouts).max(0)
        pad = 0.05 * (hi - lo + 1e-6)
        fig.update_xaxes(range=[lo[0] - pad[0], hi[0] + pad[0]], showticklabels=False, zeroline=False)
        fig.update_yaxes(range=[lo[1] - pad[1], hi[1] + pad[1]], showticklabels=False, zeroline=False)
        title = "aligned projection" + ("" if query is None else
                                        f": query {self.before._check(query)}, its true matches (green) and top-{k}")
        fig.update_layout(title=dict(text=title, font=dict(size=13)), height=height, width=980, plot_bgcolor="white",
                          legend=dict(orientation="h", y=-0.04), margin=dict(l=10, r=10, t=60, b=30))
        return fig

    def widget(self, k: int = 5, query: int | None = None, *, projection: bool = True, method: str = "pca",
               by: str = "most improved"):
        """Pick a query — in the dropdown (sorted ``by`` one of :data:`SORTS`, changeable), by a
        click in :meth:`scatter` or on a query of the aligned :meth:`projection` (a click on a
        gallery point picks a query of its identity) — and see its top-``k`` under both models
        (:meth:`figure`) and, in the projection, where it and its true matches sit under both.
        ipywidgets loads here.

        Returns:
            an ``ipywidgets.VBox``; ``.scatter``, ``.topk`` and ``.projection`` (``None`` with
            ``projection=False``) are its ``FigureWidget``\\ s, ``.captions`` the HTML lines
            over them (``"topk"``, ``"scatter"``, ``"projection"``), ``.sort`` and ``.query`` its
            dropdowns, ``.select(q)`` shows query ``q``.
        """
        import ipywidgets as widgets   # lazy: only the widget needs it

        def options(order: str) -> list[tuple[str, int]]:
            return [(f"query {int(r.query_index)}: ΔAP {r.delta_ap:+.3f}", int(r.query_index))
                    for r in self.sorted(order).itertuples()]

        def bare(fig: go.Figure, **layout) -> go.FigureWidget:
            # the captions are HTML widgets: JupyterLab's FigureWidget lost layout titles now and then
            return go.FigureWidget(fig.update_layout(**{"title_text": None, "margin_t": 10, **layout}))

        sort = widgets.Dropdown(options=list(SORTS), value=by, description="sort by")
        ordered = options(by)
        first = ordered[0][1] if query is None else self.before._check(query)
        sc = bare(self.scatter(), width=380, height=360)
        top = bare(self.figure(first, k))
        proj = bare(self.projection(first, k, method=method), margin_t=40) if projection else None
        layouts = self.layouts(method) if projection else None
        pick = widgets.Dropdown(options=ordered, value=first, description="query")
        captions = {name: widgets.HTML() for name in ("topk", "scatter", "projection")}
        captions["scatter"].value = "AP per query: above the diagonal improved (click one)"

        def select(q: int) -> None:
            q = self.before._check(int(q))
            new = self.figure(q, k)
            captions["topk"].value = html.escape(new.layout.title.text)
            with top.batch_update():
                top.layout.images, top.layout.shapes, top.layout.annotations = (), (), ()
                top.layout.images, top.layout.shapes = new.layout.images, new.layout.shapes
                top.layout.annotations = new.layout.annotations
                top.data[0].update(x=new.data[0].x, y=new.data[0].y, hovertext=new.data[0].hovertext,
                                   customdata=new.data[0].customdata)
                top.layout.width = new.layout.width
            with sc.batch_update():
                sc.data[0].marker.size = [18 if i == q else 9 for i in range(len(self.table))]   # plain ints for JS
            if proj is not None:
                captions["projection"].value = (f"aligned projection: query {q} (star), its true matches (green) "
                                                f"and wrong top-{k} (red) under both models; click a query")
                with proj.batch_update():
                    for side in (0, 1):
                        lines, marks = self._marks(q, k, side, layouts[side])
                        proj.data[4 * side + 2].update(**lines)
                        proj.data[4 * side + 3].update(**marks)
            if pick.value != q:
                pick.value = q

        def from_projection(trace, points, state) -> None:
            if not points.point_inds:
                return
            kind, i = (int(v) for v in trace.customdata[points.point_inds[0]])
            if kind == 0:
                select(i)
            else:   # a gallery point: a query of its identity, if there is one
                same = np.flatnonzero(self.before.query_pids == self.before.gallery_pids[i])
                if same.size:
                    select(int(same[0]))

        def resort(change) -> None:
            current = pick.value
            pick.options = options(change["new"])
            pick.value = current

        sc.data[0].on_click(lambda trace, points, state: points.point_inds and
                            select(int(trace.customdata[points.point_inds[0]])))
        if proj is not None:
            for tr in proj.data:
                tr.on_click(from_projection)
        pick.observe(lambda ch: select(ch["new"]), names="value")
        sort.observe(resort, names="value")
        # the top-k first; the scatter beside it, or below it when the row is too wide; the projection under both
        row = widgets.HBox([widgets.VBox([captions["topk"], top]), widgets.VBox([captions["scatter"], sc])],
                           layout=widgets.Layout(flex_flow="row wrap"))
        head = widgets.HTML(f"<b>{html.escape(self.summary())}</b>")
        box = widgets.VBox([widgets.HBox([sort, pick]), head, row]
                           + ([captions["projection"], proj] if proj is not None else []))
        box.scatter, box.topk, box.projection, box.captions = sc, top, proj, captions
        box.select, box.sort, box.query = select, sort, pick
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
