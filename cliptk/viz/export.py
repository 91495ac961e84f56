"""Embedding plots as HTML that shows each point's image on hover, without Jupyter.

:func:`html_fragment` turns a figure (or embeddings) into a ``<div>`` + ``<script>`` to embed in a
page or a :class:`cliptk.viz.Report`; :func:`export_html` writes a standalone page (plotly.js
inlined, no network needed) to share after a workshop, or, for large plots, a page plus a folder of
files. Plotly hover labels cannot show images, so the points' thumbnails are packed into sprite
atlases (:mod:`cliptk.viz.atlas`) and a few lines of JavaScript show the hovered point's one in a
fixed box. The script finds a point's row and cell from two int32 arrays (point -> distinct row,
distinct row -> dataset row) and the trace offsets, so the figure JSON carries no per-point images.

Example (skipped by the doctest run: it needs a dataset with images):
    >>> export_html(emb, ds, "players.html", color_by="team")   # doctest: +SKIP
"""
from __future__ import annotations

import base64
import html
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from .._util import atomic_write_text
from ..data import ReIdDataset
from .atlas import Atlases, pack_thumbnails
from .figures import compact_colours, plot_embeddings, trace_rows
from .project import ArrayLike

__all__ = ["html_fragment", "export_html"]

#: above this many points :func:`export_html` writes a page plus a folder of files (plotly.js and the
#: thumbnail atlases) instead of one self-contained file, and leaves the figure's per-point hover text
#: out (the hover box shows the metadata from a compact table instead)
FOLDER_THRESHOLD = 20_000

_HOVER_JS = """
(function () {
  var gd = document.getElementById('{plot_id}');
  if (!gd || !gd.on) { return; }
  var P = __PAYLOAD__;
  function ints(d) {               // {"u1"|"u2"|"i4": base64 little-endian}, or null: the identity
    if (d === null) { return {length: Infinity, get: function (i) { return i; }}; }
    var kind = Object.keys(d)[0], b = atob(d[kind]), u = new Uint8Array(b.length);
    for (var i = 0; i < b.length; i++) { u[i] = b.charCodeAt(i); }
    var a = kind === 'u1' ? u : kind === 'u2' ? new Uint16Array(u.buffer) : new Int32Array(u.buffer);
    return {length: a.length, get: function (i) { return a[i]; }};
  }
  var points = ints(P.points), rows = ints(P.rows), missing = {};
  P.missing.forEach(function (k) { missing[k] = true; });
  var L = P.labels, codes = {};
  if (L) { L.columns.forEach(function (c) { if (L.data[c].codes) { codes[c] = ints(L.data[c].codes); } }); }
  var A = P.atlas || {urls: [], cell: [0, 0], columns: 1, rows: 1, zoom: 1};
  var cw = A.cell[0], ch = A.cell[1], per = A.columns * A.rows, z = A.zoom;
  var box = document.createElement('div');
  box.id = '{plot_id}-thumb';
  box.className = 'cliptk-thumb';
  box.style.cssText = 'position:fixed;bottom:12px;right:12px;z-index:10000;display:none;pointer-events:none;' +
    'background:#fff;border:1px solid #999;border-radius:4px;padding:4px;box-shadow:0 2px 6px rgba(0,0,0,.3);' +
    'font:12px sans-serif;text-align:center;max-width:320px';
  var sprite = document.createElement('div');
  sprite.className = 'cliptk-sprite';
  sprite.style.cssText = 'margin:auto;background-repeat:no-repeat;width:' + (cw * z) + 'px;height:' + (ch * z) + 'px';
  var label = document.createElement('div');
  box.appendChild(sprite); box.appendChild(label); document.body.appendChild(box);
  var loaded = {}, shown = -1;
  function load(a) {               // an atlas is fetched and decoded once, when first needed
    if (loaded[a] === undefined) {
      loaded[a] = false;
      var im = new Image();
      im.onload = function () { loaded[a] = true; if (shown === a) { box.dataset.ready = '1'; } };
      im.src = A.urls[a];
    }
    return loaded[a];
  }
  function text(k) {
    var out = ['row ' + rows.get(k)];
    if (L) {
      L.columns.forEach(function (c) {
        var d = L.data[c], v = codes[c] ? d.values[codes[c].get(k)] : d.values.length === 1 ? d.values[0] : d.values[k];
        if (v !== null && v !== '') { out.push(c + ': ' + v); }
      });
    }
    return out.join(' \u00b7 ');
  }
  gd.on('plotly_hover', function (ev) {
    var p = ev && ev.points && ev.points[0];
    if (!p || P.offsets[p.curveNumber] === undefined) { box.style.display = 'none'; return; }
    var k = points.get(P.offsets[p.curveNumber] + p.pointNumber);
    var a = Math.floor(k / per), j = k % per;
    box.dataset.row = rows.get(k);
    label.textContent = text(k) + (missing[k] ? ' (image unreadable)' : '');
    if (!P.atlas || missing[k]) {
      sprite.style.display = 'none'; box.dataset.ready = '1'; shown = -1;
    } else {
      shown = a;
      sprite.style.display = 'block';
      sprite.style.backgroundImage = 'url(' + JSON.stringify(A.urls[a]) + ')';
      sprite.style.backgroundSize = (A.columns * cw * z) + 'px auto';
      sprite.style.backgroundPosition = (-(j % A.columns) * cw * z) + 'px ' + (-Math.floor(j / A.columns) * ch * z) + 'px';
      box.dataset.ready = load(a) ? '1' : '0';
    }
    box.style.display = 'block';
  });
  gd.on('plotly_unhover', function () { box.style.display = 'none'; shown = -1; });
})();
"""


