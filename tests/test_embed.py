"""Embedding extraction: order, normalisation, flip averaging, cache, bad files."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import cliptk as ct
from cliptk.embed import embed, embed_texts


@pytest.fixture()
def tiny_ds(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(7):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (20, 10, 3), dtype=np.uint8)).save(p)
        rows.append({"path": p.name, "pid": i % 3})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    return ct.read_csv(tmp_path / "m.csv")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ct.load_model("cliptk-micro", None)


def test_embed_matches_direct_forward(model, tiny_ds):
    out = embed(model, tiny_ds, batch_size=3, progress=False)
    x = torch.stack([model.preprocess(tiny_ds[i]) for i in range(len(tiny_ds))])
    with torch.no_grad():
        ref = F.normalize(model.visual(x), dim=-1)
    assert out.shape == (7, model.embed_dim) and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(out.norm(dim=1), torch.ones(7), atol=1e-5)


def test_flip_average(model, tiny_ds):
    out = embed(model, tiny_ds, flip=True, progress=False)
    x = torch.stack([model.preprocess(tiny_ds[i]) for i in range(len(tiny_ds))])
    with torch.no_grad():
        ref = F.normalize(F.normalize(model.visual(x), dim=-1) + F.normalize(model.visual(x.flip(3)), dim=-1), dim=-1)
    assert torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(out, embed(model, tiny_ds, progress=False), atol=1e-3)


def test_cache_hit_and_invalidation(model, tiny_ds, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = embed(model, tiny_ds, cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.safetensors"))) == 1
    calls = []
    orig = model.clip.encode_image
    monkeypatch.setattr(model.clip, "encode_image", lambda *a, **k: calls.append(1) or orig(*a, **k))
    again = embed(model, tiny_ds, cache_dir=cache, progress=False)
    assert torch.equal(first, again) and not calls  # served from disk
    # touching a file changes the key
    p = tiny_ds.paths[0]
    os.utime(p, ns=(os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns + 10**9))
    embed(model, tiny_ds, cache_dir=cache, progress=False)
    assert calls and len(list(cache.glob("*.safetensors"))) == 2
    embed(model, tiny_ds, cache_dir=cache, flip=True, progress=False)
    assert len(list(cache.glob("*.safetensors"))) == 3


def test_embed_pil_list_and_texts(model, tiny_ds):
    imgs = [tiny_ds[i] for i in range(3)]
    assert torch.allclose(embed(model, imgs, progress=False), embed(model, tiny_ds, progress=False)[:3], atol=1e-6)
    t = embed_texts(model, ["red 7", "blue 3", "red 7"])
    assert t.shape == (3, model.embed_dim) and torch.allclose(t[0], t[2])


def test_bad_file_raises_or_is_skipped(model, tiny_ds, tmp_path):
    tiny_ds.paths[2].write_bytes(b"broken")
    with pytest.raises(ct.ImageLoadError, match="2.png"):
        embed(model, tiny_ds, progress=False)
    skip = ct.read_csv(tmp_path / "m.csv", on_error="skip")
    with pytest.warns(UserWarning, match="2.png"):
        out = embed(model, skip, progress=False)
    assert torch.isnan(out[2]).all() and not torch.isnan(out[[0, 1, 3]]).any()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "wrong rows", "not unit"])
def test_a_bad_cache_file_is_recomputed_with_a_warning(model, tiny_ds, tmp_path, damage):
    from safetensors.torch import save_file

    cache = tmp_path / "cache"
    first = embed(model, tiny_ds, cache_dir=cache, progress=False)
    (file,) = cache.glob("*.safetensors")
    raw = file.read_bytes()
    if damage == "truncated":
        file.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        file.write_bytes(b"\x00not a safetensors file" * 10)
    elif damage == "empty":
        file.write_bytes(b"")
    elif damage == "wrong rows":
        save_file({"embeddings": first[:3].contiguous()}, str(file))
    else:
        save_file({"embeddings": (first * 3).contiguous()}, str(file))
    with pytest.warns(UserWarning, match=rf"embedding cache .*{file.name} is unusable.*recomputing"):
        again = embed(model, tiny_ds, cache_dir=cache, progress=False)
    assert torch.equal(again, first)
    assert torch.equal(embed(model, tiny_ds, cache_dir=cache, progress=False), first)   # rewritten: a clean hit
