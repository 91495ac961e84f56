"""Plotly figures of an embedding space: one scatter coloured by metadata, or two aligned panels.

:func:`plot_embeddings` draws a projection (computed with :func:`cliptk.viz.project` when given
embeddings) as a plotly scatter — WebGL ``Scattergl`` for large ``N``, ``Scatter3d`` in 3-D —
coloured by any metadata column (``pid``, ``team``, ``camid``, ``split``, ``correct``, a loss
...) or an array, with the row's metadata on hover. :func:`plot_before_after` shows the same
images embedded by two models side by side in one aligned projection, same colours.

Every trace carries ``customdata[:, 0]`` = the dataset row of each point, so a point can be traced
back to its image (:func:`trace_rows`); :mod:`cliptk.viz.export` and the Explorer widget rely on it.

Example:
    >>> x = np.random.default_rng(0).normal(size=(30, 8))
    >>> fig = plot_embeddings(x, color_by=np.arange(30) % 2, method="pca")
    >>> sorted(int(r) for tr in fig.data for r in trace_rows(tr)) == list(range(30))
    True
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .. import metrics
from .._util import as_rows, to_numpy, unit_rows
from ..data import ReIdDataset
from .project import ArrayLike, aligned_projection, project

__all__ = ["plot_embeddings", "plot_before_after", "trace_rows", "check_dataset", "PALETTE", "ALIASES",
           "WEBGL_THRESHOLD"]

#: Colours for categories, cycled when there are more categories than colours.
PALETTE: list[str] = list(qualitative.Dark24) + list(qualitative.Light24)
#: Column aliases accepted by ``color_by``.
ALIASES = {"camera": "camid", "cam": "camid", "identity": "pid", "id": "pid"}
#: Above this many points 2-D plots use WebGL (``Scattergl``).
WEBGL_THRESHOLD = 1000
#: above this many points :func:`plot_embeddings` gives cycled category colours as numbers on a
#: stepwise scale (:func:`stepwise_colours`), and the explorer keeps only "row N" in each point's
#: hover label: 100k colour strings cost seconds of plotly's validation, and 100k labels most of
#: what the browser is sent
LARGE_FIGURE = 20_000


def check_dataset(dataset: ReIdDataset | None, n: int) -> None:
    """Raise ``ValueError`` unless ``dataset`` (when given) has ``n`` rows, one per embedding.

    Example:
        >>> check_dataset(None, 3)        # no dataset: nothing to check
    """
    if dataset is not None and len(dataset) != n:
        raise ValueError(f"{n} embeddings but dataset {dataset.name!r} has {len(dataset)} rows; "
                         "pass the dataset the embeddings were computed from (same rows, same order)")


def _nn_correct(emb: np.ndarray, pids: np.ndarray) -> np.ndarray:
    """'correct' / 'incorrect' (the nearest *other* image by cosine has the same pid) / 'unknown'."""
    from sklearn.neighbors import NearestNeighbors  # lazy: scikit-learn is slow to import, needed for 'correct' only

    x = unit_rows(emb, "embeddings", np.float32)
    nn = NearestNeighbors(n_neighbors=2, metric="cosine", algorithm="brute").fit(x)
    idx = nn.kneighbors(return_distance=False, n_neighbors=1)[:, 0]
    out = np.where(pids[idx] == pids, "correct", "incorrect").astype(object)
    out[pids < 0] = "unknown"
    return out


def _colour_values(color_by: str | ArrayLike | None, dataset: ReIdDataset | None, n: int,
                   emb: np.ndarray | None) -> tuple[np.ndarray | None, str]:
    """The per-point values to colour by and their name."""
    if color_by is None:
        return None, ""
    if isinstance(color_by, str):
        if dataset is None:
            raise ValueError(f"color_by={color_by!r} names a column, but no dataset was given; pass the dataset "
                             "or an array of N values")
        col = color_by if color_by in dataset.table.columns else ALIASES.get(color_by, color_by)
        if col in dataset.table.columns:
            return dataset.table[col].to_numpy(), col
        if color_by in ("correct", "incorrect"):
            if emb is None or emb.shape[1] <= 3:
                raise ValueError("color_by='correct' needs the high-dimensional embeddings (it checks whether each "
                                 "image's nearest neighbour has the same pid); pass embeddings, not a projection, "
                                 "or add a 'correct' column to dataset.table")
            return _nn_correct(emb, dataset.pids), "correct"
        raise ValueError(f"color_by={color_by!r} is not a column of dataset {dataset.name!r}; columns: "
                         f"{list(dataset.table.columns)} (plus 'correct', or pass an array of N values)")
    values = to_numpy(color_by, "color_by")
    if values.ndim != 1 or len(values) != n:
        raise ValueError(f"color_by array must have one value per point ({n}), got shape {values.shape}")
    return values, "value"


def _is_continuous(values: np.ndarray) -> bool:
    return values.dtype.kind == "f"


def _categories(values: np.ndarray) -> list:
    uniq = pd.unique(pd.Series(values).astype(object).where(pd.notna(values), "nan"))
    try:
        return sorted(uniq)
    except TypeError:
        return sorted(uniq, key=str)


def _fmt_value(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "nan" if v != v else f"{v:.4g}"
    s = str(v)
    return s if len(s) <= 70 else s[:67] + "..."


def _hover_texts(dataset: ReIdDataset | None, n: int, columns: Sequence[str] | None,
                 colour: tuple[np.ndarray | None, str]) -> list[str]:
    """One HTML hover label per row: the metadata columns (and the colour value if it is not one)."""
    values, name = colour
    if dataset is None:
        base = [f"row {i}" for i in range(n)]
    else:
        t = dataset.table
        cols = list(columns) if columns is not None else (
            ["pid", "camid", "split"] + [c for c in t.columns if c not in ("path", "pid", "camid", "split", "caption")]
            + ["caption", "path"])
        missing = [c for c in cols if c not in t.columns]
        if missing:
            raise ValueError(f"hover_columns {missing} are not columns of {dataset.name!r}: {list(t.columns)}")
        data = {c: t[c].to_numpy() for c in cols}
        base = []
        for i in range(n):
            parts = [f"<b>row {i}</b>"]
            for c in cols:
                v = data[c][i]
                if v is None or (isinstance(v, float) and v != v):
                    continue
                if c == "path":
                    v = Path(str(v)).name
                parts.append(f"{html.escape(c)}: {html.escape(_fmt_value(v))}")
            base.append("<br>".join(parts))
    if values is not None and (dataset is None or name not in dataset.table.columns):
        base = [f"{b}<br>{html.escape(name)}: {html.escape(_fmt_value(v))}" for b, v in zip(base, values)]
    return base


def _marker_size(n: int) -> int:
    return 8 if n < 500 else 6 if n < 5000 else 4


def _traces(coords: np.ndarray, values: np.ndarray | None, name: str, texts: list[str], rows: np.ndarray, *,
            webgl: bool, size: int, max_legend: int, colour_map: dict | None = None,
            cmin: float | None = None, cmax: float | None = None, showlegend: bool = True,
            group: str = "") -> list:
    """Scatter traces for ``coords`` ([n, 2|3]); one per category when there are few, else one."""
    three = coords.shape[1] == 3
    cls = go.Scatter3d if three else (go.Scattergl if webgl else go.Scatter)

    def make(sel: np.ndarray, label: str | None, marker: dict, legend: bool) -> Any:
        kw = dict(x=coords[sel, 0], y=coords[sel, 1], mode="markers", marker=marker,
                  text=[texts[i] for i in np.flatnonzero(sel)], hovertemplate="%{text}<extra></extra>",
                  customdata=rows[sel][:, None], name=label or "points", showlegend=legend and label is not None,
                  legendgroup=f"{label}" if label is not None else None)
        if three:
            kw["z"] = coords[sel, 2]
        return cls(**kw)

    all_rows = np.ones(len(coords), dtype=bool)
    if values is None:
        return [make(all_rows, None, dict(size=size, color=PALETTE[0], opacity=0.85), False)]
    if _is_continuous(values):
        finite = values[np.isfinite(values)]
        marker = dict(size=size, color=values, colorscale="Viridis", opacity=0.85, showscale=showlegend,
                      cmin=cmin if cmin is not None else (float(finite.min()) if finite.size else 0.0),
                      cmax=cmax if cmax is not None else (float(finite.max()) if finite.size else 1.0),
                      colorbar=dict(title=dict(text=name)))
        return [make(all_rows, None, marker, False)]
    keys = pd.Series(values).astype(object).where(pd.notna(values), "nan").to_numpy()
    cats = _categories(values)
    colour_map = colour_map or {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(cats)}
    if len(colour_map) <= max_legend:
        return [make(keys == c, f"{c}", dict(size=size, color=colour_map[c], opacity=0.85), showlegend)
                for c in colour_map if (keys == c).any()]
    colours = [colour_map[k] for k in keys]
    steps = stepwise_colours(colours) if len(colours) > LARGE_FIGURE else None   # validated at once, not per point
    return [make(all_rows, None, dict(size=size, opacity=0.85, **(steps or dict(color=colours))), False)]


def _style(fig: go.Figure, three: bool, title: str | None, legend_title: str) -> None:
    fig.update_layout(template="plotly_white", hovermode="closest", title=title, legend_title_text=legend_title,
                      margin=dict(l=10, r=10, t=50 if title else 20, b=10), height=600,
                      legend=dict(itemsizing="constant"))
    if not three:
        fig.update_xaxes(showticklabels=False, title=None, zeroline=False)
        fig.update_yaxes(showticklabels=False, title=None, zeroline=False)


def _coords(data: ArrayLike, projection: ArrayLike | None, method: str, n_components: int,
            seed: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(projection, high-dimensional embeddings or None) from embeddings or an existing projection."""
    x = as_rows(data, "embeddings", np.float32)
    if projection is not None:
        p = as_rows(projection, "projection", np.float32)
        if p.shape[1] not in (2, 3) or p.shape[0] != x.shape[0]:
            raise ValueError(f"projection must be [N, 2] or [N, 3] with N = {x.shape[0]} rows, got {p.shape}")
        return p, x
    if x.shape[1] in (2, 3):
        return x, None
    return project(x, method, n_components, seed=seed), x


