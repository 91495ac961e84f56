"""CUDA checks of cliptk (``pytest -m gpu tests/test_gpu.py``): AMP fine-tuning, the fp16 gradient
scaler, gradient checkpointing, the fast Score-CAM and embeddings on the GPU against the CPU.

Every test needs a CUDA device and is skipped without one (the CI machines have none; run them on a
GPU machine, e.g. through ``benchmarks/gpu_check.py``). Models are cliptk's tiny configs with random
weights (conftest's ``make_model``); data are conftest's ``tiny_players``. References are
independent of the code under test: the CPU result of the same function, the same gradients
computed without checkpointing, the autocast dtype seen inside the model, the weights before training.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from cliptk.embed import embed
from cliptk.explain import similarity_cam
from cliptk.losses import make_loss
from cliptk.train import TrainConfig, find_checkpoint, fit
from conftest import make_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA device (torch.cuda.is_available() is False)"),
]


# ---------------------------------------------------------------------------------------- AMP training
@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_fit_amp_trains_in_reduced_precision(tiny_players, tmp_path, amp, dtype):
    """A few fit steps under autocast: the MLP really runs in the AMP dtype, losses are finite, the
    weights move and stay finite; the fp16 run holds an active grad scaler with a finite scale, the
    bf16 run none (its state dict is empty)."""
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16 support")
    model = make_model("cliptk-micro", image_only=True, projection=False)
    before = {k: v.detach().clone() for k, v in model.visual.named_parameters()}
    seen: list[torch.dtype] = []
    hook = model.visual.transformer.resblocks[0].mlp.c_fc.register_forward_hook(
        lambda _m, _i, out: seen.append(out.dtype))
    cfg = TrainConfig(batch_size=4, epochs=1, max_steps=4, lr=1e-3, lr_end=1e-4, warmup_epochs=0.0, amp=amp,
                      device="cuda", eval_before=False, progress=False, output_dir=str(tmp_path / "run"))
    try:
        history = fit(model, tiny_players, cfg)
    finally:
        hook.remove()
    steps = history.steps
    assert len(steps) == 4 and history.stopped == "max_steps"
    assert np.isfinite(steps["loss"].to_numpy()).all()
    assert seen and set(seen) == {dtype}
    assert model.device.type == "cuda"
    moved = [k for k, v in model.visual.named_parameters() if not torch.equal(v.detach().cpu(), before[k])]
    assert len(moved) > len(before) // 2, f"only {moved} changed"
    assert all(torch.isfinite(v).all() for v in model.parameters())

    state = torch.load(find_checkpoint(tmp_path / "run") / "trainer.pt", map_location="cpu", weights_only=True)
    if amp == "fp16":
        scale = float(state["scaler"]["scale"])
        assert math.isfinite(scale) and scale > 0
    else:
        assert state["scaler"] == {}


# ---------------------------------------------------------------------------------------- checkpointing
def _grads(model, x: torch.Tensor, amp: bool) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_fn = make_loss("infonce", label_smoothing=0.1)
    b = x.shape[0] // 2
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        emb = model(x)
    loss = loss_fn(emb[:b].float(), emb[b:].float(), model.logit_scale.exp())
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_grad_checkpointing_gives_the_same_gradients(amp):
    """The gradients with open_clip's checkpointing equal those without; the checkpointed run
    really recomputes each block in the backward pass (its forward pre-hook fires twice: the
    recomputation may stop early, before a post-forward hook would run)."""
    if amp and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16 support")
    model = make_model("cliptk-tiny", image_only=True, projection=False, device="cuda").train()
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(8, 3, *model.image_size, device="cuda", generator=g)
    calls = []
    hook = model.visual.transformer.resblocks[1].register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        plain = _grads(model, x, amp)
        n_plain = len(calls)
        model.set_grad_checkpointing(True)
        assert model.visual.transformer.grad_checkpointing
        ckpt = _grads(model, x, amp)
        n_ckpt = len(calls) - n_plain
    finally:
        hook.remove()
        model.set_grad_checkpointing(False)
    assert n_plain == 1 and n_ckpt == 2
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for name, ref in plain.items():
        err = (ckpt[name] - ref).norm() / ref.norm().clamp_min(1e-12)
        assert err < (2e-2 if amp else 1e-4), f"{name}: relative gradient difference {float(err):.2e}"


# ---------------------------------------------------------------------------------------- Score-CAM
@pytest.mark.parametrize("amp", [False, None], ids=["fp32", "default-bf16"])
def test_fast_scorecam_on_cuda_matches_cpu(tiny_players, amp):
    """The exact fast Score-CAM (all channels scored) gives the same map on CUDA as on the CPU,
    in fp32 and with its default bf16 autocast on CUDA."""
    cpu = make_model("cliptk-tiny")
    gpu = copy.deepcopy(cpu).to("cuda")
    train = tiny_players.subset("train")
    a, b = train[0], train[1]
    ref = similarity_cam(cpu, a, b, fast=True, symmetric=True)
    out = similarity_cam(gpu, a, b, fast=True, symmetric=True, amp=amp)
    assert out.method == ref.method == "scorecam-fast"
    assert out.channels == ref.channels == cpu.visual.transformer.width
    assert gpu.device.type == "cuda" and next(gpu.parameters()).dtype == torch.float32
    for m_ref, m_out in ((ref.input_map_a, out.input_map_a), (ref.input_map_b, out.input_map_b)):
        assert m_ref.std() > 0 and m_out.std() > 0
        r = np.corrcoef(m_ref.ravel(), m_out.ravel())[0, 1]
        assert r >= 0.99, f"Pearson r = {r:.4f} between the CUDA and CPU maps"
    assert abs(out.similarity - ref.similarity) < (1e-2 if amp is None else 1e-4)


# ---------------------------------------------------------------------------------------- embeddings
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_embed_on_cuda_matches_cpu(tiny_players, amp):
    """``cliptk.embed`` on CUDA (fp32, or its default bf16 autocast) gives the CPU embeddings:
    cosine > 0.999 for every image, rows L2-normalised, returned on the CPU as float32."""
    cpu = make_model("cliptk-tiny")
    gpu = copy.deepcopy(cpu).to("cuda")
    ref = embed(cpu, tiny_players, batch_size=8, progress=False)
    out = embed(gpu, tiny_players, batch_size=8, amp=amp, progress=False)
    assert out.device.type == "cpu" and out.dtype == torch.float32 and out.shape == ref.shape
    assert torch.allclose(out.norm(dim=1), torch.ones(len(tiny_players)), atol=1e-4)
    cos = (out * ref).sum(1)
    assert cos.min() > 0.999, f"lowest cosine {float(cos.min()):.5f} at row {int(cos.argmin())}"
    # the images differ, so agreement is not trivial: embeddings of distinct rows are not all equal
    assert (ref @ ref.T).min() < 0.999