def _b64_ints(values) -> dict:
    """Non-negative integers as base64 little-endian bytes of the smallest of uint8 / uint16 /
    int32 that holds them (the page's ``ints()`` reads them back), e.g. ``{"u1": "AAEC"}``."""
    a = np.asarray(values, dtype=np.int64)
    top = int(a.max()) if a.size else 0
    kind = "u1" if top < 2 ** 8 else "u2" if top < 2 ** 16 else "i4"
    return {kind: base64.b64encode(np.ascontiguousarray(a, dtype="<" + kind).tobytes()).decode("ascii")}


def _label_table(dataset: ReIdDataset, rows: np.ndarray) -> dict:
    """The hover box's metadata for ``rows``, column by column: few distinct values as codes into a
    list of values, others as one value per row (file names: the name only)."""
    t = dataset.table
    cols = [c for c in ("pid", "camid", "split") if c in t.columns] \
        + [c for c in t.columns if c not in ("path", "pid", "camid", "split", "caption")] \
        + [c for c in ("caption", "path") if c in t.columns]
    data = {}
    for c in cols:
        v = t[c].to_numpy()[rows]
        if c == "path":
            v = np.array([os.path.basename(str(x)) for x in v], dtype=object)
        v = pd.Series(v, dtype=object).where(pd.notna(v), None)
        if v.isna().all():
            continue                          # an empty column (e.g. no captions) says nothing
        uniq, inv = np.unique(v.astype(str).to_numpy(), return_inverse=True)
        if len(uniq) == 1:
            data[c] = {"values": [_plain(v.iat[0])]}   # the same for every row: stored once
        elif len(uniq) <= max(16, len(v) // 4):
            first = pd.Series(np.arange(len(v))).groupby(inv).first().to_numpy()
            data[c] = {"codes": _b64_ints(inv), "values": [_plain(v.iat[i]) for i in first]}
        else:
            data[c] = {"values": [_plain(x) for x in v]}
    return {"columns": [c for c in cols if c in data], "data": data}


def _plain(v: Any):
    """A JSON value of a table cell (numpy scalars as Python's, NaN/None as null)."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    if isinstance(v, np.generic):
        v = v.item()
    return v if isinstance(v, (int, float, str, bool)) else str(v)


def _figure(fig_or_embeddings: go.Figure | ArrayLike, dataset: ReIdDataset, plot_kwargs: dict) -> go.Figure:
    """A copy of the figure (the caller's is left as it was), or the plot of the embeddings."""
    if isinstance(fig_or_embeddings, go.Figure):
        return go.Figure(fig_or_embeddings)
    if all(hasattr(fig_or_embeddings, a) for a in ("to_dict", "data", "layout")):
        return go.Figure(fig_or_embeddings.to_dict())  # a FigureWidget
    return plot_embeddings(fig_or_embeddings, dataset, **plot_kwargs)


def _n_points(fig: go.Figure) -> int:
    return sum(len(trace_rows(tr)) for tr in fig.data)


def _hover_script(fig: go.Figure, dataset: ReIdDataset, thumbnails: bool, height: int, compact: bool,
                  workers: int | None, atlas_url) -> tuple[str, Atlases | None]:
    """The hover script of ``fig`` and its atlases: every trace's points mapped to the dataset's
    distinct rows, their thumbnails packed (``thumbnails``), and with ``compact`` the metadata
    table the box shows (then the figure's own hover text is removed). ``atlas_url(i, atlases)``
    gives atlas ``i``'s URL (a file name, or a data URI for a self-contained page)."""
    per_trace = [trace_rows(tr) for tr in fig.data]
    for rows in per_trace:
        if len(rows) and rows.max() >= len(dataset):
            raise ValueError(f"figure rows go up to {rows.max()} but dataset {dataset.name!r} has "
                             f"{len(dataset)} rows; pass the dataset the figure was made from")
    all_rows = np.concatenate(per_trace) if per_trace else np.zeros(0, np.int64)
    uniq, points = np.unique(all_rows, return_inverse=True)   # a row shown twice (two panels) is packed once
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in per_trace])])[:-1]
    atlases = pack_thumbnails(dataset, uniq, height, workers=workers) if thumbnails and len(uniq) else None
    if atlases is not None and atlases.unreadable:
        warnings.warn(f"{int(atlases.missing.sum())} of {len(uniq)} images could not be read and show no "
                      f"thumbnail; first: {atlases.unreadable}", UserWarning, stacklevel=4)
    if compact:
        for tr in fig.data:   # the per-point hover text would be most of a large page
            tr.update(text=None, hovertemplate=None, hoverinfo="none", customdata=None)
            compact_colours(tr)
    payload = {
        "offsets": [int(o) for o in offsets],
        # point -> distinct row -> dataset row; null where it is the identity (one trace of rows 0..N-1)
        "points": None if np.array_equal(points, np.arange(len(points))) else _b64_ints(points),
        "rows": None if np.array_equal(uniq, np.arange(len(uniq))) else _b64_ints(uniq),
        "missing": [] if atlases is None else np.flatnonzero(atlases.missing).tolist(),
        "labels": _label_table(dataset, uniq) if compact else None,
        "atlas": None if atlases is None else {
            "urls": [atlas_url(i, atlases) for i in range(len(atlases.images))], "cell": list(atlases.cell),
            "columns": atlases.columns, "rows": atlases.rows, "zoom": 2},
    }
    script = _HOVER_JS.replace("__PAYLOAD__", json.dumps(payload, separators=(",", ":")).replace("</", "<\\/"))
    return script, atlases


