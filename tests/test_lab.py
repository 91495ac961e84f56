"""Tests for cliptk.lab on planted-cluster features (no images, no model)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from cliptk import lab
from cliptk.data import ReIdDataset
from cliptk.losses import LOSSES, ContrastiveLoss, InfoNCE, register_loss
from cliptk.metrics import evaluate_reid

SMALL = dict(n_train_ids=40, n_test_ids=20, per_id=6, dim=32, seed=0)


@pytest.fixture(scope="module")
def data() -> lab.LabData:
    return lab.planted_data(**SMALL)


def _uneven_pids(seed: int = 0) -> np.ndarray:
    """Identities with 1..9 images each (singletons never anchor), shuffled."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 10, size=60)
    return rng.permutation(np.repeat(np.arange(100, 160), counts))


def _expected_same_id_rate(pids: np.ndarray) -> float:
    """Σ n_i(n_i-1) / (N(N-1)) over identities with >= 2 images, from the counts directly."""
    n = [c for c in Counter(pids.tolist()).values() if c >= 2]
    total = sum(n)
    return sum(c * (c - 1) for c in n) / (total * (total - 1))


def _brute_force_same_id(pids: np.ndarray, plan) -> tuple[int, int]:
    """(same-identity off-diagonal pairs, all off-diagonal pairs) of the a→b blocks, by loops."""
    same = pairs = 0
    for ia, ib in plan:
        for i in range(len(ia)):
            for j in range(len(ib)):
                if i != j:
                    pairs += 1
                    same += int(pids[ia[i]] == pids[ib[j]])
    return same, pairs


# ------------------------------------------------------------------------------------------ training
def test_infonce_training_improves_map_over_frozen_features(data):
    frozen = evaluate_reid(data.query, data.gallery, data.query_pids, data.gallery_pids,
                           data.query_camids, data.gallery_camids).mAP
    method = lab.LabMethod("unique-id + InfoNCE", batching="unique", loss="infonce", batch_size=16)
    head, hist = lab.train_head(data.train, data.train_pids, method, epochs=8, seed=0, eval_data=data)
    trained = lab.evaluate_head(head, data).mAP
    assert trained > frozen + 0.1
    assert hist["mAP"].iloc[-1] == pytest.approx(trained)
    assert hist["mAP"].iloc[0] == pytest.approx(frozen)  # the untrained head is the identity


def test_untrained_heads_return_their_input():
    x = torch.randn(5, 12)
    for kind in ("linear", "mlp"):
        assert torch.equal(lab.LabHead(12, kind=kind)(x), x)
    assert torch.equal(lab.LabHead(12, out_dim=4)(x), x[:, :4])


# ------------------------------------------------------------------------------------------ batching
def test_random_batches_same_id_rate_matches_formula():
    pids = _uneven_pids()
    expected = _expected_same_id_rate(pids)
    assert lab.false_negative_rate(pids) == pytest.approx(expected)
    method = lab.LabMethod("random", batching="random", batch_size=32)
    same = pairs = 0
    for epoch in range(30):
        plan = lab.batches(pids, method, seed=0, epoch=epoch)
        for ia, ib in plan:
            assert (pids[ia] == pids[ib]).all() and (ia != ib).all()  # row i: a real positive pair
            s = pids[ia][:, None] == pids[ib][None, :]
            same += int(s.sum() - s.diagonal().sum())
            pairs += len(ia) * (len(ia) - 1)
    # ~30 * 10 batches * 992 pairs; the relative standard error is a few percent
    assert same / pairs == pytest.approx(expected, rel=0.1)


def test_reported_false_negative_fraction_equals_brute_force():
    pids = _uneven_pids(1)
    feats = torch.randn(len(pids), 16, generator=torch.Generator().manual_seed(0))
    method = lab.LabMethod("random", batching="random", batch_size=16)
    _, hist = lab.train_head(feats, pids, method, epochs=2, seed=3)
    for epoch in (1, 2):
        same, pairs = _brute_force_same_id(pids, lab.batches(pids, method, seed=3, epoch=epoch))
        assert same > 0
        assert hist.loc[hist["epoch"] == epoch, "false_neg"].item() == pytest.approx(same / pairs)


