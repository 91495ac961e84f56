"""Score-CAM / Grad-CAM of image-to-image similarity: maps, fast path vs pytorch_grad_cam, hooks,
dtypes, faithfulness curves, pair selection, pictures and the pair picker widget.

Models are tiny and randomly initialised (seeded). The random tiny ResNet's embedding is almost
constant (open_clip zero-initialises each bottleneck's last BN and eval-mode BN does not normalise),
so its BatchNorm statistics are calibrated on noise first (the shared ``rn_model`` fixture); ResNet
Score-CAMs run on ``layer1.0`` (64 channels) to keep the library path cheap — the code path (4-D
activations) is the default's.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

import cliptk as ct
# layers / inputs / scorecam / deletion: only for the tests below that check an internal step against
# a reference or inject a fault (each says why); everything else goes through the public API
from cliptk.explain import cost, deletion, inputs, layers, scorecam
from cliptk.explain import (CamConfig, Faithfulness, SimilarityTarget, default_target_layer, explain_topk,
                            faithfulness, plot_cam_grid, plot_cam_pair, plot_faithfulness, select_pairs,
                            similarity_cam, similarity_cams)
from cliptk.synthetic import make_players, render_player
from cliptk.widgets import CamPairPicker
from conftest import make_model

RN_LAYER = "layer1.0"


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def noise_image(seed: int, size=(20, 44)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def noise_dataset(root, n: int, n_ids: int, seed: int):
    """A CSV dataset of ``n`` noise images: pid ``i % n_ids``, the first two rows the query split."""
    rows = []
    for i in range(n):
        noise_image(seed + i).save(root / f"{i}.png")
        rows.append({"path": f"{i}.png", "pid": i % n_ids, "split": "query" if i < 2 else "gallery"})
    pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
    return ct.read_csv(root / "m.csv")


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def images():
    return [noise_image(i, size=(20 + 3 * i, 44 - 2 * i)) for i in range(6)]


@pytest.fixture(scope="module")
def rn_maps(rn_model, images):
    """ResNet maps shared by several tests: fast path for B and C, with the logit scale and with
    scale 1, and the library path for B (symmetric maps are checked on the ViT)."""
    fast = similarity_cams(rn_model, images[0], images[1:3], layer=RN_LAYER)
    plain = similarity_cams(rn_model, images[0], images[1:3], layer=RN_LAYER, scale=1.0)
    lib = similarity_cam(rn_model, images[0], images[1], layer=RN_LAYER)
    return fast, plain, lib


# --- target, layers, grid --------------------------------------------------------------------------
def test_similarity_target_is_scaled_cosine():
    ref = torch.tensor([3.0, 4.0])
    out = torch.tensor([[4.0, 3.0], [0.0, 2.0]])
    t = SimilarityTarget(ref, scale=7.0)
    expected = 7.0 * (out @ ref) / (out.norm(dim=1) * ref.norm())
    assert torch.allclose(t(out), expected)
    assert torch.allclose(t(out[0]), expected[0])   # ScoreCAM passes single [D] outputs


def test_default_layers_per_tower(micro_model, rn_model):
    last_ln = micro_model.visual.get_submodule("transformer.resblocks.1.ln_1")
    assert last_ln is micro_model.get_submodule(default_target_layer(micro_model))
    assert default_target_layer(micro_model) == "clip.visual.transformer.resblocks.1.ln_1"
    assert rn_model.get_submodule(default_target_layer(rn_model)) is rn_model.visual.layer4[-1]
    # the resolution rules unit by unit (private: similarity_cam's layer= goes through it, but no public
    # result returns the module it resolved to)
    name, module = layers._resolve_layer(rn_model, "layer3.0")   # relative to the image tower
    assert module is rn_model.visual.layer3[0] and name == "clip.visual.layer3.0"
    with pytest.raises(ValueError, match="not a submodule"):
        layers._resolve_layer(rn_model, "layer9")
    with pytest.raises(ValueError, match="image tower"):
        layers._resolve_layer(micro_model, "clip.transformer.resblocks.0")   # a text-tower layer never runs


def test_token_grid_from_model_and_reshape(micro_model, tiny_model):
    # private: the token -> [C, rows, cols] order is checked against the tokens themselves, which no
    # public result exposes
    assert layers._token_grid(micro_model) == (32 // 8, 16 // 8)
    assert layers._token_grid(tiny_model) == (96 // 8, 48 // 8)
    rows, cols = layers._token_grid(micro_model)
    tokens = torch.randn(2, 1 + rows * cols, 5)
    grid = layers._reshape_for(micro_model)(tokens)
    assert grid.shape == (2, 5, rows, cols)
    for r in range(rows):
        for c in range(cols):   # patch tokens are row-major after the class token
            assert torch.equal(grid[:, :, r, c], tokens[:, 1 + r * cols + c])
    seq_first = layers._ToGrid((rows, cols), batch_first=False)(tokens.transpose(0, 1))
    assert torch.equal(seq_first, grid)


# --- maps ------------------------------------------------------------------------------------------
def test_map_shape_range_and_similarity(micro_model, images):
    a, b = images[0], images[3]
    cam = similarity_cam(micro_model, a, b, symmetric=True)
    assert cam.map_a.shape == (a.size[1], a.size[0]) and cam.map_b.shape == (b.size[1], b.size[0])
    assert cam.input_map_a.shape == micro_model.image_size == cam.input_map_b.shape
    for m in (cam.map_a, cam.map_b, cam.input_map_a):
        assert m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1 + 1e-6
    assert cam.input_map_a.min() == pytest.approx(0, abs=1e-6) and cam.input_map_a.max() == pytest.approx(1, abs=1e-5)
    with torch.no_grad():
        e = micro_model.encode_image(torch.stack([micro_model.preprocess(a), micro_model.preprocess(b)]))
    assert cam.similarity == pytest.approx(float(e[0] @ e[1]), abs=1e-5)
    assert cam.scale == pytest.approx(float(micro_model.logit_scale.detach().exp()))
    assert cam.grid == (4, 2)   # 32x16 pixels, patch 8
    assert "similarity=" in repr(cam)


def test_map_back_to_letterboxed_image(tiny_model):
    """A map marking a square in model-input coordinates lands on the same square of the original.
    (Private ``_to_image``: a hand-made map at input resolution, which no public entry point accepts.)"""
    img = Image.new("RGB", (70, 90), (0, 0, 0))   # wider than the model's 1:2, so it is letterboxed
    ImageDraw.Draw(img).rectangle([10, 50, 40, 75], fill=(255, 255, 255))
    x = tiny_model.preprocess(img)
    white = ((x - x.min()) > 0.5 * (x.max() - x.min())).all(0).numpy().astype(np.float32)
    assert white[0].sum() == 0 and white[-1].sum() == 0   # padding rows above and below
    back = inputs._to_image(tiny_model, white, img) > 0.5
    truth = np.asarray(img)[..., 0] > 127
    iou = (back & truth).sum() / (back | truth).sum()
    assert back.shape == truth.shape and iou > 0.8


def test_map_depends_on_b_with_logit_scale(rn_maps, micro_model, images):
    fast, plain, _ = rn_maps
    scaled_change = 1 - pearson(fast[0].map_a, fast[1].map_a)
    plain_change = 1 - pearson(plain[0].map_a, plain[1].map_a)
    # a plain cosine gives near-uniform softmax weights: B barely matters; the logit scale makes it matter
    assert scaled_change > 10 * plain_change
    assert np.abs(fast[0].map_a - fast[1].map_a).max() > 0.02
    vit = similarity_cams(micro_model, images[0], [images[1], images[4]])
    assert pearson(vit[0].map_a, vit[1].map_a) < 0.99


def test_fast_path_equals_library_vit(micro_model, images):
    lib = similarity_cam(micro_model, images[0], images[2], symmetric=True)
    fast = similarity_cam(micro_model, images[0], images[2], symmetric=True, fast=True)
    assert fast.method == "scorecam-fast" and lib.method == "scorecam"
    assert pearson(lib.input_map_a, fast.input_map_a) >= 0.99
    assert pearson(lib.input_map_b, fast.input_map_b) >= 0.99
    assert np.abs(lib.map_a - fast.map_a).max() < 1e-3


def test_fast_path_equals_library_resnet(rn_maps):
    fast, _, lib = rn_maps
    assert pearson(lib.input_map_a, fast[0].input_map_a) >= 0.99
    assert fast[0].similarity == pytest.approx(lib.similarity, abs=1e-5)


def reference_score_cam(model, x: torch.Tensor, reference: torch.Tensor, layer: nn.Module, scale: float) -> np.ndarray:
    """Score-CAM from its definition, one channel at a time (Wang et al. 2020, as pytorch_grad_cam
    normalises); a channel with constant activation gets an all-zero mask. (Uses the private token
    reshape so that the reference reads the very channels the fast path masks.)"""
    store = []
    handle = layer.register_forward_hook(lambda m, i, o: store.append(o))
    with torch.no_grad():
        model(x[None])
        handle.remove()
        acts = layers._reshape_for(model)(store[0])[0]
        H, W = x.shape[-2:]
        scores = []
        for c in range(acts.shape[0]):
            up = F.interpolate(acts[c][None, None], size=(H, W), mode="bilinear", align_corners=True)[0, 0]
            mask = torch.zeros_like(up) if acts[c].min() == acts[c].max() else (up - up.min()) / (up.max() - up.min() + 1e-8)
            scores.append(scale * F.cosine_similarity(model(x[None] * mask), reference[None])[0])
        w = torch.stack(scores).softmax(0)
        cam = (w[:, None, None] * acts).sum(0).clamp_min(0)
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
        cam = F.interpolate(cam[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    return ((cam - cam.min()) / (cam.max() - cam.min() + 1e-7)).numpy()


def test_constant_channels_share_one_blank_pass(images):
    """Channels with constant activation are not masked one by one but scored by one blank image;
    the map equals Score-CAM's definition, and the library's when the constants are exact zeros."""
    model = make_model("cliptk-micro", seed=1, image_only=True)   # a fresh one: its ln_1 is edited below
    ln = model.visual.transformer.resblocks[-1].ln_1
    with torch.no_grad():
        ln.weight[:12] = 0
        ln.bias[:12] = 0.0
    lib = similarity_cam(model, images[0], images[1])
    fast = similarity_cam(model, images[0], images[1], fast=True)
    assert pearson(lib.input_map_a, fast.input_map_a) >= 0.999
    with torch.no_grad():
        ln.bias[:12] = torch.linspace(-1, 1, 12)   # constant, non-zero: the library's masks turn to noise
        ref_b = model(fast.input_b[None])[0]
    fast = similarity_cam(model, images[0], images[1], fast=True)
    ref = reference_score_cam(model, fast.input_a, ref_b, ln, fast.scale)
    assert np.abs(fast.input_map_a - ref).max() < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_path_on_cuda_with_amp_matches_library(images):
    model = make_model("cliptk-tiny", image_only=True, device="cuda").to(torch.bfloat16)
    lib = similarity_cam(model, images[0], images[1])
    fast = similarity_cams(model, images[0], images[1:3])   # bf16 autocast, batches of 256, fp32 dot products
    assert pearson(lib.input_map_a, fast[0].input_map_a) >= 0.99
    assert next(model.parameters()).dtype == torch.bfloat16 and all_hooks(model) == 0


def test_k_maps_in_one_pass_equal_single_pairs(micro_model, images):
    many = similarity_cams(micro_model, images[0], images[1:5])
    assert [c.image_b for c in many] == images[1:5]
    for i, cam in enumerate(many):
        one = similarity_cam(micro_model, images[0], images[1 + i], fast=True)
        assert np.allclose(cam.map_a, one.map_a, atol=1e-5)
        assert cam.similarity == pytest.approx(one.similarity, abs=1e-6)


def test_approximate_mode(micro_model, images):
    exact = similarity_cams(micro_model, images[0], images[1:3])
    full = similarity_cams(micro_model, images[0], images[1:3], top_channels=1.0)
    n_channels = micro_model.visual.transformer.width
    assert full[0].channels == n_channels and np.allclose(full[0].map_a, exact[0].map_a, atol=1e-6)
    approx = similarity_cams(micro_model, images[0], images[1:3], top_channels=0.25)
    assert approx[0].channels == math.ceil(0.25 * n_channels) and approx[0].method == "scorecam-approx"
    assert similarity_cams(micro_model, images[0], images[1:2], top_channels=5)[0].channels == 5
    assert approx[0].map_a.shape == exact[0].map_a.shape and 0 <= approx[0].map_a.min() <= approx[0].map_a.max() <= 1


def count_images(model):
    """A forward pre-hook counting the images that enter the image tower; returns (counter, handle)."""
    seen = [0]
    handle = model.visual.register_forward_pre_hook(lambda _m, args: seen.__setitem__(0, seen[0] + args[0].shape[0]))
    return seen, handle


def test_channel_groups_follow_correlation():
    """Channels that are positive affine copies of one pattern (the same min-max mask) form one group,
    whatever their scale and offset; copies of different patterns do not mix. (Private
    ``_channel_groups`` on synthetic activations: the public result only reports the group count.)"""
    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(3, 6, 4, generator=g)
    family = torch.arange(12) % 3
    scale = 0.5 + 3 * torch.rand(12, 1, 1, generator=g)
    offset = 4 * torch.rand(12, 1, 1, generator=g) - 2
    acts = scale * patterns[family] + offset + 1e-3 * torch.randn(12, 6, 4, generator=g)
    labels = scorecam._channel_groups(acts, 3)
    assert sorted(labels.tolist()) == sorted(family.tolist())                     # three groups of four
    assert all(len(set(labels[family == f].tolist())) == 1 for f in range(3))     # one family, one group
    assert len(set(scorecam._channel_groups(acts, 6).tolist())) == 6


def reference_group_cam(model, x, acts, reference, labels, scale):
    """Grouped Score-CAM from its definition, one group at a time: a group's mask is the mean of its
    channels' min-max masks, and every channel is weighted by softmax over channels of its group's score."""
    H, W = x.shape[-2:]
    with torch.no_grad():
        scores = torch.empty(acts.shape[0])
        for j in labels.unique():
            members = torch.nonzero(labels == j).flatten()
            masks = []
            for c in members:
                up = F.interpolate(acts[c][None, None], size=(H, W), mode="bilinear", align_corners=True)[0, 0]
                masks.append((up - up.min()) / (up.max() - up.min() + 1e-8))
            masked = x[None] * torch.stack(masks).mean(0)
            scores[members] = scale * F.cosine_similarity(model(masked), reference[None])[0]
        cam = (scores.softmax(0)[:, None, None] * acts).sum(0).clamp_min(0)
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
        cam = F.interpolate(cam[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    return ((cam - cam.min()) / (cam.max() - cam.min() + 1e-7)).numpy()


def test_approximate_mode_scores_one_image_per_group(micro_model, images):
    """The grouped map equals a one-group-at-a-time reference, and A costs one masked image per group
    instead of one per channel (counted at the image tower); B's images are embedded once either way.
    (The reference takes the private token reshape and channel grouping as given: it checks the
    scoring and weighting of the groups, not how they are formed.)"""
    n_b, k = 3, 6
    seen, handle = count_images(micro_model)
    try:
        exact = similarity_cams(micro_model, images[0], images[1:1 + n_b])
        n_exact, seen[0] = seen[0], 0
        approx = similarity_cams(micro_model, images[0], images[1:1 + n_b], top_channels=k, approx="groups")
        n_approx = seen[0]
    finally:
        handle.remove()
    assert n_exact == 1 + n_b + micro_model.visual.transformer.width and n_approx == 1 + n_b + k
    store = []
    layer = micro_model.get_submodule(default_target_layer(micro_model))
    with layers._hook(layer, store), torch.no_grad():
        x = approx[0].input_a
        micro_model(x[None])
        refs = micro_model(torch.stack([c.input_b for c in approx]))
    acts = layers._reshape_for(micro_model)(store[0])[0]
    labels = scorecam._channel_groups(acts, k)
    for cam, ref in zip(approx, refs):
        assert np.abs(cam.input_map_a - reference_group_cam(micro_model, x, acts, ref, labels, cam.scale)).max() < 1e-4
    assert approx[0].similarity == pytest.approx(exact[0].similarity, abs=1e-6)


def test_approximate_mode_is_exact_for_copied_channels(micro_model, images):
    """When the channels are affine copies of k patterns, k groups lose nothing: the map equals the
    exact fast path's (called here on given activations, with constant channels sharing the blank pass).
    (Private ``_fast_maps`` in ``_cam_mode``: synthetic activations, which no public entry point takes.)"""
    x = micro_model.preprocess(images[0])
    refs = micro_model(torch.stack([micro_model.preprocess(i) for i in images[1:4]])).detach()
    g = torch.Generator().manual_seed(1)
    patterns = torch.randn(4, 4, 2, generator=g)
    family = torch.arange(20) % 4
    acts = (0.5 + torch.rand(20, 1, 1, generator=g)) * patterns[family] + torch.randn(20, 1, 1, generator=g)
    acts[-2:] = torch.tensor([0.0, 0.7])[:, None, None]   # two constant channels: scored by the blank image
    seen, handle = count_images(micro_model)
    try:
        with layers._cam_mode(micro_model):
            exact, n = scorecam._fast_maps(micro_model, x, acts, refs, CamConfig(), 30.0)
            n_exact, seen[0] = seen[0], 0
            grouped, k = scorecam._fast_maps(micro_model, x, acts, refs, CamConfig(top_channels=4, approx="groups"),
                                             30.0)
            n_grouped, seen[0] = seen[0], 0
            # gradient mode, 6 images: the blank one, 4 groups (4 = 5 - 5 // 4) and 1 exact channel per B
            graded, k_graded = scorecam._fast_maps(micro_model, x, acts, refs, CamConfig(top_channels=6), 30.0)
    finally:
        handle.remove()
    assert (n, n_exact) == (20, 18 + 1) and (k, n_grouped) == (4, 4 + 1)
    assert np.abs(grouped - exact).max() < 1e-4
    # a group of copies has no first-order correction (every member's mask is the group's mask)
    assert k_graded == 6 and 4 + 1 + 1 <= seen[0] <= 4 + 1 + len(refs)
    assert np.abs(graded - exact).max() < 1e-4


@pytest.mark.parametrize("model_name, groups", [("tiny_model", 8), ("rn_model", 16)])
def test_approximate_mode_agrees_with_exact(model_name, groups, request):
    """Few groups on random-init towers and synthetic players (ViT: 128 channels in 8 groups; ResNet
    layer4: 512 channels, many of them constant after the ReLU, in 16 groups): median r >= 0.98 with the
    exact map. (Trained towers are harder: benchmarks/bench_scorecam.py measures them; the numbers
    are in benchmarks/RESULTS.md.)"""
    model = request.getfixturevalue(model_name)
    rng = np.random.default_rng(0)
    players = [render_player(p, rng, camera=1) for p in make_players(6, seed=0)]
    exact = similarity_cams(model, players[0], players[1:])
    approx = similarity_cams(model, players[0], players[1:], top_channels=groups, approx="groups")
    assert approx[0].channels == groups
    assert np.median([pearson(a.input_map_a, e.input_map_a) for a, e in zip(approx, exact)]) >= 0.98


def test_gradient_mode_with_the_whole_budget_is_exact(micro_model, images):
    """``approx="gradient"`` with a budget of every channel is the exact fast path (the same map)."""
    exact = similarity_cams(micro_model, images[0], images[1:3])
    full = similarity_cams(micro_model, images[0], images[1:3], top_channels=1.0, approx="gradient")
    assert full[0].method == "scorecam-approx" and full[0].channels == exact[0].channels
    for f, e in zip(full, exact):
        assert np.allclose(f.map_a, e.map_a, atol=1e-6)


def test_gradient_mode_stays_within_the_budget(micro_model, images):
    """One pair costs A, B and at most ``k`` masked images at the image tower (the group images pass
    once, with gradients); several B's share the group images and embed the union of their exact
    channels once, and each map equals its pair's own map (independent of the other B's)."""
    n_channels = micro_model.visual.transformer.width
    seen, handle = count_images(micro_model)
    try:
        for k in (1, 2, 4, 5, 8, n_channels // 8):
            seen[0] = 0
            one = similarity_cams(micro_model, images[0], images[1:2], top_channels=k)
            assert one[0].channels <= k and seen[0] <= 2 + k, (k, seen[0])
        k, n_b = 8, 3
        seen[0] = 0
        many = similarity_cams(micro_model, images[0], images[1:1 + n_b], top_channels=k)
        groups = k - k // 4
        assert seen[0] <= 1 + n_b + groups + n_b * (k - groups)
    finally:
        handle.remove()
    for i, cam in enumerate(many):
        alone = similarity_cams(micro_model, images[0], [images[1 + i]], top_channels=k)[0]
        assert np.abs(cam.input_map_a - alone.input_map_a).max() < 1e-4


def test_gradient_mode_first_order_prediction(micro_model, images):
    """Without exact channels (``k <= 3``), each channel's score is its group's score plus the
    gradient of that score along the channel's mask offset: checked against a central finite
    difference of the group image's score (private ``_gradient_scores``: the public result only
    reports maps)."""
    x = micro_model.preprocess(images[0])
    refs = F.normalize(micro_model(torch.stack([micro_model.preprocess(i) for i in images[1:3]])).detach(), dim=-1).T
    g = torch.Generator().manual_seed(2)
    acts = torch.randn(10, 4, 2, generator=g)
    H, W = x.shape[-2:]
    up = F.interpolate(acts[None], size=(H, W), mode="bilinear", align_corners=True)[0].flatten(1)
    lo, hi = up.min(1, keepdim=True).values, up.max(1, keepdim=True).values
    masks = (up - lo) / (hi - lo + 1e-8)
    with layers._cam_mode(micro_model):
        scores, n, per_map = scorecam._gradient_scores(micro_model, x, acts, masks, refs, 3, 30.0, 32, False, False)
        labels = scorecam._channel_groups(acts, 3)
        centres = scorecam._group_masks(masks, labels)

        def score(m):
            with torch.no_grad():
                return 30.0 * F.normalize(micro_model(x[None] * m.view(1, 1, H, W)), dim=-1)[0] @ refs

        eps = 1e-2
        for c in range(len(acts)):
            centre, offset = centres[labels[c]], masks[c] - centres[labels[c]]
            fd = (score(centre + eps * offset) - score(centre - eps * offset)) / (2 * eps)
            assert torch.allclose(scores[c], score(centre) + fd, atol=2e-3), c
    assert n == per_map == 3


@pytest.mark.parametrize("model_name, budget", [("tiny_model", 16), ("rn_model", 64)])
def test_gradient_mode_agrees_with_exact(model_name, budget, request):
    """1/8 of the exact masked images (ViT 128 channels: 16; ResNet layer4 512 channels: 64) on
    random-init towers and synthetic players: the worst of 5 pairs agrees with the exact map at
    r >= 0.97. (Trained towers: benchmarks/bench_scorecam.py --towers.)"""
    model = request.getfixturevalue(model_name)
    rng = np.random.default_rng(0)
    players = [render_player(p, rng, camera=1) for p in make_players(6, seed=0)]
    exact = similarity_cams(model, players[0], players[1:])
    approx = [similarity_cams(model, players[0], [b], top_channels=budget)[0] for b in players[1:]]
    assert all(a.channels <= budget for a in approx)
    r = [pearson(a.input_map_a, e.input_map_a) for a, e in zip(approx, exact)]
    assert min(r) >= 0.97


def test_gradcam_of_the_same_similarity(micro_model, rn_model, images):
    for model, layer in ((micro_model, None), (rn_model, RN_LAYER)):
        cam = similarity_cam(model, images[0], images[1], method="gradcam", layer=layer, symmetric=True)
        assert cam.method == "gradcam" and cam.map_a.shape == (images[0].size[1], images[0].size[0])
        assert np.isfinite(cam.map_a).all() and cam.input_map_a.max() == pytest.approx(1, abs=1e-5)
        assert all(p.grad is None for p in model.parameters())


# --- resources and dtypes ----------------------------------------------------------------------------
def test_hooks_released_and_state_restored(micro_model, images, monkeypatch):
    micro_model.train()
    flags = [p.requires_grad for p in micro_model.parameters()]
    for _ in range(2):
        similarity_cam(micro_model, images[0], images[1])
        similarity_cam(micro_model, images[0], images[1], method="gradcam")
        similarity_cams(micro_model, images[0], images[1:3])
        faithfulness(micro_model, similarity_cam(micro_model, images[0], images[1], fast=True), steps=2, n_random=1)
    assert all_hooks(micro_model) == 0

    def boom(self, x):
        raise RuntimeError("reshape failed")

    # private: a fault injected inside the library's hook, mid-forward, where no public input can fail
    monkeypatch.setattr(layers._ToGrid, "__call__", boom)
    for fast in (False, True):
        with pytest.raises(RuntimeError, match="reshape failed"):   # not swallowed like the library's IndexError
            similarity_cam(micro_model, images[0], images[1], fast=fast)
    assert all_hooks(micro_model) == 0
    assert micro_model.training and [p.requires_grad for p in micro_model.parameters()] == flags
    micro_model.eval()


def test_fp32_under_bf16_and_dtype_restored(images):
    half = make_model("cliptk-micro", seed=2, image_only=True).to(torch.bfloat16)
    full = make_model("cliptk-micro", image_only=True)
    full.load_state_dict({k: v.float() for k, v in half.state_dict().items()})   # same (rounded) weights
    first = next(half.parameters())
    marker = torch.ones_like(first)
    first.grad = marker
    seen = []
    handle = half.visual.transformer.resblocks[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        for fast in (False, True):
            got = similarity_cam(half, images[0], images[1], fast=fast)
            ref = similarity_cam(full, images[0], images[1], fast=fast)
            assert np.allclose(got.input_map_a, ref.input_map_a, atol=1e-4)
            assert got.similarity == pytest.approx(ref.similarity, abs=1e-6)
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.float32}
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    assert all(b.dtype == torch.bfloat16 for b in half.buffers() if b.is_floating_point())
    assert half.dtype == torch.bfloat16 and first.grad is marker


# --- inputs and options -------------------------------------------------------------------------------
def test_dataset_indices_tensors_and_errors(micro_model, tmp_path):
    ds = noise_dataset(tmp_path, n=4, n_ids=2, seed=10)
    q, g = ds.subset("query"), ds.subset("gallery")
    by_index = similarity_cam(micro_model, 1, 0, dataset=(q, g), fast=True)
    by_image = similarity_cam(micro_model, q[1], g[0], fast=True)
    assert np.allclose(by_index.map_a, by_image.map_a) and by_index.label_b == f"{g.name}[0] pid 0"
    x_a, x_b = micro_model.preprocess(q[1]), micro_model.preprocess(g[0])
    by_tensor = similarity_cam(micro_model, x_a, x_b[None], fast=True)
    assert by_tensor.map_a.shape == micro_model.image_size and np.allclose(by_tensor.map_a, by_image.input_map_a)
    top = explain_topk(micro_model, 1, g, k=2, dataset=q)
    with torch.no_grad():
        e = micro_model.encode_image(torch.stack([x_a] + [micro_model.preprocess(g[i]) for i in range(len(g))]))
    best = int(torch.argmax(e[1:] @ e[0]))
    assert len(top) == 2 and top[0].label_b == f"{g.name}[{best}] pid {g.pids[best]}" and top[0].label_a == by_index.label_a
    with pytest.raises(TypeError, match="dataset="):
        similarity_cam(micro_model, 0, 1)
    with pytest.raises(IndexError, match="out of range"):
        similarity_cam(micro_model, 0, 9, dataset=ds)
    with pytest.raises(ValueError, match=r"\[3, 32, 16\]"):
        similarity_cam(micro_model, torch.zeros(3, 8, 8), x_b)
    with pytest.raises(TypeError, match="unknown explanation option"):
        similarity_cam(micro_model, x_a, x_b, bacth_size=4)
    with pytest.raises(ValueError, match="fast=True"):
        similarity_cam(micro_model, x_a, x_b, fast=False, top_channels=4)
    with pytest.raises(ValueError, match="Score-CAM only"):
        similarity_cams(micro_model, x_a, [x_b], method="gradcam")
    with pytest.raises(ValueError, match="top_channels"):
        CamConfig(top_channels=0)
    with pytest.raises(ValueError, match="approx"):
        CamConfig(approx="random")


def test_defaults_per_device_and_tower(micro_model, monkeypatch):
    """Tiny towers and every CUDA device: exact; a large tower on the CPU: approximate fast path.
    The explicit options always win; ``top_channels=None`` is exact everywhere."""
    assert CamConfig().for_model(micro_model) == CamConfig(fast=False, top_channels=None)
    small = micro_model.visual
    monkeypatch.setattr(cost, "LARGE_TOWER", sum(p.numel() for p in small.parameters()) - 1)   # micro is "large"
    assert CamConfig().for_model(micro_model) == CamConfig(fast=True, top_channels=cost.AUTO_GROUPS)
    assert CamConfig().for_model(micro_model, device="cuda") == CamConfig(fast=False, top_channels=None)
    assert CamConfig(fast=True).for_model(micro_model, device="cuda").top_channels is None
    assert CamConfig(fast=False).for_model(micro_model) == CamConfig(fast=False, top_channels=None)
    assert CamConfig(top_channels=None).for_model(micro_model) == CamConfig(fast=False, top_channels=None)
    assert CamConfig(top_channels=8).for_model(micro_model, device="cuda") == CamConfig(fast=True, top_channels=8)
    assert CamConfig(method="gradcam").for_model(micro_model) == CamConfig(method="gradcam", fast=False,
                                                                             top_channels=None)
    a, b = noise_image(0), noise_image(1)
    assert similarity_cam(micro_model, a, b).method == "scorecam-approx"     # the entry points apply the rule
    assert similarity_cam(micro_model, a, b, top_channels=None).method == "scorecam"
    monkeypatch.undo()
    assert similarity_cam(micro_model, a, b).method == "scorecam"


@pytest.mark.parametrize("fast", [True, False])
def test_long_exact_maps_show_progress_and_say_how_to_speed_up(micro_model, images, monkeypatch, capsys, fast):
    """With micro counted as a large tower and 4 masked images a batch, its 32 channels make 8
    batches: a long map. The bar goes to stderr; the hint (a warning) comes once per model."""
    a, b = images[0], images[1]
    quiet = similarity_cam(micro_model, a, b, fast=fast, top_channels=None, batch_size=4)    # a small tower
    assert "Score-CAM" not in capsys.readouterr().err
    monkeypatch.setattr(cost, "LARGE_TOWER", 0)
    monkeypatch.setattr(layers, "_HINTED", set())
    with pytest.warns(UserWarning, match=rf"exact Score-CAM of cliptk-micro on the CPU.*fast=True, "
                                         rf"top_channels={cost.AUTO_GROUPS}"):
        cam = similarity_cam(micro_model, a, b, fast=fast, top_channels=None, batch_size=4)
    err = capsys.readouterr().err
    assert "Score-CAM" in err and "/8 " in err                                           # a bar over 8 batches
    assert np.array_equal(cam.map_a, quiet.map_a)                                        # the same map
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                                   # said once
        similarity_cam(micro_model, a, b, fast=fast, top_channels=None, batch_size=4, progress=False)
    assert "Score-CAM" not in capsys.readouterr().err
    similarity_cam(micro_model, a, b, fast=True, top_channels=2, batch_size=4)           # approximate: 1 batch
    assert "Score-CAM" not in capsys.readouterr().err
    similarity_cam(micro_model, a, b, fast=fast, top_channels=None, batch_size=32, progress=True)   # asked for
    assert "Score-CAM" in capsys.readouterr().err


def test_config_yaml_round_trip():
    import dataclasses

    import yaml

    cfg = CamConfig(method="scorecam", fast=True, layer="layer4.0", scale=30.0, batch_size=8, top_channels=0.25,
                    approx="groups")
    assert CamConfig(**yaml.safe_load(yaml.safe_dump(dataclasses.asdict(cfg)))) == cfg
    assert CamConfig.from_options({"scale": 2.0}, batch_size=4) == CamConfig(scale=2.0, batch_size=4)
    with pytest.raises(ValueError, match="Grad-CAM"):
        CamConfig(method="gradcam", fast=True)


def test_batch_size_is_an_argument(micro_model, images, monkeypatch):
    import pytorch_grad_cam

    seen = []
    orig = pytorch_grad_cam.ScoreCAM.get_cam_weights
    monkeypatch.setattr(pytorch_grad_cam.ScoreCAM, "get_cam_weights",
                        lambda self, *a: seen.append(self.batch_size) or orig(self, *a))
    a = similarity_cam(micro_model, images[0], images[1], batch_size=5)
    b = similarity_cam(micro_model, images[0], images[1], batch_size=32)
    assert seen == [5, 32] and np.allclose(a.map_a, b.map_a, atol=1e-5)


def test_explain_topk_ranks_gallery(micro_model, images):
    gallery = images[1:]
    cams = explain_topk(micro_model, images[0], gallery, k=3)
    with torch.no_grad():
        e = micro_model.encode_image(torch.stack([micro_model.preprocess(i) for i in images]))
    order = torch.argsort(e[1:] @ e[0], descending=True)[:3].tolist()
    assert [c.label_b for c in cams] == [f"gallery[{i}]" for i in order]
    assert [c.similarity for c in cams] == sorted([c.similarity for c in cams], reverse=True)
    ref = similarity_cams(micro_model, images[0], [gallery[i] for i in order])
    assert all(np.allclose(c.map_a, r.map_a, atol=1e-5) for c, r in zip(cams, ref))


# --- faithfulness -------------------------------------------------------------------------------------
def test_faithfulness_curves_match_brute_force(micro_model, images):
    cam = similarity_cam(micro_model, images[0], images[1], fast=True)
    steps = 4
    f = faithfulness(micro_model, cam, steps=steps, n_random=2, seed=0)
    x = cam.input_a
    with torch.no_grad():
        ref = micro_model.encode_image(cam.input_b[None])[0]
        order = np.argsort(-cam.input_map_a.ravel(), kind="stable")
        blurred = deletion._blur(x[None])[0]   # private: the insertion baseline is part of the definition
        for i, frac in enumerate(np.linspace(0, 1, steps + 1)):
            top = np.zeros(x.shape[1] * x.shape[2], bool)
            top[order[:round(frac * top.size)]] = True
            top = torch.from_numpy(top.reshape(x.shape[1:]))
            deleted = torch.where(top, torch.zeros_like(x), x)
            inserted = torch.where(top, x, blurred)
            assert f.deletion[i] == pytest.approx(float(micro_model.encode_image(deleted[None])[0] @ ref), abs=1e-5)
            assert f.insertion[i] == pytest.approx(float(micro_model.encode_image(inserted[None])[0] @ ref), abs=1e-5)
    assert f.deletion[0] == pytest.approx(cam.similarity, abs=1e-5) == f.insertion[-1]
    assert f.random_deletion[0] == pytest.approx(f.deletion[0]) and f.random_deletion[-1] == pytest.approx(f.deletion[-1])
    assert f.deletion_auc == pytest.approx(np.trapezoid(f.deletion, f.fractions))
    assert f.deletion_gain == pytest.approx(f.random_deletion_auc - f.deletion_auc)


class _TopLeftEncoder(nn.Module):
    """Embeds only the top-left quarter of the image: the ground truth for a faithfulness check."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 16 * 8, 24)
        torch.manual_seed(3)
        nn.init.normal_(self.proj.weight)

    def forward(self, x):
        return F.normalize(self.proj(x[:, :, :16, :8].flatten(1)), dim=-1)


