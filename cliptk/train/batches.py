"""What a training step receives: pair batches of the training rows.

A batch of ``B`` (query, positive) pairs of distinct identities is one flat index list
``[q_1..q_B, p_1..p_B]`` from a batch sampler (:func:`make_sampler`: CLIP-ReIdent's
:class:`cliptk.samplers.UniqueIdPairSampler`, or :class:`cliptk.samplers.GroupedPairSampler` for
batches of whole groups). :class:`PairImages` turns the indices into preprocessed images,
:func:`joint_flip` mirrors both images of a pair together, :class:`SkipBatches` skips the batches a
resumed epoch already did, and :class:`Batch` is the ``(images, ids, extras)`` triple that
:meth:`cliptk.train.Trainer.compute_loss` gets.

Example:
    >>> import torch
    >>> x = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 1, 1, 2).clone()   # 2 pairs, 1x2 images
    >>> joint_flip(x, seed=0, epoch=0, batch=0, rank=0, world=1, p=0.0).equal(x)   # p = 0: unchanged
    True
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..data import ReIdDataset
from ..samplers import GroupedPairSampler, UniqueIdPairSampler
from .config import TrainConfig

__all__ = ["Batch", "PairImages", "SkipBatches", "joint_flip", "make_sampler", "train_rows"]


class Batch(NamedTuple):
    """One training batch as :meth:`cliptk.train.Trainer.compute_loss` receives it.

    Attributes:
        images: ``[2B, 3, H, W]`` on the run's device, queries first then their positives
            (``images[i]`` and ``images[B + i]`` show the same identity), already flipped.
        ids: ``[B]`` integer identity labels of the pairs, on the device (distinct within a batch
            from the default samplers).
        extras: ``{"index": [2B] row indices into the training rows (CPU)}``, so a subclass can
            look up per-row data (metadata, teacher embeddings) for the batch.
    """

    images: torch.Tensor
    ids: torch.Tensor
    extras: dict[str, Any]


class PairImages(Dataset):
    """The preprocessed images of a dataset by row index, returned as ``(tensor, index)``.

    Args:
        data: the training rows.
        transform: the model's preprocessing (``model.preprocess``), PIL image -> ``[3, H, W]``.
        cache: preprocess every image once and keep the tensors in memory.
        progress: show a progress bar while caching.

    Raises:
        ValueError: an image is unreadable (training needs every image; the message names it).
    """

    def __init__(self, data: ReIdDataset, transform, cache: bool = False, progress: bool = False):
        self.data, self.transform = data, transform
        self.cache: torch.Tensor | None = None
        if cache:
            first = self._load(0)
            self.cache = torch.empty((len(data), *first.shape), dtype=first.dtype)
            for i in tqdm(range(len(data)), desc="cache images", disable=not progress, leave=False):
                self.cache[i] = self._load(i)

    def _load(self, i: int) -> torch.Tensor:
        img = self.data[i]
        if img is None:
            raise ValueError(f"{self.data.name}: image {self.data.paths[i]} is unreadable; training needs every "
                             "image: call dataset.drop_unreadable() first")
        return self.transform(img)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return (self.cache[i] if self.cache is not None else self._load(i)), i


class SkipBatches:
    """A batch sampler that skips the first ``skip`` batches of the wrapped one (mid-epoch resume).

    Example:
        >>> list(SkipBatches([[0, 1], [2, 3], [4, 5]], skip=2))
        [[4, 5]]
    """

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)

    def __iter__(self):
        for i, batch in enumerate(self.sampler):
            if i >= self.skip:
                yield batch


def joint_flip(x: torch.Tensor, seed: int, epoch: int, batch: int, rank: int, world: int, p: float) -> torch.Tensor:
    """Flip both images of each pair (rows ``i`` and ``B + i`` of ``x``) together with probability
    ``p``. The coin flips depend only on (seed, epoch, batch) and are drawn for the global batch, so
    resumed and multi-GPU runs see the same flips as an uninterrupted single-process run.

    Args:
        x: ``[2B, C, H, W]``, this rank's share of the global batch (``B`` pairs).
        seed, epoch, batch: the run's seed, the epoch and the micro-batch index within the epoch.
        rank, world: this process's rank and the number of processes.
        p: the flip probability.

    Returns:
        ``x`` with the chosen pairs mirrored (``x`` itself when nothing flips).
    """
    if p <= 0:
        return x
    b = x.shape[0] // 2
    coins = np.random.default_rng([seed, epoch, batch, 0xF11]).random(b * world)[rank * b:(rank + 1) * b] < p
    if not coins.any():
        return x
    m = torch.from_numpy(np.concatenate([coins, coins])).to(x.device)[:, None, None, None]
    return torch.where(m, x.flip(-1), x)


def make_sampler(train: ReIdDataset, cfg: TrainConfig, rank: int = 0, world_size: int = 1):
    """The batch sampler :func:`cliptk.train.fit` uses for the training rows ``train``:
    unique-identity pair batches (:class:`cliptk.samplers.UniqueIdPairSampler`), or batches of
    whole groups of the ``cfg.group_by`` column (:class:`cliptk.samplers.GroupedPairSampler`).

    Raises:
        KeyError: ``cfg.group_by`` is not a column of ``train`` (the message lists the columns).
    """
    if cfg.group_by is None:
        return UniqueIdPairSampler(train.pids, cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world_size,
                                   per_epoch=cfg.per_epoch)
    if cfg.group_by not in train.table.columns:
        raise KeyError(f"TrainConfig.group_by={cfg.group_by!r}: {train.name} has no such column; its columns are "
                       f"{list(train.table.columns)}")
    return GroupedPairSampler(train.pids, train.table[cfg.group_by].astype(str).to_numpy(), cfg.batch_size,
                              seed=cfg.seed, rank=rank, world_size=world_size, per_epoch=cfg.per_epoch)


def train_rows(data: ReIdDataset, cfg: TrainConfig) -> ReIdDataset:
    """The training rows: all of ``data`` if it has one split, else ``data.subset(cfg.train_split)``.

    Raises:
        KeyError: ``data`` has several splits but none called ``cfg.train_split``.
    """
    if len(data.split_names) <= 1:
        return data
    if cfg.train_split not in data.split_names:
        raise KeyError(f"{data.name} has splits {data.split_names} but no {cfg.train_split!r} split to train on; "
                       "pass dataset.subset(...) or set TrainConfig.train_split")
    return data.subset(cfg.train_split)
