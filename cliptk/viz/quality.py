"""The numbers to read beside an embedding plot: how good the space is, and how far to trust
the picture of it.

:func:`embedding_report` gathers, from :mod:`cliptk.metrics`, k-NN identity accuracy, alignment
and uniformity (Wang & Isola, ICML 2020) of the embeddings and, given a projection,
neighbourhood overlap and trustworthiness (Venna & Kaski, 2001) of the plot, as a small
``pandas`` table.

Example:
    >>> pids = np.arange(20) % 4
    >>> list(embedding_report(np.eye(4)[pids] + 0.01 * np.arange(20)[:, None], pids).index)
    ['knn_accuracy', 'alignment', 'uniformity']
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import metrics
from .._util import as_rows
from ..data import ReIdDataset
from .project import ArrayLike

__all__ = ["embedding_report"]

def _same_id_pairs(pids: np.ndarray, max_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i != j, same pid >= 0: each image paired with a random other image of its identity."""
    order = np.argsort(pids, kind="stable")
    sorted_p = pids[order]
    starts = np.searchsorted(sorted_p, sorted_p, side="left")
    counts = np.searchsorted(sorted_p, sorted_p, side="right") - starts
    ok = (counts > 1) & (sorted_p >= 0)
    i = order[ok]
    offset = rng.integers(1, counts[ok])  # 1..count-1 positions further, wrapping inside the group
    pos_in_group = np.arange(len(sorted_p))[ok] - starts[ok]
    j = order[starts[ok] + (pos_in_group + offset) % counts[ok]]
    if len(i) > max_pairs:
        pick = rng.choice(len(i), max_pairs, replace=False)
        i, j = i[pick], j[pick]
    return i, j


def embedding_report(emb: ArrayLike, dataset: ReIdDataset | ArrayLike, projection: ArrayLike | None = None, *,
                     k: int = 5, k_projection: int = 10, max_samples: int = 5000, seed: int = 0) -> pd.DataFrame:
    """The numbers to read beside an embedding plot, as a small table.

    Rows (from :mod:`cliptk.metrics`; images with pid ``-1`` are left out of identity numbers):

    * ``knn_accuracy`` — leave-one-out ``k``-NN identity accuracy (cosine). Higher is better.
    * ``alignment`` — mean squared distance of same-identity pairs (each image with a random other
      image of its identity, at most ``max_samples`` pairs; Wang & Isola, ICML 2020). Lower is better.
    * ``uniformity`` — log mean Gaussian potential over pairs (on at most ``max_samples`` images).
      Lower is more spread out.
    * with ``projection``: ``neighbourhood_overlap`` (shared fraction of ``k_projection``
      neighbours, embedding vs. plot) and ``trustworthiness`` (Venna & Kaski, 2001; on at most
      ``max_samples`` points). Higher means the picture can be trusted.

    Args:
        emb: ``[N, D]`` embeddings.
        dataset: the rows' :class:`ReIdDataset`, or an array of ``N`` identity labels.
        projection: optional ``[N, 2|3]`` projection of ``emb`` (e.g. from :func:`project`).
        k, k_projection: neighbourhood sizes (clipped for tiny ``N``).
        max_samples, seed: sampling for the quadratic metrics.

    Returns:
        ``pandas.DataFrame`` indexed by metric with columns ``value``, ``better`` (``"higher"`` /
        ``"lower"``) and ``detail``.

    Raises:
        ValueError: row counts differ, or fewer than 2 labelled images.

    Example:
        >>> rng = np.random.default_rng(0); pids = np.arange(40) % 4
        >>> emb = np.eye(8)[pids] + 0.1 * rng.normal(size=(40, 8))
        >>> float(embedding_report(emb, pids).loc["knn_accuracy", "value"])
        1.0
    """
    x = as_rows(emb, "embeddings", np.float32)
    n = x.shape[0]
    pids = dataset.pids if isinstance(dataset, ReIdDataset) else np.asarray(dataset)
    if len(pids) != n:
        raise ValueError(f"{n} embeddings but {len(pids)} labels/rows; same images, same order")
    rng = np.random.default_rng(seed)
    labelled = np.flatnonzero(pids >= 0) if np.issubdtype(pids.dtype, np.number) else np.arange(n)
    if len(labelled) < 2:
        raise ValueError("embedding_report needs at least 2 images with a known pid (pid >= 0)")
    rows: list[tuple[str, float, str, str]] = []
    kk = min(k, len(labelled) - 1)
    rows.append(("knn_accuracy", metrics.knn_accuracy(x[labelled], pids[labelled], kk), "higher",
                 f"leave-one-out {kk}-NN identity vote, cosine, {len(labelled)} labelled images"))
    i, j = _same_id_pairs(pids[labelled] if np.issubdtype(pids.dtype, np.number) else pd.factorize(pids)[0],
                          max_samples, rng)
    if len(i):
        rows.append(("alignment", metrics.alignment(x[labelled][i], x[labelled][j]), "lower",
                     f"mean ||f(a) - f(b)||^2 over {len(i)} same-identity pairs"))
    else:
        rows.append(("alignment", float("nan"), "lower", "no identity has two images"))
    sample = np.sort(rng.choice(n, max_samples, replace=False)) if n > max_samples else np.arange(n)
    rows.append(("uniformity", metrics.uniformity(x[sample]), "lower",
                 f"log mean exp(-2 ||f(a) - f(b)||^2) over pairs of {len(sample)} images"))
    if projection is not None:
        p = as_rows(projection, "projection", np.float32)
        if p.shape[0] != n:
            raise ValueError(f"projection has {p.shape[0]} rows but emb has {n}")
        kp = max(1, min(k_projection, (min(n, max_samples) - 1) // 2))
        rows.append(("neighbourhood_overlap", metrics.neighbourhood_overlap(x, p, kp), "higher",
                     f"shared fraction of {kp} nearest neighbours, embedding vs projection"))
        rows.append(("trustworthiness", metrics.trustworthiness(x, p, kp, max_samples=max_samples, seed=seed),
                     "higher", f"k={kp}, on {min(n, max_samples)} points"))
    return pd.DataFrame(rows, columns=["metric", "value", "better", "detail"]).set_index("metric")
