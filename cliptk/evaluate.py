"""Model-level evaluation: embed a dataset's query and gallery splits and score re-id; probe text.

These glue :func:`cliptk.embed` to :mod:`cliptk.metrics`; the metric definitions live there.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import ReIdDataset
from .embed import embed, embed_texts
from .metrics import ProbeResult, ReIdResult, classify_zero_shot, evaluate_reid
from .models import ClipModel

__all__ = ["evaluate", "zero_shot_probe"]


def evaluate(model: ClipModel, dataset: ReIdDataset, *, query: str = "query", gallery: str = "gallery",
             flip: bool = False, rerank: bool = False, batch_size: int = 64, cache_dir: str | os.PathLike | None = None,
             progress: bool = True) -> ReIdResult:
    """Re-id mAP and CMC of ``model`` on ``dataset``'s query vs gallery splits.

    Embeds both splits (L2-normalised, optional flip averaging, optional cache) and calls
    :func:`cliptk.metrics.evaluate_reid` with the datasets' pids and camids.

    Raises:
        KeyError: a split is missing (the message lists the available ones).

    Example:
        >>> evaluate(ct.load_model(), ct.read_dataset(root))   # doctest: +SKIP
        ReIdResult(mAP=0.71, rank-1=0.80, ...)
    """
    q, g = dataset.subset(query), dataset.subset(gallery)
    kw = dict(batch_size=batch_size, flip=flip, cache_dir=cache_dir, progress=progress)
    qf, gf = embed(model, q, **kw), embed(model, g, **kw)
    return evaluate_reid(qf, gf, q.pids, g.pids, q.camids, g.camids, rerank=rerank)


def zero_shot_probe(model: ClipModel, dataset: ReIdDataset, column: str, prompts: dict | Sequence[str], *,
                    batch_size: int = 64, cache_dir: str | os.PathLike | None = None,
                    progress: bool = True) -> ProbeResult:
    """Zero-shot classification of a metadata ``column`` (e.g. ``"number"``) with text prompts.

    Args:
        column: the dataset column holding the true class (rows with a missing value are skipped).
        prompts: ``{class_value: prompt}`` or a list of prompts whose order matches
            ``sorted(unique(column))``. Several prompts per class can be given as a list value;
            their embeddings are averaged (prompt ensembling, as in CLIP).

    Returns:
        :class:`cliptk.metrics.ProbeResult` (accuracy, chance, confusion, predictions).

    Example:
        >>> prompts = {n: f"a photo of a basketball player with number {n}" for n in range(100)}
        >>> zero_shot_probe(model, ds.subset("query"), "number", prompts).accuracy   # doctest: +SKIP
    """
    if column not in dataset.table.columns:
        raise KeyError(f"{dataset.name} has no column {column!r}; columns: {list(dataset.table.columns)}")
    values = dataset.table[column]
    keep = values.notna().to_numpy()
    if not isinstance(prompts, dict):
        classes = sorted(values[keep].unique().tolist())
        if len(classes) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts for {len(classes)} classes of {column!r}; pass a dict instead")
        prompts = dict(zip(classes, prompts))
    classes = list(prompts)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index.get(v, -1) if k else -1 for v, k in zip(values.tolist(), keep)])
    text = []
    for c in classes:
        p = prompts[c]
        t = embed_texts(model, [p] if isinstance(p, str) else list(p))
        text.append(F.normalize(t.mean(0), dim=-1))
    text_emb = torch.stack(text)
    img = embed(model, dataset, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    return classify_zero_shot(img, text_emb, labels, class_names=[str(c) for c in classes])
