"""Where to look inside the model, and how to run it while explaining.

Score-CAM and Grad-CAM read the activations of one *target layer* of the image tower. This module
finds that layer (:func:`default_target_layer`, or a dotted name relative to the model or to its
tower), turns its output into channel maps ``[B, C, h, w]`` (ViT tokens ``[B, 1 + h*w, C]`` are
reshaped with the patch grid computed from the model), and runs the model the way an explanation
needs: fp32, eval mode, no parameter gradients — with every dtype, mode, ``requires_grad`` flag and
``.grad`` tensor restored afterwards, also on error (:func:`_cam_mode`). Forward hooks are always
released in a ``finally``.

Example:
    >>> import cliptk as ct
    >>> model = ct.load_model("cliptk-micro", None)        # random init, offline
    >>> default_target_layer(model)
    'clip.visual.transformer.resblocks.1.ln_1'
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import cost
from .target import CamConfig

__all__ = ["default_target_layer"]

_HINTED: set[str] = set()   # models whose slow exact map was explained once in this process


def _tower(model: nn.Module) -> nn.Module:
    return getattr(model, "visual", model)


def _tower_type(model: nn.Module) -> str:
    if hasattr(model, "tower_type"):
        return model.tower_type
    return {"VisionTransformer": "vit", "ModifiedResNet": "resnet"}.get(type(_tower(model)).__name__, "")


def default_target_layer(model: nn.Module) -> str:
    """The dotted name (relative to ``model``) of the layer Score-CAM explains by default.

    * ViT (open_clip ``VisionTransformer``): ``ln_1`` of the last residual block, i.e. the tokens
      entering the last attention. (The last block's *output* tokens reach the embedding only
      through the class token, so their Grad-CAM gradients are zero.)
    * ResNet (open_clip ``ModifiedResNet``): the last bottleneck of ``layer4``, before the
      attention pool.

    Raises:
        ValueError: another tower type; pass ``layer=`` (a dotted module name) instead.

    Example:
        >>> import cliptk as ct
        >>> default_target_layer(ct.load_model("cliptk-tiny", None))
        'clip.visual.transformer.resblocks.3.ln_1'
    """
    kind, tower = _tower_type(model), _tower(model)
    prefix = next((n for n, m in model.named_modules() if m is tower), "")
    prefix = f"{prefix}." if prefix else ""
    if kind == "vit":
        return f"{prefix}transformer.resblocks.{len(tower.transformer.resblocks) - 1}.ln_1"
    if kind == "resnet":
        return f"{prefix}layer4.{len(tower.layer4) - 1}"
    raise ValueError(f"no default Score-CAM layer for a {type(tower).__name__} tower; pass layer='<dotted name>' "
                     f"of a layer with spatial output, one of e.g. {[n for n, _ in model.named_modules()][-5:]}")


def _resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
    """``(dotted name relative to model, module)`` of ``layer``: a module of the model, a dotted name
    relative to the model or to its image tower, or ``None`` (:func:`default_target_layer`)."""
    if isinstance(layer, nn.Module):
        name = next((n for n, m in model.named_modules() if m is layer), None)
        if name is None:
            raise ValueError("layer= is a module that is not part of the model; pass one of model.named_modules()")
        return name, layer
    name = default_target_layer(model) if layer is None else layer
    for root in (model, _tower(model)):
        try:
            module = root.get_submodule(name)
        except AttributeError:
            continue
        if not any(m is module for m in _tower(model).modules()):
            raise ValueError(f"layer {name!r} is not part of the image tower, so it never runs on images; "
                             f"pick one under {default_target_layer(model).rsplit('.', 3)[0]!r}")
        return next(n for n, m in model.named_modules() if m is module), module
    raise ValueError(f"layer {name!r} is not a submodule of {type(model).__name__} nor of its image tower; "
                     "list candidates with [n for n, _ in model.named_modules()]")


def _token_grid(model: nn.Module) -> tuple[int, int]:
    """``(rows, cols)`` of a ViT's patch grid: image size / patch size of the tower."""
    tower = _tower(model)
    if hasattr(tower, "grid_size"):
        return tuple(int(g) for g in tower.grid_size)
    size = getattr(model, "image_size", None) or tower.image_size
    patch = tower.patch_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return size[0] // patch[0], size[1] // patch[1]


class _ToGrid:
    """Reshape transform for the library: ``[B, C, h, w]`` passes; tokens ``[B, N, C]`` (batch-first,
    as open_clip's transformer runs; ``[N, B, C]`` when ``batch_first`` is False) drop their leading
    prefix tokens (class token, registers) and become ``[B, C, rows, cols]``."""

    def __init__(self, grid: tuple[int, int] | None, batch_first: bool = True):
        self.grid, self.batch_first = grid, batch_first

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return x
        if x.ndim != 3 or self.grid is None:
            raise ValueError(f"target layer output has shape {tuple(x.shape)}: expected [B, C, h, w] or ViT tokens "
                             "[B, 1 + h*w, C]; choose a layer with spatial output (layer=)")
        if not self.batch_first:
            x = x.transpose(0, 1)
        rows, cols = self.grid
        n_prefix = x.shape[1] - rows * cols
        if n_prefix < 0:
            raise ValueError(f"ViT layer has {x.shape[1]} tokens, fewer than its {rows}x{cols} patch grid")
        return x[:, n_prefix:].reshape(x.shape[0], rows, cols, x.shape[2]).permute(0, 3, 1, 2)


