"""Identity-aware batch samplers for contrastive re-identification training.

Both samplers are ``batch_sampler``\\ s for a standard ``torch.utils.data.DataLoader``: iterating
yields one flat ``list[int]`` of dataset indices per batch, and ``len()`` is the number of batches
per epoch. They are deterministic given ``seed`` and the epoch set by :meth:`set_epoch` (call it
at the start of every epoch, like ``DistributedSampler``; iterating twice without it repeats
the epoch).

- :class:`UniqueIdPairSampler`: CLIP-ReIdent's batches (Habel et al., MMSports 2022) of
  ``batch_size`` (query, positive) pairs of **distinct identities**, the positive a different
  image of the query's identity. A batch is ``[q_1 … q_B, p_1 … p_B]``: queries first, then
  their positives in the same order, so ``x[:B]`` and ``x[B:]`` are the two views for
  :class:`cliptk.losses.InfoNCE`.
- :class:`GroupedPairSampler`: the same (query, positive) pairs, but each batch is filled with
  whole groups of identities that share a metadata value (a kit, a game, a camera), so players who
  look alike meet in one batch as in-batch hard negatives.
- :class:`PKSampler`: P identities × K images (Hermans et al., "In Defense of the Triplet Loss",
  2017), for multi-positive losses (:class:`cliptk.losses.SupCon`,
  :class:`cliptk.losses.DecoupledSoftmax`).

Distributed training (``world_size > 1``): ``batch_size`` (or ``p``) is **per rank**. Every
rank builds the same global batch of ``batch_size × world_size`` distinct identities from the
shared seed and takes its own disjoint shard (the very pairs one process with the global batch
size would draw), so a gathered loss sees no identity twice, and all ranks have the same number of
batches.

Identities with negative pids (junk/distractor labels as in Market-1501) are ignored.

How an epoch is laid out: each identity contributes a number of *units* (a query image for
:class:`UniqueIdPairSampler`, a group of K images for :class:`PKSampler`). The sampler computes
the largest number ``m`` of batches of ``G`` distinct identities those units allow
(``Σ_i min(units_i, m) ≥ m·G``), then takes the identities in a fresh random order and puts each
one's units into the batches with the most free slots (ties broken at random; the Gale–Ryser
greedy, which always fills the ``m`` batches exactly), so no batch holds an identity twice and
which identities meet in a batch is random; batch order and order within each batch are then
shuffled. Units left over are dropped (``drop_last=True``)
or form one last batch topped up with random other identities (``drop_last=False``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np

__all__ = ["UniqueIdPairSampler", "GroupedPairSampler", "PKSampler"]


def _group_by_pid(pids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unique valid pids (>= 0) and, for each, the sorted dataset indices of its images."""
    arr = np.asarray(pids)
    if arr.ndim != 1:
        raise ValueError(f"pids must be a 1-D sequence of identity labels, got shape {arr.shape}")
    idx = np.arange(len(arr))
    if arr.dtype.kind in "iuf":
        keep = arr >= 0
        arr, idx = arr[keep], idx[keep]
    uniq, inverse = np.unique(arr, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(idx[order], np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1])
    return uniq, groups


