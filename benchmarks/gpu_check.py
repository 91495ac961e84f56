"""One GPU check of cliptk: the CUDA tests, fine-tuning throughput and MFU, the projected wall time of
the paper's recipe, Score-CAM and embedding speed. Prints a short table last; with ``$OUT`` (or
``--out``) set it also writes ``gpu_check.json`` (every number, the settings, the environment) and
``gpu_check.md`` (the table) there.

    OUT=/tmp/gpu python benchmarks/gpu_check.py            # the full check (one H200: ~5-8 min)
    python benchmarks/gpu_check.py --quick                  # fewer steps, smaller caps (~3 min)
    python benchmarks/gpu_check.py --cpu-smoke              # tiny models on the CPU: does it all run?

Sections (each guarded: a failure is reported in the table and the next section still runs; a time
budget, ``--budget-s``, skips what would not fit):

1. ``pytest -m gpu tests/test_gpu.py`` in a subprocess: passed / failed / skipped counts.
2. bf16 matrix rate: the median time of an ``n x n x n`` bf16 product (8192 on the GPU) timed with
   CUDA events after warm-up; the MFU denominator, measured on this machine in this run.
3. Score-CAM per pair on ViT-B-16 (768 channels in the last block's ``ln_1``): the library path
   (``similarity_cam``: pytorch_grad_cam's ScoreCAM, fp32) vs cliptk's exact fast path
   (``fast=True``, bf16 autocast on CUDA), and the fast path's cost per pair when one query is
   explained against 10 gallery images (``similarity_cams``); Pearson r of library vs fast maps.
4. Fine-tuning throughput of :func:`cliptk.train.fit` with the CLIP-ReIdent recipe (image tower
   only, projection removed, symmetric InfoNCE with label smoothing 0.1, learnable temperature,
   AdamW, joint flip, bf16 AMP) on ViT-L-14 and ViT-B-16 towers with random weights, gradient
   checkpointing off and on, at 16 pairs (the paper's batch) and at the largest batch that fits
   (doubling from 16 pairs with a bare fwd+bwd+AdamW probe until ``torch.cuda.OutOfMemoryError``
   or ``--max-pairs``). The data are a :class:`cliptk.ReIdDataset` of random non-zero uint8 images
   held in memory at the model's input size, loaded by fit's own DataLoader (``--workers``).
   images/s is the median of History's per-step ``images_per_s`` after ``warm`` steps; a second
   figure times the same steps with CUDA events recorded at each ``step_end`` callback. FLOPs per
   image are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one fwd+bwd (model FLOPs:
   checkpointing's recomputation is not counted; a formula gives a cross-check); MFU = images/s x
   FLOPs/image / matrix rate.
   The input pipeline's own ceiling (fit's DataLoader alone, at the largest batch) is measured too,
   to tell a data-bound run from a compute-bound one.
5. Projected wall time of the paper's full recipe: 4 epochs over 8,569 training images, each image
   a query once per epoch with one positive (2 x 4 x 8,569 = 68,552 image passes), on ViT-L-14 at
   16 pairs; training steps only (no evaluation, data loading as measured here).
6. Embedding throughput for 10,000 images at 224 px: ``cliptk.embed`` end to end on an in-memory
   list of random PIL images (preprocessing in ``--workers`` DataLoader workers, bf16 autocast),
   and the model alone (``encode_image`` on random GPU batches of 256, bf16 autocast, inference mode).

Goals (the table's last column): ViT-L-14 fine-tuning MFU >= 40% (best setting); the paper's recipe
projected < 5 min; Score-CAM fast path on ViT-B-16 < 1 s per pair. Timings use CUDA events on the GPU
and ``time.perf_counter`` on the CPU; every figure is a median. ``--cpu-smoke`` swaps in cliptk-micro
/ cliptk-tiny and a few steps: its numbers only show that the script runs, not the GPU goals.

On a machine without open_clip / grad-cam / plotly / ipywidgets, ``import cliptk`` fails: the
script then says which module is missing (see benchmarks/RESULTS.md for the wheels to carry).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a plain checkout (no `pip install -e .`)
    sys.path.insert(0, str(ROOT))

PAPER_TRAIN_IMAGES = 8569   # DeepSportRadar re-id training images (CLIP-ReIdent)
PAPER_EPOCHS = 4
PAPER_PAIRS = 16
GOALS = {"mfu_l14": 0.40, "recipe_minutes": 5.0, "cam_fast_s": 1.0}


@dataclass
class Plan:
    """What one mode measures (``--cpu-smoke``, ``--quick`` or the full GPU check)."""

    mode: str
    models: tuple[tuple[str, str], ...]   # (role, open_clip name): role "L" is the paper's tower
    cam_model: str
    pairs: int = PAPER_PAIRS
    max_pairs: int = 1024
    warm: int = 3
    measure: int = 6
    matmul_n: int = 8192
    matmul_reps: int = 20
    cam_lib_reps: int = 3
    cam_fast_reps: int = 5
    cam_gallery: int = 10
    embed_n: int = 10_000
    embed_bs: int = 256
    embed_reps: int = 3
    workers: int = 12
    budget_s: float = 540.0
    pytest_timeout_s: float = 240.0


def make_plan(args: argparse.Namespace) -> Plan:
    cpus = os.cpu_count() or 2
    if args.cpu_smoke:
        plan = Plan("cpu-smoke", (("L", "cliptk-tiny"), ("B", "cliptk-micro")), "cliptk-tiny", max_pairs=64,
                    warm=1, measure=2, matmul_n=512, matmul_reps=5, cam_lib_reps=1, cam_fast_reps=2, cam_gallery=4,
                    embed_n=256, embed_bs=64, embed_reps=1, workers=0, budget_s=600.0, pytest_timeout_s=240.0)
    elif args.quick:
        plan = Plan("quick", (("L", "ViT-L-14"), ("B", "ViT-B-16")), "ViT-B-16", max_pairs=256, warm=2, measure=3,
                    matmul_reps=10, cam_lib_reps=2, cam_fast_reps=3, embed_n=2000, embed_reps=1,
                    workers=max(0, min(12, cpus - 2)), budget_s=300.0)
    else:
        plan = Plan("full", (("L", "ViT-L-14"), ("B", "ViT-B-16")), "ViT-B-16", workers=max(0, min(12, cpus - 2)))
    for key in ("max_pairs", "workers", "budget_s", "embed_n"):
        if getattr(args, key) is not None:
            setattr(plan, key, getattr(args, key))
    return plan


# ================================================================================ small helpers
class Budget:
    """Seconds left of ``--budget-s``; ``ok(need)`` says whether a part needing ``need`` s fits."""

    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def ok(self, need: float) -> bool:
        return self.left() >= need


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """``(seconds, fn())``: CUDA events around ``fn`` on a GPU (synchronised), perf_counter on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, out
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def median_time(fn: Callable[[], Any], device: torch.device, warmup: int, reps: int) -> tuple[float, list[float]]:
    """Median and all of ``reps`` timings of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        timed(fn, device)
    times = [timed(fn, device)[0] for _ in range(reps)]
    return statistics.median(times), times


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def random_pils(n: int, hw: tuple[int, int], seed: int = 0) -> list:
    """``n`` random RGB PIL images of ``hw`` (H, W) with values in [1, 255] (never zero)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(1, 256, (*hw, 3), dtype=np.uint8)) for _ in range(n)]