def _reshape_for(model: nn.Module) -> _ToGrid:
    tower = _tower(model)
    if _tower_type(model) == "vit" or hasattr(tower, "transformer"):
        return _ToGrid(_token_grid(model), getattr(getattr(tower, "transformer", None), "batch_first", True))
    return _ToGrid(None)


@contextmanager
def _cam_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in fp32, eval mode and without parameter gradients; restore every tensor's dtype,
    the train/eval mode, ``requires_grad`` and ``.grad`` afterwards (also on error)."""
    params = list(model.named_parameters())
    buffers = [(m, n, b) for m in model.modules() for n, b in m._buffers.items() if b is not None]
    dtypes = {id(p): p.dtype for _, p in params}
    buf_dtypes = [(m, n, b.dtype) for m, n, b in buffers]
    grads = {id(p): p.grad for _, p in params}
    flags = {id(p): p.requires_grad for _, p in params}
    training = model.training
    try:
        with torch.inference_mode(False):
            for _, p in params:
                p.grad = None
                p.requires_grad_(False)
            all_dtypes = [*dtypes.values(), *(dt for *_, dt in buf_dtypes)]
            if any(dt.is_floating_point and dt != torch.float32 for dt in all_dtypes):
                model.float()   # otherwise a no-op walk over every tensor (~1 ms of a 50 ms call on the tiny ViT)
        model.eval()
        yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for _, p in params:
                if p.dtype != dtypes[id(p)]:
                    p.data = p.data.to(dtypes[id(p)])
                p.requires_grad_(flags[id(p)])
                p.grad = grads[id(p)]
            for m, n, dt in buf_dtypes:
                if m._buffers[n] is not None and m._buffers[n].dtype != dt:
                    m._buffers[n] = m._buffers[n].to(dt)
        model.train(training)


@contextmanager
def _hook(layer: nn.Module, store: list) -> Iterator[None]:
    """Append ``layer``'s output (the first element of a tuple output) to ``store`` on every forward
    pass while the context is open."""
    handle = layer.register_forward_hook(lambda _m, _i, out: store.append(out[0] if isinstance(out, tuple) else out))
    try:
        yield
    finally:
        handle.remove()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _scale(model: nn.Module, config: CamConfig) -> float:
    """The softmax temperature of the Score-CAM score: ``config.scale``, else the model's
    ``logit_scale.exp()`` capped at 100 (100 for a model without one)."""
    if config.scale is not None:
        return float(config.scale)
    logit_scale = getattr(model, "logit_scale", None)
    return float(min(logit_scale.detach().float().exp().item(), 100.0)) if logit_scale is not None else 100.0


def _batch_size(batch_size: int | None, device: torch.device) -> int:
    """Masked images per forward pass: ``batch_size``, else 32 on CPU and 256 on CUDA."""
    return batch_size or (256 if device.type == "cuda" else 32)


def _embed(model: nn.Module, x: torch.Tensor, batch_size: int, amp: bool = False) -> torch.Tensor:
    """L2-normalised fp32 embeddings of ``x`` ``[N, 3, H, W]`` in batches (model already in CAM mode)."""
    out = []
    for i in range(0, x.shape[0], batch_size):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out.append(model(x[i:i + batch_size]).float())
    return F.normalize(torch.cat(out), dim=-1)


def _long_map(model: nn.Module, config: CamConfig, n_batches: int, approximate: bool) -> bool:
    """Whether a map of ``n_batches`` masked batches shows a progress bar (``config.progress``, or
    automatically for :data:`cliptk.explain.cost.LONG_MAP_BATCHES` or more on a large tower on
    the CPU). An exact long map also says once per model how to make it faster."""
    slow = n_batches >= cost.LONG_MAP_BATCHES and cost.slow_exact(model)
    if slow and not approximate:
        name = getattr(model, "name", type(model).__name__)
        if name not in _HINTED:
            _HINTED.add(name)
            warnings.warn(f"exact Score-CAM of {name} on the CPU passes {n_batches} batches of masked images "
                          f"through its image tower per map (slow); fast=True, top_channels={cost.AUTO_GROUPS} "
                          "approximates it with one batch (see CamConfig)", UserWarning, stacklevel=4)
    return bool(config.progress) if config.progress is not None else slow


def _bar(iterable: Iterable, show: bool, desc: str):
    """``iterable`` wrapped in a ``tqdm.auto`` bar when ``show``."""
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="batch", leave=False)
