"""A run's ``output_dir`` as a :class:`~cliptk.train.Trainer` uses it: claimed by a fresh run,
searched by a resume, written at every save and at the end.

The files and their atomic writes are :mod:`cliptk.train.checkpoint`'s; this module is what one
run does with them, across its processes (rank 0 reads and writes, every rank learns the outcome):

- :func:`resume_point`: the checkpoint that ``fit(..., resume=)`` continues from, read once;
- :func:`claim`: a fresh run refuses (or with ``overwrite`` clears) a folder holding another run;
- :func:`write_config`: ``config.yaml`` as the run stands, so it can be resumed;
- :func:`trainer_state`: what a checkpoint stores besides the weights;
- :func:`save`: a checkpoint and ``history.csv``; :func:`write_final`: ``model.safetensors``;
- :func:`reset_weights`: load the last checkpoint's weights back after a NaN/inf in memory.

Example:
    >>> import tempfile
    >>> from cliptk.train import TrainConfig
    >>> resume_point(None, TrainConfig())
    (None, None)
    >>> claim(TrainConfig(output_dir=tempfile.mkdtemp()))   # an empty folder: nothing to refuse
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

from .._util import atomic_write_text
from ..models import ClipModel, save_model
from . import checkpoint as ckpt
from .config import TrainConfig
from .devices import from_rank0

__all__ = ["resume_point", "claim", "write_config", "trainer_state", "save", "write_final", "reset_weights"]


def resume_point(resume: str | os.PathLike | bool | None, cfg: TrainConfig, warn: bool = True
                 ) -> tuple[Path | None, tuple[dict, dict] | None]:
    """Where ``resume`` (a checkpoint or run folder, True for ``cfg.output_dir``, None/False for
    a fresh run) continues from, and what :func:`cliptk.train.checkpoint.load_checkpoint` read
    there (the first readable checkpoint; ``warn`` about skipped ones, rank 0 only).

    Raises:
        ValueError: ``resume=True`` without ``output_dir``, or together with ``overwrite``.
        FileNotFoundError: no checkpoint there. CheckpointError: none is readable.
    """
    if resume is None or resume is False:
        return None, None
    where = cfg.output_dir if resume is True else resume
    if where is None:
        raise ValueError("resume=True needs config.output_dir (the run folder to resume)")
    if cfg.overwrite:
        raise ValueError("TrainConfig.overwrite=True deletes the run in output_dir, and resume= continues it: "
                         "drop one of the two (--overwrite / --resume)")
    return ckpt.load_resumable(where, warn=warn)


def claim(cfg: TrainConfig, main: bool = True, world_size: int = 1) -> None:
    """For a fresh run: rank 0 checks (and with ``cfg.overwrite`` clears) ``cfg.output_dir``
    (:func:`cliptk.train.checkpoint.claim_output_dir`); every rank raises together.

    Raises:
        RunExistsError: the folder holds another run's checkpoints, weights or history.
    """
    msg = ckpt.claim_output_dir(cfg.output_dir, cfg.overwrite) if main else None
    msg = from_rank0(msg, world_size)
    if msg:
        raise ckpt.RunExistsError(msg)


def write_config(cfg: TrainConfig) -> None:
    """``output_dir/config.yaml``: the config as the run stands (``overwrite`` off, so the file
    resumes the run rather than deleting it)."""
    cfg.replace(overwrite=False).to_yaml(Path(cfg.output_dir) / ckpt.CONFIG)


def trainer_state(t, reason: str) -> dict:
    """Everything a checkpoint of :class:`~cliptk.train.Trainer` ``t`` stores besides the weights:
    position (epoch, batch, step, seconds), optimizer, scheduler, grad scaler, RNG and sampler
    states, config, history and why it was saved (``reason``: ``"epoch_end"``, ``"max_steps"``,
    ``"interrupted"`` ...); read back by :func:`cliptk.train.checkpoint.restore`."""
    return {"format": 1, "epoch": t.epoch, "batch": t.batch, "step": t.step_count,
            "seconds": t.seconds, "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict(),
            "rng": ckpt.rng_state(t.device),
            "sampler": {"seed": getattr(t.sampler, "seed", None), "epoch": t.epoch,
                        "batches_done": t.batch, "world_size": t.world_size},
            "config": t.config.to_dict(), "history": t.history.rows, "reason": reason,
            "model": {"name": t.model.name, "pretrained": t.model.pretrained}}


def save(cfg: TrainConfig, model: ClipModel, state: dict, table: pd.DataFrame, *, main: bool = True,
         world_size: int = 1, collective: bool = True, checkpoint: Path | None = None) -> Path | None:
    """Rank 0 writes checkpoint ``output_dir/checkpoints/step-NNNNNNNN`` (weights and ``state``;
    the caller checked the weights are finite) and ``history.csv`` (``table``); returns the
    checkpoint's path, on every rank unless ``collective=False`` (then the other ranks get
    ``checkpoint``, the path they knew).

    Raises:
        OSError: a file could not be written (the message names it; the previous checkpoint, or
            for ``history.csv`` the new one, is complete).
    """
    if main:
        checkpoint = ckpt.save_checkpoint(Path(cfg.output_dir) / "checkpoints", model, state, cfg.keep_checkpoints,
                                          check_finite=False)
        csv = Path(cfg.output_dir) / ckpt.HISTORY
        try:
            atomic_write_text(csv, table.to_csv(index=False))
        except Exception as err:
            raise OSError(f"could not write {csv}: {type(err).__name__}: {err}; checkpoint {checkpoint} is "
                          "complete and holds the same history") from err
    if world_size > 1 and collective:
        path = from_rank0(str(checkpoint) if checkpoint else None, world_size)
        checkpoint = Path(path) if path else None
    return checkpoint


def write_final(cfg: TrainConfig, model: ClipModel, step: int, checkpoint: Path | None) -> Path:
    """``output_dir/model.safetensors``: the weights at the end of the run (atomically).

    Raises:
        OSError: it could not be written (the message names it and the checkpoint holding the
            same weights).
    """
    final = Path(cfg.output_dir) / ckpt.WEIGHTS
    try:
        save_model(model, final, metadata={"step": step})
    except Exception as err:
        raise OSError(f"could not write {final}: {type(err).__name__}: {err}; the run's last checkpoint "
                      f"{checkpoint} holds the same weights") from err
    return final


def reset_weights(model: ClipModel, checkpoint: Path | None, device: torch.device) -> str:
    """Load ``checkpoint``'s weights into ``model`` (they are finite: saves refuse anything else);
    say what the model in memory now holds."""
    if checkpoint is None:
        return "the model in memory holds NaN/inf weights (no checkpoint to reset it to: reload your weights)"
    model.load_state_dict(load_file(str(Path(checkpoint) / ckpt.WEIGHTS), device=str(device)))
    return f"the model in memory was reset to the weights of the last checkpoint ({checkpoint})"