def _max_batches(units: np.ndarray, group: int) -> int:
    """Largest m with Σ min(units, m) >= m·group (batches of `group` distinct identities)."""
    lo, hi = 0, int(units.sum()) // group
    while lo < hi:  # feasibility is monotone: true on [0, m*], false above
        mid = (lo + hi + 1) // 2
        if np.minimum(units, mid).sum() >= mid * group:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _deal(units: np.ndarray, group: int, rng: np.random.Generator, drop_last: bool) -> list[np.ndarray]:
    """Random epoch plan: list of batches, each an int array [group, 2] of (identity, unit index)."""
    m = _max_batches(units, group)
    order = rng.permutation(len(units))
    # units used this epoch: at most m per identity, the excess cut from the end of the random order
    used = np.bincount(np.repeat(order, np.minimum(units[order], m))[: m * group], minlength=len(units))
    # Gale-Ryser greedy: each identity (random order) goes to the batches with the most free
    # slots, ties broken at random; this always fills all m batches exactly
    free = np.full(m, group)
    grid = np.empty((m, group, 2), dtype=np.int64)
    for ident in order[used[order] > 0]:
        c = used[ident]
        bins = np.argpartition(-(free + 0.5 * rng.random(m)), c - 1)[:c]
        if (free[bins] == 0).any():  # cannot happen if the greedy argument holds; fail loudly if not
            raise RuntimeError("internal error: batch layout overflow; please report with your pids")
        grid[bins, group - free[bins], 0] = ident
        grid[bins, group - free[bins], 1] = np.arange(c)
        free[bins] -= 1
    batches = list(grid)
    if not drop_last and units.sum() > m * group:
        left = units - used
        tail = [int(i) for i in rng.permutation(np.flatnonzero(left > 0))[:group]]
        extra = [(i, int(used[i])) for i in tail]
        others = np.setdiff1d(np.arange(len(units)), tail)
        extra += [(int(i), 0) for i in rng.choice(others, group - len(tail), replace=False)]
        batches.append(np.array(extra, dtype=np.int64).reshape(-1, 2))
    batches = [batches[i] for i in rng.permutation(len(batches))]
    return [b[rng.permutation(len(b))] for b in batches]


def _pair_identities(pids, batch_size: int, world_size: int, per_epoch: str, cls: type
                     ) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Check the arguments of a pair sampler and return the identities that can form a pair: their
    pids, their images (dataset indices) and how many single-image identities were skipped (warned)."""
    name = cls.__name__
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if per_epoch not in ("images", "identities"):
        raise ValueError(f"per_epoch must be 'images' or 'identities', got {per_epoch!r}")
    uniq, members = _group_by_pid(pids)
    ok = [i for i, g in enumerate(members) if len(g) >= 2]
    skipped = len(members) - len(ok)
    if skipped:
        warnings.warn(f"{name}: skipping {skipped} of {len(members)} identities that have a single image "
                      "(no positive pair possible)", stacklevel=4)
    need = batch_size * world_size
    if len(ok) < need:
        raise ValueError(
            f"{name} needs at least batch_size*world_size = {batch_size}*{world_size} = {need} identities with "
            f">= 2 images, found {len(ok)} ({skipped} single-image identities skipped); lower batch_size or add "
            "identities")
    return uniq[ok], [members[i] for i in ok], skipped


class _IdentityBatchSampler:
    """Shared epoch / rank / validation logic."""

    def __init__(self, seed: int, rank: int, world_size: int, drop_last: bool) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random layout the next iteration produces."""
        self.epoch = int(epoch)

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def _shard(self, batch: np.ndarray, per_rank: int) -> np.ndarray:
        return batch[self.rank * per_rank : (self.rank + 1) * per_rank]


