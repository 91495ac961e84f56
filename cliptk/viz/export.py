"""Embedding plots as HTML that shows each point's image on hover, without Jupyter.

:func:`html_fragment` turns a figure (or embeddings) into a ``<div>`` + ``<script>`` to embed in a
page or a :class:`cliptk.viz.Report`; :func:`export_html` writes a standalone page (plotly.js
inlined, no network needed) to share after a workshop. Plotly hover labels cannot show images, so
each point's ``customdata`` carries a small thumbnail data URI (:func:`cliptk._util.thumbnail_uri`)
next to its dataset row, and a few lines of JavaScript show it in a fixed box on hover.

Example (skipped by the doctest run: it needs a dataset with images):
    >>> export_html(emb, ds, "players.html", color_by="team")   # doctest: +SKIP
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Sequence

import plotly.graph_objects as go

from .._util import atomic_write_text, thumbnail_uri
from ..data import ReIdDataset
from .figures import plot_embeddings, trace_rows
from .project import ArrayLike

__all__ = ["html_fragment", "export_html"]

_HOVER_JS = """
(function () {
  var gd = document.getElementById('{plot_id}');
  if (!gd || !gd.on) { return; }
  var box = document.createElement('div');
  box.id = '{plot_id}-thumb';
  box.className = 'cliptk-thumb';
  box.style.cssText = 'position:fixed;bottom:12px;right:12px;z-index:10000;display:none;pointer-events:none;' +
    'background:#fff;border:1px solid #999;border-radius:4px;padding:4px;box-shadow:0 2px 6px rgba(0,0,0,.3);' +
    'font:12px sans-serif;text-align:center';
  var img = document.createElement('img');
  img.alt = 'thumbnail';
  img.style.cssText = 'display:block;height:__HEIGHT__px;width:auto;margin:auto';
  var label = document.createElement('div');
  box.appendChild(img); box.appendChild(label); document.body.appendChild(box);
  gd.on('plotly_hover', function (ev) {
    var p = ev && ev.points && ev.points[0];
    var cd = p && p.customdata;
    if (!cd || !cd[1]) { box.style.display = 'none'; return; }
    img.src = cd[1];
    label.textContent = 'row ' + cd[0];
    box.style.display = 'block';
  });
  gd.on('plotly_unhover', function () { box.style.display = 'none'; });
})();
"""


def _thumbnail_uris(dataset: ReIdDataset, rows: Sequence[int], height: int) -> list[str]:
    """One data URI per row ('' for an image the dataset skips as unreadable)."""
    out = []
    for r in rows:
        img = dataset[int(r)]
        out.append("" if img is None else thumbnail_uri(img, height))
    return out


def _figure_for_export(fig_or_embeddings: go.Figure | ArrayLike, dataset: ReIdDataset, thumbnails: bool,
                       thumbnail_height: int, plot_kwargs: dict) -> go.Figure:
    if isinstance(fig_or_embeddings, go.Figure):
        fig = go.Figure(fig_or_embeddings)  # a copy: the caller's figure is left as it was
    elif all(hasattr(fig_or_embeddings, a) for a in ("to_dict", "data", "layout")):
        fig = go.Figure(fig_or_embeddings.to_dict())  # a FigureWidget
    else:
        fig = plot_embeddings(fig_or_embeddings, dataset, **plot_kwargs)
    if thumbnails:
        for tr in fig.data:
            rows = trace_rows(tr)
            if len(rows) and rows.max() >= len(dataset):
                raise ValueError(f"figure rows go up to {rows.max()} but dataset {dataset.name!r} has "
                                 f"{len(dataset)} rows; pass the dataset the figure was made from")
            uris = _thumbnail_uris(dataset, rows, thumbnail_height)
            tr.customdata = [[int(r), u] for r, u in zip(rows, uris)]
    return fig


def html_fragment(fig_or_embeddings: go.Figure | ArrayLike, dataset: ReIdDataset, thumbnails: bool = True, *,
                  thumbnail_height: int = 48, include_plotlyjs: bool | str = False, div_id: str | None = None,
                  **plot_kwargs: Any) -> str:
    """The plot as an HTML ``<div>`` + ``<script>`` fragment to embed in a larger page or report.

    With ``thumbnails``, each point's ``customdata`` holds ``[row, "data:image/webp;base64,..."]``
    (a ``thumbnail_height``-px thumbnail) and a few lines of JavaScript listen to
    ``plotly_hover`` / ``plotly_unhover`` and show that image in a fixed box at the bottom right of
    the window (plotly hover labels cannot show images). The page grows by one thumbnail per
    point (sizes measured in ``benchmarks/RESULTS.md``).

    Args:
        fig_or_embeddings: a figure from :func:`plot_embeddings` / :func:`plot_before_after`, or
            embeddings / a projection (then plotted with ``plot_kwargs``, e.g. ``color_by``).
        dataset: the rows' :class:`ReIdDataset` (thumbnails come from its images).
        thumbnails: embed thumbnails and the hover script.
        thumbnail_height: thumbnail height in pixels (shown at twice that size).
        include_plotlyjs: ``False`` (default: the page must load plotly.js once, before the
            fragment), ``True`` (inline: a few MB, works offline) or ``"cdn"``.
        div_id: the plot ``<div>``'s id (default: a random one).

    Returns:
        The HTML fragment as a string.

    Raises:
        ValueError: the figure has no dataset rows in its ``customdata``, or they do not fit the dataset.

    Example (skipped by the doctest run: it needs a dataset with images):
        >>> frag = html_fragment(fig, ds, include_plotlyjs="cdn")   # doctest: +SKIP
    """
    fig = _figure_for_export(fig_or_embeddings, dataset, thumbnails, thumbnail_height, plot_kwargs)
    script = _HOVER_JS.replace("__HEIGHT__", str(2 * thumbnail_height)) if thumbnails else None
    return fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs, div_id=div_id, post_script=script,
                       config={"displaylogo": False, "responsive": True})


def export_html(fig_or_embeddings: go.Figure | ArrayLike, dataset: ReIdDataset, path: str | os.PathLike,
                thumbnails: bool = True, *, thumbnail_height: int = 48, include_plotlyjs: bool | str = True,
                title: str = "cliptk embeddings", **plot_kwargs: Any) -> Path:
    """Write a standalone HTML page of the plot that shows image thumbnails on hover.

    The page needs no Jupyter and, with the default ``include_plotlyjs=True``, no network: share
    it after a workshop. See :func:`html_fragment` for how the thumbnails work.

    Args:
        fig_or_embeddings, dataset, thumbnails, thumbnail_height, include_plotlyjs, **plot_kwargs:
            as in :func:`html_fragment` (here plotly.js is inlined by default).
        path: the ``.html`` file to write (parent folders are created).
        title: the page's ``<title>``.

    Returns:
        The written path.

    Example (skipped by the doctest run: it needs a dataset with images):
        >>> export_html(emb, ds, "out/players.html", color_by="team")   # doctest: +SKIP
    """
    frag = html_fragment(fig_or_embeddings, dataset, thumbnails, thumbnail_height=thumbnail_height,
                         include_plotlyjs=include_plotlyjs, **plot_kwargs)
    page = (f"<!DOCTYPE html>\n<html>\n<head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head>\n"
            f"<body style=\"margin:0;font-family:sans-serif\">\n{frag}\n</body>\n</html>\n")
    return atomic_write_text(path, page)
