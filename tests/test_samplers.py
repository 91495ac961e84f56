"""Tests for cliptk.samplers: identity constraints, determinism, epochs, rank shards, errors."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from cliptk.samplers import GroupedPairSampler, PKSampler, UniqueIdPairSampler


def _pids(seed: int = 0, n_ids: int = 30) -> np.ndarray:
    """Identities with 1..9 images each, shuffled, plus junk items labelled -1."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 10, size=n_ids)
    pids = np.concatenate([np.repeat(np.arange(n_ids) * 3 + 100, counts), -np.ones(5, dtype=int)])
    return rng.permutation(pids)


def _quiet(cls, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(*args, **kwargs)


def _epoch(sampler, epoch: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


# --------------------------------------------------------------------------- UniqueIdPairSampler
@pytest.mark.parametrize("per_epoch", ["images", "identities"])
@pytest.mark.parametrize("drop_last", [True, False])
def test_pair_batches_have_distinct_ids_and_valid_pairs(per_epoch, drop_last):
    pids = _pids()
    s = _quiet(UniqueIdPairSampler, pids, batch_size=4, per_epoch=per_epoch, drop_last=drop_last)
    batches = _epoch(s)
    assert len(batches) == len(s) > 0
    for batch in batches:
        q, p = batch[:4], batch[4:]
        assert len(q) == len(p) == 4
        assert len({pids[i] for i in q}) == 4  # no identity twice
        for i, j in zip(q, p):
            assert pids[i] == pids[j] >= 0 and i != j  # same identity, different image


def test_pair_sampler_uses_every_image_once_as_query_when_possible():
    pids = _pids(1)
    s = _quiet(UniqueIdPairSampler, pids, batch_size=4)
    queries = [i for batch in _epoch(s) for i in batch[:4]]
    assert len(queries) == len(set(queries))  # a query image at most once per epoch
    counts = Counter(pids[pids >= 0].tolist())
    eligible = {k: c for k, c in counts.items() if c >= 2}
    # brute-force optimum: largest m with sum(min(c, m)) >= 4 m
    best = max(m for m in range(1, sum(eligible.values()) + 1) if sum(min(c, m) for c in eligible.values()) >= 4 * m)
    assert len(s) == best


def test_pair_sampler_identities_mode_is_one_pair_per_identity():
    pids = _pids(2)
    s = _quiet(UniqueIdPairSampler, pids, batch_size=5, per_epoch="identities")
    seen = [pids[i] for batch in _epoch(s) for i in batch[:5]]
    n_eligible = sum(1 for c in Counter(pids[pids >= 0].tolist()).values() if c >= 2)
    assert len(seen) == len(set(seen)) == (n_eligible // 5) * 5
    assert len(s) == n_eligible // 5


def test_pair_sampler_deterministic_and_epochs_differ():
    pids = _pids(3)
    s1 = _quiet(UniqueIdPairSampler, pids, batch_size=4, seed=7)
    s2 = _quiet(UniqueIdPairSampler, pids, batch_size=4, seed=7)
    assert _epoch(s1, 3) == _epoch(s2, 3)
    assert _epoch(s1, 0) != _epoch(s1, 1)
    assert _epoch(s1, 0) != _epoch(_quiet(UniqueIdPairSampler, pids, batch_size=4, seed=8), 0)


def test_pair_sampler_positives_change_across_epochs():
    pids = np.repeat(np.arange(4), 6)  # 4 ids × 6 images: many possible positives
    s = UniqueIdPairSampler(pids, batch_size=4, per_epoch="identities")
    pairs = {tuple(_epoch(s, e)[0]) for e in range(6)}
    assert len(pairs) > 1


@pytest.mark.parametrize("world_size", [2, 3])
def test_pair_sampler_rank_shards_disjoint_and_cover(world_size):
    pids = _pids(4, n_ids=40)
    single = _quiet(UniqueIdPairSampler, pids, batch_size=2 * world_size, seed=5)
    ranks = [_quiet(UniqueIdPairSampler, pids, batch_size=2, seed=5, rank=r, world_size=world_size) for r in range(world_size)]
    per_rank = [_epoch(r, 2) for r in ranks]
    assert len({len(r) for r in ranks}) == 1 and all(len(b) == len(ranks[0]) for b in per_rank)
    for step in range(len(ranks[0])):
        shards = [per_rank[r][step] for r in range(world_size)]
        ids = [pids[i] for sh in shards for i in sh[:2]]
        assert len(ids) == len(set(ids)) == 2 * world_size  # global batch: distinct ids across ranks
        queries = [i for sh in shards for i in sh[:2]]
        assert len(set(queries)) == len(queries)
    # the shards together are exactly the pairs of one process with the global batch size
    for step, whole in enumerate(_epoch(single, 2)):
        shards = [per_rank[r][step] for r in range(world_size)]
        b = 2 * world_size
        assert [i for sh in shards for i in sh[:2]] == whole[:b]
        assert [i for sh in shards for i in sh[2:]] == whole[b:]


def test_pair_sampler_warns_once_about_singletons_and_ignores_negative():
    pids = [0, 0, 1, 1, 2, 3, 4, -1, -1]
    with pytest.warns(UserWarning, match="skipping 3 of 5 identities") as record:
        s = UniqueIdPairSampler(pids, batch_size=2)
    assert len(record) == 1
    assert s.n_skipped == 3
    for batch in _epoch(s):
        assert set(batch) <= {0, 1, 2, 3}


def test_pair_sampler_error_names_numbers():
    with pytest.raises(ValueError, match=r"batch_size\*world_size = 4\*2 = 8 identities.*found 3"):
        _quiet(UniqueIdPairSampler, [0, 0, 1, 1, 2, 2, 3], batch_size=4, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        UniqueIdPairSampler([0, 0, 1, 1], batch_size=1, rank=2, world_size=2)


def test_pair_sampler_works_as_dataloader_batch_sampler():
    class Pids(Dataset):
        def __init__(self, pids):
            self.pids = pids

        def __len__(self):
            return len(self.pids)

        def __getitem__(self, i):
            return torch.tensor(i), torch.tensor(self.pids[i])

    pids = _pids(5)
    s = _quiet(UniqueIdPairSampler, pids, batch_size=3)
    loader = DataLoader(Pids(pids), batch_sampler=s)
    idx, labels = next(iter(loader))
    assert idx.shape == (6,) and torch.equal(labels[:3], labels[3:])
    assert len(loader) == len(s)


# --------------------------------------------------------------------------- PKSampler
@pytest.mark.parametrize("drop_last", [True, False])
def test_pk_batches_have_p_ids_with_k_images(drop_last):
    pids = _pids(6)
    s = PKSampler(pids, p=4, k=3, drop_last=drop_last)
    batches = _epoch(s)
    assert len(batches) == len(s) > 0
    for batch in batches:
        assert len(batch) == 12
        labels = [pids[i] for i in batch]
        counts = Counter(labels)
        assert len(counts) == 4 and set(counts.values()) == {3} and min(labels) >= 0
        for g in range(4):  # grouped identity by identity
            assert len(set(labels[3 * g : 3 * g + 3])) == 1
        for ident, c in counts.items():  # images repeat only when the identity has fewer than k
            imgs = [i for i in batch if pids[i] == ident]
            if (pids == ident).sum() >= 3:
                assert len(set(imgs)) == 3


def test_pk_small_identity_samples_with_replacement_and_covers():
    pids = np.array([0, 1, 1, 2, 2, 2, 2])  # id 0 has one image, id 1 two
    s = PKSampler(pids, p=3, k=4)
    (batch,) = _epoch(s)
    by_id = {ident: [i for i in batch if pids[i] == ident] for ident in (0, 1, 2)}
    assert by_id[0] == [0] * 4
    assert sorted(set(by_id[1])) == [1, 2]  # all its images, plus repeats


def test_pk_deterministic_epochs_differ_and_error():
    pids = _pids(7)
    a, b = PKSampler(pids, p=3, k=2, seed=1), PKSampler(pids, p=3, k=2, seed=1)
    assert _epoch(a, 4) == _epoch(b, 4)
    assert _epoch(a, 0) != _epoch(a, 1)
    with pytest.raises(ValueError, match=r"p\*world_size = 4\*2 = 8 identities, found 3"):
        PKSampler([0, 1, 2], p=4, k=2, world_size=2)


def test_pk_rank_shards_disjoint_and_cover():
    pids = _pids(8)
    ranks = [PKSampler(pids, p=2, k=2, seed=3, rank=r, world_size=2) for r in range(2)]
    single = PKSampler(pids, p=4, k=2, seed=3)
    e0, e1 = _epoch(ranks[0]), _epoch(ranks[1])
    assert len(e0) == len(e1) == len(single)
    for b0, b1 in zip(e0, e1):
        assert not {pids[i] for i in b0} & {pids[i] for i in b1}
    assert sorted(i for b in e0 + e1 for i in b) == sorted(i for b in _epoch(single) for i in b)


@pytest.mark.parametrize("seed", range(12))
def test_layout_is_full_and_optimal_on_skewed_counts(seed):
    """Random, heavily skewed identity sizes: every batch full and distinct, len() = brute-force optimum."""
    rng = np.random.default_rng(seed)
    counts = np.minimum(rng.geometric(0.25, size=int(rng.integers(6, 25))) + 1, 40)
    counts[0] = 40  # one identity much larger than the others
    pids = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    b = int(rng.integers(2, 6))
    s = _quiet(UniqueIdPairSampler, pids, batch_size=b, seed=seed)
    best = max(m for m in range(1, counts.sum() + 1) if np.minimum(counts, m).sum() >= b * m)
    batches = _epoch(s)
    assert len(batches) == len(s) == best
    for batch in batches:
        assert len({pids[i] for i in batch[:b]}) == b


# --------------------------------------------------------------------------- GroupedPairSampler
def _grouped(seed: int = 0, n_groups: int = 7):
    """pids of _pids() with a group label per identity (group = pid % n_groups, junk in group 'x')."""
    pids = _pids(seed)
    groups = np.array([f"g{p % n_groups}" if p >= 0 else "x" for p in pids])
    return pids, groups


@pytest.mark.parametrize("per_epoch", ["images", "identities"])
def test_grouped_batches_have_distinct_ids_valid_pairs_and_whole_groups(per_epoch):
    pids, groups = _grouped()
    s = _quiet(GroupedPairSampler, pids, groups, batch_size=6, per_epoch=per_epoch)
    batches = _epoch(s)
    assert len(batches) == len(s) > 0
    n_ids = len(s.images)
    passes = round(np.mean([len(g) for g in s.images])) if per_epoch == "images" else 1
    assert len(s) == passes * (n_ids // 6)
    group_changes = []
    for b in batches:
        q, p = b[:6], b[6:]
        assert len({pids[i] for i in q}) == 6                       # no identity twice
        assert all(pids[i] == pids[j] and i != j for i, j in zip(q, p))  # a different image, same identity
        labels = [groups[i] for i in q]
        group_changes.append(sum(a != c for a, c in zip(labels, labels[1:])))
    # identities of one group sit next to each other: a batch of 6 spans few groups, far fewer
    # label changes than a random order of 7 groups would give (~5 of 5)
    assert np.mean(group_changes) < 3


def test_grouped_batches_hold_more_same_group_pairs_than_random_batches():
    pids, groups = _grouped(n_groups=5)
    grouped = _quiet(GroupedPairSampler, pids, groups, batch_size=5)
    plain = _quiet(UniqueIdPairSampler, pids, batch_size=5)

    def same_group_pairs(sampler):
        n = 0
        for b in _epoch(sampler):
            labels = Counter(groups[i] for i in b[:5])
            n += sum(c * (c - 1) // 2 for c in labels.values())
        return n / len(sampler)

    assert same_group_pairs(grouped) > 2 * same_group_pairs(plain)


def test_grouped_deterministic_epochs_differ_queries_walk_through_images():
    pids, groups = _grouped()
    a, b = _quiet(GroupedPairSampler, pids, groups, batch_size=4, seed=3), _quiet(
        GroupedPairSampler, pids, groups, batch_size=4, seed=3)
    assert _epoch(a, 0) == _epoch(b, 0)
    assert _epoch(a, 0) != _epoch(a, 1)
    # per_epoch="images": an identity's queries over the passes cover its images (no repeats before all seen)
    queries = Counter(i for batch in _epoch(a, 0) for i in batch[:4])
    by_id = {}
    for i, n in queries.items():
        by_id.setdefault(pids[i], []).append(n)
    assert all(max(ns) - min(ns) <= 1 + 1 for ns in by_id.values())
    assert len(queries) > 0.8 * sum(len(g) for g in a.images) * len(a) * 4 / (a.passes * len(a.images))


def test_grouped_rank_shards_are_disjoint_and_cover_the_global_batch():
    pids, groups = _grouped()
    single = list(_quiet(GroupedPairSampler, pids, groups, batch_size=6, seed=1))
    shards = [list(_quiet(GroupedPairSampler, pids, groups, batch_size=3, seed=1, rank=r, world_size=2))
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(single)
    for whole, s0, s1 in zip(single, *shards):
        assert s0[:3] + s1[:3] == whole[:6] and s0[3:] + s1[3:] == whole[6:]  # the single-process batch, split


def test_grouped_errors_name_the_problem():
    pids, groups = _grouped()
    with pytest.raises(ValueError, match="group labels for"):
        GroupedPairSampler(pids, groups[:-1], batch_size=4)
    with pytest.raises(ValueError, match="batch_size\\*world_size = 100\\*1"):
        _quiet(GroupedPairSampler, pids, groups, batch_size=100)