def test_faithfulness_prefers_a_truthful_map(micro_model, images):
    cam = similarity_cam(micro_model, images[0], images[0], fast=True)   # B = A: similarity 1 to start from
    truth = np.zeros(micro_model.image_size, np.float32)
    truth[:16, :8] = np.linspace(1, 0.5, 16 * 8).reshape(16, 8)
    wrong = 1.0 - truth   # ranks the pixels that matter last
    encoder = _TopLeftEncoder()
    for order in ("smooth", "pixel"):
        good = faithfulness(encoder, cam, saliency=truth, steps=8, n_random=4, random_order=order)
        bad = faithfulness(encoder, cam, saliency=wrong, steps=8, n_random=4, random_order=order)
        assert good.deletion_auc < good.random_deletion_auc < bad.deletion_auc
        assert good.insertion_auc > good.random_insertion_auc > bad.insertion_auc
        assert good.deletion_gain > 0 > bad.deletion_gain


def test_faithfulness_errors(micro_model, images):
    cam = similarity_cam(micro_model, images[0], images[1], fast=True)
    with pytest.raises(ValueError, match="symmetric=True"):
        faithfulness(micro_model, cam, which="b")
    with pytest.raises(ValueError, match="shape"):
        faithfulness(micro_model, cam, saliency=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="random_order"):
        faithfulness(micro_model, cam, random_order="noise")


