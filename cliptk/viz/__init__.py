"""Look at an embedding space: 2-D/3-D projections, plotly figures with metadata, before/after
views, HTML pages with image thumbnails on hover, the numbers beside the picture, and a report.

* :mod:`~cliptk.viz.project` — :func:`project` (UMAP, PCA or t-SNE with cosine defaults),
  :class:`ProjectionConfig`, :func:`aligned_projection` (two models, one frame), :func:`warm_up`.
* :mod:`~cliptk.viz.figures` — :func:`plot_embeddings` (coloured by any metadata column),
  :func:`plot_before_after` (two aligned panels), :func:`trace_rows` (point -> dataset row).
* :mod:`~cliptk.viz.export` — :func:`html_fragment` / :func:`export_html`: the plot as HTML
  that shows the hovered point's image, without Jupyter (one file, or a page and a folder of
  files for large plots); :mod:`~cliptk.viz.atlas` packs the thumbnails into sprite atlases.
* :mod:`~cliptk.viz.quality` — :func:`embedding_report`: k-NN accuracy, alignment, uniformity,
  neighbourhood overlap and trustworthiness as a small table.
* :mod:`~cliptk.viz.report` — :class:`Report`: sections of text, tables and figures in one
  self-contained HTML file.

Importing this package imports plotly (it is the plotting family); ``import cliptk`` does not.
The interactive explorer is :class:`cliptk.widgets.Explorer`.

Example:
    >>> import numpy as np
    >>> emb = np.random.default_rng(0).normal(size=(40, 16))
    >>> fig = plot_embeddings(emb, color_by=np.arange(40) % 4, method="pca")
    >>> len(fig.data)
    4
"""
from .._util import thumbnail_bytes, thumbnail_uri
from .export import export_html, html_fragment
from .figures import ALIASES, PALETTE, WEBGL_THRESHOLD, plot_before_after, plot_embeddings, trace_rows
from .project import ALIGN_METHODS, METHODS, ArrayLike, ProjectionConfig, aligned_projection, project, warm_up
from .quality import embedding_report
from .report import Report
from .timelapse import aligned_frames, frame_displacement, plot_timelapse
from .batch_inspector import BatchInspection, batch_inspector, compare_batches, inspect_batch, inspect_embeddings, plot_batch

__all__ = [
    "ProjectionConfig", "project", "warm_up", "aligned_projection",
    "plot_embeddings", "plot_before_after", "trace_rows",
    "export_html", "html_fragment",
    "embedding_report",
    "Report",
    "aligned_frames", "frame_displacement", "plot_timelapse",
    "BatchInspection", "inspect_batch", "inspect_embeddings", "plot_batch", "compare_batches", "batch_inspector",
    "thumbnail_uri", "thumbnail_bytes",
    "METHODS", "ALIGN_METHODS", "PALETTE", "ALIASES", "WEBGL_THRESHOLD", "ArrayLike",
]
