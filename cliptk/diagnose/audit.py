"""Audits of a re-id dataset from its embeddings: leaks between splits and label noise.

* :func:`find_leaks` — near-duplicates between train and test (the model may have memorised a
  test image, so its score is optimistic), or inside one set;
* :func:`label_noise_suspects` — images closer to another identity's centroid than to their own.

Both return a ``pandas.DataFrame``, most suspicious first; show the pairs or images beside their
rows with :func:`cliptk.diagnose.table_html`. Both work in row chunks with bounded memory and give
exactly the brute-force result: :func:`find_leaks` keeps only the pairs that can still be among
the ``max_pairs`` most similar (ties kept) and computes half the products within one set;
:func:`label_noise_suspects` takes each image's nearest foreign centroid chunk by chunk.

Example:
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [0.99, 0.01]])
    >>> find_leaks(x, threshold=0.99)[["index_a", "index_b"]].values.tolist()
    [[0, 2]]
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .._util import unit_rows
from ..ranking_kernels import row_chunks

__all__ = ["find_leaks", "label_noise_suspects"]

#: Candidate pairs of :func:`find_leaks` are cut back to the ``max_pairs`` most similar (ties kept)
#: whenever more than ``2 max_pairs + _BLOCK_ELEMENTS / 8`` pile up, so a low threshold on a large
#: set keeps memory bounded. Similarities are computed in :func:`cliptk.ranking_kernels.row_chunks`.
_BLOCK_ELEMENTS = 1 << 22


def _unit(x: Any, name: str) -> np.ndarray:
    """L2-normalised rows: tensors in float32 (as the encoder gives them), arrays in float64."""
    return unit_rows(x, name, np.float32 if hasattr(x, "detach") else np.float64)


def find_leaks(emb_train: Any, emb_test: Any = None, threshold: float = 0.95, *, train_pids: Any = None,
               test_pids: Any = None, max_pairs: int | None = 10_000) -> pd.DataFrame:
    """Near-duplicate pairs: cosine similarity ``>= threshold`` between train and test rows, or
    between rows of one set (``emb_test=None``; each pair once, ``index_a < index_b``).

    A test (query/gallery) image that is nearly identical to a training image is a leak: the
    model may have memorised it, so its score is optimistic. Inside one set, duplicates inflate
    an identity and, across identities, betray label noise.

    Args:
        emb_train: ``(n_a, d)`` embeddings (rows ``index_a``).
        emb_test: ``(n_b, d)`` embeddings (rows ``index_b``), or ``None``.
        threshold: cosine similarity at or above which a pair is reported.
        train_pids, test_pids: optional identities; adds ``pid_a``, ``pid_b``, ``same_pid``.
        max_pairs: keep at most this many pairs (the most similar); ``None`` keeps all.

    Returns:
        DataFrame ``index_a, index_b, similarity[, pid_a, pid_b, same_pid]``, most similar first.
        Show the pairs side by side with :func:`table_html`.

    Raises:
        ValueError: bad shapes, different dimensions, NaN or zero rows, pid counts.

    Example:
        >>> train, test = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.6, 0.8], [1.0, 0.001]])
        >>> find_leaks(train, test, 0.99).round(4).values.tolist()
        [[0.0, 1.0, 1.0]]

        On real data (skipped by the doctest run: it needs a model and datasets):

        >>> t = find_leaks(embed(model, train), embed(model, gallery), 0.97)               # doctest: +SKIP
        >>> table_html(t, {"index_a": train, "index_b": gallery})                          # doctest: +SKIP
    """
    a = _unit(emb_train, "emb_train")
    within = emb_test is None
    b = a if within else _unit(emb_test, "emb_test")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"emb_train has dimension {a.shape[1]} but emb_test has {b.shape[1]}; embed both with one model")
    na, nb = a.shape[0], b.shape[0]
    keep_a, keep_b, keep_s = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, a.dtype)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    n_parts = 0
    for s, e in row_chunks(na, nb):
        # within one set only the pairs j > i: the columns from s on (half the products)
        cols = b[s:] if within else b
        sim = a[s:e] @ cols.T
        hit = sim >= threshold
        if within:
            hit &= np.arange(e - s)[:, None] < np.arange(cols.shape[0])[None, :]
        i, j = np.nonzero(hit)
        parts.append((i + s, j + s if within else j, sim[i, j]))
        n_parts += i.size
        if max_pairs is not None and n_parts > 2 * max_pairs + _BLOCK_ELEMENTS // 8:
            keep_a, keep_b, keep_s = _most_similar(keep_a, keep_b, keep_s, parts, max_pairs)
            parts, n_parts = [], 0
    keep_a, keep_b, keep_s = _most_similar(keep_a, keep_b, keep_s, parts, max_pairs)
    out = pd.DataFrame({"index_a": keep_a, "index_b": keep_b, "similarity": keep_s})
    out = out.sort_values(["similarity", "index_a", "index_b"], ascending=[False, True, True], kind="stable")
    if max_pairs is not None:
        out = out.head(max_pairs)
    out = out.reset_index(drop=True)
    if train_pids is not None:
        pa = np.asarray(train_pids)
        pb = pa if within else (None if test_pids is None else np.asarray(test_pids))
        if pa.shape != (a.shape[0],) or pb is None or pb.shape != (b.shape[0],):
            raise ValueError("give train_pids with one pid per emb_train row (and test_pids, one per emb_test row)")
        out["pid_a"] = pa[out["index_a"].to_numpy()]
        out["pid_b"] = pb[out["index_b"].to_numpy()]
        out["same_pid"] = out["pid_a"] == out["pid_b"]
    return out


def _most_similar(ka: np.ndarray, kb: np.ndarray, ks: np.ndarray, parts: list, max_pairs: int | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs kept so far plus ``parts``, cut to those that can still be among the
    ``max_pairs`` most similar: every pair at least as similar as the ``max_pairs``-th (ties kept,
    so the final sort is the same as over all pairs)."""
    ia = np.concatenate([ka] + [p[0] for p in parts])
    ib = np.concatenate([kb] + [p[1] for p in parts])
    sv = np.concatenate([ks] + [p[2] for p in parts])
    if max_pairs is not None and sv.size > max_pairs:
        kth = np.partition(sv, sv.size - max_pairs)[sv.size - max_pairs] if max_pairs > 0 else np.inf
        sel = sv >= kth
        ia, ib, sv = ia[sel], ib[sel], sv[sel]
    return ia, ib, sv