def _data_uri(i: int, atlases: Atlases) -> str:
    return f"data:image/{atlases.fmt};base64," + base64.b64encode(atlases.images[i]).decode("ascii")


def html_fragment(fig_or_embeddings: go.Figure | ArrayLike, dataset: ReIdDataset, thumbnails: bool = True, *,
                  thumbnail_height: int = 48, include_plotlyjs: bool | str = False, div_id: str | None = None,
                  workers: int | None = None, **plot_kwargs: Any) -> str:
    """The plot as an HTML ``<div>`` + ``<script>`` fragment to embed in a larger page or report.

    With ``thumbnails``, the points' images are packed into a few sprite atlases
    (:func:`cliptk.viz.atlas.pack_thumbnails`, ``thumbnail_height`` px high, embedded as data
    URIs), and a few lines of JavaScript listen to ``plotly_hover`` / ``plotly_unhover`` and show
    the hovered point's thumbnail (at twice its size) and row in a fixed box at the bottom right of
    the window (plotly hover labels cannot show images); the figure's own hover label still shows
    the metadata. Sizes are measured in ``benchmarks/RESULTS.md``; above
    :data:`FOLDER_THRESHOLD` points use :func:`export_html`, which writes the atlases as files.

    Args:
        fig_or_embeddings: a figure from :func:`plot_embeddings` / :func:`plot_before_after`, or
            embeddings / a projection (then plotted with ``plot_kwargs``, e.g. ``color_by``).
        dataset: the rows' :class:`ReIdDataset` (thumbnails come from its images; an unreadable
            one shows "image unreadable", and a warning names the first such file).
        thumbnails: embed thumbnails and the hover script.
        thumbnail_height: thumbnail height in pixels (shown at twice that size).
        include_plotlyjs: ``False`` (default: the page must load plotly.js once, before the
            fragment), ``True`` (inline: a few MB, works offline) or ``"cdn"``.
        div_id: the plot ``<div>``'s id (default: a random one).
        workers: processes packing the atlases (default: the machine's cores).

    Returns:
        The HTML fragment as a string.

    Raises:
        ValueError: the figure has no dataset rows in its ``customdata``, or they do not fit the dataset.

    Example (skipped by the doctest run: it needs a dataset with images):
        >>> frag = html_fragment(fig, ds, include_plotlyjs="cdn")   # doctest: +SKIP
    """
    fig = _figure(fig_or_embeddings, dataset, plot_kwargs)
    script = None
    if thumbnails:
        script, _ = _hover_script(fig, dataset, True, thumbnail_height, compact=False, workers=workers,
                                  atlas_url=_data_uri)
    else:
        for tr in fig.data:
            trace_rows(tr)   # the same check as with thumbnails
    return fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs, div_id=div_id, post_script=script,
                       config={"displaylogo": False, "responsive": True})