# --- pairs and pictures -------------------------------------------------------------------------------
def test_select_pairs_against_loops():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(5, 4)), rng.normal(size=(9, 4))
    qp, gp = np.array([0, 1, 2, 3, 9]), np.array([0, 0, 1, 1, 2, 2, 3, 3, 4])
    qn, gn = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
    s = qn @ gn.T
    wrong = [(i, max((j for j in range(9) if gp[j] != qp[i]), key=lambda j: s[i, j])) for i in range(5)]
    wrong.sort(key=lambda p: -s[p])
    assert [(i, j) for i, j, _ in select_pairs(q, g, qp, gp, kind="hardest_wrong", n=3)] == wrong[:3]
    right = [(i, min((j for j in range(9) if gp[j] == qp[i]), key=lambda j: s[i, j])) for i in range(4)]
    right.sort(key=lambda p: s[p])   # query 4 (pid 9) has no match and is left out
    got = select_pairs(q, g, qp, gp, kind="hardest_right", n=10)
    assert [(i, j) for i, j, _ in got] == right and got[0][2] == pytest.approx(s[right[0]])
    top = select_pairs(q, g, qp, gp, kind="top_matches", n=5)
    assert [j for _, j, _ in sorted(top)] == list(s.argmax(1))
    with pytest.raises(ValueError, match="kind"):
        select_pairs(q, g, qp, gp, kind="best")