def random_dataset(pool: list, n_ids: int, per_id: int):
    """A :class:`cliptk.ReIdDataset` of ``n_ids`` identities x ``per_id`` images, one split
    (``train``), whose images come from the in-memory ``pool`` (row ``i`` -> ``pool[i % len]``)."""
    import pandas as pd

    from cliptk.data import ReIdDataset

    class InMemory(ReIdDataset):
        def image(self, i: int):
            return pool[i % len(pool)]

    rows = n_ids * per_id
    table = pd.DataFrame({"path": [f"memory/{i}.png" for i in range(rows)], "pid": np.repeat(np.arange(n_ids), per_id)})
    return InMemory(Path("."), table, name="random-uint8")


def gpu_mem_gib(device: torch.device) -> float | None:
    """Peak GPU memory allocated since the last reset, GiB (None on the CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def is_oom(err: BaseException) -> bool:
    """A CUDA out-of-memory error (also cuBLAS' workspace allocation failing near the limit)."""
    text = str(err).lower()
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in text or "alloc_failed" in text


# ================================================================================ sections
def section_pytest(plan: Plan, res: dict) -> None:
    """``pytest -m gpu tests/test_gpu.py`` in a subprocess; counts from its JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-rs", "-p", "no:cacheprovider",
               f"--junitxml={junit}"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=plan.pytest_timeout_s)
            rc, out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            rc, out = "timeout", f"pytest ran past {plan.pytest_timeout_s} s\n{err.stdout or ''}"
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        if junit.is_file():
            for suite in ET.parse(junit).getroot().iter("testsuite"):
                for k in counts:
                    counts[k] += int(suite.get(k, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    res["pytest"] = {"returncode": rc, **counts, "seconds": time.perf_counter() - t, "output_tail": out[-4000:]}


def section_matmul(plan: Plan, device: torch.device, res: dict) -> None:
    """Median time of an ``n x n x n`` product (after 3 warm-ups) -> FLOP/s: bf16 on CUDA (what
    AMP training runs), fp32 on the CPU (where fit runs without AMP)."""
    n = plan.matmul_n
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    med, times = median_time(lambda: a @ b, device, 3, plan.matmul_reps)
    res["matmul"] = {"n": n, "dtype": str(dtype).removeprefix("torch."), "median_s": med, "times_s": times,
                     "flops_per_s": 2 * n**3 / med}
    del a, b
    free_memory()


def flops_per_image(model, device: torch.device, n: int = 4) -> tuple[float, float]:
    """Model FLOPs per image of one training fwd+bwd (bf16 autocast on CUDA, InfoNCE on n/2
    pairs, checkpointing off) and of one inference forward, by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    from cliptk.losses import make_loss

    x = torch.randn(n, 3, *model.image_size, device=device)
    model.set_grad_checkpointing(False)
    model.train()
    amp = device.type == "cuda"
    with FlopCounterMode(display=False) as fc:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            emb = model(x)
        loss = make_loss("infonce", label_smoothing=0.1)(emb[: n // 2].float(), emb[n // 2:].float(),
                                                        model.logit_scale.exp())
        loss.backward()
    train = fc.get_total_flops() / n
    model.zero_grad(set_to_none=True)
    # forward in train mode under no_grad: eval mode would take nn.MultiheadAttention's fused fast
    # path, whose projections FlopCounterMode does not see (same arithmetic, a third of it uncounted)
    with FlopCounterMode(display=False) as fc, torch.no_grad(), \
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        model(x)
    model.eval()
    return train, fc.get_total_flops() / n


def analytic_flops_per_image(model) -> float | None:
    """Training FLOPs per image of a ViT tower by formula, 3 x forward (2 FLOPs per multiply-add):
    patch embedding, every linear layer and attention's ``QK^T`` / ``AV`` over ``T`` tokens. A
    cross-check of the counter (None for other towers)."""
    from torch import nn

    visual = model.visual
    if not hasattr(visual, "grid_size") or not hasattr(visual, "transformer"):
        return None
    grid = int(np.prod(visual.grid_size))
    tokens = grid + 1
    macs = visual.conv1.weight.numel() * grid
    for m in visual.transformer.modules():
        if isinstance(m, nn.Linear):
            macs += m.weight.numel() * tokens
        elif isinstance(m, nn.MultiheadAttention):
            macs += m.in_proj_weight.numel() * tokens + 2 * tokens * tokens * m.embed_dim
    if getattr(visual, "proj", None) is not None:
        macs += visual.proj.numel()
    return 3 * 2 * float(macs)


def probe_step(model, pairs: int, ckpt: bool, device: torch.device) -> None:
    """Two bare training steps (bf16 autocast fwd, InfoNCE, bwd, AdamW) at ``pairs`` pairs: raises
    ``torch.cuda.OutOfMemoryError`` if fit's step at this batch would not fit."""
    from cliptk.losses import make_loss

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-7)
    loss_fn = make_loss("infonce", label_smoothing=0.1)
    model.set_grad_checkpointing(ckpt)
    model.train()
    try:
        x = torch.randn(2 * pairs, 3, *model.image_size, device=device)
        for _ in range(2):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                emb = model(x)
            loss = loss_fn(emb[:pairs].float(), emb[pairs:].float(), model.logit_scale.exp())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            del emb, loss
        if device.type == "cuda":
            torch.cuda.synchronize()
    finally:
        model.zero_grad(set_to_none=True)
        del opt


def search_max_pairs(model, ckpt: bool, plan: Plan, device: torch.device, budget: Budget) -> dict:
    """Double the batch from ``plan.pairs`` until a probe runs out of memory or ``max_pairs``."""
    fits, tried, stop = None, [], "cap"
    pairs = plan.pairs
    while pairs <= plan.max_pairs:
        if not budget.ok(60):
            stop = "time budget"
            break
        try:
            probe_step(model, pairs, ckpt, device)
            fits = pairs
            tried.append((pairs, "ok"))
        except RuntimeError as err:
            if not is_oom(err):
                raise
            tried.append((pairs, "oom"))
            stop = "oom"
        free_memory()
        if stop == "oom":
            break
        pairs *= 2
    return {"max_pairs": fits, "stopped_by": stop, "tried": tried}


def fit_throughput(model, pool: list, pairs: int, ckpt: bool, plan: Plan, device: torch.device,
                   flops_train: float, rate: float | None) -> dict:
    """Run :func:`cliptk.train.fit` (CLIP-ReIdent recipe, bf16 AMP on CUDA) for warm + measure
    steps on random in-memory images; return the median images/s (History and CUDA events)."""
    from cliptk.train import TrainConfig, fit

    steps = plan.warm + plan.measure
    data = random_dataset(pool, n_ids=pairs, per_id=steps + 1)  # one epoch holds every step
    cuda = device.type == "cuda"
    cfg = TrainConfig(model=model.name, pretrained=None, batch_size=pairs, epochs=1, max_steps=steps,
                      amp="bf16" if cuda else "off", device=str(device), grad_checkpointing=ckpt,
                      num_workers=plan.workers, eval_before=False, progress=False, output_dir=None)
    events: list = []

    def on_step(ev: dict) -> None:
        if ev["event"] == "step_end" and cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            events.append(e)

    model.set_grad_checkpointing(ckpt)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    history = fit(model, data, cfg, callbacks=[on_step])
    wall = time.perf_counter() - t
    model.zero_grad(set_to_none=True)
    ips = history.steps["images_per_s"].to_numpy()[plan.warm:]
    loss = history.steps["loss"].to_numpy()
    out = {"pairs": pairs, "grad_checkpointing": ckpt, "steps": len(history.steps), "fit_wall_s": wall,
           "images_per_s": float(np.median(ips)), "images_per_s_steps": ips.tolist(),
           "loss_finite": bool(np.isfinite(loss).all()), "peak_gib": gpu_mem_gib(device)}
    if cuda and len(events) > plan.warm:
        torch.cuda.synchronize()
        dts = [events[i - 1].elapsed_time(events[i]) / 1e3 for i in range(plan.warm, len(events))]
        out["images_per_s_events"] = 2 * pairs / statistics.median(dts)
    if rate:
        out["mfu"] = out["images_per_s"] * flops_train / rate
    return out


def loader_ceiling(model, pool: list, pairs: int, plan: Plan, device: torch.device) -> dict:
    """images/s of fit's input pipeline alone (same dataset view, sampler, workers, pinned copy to
    the device) at ``pairs`` pairs, over the steps after the first batch."""
    from torch.utils.data import DataLoader

    from cliptk.samplers import UniqueIdPairSampler
    from cliptk.train import PairImages

    steps = plan.warm + plan.measure
    data = random_dataset(pool, n_ids=pairs, per_id=steps + 1)
    loader = DataLoader(PairImages(data, model.preprocess), batch_sampler=UniqueIdPairSampler(data.pids, pairs),
                        num_workers=plan.workers, pin_memory=device.type == "cuda")
    it = iter(loader)
    next(it)[0].to(device)
    t, n = time.perf_counter(), 0
    for x, _ in it:
        x = x.to(device, non_blocking=True)
        n += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"pairs": pairs, "workers": plan.workers, "images_per_s": n / (time.perf_counter() - t)}