def export_html(fig_or_embeddings: go.Figure | ArrayLike, dataset: ReIdDataset, path: str | os.PathLike,
                thumbnails: bool = True, *, thumbnail_height: int | None = None, include_plotlyjs: bool | str = True,
                title: str = "cliptk embeddings", layout: str = "auto", workers: int | None = None,
                **plot_kwargs: Any) -> Path:
    """Write an HTML page of the plot that shows the hovered point's image thumbnail.

    The page needs no Jupyter and, with the default ``include_plotlyjs=True``, no network: share
    it after a workshop. Up to :data:`FOLDER_THRESHOLD` points (``layout="auto"``) it is one
    self-contained file, as :func:`html_fragment` makes it. Above (or with ``layout="folder"``) it
    is ``path`` plus a folder beside it, ``<name>_files/``, holding ``plotly.min.js`` and the
    thumbnail atlases (``atlas-0000.webp`` ...): share both together. There the figure's per-point
    hover text is left out and the hover box shows the row's metadata instead (pid, camid, split,
    the other columns, the file name) from a compact column table; 100k points take ~20 MB in all
    (``benchmarks/RESULTS.md``). The folder is replaced as a whole, and the page is written last.

    Args:
        fig_or_embeddings, dataset, thumbnails, include_plotlyjs, workers, **plot_kwargs:
            as in :func:`html_fragment` (here plotly.js is included by default: inlined in one file,
            or ``plotly.min.js`` in the folder).
        path: the ``.html`` file to write (parent folders are created).
        thumbnail_height: thumbnail height in pixels (default: 48 in one file, 32 in a folder,
            which keeps 100k thumbnails near 15 MB).
        title: the page's ``<title>``.
        layout: ``"auto"``, ``"file"`` (one file whatever the size) or ``"folder"``.

    Returns:
        The written page's path.

    Raises:
        ValueError: an unknown ``layout``, or rows that do not fit the dataset.

    Example (skipped by the doctest run: it needs a dataset with images):
        >>> export_html(emb, ds, "out/players.html", color_by="team")   # doctest: +SKIP
    """
    if layout not in ("auto", "file", "folder"):
        raise ValueError(f"layout={layout!r}: choose 'auto', 'file' (one self-contained page) or 'folder' "
                         "(a page plus a folder of plotly.js and thumbnail atlases)")
    path = Path(path)
    fig = _figure(fig_or_embeddings, dataset, plot_kwargs)
    folder = layout == "folder" or (layout == "auto" and _n_points(fig) > FOLDER_THRESHOLD)
    head = f"<meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
    if not folder:
        frag = html_fragment(fig, dataset, thumbnails, thumbnail_height=thumbnail_height or 48,
                             include_plotlyjs=include_plotlyjs, workers=workers)
    else:
        assets = path.with_name(path.stem + "_files")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=assets.name + ".", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())   # mkdtemp makes it private; the folder is to be shared
        try:
            script, atlases = _hover_script(fig, dataset, thumbnails, thumbnail_height or 32, compact=True,
                                            workers=workers,
                                            atlas_url=lambda i, a: f"{quote(assets.name)}/atlas-{i:04d}.{a.fmt}")
            for i, data in enumerate(atlases.images if atlases is not None else []):
                (tmp / f"atlas-{i:04d}.{atlases.fmt}").write_bytes(data)
            if include_plotlyjs is True:
                (tmp / "plotly.min.js").write_text(get_plotlyjs(), encoding="utf-8")
                head += f"<script src=\"{quote(assets.name)}/plotly.min.js\" charset=\"utf-8\"></script>"
            frag = fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs if include_plotlyjs == "cdn" else False,
                               post_script=script, config={"displaylogo": False, "responsive": True})
            _replace_folder(tmp, assets)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    page = (f"<!DOCTYPE html>\n<html>\n<head>{head}</head>\n"
            f"<body style=\"margin:0;font-family:sans-serif\">\n{frag}\n</body>\n</html>\n")
    return atomic_write_text(path, page)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_folder(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target``, replacing what was there (a half-done replacement
    leaves either the old folder or the new one, never a mix)."""
    old = None
    if target.exists():
        old = target.with_name(target.name + f".old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
