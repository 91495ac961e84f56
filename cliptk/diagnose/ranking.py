"""The ranked gallery of every query: what the debugging views, tables and browser share.

:func:`rank_gallery` takes query and gallery embeddings that are already computed
(:func:`cliptk.embed`) and keeps, in a :class:`Ranking`, what gives the query x gallery
distances (the normalised embeddings, or the re-ranked matrix), the labels, the per-query AP
and first-match rank (computed by :func:`cliptk.evaluate_reid`, so every view agrees with the
reported mAP) and, optionally, the images for thumbnails.

The ranking protocol is torchreid's ``eval_market1501`` as in :func:`cliptk.evaluate_reid`: a
gallery item of the query's identity *and* (known) camera is "junk" (removed, it takes no rank); a
gallery item of another identity (pid ``-1`` included) is wrong. Nothing here sorts or holds the
whole ``n_q x n_g`` matrix unless asked (:attr:`Ranking.distances`): views compute one query's
row from its chunk, and top-k is exact partial selection.

Example:
    >>> rng = np.random.default_rng(0)
    >>> centres = rng.normal(size=(4, 8))
    >>> q = centres + 0.1 * rng.normal(size=(4, 8))
    >>> g = np.repeat(centres, 3, axis=0) + 0.3 * rng.normal(size=(12, 8))
    >>> r = rank_gallery(q, g, [0, 1, 2, 3], np.repeat([0, 1, 2, 3], 3))
    >>> r.top_k(0, 3)["status"].tolist()
    ['match', 'match', 'match']
    >>> r.describe(0)
    'query 0 (pid 0): AP 1.000, first true match at rank 1'
"""
from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import pandas as pd
from PIL import Image

from .._util import unit_rows
from ..data import ReIdDataset, camids_for_evaluation
from ..metrics import ReIdResult, evaluate_reid, warn_no_cameras
from ..ranking_kernels import distance_chunks, protocol_codes, row_chunks, smallest_prefix, top_k_smallest

__all__ = ["Ranking", "rank_gallery", "ImageSource", "source_image"]

#: Where thumbnails come from: a dataset (``ds[i]`` loads image ``i``), a list of PIL images, or nothing.
ImageSource = Union[ReIdDataset, Sequence[Image.Image], None]


def source_image(source: ImageSource, i: int) -> Image.Image | None:
    """Image ``i`` of ``source`` as RGB, or ``None`` (no source, or an image the dataset skips
    as unreadable).

    Example:
        >>> source_image([Image.new("L", (4, 8))], 0).mode, source_image(None, 0)
        ('RGB', None)
    """
    if source is None:
        return None
    img = source[int(i)]
    return None if img is None else img.convert("RGB")


