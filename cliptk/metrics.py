"""Numbers that say how good an embedding is: re-id ranking, text probes, embedding-space geometry.

Everything here works on embeddings that are already computed (``torch.Tensor`` or ``numpy``
arrays, rows = items) and returns ``numpy`` arrays, floats or small result dataclasses with a
readable ``repr`` and ``_repr_html_``. No model code lives here.

Three groups:

* **Re-identification** - :func:`evaluate_reid` (mAP and CMC rank-k with the Market-1501 protocol
  of torchreid's ``eval_market1501``) and :func:`rerank_k_reciprocal` (Zhong et al., CVPR 2017).
* **Zero-shot text probes** - :func:`classify_zero_shot`: argmax cosine over class text embeddings.
* **Embedding-space geometry** - :func:`knn_accuracy`, :func:`neighbourhood_overlap`,
  :func:`trustworthiness` (for judging a 2-D/3-D projection), :func:`alignment` and
  :func:`uniformity` (Wang & Isola, ICML 2020) and :func:`modality_gap` (Liang et al., NeurIPS 2022).

One module on purpose, although it is over 600 lines: it is one concept, *how good is an
embedding*, and its three groups share the same input contract (rows checked and L2-normalised
by :func:`cliptk._util.unit_rows`, the same error messages), the same result style and the same
blocked-memory bound; most of its length is the k-reciprocal re-ranking, which only
:func:`evaluate_reid` uses. Splitting it would scatter one small API over several files. The
compiled ranking kernels (counting ranks without sorting, exact top-k) live in
:mod:`cliptk.ranking_kernels`.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> centres = rng.normal(size=(5, 16))
    >>> q = centres + 0.1 * rng.normal(size=(5, 16))
    >>> g = np.repeat(centres, 3, axis=0) + 0.1 * rng.normal(size=(15, 16))
    >>> res = evaluate_reid(q, g, np.arange(5), np.repeat(np.arange(5), 3))
    >>> res.mAP
    1.0
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import logsumexp
# scikit-learn is imported inside the three functions that use it: it costs seconds at import, and
# `import cliptk` (so every torchrun worker) imports this module for `evaluate`.

from ._util import as_rows, to_numpy, unit_rows
from .ranking_kernels import _pid_groups, distance_chunks, match_ranks, protocol_codes, row_chunks, top_k_smallest

__all__ = [
    "ReIdResult",
    "ProbeResult",
    "evaluate_reid",
    "rerank_k_reciprocal",
    "RERANK_MAX_IMAGES",
    "classify_zero_shot",
    "NeighbourIndex",
    "nearest_neighbours",
    "knn_accuracy",
    "neighbourhood_overlap",
    "trustworthiness",
    "alignment",
    "uniformity",
    "modality_gap",
]

ArrayLike = Any  # torch.Tensor | np.ndarray | sequence

# Bound on the number of elements of one temporary (rows x columns) block (uniformity).
_BLOCK_ELEMENTS = 1 << 22

#: Largest ``n_queries + n_gallery`` that :func:`rerank_k_reciprocal` accepts: it needs the pooled
#: ``n x n`` float32 distance matrix (1.5 GiB at 20,000 images) and one Python pass per image.
RERANK_MAX_IMAGES = 20_000


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _vector(x: ArrayLike, name: str, n: int) -> np.ndarray:
    a = to_numpy(x, name)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with {n} entries (one per row), got shape {a.shape}")
    return a


def _same_dim(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{na} has dimension {a.shape[1]} but {nb} has {b.shape[1]}; "
            "embed both with the same model (and the same projection setting)"
        )


def _fmt(v: float) -> str:
    return "nan" if v != v else f"{v:.4f}"


def _text_table(title: str, rows: Sequence[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join([title] + [f"  {k:<{w}}  {v}" for k, v in rows])


def _html_table(title: str, rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(
        f"<tr><td style='text-align:left'>{html.escape(k)}</td>"
        f"<td style='text-align:right'>{html.escape(v)}</td></tr>"
        for k, v in rows
    )
    return f"<table><caption>{html.escape(title)}</caption>{body}</table>"


# --------------------------------------------------------------------------------------------------
# re-identification
# --------------------------------------------------------------------------------------------------


@dataclass(repr=False, eq=False)
class ReIdResult:
    """Outcome of :func:`evaluate_reid`.

    Attributes:
        mAP: mean average precision over the evaluated (non-skipped) queries.
        cmc: ``{rank: fraction of evaluated queries whose first correct match is at rank <= rank}``.
        ap: per-query average precision, shape ``(n_queries,)``; NaN for skipped queries.
        first_match: per-query 1-based rank of the first correct match among the valid gallery
            items, shape ``(n_queries,)``; -1 for skipped queries.
        n_queries: number of queries given.
        n_skipped: queries without any valid match in the gallery (not counted in mAP / CMC).
        reranked: whether k-reciprocal re-ranking was applied.
        distances: the ``(n_queries, n_gallery)`` distance matrix that was ranked, only when
            asked for with ``return_distances=True``; otherwise ``None``.
        n_unreadable: images left out before evaluation because they cannot be read (set by
            :func:`cliptk.evaluate` for ``on_error="skip"`` datasets; 0 here).
    """

    mAP: float
    cmc: dict[int, float]
    ap: np.ndarray
    first_match: np.ndarray
    n_queries: int
    n_skipped: int
    reranked: bool = False
    distances: np.ndarray | None = field(default=None)
    n_unreadable: int = 0

    def to_dict(self) -> dict[str, float | int | bool]:
        """Flat scalar summary for logging: ``mAP``, ``rank1``, ``rank5`` ..., counts, flag."""
        d: dict[str, float | int | bool] = {"mAP": self.mAP}
        d.update({f"rank{r}": v for r, v in self.cmc.items()})
        d.update(n_queries=self.n_queries, n_skipped=self.n_skipped, reranked=self.reranked)
        return d

    def _rows(self) -> list[tuple[str, str]]:
        n_eval = self.n_queries - self.n_skipped
        rows = [("queries", f"{n_eval} evaluated, {self.n_skipped} skipped")]
        if self.n_unreadable:
            rows.append(("unreadable images", f"{self.n_unreadable} left out"))
        rows.append(("mAP", _fmt(self.mAP)))
        rows += [(f"rank-{r}", _fmt(v)) for r, v in self.cmc.items()]
        return rows

    def _title(self) -> str:
        return "ReIdResult (k-reciprocal re-ranked)" if self.reranked else "ReIdResult"

    def __repr__(self) -> str:
        return _text_table(self._title(), self._rows())

    def _repr_html_(self) -> str:
        return _html_table(self._title(), self._rows())


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - cos`` between rows of two L2-normalised arrays."""
    return 1.0 - a @ b.T


