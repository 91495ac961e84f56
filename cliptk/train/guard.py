"""The finite guard of a training step: the gradients' global norm on the device, and what a
:class:`~cliptk.train.NonFiniteLossError` says.

:meth:`cliptk.train.Trainer.step` stops before an optimizer update whose loss or gradients hold a
NaN/inf, without a host sync of its own: :func:`grad_norm` stays on the device (it is the norm
clipping computes anyway when ``grad_clip`` is set) and reaches the host in the same transfer as
the loss value, which the History row needs in any case. Under fp16 the gradient scaler's overflow
check (``unscale_``) decides whether the step is applied, as fp16 training needs.

Example:
    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(2))
    >>> p.grad = torch.tensor([3.0, 4.0])
    >>> opt = torch.optim.SGD([p], lr=0.1)
    >>> float(grad_norm(opt, torch.amp.GradScaler("cpu", enabled=False), grad_clip=None))
    5.0
    >>> p.grad = torch.tensor([float("nan"), 1.0])
    >>> grad_norm(opt, torch.amp.GradScaler("cpu", enabled=False), grad_clip=None).isnan().item()
    True
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .config import TrainConfig

__all__ = ["grad_norm", "step_scalars", "non_finite_message"]


def grad_norm(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, grad_clip: float | None
              ) -> torch.Tensor | None:
    """The global L2 norm of the (unscaled) gradients of ``optimizer``'s parameters, as a device
    tensor (no host sync): NaN/inf when any gradient is. With an enabled ``scaler`` the gradients
    are unscaled first (``scaler.step`` then skips the update if that found an inf/NaN); with
    ``grad_clip`` they are clipped, and the norm is the one the clipping computed. None when no
    parameter has a gradient."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not params:
        return None
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    if grad_clip is not None:
        return nn.utils.clip_grad_norm_(params, grad_clip)
    total_norm = getattr(nn.utils, "get_total_norm", None)   # torch >= 2.6
    if total_norm is not None:
        return total_norm([p.grad for p in params])
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))


def step_scalars(loss: torch.Tensor, norm: torch.Tensor | None, logs: dict[str, Any], world_size: int
                 ) -> tuple[float, float, dict[str, float]]:
    """The loss value, the gradient norm (NaN when ``norm`` is None) and the logs as floats, in
    one device-to-host transfer, averaged over ``world_size`` ranks (then identical on every rank,
    so every rank takes the same finite-guard decision and logs the same numbers).

    Example:
        >>> step_scalars(torch.tensor(0.5), torch.tensor(2.0), {"extra": torch.tensor(3.0), "n": 4}, 1)
        (0.5, 2.0, {'extra': 3.0, 'n': 4.0})
    """
    dev = loss.device
    # float64 keeps every value exactly as float(tensor) would give it (MPS has no float64)
    dtype = torch.float32 if world_size > 1 or dev.type == "mps" else torch.float64
    values = [loss.detach().reshape(()).to(dtype),
              norm.detach().reshape(()).to(dev, dtype) if norm is not None else torch.zeros((), dtype=dtype, device=dev)]
    plain, tensor_keys = {}, []
    for k, v in logs.items():
        if isinstance(v, torch.Tensor):
            values.append(v.detach().reshape(()).to(dev, dtype))
            tensor_keys.append(k)
        else:
            plain[k] = float(v.item() if isinstance(v, np.generic) else v)
    if world_size > 1:
        values += [torch.tensor(plain[k], dtype=dtype, device=dev) for k in plain]
        t = torch.stack(values)
        dist.all_reduce(t)
        t /= world_size
        out = t.tolist()
        got = dict(zip(tensor_keys + list(plain), out[2:]))
    else:
        out = torch.stack(values).tolist()
        got = {**dict(zip(tensor_keys, out[2:])), **plain}
    return out[0], out[1] if norm is not None else float("nan"), {k: got[k] for k in logs}


def non_finite_message(what: str, value: float | str, loss: float | None, *, bad_weights: str | None, kept: str,
                       cfg: TrainConfig, epoch: int, step: int, batch: int, checkpoint: Path | None) -> str:
    """The message of a :class:`~cliptk.train.NonFiniteLossError`: what became NaN/inf
    (``"loss"`` of ``value``; ``"gradients"`` of global norm ``value`` with a finite ``loss``;
    ``"weights"``, ``value`` naming the first bad tensor), where (epoch, optimizer step, batch),
    what the model in memory holds (``kept``), the last checkpoint and what to try.

    Example:
        >>> print(non_finite_message("gradients", float("nan"), 0.5, bad_weights=None, kept="the model is fine",
        ...                          cfg=TrainConfig(epochs=2), epoch=0, step=4, batch=5, checkpoint=None)[:78])
        gradients are not finite (global norm nan; the loss, 0.5, was finite) at epoch
    """
    if what == "loss":
        head = f"loss is {value}"
        fix = f"Try a lower lr (now {cfg.lr:g}), amp='bf16' instead of fp16, grad_clip=1.0, or check the batch's images"
    elif what == "gradients":
        head = f"gradients are not finite (global norm {value}; the loss, {loss}, was finite)"
        fix = ("Check the loss for operations with an infinite derivative at the values it meets (sqrt(0), log(0), "
               "x/0: add an eps), or try a lower lr or grad_clip=1.0")
    else:
        head = "weights are not finite"
        fix = f"Try a lower lr (now {cfg.lr:g}) or grad_clip=1.0, and check code that changes the weights"
    if bad_weights is not None:
        head += f" (NaN/inf in the weights: {bad_weights})" if what == "weights" else \
            f"; the weights themselves hold NaN/inf ({bad_weights})"
    where = checkpoint or "none (set TrainConfig.output_dir to keep checkpoints)"
    return (f"{head} at epoch {epoch + 1}/{cfg.epochs}, optimizer step {step + 1} (batch {batch} of the epoch); "
            f"training stopped before this update, so {kept} and the last checkpoint is {where}. {fix}; continue "
            "with fit(..., resume=<checkpoint>).")