@pytest.mark.filterwarnings("ignore:UniqueIdPairSampler. skipping")
def test_unique_id_batches_have_no_same_id_negatives():
    pids = _uneven_pids(2)
    method = lab.LabMethod("unique", batching="unique", batch_size=16)
    for epoch in range(3):
        plan = lab.batches(pids, method, seed=0, epoch=epoch)
        assert plan
        assert _brute_force_same_id(pids, plan)[0] == 0
        for ia, ib in plan:
            assert (pids[ia] == pids[ib]).all() and len(set(pids[ia])) == len(ia)
    feats = torch.randn(len(pids), 8, generator=torch.Generator().manual_seed(0))
    _, hist = lab.train_head(feats, pids, method, epochs=1)
    assert hist["false_neg"].iloc[1] == 0.0


def test_pk_batches_pair_rows_and_multi_positive_losses_use_no_same_id_negatives():
    pids = np.repeat(np.arange(12), 6)
    method = lab.LabMethod("pk", batching="pk", loss="supcon", batch_size=8, k=4)  # P = 4 ids × 4 images
    for ia, ib in lab.batches(pids, method, seed=0, epoch=1):
        assert len(ia) == len(ib) == 8
        assert (pids[ia] == pids[ib]).all() and len(set(pids[ia])) == 4
    # equal steps for every batching: floor(images of ids with >= 2 images / batch_size)
    uneven = _uneven_pids(3)
    n2 = sum(c for c in Counter(uneven.tolist()).values() if c >= 2)
    with pytest.warns(UserWarning, match="single image"):
        for batching in ("random", "unique", "pk"):
            plan = lab.batches(uneven, method.replace(batching=batching), seed=1, epoch=2)
            assert len(plan) == n2 // 8
            assert all((uneven[ia] == uneven[ib]).all() for ia, ib in plan)
    feats = torch.randn(len(pids), 8, generator=torch.Generator().manual_seed(0))
    for loss in ("supcon", "decoupled"):
        _, hist = lab.train_head(feats, pids, method.replace(loss=loss), epochs=1)
        assert hist["false_neg"].iloc[1] == 0.0
    _, hist = lab.train_head(feats, pids, method.replace(loss="infonce"), epochs=1)
    same, pairs = _brute_force_same_id(pids, lab.batches(pids, method, seed=0, epoch=1))
    assert hist["false_neg"].iloc[1] == pytest.approx(same / pairs) and same > 0


# ------------------------------------------------------------------------------------------ GIST
def _brute_force_gist(guide: np.ndarray, pids: np.ndarray, plan, margin: float) -> tuple[int, int, int, int]:
    """(masked, masked same-id, same-id, pairs): j masked when cos(g_ai, g_bj) > cos(g_ai, g_bi) - margin."""
    g = guide / np.linalg.norm(guide, axis=1, keepdims=True)
    masked = tp = same_n = pairs = 0
    for ia, ib in plan:
        for i in range(len(ia)):
            pos = float(g[ia[i]] @ g[ib[i]])
            for j in range(len(ib)):
                if i == j:
                    continue
                pairs += 1
                same = pids[ia[i]] == pids[ib[j]]
                hit = float(g[ia[i]] @ g[ib[j]]) > pos - margin
                masked += hit
                tp += hit and same
                same_n += same
    return masked, tp, same_n, pairs