def test_figures_render_to_html(micro_model, images):
    import plotly.graph_objects as go

    cams = similarity_cams(micro_model, images[0], images[1:4], symmetric=True)
    pair = plot_cam_pair(cams[0])
    kinds = [type(t).__name__ for t in pair.data]
    assert kinds == ["Image", "Heatmap", "Image", "Heatmap"] and isinstance(pair, go.Figure)
    z = np.asarray(pair.data[1].z)
    assert z.dtype == np.uint8 and z.max() <= 100 and max(z.shape) <= 64   # compact heatmap in whole percent
    assert z.shape == cams[0].map_a.shape   # a small image keeps its own size
    grid = plot_cam_grid(cams, pairs_per_row=2)
    assert len(grid.data) == 12 and grid.layout.annotations[0].text.startswith(f"sim {cams[0].similarity:.3f}")
    one_sided = plot_cam_grid([similarity_cam(micro_model, images[0], images[1], fast=True)])
    assert [type(t).__name__ for t in one_sided.data] == ["Image", "Heatmap", "Image"]
    f = faithfulness(micro_model, cams[0], steps=3, n_random=1)
    curves = plot_faithfulness([f, f])
    assert len(curves.data) == 8
    for fig in (pair, grid, curves):
        html = fig.to_html(include_plotlyjs=False, full_html=False)
        assert "Plotly.newPlot" in html and "<script src" not in html
    assert "cdn.plot.ly" in pair.to_html(include_plotlyjs="cdn")
    with pytest.raises(ValueError, match="no explanations"):
        plot_cam_grid([])
    assert isinstance(f, Faithfulness) and "deletion AUC" in repr(f)


