"""Pictures of explanations (plotly): pairs with their maps, grids of pairs, faithfulness curves.

The only module of :mod:`cliptk.explain` that imports plotly. ``cliptk.explain`` loads it on the
first use of a ``plot_*`` name (or of a result's ``figure()``), so computing maps in a script or a
``torchrun`` worker never pays for plotly. Each overlay is the image as a JPEG data URI (written
by :func:`cliptk._util.thumbnail_uri`) with the map as a semi-transparent heatmap on the same
pixel grid; figures work in a notebook (``fig.show()``) and in HTML reports
(``fig.to_html(include_plotlyjs="cdn")``).

Example:
    >>> import cliptk as ct
    >>> from PIL import Image
    >>> model = ct.load_model("cliptk-micro", None)        # random init, offline
    >>> cam = ct.similarity_cam(model, Image.new("RGB", (32, 64), "red"), Image.new("RGB", (32, 64), "blue"),
    ...                         fast=True, symmetric=True)
    >>> [type(t).__name__ for t in plot_cam_pair(cam).data]
    ['Image', 'Heatmap', 'Image', 'Heatmap']
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .._util import thumbnail_uri
from .inputs import _resize_map

if TYPE_CHECKING:   # names for the annotations only: deletion and scorecam import this module lazily
    from .deletion import Faithfulness
    from .scorecam import SimilarityCam

__all__ = ["plot_cam_pair", "plot_cam_grid", "plot_faithfulness"]


def _add_overlay(fig, image: Image.Image, m: np.ndarray | None, row: int, col: int, *, opacity: float,
                 colorscale: str, max_side: int, showscale: bool, heat_side: int = 64) -> None:
    """The image (a JPEG data URI) with the map as a semi-transparent heatmap on the same pixel grid.
    The map is smooth (a CAM of a coarse layer), so it is stored at most ``heat_side`` cells on its
    longer side, in whole percent (uint8), to keep figures and HTML reports small."""
    w, h = image.size
    f = min(1.0, max_side / max(w, h))
    shown = (max(1, round(w * f)), max(1, round(h * f)))
    base = image.resize(shown, Image.BILINEAR) if shown != (w, h) else image
    uri = thumbnail_uri(base, height=shown[1], fmt="JPEG", quality=90)   # already at its size: encoded as is
    fig.add_trace(go.Image(source=uri, x0=0, y0=0, dx=1, dy=1, hoverinfo="skip"), row=row, col=col)
    if m is None:
        return
    g = min(1.0, heat_side / max(shown))
    cells = (max(1, round(shown[1] * g)), max(1, round(shown[0] * g)))
    z = np.round(100 * np.clip(_resize_map(m, cells), 0, 1)).astype(np.uint8)
    dy, dx = shown[1] / cells[0], shown[0] / cells[1]
    fig.add_trace(go.Heatmap(z=z, x0=(dx - 1) / 2, dx=dx, y0=(dy - 1) / 2, dy=dy, zmin=0, zmax=100,
                             colorscale=colorscale, opacity=opacity, showscale=showscale,
                             colorbar=dict(title="saliency %", len=0.6),
                             hovertemplate="saliency %{z}%<extra></extra>"), row=row, col=col)


def plot_cam_grid(cams: Sequence[SimilarityCam], *, titles: Sequence[str] | None = None, pairs_per_row: int = 3,
                  opacity: float = 0.45, colorscale: str = "Turbo", max_side: int = 192, title: str | None = None,
                  height_per_row: int = 300) -> go.Figure:
    """A grid of explained pairs: for each pair, A with its map and B (with its map if symmetric).

    Args:
        cams: :class:`~cliptk.explain.SimilarityCam` results (e.g. :func:`~cliptk.explain.explain_topk`
            or pairs from :func:`~cliptk.explain.select_pairs`).
        titles: one caption per pair (default: labels and the similarity).
        pairs_per_row: pairs side by side in a row (each pair takes two columns).
        opacity, colorscale: of the saliency heatmap over the image (a plotly colorscale name).
        max_side: images are shown at most this many pixels on their longer side.

    Returns:
        a ``plotly.graph_objects.Figure`` (``fig.show()`` in a notebook; ``fig.to_html(include_plotlyjs="cdn")``
        or ``fig.write_html(path)`` for a report).

    Raises:
        ValueError: no cams, or ``titles`` of the wrong length.

    Example:
        >>> plot_cam_grid([])
        Traceback (most recent call last):
        ValueError: plot_cam_grid: no explanations to draw
    """
    cams = list(cams)
    if not cams:
        raise ValueError("plot_cam_grid: no explanations to draw")
    if titles is not None and len(titles) != len(cams):
        raise ValueError(f"plot_cam_grid: {len(titles)} titles for {len(cams)} pairs")
    per_row = max(1, min(pairs_per_row, len(cams)))
    rows = math.ceil(len(cams) / per_row)
    subtitles = []
    for i, c in enumerate(cams):
        head = titles[i] if titles is not None else f"sim {c.similarity:.3f}"
        subtitles += [f"{head}<br>A: {c.label_a}", f"{c.method}<br>B: {c.label_b}"]
    subtitles += [""] * (rows * per_row * 2 - len(subtitles))
    height = height_per_row * rows + 80
    fig = make_subplots(rows=rows, cols=2 * per_row, subplot_titles=subtitles, horizontal_spacing=0.02,
                        vertical_spacing=min(0.3, 60 / height))   # room for two-line titles
    for i, c in enumerate(cams):
        r, col = i // per_row + 1, 2 * (i % per_row) + 1
        _add_overlay(fig, c.image_a, c.map_a, r, col, opacity=opacity, colorscale=colorscale, max_side=max_side,
                     showscale=i == 0)
        _add_overlay(fig, c.image_b, c.map_b, r, col + 1, opacity=opacity, colorscale=colorscale, max_side=max_side,
                     showscale=False)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=11)
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=80, b=10),
                      plot_bgcolor="white")
    return fig


def plot_cam_pair(cam: SimilarityCam, *, opacity: float = 0.45, colorscale: str = "Turbo", max_side: int = 256,
                  height: int = 420) -> go.Figure:
    """A and B side by side, each with its map overlaid (B's only if ``symmetric``), titled with
    the similarity. Returns a plotly ``Figure`` (notebook or ``fig.to_html(include_plotlyjs=...)``).
    Example: see the module docstring."""
    fig = plot_cam_grid([cam], pairs_per_row=1, opacity=opacity, colorscale=colorscale, max_side=max_side,
                        height_per_row=height - 80,
                        title=f"{cam.method} of the similarity {cam.similarity:.3f} (layer {cam.layer})")
    return fig


def plot_faithfulness(results: Faithfulness | Sequence[Faithfulness], *, height: int = 360) -> go.Figure:
    """Deletion (left) and insertion (right) curves of one or more maps, with random-order baselines
    (dashed). Legend entries carry the AUCs. Returns a plotly ``Figure``.

    Example:
        >>> from cliptk.explain.deletion import Faithfulness
        >>> x = np.linspace(0, 1, 3)
        >>> f = Faithfulness(x, 1 - x, x, 1 - x, x, similarity=1.0, label="map")
        >>> len(plot_faithfulness([f, f]).data)   # a curve and its random baseline per panel and map
        8
    """
    results = [results] if hasattr(results, "deletion_auc") else list(results)   # one Faithfulness, or several
    fig = make_subplots(rows=1, cols=2, subplot_titles=["deletion (lower is better)", "insertion (higher is better)"])
    for i, r in enumerate(results):
        colour = qualitative.Plotly[i % len(qualitative.Plotly)]
        name = r.label or f"map {i}"
        for col, curve, rand, auc, rauc in ((1, r.deletion, r.random_deletion, r.deletion_auc, r.random_deletion_auc),
                                            (2, r.insertion, r.random_insertion, r.insertion_auc,
                                             r.random_insertion_auc)):
            fig.add_trace(go.Scatter(x=r.fractions, y=curve, mode="lines", line=dict(color=colour),
                                     name=f"{name} AUC {auc:.3f}", legendgroup=name), row=1, col=col)
            fig.add_trace(go.Scatter(x=r.fractions, y=rand, mode="lines", line=dict(color=colour, dash="dash"),
                                     name=f"{name} random AUC {rauc:.3f}", legendgroup=name), row=1, col=col)
    fig.update_xaxes(title_text="fraction of pixels")
    fig.update_yaxes(title_text="cosine similarity", col=1)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10))
    return fig