def evaluate_reid(
    query_emb: ArrayLike,
    gallery_emb: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike | None = None,
    gallery_camids: ArrayLike | None = None,
    *,
    ranks: Sequence[int] = (1, 5, 10),
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    return_distances: bool = False,
) -> ReIdResult:
    """Query-vs-gallery re-id evaluation: mAP and CMC rank-k (Market-1501 protocol).

    Follows the semantics of torchreid's ``eval_market1501``: embeddings are L2-normalised and
    ranked by cosine distance ``1 - cos``; for each query, gallery items with the same identity
    *and* the same camera are removed (they are the "same shot", not a re-identification); a query
    with no correct match left is skipped and counted in ``n_skipped``. Average precision is
    computed over the whole remaining gallery, and CMC counts the rank of the first correct match.
    Ties in distance keep gallery order (as a stable sort), so results are deterministic.

    Unknown cameras: a camid of ``-1`` means the camera is not known. A query with camid -1 gets
    no camera filtering (every gallery image of its identity is a true match; one warning says
    how many such queries there are); a gallery image with camid -1 is never removed.

    Scale: the distances are computed in query chunks (:mod:`cliptk.ranking_kernels`) and each
    query's AP and first match come from counting, for each of its true matches, the gallery
    items ranked before it; no row is sorted and the full ``n_q x n_g`` matrix is never held
    (unless ``return_distances`` or ``rerank`` asks for it). Memory: the embeddings plus one
    chunk of ``ranking_kernels.CHUNK_ELEMENTS`` distances.

    Args:
        query_emb: ``(n_q, d)`` query embeddings (tensor or array).
        gallery_emb: ``(n_g, d)`` gallery embeddings.
        query_pids: ``(n_q,)`` identity labels (ints or strings).
        gallery_pids: ``(n_g,)`` identity labels.
        query_camids: ``(n_q,)`` camera ids (``-1`` = unknown), or ``None`` (= every
            query-gallery pair is from different cameras, nothing is removed). Give both camid
            arrays or neither.
        gallery_camids: ``(n_g,)`` camera ids, or ``None``.
        ranks: CMC ranks to report (1-based).
        rerank: apply :func:`rerank_k_reciprocal` (needs the full (n_q+n_g)^2 distance matrix;
            refused above :data:`RERANK_MAX_IMAGES` images).
        k1, k2, lambda_value: re-ranking parameters, see :func:`rerank_k_reciprocal`.
        return_distances: keep the ranked ``(n_q, n_g)`` distance matrix in the result.

    Returns:
        A :class:`ReIdResult`.

    Raises:
        ValueError: on mismatched shapes or dimensions, an all-zero embedding, only one of the two
            camid arrays, a non-positive rank, ``rerank`` on more than
            :data:`RERANK_MAX_IMAGES` images, or when no query has a valid gallery match.

    Example:
        >>> import numpy as np
        >>> q = np.eye(3)
        >>> g = np.array([[1, 0.1, 0], [0, 1, 0], [0.1, 0, 1], [1, 0, 0]])
        >>> r = evaluate_reid(q, g, [0, 1, 2], [0, 1, 2, 0], [0, 0, 0], [1, 1, 1, 0])
        >>> r.cmc[1], r.first_match.tolist()   # gallery item 3 is query 0's own camera: dropped
        (1.0, [1, 1, 1])
    """
    q = unit_rows(query_emb, "query_emb")
    g = unit_rows(gallery_emb, "gallery_emb")
    _same_dim(q, g, "query_emb", "gallery_emb")
    nq, ng = q.shape[0], g.shape[0]
    qp = _vector(query_pids, "query_pids", nq)
    gp = _vector(gallery_pids, "gallery_pids", ng)
    if {qp.dtype.kind, gp.dtype.kind} & set("US") and {qp.dtype.kind, gp.dtype.kind} & set("iuf"):
        raise ValueError(
            f"query_pids are {qp.dtype} but gallery_pids are {gp.dtype}: no pid would ever match; "
            "give both as ints or both as strings"
        )
    if (query_camids is None) != (gallery_camids is None):
        raise ValueError(
            "give both query_camids and gallery_camids, or neither (None = all pairs cross-camera)"
        )
    qc = None if query_camids is None else _vector(query_camids, "query_camids", nq)
    gc = None if gallery_camids is None else _vector(gallery_camids, "gallery_camids", ng)
    ranks = tuple(int(r) for r in ranks)
    if any(r < 1 for r in ranks):
        raise ValueError(f"ranks must be positive (1-based), got {ranks}")
    if rerank:
        _check_rerank_size(nq, ng)
    qcode, gcode, qcam, gcam = protocol_codes(qp, gp, qc, gc)
    if qc is not None:
        _warn_unknown_query_cameras(int((qcam < 0).sum()), nq)

    dist: np.ndarray | None = None
    if rerank:
        dist = rerank_k_reciprocal(
            _cosine_distance(q, g),
            _cosine_distance(q, q),
            _cosine_distance(g, g),
            k1=k1,
            k2=k2,
            lambda_value=lambda_value,
        )
    elif return_distances:
        dist = np.empty((nq, ng), dtype=np.result_type(q.dtype, g.dtype))
        for s, e, block in distance_chunks(q, g):
            dist[s:e] = block

    ap = np.full(nq, np.nan)
    first = np.full(nq, -1, dtype=np.int64)
    groups = _pid_groups(qcode, gcode)
    chunks = (
        distance_chunks(q, g)
        if dist is None
        else ((s, e, dist[s:e]) for s, e in row_chunks(nq, ng))
    )
    for s, e, block in chunks:
        ap[s:e], first[s:e] = match_ranks(
            block, np.arange(s, e), qcode, qcam, gcode, gcam, groups
        )

    n_valid = int((first > 0).sum())
    if n_valid == 0:
        raise ValueError(
            f"none of the {nq} queries has a correct match in the gallery (after dropping same-"
            "identity same-camera items); check that query and gallery share identities and that "
            "camids are right"
        )
    found = first[first > 0]
    return ReIdResult(
        mAP=float(np.nanmean(ap)),
        cmc={r: float(np.mean(found <= r)) for r in ranks},
        ap=ap,
        first_match=first,
        n_queries=nq,
        n_skipped=nq - n_valid,
        reranked=rerank,
        distances=dist if return_distances else None,
    )


