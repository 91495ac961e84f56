"""Checkpoints of a training run: written atomically, found again, restored exactly.

A run's ``output_dir/checkpoints/`` holds ``step-NNNNNNNN/`` folders, each with the weights
(``model.safetensors``) and everything else needed to continue bit for bit (``trainer.pt``:
optimizer, scheduler, grad scaler, Python / NumPy / torch RNG states, epoch and batch position,
config and history), plus a ``latest.json`` manifest. :func:`save_checkpoint` writes a folder under
a temporary name and renames it into place only when complete, so a crash at any point leaves the
previous checkpoint as the one :func:`find_checkpoint` returns, and refuses to write non-finite
weights; a failed write (a full disk) raises an ``OSError`` naming the file. :func:`checkpoints`
lists the candidates to resume from, best first; :func:`load_checkpoint` reads one and raises
:class:`CheckpointError` naming the file when it is truncated, garbled or holds NaN weights, so a
resume falls back to the previous one; :func:`restore` loads one into a model, optimizer,
scheduler and scaler; :func:`find_weights` resolves "the weights of this run" for evaluation;
:func:`run_files` / :func:`clear_run` are what a previous run left in an ``output_dir``.

Example:
    >>> import tempfile
    >>> find_checkpoint(tempfile.mkdtemp()) is None   # an empty folder holds no checkpoint
    True
"""
from __future__ import annotations

import contextlib
import json
import logging
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

__all__ = ["WEIGHTS", "STATE", "LATEST", "HISTORY", "CONFIG", "CheckpointError", "RunExistsError", "checkpoints",
           "find_checkpoint", "find_weights", "load_checkpoint", "save_checkpoint", "write_state", "first_nonfinite",
           "run_files", "clear_run", "claim_output_dir", "load_resumable", "restore", "rng_state", "set_rng_state", "seed_all"]

#: file names inside a checkpoint folder, and the manifest beside the folders
WEIGHTS, STATE, LATEST = "model.safetensors", "trainer.pt", "latest.json"
#: files a run writes beside ``checkpoints/`` in its ``output_dir`` (the final weights are ``WEIGHTS``)
HISTORY, CONFIG = "history.csv", "config.yaml"
_CKPT = re.compile(r"^step-(\d{8})$")
_OLD = re.compile(r"^\.(step-\d{8})\.old-\d+$")   # the previous copy while a step is saved again
_STATE_KEYS = ("epoch", "batch", "step", "seconds", "optimizer", "scheduler", "scaler", "rng", "config", "history")
#: config fields that may change on resume without making the run differ from an uninterrupted one
_RESUME_NEUTRAL = {"output_dir", "overwrite", "progress", "num_workers", "max_steps", "max_minutes", "eval_batch_size",
                   "keep_checkpoints", "save_every_steps", "device", "data", "cache_images"}


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or holds unusable content (truncated, garbled, not a cliptk
    trainer state, NaN/inf weights); the message names the file."""


class RunExistsError(FileExistsError, ValueError):
    """A fresh run was pointed at an ``output_dir`` that holds a previous run (also a ``ValueError``,
    so command lines report it as a user error)."""


def _is_complete(path: Path) -> bool:
    return path.is_dir() and (path / WEIGHTS).is_file() and (path / STATE).is_file()


def _folder(path: Path) -> Path:
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def checkpoints(path: str | os.PathLike) -> list[Path]:
    """The complete checkpoints under ``path``, the one to resume from first: the one
    ``latest.json`` names, then the others newest first (a resume that finds one unreadable falls
    back to the next). ``path`` may be a checkpoint directory itself (then only it), a run's
    ``output_dir`` or its ``checkpoints/`` folder. An unreadable ``latest.json`` is warned about
    (naming it) and skipped; temporary directories of an interrupted save are never listed, except
    the previous copy of a step that was being saved again when the process died.

    Example:
        >>> import tempfile
        >>> checkpoints(tempfile.mkdtemp())
        []
    """
    path = Path(path)
    if _is_complete(path) and (_CKPT.match(path.name) or _OLD.match(path.name)):
        return [path]
    folder = _folder(path)
    if not folder.is_dir():
        return []
    done = {p.name: p for p in folder.iterdir() if _CKPT.match(p.name) and _is_complete(p)}
    for p in folder.iterdir():   # killed between "move the old copy aside" and "move the new one in"
        m = _OLD.match(p.name)
        if m and m.group(1) not in done and _is_complete(p):
            done[m.group(1)] = p
    order = [done[k] for k in sorted(done, reverse=True)]
    manifest = folder / LATEST
    if manifest.exists():
        try:
            name = json.loads(manifest.read_text())["checkpoint"]
            if not isinstance(name, str):
                raise TypeError(f"'checkpoint' is {name!r}")
        except (OSError, ValueError, KeyError, TypeError) as err:
            warnings.warn(f"checkpoint manifest {manifest} is unreadable ({type(err).__name__}: {err}); using the "
                          "newest complete checkpoint folder instead", UserWarning, stacklevel=2)
        else:
            if name in done:
                order.remove(done[name])
                order.insert(0, done[name])
    return order


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint directory to resume from, or None if there is none: the first of
    :func:`checkpoints` (``latest.json``'s when it names a complete checkpoint, else the complete
    ``step-NNNNNNNN`` directory with the highest step). Only the folder structure is checked here;
    :func:`load_checkpoint` checks the content."""
    found = checkpoints(path)
    return found[0] if found else None


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read checkpoint ``path``: its trainer state and its weights (on the CPU), checked.

    Raises:
        CheckpointError: ``trainer.pt`` or ``model.safetensors`` is missing, unreadable
            (truncated, garbled), not a cliptk trainer state, or the weights hold NaN/inf; the
            message names the file.

    Example:
        >>> import tempfile
        >>> load_checkpoint(tempfile.mkdtemp())   # doctest: +ELLIPSIS
        Traceback (most recent call last):
        cliptk.train.checkpoint.CheckpointError: checkpoint file .../trainer.pt is unreadable ...
    """
    path = Path(path)
    state_file, weights_file = path / STATE, path / WEIGHTS
    advice = "; resume from an earlier checkpoint (fit(..., resume=<its folder>)) or start afresh"
    try:
        st = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint file {state_file} is unreadable ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}){advice}") from err
    missing = [k for k in _STATE_KEYS if k not in st] if isinstance(st, dict) else list(_STATE_KEYS)
    if missing:
        raise CheckpointError(f"checkpoint file {state_file} is not a cliptk trainer state (missing "
                              f"{', '.join(missing)}){advice}")
    try:
        weights = load_file(str(weights_file))
    except Exception as err:
        raise CheckpointError(f"checkpoint file {weights_file} is unreadable ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}){advice}") from err
    bad = first_nonfinite(weights)
    if bad is not None:
        raise CheckpointError(f"checkpoint file {weights_file} holds NaN/inf weights ({bad}){advice}")
    return st, weights


def first_nonfinite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor of ``tensors`` holding a NaN or inf, or None
    (one fused reduction and one host sync for all of them).

    Example:
        >>> first_nonfinite({"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")])})
        'b'
    """
    names = [k for k, v in tensors.items() if v.is_floating_point()]
    if not names:
        return None
    flags = torch.stack([torch.isfinite(tensors[k]).all().to(tensors[names[0]].device) for k in names])
    if bool(flags.all()):
        return None
    return names[int((~flags).nonzero()[0])]


