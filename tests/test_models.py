"""Model loading: tiny configs, CLIP-ReIdent options, checkpoints and offline errors."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import cliptk as ct
from conftest import make_model


def test_tiny_configs_registered_and_run():
    assert {"cliptk-tiny", "cliptk-tiny-rn", "cliptk-micro"} <= set(ct.models.list_models())
    for name, tower in (("cliptk-micro", "vit"), ("cliptk-tiny-rn", "resnet")):
        m = ct.load_model(name, None)
        x = torch.randn(2, 3, *m.image_size)
        f = m.encode_image(x)
        assert f.shape == (2, m.embed_dim) and m.tower_type == tower
        assert torch.allclose(f.norm(dim=-1), torch.ones(2), atol=1e-5)
        t = m.encode_text(["a photo of a player in a red jersey with number 7"])
        assert t.shape == (1, m.embed_dim)


def test_letterbox_keeps_aspect_ratio(micro_model):
    # a wide white image letterboxed into a tall 32x16 frame: padded rows (black) above and below
    img = Image.new("RGB", (64, 16), (255, 255, 255))
    x = micro_model.preprocess(img)
    assert x.shape == (3, 32, 16)
    mean = torch.tensor(micro_model.mean)[:, None, None]
    std = torch.tensor(micro_model.std)[:, None, None]
    raw = x * std + mean
    assert raw[:, 0].max() < 0.05 and raw[:, -1].max() < 0.05  # padding rows
    assert raw[:, 16].min() > 0.9  # the image band in the middle
    squash = ct.load_model("cliptk-micro", None, resize="squash").preprocess(img) * std + mean
    assert squash.min() > 0.9  # no padding when squashing


def test_image_only_and_projection_removed(micro_model):
    m = ct.load_model("cliptk-micro", None, image_only=True, projection=False)
    assert m.image_only and m.tokenizer is None and not hasattr(m.clip, "transformer")  # no text tower kept
    assert m.embed_dim == m.visual.transformer.width  # the ViT's width, no projection
    with pytest.raises(RuntimeError, match="image_only"):
        m.encode_text(["x"])
    with pytest.raises(NotImplementedError, match="ViT"):
        ct.load_model("cliptk-tiny-rn", None, projection=False)


def test_save_and_load_roundtrip(tmp_path, micro_model):
    path = ct.save_model(micro_model, tmp_path / "m.safetensors")
    again = ct.load_model("cliptk-micro", path)
    x = torch.randn(3, 3, *micro_model.image_size)
    assert torch.equal(micro_model.encode_image(x), again.encode_image(x))
    # an image-only model loads from a full checkpoint (text keys ignored)
    img_only = ct.load_model("cliptk-micro", path, image_only=True)
    assert torch.equal(micro_model.encode_image(x), img_only.encode_image(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_load_rejects_wrong_architecture(tmp_path, micro_model):
    path = ct.save_model(micro_model, tmp_path / "m.safetensors")
    with pytest.raises(RuntimeError, match="m.safetensors"):
        ct.load_model("cliptk-tiny", path)


def test_unknown_names_and_tags():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        ct.load_model("nope", None)
    with pytest.raises(ValueError, match="no pretrained tag 'nope'.*openai"):
        ct.load_model("ViT-B-32", "nope")
    with pytest.raises(ValueError, match="no bundled"):
        ct.load_model("ViT-B-32")
    with pytest.raises(ct.WeightsNotAvailableError, match="not found.*ckpt.bin"):
        ct.load_model("cliptk-micro", "/nonexistent/ckpt.bin")


def test_missing_bundled_weights_say_how_to_make_them(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPTK_DATA", str(tmp_path))
    with pytest.raises(ct.WeightsNotAvailableError, match="pretrain_tiny_clip"):
        ct.load_model("cliptk-tiny", "synthetic-players")


def test_offline_open_clip_weights_error_says_what_to_do(tmp_path):
    # a fresh process with the hub offline and an empty cache: the error names model, tag and the fix
    code = ("import cliptk as ct\n"
            "try:\n    ct.load_model('ViT-B-32', 'openai')\n"
            "except ct.WeightsNotAvailableError as e:\n    print('MSG', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300).stdout
    assert "MSG" in out and "'ViT-B-32'" in out and "'openai'" in out
    assert "pretrained='/path/to/" in out and "open_clip.create_model" in out


def test_freeze(micro_model):
    m = ct.load_model("cliptk-micro", None)
    ct.models.freeze(m, text=True, image=False)
    assert all(p.requires_grad for p in m.visual.parameters())
    assert not m.clip.token_embedding.weight.requires_grad and m.logit_scale.requires_grad
    ct.models.freeze(m, text=True, image=True, unlocked_image_groups=0, logit_scale=True)
    assert not any(p.requires_grad for p in m.parameters())


def test_grad_checkpointing_same_output_and_grads(micro_model):
    m = ct.load_model("cliptk-micro", None, image_only=True)
    x = torch.randn(4, 3, *m.image_size)
    m.train()
    m.encode_image(x).sum().backward()
    g1 = [p.grad.clone() for p in m.visual.parameters()]
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m.encode_image(x).sum().backward()
    for a, p in zip(g1, m.visual.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_fingerprint_changes_with_weights(micro_model):
    m = ct.load_model("cliptk-micro", None)
    before = m.fingerprint()
    assert before == m.fingerprint()
    with torch.no_grad():
        m.visual.conv1.weight[0, 0, 0, 0] += 1
    assert m.fingerprint() != before


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_reinit_top_blocks_vit_changes_only_the_top():
    torch.manual_seed(0)
    model = ct.load_model("cliptk-tiny", "synthetic-players")       # trained weights: re-init must show
    before = _params(model.visual)
    torch.manual_seed(1)
    ct.models.reinit_top_blocks(model, 2)
    after = _params(model.visual)
    n_blocks = len(model.visual.transformer.resblocks)
    for k in before:
        top = any(k.startswith(f"transformer.resblocks.{i}.") for i in range(n_blocks - 2, n_blocks))
        changed = not torch.equal(before[k], after[k])
        if top or k.startswith("ln_post.") or k == "proj":
            # LayerNorms come back to (1, 0) exactly; matrices to fresh random values
            assert changed or k.endswith("bias") and not before[k].any(), k
        else:
            assert not changed, f"{k} is below the re-initialised blocks but changed"
    # the new values look like a fresh open_clip tower's (same init): compare weight spreads
    torch.manual_seed(2)
    fresh = _params(ct.load_model("cliptk-tiny", None).visual)
    for k in ("transformer.resblocks.3.attn.in_proj_weight", "transformer.resblocks.3.mlp.c_fc.weight", "proj"):
        assert float(after[k].std()) == pytest.approx(float(fresh[k].std()), rel=0.1), k
    assert torch.equal(after["ln_post.weight"], torch.ones_like(after["ln_post.weight"]))


def test_reinit_top_blocks_resnet_and_errors():
    torch.manual_seed(0)
    model = ct.load_model("cliptk-tiny-rn", None, image_only=True)
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(1.0)   # make every weight distinguishable from any init
    before = _params(model.visual)
    ct.models.reinit_top_blocks(model, 1)
    after = _params(model.visual)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("layer1.", "layer2.", "layer3.")))
    assert not torch.equal(before["layer4.0.conv1.weight"], after["layer4.0.conv1.weight"])
    assert not after["layer4.0.bn3.weight"].any()          # open_clip's zero-init of each bottleneck's last BN
    assert not torch.equal(before["attnpool.c_proj.weight"], after["attnpool.c_proj.weight"])
    with pytest.raises(ValueError, match="n=5 must be in 1..4"):
        ct.models.reinit_top_blocks(model, 5)
    with pytest.raises(ValueError, match="n=0"):
        ct.models.reinit_top_blocks(model, 0)


def test_calibrate_batchnorm():
    """Running statistics become those of the calibration images, zero-initialised BN weights become
    ones, momentum is restored, and the random ResNet's embeddings stop being nearly constant."""
    model = make_model("cliptk-tiny-rn", image_only=True)   # a fresh one: calibrated in place below
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (44, 20, 3), dtype=np.uint8)) for i in range(6)]
    xs = torch.stack([model.preprocess(i) for i in images])
    with torch.no_grad():
        before = model(xs)
        noise = torch.randn(16, 3, *model.image_size, generator=torch.Generator().manual_seed(0))
        conv1 = model.visual.conv1(noise)
    assert ct.models.calibrate_batchnorm(model) is model and not model.training
    bn1 = model.visual.bn1
    assert torch.allclose(bn1.running_mean, conv1.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn1.running_var, conv1.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert bn1.momentum == 0.1 and all(b.bn3.weight.eq(1).all() for b in model.visual.layer4)
    with torch.no_grad():
        after = model(xs)
    spread = lambda e: float((e - e.mean(0)).norm(dim=1).mean())   # noqa: E731
    assert spread(after) > 5 * spread(before)
    with pytest.raises(ValueError, match="no BatchNorm"):
        ct.models.calibrate_batchnorm(make_model("cliptk-micro", image_only=True))