def _warn_unknown_query_cameras(n_unknown: int, n_queries: int) -> None:
    """The one warning of the camera rule for queries whose camid is -1 (unknown)."""
    if n_unknown:
        warnings.warn(
            f"{n_unknown} of {n_queries} queries have an unknown camera (camid -1): no camera "
            "filtering for them, every gallery image of their identity counts as a true match; "
            "give camids to drop same-camera shots",
            UserWarning,
            stacklevel=3,
        )


def warn_no_cameras(where: str, n_queries: int) -> None:
    """The one warning for a dataset without camera ids (see ``data.camids_for_evaluation``)."""
    warnings.warn(
        f"{where}: cameras unknown, so no camera filtering for the {n_queries} queries: every "
        "gallery image of the query's identity is a true match, except the query image itself",
        UserWarning,
        stacklevel=3,
    )


def _check_rerank_size(nq: int, ng: int) -> None:
    n = nq + ng
    if n > RERANK_MAX_IMAGES:
        gib = 4 * n * n / 2**30
        raise ValueError(
            f"rerank=True pools the {nq} queries and {ng} gallery images into one {n} x {n} "
            f"distance matrix ({gib:.1f} GiB in float32, and a pass over every row of it); "
            f"k-reciprocal re-ranking is practical up to {RERANK_MAX_IMAGES} images. Evaluate "
            "with rerank=False, re-rank a subset (fewer queries, a gallery sample), or raise "
            "cliptk.metrics.RERANK_MAX_IMAGES if the memory and time are there"
        )


def _k_reciprocal(rank: np.ndarray, k: int) -> list[np.ndarray]:
    """R(i, k) = {j in N(i, k): i in N(j, k)} for every row i; N(i, k) = first k+1 of ``rank``."""
    fwd = rank[:, : k + 1]
    back = rank[fwd, : k + 1]  # (n, k+1, k+1): the neighbour lists of the neighbours
    mutual = (back == np.arange(rank.shape[0])[:, None, None]).any(axis=2)
    return [fwd[i][mutual[i]] for i in range(rank.shape[0])]


