"""The ranked gallery of every query: what the debugging views, tables and browser share.

:func:`rank_gallery` takes query and gallery embeddings that are already computed
(:func:`cliptk.embed`) and keeps, in a :class:`Ranking`, the query x gallery distances, the
labels, the per-query AP and first-match rank (computed by :func:`cliptk.evaluate_reid`, so every
view agrees with the reported mAP) and, optionally, the images for thumbnails.

The ranking protocol is torchreid's ``eval_market1501`` as in :func:`cliptk.evaluate_reid`: a
gallery item of the query's identity *and* camera is "junk" (removed, it takes no rank); a
gallery item of another identity (pid ``-1`` included) is wrong.

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
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import pandas as pd
from PIL import Image

from ..data import ReIdDataset
from ..metrics import ReIdResult, evaluate_reid

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


@dataclass(eq=False, repr=False)
class Ranking:
    """Query x gallery distances with labels, per-query results and (optionally) images.

    Build it with :func:`rank_gallery`. Attributes:
        distances: ``(n_q, n_g)`` distances that were ranked (``1 - cos``, or k-reciprocal
            re-ranked); smaller = more similar.
        query_pids, gallery_pids: ``(n_q,)`` / ``(n_g,)`` identities.
        query_camids, gallery_camids: cameras, or ``None`` (then nothing is junk).
        result: the :class:`~cliptk.metrics.ReIdResult` (``ap``, ``first_match``, ``mAP``).
        query_images, gallery_images: thumbnail sources (dataset, list of PIL images or None).
        query_table, gallery_table: per-row metadata (``pid``, ``camid``, ``sequence`` ...).
    """

    distances: np.ndarray
    query_pids: np.ndarray
    gallery_pids: np.ndarray
    query_camids: np.ndarray | None
    gallery_camids: np.ndarray | None
    result: ReIdResult
    query_images: ImageSource = None
    gallery_images: ImageSource = None
    query_table: pd.DataFrame | None = None
    gallery_table: pd.DataFrame | None = None

    @property
    def n_queries(self) -> int:
        return self.distances.shape[0]

    @property
    def ap(self) -> np.ndarray:
        """Per-query average precision (NaN = no valid match, skipped)."""
        return self.result.ap

    @property
    def first_match(self) -> np.ndarray:
        """Per-query 1-based rank of the first true match (-1 = skipped)."""
        return self.result.first_match

    @property
    def similarity(self) -> np.ndarray:
        """``1 - distances``: the cosine similarity unless re-ranked."""
        return 1.0 - self.distances

    def _check(self, q: int) -> int:
        if not -self.n_queries <= q < self.n_queries:
            raise IndexError(f"query index {q} is out of range for {self.n_queries} queries")
        return int(q) % self.n_queries

    def ranked(self, q: int) -> pd.DataFrame:
        """The whole gallery ranked for query ``q`` (nearest first, stable on ties).

        Columns: ``gallery_index``, ``pid``, ``camid`` (if known), ``similarity`` (``1 - d``),
        ``status`` (``match`` / ``wrong`` / ``junk``) and ``rank`` (1-based among non-junk items,
        ``<NA>`` for junk, which the protocol removes).
        """
        q = self._check(q)
        order = np.argsort(self.distances[q], kind="stable")
        same = self.gallery_pids[order] == self.query_pids[q]
        junk = np.zeros_like(same)
        if self.query_camids is not None and self.gallery_camids is not None:
            junk = same & (self.gallery_camids[order] == self.query_camids[q])
        status = np.where(junk, "junk", np.where(same, "match", "wrong"))
        rank = pd.array(np.cumsum(~junk), dtype="Int64")
        rank[junk] = pd.NA
        out = pd.DataFrame({"gallery_index": order, "pid": self.gallery_pids[order]})
        if self.gallery_camids is not None:
            out["camid"] = self.gallery_camids[order]
        out["similarity"] = 1.0 - self.distances[q, order]
        out["status"] = status
        out["rank"] = rank
        return out

    def top_k(self, q: int, k: int = 10, include_junk: bool = True) -> pd.DataFrame:
        """The first ``k`` rows of :meth:`ranked` (``k`` non-junk items; junk in between kept
        unless ``include_junk=False``)."""
        r = self.ranked(q)
        keep = r["rank"].isna() | (r["rank"] <= k) if include_junk else r["rank"].notna() & (r["rank"] <= k)
        r = r[keep.to_numpy(dtype=bool)]
        last = np.flatnonzero(r["rank"].notna().to_numpy())
        return r.iloc[: (last[-1] + 1 if len(last) else 0)].reset_index(drop=True)

    def worst_queries(self) -> pd.DataFrame:
        """One row per query, ordered by AP ascending (worst first; skipped queries last).

        Columns: ``query_index``, ``pid``, ``camid`` (if known), ``ap``, ``first_match``.
        """
        t = pd.DataFrame({"query_index": np.arange(self.n_queries), "pid": self.query_pids})
        if self.query_camids is not None:
            t["camid"] = self.query_camids
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
        return (f"Ranking({self.n_queries} queries x {self.distances.shape[1]} gallery, mAP={self.result.mAP:.4f}, "
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
        A :class:`Ranking`; its ``result`` is exactly :func:`cliptk.evaluate_reid`'s.

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
    res = evaluate_reid(query_emb, gallery_emb, qp, gp, qc, gc, rerank=rerank, return_distances=True,
                        **rerank_kwargs)
    return Ranking(res.distances, qp, gp, qc, gc, res,
                   query_images if query_images is not None else qi,
                   gallery_images if gallery_images is not None else gi, qt, gt)