class UniqueIdPairSampler(_IdentityBatchSampler):
    """Batches of (query, positive) pairs with every identity at most once per batch.

    CLIP-ReIdent's sampling (Habel et al., MMSports 2022): each eligible image is a query once per
    epoch (``per_epoch="images"``, as in the paper's code), or each identity gives one random
    query per epoch (``per_epoch="identities"``). The positive is a random *different* image of the
    same identity, drawn afresh every epoch. Identities with a single image cannot form a pair and
    are skipped (one warning gives their count); pids < 0 are ignored.

    Iterating yields flat lists ``[q_1, …, q_B, p_1, …, p_B]`` of dataset indices (queries first,
    then their positives), ready for ``DataLoader(dataset, batch_sampler=sampler)``; split the
    collated batch in halves to get the two views.

    Args:
        pids: identity label of every dataset item, [N].
        batch_size: pairs (= distinct identities) per batch **per rank**.
        seed: base seed; the epoch layout depends on (seed, epoch) only.
        rank, world_size: this process's shard of each global batch of
            ``batch_size * world_size`` distinct identities.
        drop_last: drop queries that do not fill a last batch (True), or add one last batch
            topped up with random other identities (False).
        per_epoch: ``"images"`` or ``"identities"`` (see above).

    Raises:
        ValueError: if fewer than ``batch_size * world_size`` identities have two or more images.

    Example:
        >>> s = UniqueIdPairSampler([0, 0, 1, 1, 2, 2, 2], batch_size=2)
        >>> batch = next(iter(s)); len(batch), len(s)
        (4, 3)
    """

    def __init__(
        self,
        pids: Sequence[int] | np.ndarray,
        batch_size: int = 16,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        per_epoch: Literal["images", "identities"] = "images",
    ) -> None:
        super().__init__(seed, rank, world_size, drop_last)
        self.batch_size, self.per_epoch = batch_size, per_epoch
        self.pids, self.groups, self.n_skipped = _pair_identities(pids, batch_size, world_size, per_epoch, type(self))
        sizes = np.array([len(g) for g in self.groups])
        self._units = sizes if per_epoch == "images" else np.ones_like(sizes)

    def __len__(self) -> int:
        g = self.batch_size * self.world_size
        m = _max_batches(self._units, g)
        return m + int(not self.drop_last and self._units.sum() > m * g)

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._rng()
        perms = [rng.permutation(g) for g in self.groups]  # query order within each identity
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for batch in _deal(self._units, self.batch_size * self.world_size, rng, self.drop_last):
            queries, positives = [], []
            for ident, unit in batch:   # the whole global batch, so every rank draws alike
                perm = perms[ident]
                q = unit % len(perm)
                p = (q + rng.integers(1, len(perm))) % len(perm)  # any other image of the identity
                queries.append(int(perm[q]))
                positives.append(int(perm[p]))
            yield queries[mine] + positives[mine]


