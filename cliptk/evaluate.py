"""Model-level evaluation: embed a dataset's query and gallery splits and score re-id; probe text.

These glue :func:`cliptk.embed` to :mod:`cliptk.metrics`; the metric definitions live there.
Two dataset rules are applied here, once: images that cannot be read (a dataset read with
``on_error="skip"`` embeds them as NaN rows) are left out and counted
(:meth:`ReIdDataset.without_unreadable`), and a dataset without camera ids is evaluated without
camera filtering (:func:`cliptk.data.camids_for_evaluation`), said in one warning.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import ReIdDataset, camids_for_evaluation
from .embed import embed, embed_texts
from .metrics import ProbeResult, ReIdResult, classify_zero_shot, evaluate_reid, warn_no_cameras

if TYPE_CHECKING:   # annotations only: `import cliptk` (every torchrun worker) need not import open_clip
    from .models import ClipModel

__all__ = ["evaluate", "zero_shot_probe"]


def evaluate(model: ClipModel, dataset: ReIdDataset, *, query: str = "query", gallery: str = "gallery",
             flip: bool = False, rerank: bool = False, batch_size: int = 64, cache_dir: str | os.PathLike | None = None,
             progress: bool = True) -> ReIdResult:
    """Re-id mAP and CMC of ``model`` on ``dataset``'s query vs gallery splits.

    Embeds both splits (L2-normalised, optional flip averaging, optional cache) and calls
    :func:`cliptk.metrics.evaluate_reid` with the datasets' pids and camids. Rows of images that
    cannot be read (``on_error="skip"`` datasets) are left out, with one warning per split and
    the total in ``result.n_unreadable``. Without camera ids (``dataset.has_cameras`` false) no
    camera filtering is done: every gallery image of a query's identity is a true match except
    the query image itself; one warning says so.

    Raises:
        KeyError: a split is missing (the message lists the available ones).
        ValueError: the model produced a NaN/inf embedding for an image that reads fine (the
            message names the file), or a split has no readable image left.

    Example:
        >>> evaluate(ct.load_model(), ct.read_dataset(root))   # doctest: +SKIP
        ReIdResult(mAP=0.71, rank-1=0.80, ...)
    """
    q, g = dataset.subset(query), dataset.subset(gallery)
    kw = dict(batch_size=batch_size, flip=flip, cache_dir=cache_dir, progress=progress)
    qf, gf = embed(model, q, **kw), embed(model, g, **kw)
    n_before = len(q) + len(g)
    q, qf = _readable(q, qf, query)
    g, gf = _readable(g, gf, gallery)
    qc, gc, cameras_known = camids_for_evaluation(q, g)
    if not cameras_known:
        warn_no_cameras(dataset.name, len(q))
    res = evaluate_reid(qf, gf, q.pids, g.pids, qc, gc, rerank=rerank)
    res.n_unreadable = n_before - len(q) - len(g)
    return res


def _readable(ds: ReIdDataset, emb, split: str):
    """``ds`` and ``emb`` without the rows of unreadable images; a NaN row of a readable image is
    the model's, and the error names its file."""
    ds, emb = ds.without_unreadable(emb)
    if not len(ds):
        raise ValueError(f"{ds.name}: no readable image left in split {split!r}; every file failed to load "
                         "(see the warning above for the first one)")
    if isinstance(emb, torch.Tensor):
        finite = torch.isfinite(emb.reshape(len(emb), -1)).all(dim=1).cpu().numpy()
    else:
        finite = np.isfinite(np.asarray(emb).reshape(len(emb), -1)).all(axis=1)
    bad = np.flatnonzero(~finite)
    if len(bad):
        path = ds.root / ds.table["path"].iat[int(bad[0])]
        raise ValueError(f"{ds.name}: the model gave a NaN/inf embedding for {path} ({split} row {int(bad[0])}; "
                         f"{len(bad)} such row(s)), although the image reads fine; check the model's weights "
                         "and precision (unreadable images are left out, not blamed on the model)")
    return ds, emb


def zero_shot_probe(model: ClipModel, dataset: ReIdDataset, column: str, prompts: dict | Sequence[str], *,
                    batch_size: int = 64, cache_dir: str | os.PathLike | None = None,
                    progress: bool = True, image_emb: torch.Tensor | None = None) -> ProbeResult:
    """Zero-shot classification of a metadata ``column`` (e.g. ``"number"``) with text prompts.

    Args:
        column: the dataset column holding the true class (rows with a missing value are skipped).
        prompts: ``{class_value: prompt}`` or a list of prompts whose order matches
            ``sorted(unique(column))``. Several prompts per class can be given as a list value;
            their embeddings are averaged (prompt ensembling, as in CLIP).
        image_emb: the dataset's image embeddings if already computed (``[len(dataset), D]``, dataset
            order; e.g. for the many evaluations of a before/after table), else they are embedded here.

    Returns:
        :class:`cliptk.metrics.ProbeResult` (accuracy, chance, confusion, predictions).

    Example:
        >>> prompts = {n: f"a photo of a basketball player with number {n}" for n in range(100)}
        >>> zero_shot_probe(model, ds.subset("query"), "number", prompts).accuracy   # doctest: +SKIP
    """
    if column not in dataset.table.columns:
        raise KeyError(f"{dataset.name} has no column {column!r}; columns: {list(dataset.table.columns)}")
    if image_emb is None:
        image_emb = embed(model, dataset, batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    dataset, img = _readable(dataset, image_emb, "dataset")
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
    # every prompt in one batch, then one mean per class (prompt ensembling)
    groups = [[prompts[c]] if isinstance(prompts[c], str) else list(prompts[c]) for c in classes]
    flat = embed_texts(model, [t for g in groups for t in g])
    bounds = np.cumsum([0] + [len(g) for g in groups])
    text_emb = torch.stack([F.normalize(flat[a:b].mean(0), dim=-1) for a, b in zip(bounds[:-1], bounds[1:])])
    return classify_zero_shot(img, text_emb, labels, class_names=[str(c) for c in classes])