def run_files(output_dir: str | os.PathLike, *, blocking: bool = False) -> list[Path]:
    """What a previous cliptk run wrote in ``output_dir`` (and only that): under ``checkpoints/``
    its ``step-NNNNNNNN`` folders, ``latest.json`` and temporaries of interrupted saves; beside
    it ``model.safetensors``, ``history.csv``, ``config.yaml`` and temporaries of their atomic
    writes. ``blocking=True``: only the files a fresh run would mix with (checkpoints, the
    manifest, the final weights, the history; not ``config.yaml`` or temporaries).

    Example:
        >>> import tempfile
        >>> run_files(tempfile.mkdtemp())
        []
    """
    out = Path(output_dir)
    found: list[Path] = []
    folder = out / "checkpoints"
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if _CKPT.match(p.name) or p.name == LATEST:
                found.append(p)
            elif not blocking and (p.name.startswith(".step-") or p.name.startswith(f".{LATEST}.tmp-")):
                found.append(p)
    names = (WEIGHTS, HISTORY) if blocking else (WEIGHTS, HISTORY, CONFIG)
    found += [out / n for n in names if (out / n).exists()]
    if not blocking:
        found += sorted(p for n in names for p in out.glob(f".{n}.tmp-*"))
    return found


def clear_run(output_dir: str | os.PathLike) -> list[Path]:
    """Delete :func:`run_files` of ``output_dir`` (and ``checkpoints/`` if that leaves it empty);
    other files are left alone. Returns what was deleted."""
    removed = run_files(output_dir)
    for p in removed:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (Path(output_dir) / "checkpoints").rmdir()
    return removed


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


def load_resumable(where: str | os.PathLike, warn: bool = True) -> tuple[Path, tuple[dict, dict]]:
    """The checkpoint under ``where`` to resume from and what :func:`load_checkpoint` read from it:
    the first readable one of :func:`checkpoints`; each unreadable one before it is warned about
    (naming the file; ``warn=False`` on ranks other than 0) and skipped.

    Raises:
        FileNotFoundError: no complete checkpoint under ``where``.
        CheckpointError: none is readable (the message names each bad file).
    """
    found = checkpoints(where)
    if not found:
        raise FileNotFoundError(f"no complete checkpoint under {where}; start without resume= or point it at "
                                "a run's output_dir / checkpoints/step-NNNNNNNN folder")
    errors = []
    for path in found:
        try:
            return path, load_checkpoint(path)
        except CheckpointError as err:
            errors.append(str(err))
            if len(found) > 1 and warn:
                warnings.warn(f"{err}; skipping it and trying the previous checkpoint", UserWarning, stacklevel=5)
    raise CheckpointError(f"no readable checkpoint under {where}: " + " | ".join(errors))