def plot_embeddings(data: ArrayLike, dataset: ReIdDataset | None = None, color_by: str | ArrayLike | None = "pid", *,
                    projection: ArrayLike | None = None, method: str = "umap", n_components: int = 2,
                    seed: int | None = 0,
                    hover_columns: Sequence[str] | None = None, title: str | None = None,
                    webgl: bool | None = None, max_legend: int = 30) -> go.Figure:
    """A plotly scatter of embeddings (projected with :func:`project`) or of an existing projection.

    Args:
        data: ``[N, D]`` embeddings (``D > 3``: projected with ``method``) or an ``[N, 2]`` /
            ``[N, 3]`` projection (plotted as is).
        dataset: the :class:`ReIdDataset` the rows come from (hover labels, column colours);
            optional when ``color_by`` is an array or ``None``.
        color_by: a column of ``dataset.table`` (``"pid"``, ``"team"``, ``"camid"``/``"camera"``,
            ``"split"``, a ``"loss"`` column ...), ``"correct"`` (computed when there is no such
            column: whether each image's nearest other image has its pid; needs embeddings), an
            array of ``N`` values (floats = continuous colour scale; ints, strings, bools =
            categories), or ``None``. Up to ``max_legend`` categories get one trace each (legend,
            click to hide); more share one trace with cycled colours.
        projection: a precomputed ``[N, 2|3]`` projection of ``data`` (then ``data`` are only
            used for ``color_by="correct"``).
        method, n_components, seed: projection settings when ``data`` are embeddings.
        hover_columns: table columns shown on hover (default: all, file name last).
        title: figure title.
        webgl: use ``Scattergl``; default when ``N >= 1000`` (3-D always uses WebGL).
        max_legend: most categories shown as separate legend entries.

    Returns:
        ``plotly.graph_objects.Figure``; each trace's ``customdata[:, 0]`` is the dataset row.

    Raises:
        ValueError: the dataset has a different number of rows, or ``color_by`` is unknown (the
            message lists the columns).

    Example:
        >>> x = np.random.default_rng(0).normal(size=(50, 8))
        >>> fig = plot_embeddings(x, color_by=np.arange(50) % 3, method="pca")
        >>> len(fig.data)
        3
    """
    coords, emb = _coords(data, projection, method, n_components, seed)
    n = coords.shape[0]
    check_dataset(dataset, n)
    colour = _colour_values(color_by, dataset, n, emb)
    texts = _hover_texts(dataset, n, hover_columns, colour)
    webgl = n >= WEBGL_THRESHOLD if webgl is None else webgl
    fig = go.Figure(_traces(coords, colour[0], colour[1], texts, np.arange(n), webgl=webgl,
                            size=_marker_size(n), max_legend=max_legend))
    _style(fig, coords.shape[1] == 3, title, colour[1])
    if coords.shape[1] == 2:
        fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return fig


