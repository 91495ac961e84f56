"""Embedding folders (``cliptk.embed.embed_to_folder`` / ``load_shards``, the ``embed`` command):
sharded == one process's ``ct.embed``, resuming redoes only missing, broken or stale shards, and
two gloo ranks under torchrun give the same folder as one process.

The dataset is built here in tmp_path (11 random images, shards of 4 or 3, so the last shard is
short) rather than taken from conftest: the tests damage and touch its files.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import cliptk as ct
from cliptk.cli import main
from cliptk.embed import EmbeddedDataset, embed_to_folder, load_shards
from cliptk.models import save_model
from conftest import make_model

N = 11


@pytest.fixture()
def manifest(tmp_path):
    """11 images of varied sizes, 3 identities, two cameras, query and gallery splits."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(N):
        h, w = int(rng.integers(16, 40)), int(rng.integers(8, 24))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "pid": i % 3, "camid": i % 2, "split": "query" if i < 3 else "gallery",
                     "team": "AB"[i % 2]})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    return tmp_path / "m.csv"


def _count_calls(monkeypatch, model):
    calls = []
    orig = model.clip.encode_image
    monkeypatch.setattr(model.clip, "encode_image", lambda x, **k: calls.append(len(x)) or orig(x, **k))
    return calls


def test_sharded_folder_equals_one_process_embed(micro_model, manifest, tmp_path):
    ds = ct.read_csv(manifest)
    ref = ct.embed(micro_model, ds, batch_size=3, progress=False)
    run = embed_to_folder(micro_model, ds, tmp_path / "out", shard_size=4, batch_size=3, progress=False)
    assert (run.n_images, run.n_shards, run.computed, run.reused, run.dim) == (N, 3, 3, 0, ref.shape[1])
    got = load_shards(tmp_path / "out")
    assert isinstance(got, EmbeddedDataset) and len(got) == N
    torch.testing.assert_close(got.embeddings, ref, rtol=0, atol=1e-6)
    # the rows they belong to, in dataset order, with labels and free metadata
    t, r = got.dataset.table, ds.table
    assert [p.resolve() for p in got.dataset.paths] == [p.resolve() for p in ds.paths]
    for col in ("pid", "camid", "split", "team"):
        assert t[col].tolist() == r[col].tolist(), col
    q = got.subset("query")
    torch.testing.assert_close(q.embeddings, ct.embed(micro_model, ds.subset("query"), progress=False), rtol=0, atol=1e-6)
    assert q.dataset.pids.tolist() == [0, 1, 2] and "3 x 32" in repr(q)
    # rows.csv is an ordinary manifest too
    assert ct.read_csv(tmp_path / "out" / "rows.csv").table["pid"].tolist() == r["pid"].tolist()
    info = json.loads((tmp_path / "out" / "embeddings.json").read_text())
    assert info["complete"] and info["model"] == "cliptk-micro" and [s["stop"] for s in info["shards"]] == [4, 8, 11]


