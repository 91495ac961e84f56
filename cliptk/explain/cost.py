"""What an exact Score-CAM map costs where it runs, and the CPU defaults that follow.

An exact map passes one masked image per channel of the target layer through the image tower.
On a CUDA device or for cliptk's tiny towers that takes seconds; for a *large* tower
(:data:`LARGE_TOWER` parameters: ViT-S and up, RN50 and up) on a CPU it takes minutes, so the
defaults there approximate it with :data:`AUTO_GROUPS` channel groups
(:meth:`cliptk.explain.CamConfig.for_model`) and long maps show a progress bar
(:data:`LONG_MAP_BATCHES`). Its own module because the config (``target``) and the layer
machinery (``layers``) both read it.

Example:
    >>> import cliptk as ct
    >>> slow_exact(ct.load_model("cliptk-micro", None)), slow_exact(ct.load_model("cliptk-micro", None), "cuda")
    (False, False)
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["LARGE_TOWER", "AUTO_GROUPS", "LONG_MAP_BATCHES", "slow_exact", "tower_parameters"]

#: An image tower with more parameters than this is *large*: an exact Score-CAM map passes one
#: masked image per channel through it, which on a CPU is slow, so the CPU defaults approximate it.
LARGE_TOWER = 10_000_000
#: Channel groups the CPU default scores for a large tower (``top_channels``).
AUTO_GROUPS = 64
#: A map of at least this many masked batches on a large tower on the CPU shows a progress bar.
LONG_MAP_BATCHES = 2


def tower_parameters(model: nn.Module) -> int:
    """Parameters of the image tower (``model.visual``, else the model)."""
    return sum(p.numel() for p in getattr(model, "visual", model).parameters())


def slow_exact(model: nn.Module, device: torch.device | str | None = None) -> bool:
    """True when an exact map is slow: a large image tower (:data:`LARGE_TOWER`) on the CPU
    (``device``, default: the model's)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    return device.type == "cpu" and tower_parameters(model) > LARGE_TOWER