def plot_before_after(emb_before: ArrayLike, emb_after: ArrayLike, dataset: ReIdDataset | None = None,
                      color_by: str | ArrayLike | None = "pid", *, method: str = "aligned_umap",
                      n_components: int = 2, seed: int | None = 0, titles: tuple[str, str] = ("before", "after"),
                      knn_k: int = 5, webgl: bool | None = None, max_legend: int = 30,
                      projections: tuple[ArrayLike, ArrayLike] | None = None) -> go.Figure:
    """The same images embedded by two models (e.g. zero-shot vs fine-tuned), side by side.

    Both panels come from one aligned projection (:func:`aligned_projection`; AlignedUMAP by
    default, ``method="pca"`` for a fast deterministic view) and share colours, so a reader sees
    identities' clusters tighten. With a dataset, each panel's title also shows the
    leave-one-out k-NN identity accuracy of its embedding (:func:`cliptk.metrics.knn_accuracy`).
    ``color_by="correct"`` is computed per panel (nearest neighbour has the same pid, before vs after).

    Args:
        emb_before, emb_after: ``[N, D1]`` and ``[N, D2]`` embeddings of the same images.
        dataset: the images' :class:`ReIdDataset` (hover labels, colours, k-NN accuracy).
        color_by: as in :func:`plot_embeddings`.
        method, n_components, seed: see :func:`aligned_projection`.
        titles: panel titles.
        knn_k: ``k`` of the k-NN accuracy in the titles (0 = leave it out).
        projections: precomputed ``(before, after)`` projections (skips the projection step).

    Returns:
        A two-panel ``plotly`` figure (``customdata[:, 0]`` = dataset row in every trace).

    Raises:
        ValueError: row counts differ between the embeddings or the dataset.

    Example:
        >>> rng = np.random.default_rng(0); lab = np.arange(60) % 4
        >>> b = rng.normal(size=(60, 16)); a = b + 3 * np.eye(16)[lab]
        >>> fig = plot_before_after(b, a, color_by=lab, method="pca")
        >>> len(fig.data)
        8
    """
    eb, ea = as_rows(emb_before, "emb_before", np.float32), as_rows(emb_after, "emb_after", np.float32)
    if eb.shape[0] != ea.shape[0]:
        raise ValueError(f"emb_before has {eb.shape[0]} rows but emb_after has {ea.shape[0]}; same images, same order")
    n = eb.shape[0]
    check_dataset(dataset, n)
    if projections is None:
        pb, pa = aligned_projection(eb, ea, method, n_components, seed=seed)
    else:
        pb, pa = (as_rows(p, f"projections[{i}]", np.float32) for i, p in enumerate(projections))
    three = pb.shape[1] == 3
    colours = [_colour_values(color_by, dataset, n, e) for e in (eb, ea)]
    values = [c[0] for c in colours]
    name = colours[0][1]
    cmap, cmin, cmax = None, None, None
    if values[0] is not None and _is_continuous(values[0]):
        both = np.concatenate([v[np.isfinite(v)] for v in values])
        cmin, cmax = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    elif values[0] is not None:
        cats = _categories(np.concatenate([np.asarray(v, dtype=object) for v in values]))
        cmap = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(cats)}
    sub = list(titles)
    if dataset is not None and knn_k:
        keep = dataset.pids >= 0
        if keep.sum() > knn_k:
            sub = [f"{t} — {knn_k}-NN identity accuracy {metrics.knn_accuracy(e[keep], dataset.pids[keep], knn_k):.3f}"
                   for t, e in zip(titles, (eb, ea))]
    spec = {"type": "scene"} if three else {"type": "xy"}
    fig = make_subplots(1, 2, subplot_titles=sub, specs=[[spec, spec]], horizontal_spacing=0.03)
    webgl = n >= WEBGL_THRESHOLD if webgl is None else webgl
    for col, (proj, colour) in enumerate(zip((pb, pa), colours), start=1):
        texts = _hover_texts(dataset, n, None, colour)
        for tr in _traces(proj, colour[0], name, texts, np.arange(n), webgl=webgl, size=_marker_size(n),
                          max_legend=max_legend, colour_map=cmap, cmin=cmin, cmax=cmax, showlegend=col == 1):
            fig.add_trace(tr, row=1, col=col)
    _style(fig, three, None, name)
    fig.update_layout(height=550)
    if not three:
        fig.update_xaxes(matches="x")
        fig.update_yaxes(matches="y", scaleanchor="x", scaleratio=1)
    return fig


