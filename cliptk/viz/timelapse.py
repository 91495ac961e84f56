"""A training timelapse as one animated plotly figure: the probe's embeddings frame by frame, aligned.

:func:`aligned_frames` projects ``T`` embeddings of the same ``N`` images into one 2-D frame of
reference, so that what moves between frames is what training changed, not an arbitrary rotation
or reflection of the projection:

* ``"pca"`` (default; deterministic and fast): each frame's own PCA, rotated / reflected, scaled and
  shifted onto the previous aligned frame by orthogonal Procrustes (chained frame to frame, the
  same step :func:`cliptk.viz.aligned_projection` uses for two models);
* ``"aligned_umap"``: umap-learn's ``AlignedUMAP`` fitted on all frames at once, each image tied
  to itself in the neighbouring frames.

:func:`plot_timelapse` animates them with a slider and a play button, coloured by identity (or
any column), the probe's mAP of each frame in its title; :func:`frame_displacement` measures how
far the points move between consecutive frames. The recording side is
:class:`cliptk.train.timelapse.Timelapse`.

Example:
    >>> rng = np.random.default_rng(0)
    >>> base = rng.normal(size=(30, 8))
    >>> frames = [base, -base + 0.01 * rng.normal(size=(30, 8)), base * [1, -1, 1, 1, 1, 1, 1, 1]]
    >>> xy = aligned_frames(frames)
    >>> xy.shape, bool(frame_displacement(xy).max() < 0.1)
    ((3, 30, 2), True)
    >>> fig = plot_timelapse(frames, maps=[0.1, 0.2, 0.3], color_by=np.arange(30) % 3)
    >>> len(fig.frames), fig.layout.sliders[0].steps[2].label
    (3, 'frame 3')
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go

from .._util import as_rows, unit_rows
from .figures import ALIASES, PALETTE
from .project import _procrustes_to, project

__all__ = ["aligned_frames", "frame_displacement", "plot_timelapse", "TIMELAPSE_METHODS"]

TIMELAPSE_METHODS = ("pca", "aligned_umap", "independent_pca")


def _frames(embeddings: Any) -> list[np.ndarray]:
    frames = [as_rows(e, f"embeddings[{t}]", np.float32) for t, e in enumerate(embeddings)]
    if not frames:
        raise ValueError("no frames: pass a [T, N, D] array or a list of [N, D] embeddings")
    n = {f.shape[0] for f in frames}
    if len(n) != 1:
        raise ValueError(f"frames have different numbers of rows {sorted(n)}; every frame embeds the same images")
    return frames


def aligned_frames(embeddings: Any, method: str = "pca", *, seed: int | None = 0, **options: Any) -> np.ndarray:
    """``T`` embeddings ``[N, D]`` of the same images (``[T, N, D]`` or a list; dimensions may
    differ between frames) -> ``[T, N, 2]`` layouts in one frame of reference.

    ``method``: ``"pca"`` (Procrustes-chained PCA), ``"aligned_umap"``, or ``"independent_pca"``
    (each frame's PCA as is: the unaligned baseline, for comparison). ``options`` go to
    ``umap.AlignedUMAP`` (``n_neighbors`` ...).

    Raises:
        ValueError: no frames, frames of different lengths, or an unknown method.
    """
    frames = _frames(embeddings)
    if method not in TIMELAPSE_METHODS:
        raise ValueError(f"aligned_frames: method={method!r}; choose one of {TIMELAPSE_METHODS}")
    if method in ("pca", "independent_pca"):
        out = [project(f, "pca", 2, seed=seed) for f in frames]
        if method == "pca":
            for t in range(1, len(out)):
                out[t] = _procrustes_to(out[t - 1], out[t])
        return np.stack(out).astype(np.float32)
    import umap  # lazy: numba, slow to import

    n = frames[0].shape[0]
    kw = dict(n_neighbors=min(15, n - 1), metric="cosine", random_state=seed)
    kw.update(options)
    if len(frames) == 1:
        return project(frames[0], "umap", 2, seed=seed)[None]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        mapper = umap.AlignedUMAP(n_components=2, **kw).fit(
            [unit_rows(f, "frame", np.float32) for f in frames], relations=[{i: i for i in range(n)}] * (len(frames) - 1))
    return np.stack([np.asarray(e, dtype=np.float32) for e in mapper.embeddings_])


def frame_displacement(layouts: np.ndarray) -> np.ndarray:
    """``[T - 1]`` mean distance a point moves between consecutive layouts ``[T, N, 2]``, in
    units of the layouts' overall spread (RMS distance to the centre), so methods compare."""
    xy = np.asarray(layouts, dtype=np.float64)
    spread = np.sqrt(((xy - xy.mean(axis=1, keepdims=True)) ** 2).sum(-1).mean())
    return np.linalg.norm(np.diff(xy, axis=0), axis=-1).mean(-1) / max(spread, 1e-12)


def _colours(color_by: Any, dataset, n: int) -> tuple[np.ndarray, str]:
    if color_by is None:
        return np.zeros(n, dtype=int), ""
    if isinstance(color_by, str):
        if dataset is None:
            raise ValueError(f"color_by={color_by!r} names a column, but no dataset was given; pass dataset= or an "
                             "array of N values")
        col = color_by if color_by in dataset.table.columns else ALIASES.get(color_by, color_by)
        if col not in dataset.table.columns:
            raise ValueError(f"color_by={color_by!r} is not a column of {dataset.name!r}; columns: "
                             f"{list(dataset.table.columns)}")
        return dataset.table[col].to_numpy(), col
    values = np.asarray(color_by)
    if len(values) != n:
        raise ValueError(f"color_by has {len(values)} values for {n} points")
    return values, "value"


def plot_timelapse(embeddings: Any, *, labels: Sequence[str] | None = None, maps: Sequence[float] | None = None,
                   dataset=None, color_by: Any = "pid", method: str = "pca", layouts: np.ndarray | None = None,
                   seed: int | None = 0, duration_ms: int = 700, title: str = "training timelapse",
                   width: int = 760, height: int = 640, **options: Any) -> go.Figure:
    """The frames as an animated scatter: a slider over frames, play / pause buttons, one colour
    per identity (or per value of ``color_by``: a column of ``dataset`` or ``N`` values), the
    frame's label and mAP in the title, fixed axes so motion is real motion. Hover shows the
    dataset row (``customdata``) and the colour value.

    Args:
        embeddings: ``[T, N, D]`` (or a list of ``[N, D]``) of the same images.
        labels: a name per frame (default ``"frame t"``). maps: the mAP of each frame.
        dataset: the ``N`` probe rows (colours, hover).
        method: see :func:`aligned_frames`; ``layouts``: precomputed ``[T, N, 2]`` instead.

    Returns:
        a plotly ``Figure`` with ``T`` frames (``fig.write_html(path, auto_play=False)`` keeps the
        animation and starts on the first frame; plotly's default ``auto_play=True`` plays it once
        on load).
    """
    frames = _frames(embeddings) if layouts is None else None
    xy = np.asarray(layouts, dtype=np.float32) if layouts is not None else aligned_frames(frames, method, seed=seed,
                                                                                           **options)
    t_count, n = xy.shape[:2]
    if dataset is not None and len(dataset) != n:
        raise ValueError(f"{n} points per frame but dataset {dataset.name!r} has {len(dataset)} rows; pass the probe rows")
    labels = list(labels) if labels is not None else [f"frame {t + 1}" for t in range(t_count)]
    maps = list(maps) if maps is not None else [float("nan")] * t_count
    if len(labels) != t_count or len(maps) != t_count:
        raise ValueError(f"{t_count} frames but {len(labels)} labels and {len(maps)} mAP values")
    values, name = _colours(color_by, dataset, n)
    cats = {v: i for i, v in enumerate(dict.fromkeys(values.tolist()))}
    colour = [PALETTE[cats[v] % len(PALETTE)] for v in values.tolist()]
    hover = [f"row {i}" + (f"<br>{name} {v}" if name else "") for i, v in enumerate(values.tolist())]

    def titled(t: int) -> str:
        m = maps[t]
        return f"{title}: {labels[t]}" + ("" if m != m else f" — probe mAP {m:.3f}")

    def scatter(t: int) -> go.Scatter:
        return go.Scatter(x=xy[t, :, 0], y=xy[t, :, 1], mode="markers", customdata=np.arange(n), hovertext=hover,
                          hoverinfo="text", marker=dict(color=colour, size=7, line=dict(width=0.4, color="#333")),
                          showlegend=False)

    lo, hi = xy.reshape(-1, 2).min(0), xy.reshape(-1, 2).max(0)
    pad = 0.05 * (hi - lo + 1e-6)
    fig = go.Figure(data=[scatter(0)],
                    frames=[go.Frame(data=[scatter(t)], name=str(t), layout=go.Layout(title_text=titled(t)))
                            for t in range(t_count)])
    # redraw=True: plotly applies a frame's layout (its title: label and mAP) only on a redraw
    anim = dict(frame=dict(duration=duration_ms, redraw=True), transition=dict(duration=int(duration_ms * 0.8)),
                mode="immediate")
    fig.update_layout(
        title_text=titled(0), width=width, height=height, plot_bgcolor="white",
        xaxis=dict(range=[lo[0] - pad[0], hi[0] + pad[0]], showticklabels=False, zeroline=False),
        yaxis=dict(range=[lo[1] - pad[1], hi[1] + pad[1]], showticklabels=False, zeroline=False),
        updatemenus=[dict(type="buttons", direction="left", x=0.0, y=-0.06, xanchor="left", yanchor="top",
                          buttons=[dict(label="▶ play", method="animate", args=[None, dict(anim, fromcurrent=True)]),
                                   dict(label="❚❚ pause", method="animate",
                                        args=[[None], dict(frame=dict(duration=0, redraw=False), mode="immediate")])])],
        sliders=[dict(active=0, x=0.22, len=0.78, y=-0.02, currentvalue=dict(visible=False),
                      steps=[dict(label=labels[t], method="animate",
                                  args=[[str(t)], dict(anim, frame=dict(duration=int(duration_ms * 0.8),
                                                                        redraw=True))])
                             for t in range(t_count)])],
        margin=dict(l=20, r=20, t=60, b=90))
    return fig
