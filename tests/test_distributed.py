"""Two CPU ``gloo`` processes: losses with ``gather=True`` equal the single-process loss on the global batch.

Each rank holds half of a global batch of 8 pairs, runs a DDP-wrapped tiny projection
head, and computes the loss of its local rows against the gathered columns. The test checks,
against one process computing the same loss on the whole batch with ``gather=False``:

- the mean of the per-rank losses equals the global loss;
- the gradient w.r.t. each rank's inputs, divided by the world size (rank r receives
  ``d(Σ_k loss_k)/dx_r``), equals the global gradient's slice;
- the DDP-averaged parameter gradients (projection weights and logit scale) equal the global ones;
- for InfoNCE, the per-rank loss equals open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from cliptk.losses import LogitScale, make_loss

WORLD, B_LOCAL, D_IN, D_OUT = 2, 4, 5, 6
N = WORLD * B_LOCAL
JOIN_TIMEOUT_S = 300  # bound on the whole spawn; a hung collective fails the test instead of blocking


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    guide = torch.eye(N)
    guide[6] = guide[1] + 0.05 * guide[6]  # global rows 1 (rank 0) and 6 (rank 1): same player to the guide
    return {
        "xa": torch.randn(N, D_IN, generator=g, dtype=torch.float64),
        "xb": torch.randn(N, D_IN, generator=g, dtype=torch.float64),
        "ids": torch.tensor([0, 1, 2, 3, 0, 5, 2, 7]),  # positives shared across ranks
        "ta": torch.randn(N, 3, generator=g, dtype=torch.float64),
        "tb": torch.randn(N, 3, generator=g, dtype=torch.float64),
        "guide": guide.double(),
    }


CASES: dict[str, tuple[str, dict, tuple[str, ...]]] = {
    # case name: (registry name, constructor kwargs, inputs taken from _data())
    "infonce": ("infonce", {"label_smoothing": 0.1}, ()),
    "supcon": ("supcon", {}, ("ids",)),
    "supcon_all": ("supcon", {"views": "all"}, ("ids",)),
    "decoupled": ("decoupled", {}, ("ids",)),
    "soft": ("soft", {}, ("teacher",)),
    "gist": ("gist", {"margin": 0.1, "within": True}, ("guide",)),
}


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.proj = nn.Linear(D_IN, D_OUT).double()
        self.scale = LogitScale(init=10.0).double()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.proj(x), self.scale()


def _run_case(case: str, rows: slice, gather: bool, wrap=lambda m: m) -> dict[str, torch.Tensor]:
    """Forward + backward of one loss on `rows` of the global batch; returns loss and gradients."""
    name, kwargs, needs = CASES[case]
    data = _data()
    model = wrap(_Head())
    xa = data["xa"][rows].clone().requires_grad_(True)
    xb = data["xb"][rows].clone().requires_grad_(True)
    z, scale = model(torch.cat([xa, xb]))  # one forward per step, as DDP expects
    za, zb = z.chunk(2)
    inputs = {}
    if "ids" in needs:
        inputs["ids"] = data["ids"][rows]
    if "teacher" in needs:
        inputs["teacher"] = (data["ta"][rows], data["tb"][rows])
    if "guide" in needs:
        inputs["guide"] = (data["guide"][rows], data["guide"][rows])
    loss_fn = make_loss(name, gather=gather, **kwargs)
    loss = loss_fn(za, zb, scale, **inputs)
    loss.backward()
    head = model.module if isinstance(model, DDP) else model
    out = {
        "loss": loss.detach(),
        "grad_xa": xa.grad,
        "grad_xb": xb.grad,
        "grad_w": head.proj.weight.grad,
        "grad_scale": head.scale.log_scale.grad,
    }
    if case == "gist":
        out["n_masked"] = loss_fn.last_mask.sum()
    if case == "infonce" and gather:
        try:
            import open_clip.loss as open_clip_loss
        except ImportError:
            return out
        ref = open_clip_loss.ClipLoss(local_loss=True, gather_with_grad=True, rank=dist.get_rank(), world_size=WORLD)
        za_n, zb_n = (torch.nn.functional.normalize(t.detach(), dim=-1) for t in (za, zb))
        out["open_clip_no_smoothing"] = ref(za_n, zb_n, scale.detach())
        out["ours_no_smoothing"] = make_loss("infonce", label_smoothing=0.0, gather=True)(za_n, zb_n, scale.detach())
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        results = {case: _run_case(case, rows, gather=True, wrap=DDP) for case in CASES}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp")
    ctx = mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail(f"DDP workers did not finish within {JOIN_TIMEOUT_S} s (hung collective?)")
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("case", list(CASES))
def test_gathered_loss_and_grads_equal_single_process(rank_results, case):
    ref = _run_case(case, slice(0, N), gather=False)
    per_rank = [r[case] for r in rank_results]
    torch.testing.assert_close(torch.stack([r["loss"] for r in per_rank]).mean(), ref["loss"])
    for key in ("grad_xa", "grad_xb"):  # rank r holds d(sum_k loss_k)/dx_r = WORLD * dL/dx_r
        torch.testing.assert_close(torch.cat([r[key] for r in per_rank]) / WORLD, ref[key])
    for key in ("grad_w", "grad_scale"):  # DDP already averaged these; identical on every rank
        for r in per_rank:
            torch.testing.assert_close(r[key], ref[key])
    if case == "gist":  # the planted pair straddles the ranks and is masked on both
        assert sum(int(r["n_masked"]) for r in per_rank) == int(ref["n_masked"]) == 2


def test_infonce_gather_matches_open_clip_local_loss(rank_results):
    for r in rank_results:
        if "open_clip_no_smoothing" not in r["infonce"]:
            pytest.skip("open_clip not installed")
        torch.testing.assert_close(r["infonce"]["ours_no_smoothing"], r["infonce"]["open_clip_no_smoothing"])
        assert math.isfinite(float(r["infonce"]["loss"]))
