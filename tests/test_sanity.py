"""Saliency sanity checks: attention rollout against attention weights computed by hand, the
randomisation test against scipy on separately computed maps, part shares against a brute force,
part masks of a generated dataset, one-line notes on a ResNet and on data without masks."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import spearmanr

import cliptk as ct
from cliptk.explain import faithfulness, similarity_cam
from cliptk.explain.sanity import (NO_ATTENTION, attention_rollout, compare_saliency, part_saliency, part_shares,
                                   randomization_test, synthetic_part_mask)
from cliptk.synthetic.render import PARTS


def _pair():
    rng = np.random.default_rng(0)
    return (Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)))


@torch.no_grad()
def _rollout_by_hand(model, image):
    """Attention weights from each block's ln_1 output and in_proj weights; rollout written out."""
    x = model.preprocess(image)[None]
    inputs = []
    blocks = list(model.visual.transformer.resblocks)
    hooks = [b.ln_1.register_forward_hook(lambda _m, _i, out: inputs.append(out.detach())) for b in blocks]
    was = model.training
    model.eval()
    model(x)
    model.train(was)
    for h in hooks:
        h.remove()
    r = None
    for blk, h in zip(blocks, inputs):
        mha = blk.attn
        d, heads = mha.embed_dim, mha.num_heads
        qkv = h[0] @ mha.in_proj_weight.T + mha.in_proj_bias                      # [L, 3d]
        q, k, _ = qkv.split(d, dim=-1)
        q = q.view(-1, heads, d // heads).transpose(0, 1)
        k = k.view(-1, heads, d // heads).transpose(0, 1)
        a = ((q @ k.transpose(1, 2)) / (d // heads) ** 0.5).softmax(-1).mean(0)   # [L, L]
        a = 0.5 * a + 0.5 * torch.eye(a.shape[0])
        a = a / a.sum(-1, keepdim=True)
        r = a if r is None else a @ r
    rows, cols = model.visual.grid_size
    m = F.interpolate(r[0, 1:].reshape(1, 1, rows, cols), size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    m = m.numpy()
    return (m - m.min()) / (m.max() - m.min() + 1e-7)


def test_rollout_matches_attention_by_hand(micro_model, tiny_model):
    a, _ = _pair()
    for model in (micro_model, tiny_model):
        np.testing.assert_allclose(attention_rollout(model, a), _rollout_by_hand(model, a), atol=1e-4)


def test_compare_saliency_uses_faithfulness(micro_model):
    a, b = _pair()
    cmp = compare_saliency(micro_model, a, b, steps=3, n_random=1)
    assert list(cmp.maps) == ["scorecam", "gradcam", "rollout"] and not cmp.notes
    ref = faithfulness(micro_model, similarity_cam(micro_model, a, b, fast=True), steps=3, n_random=1)
    assert cmp.faithfulness["scorecam"].deletion_auc == pytest.approx(ref.deletion_auc, abs=1e-5)
    assert cmp.table["method"].tolist() == ["scorecam", "gradcam", "rollout"]
    fig = cmp.figure()
    assert "del " in fig.layout.annotations[2].text
    fig.to_html(include_plotlyjs=False)


def test_resnet_says_no_attention_in_one_line(rn_model):
    a, b = _pair()
    cmp = compare_saliency(rn_model, a, b, steps=2, n_random=1, top_channels=8)   # approximate: fast
    assert list(cmp.maps) == ["scorecam", "gradcam"]
    assert cmp.notes == [NO_ATTENTION.format(name=rn_model.name)] and "\n" not in cmp.notes[0]
    with pytest.raises(ValueError, match="no attention"):
        attention_rollout(rn_model, a)


def test_randomization_test_against_scipy(micro_model):
    a, b = _pair()
    state = {k: v.clone() for k, v in micro_model.state_dict().items()}
    t = randomization_test(micro_model, a, b, methods=("scorecam", "rollout"), blocks=(1, 2), seed=3)
    assert all(torch.equal(state[k], v) for k, v in micro_model.state_dict().items())   # the model is untouched
    for n in (1, 2):
        other = copy.deepcopy(micro_model)
        torch.manual_seed(3)
        ct.models.reinit_top_blocks(other, n)
        ref = spearmanr(attention_rollout(micro_model, a).ravel(), attention_rollout(other, a).ravel()).statistic
        got = t[(t.method == "rollout") & (t.blocks == n)].spearman.item()
        assert got == pytest.approx(ref, abs=1e-6)
    assert t.spearman.between(-1, 1).all()


def test_part_shares_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(PARTS), (12, 6))
    s = rng.random((12, 6))
    t = part_shares(s, labels)
    for i, name in enumerate(PARTS):
        assert t.loc[name, "mass"] == pytest.approx(s[labels == i].sum() / s.sum())
        assert t.loc[name, "area"] == pytest.approx((labels == i).mean())
    assert t["peak"].sum() == 1 and t["peak"].idxmax() == PARTS[labels.ravel()[s.argmax()]]


def test_part_masks_of_a_generated_dataset(tiny_players, micro_model):
    for row in (0, 5, len(tiny_players) - 1):
        mask = synthetic_part_mask(tiny_players, row)   # re-rendered image checked against the file's bytes
        w, h = tiny_players[row].size
        assert mask.shape == (h, w) and (mask > 0).any()
    other = ct.load_model("cliptk-micro", None)
    res = part_saliency({"a": micro_model, "b": other}, tiny_players.subset("query", "gallery"), n_pairs=2)
    t = res.table
    assert list(t.columns) == ["area", "a mass", "a peak", "b mass", "b peak"]
    assert t["area"].sum() == pytest.approx(1) and t["a mass"].sum() == pytest.approx(1)
    assert t["b peak"].sum() == pytest.approx(1) and len(res.pairs) == 2
    res.figure().to_html(include_plotlyjs=False)


def test_user_data_has_no_masks_in_one_line(tiny_players, micro_model, tmp_path):
    user = ct.data.ReIdDataset(tmp_path, tiny_players.table.copy(), name="mine")
    res = part_saliency(micro_model, user, n_pairs=1)
    assert res.table.empty and repr(res) == res.note and "\n" not in res.note and "mine" in res.note
