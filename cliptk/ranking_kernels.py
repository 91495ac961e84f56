"""Exact ranking of a gallery without sorting it: the kernels behind re-id evaluation and top-k.

Ranking every query against a large gallery (20k x 100k) by sorting each row is what made
evaluation slow (and a full ``n_q x n_g`` argsort large). Neither number needs the sort:

* **Average precision** needs only the rank of each of the query's true matches. The position of
  a match ``h`` in the stable order is the number of gallery items ``j`` that come before it,
  ``(d_j, j) < (d_h, h)`` lexicographically (distance, then gallery index: exactly what a stable
  argsort does with ties); items of the query's identity *and* camera ("junk", torchreid's
  ``eval_market1501`` rule) take no rank, so they are subtracted. One pass over the row with a
  lookup in a small bucket table of the match distances counts this for all matches at once.
* **CMC** needs only the first match's rank, a by-product.
* **Top-k** keeps a bounded heap keyed on ``(distance, index)``: the same k items, in the same
  order, as the first ``k`` of a stable argsort.

Distances are computed in query chunks of about :data:`CHUNK_ELEMENTS` entries
(``1 - q @ g.T`` in the embeddings' float type, as before), so memory stays bounded whatever the
gallery size. BLAS may round a product differently for another chunk shape (last bit only), so
everything that must agree with an evaluation (:class:`cliptk.diagnose.Ranking`'s rows) computes
its distances in the same chunks. The kernels are compiled with numba (a dependency of
umap-learn), release the GIL and run in threads over the rows of a chunk (``CLIPTK_THREADS``, else
``NUMBA_NUM_THREADS``, else all usable CPUs), and are cached on disk after the first call.

Camera rule (:func:`protocol_codes`): identities and cameras become integer codes; camera code
``-1`` means unknown (a numeric camid ``-1``). A gallery item is junk for a query when both have
a known camera, the same camera and the same identity. A query with an unknown camera therefore
gets no camera filtering, and a gallery item with an unknown camera is never junk.

Example:
    >>> d = np.array([[0.3, 0.1, 0.1, 0.5]])            # items 1 and 2 tie at 0.1
    >>> top_k_smallest(d, 3).tolist()                     # stable: 1 before 2
    [[1, 2, 0]]
    >>> qcode, gcode, qcam, gcam = protocol_codes([7], [7, 8, 7, 7], None, None)
    >>> ap, first = match_ranks(d, np.array([0]), qcode, qcam, gcode, gcam)
    >>> first.tolist(), round(float(ap[0]), 4)           # matches 2, 0, 3 at ranks 2, 3, 4
    ([2], 0.6389)
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
import numpy as np

__all__ = ["CHUNK_ELEMENTS", "row_chunks", "distance_chunks", "protocol_codes", "match_ranks",
           "top_k_smallest", "smallest_prefix"]

#: Entries of one ``(rows x gallery)`` distance chunk (64 MiB in float32, 128 MiB in float64).
CHUNK_ELEMENTS = 1 << 24


def row_chunks(n_rows: int, n_cols: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` row ranges of at most :data:`CHUNK_ELEMENTS` entries (at least one row).

    Example:
        >>> list(row_chunks(5, CHUNK_ELEMENTS // 2))
        [(0, 2), (2, 4), (4, 5)]
    """
    step = max(1, CHUNK_ELEMENTS // max(1, n_cols))
    for s in range(0, n_rows, step):
        yield s, min(n_rows, s + step)


def distance_chunks(q: np.ndarray, g: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, end, 1 - q[start:end] @ g.T)`` for the chunks of :func:`row_chunks`.

    ``q`` and ``g`` are L2-normalised rows of one float type; the chunk has that type. The chunk
    buffer is reused: copy a chunk to keep it past the next iteration.

    Example:
        >>> [(s, e, d.tolist()) for s, e, d in distance_chunks(np.eye(2), np.eye(2))]
        [(0, 2, [[0.0, 1.0], [1.0, 0.0]])]
    """
    buf: np.ndarray | None = None
    for s, e in row_chunks(q.shape[0], g.shape[0]):
        if buf is None:
            buf = np.empty((e - s, g.shape[0]), dtype=np.result_type(q.dtype, g.dtype))
        block = buf[: e - s]
        np.matmul(q[s:e], g.T, out=block)
        np.subtract(1.0, block, out=block)
        yield s, e, block


def _codes(values: np.ndarray, unknown: np.ndarray | None = None) -> np.ndarray:
    """Dense integer codes of ``values`` (equal values, equal codes); ``-1`` where ``unknown``."""
    out = np.full(values.shape[0], -1, dtype=np.int64)
    known = slice(None) if unknown is None else ~unknown
    if values[known].size:
        out[known] = np.unique(values[known], return_inverse=True)[1].ravel()
    return out


def _unknown_camera(c: np.ndarray) -> np.ndarray:
    return (c == -1) if c.dtype.kind in "iuf" else np.zeros(c.shape, dtype=bool)


def protocol_codes(query_pids: Any, gallery_pids: Any, query_camids: Any, gallery_camids: Any
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(query_pid_code, gallery_pid_code, query_cam_code, gallery_cam_code)``, int64 arrays.

    Equal labels get equal codes across query and gallery; camera code ``-1`` = unknown (a
    numeric camid of ``-1``, or no camids at all: ``None``). The junk rule is then
    ``pid equal and cam equal and cam >= 0``.

    Example:
        >>> [c.tolist() for c in protocol_codes(["a", "b"], ["b"], [3, -1], [3])]
        [[0, 1], [1], [0, -1], [0]]
    """
    qp, gp = np.asarray(query_pids), np.asarray(gallery_pids)
    pid = _codes(np.concatenate([qp, gp]))
    nq = qp.shape[0]
    if query_camids is None or gallery_camids is None:
        cam = np.full(nq + gp.shape[0], -1, dtype=np.int64)
    else:
        c = np.concatenate([np.asarray(query_camids), np.asarray(gallery_camids)])
        cam = _codes(c, _unknown_camera(c))
    return pid[:nq], pid[nq:], cam[:nq], cam[nq:]


def _threads() -> int:
    """Threads for the kernels: ``CLIPTK_THREADS``, else ``NUMBA_NUM_THREADS``, else the usable CPUs."""
    for var in ("CLIPTK_THREADS", "NUMBA_NUM_THREADS"):
        if os.environ.get(var, "").isdigit() and int(os.environ[var]) > 0:
            return int(os.environ[var])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _in_threads(fn: Callable[[int, int], None], n_rows: int) -> None:
    """``fn(r0, r1)`` over contiguous row ranges, in parallel threads (the kernels release the GIL)."""
    n = min(_threads(), max(1, n_rows // 8))
    if n <= 1:
        fn(0, n_rows)
        return
    bounds = np.linspace(0, n_rows, n + 1).astype(int)
    with ThreadPoolExecutor(n) as pool:
        for f in [pool.submit(fn, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]:
            f.result()


def _pid_groups(qcode: np.ndarray, gcode: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gallery indices grouped by identity (ascending inside a group) and each query's group range."""
    order = np.argsort(gcode, kind="stable")
    sorted_codes = gcode[order]
    return (order.astype(np.int64), np.searchsorted(sorted_codes, qcode, "left").astype(np.int64),
            np.searchsorted(sorted_codes, qcode, "right").astype(np.int64))


@numba.njit(cache=True, nogil=True)
def _argsort_lex(v: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Order of the pairs ``(v, j)`` lexicographically (``j`` distinct)."""
    by_j = np.argsort(j, kind="mergesort")
    return by_j[np.argsort(v[by_j], kind="mergesort")]


@numba.njit(cache=True, nogil=True)
def _bucket(x, t0, scale, n_buckets):
    """Monotone bucket of ``x`` in ``[0, n_buckets + 1]``: 0 below ``t0``, ``n_buckets + 1`` far above."""
    return int(min(max((x - t0) * scale, -1.0), n_buckets) + 1.0)


@numba.njit(cache=True, nogil=True)
def _match_ranks_kernel(block, rows, qcam, gcam, g_order, g_lo, g_hi, ap, first, r0, r1):  # pragma: no cover
    # (numba-compiled: coverage cannot see inside; tested through match_ranks). Rows r0..r1-1.
    n_g = block.shape[1]
    for r in range(r0, r1):
        i = rows[r]
        lo, hi = g_lo[i], g_hi[i]
        m = hi - lo
        hv = np.empty(m, dtype=block.dtype)
        hj = np.empty(m, dtype=np.int64)
        jv = np.empty(m, dtype=block.dtype)
        jj = np.empty(m, dtype=np.int64)
        nh = 0
        nj = 0
        qc = qcam[i]
        for t in range(lo, hi):
            j = g_order[t]
            if qc >= 0 and gcam[j] == qc:
                jv[nj] = block[r, j]
                jj[nj] = j
                nj += 1
            else:
                hv[nh] = block[r, j]
                hj[nh] = j
                nh += 1
        if nh == 0:
            continue
        o = _argsort_lex(hv[:nh], hj[:nh])
        tv = hv[:nh][o]
        tj = hj[:nh][o]
        # a = number of match distances <= v, found through a bucket table over [t_0, t_max]:
        # bucket() is monotone in v, so a bucket below (above) a match's bucket is below (above)
        # the match, and only a value in a bucket that holds a match is compared exactly.
        t0 = np.float64(tv[0])
        span = np.float64(tv[nh - 1]) - t0
        n_buckets = min(64 * nh, 1 << 15)
        scale = n_buckets / span if span > 0 else 0.0
        start = np.zeros(n_buckets + 3, dtype=np.int64)  # start[b]: matches in buckets < b
        for k in range(nh):
            start[_bucket(np.float64(tv[k]), t0, scale, n_buckets) + 1] += 1
        for b in range(n_buckets + 2):
            start[b + 1] += start[b]
        hist = np.zeros(nh + 1, dtype=np.int64)
        eq = np.zeros(nh, dtype=np.int64)
        for j in range(n_g):
            v = block[r, j]
            b = _bucket(np.float64(v), t0, scale, n_buckets)
            a = start[b]
            e = start[b + 1]
            while a < e and tv[a] <= v:
                a += 1
            hist[a] += 1
            k = a - 1
            while k >= 0 and tv[k] == v:  # a tie: j comes first only with a smaller index
                if j < tj[k]:
                    eq[k] += 1
                k -= 1
        total = 0.0
        before = 0
        for k in range(nh):
            before += hist[k]  # items with a distance below the k-th match
            junk = 0
            for u in range(nj):
                if jv[u] < tv[k] or (jv[u] == tv[k] and jj[u] < tj[k]):
                    junk += 1
            pos = 1 + before + eq[k] - junk  # 1-based rank among non-junk items
            if k == 0:
                first[r] = pos
            total += (k + 1) / pos
        ap[r] = total / nh


def match_ranks(block: np.ndarray, rows: np.ndarray, qcode: np.ndarray, qcam: np.ndarray, gcode: np.ndarray,
                gcam: np.ndarray, groups: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """AP and 1-based first-match rank of the queries ``rows`` from their distance rows ``block``.

    ``block[r]`` holds query ``rows[r]``'s distances to the whole gallery; codes from
    :func:`protocol_codes`. Equal to ranking each row by a stable argsort and applying the
    torchreid rule (junk removed, AP over the remaining gallery); a query without a true match
    gets AP NaN and first match -1. ``groups`` caches the identity grouping across chunks.

    Example:
        >>> qc, gc, qk, gk = protocol_codes([0], [0, 1, 0], [0], [0, 1, 1])   # item 0: same camera
        >>> match_ranks(np.array([[0.0, 0.2, 0.4]]), np.array([0]), qc, qk, gc, gk)
        (array([0.5]), array([2]))
    """
    if groups is None:
        groups = _pid_groups(qcode, gcode)
    block = np.ascontiguousarray(block)
    ap = np.full(block.shape[0], np.nan)
    first = np.full(block.shape[0], -1, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    _in_threads(lambda r0, r1: _match_ranks_kernel(block, rows, qcam, gcam, *groups, ap, first, r0, r1),
                block.shape[0])
    return ap, first


@numba.njit(cache=True, nogil=True)
def _before(v1, j1, v2, j2) -> bool:
    return v1 < v2 or (v1 == v2 and j1 < j2)


@numba.njit(cache=True, nogil=True)
def _sift_down(hv, hj, pos, k):
    while True:
        c = 2 * pos + 1
        if c >= k:
            return
        if c + 1 < k and _before(hv[c], hj[c], hv[c + 1], hj[c + 1]):
            c += 1  # the larger child
        if _before(hv[pos], hj[pos], hv[c], hj[c]):
            hv[pos], hv[c] = hv[c], hv[pos]
            hj[pos], hj[c] = hj[c], hj[pos]
            pos = c
        else:
            return


@numba.njit(cache=True, nogil=True)
def _top_k_kernel(block, k, out, r0, r1):  # pragma: no cover  (numba-compiled; tested through top_k_smallest)
    n = block.shape[1]
    for r in range(r0, r1):
        hv = np.empty(k, dtype=block.dtype)
        hj = np.empty(k, dtype=np.int64)
        for j in range(k):
            hv[j] = block[r, j]
            hj[j] = j
        for p in range(k // 2 - 1, -1, -1):  # max-heap on (distance, index)
            _sift_down(hv, hj, p, k)
        for j in range(k, n):
            v = block[r, j]
            if v < hv[0]:  # j is later than every index in the heap, so equal never wins
                hv[0] = v
                hj[0] = j
                _sift_down(hv, hj, 0, k)
        o = _argsort_lex(hv, hj)
        for t in range(k):
            out[r, t] = hj[o[t]]


def top_k_smallest(block: np.ndarray, k: int) -> np.ndarray:
    """``(rows, k)`` column indices of the ``k`` smallest entries of each row, smallest first.

    Exactly ``np.argsort(block, axis=1, kind="stable")[:, :k]`` (ties go to the lower column),
    in one pass per row with a bounded heap; rows run in threads. ``k`` is clipped to the
    number of columns. NaN entries are not supported (check finiteness first).

    Example:
        >>> top_k_smallest(np.array([[3.0, 1.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0]]), 2).tolist()
        [[1, 3], [0, 1]]
    """
    block = np.ascontiguousarray(block)
    k = int(min(max(k, 0), block.shape[1]))
    out = np.empty((block.shape[0], k), dtype=np.int64)
    if k:
        _in_threads(lambda r0, r1: _top_k_kernel(block, k, out, r0, r1), block.shape[0])
    return out


def smallest_prefix(row: np.ndarray, k: int) -> np.ndarray:
    """Indices of the first ``k`` entries of ``np.argsort(row, kind="stable")``, found by
    partitioning (every entry tied with the k-th is kept before the stable sort), for one row.

    Example:
        >>> smallest_prefix(np.array([0.5, 0.1, 0.5, 0.5, 0.0]), 3).tolist()
        [4, 1, 0]
    """
    n = row.shape[0]
    if k >= n:
        return np.argsort(row, kind="stable")
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    kth = np.partition(row, k - 1)[k - 1]
    cand = np.flatnonzero(row <= kth)
    return cand[np.argsort(row[cand], kind="stable")][:k]