# --- widget ---------------------------------------------------------------------------------------------
def test_pair_picker_widget(micro_model, tmp_path):
    ds = noise_dataset(tmp_path, n=6, n_ids=3, seed=20)
    picker = CamPairPicker(micro_model, ds)
    seen = []
    picker.on_result(seen.append)
    cam = picker.select(1, 4)
    assert cam is picker.result and seen == [cam] and cam.label_a.endswith("[1] pid 1")
    ref = similarity_cam(micro_model, 1, 4, dataset=ds, symmetric=True)
    assert pearson(cam.input_map_a, ref.input_map_a) >= 0.99 and cam.map_b is not None
    # gallery ordered by similarity to the query (rank 1 first), and the rank slider walks it
    with torch.no_grad():
        e = micro_model.encode_image(torch.stack([micro_model.preprocess(ds[i]) for i in range(6)]))
    expected = [2 + int(j) for j in torch.argsort(e[2:] @ e[1], descending=True)]
    assert [v for _, v in picker.gallery.options] == expected
    new_rank = 1 if picker.gallery.index == 0 else 0
    picker.rank.value = new_rank
    g = expected[new_rank]
    assert picker.gallery.value == g and picker.result.label_b.endswith(f"[{g}] pid {g % 3}")
    picker.method.value = "gradcam"
    assert picker.result.method == "gradcam" and len(seen) == 3
    with pytest.raises(ValueError, match="query split"):
        picker.select(4)
    with pytest.raises(KeyError, match="splits are"):
        CamPairPicker(micro_model, ds, query_split="val")
    assert all_hooks(micro_model) == 0