@pytest.mark.parametrize("margin", [0.02, 0.1])
def test_gist_mask_precision_recall_match_brute_force(margin):
    # (margin 0 is avoided: a positive image drawn twice in a batch ties g_ij == g_ii exactly, and
    # float32 vs float64 rounding may then decide either way)
    d = lab.planted_data(n_train_ids=15, n_test_ids=5, per_id=6, dim=16, noise=0.8, seed=1)
    pids = d.train_pids
    method = lab.LabMethod("gist", batching="random", loss="gist", margin=margin, batch_size=16)
    _, hist = lab.train_head(d.train, pids, method, epochs=2, seed=0)
    sweep = lab.gist_mask_sweep(d.train, pids, margins=[margin], batch_size=16, seed=0, epoch=1)
    for epoch in (1, 2):
        masked, tp, same_n, pairs = _brute_force_gist(d.train.numpy().astype(np.float64), pids,
                                                       lab.batches(pids, method, seed=0, epoch=epoch), margin)
        assert masked > 0 and same_n > 0
        row = hist.loc[hist["epoch"] == epoch].iloc[0]
        assert row["mask_rate"] == pytest.approx(masked / pairs)
        assert row["mask_precision"] == pytest.approx(tp / masked)
        assert row["mask_recall"] == pytest.approx(tp / same_n)
        # negatives kept by the loss = unmasked off-diagonal; those sharing the id are the leftovers
        assert row["false_neg"] == pytest.approx((same_n - tp) / (pairs - masked))
        if epoch == 1:
            assert sweep["mask_rate"].item() == pytest.approx(masked / pairs)
            assert sweep["precision"].item() == pytest.approx(tp / masked)
            assert sweep["recall"].item() == pytest.approx(tp / same_n)


def test_gist_mask_grows_with_margin(data):
    sweep = lab.gist_mask_sweep(data.train, data.train_pids, margins=[0.0, 0.05, 0.2, 2.0], batch_size=16)
    assert sweep["mask_rate"].is_monotonic_increasing and sweep["recall"].is_monotonic_increasing
    assert sweep["mask_rate"].iloc[-1] == 1.0  # cosines span at most 2: everything masked


# ------------------------------------------------------------------------------------------ soft targets
def test_sharpened_soft_targets_normalise_to_a_softmax_both_ways():
    ta, tb = torch.randn(6, 5), torch.randn(6, 5)
    # private on purpose: the sharpened targets are built inside train_head and no public result holds them
    t = lab._soft_targets(ta, tb, 0.1)
    cos = torch.nn.functional.normalize(ta, dim=1) @ torch.nn.functional.normalize(tb, dim=1).T
    torch.testing.assert_close(t / t.sum(1, keepdim=True), torch.softmax(cos / 0.1, dim=1))
    torch.testing.assert_close(t.T / t.T.sum(1, keepdim=True), torch.softmax(cos.T / 0.1, dim=1))


# ------------------------------------------------------------------------------------------ the lab
def _methods() -> list[lab.LabMethod]:
    return [m.replace(batch_size=16) for m in lab.DEFAULT_METHODS] + [lab.TEMPERATURE_SWEEP[0].replace(batch_size=16)]


def test_run_lab_table(data):
    methods = _methods()
    table, hists = lab.run_lab(data, methods, epochs=1, seed=0, return_histories=True)
    assert list(table.columns) == ["group", "batching", "loss", "temperature", "mAP", "rank-1", "rank-5", "ΔmAP",
                                   "false_neg", "mask_rate", "mask_precision", "mask_recall", "seconds"]
    assert list(table.index) == ["no training (frozen)"] + [m.name for m in methods]
    frozen = evaluate_reid(data.query, data.gallery, data.query_pids, data.gallery_pids,
                           data.query_camids, data.gallery_camids)
    assert table.loc["no training (frozen)", "mAP"] == pytest.approx(frozen.mAP)
    assert table.loc["no training (frozen)", "rank-1"] == pytest.approx(frozen.cmc[1])
    np.testing.assert_allclose(table["ΔmAP"], table["mAP"] - frozen.mAP)
    for m in methods:
        assert table.loc[m.name, "mAP"] == pytest.approx(hists[m.name]["mAP"].iloc[-1])
    gist = [m.name for m in methods if m.loss == "gist"]
    assert table.loc[gist, "mask_precision"].notna().all()
    assert table.drop(index=gist)["mask_precision"].isna().all()
    fixed = lab.TEMPERATURE_SWEEP[0]
    assert table.loc[fixed.name, "temperature"] == pytest.approx(fixed.temperature)
    np.testing.assert_allclose(hists[fixed.name]["temperature"], fixed.temperature, rtol=1e-6)