def section_finetune(role: str, name: str, plan: Plan, device: torch.device, res: dict, budget: Budget) -> None:
    """Throughput, peak memory and MFU of fit on ``name`` (ckpt off/on x 16 pairs / largest batch)."""
    from cliptk.models import load_model

    torch.manual_seed(0)
    model = load_model(name, None, image_only=True, projection=False, device=device)
    entry: dict[str, Any] = {"model": name, "role": role, "image_size": list(model.image_size),
                             "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "runs": [], "search": {}}
    res["finetune"][role] = entry
    entry["flops_train_per_image"], entry["flops_fwd_per_image"] = flops_per_image(model, device)
    entry["flops_train_per_image_analytic"] = analytic_flops_per_image(model)
    free_memory()
    rate = res.get("matmul", {}).get("flops_per_s")
    pool = random_pils(256, tuple(model.image_size), seed=1)

    def run(pairs: int, ckpt: bool) -> dict | None:
        try:
            r = fit_throughput(model, pool, pairs, ckpt, plan, device, entry["flops_train_per_image"], rate)
        except RuntimeError as err:
            if not is_oom(err):
                raise
            r = {"pairs": pairs, "grad_checkpointing": ckpt, "error": "out of memory in fit"}
            model.zero_grad(set_to_none=True)
        free_memory()
        entry["runs"].append(r)
        return r

    for ckpt in (False, True):
        if budget.ok(30):
            run(plan.pairs, ckpt)
        else:
            entry["runs"].append({"pairs": plan.pairs, "grad_checkpointing": ckpt, "error": "skipped: time budget"})
    for ckpt in (False, True):
        if not budget.ok(90):
            entry["search"][str(ckpt)] = {"stopped_by": "time budget", "max_pairs": None}
            continue
        found = search_max_pairs(model, ckpt, plan, device, budget)
        entry["search"][str(ckpt)] = found
        pairs = found["max_pairs"]
        while pairs and pairs > plan.pairs and budget.ok(45):
            r = run(pairs, ckpt)
            if "error" not in r:
                break
            pairs //= 2   # fit's step needs a little more than the probe: retry at half
    big = max((r["pairs"] for r in entry["runs"] if "error" not in r), default=None)
    if big and budget.ok(30):
        try:
            entry["loader"] = loader_ceiling(model, pool, big, plan, device)
        except Exception as err:  # the loader check is a side measurement: report, go on
            entry["loader"] = {"error": f"{type(err).__name__}: {err}"}
    del model
    free_memory()


def section_projection(res: dict) -> None:
    """Minutes of the paper's full recipe from the role-L runs (16 pairs; largest batch for reference)."""
    runs = [r for r in res["finetune"].get("L", {}).get("runs", []) if "error" not in r]
    if not runs:
        raise RuntimeError("no successful fine-tuning run of the role-L model to project from")
    passes = 2 * PAPER_EPOCHS * PAPER_TRAIN_IMAGES
    at16 = [r for r in runs if r["pairs"] == PAPER_PAIRS]
    best16 = max(at16, key=lambda r: r["images_per_s"]) if at16 else None
    best = max(runs, key=lambda r: r["images_per_s"])
    res["projection"] = {
        "image_passes": passes, "model": res["finetune"]["L"]["model"],
        "at_16_pairs": None if best16 is None else {"minutes": passes / best16["images_per_s"] / 60,
                                                     "grad_checkpointing": best16["grad_checkpointing"],
                                                     "images_per_s": best16["images_per_s"]},
        "at_best": {"minutes": passes / best["images_per_s"] / 60, "pairs": best["pairs"],
                    "grad_checkpointing": best["grad_checkpointing"], "images_per_s": best["images_per_s"]}}


def section_scorecam(plan: Plan, device: torch.device, res: dict) -> None:
    """Seconds per pair of Score-CAM: library vs fast path, and fast path over a 10-image gallery."""
    from cliptk.explain import similarity_cam, similarity_cams
    from cliptk.models import load_model

    torch.manual_seed(0)
    model = load_model(plan.cam_model, None, image_only=True, projection=False, device=device)
    g = torch.Generator().manual_seed(2)
    a, *gallery = [torch.randn(3, *model.image_size, generator=g) for _ in range(plan.cam_gallery + 1)]
    b = gallery[0]
    lib_s, lib_all = median_time(lambda: similarity_cam(model, a, b), device, 1, plan.cam_lib_reps)
    fast_s, fast_all = median_time(lambda: similarity_cam(model, a, b, fast=True), device, 1, plan.cam_fast_reps)
    many_s, _ = median_time(lambda: similarity_cams(model, a, gallery), device, 1, plan.cam_fast_reps)
    lib, fast = similarity_cam(model, a, b), similarity_cam(model, a, b, fast=True)
    r = float(np.corrcoef(lib.input_map_a.ravel(), fast.input_map_a.ravel())[0, 1])
    res["scorecam"] = {"model": plan.cam_model, "channels": fast.channels, "layer": fast.layer,
                       "library_s": lib_s, "library_all_s": lib_all, "fast_s": fast_s, "fast_all_s": fast_all,
                       "fast_gallery": plan.cam_gallery, "fast_per_pair_in_gallery_s": many_s / plan.cam_gallery,
                       "pearson_library_vs_fast": r, "speedup": lib_s / fast_s}
    del model
    free_memory()


def section_embed(role: str, name: str, plan: Plan, device: torch.device, res: dict) -> None:
    """images/s of ``cliptk.embed`` end to end (in-memory PIL list) and of ``encode_image`` alone."""
    from cliptk.embed import embed
    from cliptk.models import load_model

    torch.manual_seed(0)
    model = load_model(name, None, image_only=True, projection=False, device=device)
    n, bs, cuda = plan.embed_n, plan.embed_bs, device.type == "cuda"
    x = torch.randn(bs, 3, *model.image_size, device=device)

    def model_only() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            for i in range(0, n, bs):
                model.encode_image(x[: min(bs, n - i)])

    pool = random_pils(min(n, 1000), tuple(model.image_size), seed=3)
    images = [pool[i % len(pool)] for i in range(n)]
    e2e = lambda: embed(model, images, batch_size=bs, num_workers=plan.workers, progress=False)  # noqa: E731
    embed(model, images[: 2 * bs], batch_size=bs, num_workers=plan.workers, progress=False)  # warm-up
    e2e_s, e2e_all = median_time(e2e, device, 0, plan.embed_reps)
    mo_s, mo_all = median_time(model_only, device, 1, plan.embed_reps)
    out = {"model": name, "images": n, "batch_size": bs, "workers": plan.workers, "image_size": list(model.image_size),
           "embed_images_per_s": n / e2e_s, "embed_all_s": e2e_all,
           "model_only_images_per_s": n / mo_s, "model_only_all_s": mo_all}
    fwd = res["finetune"].get(role, {}).get("flops_fwd_per_image")
    rate = res.get("matmul", {}).get("flops_per_s")
    if fwd and rate:
        out["model_only_mfu"] = out["model_only_images_per_s"] * fwd / rate
    res["embed"][role] = out
    del model, x
    free_memory()


# ================================================================================ the table
def _pct(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


def _num(v: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if v is None or not math.isfinite(v) else fmt.format(v)


def _flops(v: float, per_s: bool = False) -> str:
    unit = next((u, d) for u, d in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1.0)) if v >= d or d == 1.0)
    return f"{v / unit[1]:,.1f} {unit[0]}FLOP{'/s' if per_s else ''}"


def _goal(ok: bool | None, text: str) -> str:
    return text if ok is None else f"{text}: {'PASS' if ok else 'FAIL'}"


def build_table(res: dict, plan: Plan) -> list[tuple[str, str, str, str]]:
    """Rows (check, setting, result, goal) of the summary table; errors appear as results."""
    rows: list[tuple[str, str, str, str]] = []
    err = res["errors"]
    smoke = plan.mode == "cpu-smoke"

    if "import cliptk" in err:
        rows.append(("import cliptk", "-", f"ERROR {err['import cliptk']}", "-"))
    p = res.get("pytest")
    if p:
        status = "ok" if p["returncode"] == 0 and not p["failures"] and not p["errors"] else "FAILED"
        rows.append(("pytest -m gpu", "tests/test_gpu.py",
                     f"{p['passed']} passed, {p['failures'] + p['errors']} failed, {p['skipped']} skipped",
                     _goal(None if smoke else status == "ok" and p["skipped"] == 0, "all pass")))
    elif "pytest" in err:
        rows.append(("pytest -m gpu", "tests/test_gpu.py", f"ERROR {err['pytest']}", "all pass"))

    m = res.get("matmul")
    rows.append((f"{m['dtype'] if m else 'bf16'} matmul", f"{m['n']}^3, median" if m else "-",
                 _flops(m["flops_per_s"], True) if m else f"ERROR {err.get('matmul', '')}", "MFU denominator"))

    c = res.get("scorecam")
    if c:
        ok = None if smoke else c["fast_s"] < GOALS["cam_fast_s"]
        rows.append(("Score-CAM library", f"{c['model']}, {c['channels']} ch, 1 pair", f"{c['library_s']:.3f} s", "-"))
        rows.append(("Score-CAM fast", f"{c['model']}, 1 pair (r={c['pearson_library_vs_fast']:.3f} vs library)",
                     f"{c['fast_s']:.3f} s", _goal(ok, f"< {GOALS['cam_fast_s']:g} s")))
        rows.append(("Score-CAM fast", f"1 query x {c['fast_gallery']} gallery, per pair",
                     f"{c['fast_per_pair_in_gallery_s']:.3f} s", "-"))
    else:
        rows.append(("Score-CAM", plan.cam_model, f"ERROR {err.get('scorecam', 'not run')}", "< 1 s fast path"))

    for role, _ in plan.models:
        f = res["finetune"].get(role)
        key = f"finetune {role}"
        if not f:
            rows.append((key, "-", f"ERROR {err.get(key, 'not run')}", "-"))
            continue
        formula = f.get("flops_train_per_image_analytic")
        rows.append((f"fit {f['model']}", "FLOPs/image (fwd+bwd)", _flops(f["flops_train_per_image"])
                     + (f" (formula {_flops(formula)})" if formula else ""), "-"))
        for r in f["runs"]:
            setting = f"{r['pairs']} pairs, ckpt {'on' if r['grad_checkpointing'] else 'off'}"
            if "error" in r:
                rows.append((f"fit {f['model']}", setting, r["error"], "-"))
                continue
            mem = f", {r['peak_gib']:.1f} GiB" if r.get("peak_gib") is not None else ""
            speed = f"{r['images_per_s']:,.1f} img/s, MFU {_pct(r.get('mfu'))}{mem}"
            rows.append((f"fit {f['model']}", setting, speed, "-"))
        for ckpt, s in f["search"].items():
            found = (f"{s['max_pairs']} pairs (stopped by {s.get('stopped_by')})" if s.get("max_pairs")
                     else f"not searched ({s.get('stopped_by')})")
            rows.append((f"fit {f['model']}", f"largest batch, ckpt {'on' if ckpt == 'True' else 'off'}", found, "-"))
        if "loader" in f:
            ld = f["loader"]
            rows.append((f"fit {f['model']}", f"input pipeline alone, {ld.get('pairs', '-')} pairs",
                         f"{ld['images_per_s']:,.0f} img/s" if "images_per_s" in ld else f"ERROR {ld.get('error')}",
                         "-"))
        if key in err:
            rows.append((key, "-", f"ERROR {err[key]}", "-"))
        if role == "L":
            mfus = [r["mfu"] for r in f["runs"] if "mfu" in r]
            best = max(mfus) if mfus else None
            rows.append((f"MFU {f['model']}", "best fine-tuning setting", _pct(best),
                         _goal(None if smoke or best is None else best >= GOALS["mfu_l14"],
                               f">= {100 * GOALS['mfu_l14']:.0f}%")))

    pr = res.get("projection")
    if pr and pr.get("at_16_pairs"):
        a = pr["at_16_pairs"]
        rows.append(("paper recipe", f"{pr['model']}, 4 ep x {PAPER_TRAIN_IMAGES} imgs, 16 pairs",
                     f"{a['minutes']:.1f} min", _goal(None if smoke else a["minutes"] < GOALS["recipe_minutes"],
                                                      f"< {GOALS['recipe_minutes']:g} min")))
        b = pr["at_best"]
        if b["pairs"] != PAPER_PAIRS:
            rows.append(("paper recipe", f"same images at {b['pairs']} pairs (not the recipe)",
                         f"{b['minutes']:.1f} min", "-"))
    else:
        rows.append(("paper recipe", "ViT-L-14, 16 pairs", f"ERROR {err.get('projection', 'not run')}", "< 5 min"))

    for role, name in plan.models:
        e = res["embed"].get(role)
        if e:
            rows.append((f"embed {e['model']}", f"cliptk.embed, {e['images']:,} PIL imgs, {e['workers']} workers",
                         f"{e['embed_images_per_s']:,.0f} img/s", "-"))
            rows.append((f"embed {e['model']}", f"encode_image only, batch {e['batch_size']}",
                         f"{e['model_only_images_per_s']:,.0f} img/s, MFU {_pct(e.get('model_only_mfu'))}", "-"))
        elif f"embed {role}" in err:
            rows.append((f"embed {name}", "-", f"ERROR {err[f'embed {role}']}", "-"))
        elif f"embed {role}" in res.get("skipped", {}):
            rows.append((f"embed {name}", "-", res["skipped"][f"embed {role}"], "-"))
    return rows


def markdown(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("check", "setting", "result", "goal")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]
    line = lambda r: "| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, rows)])


# ================================================================================ main
def environment(device: torch.device, plan: Plan) -> dict:
    env = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(),
           "torch": torch.__version__, "cpus": os.cpu_count(), "device": str(device), "plan": asdict(plan),
           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
           "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        env.update(gpu=prop.name, gpu_memory_gib=prop.total_memory / 2**30, cuda=torch.version.cuda)
    else:
        env.update(cpu=platform.processor() or platform.machine())
    try:
        import open_clip

        env["open_clip"] = open_clip.__version__
    except ImportError:
        pass
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny models on the CPU, a few steps (checks the script)")
    ap.add_argument("--quick", action="store_true", help="fewer steps, max 256 pairs, 2,000 images to embed")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.json / .md (default: $OUT)")
    ap.add_argument("--max-pairs", type=int, default=None, help="cap of the largest-batch search (default 1024)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default min(12, CPUs - 2))")
    ap.add_argument("--budget-s", type=float, default=None, help="seconds after which remaining parts are skipped")
    ap.add_argument("--embed-n", type=int, default=None, help="images to embed (default 10,000)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads in --cpu-smoke")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: pytest,scorecam,finetune,embed")
    args = ap.parse_args(argv)
    plan = make_plan(args)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(args.threads)
        if not args.cpu_smoke:
            print("no CUDA device: use --cpu-smoke for the CPU version of this check", file=sys.stderr)
            return 2
    budget = Budget(plan.budget_s)
    res: dict[str, Any] = {"environment": environment(device, plan), "errors": {}, "finetune": {}, "embed": {},
                           "seconds": {}}

    def guarded(key: str, fn: Callable[[], None]) -> None:
        t = time.perf_counter()
        print(f"[gpu_check] {key} ... ({budget.left():.0f} s of budget left)", flush=True)
        try:
            fn()
        except Exception as err:  # every section is independent: report and go on
            res["errors"][key] = f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
            res.setdefault("tracebacks", {})[key] = traceback.format_exc()[-3000:]
            print(f"[gpu_check] {key} failed: {res['errors'][key]}", flush=True)
            free_memory()
        res["seconds"][key] = time.perf_counter() - t

    if "pytest" not in skip:
        guarded("pytest", lambda: section_pytest(plan, res))
    try:
        import cliptk  # noqa: F401
    except ModuleNotFoundError as err:
        res["errors"]["import cliptk"] = f"missing module {err.name!r}: carry its wheel (see benchmarks/RESULTS.md)"
        print(f"[gpu_check] cannot import cliptk: {err}", file=sys.stderr)
    else:
        guarded("matmul", lambda: section_matmul(plan, device, res))
        if "scorecam" not in skip:
            guarded("scorecam", lambda: section_scorecam(plan, device, res))
        if "finetune" not in skip:
            for role, name in plan.models:
                guarded(f"finetune {role}", lambda role=role, name=name: section_finetune(role, name, plan, device, res,
                                                                                          budget))
            guarded("projection", lambda: section_projection(res))
        if "embed" not in skip:
            for role, name in plan.models:
                if budget.ok(20):
                    guarded(f"embed {role}", lambda role=role, name=name: section_embed(role, name, plan, device, res))
                else:
                    res.setdefault("skipped", {})[f"embed {role}"] = "skipped: time budget"
    res["seconds"]["total"] = time.perf_counter() - budget.t0

    rows = build_table(res, plan)
    table = markdown(rows)
    title = (f"gpu_check ({plan.mode}) {res['environment']['date']} on "
             f"{res['environment'].get('gpu') or res['environment'].get('cpu')}, torch {torch.__version__}, "
             f"{res['seconds']['total']:.0f} s")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))
        (out / "gpu_check.md").write_text(f"{title}\n\n{table}\n")
        print(f"[gpu_check] wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    print(f"\n{title}\n{table}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
