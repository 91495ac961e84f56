"""Model loading: tiny configs, CLIP-ReIdent options, checkpoints and offline errors."""
from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import warnings

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

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


def test_a_run_folder_loads_its_final_weights_or_says_where_the_checkpoints_are(tmp_path, micro_model):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ct.WeightsNotAvailableError, match="folder without model.safetensors.*checkpoints.*--resume"):
        ct.load_model("cliptk-micro", run)
    ct.save_model(micro_model, run / "model.safetensors")
    x = torch.randn(2, 3, *micro_model.image_size)
    assert torch.equal(ct.load_model("cliptk-micro", run).encode_image(x), micro_model.encode_image(x))


def _plain(model: ct.ClipModel) -> dict[str, torch.Tensor]:
    """open_clip's own layout of a model's weights (``CLIP.state_dict()``: no ``clip.`` prefix)."""
    return {k: v.detach().clone().contiguous() for k, v in model.clip.state_dict().items()}


def _write_layout(layout: str, model: ct.ClipModel, folder) -> str:
    """``model``'s weights written the way open_clip users have them; returns the path."""
    plain = _plain(model)
    visual = {k: v for k, v in plain.items() if k.startswith("visual.") or k == "logit_scale"}
    if layout == "hub .safetensors":        # open_clip_model.safetensors on the Hugging Face hub
        save_file(plain, str(folder / "open_clip_model.safetensors"), metadata={"format": "pt"})
        return str(folder / "open_clip_model.safetensors")
    if layout == "open_clip .bin":          # open_clip_pytorch_model.bin
        torch.save(plain, folder / "open_clip_pytorch_model.bin")
        return str(folder / "open_clip_pytorch_model.bin")
    if layout == "training .pt (DDP)":       # open_clip's training script: state_dict, optimizer, module. keys
        opt = torch.optim.SGD(model.parameters(), lr=0.1).state_dict()
        torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in plain.items()},
                    "optimizer": opt}, folder / "epoch_3.pt")
        return str(folder / "epoch_3.pt")
    if layout == "cliptk .safetensors":
        return str(ct.save_model(model, folder / "model.safetensors", metadata={"step": 7}))
    if layout == "image-only visual.*":
        save_file(visual, str(folder / "visual.safetensors"))
        return str(folder / "visual.safetensors")
    if layout == "image tower .pth":        # model.visual.state_dict(): the tower's own keys
        torch.save({k.removeprefix("visual."): v for k, v in visual.items() if k != "logit_scale"},
                   folder / "tower.pth")
        return str(folder / "tower.pth")
    raise AssertionError(layout)


LAYOUTS = ["hub .safetensors", "open_clip .bin", "training .pt (DDP)", "cliptk .safetensors",
           "image-only visual.*", "image tower .pth"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_checkpoint_layout_loads_by_path(layout, tmp_path):
    source = make_model("cliptk-micro", seed=3)
    path = _write_layout(layout, source, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no "does not fit", no "initialized randomly"
        loaded = ct.load_model("cliptk-micro", path)
    x = torch.randn(3, 3, *source.image_size)
    assert torch.equal(loaded.encode_image(x), source.encode_image(x)), layout
    image_only = layout in ("image-only visual.*", "image tower .pth")
    assert loaded.image_only == image_only        # default image_only=None follows the file
    if not image_only:
        texts = ["a player in a red jersey", "number 7"]
        assert torch.equal(loaded.encode_text(texts), source.encode_text(texts))
        assert torch.equal(loaded.logit_scale, source.logit_scale)


def test_real_open_clip_architecture_loads_from_a_hub_file(tmp_path):
    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-S-32")          # random init, 224 px, no download
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()},
              str(tmp_path / "open_clip_model.safetensors"), metadata={"format": "pt"})
    model = ct.load_model("ViT-S-32", tmp_path / "open_clip_model.safetensors", image_only=True, resize="squash")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = reference.eval().encode_image(x, normalize=True)
    assert torch.allclose(model.encode_image(x), expected, atol=1e-5)


def test_plain_file_of_another_architecture_names_file_and_fix(tmp_path):
    path = _write_layout("hub .safetensors", make_model("cliptk-micro"), tmp_path)
    with pytest.raises(RuntimeError, match="open_clip_model.safetensors does not fit cliptk-tiny.*--model"):
        ct.load_model("cliptk-tiny", path)


def test_cliptk_file_loads_the_model_its_metadata_names(tmp_path, micro_model):
    path = ct.save_model(micro_model, tmp_path / "m.safetensors")
    with pytest.warns(UserWarning, match="written for model 'cliptk-micro'.*not the given 'cliptk-tiny'"):
        model = ct.load_model("cliptk-tiny", path)
    x = torch.randn(2, 3, *micro_model.image_size)
    assert model.name == "cliptk-micro" and torch.equal(model.encode_image(x), micro_model.encode_image(x))