class Ranking:
    """Query x gallery distances with labels, per-query results and (optionally) images.

    Build it with :func:`rank_gallery`. Distances are computed when a view needs them, one query
    chunk at a time (the same chunks, hence the same numbers, as the evaluation), so a
    20k x 100k ranking holds the embeddings and one chunk, not the matrix; after re-ranking the
    re-ranked matrix is kept. Attributes:
        query_pids, gallery_pids: ``(n_q,)`` / ``(n_g,)`` identities.
        query_camids, gallery_camids: the cameras the protocol used, or ``None`` (then nothing is
            junk); ``-1`` = unknown, never junk. For datasets without cameras these are
            :func:`cliptk.data.camids_for_evaluation`'s ids (only the query's own image is junk).
        result: the :class:`~cliptk.metrics.ReIdResult` (``ap``, ``first_match``, ``mAP``).
        query_images, gallery_images: thumbnail sources (dataset, list of PIL images or None).
        query_table, gallery_table: per-row metadata (``pid``, ``camid``, ``sequence`` ...).
    """

    def __init__(self, query_unit: np.ndarray, gallery_unit: np.ndarray, query_pids: np.ndarray,
                 gallery_pids: np.ndarray, query_camids: np.ndarray | None, gallery_camids: np.ndarray | None,
                 result: ReIdResult, query_images: ImageSource = None, gallery_images: ImageSource = None,
                 query_table: pd.DataFrame | None = None, gallery_table: pd.DataFrame | None = None,
                 distances: np.ndarray | None = None) -> None:
        self._q, self._g, self._dist = query_unit, gallery_unit, distances
        self.query_pids, self.gallery_pids = query_pids, gallery_pids
        self.query_camids, self.gallery_camids = query_camids, gallery_camids
        self.result = result
        self.query_images, self.gallery_images = query_images, gallery_images
        self.query_table, self.gallery_table = query_table, gallery_table
        self._qcode, self._gcode, self._qcam, self._gcam = protocol_codes(query_pids, gallery_pids, query_camids,
                                                                          gallery_camids)
        self._chunk: tuple[int, int, np.ndarray] | None = None

    @property
    def n_queries(self) -> int:
        return self._q.shape[0]

    @property
    def n_gallery(self) -> int:
        return self._g.shape[0]

    @property
    def ap(self) -> np.ndarray:
        """Per-query average precision (NaN = no valid match, skipped)."""
        return self.result.ap

    @property
    def first_match(self) -> np.ndarray:
        """Per-query 1-based rank of the first true match (-1 = skipped)."""
        return self.result.first_match

    @property
    def distances(self) -> np.ndarray:
        """The ``(n_q, n_g)`` distances that were ranked (``1 - cos``, or k-reciprocal re-ranked);
        smaller = more similar. Built on first access and kept: ``4 n_q n_g`` bytes in float32,
        so prefer :meth:`ranked` / :meth:`top_k` (one query at a time) on large galleries."""
        if self._dist is None:
            self._dist = np.empty((self.n_queries, self.n_gallery), dtype=np.result_type(self._q, self._g))
            for s, e, block in distance_chunks(self._q, self._g):
                self._dist[s:e] = block
        return self._dist

    @property
    def similarity(self) -> np.ndarray:
        """``1 - distances``: the cosine similarity unless re-ranked (full matrix, as ``distances``)."""
        return 1.0 - self.distances

    def distance_row(self, q: int) -> np.ndarray:
        """Query ``q``'s distances to the whole gallery, ``(n_g,)`` (the numbers evaluation ranked)."""
        q = self._check(q)
        if self._dist is not None:
            return self._dist[q]
        if self._chunk is None or not self._chunk[0] <= q < self._chunk[1]:
            s, e = next((s, e) for s, e in row_chunks(self.n_queries, self.n_gallery) if s <= q < e)
            _, _, block = next(distance_chunks(self._q[s:e], self._g))
            self._chunk = (s, e, block.copy())
        return self._chunk[2][q - self._chunk[0]]

    def junk_mask(self, q: int | None = None) -> np.ndarray:
        """``True`` where a gallery item is junk for a query (same identity, same known camera):
        ``(n_g,)`` for query ``q``, or ``(n_q, n_g)`` for all queries."""
        if q is not None:
            q = self._check(q)
            return (self._gcode == self._qcode[q]) & (self._gcam == self._qcam[q]) & (self._qcam[q] >= 0)
        qc, qk = self._qcode[:, None], self._qcam[:, None]
        return (self._gcode[None, :] == qc) & (self._gcam[None, :] == qk) & (qk >= 0)

    def _check(self, q: int) -> int:
        if not -self.n_queries <= q < self.n_queries:
            raise IndexError(f"query index {q} is out of range for {self.n_queries} queries")
        return int(q) % self.n_queries

    def _table(self, q: int, order: np.ndarray, row: np.ndarray) -> pd.DataFrame:
        """The rows ``order`` (a prefix of the stable ranking of query ``q``) as :meth:`ranked` shows them."""
        same = self._gcode[order] == self._qcode[q]
        junk = same & (self._gcam[order] == self._qcam[q]) & (self._qcam[q] >= 0)
        status = np.where(junk, "junk", np.where(same, "match", "wrong"))
        rank = pd.array(np.cumsum(~junk), dtype="Int64")
        rank[junk] = pd.NA
        out = pd.DataFrame({"gallery_index": order, "pid": self.gallery_pids[order]})
        cams = self._display_camids(self.gallery_table, self.gallery_camids)
        if cams is not None:
            out["camid"] = cams[order]
        out["similarity"] = 1.0 - row[order]
        out["status"] = status
        out["rank"] = rank
        return out

    @staticmethod
    def _display_camids(table: pd.DataFrame | None, camids: np.ndarray | None) -> np.ndarray | None:
        """The cameras to show: the table's own ``camid`` column (``-1`` = unknown) when it has one."""
        if table is not None and "camid" in table.columns:
            return table["camid"].to_numpy()
        return camids

    def ranked(self, q: int) -> pd.DataFrame:
        """The whole gallery ranked for query ``q`` (nearest first, stable on ties).

        Columns: ``gallery_index``, ``pid``, ``camid`` (if known), ``similarity`` (``1 - d``),
        ``status`` (``match`` / ``wrong`` / ``junk``) and ``rank`` (1-based among non-junk items,
        ``<NA>`` for junk, which the protocol removes).
        """
        q = self._check(q)
        row = self.distance_row(q)
        return self._table(q, np.argsort(row, kind="stable"), row)

    def top_k(self, q: int, k: int = 10, include_junk: bool = True) -> pd.DataFrame:
        """The first ``k`` rows of :meth:`ranked` (``k`` non-junk items; junk in between kept
        unless ``include_junk=False``). Exact and without sorting the whole gallery: the
        ``k + (junk of q)`` nearest items are found by partitioning, ties broken by gallery order."""
        q = self._check(q)
        row = self.distance_row(q)
        n_junk = int(self.junk_mask(q).sum())
        r = self._table(q, smallest_prefix(row, k + n_junk), row)
        keep = r["rank"].isna() | (r["rank"] <= k) if include_junk else r["rank"].notna() & (r["rank"] <= k)
        r = r[keep.to_numpy(dtype=bool)]
        last = np.flatnonzero(r["rank"].notna().to_numpy())
        return r.iloc[: (last[-1] + 1 if len(last) else 0)].reset_index(drop=True)

    def nearest(self, k: int = 10) -> np.ndarray:
        """``(n_q, k)`` gallery indices of every query's ``k`` nearest items (junk included),
        nearest first, ties by gallery order: the first ``k`` columns of a stable argsort of
        :attr:`distances`, computed chunk by chunk with an exact top-k.

        Example:
            >>> rank_gallery(np.eye(2), np.eye(3)[:, :2] + 0.1, [0, 1], [0, 1, 2]).nearest(2).tolist()
            [[0, 2], [1, 2]]
        """
        if self._dist is not None:
            return np.concatenate([top_k_smallest(self._dist[s:e], k)
                                   for s, e in row_chunks(self.n_queries, self.n_gallery)])
        return np.concatenate([top_k_smallest(block, k) for _, _, block in distance_chunks(self._q, self._g)])

    def worst_queries(self) -> pd.DataFrame:
        """One row per query, ordered by AP ascending (worst first; skipped queries last).

        Columns: ``query_index``, ``pid``, ``camid`` (if known), ``ap``, ``first_match``.
        """
        t = pd.DataFrame({"query_index": np.arange(self.n_queries), "pid": self.query_pids})
        cams = self._display_camids(self.query_table, self.query_camids)
        if cams is not None:
            t["camid"] = cams
        t["ap"] = self.ap
        t["first_match"] = self.first_match
        return t.sort_values(["ap", "first_match"], ascending=[True, False], na_position="last",
                             kind="stable").reset_index(drop=True)

    def describe(self, q: int, k: int = 10) -> str:
        """One line about query ``q``: its pid, AP and the rank of its first true match (noting
        when that lies beyond the top ``k`` shown); the title of the ranked views.

        Raises:
            IndexError: ``q`` is out of range.
        """
        q = self._check(q)
        ap, fm = self.ap[q], int(self.first_match[q])
        where = "no true match in the gallery" if fm < 0 else f"first true match at rank {fm}" + (
            f" (beyond top {k})" if fm > k else "")
        return f"query {q} (pid {self.query_pids[q]}): AP {ap:.3f}, {where}"

    def __repr__(self) -> str:
        return (f"Ranking({self.n_queries} queries x {self.n_gallery} gallery, mAP={self.result.mAP:.4f}, "
                f"rank-1={self.result.cmc.get(1, float('nan')):.4f}, skipped={self.result.n_skipped}"
                f"{', re-ranked' if self.result.reranked else ''})")

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(repr(self))}</p>" + self.result._repr_html_()


