"""Checkpoints of a training run: written atomically, found again, restored exactly.

A run's ``output_dir/checkpoints/`` holds ``step-NNNNNNNN/`` folders, each with the weights
(``model.safetensors``) and everything else needed to continue bit for bit (``trainer.pt``:
optimizer, scheduler, grad scaler, Python / NumPy / torch RNG states, epoch and batch position,
config and history), plus a ``latest.json`` manifest. :func:`save_checkpoint` writes a folder under
a temporary name and renames it into place only when complete, so a crash at any point leaves the
previous checkpoint as the one :func:`find_checkpoint` returns; :func:`restore` loads one into a
model, optimizer, scheduler and scaler; :func:`find_weights` resolves "the weights of this run" for
evaluation.

Example:
    >>> import tempfile
    >>> find_checkpoint(tempfile.mkdtemp()) is None   # an empty folder holds no checkpoint
    True
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from .._util import atomic_write_text
from ..models import ClipModel, save_model
from .config import TrainConfig

__all__ = ["WEIGHTS", "STATE", "LATEST", "find_checkpoint", "find_weights", "save_checkpoint", "write_state",
           "restore", "rng_state", "set_rng_state", "seed_all"]

#: file names inside a checkpoint folder, and the manifest beside the folders
WEIGHTS, STATE, LATEST = "model.safetensors", "trainer.pt", "latest.json"
_CKPT = re.compile(r"^step-(\d{8})$")
#: config fields that may change on resume without making the run differ from an uninterrupted one
_RESUME_NEUTRAL = {"output_dir", "progress", "num_workers", "max_steps", "max_minutes", "eval_batch_size",
                   "keep_checkpoints", "save_every_steps", "device", "data", "cache_images"}


def _is_complete(path: Path) -> bool:
    return path.is_dir() and (path / WEIGHTS).is_file() and (path / STATE).is_file()


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint directory to resume from, or None if there is none.

    ``path`` may be a checkpoint directory itself, a run's ``output_dir`` or its ``checkpoints/``
    folder. The ``latest.json`` manifest is followed when it points at a complete checkpoint;
    otherwise the complete ``step-NNNNNNNN`` directory with the highest step is used. Temporary
    directories of an interrupted save are never picked up.
    """
    path = Path(path)
    if _is_complete(path) and _CKPT.match(path.name):
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not folder.is_dir():
        return None
    try:
        name = json.loads((folder / LATEST).read_text())["checkpoint"]
        if _CKPT.match(name) and _is_complete(folder / name):
            return folder / name
    except (OSError, ValueError, KeyError, TypeError):
        pass
    done = sorted((p for p in folder.iterdir() if _CKPT.match(p.name) and _is_complete(p)), key=lambda p: p.name)
    return done[-1] if done else None


def find_weights(path: str | os.PathLike) -> Path:
    """The weights file of ``path``: a ``.safetensors`` file itself, a run folder's final
    ``model.safetensors``, else the weights of its latest checkpoint (:func:`find_checkpoint`).

    Raises:
        FileNotFoundError: ``path`` holds no weights (the message says what was expected).

    Example:
        >>> import tempfile
        >>> find_weights(tempfile.mkdtemp())   # doctest: +ELLIPSIS
        Traceback (most recent call last):
        FileNotFoundError: no weights at ...
    """
    p = Path(path)
    if p.is_file():
        return p
    if (p / WEIGHTS).is_file() and not _CKPT.match(p.name):
        return p / WEIGHTS
    found = find_checkpoint(p)
    if found is None:
        raise FileNotFoundError(f"no weights at {p}: expected a .safetensors file, a run folder with "
                                "model.safetensors, or a checkpoints/step-NNNNNNNN folder")
    return found / WEIGHTS


def write_state(state: dict, path: Path) -> None:
    """``torch.save`` + fsync of the trainer state (a separate function so tests can simulate a
    crash mid-save by replacing ``cliptk.train.checkpoint.write_state``)."""
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(folder: Path, model: ClipModel, state: dict, keep: int) -> Path:
    """Write ``folder/step-NNNNNNNN/{model.safetensors, trainer.pt}`` atomically; return that folder.

    Both files go to a temporary directory that is renamed into place only when complete, then
    ``latest.json`` is replaced (temporary file + rename); a crash at any point leaves the previous
    checkpoint as the one :func:`find_checkpoint` returns. Older checkpoints beyond ``keep`` are
    removed afterwards.

    Args:
        folder: the run's ``checkpoints/`` folder.
        model: the model whose weights are saved.
        state: the trainer state (``step`` and ``epoch`` name the folder and the manifest).
        keep: how many complete checkpoints to keep.
    """
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{state['step']:08d}"
    final, tmp = folder / name, folder / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_model(model, tmp / WEIGHTS, metadata={"step": state["step"], "epoch": state["epoch"]})
        write_state(state, tmp / STATE)
        if final.exists():  # same step saved before (e.g. an interrupt right after an epoch end)
            old = folder / f".{name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(folder / LATEST, json.dumps({"checkpoint": name, "step": state["step"], "epoch": state["epoch"]}))
    complete = sorted((p for p in folder.iterdir() if _CKPT.match(p.name)), key=lambda p: p.name)
    for old in complete[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    for stale in folder.glob(".step-*"):  # leftovers of crashed saves by other processes
        if f"-{os.getpid()}" not in stale.name:
            shutil.rmtree(stale, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------------ RNG
def rng_state(device: torch.device) -> dict:
    """The Python, NumPy and torch (and CUDA on ``device``) generator states, as tensors and
    numbers that ``torch.load(weights_only=True)`` reads back."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what :func:`rng_state` saved."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------- restore
def restore(path: Path, model: ClipModel, optimizer, scheduler, scaler, cfg: TrainConfig, device: torch.device,
            rank: int) -> dict[str, Any]:
    """Load checkpoint ``path``'s weights, optimizer, scheduler, scaler and RNG states; return its
    state dict (``epoch``, ``batch``, ``step``, ``seconds``, ``history`` ...).

    Config fields that differ from the checkpoint's (other than ones that do not change the result,
    such as ``output_dir`` or ``max_steps``) are warned about. Only rank 0's generator states are
    stored; other ranks re-seed deterministically from the seed, their rank and the step.

    Raises:
        RuntimeError: the weights do not fit ``model``.
    """
    st = torch.load(path / STATE, map_location="cpu", weights_only=True)
    _warn_config_changes(st["config"], cfg, path)
    try:
        model.load_state_dict(load_file(str(path / WEIGHTS), device=str(device)), strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"checkpoint {path} does not fit this model ({model.name}): {err}") from err
    optimizer.load_state_dict(st["optimizer"])  # after the scheduler was built: it keeps the saved lr
    scheduler.load_state_dict(st["scheduler"])
    scaler.load_state_dict(st["scaler"])
    if rank == 0:
        set_rng_state(st["rng"], device)
    else:
        seed_all(cfg.seed + rank + 7919 * st["step"])
    return st


def _warn_config_changes(saved: dict, cfg: TrainConfig, where: Path) -> None:
    now = cfg.to_dict()
    diff = {k: (saved.get(k), v) for k, v in now.items() if k not in _RESUME_NEUTRAL and saved.get(k) != v}
    if diff:
        warnings.warn(f"resuming {where} with a config that differs from the checkpoint's in "
                      + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
                      + "; the run will not match an uninterrupted one", UserWarning, stacklevel=5)