def test_image_only_file_loads_image_only_or_says_the_text_tower_is_random(tmp_path):
    trained = make_model("cliptk-micro", seed=1, image_only=True, projection=False)   # what `train` writes
    path = ct.save_model(trained, tmp_path / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = ct.load_model("cliptk-micro", path)
    x = torch.randn(2, 3, *trained.image_size)
    assert model.image_only and not model.projection and torch.equal(model.encode_image(x), trained.encode_image(x))
    with pytest.raises(RuntimeError, match="only an image tower.*model.safetensors"):
        model.encode_text(["x"])
    with pytest.warns(UserWarning, match="holds only an image tower.*text tower .* randomly initialised"):
        both = ct.load_model("cliptk-micro", path, image_only=False)
    assert not both.image_only and torch.equal(both.encode_image(x), trained.encode_image(x))


def _random_init_notices(caplog, load) -> list[str]:
    """Warnings and log records that say a model is randomly initialised, while ``load()`` runs."""
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        load()
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    return [s for s in said if "random" in s.lower()]


def test_random_init_is_said_once_and_only_for_a_random_init(tmp_path, caplog, monkeypatch, micro_model):
    path = ct.save_model(micro_model, tmp_path / "m.safetensors")
    assert _random_init_notices(caplog, lambda: ct.load_model()) == []                    # the bundled model
    assert _random_init_notices(caplog, lambda: ct.load_model("cliptk-micro", path)) == []   # a checkpoint
    monkeypatch.setattr(ct.models, "_RANDOM_INIT_SAID", set())
    first = _random_init_notices(caplog, lambda: ct.load_model("cliptk-micro", None))
    assert len(first) == 1 and "'cliptk-micro'" in first[0] and "pretrained=None" in first[0]
    assert _random_init_notices(caplog, lambda: ct.load_model("cliptk-micro", None)) == []    # once


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_saved_model_file_honours_the_umask(tmp_path, micro_model, umask):
    old = os.umask(umask)
    try:
        path = ct.save_model(micro_model, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_missing_weights_message_serves_python_and_command_line(monkeypatch):
    monkeypatch.setattr(ct.models, "_weights_reachable", lambda *a, **k: False)
    with pytest.raises(ct.WeightsNotAvailableError) as err:
        ct.load_model("ViT-B-32", "openai")
    msg = str(err.value)
    assert "load_model('ViT-B-32', '/path/to/" in msg
    assert "--pretrained /path/to/" in msg and "pretrained=/path/to/" in msg.split("--set")[1]


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
    assert "load_model('ViT-B-32', '/path/to/" in out and "open_clip.create_model" in out


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


# --------------------------------------------------------------------------- the bundled model (issue 15)
CARD = ct.settings.data_dir() / "models" / "cliptk-tiny-synthetic-players.md"


def test_bundled_file_matches_its_model_card():
    """The file the card describes is the file shipped: byte size and SHA-256 as the card states them."""
    import hashlib
    import re

    weights = CARD.with_suffix(".safetensors")
    card = CARD.read_text(encoding="utf-8")
    found = re.search(r"([\d,]+) bytes, sha256 `([0-9a-f]{64})`", card)
    assert found, "the model card names no size and sha256 of the file"
    assert weights.stat().st_size == int(found.group(1).replace(",", ""))
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == found.group(2)
    model = ct.load_model("cliptk-tiny", "synthetic-players")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bundled_model_beats_random_init_zero_shot():
    """Pre-training transfers (the paper's first two claims, on the embedded world): the bundled tower's zero-shot
    re-id mAP (projection removed, no flip) beats a random-init tower of the same config by >= 0.15, and it reads
    shirt numbers at >= 10x chance with the card's template where the random model does not."""
    from cliptk import metadata

    players = ct.players()   # the embedded world (the smoke world under CLIPTK_SMOKE=1)
    query = players.subset("query")
    got = {}
    for weights in ("synthetic-players", None):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the random-init notice
            tower = ct.load_model("cliptk-tiny", weights, image_only=True, projection=False)
            full = ct.load_model("cliptk-tiny", weights)
        reid = ct.evaluate(tower, players, query="query", gallery="gallery", flip=False, progress=False)
        probe = metadata.probe_numbers(full, query, column=metadata.number_column(query), progress=False)
        got[weights] = (reid.mAP, probe.accuracy, probe.chance, probe.majority_rate)
    (mAP, acc, chance, majority), (mAP0, acc0, _, _) = got["synthetic-players"], got[None]
    assert mAP >= mAP0 + 0.15, got
    assert acc >= 10 * chance and acc > 3 * max(acc0, chance, majority), got