def test_run_lab_is_deterministic_under_a_seed(data):
    methods = _methods()
    a, ha = lab.run_lab(data, methods, epochs=2, seed=5, return_histories=True)
    b, hb = lab.run_lab(data, methods, epochs=2, seed=5, return_histories=True)
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    for name in ha:
        pd.testing.assert_frame_equal(ha[name], hb[name])
    c, hc = lab.run_lab(data, methods[:1], epochs=2, seed=6, return_histories=True)
    assert not np.allclose(hc[methods[0].name]["loss"][1:], ha[methods[0].name]["loss"][1:])


def test_run_lab_from_dataset_and_features(data):
    n_tr, n_q, n_g = len(data.train), len(data.query), len(data.gallery)
    table = pd.DataFrame({
        "path": [f"{i}.jpg" for i in range(n_tr + n_q + n_g)],
        "pid": np.concatenate([data.train_pids, data.query_pids, data.gallery_pids]),
        "camid": np.concatenate([np.zeros(n_tr, int), data.query_camids, data.gallery_camids]),
        "split": ["train"] * n_tr + ["query"] * n_q + ["gallery"] * n_g,
    })
    order = np.random.default_rng(0).permutation(len(table))  # splits interleaved in the dataset
    ds = ReIdDataset("/nonexistent", table.iloc[order])
    feats = torch.cat([data.train, data.query, data.gallery])[order]
    built = lab.LabData.from_dataset(ds, feats)
    for split in ("train", "query", "gallery"):
        rows = np.sort(np.flatnonzero(table["split"].to_numpy() == split))
        # dataset order == sorted positions of the split in the shuffled table
        pos = np.flatnonzero(ds.splits == split)
        assert torch.equal(getattr(built, split), feats[pos])
        assert sorted(getattr(built, f"{split}_pids").tolist()) == sorted(table["pid"].to_numpy()[rows].tolist())
    m = [lab.DEFAULT_METHODS[1].replace(batch_size=16)]
    via_ds = lab.run_lab(ds, m, features=feats, epochs=1)
    via_pair = lab.run_lab((ds, feats), m, epochs=1)
    via_data = lab.run_lab(built, m, epochs=1)
    pd.testing.assert_frame_equal(via_ds.drop(columns="seconds"), via_data.drop(columns="seconds"))
    pd.testing.assert_frame_equal(via_pair.drop(columns="seconds"), via_data.drop(columns="seconds"))
    with pytest.raises(ValueError, match="features"):
        lab.run_lab(ds, m)
    with pytest.raises(TypeError, match="features="):
        lab.run_lab(ds, feats)
    bad = feats.clone()
    bad[np.flatnonzero(ds.splits == "query")[0]] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        lab.LabData.from_dataset(ds, bad)
    with pytest.raises(ValueError, match="rows"):
        lab.LabData.from_dataset(ds, feats[:-1])


def test_plot_lab(data):
    methods = _methods()[:3]
    table, hists = lab.run_lab(data, methods, epochs=1, return_histories=True)
    fig = lab.plot_lab(table)
    bars = {y: b + x for trace in fig.data for y, x, b in zip(trace.y, trace.x, [trace.base] * len(trace.y))}
    assert sorted(bars) == sorted(m.name for m in methods)
    for name, end in bars.items():  # bars run from the frozen baseline to the method's mAP
        assert end == pytest.approx(table.loc[name, "mAP"])
    curves = lab.plot_lab(hists, metric="rank-1")
    assert [t.name for t in curves.data] == [m.name for m in methods]
    with pytest.raises(KeyError, match="nope"):
        lab.plot_lab(table, metric="nope")