def claim_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> str | None:
    """For a fresh run into ``output_dir``: None when it holds no other run (the
    :func:`run_files` a fresh run would mix with: pruning, ``--resume`` and ``model.safetensors``
    would mean either run), else the refusal message; with ``overwrite`` the old run's files are
    deleted instead (:func:`clear_run`, logged) and None is returned. Other files are left alone.

    Example:
        >>> import tempfile
        >>> claim_output_dir(tempfile.mkdtemp(), overwrite=False) is None
        True
    """
    old = run_files(output_dir, blocking=True)
    if not old:
        return None
    if overwrite:
        removed = clear_run(output_dir)
        logging.getLogger("cliptk.train").warning(
            "overwrite=True: deleted the previous run in %s (%s)", output_dir,
            ", ".join(str(p.relative_to(output_dir)) for p in removed))
        return None
    names = ", ".join(str(p.relative_to(output_dir)) for p in old[:4]) + (" ..." if len(old) > 4 else "")
    return (f"output_dir {output_dir} already holds a training run ({names}); a fresh run would mix with it. "
            "Continue that run with --resume (fit(..., resume=True)), replace it with --overwrite "
            "(TrainConfig.overwrite=True deletes its checkpoints/step-*, latest.json, model.safetensors, history.csv "
            "and config.yaml, nothing else), or choose another output_dir")


@contextlib.contextmanager
def _writing(path: Path, after: str) -> Any:
    """Re-raise a failed write (a full disk, a file-size limit ...) as an ``OSError`` naming ``path``."""
    try:
        yield
    except Exception as err:   # not KeyboardInterrupt: an interrupt is not a write error
        raise OSError(f"could not write {path}: {type(err).__name__}: {err}{after}") from err


def save_checkpoint(folder: Path, model: ClipModel, state: dict, keep: int, *, check_finite: bool = True) -> Path:
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
        check_finite: refuse weights holding NaN/inf (skip only when the caller just checked).

    Raises:
        ValueError: the weights hold NaN/inf (nothing is written).
        OSError: a file could not be written (a full disk ...): the message names it; nothing of
            this checkpoint is left and the previous one is intact.
    """
    name = f"step-{state['step']:08d}"
    if check_finite:
        bad = first_nonfinite(model.state_dict())
        if bad is not None:
            raise ValueError(f"not saving checkpoint {folder / name}: the weights hold NaN/inf ({bad}); the last "
                             f"good checkpoint is {find_checkpoint(folder)}")
    folder.mkdir(parents=True, exist_ok=True)
    final, tmp = folder / name, folder / f".{name}.tmp-{os.getpid()}"
    after = (f"; checkpoint {name} was not saved and the previous one ({find_checkpoint(folder)}) is intact: free "
             "disk space (or raise the file-size limit) and continue with fit(..., resume=...)")
    shutil.rmtree(tmp, ignore_errors=True)
    with _writing(tmp, after):
        tmp.mkdir()
    try:
        with _writing(tmp / WEIGHTS, after):
            save_model(model, tmp / WEIGHTS, metadata={"step": state["step"], "epoch": state["epoch"]})
        with _writing(tmp / STATE, after):
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
    with _writing(folder / LATEST, f"; checkpoint {final} is complete, and find_checkpoint falls back to the newest "
                                   "complete folder"):
        atomic_write_text(folder / LATEST, json.dumps({"checkpoint": name, "step": state["step"],
                                                       "epoch": state["epoch"]}))
    steps = sorted((p for p in folder.iterdir() if _CKPT.match(p.name)), key=lambda p: p.name)
    complete = [p for p in steps if _is_complete(p)]
    for old in complete[:-keep] + [p for p in steps if not _is_complete(p)]:   # + leftovers of killed prunes
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    for stale in folder.glob(".step-*"):  # leftovers of crashed saves by other processes
        if f"-{os.getpid()}" not in stale.name:
            shutil.rmtree(stale, ignore_errors=True)
    for stale in folder.glob(f".{LATEST}.tmp-*"):
        if not stale.name.endswith(f"-{os.getpid()}"):
            stale.unlink(missing_ok=True)
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
            rank: int, loaded: tuple[dict, dict] | None = None) -> dict[str, Any]:
    """Load checkpoint ``path``'s weights, optimizer, scheduler, scaler and RNG states; return its
    state dict (``epoch``, ``batch``, ``step``, ``seconds``, ``history`` ...).

    Config fields that differ from the checkpoint's (other than ones that do not change the result,
    such as ``output_dir`` or ``max_steps``) are warned about. Only rank 0's generator states are
    stored; other ranks re-seed deterministically from the seed, their rank and the step.

    ``loaded`` is what :func:`load_checkpoint` read from ``path`` (read here when None).

    Raises:
        CheckpointError: a file of ``path`` is unreadable (see :func:`load_checkpoint`).
        RuntimeError: the weights do not fit ``model``.
    """
    st, weights = loaded if loaded is not None else load_checkpoint(path)
    _warn_config_changes(st["config"], cfg, path)
    try:
        model.load_state_dict(weights, strict=True)
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