def test_a_rerun_redoes_only_missing_broken_or_stale_shards(micro_model, manifest, tmp_path, monkeypatch):
    ds = ct.read_csv(manifest)
    out = tmp_path / "out"
    embed_to_folder(micro_model, ds, out, shard_size=4, progress=False)
    ref = load_shards(out).embeddings
    calls = _count_calls(monkeypatch, micro_model)
    again = embed_to_folder(micro_model, ds, out, shard_size=4, progress=False)
    assert (again.computed, again.reused) == (0, 3) and not calls

    # a truncated shard (a copy cut short) is named in a warning and redone; a killed writer's
    # temporary file is cleared; a changed image redoes its own shard only
    raw = (out / "shard-00001.safetensors").read_bytes()
    (out / "shard-00001.safetensors").write_bytes(raw[: len(raw) // 2])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = out / f".shard-00002.safetensors.tmp-{int(dead.stdout)}"
    leftover.write_bytes(b"half a shard")
    with pytest.warns(UserWarning, match=r"shard-00001\.safetensors is unusable.*recomputing"):
        run = embed_to_folder(micro_model, ds, out, shard_size=4, progress=False)
    assert (run.computed, run.reused) == (1, 2) and sum(calls) == 4 and not leftover.exists()
    torch.testing.assert_close(load_shards(out).embeddings, ref, rtol=0, atol=0)

    Image.fromarray(np.zeros((30, 15, 3), dtype=np.uint8)).save(ds.paths[9])   # row 9: shard 2 (rows 8-10)
    calls.clear()
    run = embed_to_folder(micro_model, ds, out, shard_size=4, progress=False)
    assert (run.computed, run.reused) == (1, 2) and sum(calls) == 3
    new = load_shards(out).embeddings
    torch.testing.assert_close(new, ct.embed(micro_model, ds, progress=False), rtol=0, atol=1e-6)
    assert torch.equal(new[:8], ref[:8]) and not torch.allclose(new[9], ref[9])


def test_an_interrupted_run_leaves_only_finished_shards(micro_model, manifest, tmp_path, monkeypatch):
    ds = ct.read_csv(manifest)
    out = tmp_path / "out"
    orig = micro_model.clip.encode_image
    seen = []

    def dies_in_shard_two(x, **kw):
        seen.append(len(x))
        if sum(seen) > 6:   # batches of 2: shards 0 (rows 0-3) done, killed inside shard 1
            raise KeyboardInterrupt
        return orig(x, **kw)

    monkeypatch.setattr(micro_model.clip, "encode_image", dies_in_shard_two)
    with pytest.raises(KeyboardInterrupt):
        embed_to_folder(micro_model, ds, out, shard_size=4, batch_size=2, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["embeddings.json", "rows.csv", "shard-00000.safetensors"]
    with pytest.raises(ValueError, match=r"2 of 3 shard\(s\) missing or unfinished \(shard-00001.*rerun the same embed"):
        load_shards(out)
    monkeypatch.setattr(micro_model.clip, "encode_image", orig)
    run = embed_to_folder(micro_model, ds, out, shard_size=4, batch_size=2, progress=False)
    assert (run.computed, run.reused) == (2, 1)
    torch.testing.assert_close(load_shards(out).embeddings, ct.embed(micro_model, ds, progress=False), rtol=0, atol=1e-6)


def test_another_model_is_refused_unless_overwrite(micro_model, manifest, tmp_path):
    ds = ct.read_csv(manifest)
    out = tmp_path / "out"
    embed_to_folder(micro_model, ds, out, shard_size=4, progress=False)
    other = make_model("cliptk-micro", seed=1)
    with pytest.raises(ValueError, match=r"holds embeddings of another model.*--overwrite"):
        embed_to_folder(other, ds, out, shard_size=4, progress=False)
    with pytest.raises(ValueError, match="holds embeddings of another model"):
        embed_to_folder(micro_model, ds, out, shard_size=4, flip=True, progress=False)
    run = embed_to_folder(other, ds, out, shard_size=4, overwrite=True, progress=False)
    assert run.computed == 3
    torch.testing.assert_close(load_shards(out).embeddings, ct.embed(other, ds, progress=False), rtol=0, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not an embeddings folder"):
        load_shards(tmp_path)


def test_unreadable_images_are_nan_rows(micro_model, manifest, tmp_path):
    ds = ct.read_csv(manifest, on_error="skip")
    for i in (4, 5, 6, 7):   # all of shard 1
        ds.paths[i].write_bytes(b"broken")
    with pytest.warns(UserWarning):
        embed_to_folder(micro_model, ds, tmp_path / "out", shard_size=4, progress=False)
    got = load_shards(tmp_path / "out")
    emb = got.embeddings
    assert torch.isnan(emb[4:8]).all() and not torch.isnan(emb[[0, 1, 2, 3, 8, 9, 10]]).any()
    kept = got.without_skipped()
    assert kept.dataset.table["path"].tolist() == [f"{p.resolve()}" for p in ds.paths[:4] + ds.paths[8:]]
    torch.testing.assert_close(kept.embeddings, emb[[0, 1, 2, 3, 8, 9, 10]], rtol=0, atol=0)
    # what the debugging views read: rank_gallery on the folder's query and gallery rows
    q, g = kept.subset("query"), kept.subset("gallery")
    r = ct.diagnose.rank_gallery(q.embeddings, g.embeddings, q.dataset, g.dataset)
    want = ct.metrics.evaluate_reid(q.embeddings, g.embeddings, q.dataset.pids, g.dataset.pids,
                                    q.dataset.camids, g.dataset.camids)
    np.testing.assert_array_equal(r.result.ap, want.ap)


def _weights(tmp_path):
    init = make_model("cliptk-micro", image_only=True)
    save_model(init, tmp_path / "init.safetensors")
    return ct.load_model("cliptk-micro", str(tmp_path / "init.safetensors"), image_only=True)


def test_embed_command(manifest, tmp_path, capsys):
    model = _weights(tmp_path)
    args = ["embed", "--data", str(manifest), "--model", "cliptk-micro", "--pretrained", str(tmp_path / "init.safetensors"),
            "--out", str(tmp_path / "out"), "--shard-size", "5", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    assert "11 embeddings (32-d) in 3 shard(s)" in capsys.readouterr().out
    torch.testing.assert_close(load_shards(tmp_path / "out").embeddings,
                               ct.embed(model, ct.read_csv(manifest), progress=False), rtol=0, atol=1e-6)
    capsys.readouterr()
    assert main(args + ["--split", "query"]) == 2            # another list of images: refused in one line
    err = capsys.readouterr().err
    assert err.startswith("cliptk: error: ") and "another list of images" in err and err.count("\n") == 1
    assert main(args + ["--split", "query", "--overwrite"]) == 0
    assert len(load_shards(tmp_path / "out")) == 3 and not (tmp_path / "out" / "shard-00001.safetensors").exists()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_two_gloo_ranks_under_torchrun_equal_one_process(manifest, tmp_path):
    model = _weights(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cliptk", "embed",
           "--data", str(manifest), "--model", "cliptk-micro", "--pretrained", str(tmp_path / "init.safetensors"),
           "--out", str(tmp_path / "out"), "--shard-size", "3", "--device", "cpu", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("11 embeddings (32-d) in 4 shard(s)") == 1 and "4 computed, 0 already done" in proc.stdout
    torch.testing.assert_close(load_shards(tmp_path / "out").embeddings,
                               ct.embed(model, ct.read_csv(manifest), progress=False), rtol=0, atol=1e-6)
    writers = []
    for i in range(4):   # each rank embedded its own slice: shards r, r + 2, ...
        with safe_open(str(tmp_path / "out" / f"shard-{i:05d}.safetensors"), "pt") as f:
            writers.append(int(f.metadata()["rank"]))
    assert writers == [0, 1, 0, 1]
