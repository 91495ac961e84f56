"""fit() under torchrun with 2 gloo processes on CPU equals a single-process run on the same global batch.

Each rank takes half of every global batch of distinct identities (the sampler's sharding), the
loss gathers both ranks' embeddings with gradients, and DDP averages the gradients; the weights
and losses after a few AdamW steps must match one process training on the whole global batch.
Only rank 0 may write checkpoints. Small and bounded: cliptk-micro, 2 steps, a 240 s timeout.
The dataset is built here, not taken from conftest: two images per identity make both runs draw the
same pairs whatever the random stream.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cliptk.data import read_csv
from cliptk.models import load_model, save_model
from cliptk.train import TrainConfig, fit
from conftest import make_model

PER_RANK = 3  # pairs per rank; the single-process reference uses 2 * PER_RANK

WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    from safetensors.torch import save_file
    import cliptk.train as T
    import cliptk.train.checkpoint as C
    from cliptk.data import read_csv
    from cliptk.models import load_model

    tmp = sys.argv[1]
    rank = int(os.environ["RANK"])
    calls = []
    # count the checkpoints each rank writes: the Trainer writes through C.save_checkpoint
    real_save = C.save_checkpoint
    def recording_save(*args, **kwargs):
        calls.append(rank)
        return real_save(*args, **kwargs)
    C.save_checkpoint = recording_save

    torch.set_num_threads(1)
    data = read_csv(os.path.join(tmp, "manifest.csv"))
    model = load_model("cliptk-micro", os.path.join(tmp, "init.safetensors"), image_only=True)
    cfg = T.TrainConfig.from_yaml(os.path.join(tmp, "config.yaml")).replace(batch_size=%d)
    worlds = []
    history = T.fit(model, data, cfg, eval_data=data,
                    callbacks=[lambda e: worlds.append(torch.distributed.get_world_size())])
    with open(os.path.join(tmp, f"saves-{rank}.json"), "w") as f:
        json.dump({"saves": len(calls), "world": sorted(set(worlds))}, f)
    if rank == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(tmp, "ddp.safetensors"))
        history.table.to_csv(os.path.join(tmp, "ddp_history.csv"), index=False)
""" % PER_RANK)


def _dataset(root: Path, n_ids: int = 16, seed: int = 0) -> Path:
    """Two images per identity: the positive of a query is then the identity's other image, whatever
    the random stream, so both runs see exactly the same pairs."""
    rng = np.random.default_rng(seed)
    rows = []
    for pid in range(n_ids):
        colour = rng.integers(0, 256, 3)
        for j in range(2):
            a = np.clip(colour + rng.normal(0, 50, (32, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / f"{pid}_{j}.png")
            split = "train" if pid < 12 else ("query" if j == 0 else "gallery")
            rows.append({"path": f"{pid}_{j}.png", "pid": pid, "camid": j, "split": split})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_two_gloo_ranks_equal_one_process(tmp_path):
    manifest = _dataset(tmp_path)
    init = make_model("cliptk-micro", image_only=True)
    save_model(init, tmp_path / "init.safetensors")
    cfg = TrainConfig(batch_size=2 * PER_RANK, epochs=2, lr=1e-3, lr_end=1e-4, warmup_epochs=0, max_steps=2,
                      progress=False, device="cpu", output_dir=str(tmp_path / "run"), seed=3)
    cfg.to_yaml(tmp_path / "config.yaml")
    (tmp_path / "worker.py").write_text(WORKER)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "worker.py"), str(tmp_path)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun did not finish in 240 s: {err.stdout}\n{err.stderr}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    # single-process reference on the same global batches (2 * PER_RANK pairs)
    data = read_csv(manifest)
    ref = load_model("cliptk-micro", str(tmp_path / "init.safetensors"), image_only=True)
    ref_hist = fit(ref, data, cfg.replace(output_dir=None), eval_data=data)

    got = load_file(str(tmp_path / "ddp.safetensors"))
    init_w = init.state_dict()
    for k, v in ref.state_dict().items():
        if k.endswith("attn.in_proj_bias"):
            # the key bias cannot change attention (softmax is shift-invariant), so its true gradient
            # is 0 and Adam turns float round-off there into +-lr steps: compare query and value parts
            d = v.shape[0] // 3
            got_k, v = torch.cat([got[k][:d], got[k][2 * d:]]), torch.cat([v[:d], v[2 * d:]])
        else:
            got_k = got[k]
        torch.testing.assert_close(got_k, v, rtol=1e-4, atol=2e-6, msg=f"weight {k} differs")
    assert any(not torch.allclose(init_w[k], v) for k, v in ref.state_dict().items())  # it trained
    ddp_model = make_model("cliptk-micro", image_only=True)
    ddp_model.load_state_dict(got)
    x = torch.randn(8, 3, *ref.image_size)
    with torch.no_grad():  # and the two models compute the same function
        torch.testing.assert_close(ddp_model.eval()(x), ref.eval()(x), rtol=1e-4, atol=1e-5)
    ddp_hist = pd.read_csv(tmp_path / "ddp_history.csv")
    np.testing.assert_allclose(ddp_hist["loss"], ref_hist.table["loss"], rtol=1e-5, equal_nan=True)
    np.testing.assert_allclose(ddp_hist["mAP"], ref_hist.table["mAP"], rtol=1e-5, equal_nan=True)
    assert list(ddp_hist["kind"]) == list(ref_hist.table["kind"])

    saves = [json.loads((tmp_path / f"saves-{r}.json").read_text()) for r in range(2)]
    assert all(s["world"] == [2] for s in saves)  # fit ran inside a 2-process group on both ranks
    assert saves[0]["saves"] >= 1 and saves[1]["saves"] == 0  # only rank 0 writes checkpoints