# ------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("kwargs, match", [
    (dict(batching="pk", k=3), "even k"),
    (dict(temperature=0.001), "outside"),
    (dict(loss="triplet"), "loss must be"),
    (dict(batching="shuffle"), "batching must be"),
    (dict(target_temperature=0.01), "underflows"),
])
def test_lab_method_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lab.LabMethod("bad", **kwargs)


def test_duplicate_method_names_rejected(data):
    m = lab.DEFAULT_METHODS[0]
    with pytest.raises(ValueError, match="duplicate"):
        lab.run_lab(data, [m, m], epochs=1)


# ------------------------------------------------------------------------------------------ a new loss
@pytest.fixture
def registry():
    """LOSSES as it was before the test (a test that registers a loss must not leak it)."""
    before = dict(LOSSES)
    yield LOSSES
    LOSSES.clear()
    LOSSES.update(before)


def test_a_registered_loss_is_a_lab_method_and_gets_the_guide(registry):
    seen = []

    @register_loss("guided-copy")  # InfoNCE that also records the guide it was handed
    class GuidedCopy(InfoNCE):
        extras = requires = ("guide",)

        def loss(self, v, scale, extra):
            seen.append(extra["guide"])
            return super().loss(v, scale, {})

    @register_loss("needs-depth")
    class NeedsDepth(ContrastiveLoss):
        extras = requires = ("depth",)

        def loss(self, v, scale, extra):
            return scale * 0

    assert "guided-copy" in LOSSES
    m = lab.LabMethod("copy", batching="unique", loss="guided-copy", batch_size=8, label_smoothing=0.1)
    d = lab.planted_data(n_train_ids=20, n_test_ids=5, per_id=4, dim=16)
    guide = torch.randn(len(d.train), 3)
    _, hist = lab.train_head(d.train, d.train_pids, m, epochs=1, guide=guide)
    plan = lab.batches(d.train_pids, m, seed=0, epoch=1)
    assert len(seen) == len(plan) == hist["steps"].iloc[1]
    for (ga, gb), (ia, ib) in zip(seen, plan):  # the guide rows of the batch's two views, in order
        assert torch.equal(ga, guide[ia]) and torch.equal(gb, guide[ib])
    # same batches, same steps and (label_smoothing reaches it like InfoNCE) the same losses as InfoNCE
    _, ref = lab.train_head(d.train, d.train_pids, m.replace(loss="infonce"), epochs=1)
    np.testing.assert_allclose(hist["loss"].iloc[1:], ref["loss"].iloc[1:], rtol=1e-6)
    with pytest.raises(ValueError, match="cannot make"):  # the lab checks what a loss requires
        lab.LabMethod("depth", loss="needs-depth")
    with pytest.raises(ValueError, match="guided-copy, needs-depth"):  # the list of choices is the registry
        lab.LabMethod("bad", loss="triplet")


def test_from_dataset_without_cameras_keeps_every_true_match():
    """No camid column: no camera filtering (the your-own-data rule), so the lab's mAP is the one
    computed with every other image of the identity as a true match — not 0 from dropping them all."""
    rows = [{"path": f"{s}{p}_{k}.jpg", "pid": p, "split": s} for p in range(4) for s, n in
            (("train", 2), ("query", 1), ("gallery", 2)) for k in range(n)]
    ds = ReIdDataset("/nowhere", pd.DataFrame(rows))
    assert not ds.has_cameras
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8))
    feats = torch.tensor(centres[ds.pids] + 0.01 * rng.normal(size=(len(ds), 8)), dtype=torch.float32)
    data = lab.LabData.from_dataset(ds, feats)
    res = lab.evaluate_head(None, data)
    q, g = ds.splits == "query", ds.splits == "gallery"
    ref = evaluate_reid(feats[q], feats[g], ds.pids[q], ds.pids[g])   # no camids: nothing filtered
    assert res.mAP == pytest.approx(ref.mAP) and res.mAP == pytest.approx(1.0)