def rerank_k_reciprocal(
    q_g_dist: ArrayLike,
    q_q_dist: ArrayLike,
    g_g_dist: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """k-reciprocal re-ranking of a query x gallery distance matrix.

    Zhong, Zheng, Cao, Li: "Re-ranking Person Re-identification with k-reciprocal Encoding",
    CVPR 2017. With all ``n = n_q + n_g`` images pooled and ``d`` the pooled distance with each row
    divided by its maximum (as in the authors' code):

    * ``N(p, k)``: the ``k + 1`` nearest images of ``p`` (``p`` itself included), stable on ties;
    * ``R(p, k) = {g in N(p, k) : p in N(g, k)}`` (k-reciprocal neighbours);
    * ``R*(p, k1) = R(p, k1) ∪ R(q, round(k1/2))`` for each ``q in R(p, k1)`` with
      ``|R(p, k1) ∩ R(q, round(k1/2))| > 2/3 |R(q, round(k1/2))|`` (strict ``>`` as in the
      authors' code; the paper writes ``>=``);
    * ``V[p, g] = exp(-d(p, g)) / sum`` over ``g in R*(p, k1)``, else 0;
      local query expansion (``k2 > 1``): ``V[p] <- mean of V[g] over the first k2 of N(p, .)``;
    * ``d_J(p, g) = 1 - sum_i min(V[p, i], V[g, i]) / sum_i max(V[p, i], V[g, i])``;
    * result ``(1 - lambda) d_J + lambda d`` for the query x gallery block.

    Distances are used as given (cosine distance, or squared Euclidean as the authors do; for
    L2-normalised features these two rank identically and coincide after row normalisation).
    ``V`` is kept sparse, so memory is dominated by the pooled ``n x n`` float32 distance
    (``4 n²`` bytes: 100 MB for 5000 images) plus the ``n_q x n_g`` result. The neighbour lists
    come from an exact top-k (:func:`cliptk.ranking_kernels.top_k_smallest`), but the Jaccard
    step still loops over the images in Python, so sizes above :data:`RERANK_MAX_IMAGES`
    (``n_q + n_g``) are refused with an error naming the sizes.

    Args:
        q_g_dist: ``(n_q, n_g)`` query-gallery distances (non-negative).
        q_q_dist: ``(n_q, n_q)`` query-query distances.
        g_g_dist: ``(n_g, n_g)`` gallery-gallery distances.
        k1: neighbourhood size for the k-reciprocal sets (paper: 20).
        k2: neighbourhood size for local query expansion (paper: 6; 1 = none).
        lambda_value: weight of the original distance (paper: 0.3).

    Returns:
        ``(n_q, n_g)`` float32 re-ranked distances.

    Raises:
        ValueError: on inconsistent shapes, ``k1 < 1``, ``k2 < 1``, ``lambda_value`` outside
            [0, 1], or more than :data:`RERANK_MAX_IMAGES` images in all.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(30, 8))
        >>> d = lambda a, b: ((a[:, None] - b[None]) ** 2).sum(-1)
        >>> rerank_k_reciprocal(d(x[:5], x[5:]), d(x[:5], x[:5]), d(x[5:], x[5:]), k1=6, k2=3).shape
        (5, 25)
    """
    qg = to_numpy(q_g_dist, "q_g_dist")
    qq = to_numpy(q_q_dist, "q_q_dist")
    gg = to_numpy(g_g_dist, "g_g_dist")
    if qg.ndim != 2:
        raise ValueError(f"q_g_dist must be 2-D (n_q x n_g), got shape {qg.shape}")
    nq, ng = qg.shape
    if qq.shape != (nq, nq) or gg.shape != (ng, ng):
        raise ValueError(
            f"expected q_q_dist {(nq, nq)} and g_g_dist {(ng, ng)} for q_g_dist {qg.shape}, "
            f"got {qq.shape} and {gg.shape}"
        )
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")

    _check_rerank_size(nq, ng)
    n = nq + ng
    dist = np.empty((n, n), dtype=np.float32)
    dist[:nq, :nq] = qq
    dist[:nq, nq:] = qg
    dist[nq:, :nq] = qg.T
    dist[nq:, nq:] = gg
    row_max = dist.max(axis=1, keepdims=True)
    row_max[row_max <= 0] = 1.0
    dist /= row_max

    k1, k2 = min(k1, n - 1), min(k2, n)
    k_half = min(int(round(k1 / 2)), n - 1)
    n_keep = min(n, max(k1 + 1, k2))
    rank = top_k_smallest(dist, n_keep)  # = the first n_keep of a stable argsort of each row

    r_full = _k_reciprocal(rank, k1)
    r_half = [set(r.tolist()) for r in _k_reciprocal(rank, k_half)]
    rows, cols, vals = [], [], []
    for i in range(n):
        r_i = r_full[i]
        members = set(r_i.tolist())
        expansion = set(members)
        for c in r_i.tolist():
            rc = r_half[c]
            if len(rc & members) > 2.0 / 3.0 * len(rc):
                expansion |= rc
        idx = np.fromiter(sorted(expansion), dtype=np.int64) if expansion else np.array([i])
        w = np.exp(-dist[i, idx].astype(np.float64))
        rows.append(np.full(idx.size, i))
        cols.append(idx)
        vals.append(w / w.sum())
    v = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    if k2 > 1:
        expand = sp.csr_matrix(
            (np.full(n * k2, 1.0 / k2), (np.repeat(np.arange(n), k2), rank[:, :k2].ravel())),
            shape=(n, n),
        )
        v = (expand @ v).tocsr()

    vq = v[:nq]
    vg = v[nq:].tocsc()
    sum_q = np.asarray(vq.sum(axis=1)).ravel()
    sum_g = np.asarray(vg.sum(axis=1)).ravel()
    jaccard = np.empty((nq, ng), dtype=np.float32)
    for i in range(nq):
        lo, hi = vq.indptr[i], vq.indptr[i + 1]
        idx, w = vq.indices[lo:hi], vq.data[lo:hi]
        inter = np.minimum(vg[:, idx].toarray(), w[None, :]).sum(axis=1)
        union = sum_q[i] + sum_g - inter  # sum of max = sum + sum - sum of min
        jaccard[i] = 1.0 - inter / np.maximum(union, np.finfo(np.float64).tiny)
    return (1.0 - lambda_value) * jaccard + lambda_value * dist[:nq, nq:]


# --------------------------------------------------------------------------------------------------
# zero-shot text probes
# --------------------------------------------------------------------------------------------------


@dataclass(repr=False, eq=False)
class ProbeResult:
    """Outcome of :func:`classify_zero_shot`.

    Attributes:
        accuracy: top-1 accuracy over images with a known label.
        top_k_accuracy: fraction whose true class is among the ``k`` most similar class texts.
        k: the ``k`` of ``top_k_accuracy`` (``min(top_k, n_classes)``).
        chance: ``1 / n_classes`` (uniform guessing).
        majority_rate: accuracy of always answering the most frequent true class.
        predictions: ``(n_images,)`` predicted class index for every image (unknown labels too).
        confusion: ``(n_classes, n_classes)`` counts, rows = true class, columns = predicted.
        class_names: one name per class.
        n_evaluated: images with a known label.
        n_unknown: images with label -1 (excluded from the numbers).
    """

    accuracy: float
    top_k_accuracy: float
    k: int
    chance: float
    majority_rate: float
    predictions: np.ndarray
    confusion: np.ndarray
    class_names: list[str]
    n_evaluated: int
    n_unknown: int

    @property
    def per_class_accuracy(self) -> np.ndarray:
        """Recall of each class (diagonal / row sum); NaN for classes with no labelled image."""
        support = self.confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(support > 0, np.diag(self.confusion) / support, np.nan)

    def to_dict(self) -> dict[str, float | int]:
        """Flat scalar summary for logging."""
        return {
            "accuracy": self.accuracy,
            f"top{self.k}_accuracy": self.top_k_accuracy,
            "chance": self.chance,
            "majority_rate": self.majority_rate,
            "n_evaluated": self.n_evaluated,
            "n_unknown": self.n_unknown,
        }

    def _rows(self) -> list[tuple[str, str]]:
        return [
            ("images", f"{self.n_evaluated} labelled, {self.n_unknown} unknown"),
            ("classes", str(len(self.class_names))),
            ("accuracy", _fmt(self.accuracy)),
            (f"top-{self.k} accuracy", _fmt(self.top_k_accuracy)),
            ("chance (1/classes)", _fmt(self.chance)),
            ("majority class rate", _fmt(self.majority_rate)),
        ]

    def __repr__(self) -> str:
        return _text_table("ProbeResult (zero-shot)", self._rows())

    def _repr_html_(self) -> str:
        out = _html_table("ProbeResult (zero-shot)", self._rows())
        if len(self.class_names) <= 50:
            support = self.confusion.sum(axis=1)
            per_class = [
                (name, f"{_fmt(acc)}  (n={n})")
                for name, acc, n in zip(self.class_names, self.per_class_accuracy, support)
            ]
            out += _html_table("accuracy per class", per_class)
        return out


def classify_zero_shot(
    image_emb: ArrayLike,
    text_emb: ArrayLike,
    labels: ArrayLike,
    class_names: Sequence[str] | None = None,
    *,
    top_k: int = 5,
) -> ProbeResult:
    """Zero-shot classification at the embedding level: each image gets the most similar class text.

    Both sides are L2-normalised; the prediction is the argmax of cosine similarity over the rows of
    ``text_emb`` (row ``c`` = class ``c``; on exact ties the lower class index wins). Images with
    label -1 are predicted but left out of every number. Radford et al., "Learning Transferable
    Visual Models From Natural Language Supervision", ICML 2021.

    Args:
        image_emb: ``(n, d)`` image embeddings.
        text_emb: ``(n_classes, d)`` one text embedding per class (e.g. averaged over prompts).
        labels: ``(n,)`` true class index per image, ``-1`` = unknown.
        class_names: ``n_classes`` display names; default ``"0"``, ``"1"``, ...
        top_k: ``k`` for the top-k accuracy (clipped to ``n_classes``).

    Returns:
        A :class:`ProbeResult`.

    Raises:
        ValueError: on mismatched shapes, labels outside ``[-1, n_classes)``, a wrong number of
            class names, or when every label is -1.

    Example:
        >>> import numpy as np
        >>> text = np.eye(3)
        >>> imgs = np.array([[0.9, 0.1, 0], [0, 1, 0.2], [0.5, 0, 0.4], [1, 0, 0]])
        >>> r = classify_zero_shot(imgs, text, [0, 1, 2, -1], ["red", "blue", "green"])
        >>> r.accuracy, r.predictions.tolist()
        (0.6666666666666666, [0, 1, 0, 0])
    """
    img = unit_rows(image_emb, "image_emb")
    txt = unit_rows(text_emb, "text_emb")
    _same_dim(img, txt, "image_emb", "text_emb")
    n, n_classes = img.shape[0], txt.shape[0]
    y = _vector(labels, "labels", n)
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"labels must be integer class indices (-1 = unknown), got {y.dtype}")
    bad = (y < -1) | (y >= n_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"labels[{i}] = {int(y[i])} is outside [-1, {n_classes}); "
            f"text_emb has {n_classes} rows, one per class"
        )
    if class_names is None:
        names = [str(c) for c in range(n_classes)]
    else:
        names = [str(c) for c in class_names]
        if len(names) != n_classes:
            raise ValueError(f"{len(names)} class_names given for {n_classes} text embeddings")
    known = y >= 0
    if not known.any():
        raise ValueError("every label is -1 (unknown); nothing to score")

    from sklearn.metrics import confusion_matrix

    scores = img @ txt.T
    pred = scores.argmax(axis=1)
    k = min(top_k, n_classes)
    top = np.argsort(-scores[known], axis=1, kind="stable")[:, :k]
    yk = y[known]
    counts = np.bincount(yk, minlength=n_classes)
    return ProbeResult(
        accuracy=float(np.mean(pred[known] == yk)),
        top_k_accuracy=float(np.mean((top == yk[:, None]).any(axis=1))),
        k=k,
        chance=1.0 / n_classes,
        majority_rate=float(counts.max() / yk.size),
        predictions=pred,
        confusion=confusion_matrix(yk, pred[known], labels=np.arange(n_classes)),
        class_names=names,
        n_evaluated=int(yk.size),
        n_unknown=int(n - yk.size),
    )