def stepwise_colours(colours: Sequence[str]) -> dict | None:
    """Marker settings that draw per-point colour strings as numbers on a stepwise colour scale
    of the distinct colours (``color``, ``colorscale``, ``cmin``, ``cmax``, ``showscale``); None
    above 256 distinct colours. A number array is ~1 byte a point in the figure's JSON (a colour
    string ~10) and plotly validates it at once instead of string by string."""
    uniq, codes = np.unique(np.asarray(colours, dtype=object).astype(str), return_inverse=True)
    if len(uniq) > 256:
        return None
    n = len(uniq)
    scale = [[b, c] for i, c in enumerate(uniq) for b in (i / n, (i + 1) / n)]   # step i covers [i/n, (i+1)/n]
    return dict(color=(codes.astype(np.float32) + 0.5) / n, colorscale=scale, cmin=0.0, cmax=1.0, showscale=False)


def compact_colours(trace) -> None:
    """Replace a trace's per-point colour strings (categories with cycled colours) by
    :func:`stepwise_colours`, drawn the same; traces with one colour or a continuous scale are
    left alone. Used for the export's folder layout."""
    marker = getattr(trace, "marker", None)
    colours = getattr(marker, "color", None) if marker is not None else None
    if colours is None or isinstance(colours, str) or len(colours) < 2 or not all(isinstance(c, str) for c in colours[:64]):
        return
    steps = stepwise_colours(colours)
    if steps is not None:
        trace.marker.update(**steps)


def trace_rows(trace: Any) -> np.ndarray:
    """The dataset rows of a trace's points (``customdata[:, 0]`` of figures made here).

    Raises:
        ValueError: the trace has no such ``customdata`` (not made by :func:`plot_embeddings`).

    Example:
        >>> fig = plot_embeddings(np.eye(4)[[0, 1, 2, 3, 0, 1]], color_by=[0, 1, 0, 1, 0, 1], method="pca")
        >>> trace_rows(fig.data[1]).tolist()
        [1, 3, 5]
    """
    cd = trace.customdata
    if cd is None or len(cd) == 0:
        if trace.x is not None and len(trace.x) == 0:
            return np.zeros(0, dtype=np.int64)
        raise ValueError(f"trace {trace.name!r} has no customdata with dataset rows; make the figure with "
                         "cliptk.plot_embeddings / plot_before_after, or pass embeddings instead")
    return np.array([int(np.asarray(c).ravel()[0]) for c in cd], dtype=np.int64)