def _labels(side: Any, name: str, camids: Any) -> tuple[np.ndarray, np.ndarray | None, pd.DataFrame, ImageSource]:
    """pids, camids, metadata table and image source of one side (dataset, table or pid array)."""
    if isinstance(side, ReIdDataset):
        return side.pids, side.camids, side.table.reset_index(drop=True), side
    if isinstance(side, pd.DataFrame):
        if "pid" not in side.columns:
            raise ValueError(f"{name} table needs a 'pid' column, got {list(side.columns)}")
        t = side.reset_index(drop=True)
        cams = t["camid"].to_numpy() if "camid" in t.columns else (None if camids is None else np.asarray(camids))
        return t["pid"].to_numpy(), cams, t, None
    pids = np.asarray(side)
    t = pd.DataFrame({"pid": pids})
    if camids is not None:
        t["camid"] = np.asarray(camids)
    return pids, None if camids is None else np.asarray(camids), t, None


def rank_gallery(query_emb: Any, gallery_emb: Any, query: Any, gallery: Any, *,
                 query_camids: Any = None, gallery_camids: Any = None,
                 query_images: ImageSource = None, gallery_images: ImageSource = None,
                 rerank: bool = False, **rerank_kwargs: Any) -> Ranking:
    """Rank the gallery for every query and keep what the debugging views need.

    The camera rule is :func:`cliptk.evaluate_reid`'s: camid ``-1`` = unknown, no camera filtering
    for such a query (one warning). Two datasets without cameras (``has_cameras`` false) are
    ranked as :func:`cliptk.evaluate` does: no camera filtering, the query's own image (the same
    file in the gallery) is junk, one warning.

    Args:
        query_emb, gallery_emb: ``(n_q, d)`` / ``(n_g, d)`` embeddings (tensor or array).
        query, gallery: a :class:`ReIdDataset` (pids, cameras, metadata and images), a
            ``DataFrame`` with a ``pid`` column (and optionally ``camid`` and metadata), or an
            array of pids.
        query_camids, gallery_camids: cameras when ``query`` / ``gallery`` are arrays.
        query_images, gallery_images: thumbnail sources overriding the datasets (a dataset or
            a list of PIL images, same order as the embeddings).
        rerank: apply k-reciprocal re-ranking (``rerank_kwargs``: ``k1``, ``k2``, ``lambda_value``).

    Returns:
        A :class:`Ranking`; its ``result`` is exactly :func:`cliptk.evaluate_reid`'s. Memory: the
        embeddings and one distance chunk (the full matrix only when re-ranked).

    Raises:
        ValueError: as :func:`cliptk.evaluate_reid` (shapes, no valid query ...), or when only one
            side has cameras.

    Example (skipped by the doctest run: it needs a model and a dataset; see the module example):
        >>> r = rank_gallery(embed(model, q_ds), embed(model, g_ds), q_ds, g_ds)   # doctest: +SKIP
        >>> r.worst_queries().head()                                                 # doctest: +SKIP
    """
    qp, qc, qt, qi = _labels(query, "query", query_camids)
    gp, gc, gt, gi = _labels(gallery, "gallery", gallery_camids)
    if (qc is None) != (gc is None):
        raise ValueError("cameras are known for only one of query and gallery; give both (or neither)")
    if isinstance(query, ReIdDataset) and isinstance(gallery, ReIdDataset):
        qc, gc, known = camids_for_evaluation(query, gallery)
        if not known:
            warn_no_cameras(query.name, len(query))
    res = evaluate_reid(query_emb, gallery_emb, qp, gp, qc, gc, rerank=rerank, return_distances=rerank,
                        **rerank_kwargs)
    dist, res.distances = res.distances, None
    return Ranking(unit_rows(query_emb, "query_emb"), unit_rows(gallery_emb, "gallery_emb"), qp, gp, qc, gc, res,
                   query_images if query_images is not None else qi,
                   gallery_images if gallery_images is not None else gi, qt, gt, distances=dist)