# --------------------------------------------------------------------------------------------------
# embedding-space geometry
# --------------------------------------------------------------------------------------------------


class NeighbourIndex:
    """Exact cosine nearest-neighbour search over fixed embeddings: normalised and checked once,
    then each :meth:`search` costs one product with the rows asked about and an exact top-k.

    What a click in the explorer needs on 100k points (a full pass over the embeddings, no
    re-normalisation), and :func:`nearest_neighbours` for all rows at once. Distances are
    ``1 - x @ x.T`` in the query chunks of :func:`cliptk.ranking_kernels.distance_chunks`, the
    row itself left out, and the top-k is :func:`cliptk.ranking_kernels.top_k_smallest`, so the
    result is the first ``k`` columns of a stable argsort of the distances (ties go to the lower
    row), without the ``n x n`` matrix. No approximate index (faiss HNSW/IVF, usearch): results
    must equal brute force, and an exact index (faiss ``IndexFlatIP``) does the same product and
    selection.

    Raises:
        ValueError: NaN/inf or all-zero rows (the message names the first).

    Example:
        >>> index = NeighbourIndex([[1, 0], [0.9, 0.1], [0, 1], [1, 0]])
        >>> idx, sim = index.search([0], k=2)
        >>> idx.tolist(), sim.round(3).tolist()
        ([[3, 1]], [[1.0, 0.994]])
    """

    def __init__(self, emb: ArrayLike):
        self.embeddings = unit_rows(emb, "emb")

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def __repr__(self) -> str:
        return f"NeighbourIndex({len(self)} x {self.embeddings.shape[1]}, {self.embeddings.dtype})"

    def search(self, rows: ArrayLike | None = None, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar *other* rows of each of ``rows`` (default: all).

        Returns:
            ``(indices, similarities)``, both ``(m, k)``, most similar first; ``similarities`` is
            ``1 - distance`` of the ranking.

        Raises:
            ValueError: ``k`` not in ``[1, n - 1]``. IndexError: a row outside ``[0, n)``.
        """
        x = self.embeddings
        n = x.shape[0]
        if isinstance(k, bool) or int(k) != k or not 1 <= k < n:
            raise ValueError(f"k must be an integer in [1, {n - 1}] for {n} points, got {k!r}")
        rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            bad = int(rows[(rows < 0) | (rows >= n)][0])
            raise IndexError(f"row {bad} is not a row of the {n} embeddings")
        idx = np.empty((len(rows), int(k)), dtype=np.int64)
        sim = np.empty((len(rows), int(k)), dtype=x.dtype)
        for s, e, dist in distance_chunks(x[rows], x):
            r = np.arange(e - s)
            dist[r, rows[s:e]] = np.inf   # never the row itself
            top = top_k_smallest(dist, int(k))
            idx[s:e] = top
            sim[s:e] = 1 - dist[r[:, None], top]
        return idx, sim


def nearest_neighbours(emb: ArrayLike, k: int = 10, rows: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar *other* rows of each of ``rows`` (default: all), exactly and in
    bounded memory: ``NeighbourIndex(emb).search(rows, k)`` (see :class:`NeighbourIndex`; hold
    one index for repeated searches on the same embeddings).

    Returns:
        ``(indices, similarities)``, both ``(m, k)``, most similar first.

    Raises:
        ValueError: NaN or zero rows, ``k`` out of range. IndexError: a row outside ``[0, n)``.

    Example:
        >>> nearest_neighbours([[1, 0], [0.9, 0.1], [0, 1], [1, 0]], k=1)[0].ravel().tolist()
        [3, 0, 1, 0]
    """
    return NeighbourIndex(emb).search(rows, k)


def _neighbours(x: np.ndarray, k: int, metric: str, name: str) -> np.ndarray:
    """Indices ``(n, k)`` of the k nearest other points of each row (the point itself excluded)."""
    if not 1 <= k < x.shape[0]:
        raise ValueError(
            f"k must be in [1, {x.shape[0] - 1}] for {x.shape[0]} points in {name}, got {k}"
        )
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, metric=metric, algorithm="brute").fit(x)
    return nn.kneighbors(return_distance=False)


