"""InfoNCE batch inspector: its numbers are cliptk.losses.InfoNCE's, its false negatives a brute
force's, its batch the sampler's; figures and the widget build and react."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cliptk.losses import InfoNCE
from cliptk.samplers import UniqueIdPairSampler
from cliptk.viz.batch_inspector import (batch_inspector, compare_batches, inspect_batch, inspect_embeddings,
                                        plot_batch, random_pair_batch)


def _random_batch(b=6, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=torch.float64), torch.randn(b, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("t", [0.05, 0.3, 2.0])
def test_loss_terms_are_infonce_rows(t):
    q, p = _random_batch()
    ins = inspect_embeddings(q, p, [0, 1, 2, 0, 3, 1], temperature=t)
    # reference 1: the library loss (label_smoothing 0) is the mean of the terms
    ref = InfoNCE(label_smoothing=0.0)(q, p, 1.0 / t)
    assert ins.loss() == pytest.approx(float(ref), rel=1e-9, abs=1e-12)
    # reference 2: per-row cross-entropies of both directions, written out with torch
    logits = F.normalize(q, dim=-1) @ F.normalize(p, dim=-1).T / t
    rows = F.cross_entropy(logits, torch.arange(6), reduction="none")
    cols = F.cross_entropy(logits.T, torch.arange(6), reduction="none")
    np.testing.assert_allclose(ins.loss_terms(), (0.5 * (rows + cols)).numpy(), rtol=1e-9)
    np.testing.assert_allclose(ins.softmax(2), logits.softmax(1)[2].numpy(), rtol=1e-9)
    # another temperature recomputes everything (the slider's path)
    assert ins.loss(t * 2) == pytest.approx(float(InfoNCE(label_smoothing=0.0)(q, p, 1.0 / (2 * t))), rel=1e-9)


def test_false_negatives_equal_brute_force():
    rng = np.random.default_rng(1)
    pids = rng.integers(0, 4, size=9)
    ins = inspect_embeddings(rng.normal(size=(9, 5)), rng.normal(size=(9, 5)), pids)
    brute = {(i, j) for i in range(9) for j in range(9) if i != j and pids[i] == pids[j]}
    assert {tuple(x) for x in np.argwhere(ins.false_negatives)} == brute


def test_inspect_batch_is_the_samplers_batch(micro_model, tiny_players):
    train = tiny_players.subset("train")
    s = UniqueIdPairSampler(train.pids, 4, seed=3)
    s.set_epoch(1)
    expected = list(s)[1]
    ins = inspect_batch(micro_model, tiny_players, batch_size=4, seed=3, epoch=1, index=1)
    assert ins.indices.tolist() == expected
    assert ins.false_negatives.sum() == 0                       # unique identities
    assert ins.temperature == pytest.approx(1 / float(micro_model.logit_scale.detach().exp()))
    from cliptk import embed
    emb = embed(micro_model, train, progress=False).numpy()
    b = np.asarray(expected)
    ref = (emb[b[:4]] @ emb[b[4:]].T)
    np.testing.assert_allclose(ins.similarity, ref, atol=1e-5)
    fig = plot_batch(ins, query=1)
    assert len(fig.layout.images) == 8 and "InfoNCE" in fig.layout.annotations[0].text
    fig.to_html(include_plotlyjs=False)                           # exports


def test_random_batch_repeats_identities_and_compare(micro_model, tiny_players):
    pids = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    batch = random_pair_batch(pids, 4, seed=0)
    q, p = np.array(batch[:4]), np.array(batch[4:])
    assert (pids[q] == pids[p]).all() and (q != p).all()
    (rand, uniq), fig = compare_batches(micro_model, tiny_players, batch_size=8, seed=0)
    assert uniq.false_negatives.sum() == 0 and rand.size == uniq.size == 8
    assert len([t for t in fig.data if t.type == "heatmap"]) == 2


def test_widget_reacts_to_the_temperature():
    pytest.importorskip("ipywidgets")
    q, p = _random_batch(4)
    ins = inspect_embeddings(q, p, temperature=0.1)
    w = batch_inspector(ins)
    bar = [t for t in w.figure.data if t.type == "bar"][0]
    before = np.array(bar.y)
    w.temperature.value = 1.0
    np.testing.assert_allclose(np.array(bar.y), ins.softmax(0, 1.0))
    assert not np.allclose(before, bar.y)
    w.query.value = 3
    assert "query 3" in w.figure.layout.annotations[0].text
