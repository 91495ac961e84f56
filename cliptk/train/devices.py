"""Where a run computes: torchrun's process group, the device and the autocast dtype.

:func:`init_distributed` starts the process group from torchrun's environment (NCCL on CUDA, gloo on
CPU) when :func:`cliptk.train.fit` runs under ``torchrun``; :func:`pick_device` and
:func:`amp_dtype` resolve ``TrainConfig.device`` and ``TrainConfig.amp``; :func:`from_rank0` gives
every rank what rank 0 decided (an evaluation row, a checkpoint path, a refusal) and
:func:`any_rank` what any rank flagged (a stop request), so ranks leave the loop together.

Example:
    >>> init_distributed("cpu")   # a plain process: no process group to start
    False
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import torch
import torch.distributed as dist

from .._util import world

__all__ = ["init_distributed", "pick_device", "amp_dtype", "from_rank0", "any_rank"]


def init_distributed(device_pref: str) -> bool:
    """Start the process group from torchrun's environment if needed (NCCL on CUDA, else gloo);
    True if it was started here (the caller then destroys it)."""
    if dist.is_available() and dist.is_initialized():
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    cuda = torch.cuda.is_available() and device_pref != "cpu"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def pick_device(pref: str) -> torch.device:
    """The device of ``TrainConfig.device``: ``"auto"`` is this rank's GPU (``LOCAL_RANK``) or the
    CPU; a bare ``"cuda"`` under torchrun is this rank's GPU.

    Example:
        >>> pick_device("cpu")
        device(type='cpu')
    """
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and dev.index is None and world()[1] > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``TrainConfig.amp`` on ``device`` (None = off): CUDA only, ``"auto"``
    prefers bf16 and falls back to fp16 (with a gradient scaler) where bf16 is unsupported.

    Example:
        >>> amp_dtype("auto", torch.device("cpu")) is None
        True
    """
    if device.type != "cuda" or amp == "off":
        if amp in ("bf16", "fp16") and device.type != "cuda":
            warnings.warn(f"amp={amp!r} is ignored on {device.type}: mixed precision is used on CUDA only", stacklevel=3)
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def from_rank0(obj: Any, world_size: int) -> Any:
    """``obj`` as rank 0 has it, on every rank (a picklable object; ``obj`` itself in a single
    process).

    Example:
        >>> from_rank0({"mAP": 0.5}, world_size=1)
        {'mAP': 0.5}
    """
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flags, world_size: int, device: torch.device) -> list[bool]:
    """Each of ``flags`` true on every rank when it is true on any rank (one all-reduce; the
    flags themselves in a single process).

    Example:
        >>> any_rank([True, False], world_size=1, device=torch.device("cpu"))
        [True, False]
    """
    if world_size == 1:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]