def knn_accuracy(emb: ArrayLike, labels: ArrayLike, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour accuracy under cosine similarity.

    Each item is classified by a majority vote of its ``k`` nearest *other* items; a tied vote goes
    to the tied label that appears nearest. High when same-label items cluster together.

    Args:
        emb: ``(n, d)`` embeddings.
        labels: ``(n,)`` labels (ints or strings).
        k: number of neighbours, ``1 <= k < n``.

    Returns:
        Fraction of items whose vote equals their label.

    Raises:
        ValueError: on mismatched lengths or an invalid ``k``.

    Example:
        >>> knn_accuracy([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], ["a", "a", "b", "b"], k=1)
        1.0
    """
    x = unit_rows(emb, "emb")
    y = _vector(labels, "labels", x.shape[0])
    _, codes = np.unique(y, return_inverse=True)
    codes = codes.ravel()
    nbr_codes = codes[_neighbours(x, k, "cosine", "emb")]  # (n, k), nearest first
    n, n_labels = nbr_codes.shape[0], int(codes.max()) + 1
    counts = np.zeros((n, n_labels), dtype=np.int64)
    first_seen = np.full((n, n_labels), k, dtype=np.int64)
    at = (np.repeat(np.arange(n), k), nbr_codes.ravel())
    np.add.at(counts, at, 1)
    np.minimum.at(first_seen, at, np.tile(np.arange(k), n))
    vote = (counts * (k + 1) - first_seen).argmax(axis=1)  # most votes, then nearest
    return float(np.mean(vote == codes))


def neighbourhood_overlap(
    high: ArrayLike, low: ArrayLike, k: int = 10, *, metric_high: str = "cosine"
) -> float:
    """Mean fraction of shared k-nearest neighbours between an embedding and its projection.

    For each point ``i``: ``|N_high(i) ∩ N_low(i)| / k`` with ``N`` the ``k`` nearest *other*
    points (``metric_high`` in the original space, Euclidean in the 2-D/3-D projection), averaged
    over points. This is the shared fraction, not the Jaccard index. 1 = every neighbourhood
    is kept; about ``k / (n - 1)`` = a random layout.

    Args:
        high: ``(n, d)`` original embeddings.
        low: ``(n, 2 or 3)`` projection (UMAP, PCA, t-SNE ...), same row order.
        k: neighbourhood size, ``1 <= k < n``.
        metric_high: metric in the original space (any sklearn ``NearestNeighbors`` metric).

    Raises:
        ValueError: on a row-count mismatch or an invalid ``k``.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(50, 2))
        >>> neighbourhood_overlap(x, x, k=5, metric_high="euclidean")
        1.0
    """
    h, lo = as_rows(high, "high"), as_rows(low, "low")
    if h.shape[0] != lo.shape[0]:
        raise ValueError(
            f"high has {h.shape[0]} rows but low has {lo.shape[0]}; pass the same points, in order"
        )
    nh = _neighbours(h, k, metric_high, "high")
    nl = _neighbours(lo, k, "euclidean", "low")
    shared = (nh[:, :, None] == nl[:, None, :]).any(axis=2).sum(axis=1)
    return float(np.mean(shared / k))


def trustworthiness(
    high: ArrayLike,
    low: ArrayLike,
    k: int = 10,
    max_samples: int = 5000,
    seed: int = 0,
    *,
    metric_high: str = "cosine",
) -> float:
    """Trustworthiness of a projection (Venna & Kaski, 2001), on a random subset if large.

    Wraps :func:`sklearn.manifold.trustworthiness`: 1 minus a penalty for points that are among
    the ``k`` nearest neighbours in ``low`` but not in ``high``, weighted by how far down the
    original ranking they sit. 1 = no false neighbours. Because sklearn builds full ``n x n``
    distance and rank matrices, at most ``max_samples`` rows (drawn without replacement with
    ``seed``) are used.

    Args:
        high: ``(n, d)`` original embeddings.
        low: ``(n, 2 or 3)`` projection, same row order.
        k: neighbourhood size; must be below half the number of (sampled) points.
        max_samples: largest number of points to use.
        seed: seed of the subset draw.
        metric_high: metric of the original space (Euclidean in the projection).

    Raises:
        ValueError: on a row-count mismatch or a ``k`` too large for the number of points.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(40, 2))
        >>> round(trustworthiness(x, x, k=5, metric_high="euclidean"), 6)
        1.0
    """
    h, lo = as_rows(high, "high"), as_rows(low, "low")
    if h.shape[0] != lo.shape[0]:
        raise ValueError(
            f"high has {h.shape[0]} rows but low has {lo.shape[0]}; pass the same points, in order"
        )
    n = h.shape[0]
    if n > max_samples:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
        h, lo, n = h[idx], lo[idx], max_samples
    if not 1 <= k < n / 2:
        raise ValueError(f"k must be in [1, {n / 2}) for {n} points, got {k}; lower k")
    from sklearn.manifold import trustworthiness

    return float(trustworthiness(h, lo, n_neighbors=k, metric=metric_high))


def alignment(x: ArrayLike, y: ArrayLike, alpha: float = 2) -> float:
    """Alignment of positive pairs: ``mean_i ||x_i - y_i||_2 ** alpha`` on L2-normalised rows.

    Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and
    Uniformity on the Hypersphere", ICML 2020. Lower is better (0 = pairs coincide; at most
    ``2 ** alpha`` for antipodal pairs). Row ``i`` of ``x`` and of ``y`` form a positive pair,
    e.g. two views of one player.

    Raises:
        ValueError: if the shapes differ or a row is all zeros.

    Example:
        >>> alignment([[1, 0], [0, 1]], [[0, 1], [0, 1]])   # (2 + 0) / 2
        1.0
    """
    a, b = unit_rows(x, "x", np.float64), unit_rows(y, "y", np.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"x {a.shape} and y {b.shape} must have the same shape: row i pairs with row i"
        )
    return float(np.mean(((a - b) ** 2).sum(axis=1) ** (alpha / 2)))


def uniformity(x: ArrayLike, t: float = 2) -> float:
    """Uniformity: ``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` over pairs of L2-normalised rows.

    Wang & Isola, ICML 2020. Lower (more negative) = spread more evenly over the sphere. Computed
    in blocks with a log-sum-exp, so memory stays linear in ``n``.

    Raises:
        ValueError: with fewer than two rows.

    Example:
        >>> uniformity([[1, 0], [-1, 0]])   # one pair at squared distance 4: log exp(-8)
        -8.0
    """
    a = unit_rows(x, "x", np.float64)
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 embeddings, got {n}")
    step = max(1, _BLOCK_ELEMENTS // n)
    parts = []
    for s in range(0, n - 1, step):
        e = min(n, s + step)
        sq = np.maximum(2.0 - 2.0 * a[s:e] @ a.T, 0.0)
        upper = np.arange(n)[None, :] > np.arange(s, e)[:, None]  # pairs i < j only
        parts.append(logsumexp(-t * sq[upper]))
    return float(logsumexp(parts) - np.log(n * (n - 1) / 2))


def modality_gap(image_emb: ArrayLike, text_emb: ArrayLike) -> float:
    """Modality gap: ``|| mean(normalised image rows) - mean(normalised text rows) ||_2``.

    Liang, Zhang, Kwon, Yeung, Zou: "Mind the Gap: Understanding the Modality Gap in Multi-modal
    Contrastive Representation Learning", NeurIPS 2022. 0 = the two clouds share a centroid.
    The two sets need not have the same size or be paired.

    Raises:
        ValueError: if the dimensions differ or a row is all zeros.

    Example:
        >>> round(modality_gap([[1, 0], [1, 0]], [[0, 1]]), 6)   # sqrt(2)
        1.414214
    """
    a = unit_rows(image_emb, "image_emb", np.float64)
    b = unit_rows(text_emb, "text_emb", np.float64)
    _same_dim(a, b, "image_emb", "text_emb")
    return float(np.linalg.norm(a.mean(axis=0) - b.mean(axis=0)))
