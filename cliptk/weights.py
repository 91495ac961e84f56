"""Reading weight files of every layout an open_clip user has, and loading them into a model.

:func:`read_checkpoint` turns a file into open_clip's key names (wrapper prefixes removed, an image
tower's own keys put under ``visual.``) plus cliptk's metadata; :func:`load_state` applies open_clip's
own layout conversions and loads the result, with a report of missing, unexpected and mis-shaped keys
that says what to do. :func:`cliptk.models.load_model` is the usual way in; these two are for files
that hold more than a model (a training checkpoint) or for loading into a model already built.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

__all__ = ["read_checkpoint", "load_state", "has_text_tower"]

#: Key prefixes that wrap a state dict without changing it: DDP / DataParallel, ``torch.compile``,
#: and cliptk's :class:`~cliptk.models.ClipModel` (whose open_clip model is its ``clip`` attribute).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "clip.")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The weights of a checkpoint file with open_clip's key names, and cliptk's metadata (``{}`` if none).

    Reads every layout a CLIP user has: an open_clip state dict (``.bin``/``.pt``/``.pth``, or the
    hub's ``open_clip_model.safetensors``); an open_clip training checkpoint (``{"state_dict": ...,
    "optimizer": ...}``, keys prefixed ``module.`` by DDP); a TorchScript file (OpenAI's); a
    cliptk ``.safetensors`` file (keys prefixed ``clip.``, metadata naming the model); and
    image-only state dicts (keys ``visual.*``, or the image tower's own keys). Files other than
    safetensors are read with ``torch.load(weights_only=True)`` (open_clip's ``load_state_dict``).

    Raises:
        RuntimeError: the file cannot be read as a checkpoint (names the file).
    """
    path = Path(path)
    meta: dict[str, str] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            state = load_file(str(path))
        else:
            from open_clip.factory import load_state_dict

            state = load_state_dict(str(path), device="cpu")
    except Exception as err:
        raise RuntimeError(f"cannot read checkpoint {path}: {type(err).__name__}: {str(err)[:300]}; the file is "
                           "damaged (truncated or half-written?) or not a state dict (.safetensors, .bin, .pt) of an "
                           "open_clip or cliptk model. A training run's checkpoints/ folder holds the same weights "
                           "at its last checkpoint") from err
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        nested = [state[k] for k in ("state_dict", "model", "module") if isinstance(state.get(k), dict)]
        state = nested[0] if nested else state   # a training checkpoint: weights beside optimizer state
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuntimeError(f"{path} holds no state dict of tensors (got {type(state).__name__}); expected the "
                           "weights of an open_clip or cliptk model")
    if "name" not in meta or "image_only" not in meta:
        meta = {}   # not written by cliptk (e.g. the hub's {"format": "pt"})
    elif any(k.startswith("clip.") for k in state):
        # a cliptk file's model is its clip.* keys; others are modules a trainer attached to the model
        # (TempNetTrainer's model.tempnet), kept in the file for whoever wants them, not model weights
        state = {k: v for k, v in state.items() if k.startswith("clip.")}
    return _open_clip_keys(state), meta


def _open_clip_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with wrapper prefixes (DDP ``module.``, ``torch.compile``'s ``_orig_mod.``, cliptk's
    ``clip.``) removed, so keys read as open_clip's ``CLIP.state_dict()``; an image tower's own state
    dict (``conv1.weight`` of a ViT or ResNet, ``trunk.*`` of a timm tower) gets ``visual.``."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    if not any(k.startswith("visual.") for k in state) and (
            "conv1.weight" in state or any(k.startswith("trunk.") for k in state)):
        state = {f"visual.{k}": v for k, v in state.items()}
    return dict(state)


def has_text_tower(state: dict[str, torch.Tensor]) -> bool:
    """Whether an open_clip-keyed state holds weights beyond the image tower."""
    return any(not k.startswith("visual.") and k not in ("logit_scale", "logit_bias") for k in state)


def _to_layout(clip: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip's conversions of ``load_checkpoint`` (third-party layouts, the old text layout,
    scalar logit scale, resized position embeddings) for ``clip``."""
    from open_clip.factory import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = _open_clip_keys(state)
    own = clip.state_dict()
    try:
        state = convert_state_dict(clip, state)
        if "positional_embedding" in state and not hasattr(clip, "positional_embedding"):
            state = convert_to_custom_text_state_dict(state)
        for key in ("logit_scale", "logit_bias"):
            if key in state and key in own and state[key].ndim != own[key].ndim:
                state[key] = state[key].reshape(own[key].shape)
        position_ids = "text.transformer.embeddings.position_ids"   # gone from transformers >= 4.31
        if position_ids in state and position_ids not in own:
            del state[position_ids]
        resize_pos_embed(state, clip)
        if has_text_tower(state) and (hasattr(clip, "text") or hasattr(clip, "positional_embedding")):
            resize_text_pos_embed(state, clip)
    except Exception:   # an architecture that does not fit: the key/shape report below says how
        pass
    return state


def load_state(model, state: dict[str, torch.Tensor], source: str = "state") -> None:
    """Load weights of any open_clip or cliptk layout (see :func:`read_checkpoint`) into ``model``
    (a :class:`~cliptk.models.ClipModel`).

    The image tower must fit exactly; a state without a text tower loads into the image tower and
    leaves the text tower as it is; a missing logit scale keeps the model's.

    Raises:
        RuntimeError: keys are missing or unexpected, or shapes disagree (names ``source``, the
            model, a few keys, and what to do).
    """
    clip = model.clip
    state = _to_layout(clip, state)
    own = clip.state_dict()
    with_text = has_text_tower(state) and not model.image_only
    unexpected = [k for k in state if k not in own and (k.startswith("visual.") or with_text)]
    missing = [k for k in own if k not in state and (k.startswith("visual.") or with_text)
               and k not in ("logit_scale", "logit_bias")]
    bad_shape = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own
                 if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad_shape:
        def few(keys: list[str]) -> str:
            return f"{len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})" if keys else "0"

        raise RuntimeError(
            f"{source} does not fit {model.name}: keys missing {few(missing)}, unexpected {few(unexpected)}, "
            f"shapes differing {few(bad_shape)}. Was it saved from another architecture? Load it with that "
            f"name: load_model('<name>', '{source}') or --model <name> (names: cliptk.list_models())")
    usable = {k: v.to(own[k].dtype) for k, v in state.items() if k in own}
    clip.load_state_dict(usable, strict=False)
