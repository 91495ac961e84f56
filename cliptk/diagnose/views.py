"""Pictures of a ranking and of any ranked table: thumbnails with coloured borders, as plotly
figures or HTML.

:func:`plot_ranked` shows one query's top-k (correct / wrong / same-camera junk marked by border
colour, :data:`COLOURS`), :func:`worst_queries_html` all queries ordered by AP, worst first,
paged, and :func:`table_html` renders any table of :mod:`cliptk.diagnose` with a thumbnail
beside each image-index column. HTML comes back as an :class:`HtmlFragment` that Jupyter
renders. The interactive counterpart is :class:`cliptk.widgets.RankBrowser`.

Example:
    >>> from PIL import Image
    >>> from cliptk.diagnose import rank_gallery
    >>> r = rank_gallery(np.eye(3), np.eye(3)[[0, 1, 2, 0]], [0, 1, 2], [0, 1, 2, 0],
    ...                  gallery_images=[Image.new("RGB", (8, 16))] * 4)
    >>> len(plot_ranked(0, r, k=2).layout.images)       # the gallery thumbnails (no query images)
    2
    >>> worst_queries_html(r, k=2).count("<img ")
    6
"""
from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .._util import thumbnail_uri
from .ranking import ImageSource, Ranking, source_image

__all__ = ["plot_ranked", "worst_queries_html", "table_html", "HtmlFragment", "COLOURS"]

#: Border colours: correct identity, wrong identity, same identity and camera (junk), the query.
COLOURS = {"match": "#2ca02c", "wrong": "#d62728", "junk": "#9e9e9e", "query": "#1f77b4"}
#: Thumbnails of the ranked views: JPEG at this quality (small, and every browser shows it).
JPEG_QUALITY = 85


class HtmlFragment(str):
    """A string of HTML that Jupyter renders (``_repr_html_``); write it to a file as it is."""

    def _repr_html_(self) -> str:
        return str(self)


def _thumbnail_uri(img, height: int) -> str:
    return thumbnail_uri(img, height, "JPEG", JPEG_QUALITY)


def _img_tag(source: ImageSource, i: int, height: int, border: str | None = None) -> str:
    img = source_image(source, i)
    style = f"height:{height}px;" + (f"border:3px solid {border};" if border else "")
    if img is None:
        return f"<div style='{style}width:{height // 2}px;display:inline-block;background:#eee'></div>"
    return f"<img src='{_thumbnail_uri(img, height)}' style='{style}' title='{int(i)}'>"


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
        >>> from cliptk.diagnose import rank_gallery
        >>> r = rank_gallery(np.eye(3), np.eye(3), [0, 1, 2], [0, 1, 2])
        >>> fig = plot_ranked(int(r.worst_queries().query_index[0]), r, k=2)   # fig.show() in a notebook
        >>> fig.layout.title.text
        'query 0 (pid 0): AP 1.000, first true match at rank 1'
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
        img = source_image(source, idx)
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
    fig.update_layout(title=dict(text=ranking.describe(q, k), font=dict(size=13)), width=max(400, 95 * len(cells)),
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

    Example (in a notebook, display it with ``IPython.display.HTML``):
        >>> from cliptk.diagnose import rank_gallery
        >>> r = rank_gallery(np.eye(3), np.eye(3), [0, 1, 2], [0, 1, 2])
        >>> worst_queries_html(r, page=0).startswith("<div class='cliptk-worst'><p>Queries by AP, worst first")
        True
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
        >>> from PIL import Image
        >>> t = pd.DataFrame({"index": [1, 0], "score": [0.5, 0.25]})
        >>> page = table_html(t, {"index": [Image.new("RGB", (8, 16))] * 2})
        >>> page.count("<img "), "<td>0.2500</td>" in page
        (2, True)
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
