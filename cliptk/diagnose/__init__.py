"""Visual debugging of a re-id model and audits of a re-id dataset.

Start from embeddings that are already computed (:func:`cliptk.embed`) and build a
:class:`Ranking` with :func:`rank_gallery` (:mod:`~cliptk.diagnose.ranking`). Then:

* **ranked results** (:mod:`~cliptk.diagnose.views`) — :func:`plot_ranked` (one query's top-k,
  correct / wrong / same-camera junk marked by border colour), :func:`worst_queries_html` (all
  queries ordered by AP, worst first, paged) and :func:`table_html` (any table here, with
  thumbnails next to its image-index columns); the interactive browser is
  :class:`cliptk.widgets.RankBrowser`;
* **failure analysis** (:mod:`~cliptk.diagnose.failures`) — :func:`ap_breakdown` (mAP per
  identity, camera, sequence or any metadata column), :func:`confused_pairs` (identity pairs
  whose images outrank the true match), :func:`pos_neg_similarities`,
  :func:`similarity_threshold` (the operating point at a chosen false-match rate) and
  :func:`plot_similarity_hist`;
* **dataset audit** (:mod:`~cliptk.diagnose.audit`) — :func:`find_leaks` (near-duplicates
  between train and test, or inside one set) and :func:`label_noise_suspects` (images closer to
  another identity's centroid than to their own).

Tables are ``pandas.DataFrame`` ranked worst / most suspicious first. Figures are plotly
(importing this package imports plotly; ``import cliptk`` does not).

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
from .audit import find_leaks, label_noise_suspects
from .compare import QueryComparison, compare_embeddings, compare_models, compare_rankings, match_ranks
from .failures import ap_breakdown, confused_pairs, plot_similarity_hist, pos_neg_similarities, similarity_threshold
from .ranking import ImageSource, Ranking, rank_gallery, source_image
from .views import COLOURS, JPEG_QUALITY, HtmlFragment, plot_ranked, table_html, worst_queries_html

__all__ = [
    "Ranking", "rank_gallery", "ImageSource", "source_image",
    "plot_ranked", "worst_queries_html", "table_html", "HtmlFragment", "COLOURS", "JPEG_QUALITY",
    "ap_breakdown", "confused_pairs", "pos_neg_similarities", "similarity_threshold", "plot_similarity_hist",
    "find_leaks", "label_noise_suspects",
    "QueryComparison", "compare_models", "compare_embeddings", "compare_rankings", "match_ranks",
]