class GroupedPairSampler(_IdentityBatchSampler):
    """Unique-identity (query, positive) batches filled with whole groups: in-batch hard negatives.

    With random unique-identity batches (:class:`UniqueIdPairSampler`) two players who share kit
    and number rarely meet in a batch, so InfoNCE seldom has to tell them apart. Here every
    identity belongs to a group (e.g. its ``team`` kit, or its ``game`` in DeepSportRadar, where
    players of one sequence share lighting and background), and each batch is cut from a random
    order of the groups with each group's identities kept together, so a batch holds a few whole
    groups: its negatives are mostly the hard ones. The idea of sampling negatives from the
    neighbourhood of the anchor is old (hard-negative mining, e.g. Schroff et al., FaceNet 2015);
    grouping by metadata needs no model in the loop. On the synthetic players, batches of whole
    kits lift fine-tuned mAP by several points over random batches in the same time
    (``benchmarks/bench_finetune.py``).

    An epoch is ``R`` passes over the identities, each identity once per pass (``R`` = the mean
    number of images per identity, rounded, for ``per_epoch="images"``, so the epoch has about as
    many queries as there are images; 1 for ``"identities"``). A pass puts the groups in a fresh
    random order (identities shuffled within each group), cuts the sequence into batches of
    ``batch_size * world_size`` identities and drops the remainder; an identity's query walks
    through its shuffled images from pass to pass and its positive is a random other image. Batches
    never hold an identity twice. Under DDP each rank takes its shard of every global batch (the
    same pairs a single process with ``batch_size * world_size`` would draw).

    Args:
        pids: identity label of every dataset item, [N].
        groups: group label of every dataset item, [N] (any hashable; an identity whose images carry
            several labels joins the group of its first image).
        batch_size, seed, rank, world_size, per_epoch: as in :class:`UniqueIdPairSampler`.

    Raises:
        ValueError: ``groups`` and ``pids`` differ in length, or fewer than ``batch_size * world_size``
            identities have two or more images.

    Example:
        >>> s = GroupedPairSampler([0, 0, 1, 1, 2, 2, 3, 3], ["a", "a", "a", "a", "b", "b", "b", "b"], batch_size=2)
        >>> sorted({0 if i < 4 else 1 for i in next(iter(s))}) in ([0], [1])   # one whole group per batch
        True
    """

    def __init__(
        self,
        pids: Sequence[int] | np.ndarray,
        groups: Sequence | np.ndarray,
        batch_size: int = 16,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        per_epoch: Literal["images", "identities"] = "images",
    ) -> None:
        super().__init__(seed, rank, world_size, drop_last=True)
        if len(groups) != len(pids):
            raise ValueError(f"GroupedPairSampler: {len(groups)} group labels for {len(pids)} pids; give one per item")
        self.batch_size, self.per_epoch = batch_size, per_epoch
        self.pids, self.images, self.n_skipped = _pair_identities(pids, batch_size, world_size, per_epoch, type(self))
        labels = np.array([str(groups[int(g[0])]) for g in self.images])   # one label per identity
        self.groups = sorted(_group_by_pid(labels)[1], key=lambda ids: ids[0])  # identity positions, by first seen
        mean_images = np.mean([len(g) for g in self.images])
        self.passes = max(1, int(round(mean_images))) if per_epoch == "images" else 1

    def __len__(self) -> int:
        return self.passes * (len(self.images) // (self.batch_size * self.world_size))

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._rng()
        g = self.batch_size * self.world_size
        perms = [rng.permutation(im) for im in self.images]
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for p in range(self.passes):
            order = np.concatenate([rng.permutation(self.groups[k]) for k in rng.permutation(len(self.groups))])
            for b in range(len(order) // g):
                queries, positives = [], []
                for ident in order[b * g:(b + 1) * g]:   # the whole global batch, so every rank draws alike
                    perm = perms[ident]
                    q = p % len(perm)
                    queries.append(int(perm[q]))
                    positives.append(int(perm[(q + rng.integers(1, len(perm))) % len(perm)]))
                yield queries[mine] + positives[mine]


class PKSampler(_IdentityBatchSampler):
    """Batches of P distinct identities × K images each (Hermans et al., 2017; "PK batches").

    Each identity's images are shuffled and cut into groups of K once per epoch (the remainder
    that does not fill a group is dropped for that epoch); an identity with fewer than K images
    gives one group holding all its images plus random repeats (sampling with replacement).
    Iterating yields flat lists of ``P*K`` dataset indices, identity by identity
    (``[id1 × K, id2 × K, …]``). pids < 0 are ignored.

    Args:
        pids: identity label of every dataset item, [N].
        p: identities per batch **per rank** (the global batch has ``p * world_size``).
        k: images per identity.
        seed, rank, world_size, drop_last: as in :class:`UniqueIdPairSampler`.

    Raises:
        ValueError: if there are fewer than ``p * world_size`` identities.

    Example:
        >>> s = PKSampler([0, 0, 1, 1, 2, 2], p=2, k=2)
        >>> len(next(iter(s))), len(s)
        (4, 1)
    """

    def __init__(
        self,
        pids: Sequence[int] | np.ndarray,
        p: int = 8,
        k: int = 4,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        super().__init__(seed, rank, world_size, drop_last)
        if p < 1 or k < 1:
            raise ValueError(f"p and k must be >= 1, got p={p}, k={k}")
        self.p, self.k = p, k
        self.pids, self.groups = _group_by_pid(pids)
        need = p * world_size
        if len(self.groups) < need:
            raise ValueError(
                f"PKSampler needs at least p*world_size = {p}*{world_size} = {need} identities, "
                f"found {len(self.groups)}; lower p or add identities"
            )
        self._units = np.array([max(1, len(g) // k) for g in self.groups])

    def __len__(self) -> int:
        g = self.p * self.world_size
        m = _max_batches(self._units, g)
        return m + int(not self.drop_last and self._units.sum() > m * g)

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._rng()
        chunks = []
        for g in self.groups:
            perm = rng.permutation(g)
            if len(perm) < self.k:
                perm = np.concatenate([perm, rng.choice(g, self.k - len(perm), replace=True)])
            chunks.append(perm)
        for batch in _deal(self._units, self.p * self.world_size, rng, self.drop_last):
            out: list[int] = []
            for ident, unit in self._shard(batch, self.p):
                perm = chunks[ident]
                start = (unit % max(1, len(perm) // self.k)) * self.k
                out.extend(int(i) for i in perm[start : start + self.k])
            yield out