def label_noise_suspects(emb: Any, pids: Any, *, include_all: bool = False, ignore_pid: Any = -1) -> pd.DataFrame:
    """Images closer to another identity's centroid than to their own: likely mislabelled.

    For image ``i`` of identity ``p``: ``own_similarity`` is its cosine similarity to the
    centroid of the *other* images of ``p`` (leave-one-out, so an image does not vouch for
    itself); ``nearest_similarity`` is the highest similarity to the centroid of any other
    identity (``nearest_pid``). ``margin = nearest_similarity - own_similarity``; a positive
    margin makes a suspect. Centroids are means of L2-normalised embeddings, normalised.
    Identities with a single image cannot be checked (``own_similarity`` NaN); rows with pid
    ``ignore_pid`` (unknown) are skipped.

    Returns:
        DataFrame ``index, pid, n_images, own_similarity, nearest_pid, nearest_similarity,
        margin``, largest margin first; only suspects (``margin > 0``) unless ``include_all``.

    Raises:
        ValueError: bad shapes or fewer than two identities.

    Example:
        >>> x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.95, 0.05]])
        >>> label_noise_suspects(x, [0, 0, 1, 1, 1])[["index", "pid", "nearest_pid"]].values.tolist()
        [[4, 1, 0]]

        On real data (skipped by the doctest run: it needs a model and a dataset):

        >>> t = label_noise_suspects(embed(model, train), train.pids)             # doctest: +SKIP
        >>> table_html(t.head(20), {"index": train})                              # doctest: +SKIP
    """
    x = _unit(emb, "emb")
    p = np.asarray(pids)
    if p.shape != (x.shape[0],):
        raise ValueError(f"pids has shape {p.shape}; give one pid per embedding row ({x.shape[0]})")
    rows = np.flatnonzero(p != ignore_pid) if ignore_pid is not None else np.arange(len(p))
    ids, codes = np.unique(p[rows], return_inverse=True)
    codes = codes.ravel()
    if len(ids) < 2:
        raise ValueError(f"label_noise_suspects needs at least two identities, got {len(ids)}")
    xs = x[rows]
    sums = np.zeros((len(ids), x.shape[1]))
    np.add.at(sums, codes, xs)
    counts = np.bincount(codes, minlength=len(ids))
    centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    loo = sums[codes] - xs
    loo_norm = np.linalg.norm(loo, axis=1)
    own = np.where((counts[codes] > 1) & (loo_norm > 1e-12),
                   (loo * xs).sum(axis=1) / np.maximum(loo_norm, 1e-12), np.nan)
    nearest = np.empty(len(rows), dtype=np.int64)
    near_sim = np.empty(len(rows), dtype=np.result_type(xs, centroids))
    for s, e in row_chunks(len(rows), len(ids)):  # the (images x identities) similarities in chunks
        other = xs[s:e] @ centroids.T
        other[np.arange(e - s), codes[s:e]] = -np.inf
        nearest[s:e] = other.argmax(axis=1)
        near_sim[s:e] = other[np.arange(e - s), nearest[s:e]]
    out = pd.DataFrame({"index": rows, "pid": p[rows], "n_images": counts[codes], "own_similarity": own,
                        "nearest_pid": ids[nearest], "nearest_similarity": near_sim,
                        "margin": near_sim - own})
    out = out.sort_values("margin", ascending=False, na_position="last", kind="stable")
    if not include_all:
        out = out[out["margin"] > 0]
    return out.reset_index(drop=True)
