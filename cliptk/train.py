"""Contrastive fine-tuning of a CLIP image tower for re-identification (the CLIP-ReIdent recipe).

``fit(model, train_data, config, eval_data)`` trains ``model.encode_image`` on batches of
(query, positive) pairs of distinct identities with a symmetric InfoNCE loss and CLIP's learnable
temperature, as CLIP-ReIdent does (Habel, Deuser & Oswald, "CLIP-ReIdent: Contrastive Training for
Player Re-Identification", MMSports 2022):

* data: :class:`cliptk.samplers.UniqueIdPairSampler` (a fresh random positive each epoch), the
  model's own preprocessing (letterbox by default), a horizontal flip applied to **both** images
  of a pair together (p = 0.5);
* optimisation: AdamW, learning rate ``lr`` → ``lr_end`` with a polynomial decay after a linear
  warm-up (:func:`lr_lambda`), weight decay on weight matrices only, optional gradient clipping
  and gradient accumulation;
* temperature: ``model.logit_scale`` (learnable, clamped to ``ln 100`` after each step as in
  CLIP) or fixed (``learn_temperature=False``; ``temperature=`` sets its value);
* AMP on CUDA (bf16, or fp16 with a gradient scaler), off on CPU; gradient checkpointing is
  passed through to ``model.set_grad_checkpointing``;
* evaluation (mAP, rank-1 on ``eval_data``'s query/gallery splits) before training and after each
  epoch; a :class:`History` table of every step and evaluation; ``tqdm.auto`` progress; callbacks
  (``callbacks=[fn]``, ``fn(event: dict)``) for live plots;
* checkpoints written atomically (a temporary directory renamed into place, then a
  ``latest.json`` manifest) holding everything needed to resume exactly
  (``fit(..., resume=path)``): weights (safetensors), optimizer, scheduler, grad scaler, RNG states,
  sampler position, counters, config and history. On CPU a resumed run is bitwise identical to an
  uninterrupted one;
* a non-finite loss stops training before the update with :class:`NonFiniteLossError` (the model
  in memory and the last checkpoint hold the last good weights); Ctrl-C (or a
  ``KeyboardInterrupt`` from a callback) finishes cleanly: the model stays in memory, a checkpoint
  is saved and the history comes back with ``interrupted=True`` (it is **not** re-raised);
* several GPUs through ``torchrun``: the loss gathers embeddings from all ranks with gradients,
  the sampler shards each global batch by rank, only rank 0 evaluates, logs and writes.

The configuration is a :class:`TrainConfig` dataclass with the paper's defaults and a YAML
round-trip; :func:`run_from_config` / :func:`evaluate_from_config` run a YAML file end to end (the
``python -m cliptk train|eval --config`` commands).

Example:
    >>> import cliptk as ct
    >>> model = ct.load_model("cliptk-tiny", "synthetic-players", image_only=True)   # doctest: +SKIP
    >>> data = ct.read_dataset("data/generated/players")                              # doctest: +SKIP
    >>> cfg = TrainConfig(epochs=3, batch_size=32, lr=2e-4, lr_end=2e-5, output_dir="runs/tiny")
    >>> history = fit(model, data, cfg, eval_data=data)                               # doctest: +SKIP
    >>> history.evals[["epoch", "mAP", "rank1"]]                                      # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import difflib
import html
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import threading
import time
import typing
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data import ReIdDataset
from .losses import LOSSES, make_loss
from .models import ClipModel, reinit_top_blocks, save_model
from .samplers import GroupedPairSampler, UniqueIdPairSampler
from .smoke import is_smoke

__all__ = [
    "TrainConfig",
    "History",
    "fit",
    "NonFiniteLossError",
    "lr_lambda",
    "make_scheduler",
    "make_sampler",
    "find_checkpoint",
    "load_config",
    "run_from_config",
    "evaluate_from_config",
    "live_plot",
]

log = logging.getLogger("cliptk.train")

_AMP = ("auto", "bf16", "fp16", "off")
_SCHEDULES = ("polynomial", "cosine", "constant")
_SMOKE_STEPS = 5  # run_from_config under CLIPTK_SMOKE=1
_UNSUPPORTED_LOSSES = {"soft": "teacher=", "gist": "guide="}  # need extra inputs fit does not make


# =============================================================================== configuration
@dataclass
class TrainConfig:
    """Everything a fine-tuning run needs, with CLIP-ReIdent's defaults (Habel et al., 2022).

    :func:`fit` uses the data/optimisation/loss/precision/evaluation/checkpoint fields; the model
    and ``data`` fields are read by :func:`run_from_config` (the command line), which loads them.

    Model (``run_from_config`` only): ``model``, ``pretrained``, ``image_only``, ``projection``
    (False removes the ViT's output projection, as the paper does), ``resize``.

    Data: ``data`` (a folder/CSV for :func:`cliptk.read_dataset`, or ``"synthetic"``: the embedded
    synthetic players of :func:`cliptk.default.players`, or, when ``synthetic`` holds
    :func:`cliptk.generate_players` keyword arguments (``root`` optional), that world under
    ``data/generated/players-<hash>``), ``train_split``, ``query_split``, ``gallery_split``, ``batch_size`` ((query,
    positive) pairs per step and per GPU, i.e. ``2 * batch_size`` images), ``per_epoch``
    (``"images"``: every image is a query once per epoch; ``"identities"``: one query per
    identity), ``flip_p`` (joint horizontal flip of both images of a pair), ``num_workers``,
    ``cache_images`` (preprocess every training image once and keep the tensors in memory),
    ``group_by`` (None: :class:`cliptk.samplers.UniqueIdPairSampler`'s random batches; a metadata
    column such as ``"team"`` or ``"game"``: :class:`cliptk.samplers.GroupedPairSampler` batches of
    whole groups, i.e. in-batch hard negatives).

    Model surgery at the start of a fresh run: ``reinit_blocks`` (re-initialise the image tower's
    last N blocks and head, :func:`cliptk.models.reinit_top_blocks`; 0 = keep all pre-trained
    weights, as the paper does).

    Optimisation: ``epochs``, ``lr`` → ``lr_end`` (``schedule``: ``"polynomial"`` of ``power``,
    ``"cosine"`` or ``"constant"``) after ``warmup_epochs`` of linear warm-up, AdamW
    ``weight_decay`` (not on biases, norms, embeddings of rank 1 and the temperature) and
    ``betas``, ``grad_clip`` (max global norm, None = off), ``accumulate`` (micro-batches per
    optimizer step; does **not** enlarge the contrastive batch), ``max_steps`` / ``max_minutes``
    (stop early; the schedule still spans ``epochs``), ``seed``.

    Loss: ``loss`` (a :data:`cliptk.losses.LOSSES` name), ``label_smoothing`` (passed to losses
    that take it), ``loss_kwargs``, ``learn_temperature``, ``temperature`` (start value; None keeps
    the model's), ``max_logit_scale`` (clamp of the learnable scale, 100 as in CLIP).

    Precision and device: ``amp`` (``"auto"``: bf16 on CUDA where supported, else fp16 with a grad
    scaler; always off on CPU), ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``),
    ``grad_checkpointing``.

    Evaluation: ``eval_before``, ``eval_every`` (epochs; 0 = only at the end), ``eval_flip``,
    ``eval_batch_size``.

    Checkpoints and logs: ``output_dir`` (None = no checkpoints), ``save_every_steps`` (besides
    each epoch end), ``keep_checkpoints``, ``progress``.

    Raises:
        ValueError: a field is out of range; the message names it, its value and what is allowed.

    Example:
        >>> cfg = TrainConfig(epochs=2, lr=1e-4)
        >>> TrainConfig.from_yaml(cfg.to_yaml()) == cfg
        True
    """

    # model (read by run_from_config)
    model: str = "ViT-L-14"
    pretrained: str | None = "openai"
    image_only: bool = True
    projection: bool = False
    resize: str = "letterbox"
    # data
    data: str | None = None
    synthetic: dict = field(default_factory=dict)
    train_split: str = "train"
    query_split: str = "query"
    gallery_split: str = "gallery"
    batch_size: int = 16
    per_epoch: str = "images"
    flip_p: float = 0.5
    num_workers: int = 0
    cache_images: bool = False
    group_by: str | None = None
    # model surgery (fresh runs only)
    reinit_blocks: int = 0
    # optimisation
    epochs: int = 4
    lr: float = 4e-5
    lr_end: float = 1e-5
    schedule: str = "polynomial"
    power: float = 1.0
    warmup_epochs: float = 1.0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = None
    accumulate: int = 1
    max_steps: int | None = None
    max_minutes: float | None = None
    seed: int = 0
    # loss and temperature
    loss: str = "infonce"
    label_smoothing: float = 0.1
    loss_kwargs: dict = field(default_factory=dict)
    learn_temperature: bool = True
    temperature: float | None = None
    max_logit_scale: float = 100.0
    # precision and device
    amp: str = "auto"
    device: str = "auto"
    grad_checkpointing: bool = False
    # evaluation
    eval_before: bool = True
    eval_every: int = 1
    eval_flip: bool = False
    eval_batch_size: int = 64
    # checkpoints and logging
    output_dir: str | None = None
    save_every_steps: int | None = None
    keep_checkpoints: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # YAML gives a list
        self.synthetic = dict(self.synthetic or {})
        self.loss_kwargs = dict(self.loss_kwargs or {})
        if self.output_dir is not None:
            self.output_dir = str(self.output_dir)
        if isinstance(self.amp, bool):  # YAML 1.1 reads a bare `off` as false
            self.amp = "auto" if self.amp else "off"

        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is invalid: {allowed}")

        for name in ("batch_size", "epochs", "accumulate", "eval_batch_size", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be an integer >= 1")
        for name in ("num_workers", "eval_every", "reinit_blocks"):
            if int(getattr(self, name)) < 0:
                raise bad(name, "must be an integer >= 0")
        for name in ("max_steps", "save_every_steps"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise bad(name, "must be None or an integer >= 1")
        if not self.lr > 0:
            raise bad("lr", "must be > 0")
        if not 0 <= self.lr_end <= self.lr:
            raise bad("lr_end", f"must be in [0, lr={self.lr}] (the schedule decays from lr to lr_end)")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise bad("warmup_epochs", f"must be in [0, epochs={self.epochs}]")
        if self.schedule not in _SCHEDULES:
            raise bad("schedule", f"choose one of {_SCHEDULES}")
        if not self.power > 0:
            raise bad("power", "must be > 0")
        if not self.weight_decay >= 0:
            raise bad("weight_decay", "must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise bad("betas", "must be two numbers in [0, 1)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise bad("grad_clip", "must be None or > 0")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise bad("max_minutes", "must be None or > 0")
        if not 0 <= self.flip_p <= 1:
            raise bad("flip_p", "must be a probability in [0, 1]")
        if self.per_epoch not in ("images", "identities"):
            raise bad("per_epoch", "choose 'images' or 'identities'")
        if self.resize not in ("letterbox", "squash", "crop"):
            raise bad("resize", "choose 'letterbox', 'squash' or 'crop'")
        if self.loss.lower() not in LOSSES:
            raise bad("loss", f"choose one of {sorted(LOSSES)}")
        if self.loss.lower() in _UNSUPPORTED_LOSSES:
            raise bad("loss", f"this loss needs {_UNSUPPORTED_LOSSES[self.loss.lower()]} inputs that fit() does not "
                      "compute; pass your own module as fit(..., loss_fn=...) or use 'infonce', 'supcon', 'decoupled'")
        if not 0 <= self.label_smoothing < 1:
            raise bad("label_smoothing", "must be in [0, 1)")
        if not self.max_logit_scale >= 1:
            raise bad("max_logit_scale", "must be >= 1")
        if self.temperature is not None and not 1 / self.max_logit_scale <= self.temperature:
            raise bad("temperature", f"must be None or >= 1/max_logit_scale = {1 / self.max_logit_scale:g}")
        if self.amp not in _AMP:
            raise bad("amp", f"choose one of {_AMP}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", str(self.device)):
            raise bad("device", "choose 'auto', 'cpu', 'cuda' or 'cuda:N'")

    # --- YAML / dict round trip ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists instead of tuples), as written to YAML."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """The config as YAML text; also written (atomically) to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            _atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a dict; unknown keys raise ``ValueError`` with the closest known names."""
        known = [f.name for f in fields(cls)]
        unknown = [k for k in d if k not in known]
        if unknown:
            hints = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
            hint = "; ".join(f"{k!r} (did you mean {h[0]!r}?)" if h else repr(k) for k, h in hints.items())
            raise ValueError(f"unknown TrainConfig field(s): {hint}. Known fields: {', '.join(known)}")
        return cls(**{k: _coerce(k, v) for k, v in d.items()})

    @classmethod
    def from_yaml(cls, source: str | os.PathLike) -> "TrainConfig":
        """Read a config from a YAML file (or YAML text containing a newline).

        Raises:
            FileNotFoundError: the file does not exist. ValueError: unknown or invalid fields.
        """
        text = str(source)
        if isinstance(source, os.PathLike) or "\n" not in text:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"training config not found: {path} (see configs/*.yaml for examples)")
            text = path.read_text()
        d = yaml.safe_load(text) or {}
        if not isinstance(d, dict):
            raise ValueError(f"a training config must be a YAML mapping of field: value, got {type(d).__name__}")
        return cls.from_dict(d)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied; string values are converted to the field's type
        (so command-line ``--set lr=1e-4`` works)."""
        return self.from_dict({**self.to_dict(), **changes})


def _coerce(name: str, value: Any) -> Any:
    """Convert a string (from a command line) to the type of TrainConfig field ``name``."""
    if not isinstance(value, str):
        return value
    hint = typing.get_type_hints(TrainConfig)[name]
    args = set(typing.get_args(hint)) or {hint}
    if type(None) in args and value.strip().lower() in ("none", "null", "~", ""):
        return None
    if str in args:
        return value
    if bool in args:
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"TrainConfig.{name} expects true/false, got {value!r}")
    for t in (int, float):
        if t in args:
            try:
                return t(float(value)) if t is int and float(value).is_integer() else t(value)
            except ValueError:
                continue
    parsed = yaml.safe_load(value)  # dicts, lists
    return parsed


def load_config(config: str | os.PathLike | TrainConfig | dict | None = None,
                overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML path, a dict or a config, with ``overrides`` applied.

    Example:
        >>> load_config(None, {"lr": "1e-4"}).lr
        0.0001
    """
    if config is None:
        cfg = TrainConfig()
    elif isinstance(config, TrainConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = TrainConfig.from_dict(config)
    else:
        cfg = TrainConfig.from_yaml(config)
    return cfg.replace(**overrides) if overrides else cfg


# =============================================================================== history
COLUMNS = ("kind", "epoch", "step", "loss", "lr", "logit_scale", "mAP", "rank1", "images_per_s", "seconds")


@dataclass
class History:
    """What a :func:`fit` run did: one row per optimizer step (``kind="train"``) and per
    evaluation (``kind="eval"``).

    Attributes:
        rows: the rows as dicts (columns :data:`COLUMNS`: ``epoch`` is fractional progress,
            ``step`` the global optimizer step, ``seconds`` training time since the run began).
        interrupted: training stopped by Ctrl-C / ``KeyboardInterrupt`` (a checkpoint was saved
            when ``output_dir`` is set).
        stopped: why training ended early: ``"interrupted"``, ``"max_steps"``,
            ``"max_minutes"``, or None when all epochs ran.
        checkpoint: the last checkpoint written (None without ``output_dir``).

    ``table`` is a ``pandas.DataFrame`` of all rows; ``steps`` and ``evals`` select one kind.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    stopped: str | None = None
    checkpoint: Path | None = None

    @property
    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(COLUMNS))

    @property
    def steps(self) -> pd.DataFrame:
        t = self.table
        return t[t["kind"] == "train"].reset_index(drop=True)

    @property
    def evals(self) -> pd.DataFrame:
        t = self.table
        return t[t["kind"] == "eval"].reset_index(drop=True)

    @property
    def final(self) -> dict[str, Any]:
        """The last evaluation row ({} if none ran)."""
        ev = [r for r in self.rows if r["kind"] == "eval"]
        return dict(ev[-1]) if ev else {}

    def __repr__(self) -> str:
        n = sum(r["kind"] == "train" for r in self.rows)
        f = self.final
        score = f", mAP={f['mAP']:.4f}, rank-1={f['rank1']:.4f}" if f else ""
        flag = f", stopped={self.stopped!r}" if self.stopped else ""
        return f"History({n} steps{score}{flag}, checkpoint={str(self.checkpoint) if self.checkpoint else None})"

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(repr(self))}</p>" + self.evals.to_html(index=False, float_format=lambda v: f"{v:.4g}")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before applying that update.

    Attributes: ``epoch``, ``step``, ``loss`` (the value), ``checkpoint`` (the last good one or
    None) and ``history`` (the rows up to the failure)."""

    def __init__(self, message: str, *, epoch: int, step: int, loss: float, checkpoint: Path | None,
                 history: History):
        super().__init__(message)
        self.epoch, self.step, self.loss, self.checkpoint, self.history = epoch, step, loss, checkpoint, history


# =============================================================================== schedule
def lr_lambda(step: int, *, total_steps: int, warmup_steps: int, lr: float, lr_end: float,
              schedule: str = "polynomial", power: float = 1.0) -> float:
    """Learning-rate multiplier (of ``lr``) before optimizer step ``step`` (0-based).

    Warm-up: ``step / warmup_steps`` for ``step < warmup_steps``. Then, with
    ``t = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1]:

    * ``"polynomial"``: ``(lr_end + (lr - lr_end) * (1 - t) ** power) / lr`` — the schedule of
      CLIP-ReIdent (transformers' ``get_polynomial_decay_schedule_with_warmup``);
    * ``"cosine"``: ``(lr_end + (lr - lr_end) * (1 + cos(pi t)) / 2) / lr``;
    * ``"constant"``: 1.

    Example:
        >>> lr_lambda(5, total_steps=10, warmup_steps=0, lr=4e-5, lr_end=1e-5)
        0.625
    """
    if step < warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    shape = (1 - t) ** power if schedule == "polynomial" else (1 + math.cos(math.pi * t)) / 2
    return (lr_end + (lr - lr_end) * shape) / lr


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step learning-rate scheduler of ``config`` (:func:`lr_lambda`) for an epoch of
    ``steps_per_epoch`` optimizer steps; warm-up lasts ``round(warmup_epochs * steps_per_epoch)``."""
    total = steps_per_epoch * config.epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)
    kw = dict(total_steps=total, warmup_steps=warmup, lr=config.lr, lr_end=config.lr_end,
              schedule=config.schedule, power=config.power)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, **kw))


# =============================================================================== data
class _PairImages(Dataset):
    """Preprocessed images of a dataset by row index, returned as ``(tensor, index)``."""

    def __init__(self, data: ReIdDataset, transform, cache: bool = False, progress: bool = False):
        self.data, self.transform = data, transform
        self.cache: torch.Tensor | None = None
        if cache:
            first = self._load(0)
            self.cache = torch.empty((len(data), *first.shape), dtype=first.dtype)
            for i in tqdm(range(len(data)), desc="cache images", disable=not progress, leave=False):
                self.cache[i] = self._load(i)

    def _load(self, i: int) -> torch.Tensor:
        img = self.data[i]
        if img is None:
            raise ValueError(f"{self.data.name}: image {self.data.paths[i]} is unreadable; training needs every "
                             "image: call dataset.drop_unreadable() first")
        return self.transform(img)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return (self.cache[i] if self.cache is not None else self._load(i)), i


class _SkipBatches:
    """A batch sampler that skips the first ``skip`` batches of the wrapped one (mid-epoch resume)."""

    def __init__(self, sampler: UniqueIdPairSampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)

    def __iter__(self):
        for i, batch in enumerate(self.sampler):
            if i >= self.skip:
                yield batch


def _joint_flip(x: torch.Tensor, seed: int, epoch: int, batch: int, rank: int, world: int, p: float) -> torch.Tensor:
    """Flip both images of each pair (rows ``i`` and ``B + i`` of ``x``) together with probability
    ``p``. The coin flips depend only on (seed, epoch, batch) and are drawn for the global batch, so
    resumed and multi-GPU runs see the same flips as an uninterrupted single-process run."""
    if p <= 0:
        return x
    b = x.shape[0] // 2
    coins = np.random.default_rng([seed, epoch, batch, 0xF11]).random(b * world)[rank * b:(rank + 1) * b] < p
    if not coins.any():
        return x
    m = torch.from_numpy(np.concatenate([coins, coins])).to(x.device)[:, None, None, None]
    return torch.where(m, x.flip(-1), x)


def make_sampler(train: ReIdDataset, cfg: TrainConfig, rank: int = 0, world_size: int = 1):
    """The batch sampler :func:`fit` uses for the training rows ``train``: unique-identity pair
    batches (:class:`cliptk.samplers.UniqueIdPairSampler`), or batches of whole groups of the
    ``cfg.group_by`` column (:class:`cliptk.samplers.GroupedPairSampler`).

    Raises:
        KeyError: ``cfg.group_by`` is not a column of ``train`` (the message lists the columns).
    """
    if cfg.group_by is None:
        return UniqueIdPairSampler(train.pids, cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world_size,
                                   per_epoch=cfg.per_epoch)
    if cfg.group_by not in train.table.columns:
        raise KeyError(f"TrainConfig.group_by={cfg.group_by!r}: {train.name} has no such column; its columns are "
                       f"{list(train.table.columns)}")
    return GroupedPairSampler(train.pids, train.table[cfg.group_by].astype(str).to_numpy(), cfg.batch_size,
                              seed=cfg.seed, rank=rank, world_size=world_size, per_epoch=cfg.per_epoch)


def _train_rows(data: ReIdDataset, cfg: TrainConfig) -> ReIdDataset:
    """The training rows: all of ``data`` if it has one split, else ``data.subset(train_split)``."""
    if len(data.split_names) <= 1:
        return data
    if cfg.train_split not in data.split_names:
        raise KeyError(f"{data.name} has splits {data.split_names} but no {cfg.train_split!r} split to train on; "
                       "pass dataset.subset(...) or set TrainConfig.train_split")
    return data.subset(cfg.train_split)


# =============================================================================== distributed / devices
def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _init_distributed(device_pref: str) -> bool:
    """Start the process group from torchrun's environment if needed; True if started here."""
    if dist.is_available() and dist.is_initialized():
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    cuda = torch.cuda.is_available() and device_pref != "cpu"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def _pick_device(pref: str) -> torch.device:
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and dev.index is None and _world()[1] > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype (None = off): CUDA only; "auto" prefers bf16."""
    if device.type != "cuda" or amp == "off":
        if amp in ("bf16", "fp16") and device.type != "cuda":
            warnings.warn(f"amp={amp!r} is ignored on {device.type}: mixed precision is used on CUDA only", stacklevel=3)
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


# =============================================================================== checkpoints
_CKPT = re.compile(r"^step-(\d{8})$")
_WEIGHTS, _STATE, _LATEST = "model.safetensors", "trainer.pt", "latest.json"


def _is_complete(path: Path) -> bool:
    return path.is_dir() and (path / _WEIGHTS).is_file() and (path / _STATE).is_file()


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
        name = json.loads((folder / _LATEST).read_text())["checkpoint"]
        if _CKPT.match(name) and _is_complete(folder / name):
            return folder / name
    except (OSError, ValueError, KeyError, TypeError):
        pass
    done = sorted((p for p in folder.iterdir() if _CKPT.match(p.name) and _is_complete(p)), key=lambda p: p.name)
    return done[-1] if done else None


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_state(state: dict, path: Path) -> None:
    """torch.save + fsync (a separate function so tests can simulate a crash mid-save)."""
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def _save_checkpoint(folder: Path, model: ClipModel, state: dict, keep: int) -> Path:
    """Write ``folder/step-NNNNNNNN/{model.safetensors, trainer.pt}`` atomically.

    Both files go to a temporary directory that is renamed into place only when complete, then
    ``latest.json`` is replaced (temporary file + rename); a crash at any point leaves the previous
    checkpoint as the one :func:`find_checkpoint` returns. Older checkpoints beyond ``keep`` are
    removed afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{state['step']:08d}"
    final, tmp = folder / name, folder / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_model(model, tmp / _WEIGHTS, metadata={"step": state["step"], "epoch": state["epoch"]})
        _write_state(state, tmp / _STATE)
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
    _atomic_write_text(folder / _LATEST, json.dumps({"checkpoint": name, "step": state["step"],
                                                     "epoch": state["epoch"]}))
    complete = sorted((p for p in folder.iterdir() if _CKPT.match(p.name)), key=lambda p: p.name)
    for old in complete[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    for stale in folder.glob(".step-*"):  # leftovers of crashed saves by other processes
        if f"-{os.getpid()}" not in stale.name:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_python(v: Any) -> Any:
    return v.item() if isinstance(v, (np.generic, torch.Tensor)) else v


# =============================================================================== the trainer
def _param_groups(model: ClipModel, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices only (not biases, norms, rank-1 embeddings, temperature)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith("logit_scale") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _prepare_model(model: ClipModel, cfg: TrainConfig, fresh: bool) -> None:
    """Freeze the text tower, set up the temperature, pass gradient checkpointing through."""
    if not model.image_only:
        for n, p in model.clip.named_parameters():
            if not n.startswith("visual.") and n != "logit_scale":
                p.requires_grad_(False)
    if fresh and cfg.temperature is not None:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(1.0 / cfg.temperature))
    model.logit_scale.requires_grad_(cfg.learn_temperature)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)


def _make_loss_module(cfg: TrainConfig, gather: bool) -> nn.Module:
    import inspect

    cls = LOSSES[cfg.loss.lower()]
    kw = dict(cfg.loss_kwargs)
    if "label_smoothing" in inspect.signature(cls.__init__).parameters:
        kw.setdefault("label_smoothing", cfg.label_smoothing)
    elif cfg.label_smoothing:
        log.info("loss %r takes no label smoothing; label_smoothing=%s is not used", cfg.loss, cfg.label_smoothing)
    return make_loss(cfg.loss, gather=gather, **kw)


class _Stop:
    """Ctrl-C handling: the first SIGINT asks training to stop at the end of the current step
    (so the checkpoint is consistent); a second one raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def __enter__(self) -> "_Stop":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)

            def handler(signum, frame):
                if self.requested:
                    raise KeyboardInterrupt
                self.requested = True
                log.warning("interrupt: stopping after the current step (press Ctrl-C again to stop at once)")

            signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def fit(model: ClipModel, train_data: ReIdDataset, config: TrainConfig | None = None,
        eval_data: ReIdDataset | None = None, *, callbacks: Sequence[Callable[[dict], Any]] = (),
        resume: str | os.PathLike | bool | None = None, loss_fn: nn.Module | None = None,
        sampler=None) -> History:
    """Fine-tune ``model``'s image tower on identity pairs from ``train_data`` (CLIP-ReIdent).

    Args:
        model: a :class:`cliptk.ClipModel` (it is moved to ``config.device`` and trained in place;
            a text tower, if present, is frozen).
        train_data: a :class:`cliptk.ReIdDataset`; if it holds several splits, the
            ``config.train_split`` rows are used. Identities need >= 2 images.
        config: a :class:`TrainConfig` (default: CLIP-ReIdent's recipe).
        eval_data: a dataset with ``config.query_split`` and ``config.gallery_split`` rows, scored
            (mAP, rank-1) before training and after every ``eval_every`` epochs; None = no evaluation.
        callbacks: functions called with an event dict at ``"train_begin"``, ``"step_end"``,
            ``"eval"``, ``"epoch_end"`` and ``"train_end"``. The dict holds ``event``, the history
            row's fields (``epoch``, ``step``, ``loss``, ``lr``, ``logit_scale``, ``mAP``,
            ``rank1``, ``images_per_s``, ``seconds``), ``history`` (the :class:`History`),
            ``model``, ``config`` and ``rank``. Raising ``KeyboardInterrupt`` stops training
            like Ctrl-C (see :func:`live_plot` for a ready-made one).
        resume: a checkpoint directory, a run's ``output_dir``, or True for ``config.output_dir``:
            continue exactly where that run stopped (weights, optimizer, schedule, RNG, sampler,
            history). The current ``config`` is used; fields that differ from the checkpoint's are
            warned about.
        loss_fn: a loss module with the :mod:`cliptk.losses` signature, replacing ``config.loss``.
        sampler: a batch sampler over the rows of the training split replacing the default
            :class:`cliptk.samplers.UniqueIdPairSampler` (e.g. one that builds batches of hard
            negatives). It must yield flat index lists ``[q_1..q_B, p_1..p_B]``, have ``len()`` and
            ``set_epoch(epoch)``, and be deterministic given its seed and epoch (exact resume
            re-creates an epoch and skips its first batches); under DDP it must shard by rank.

    Ctrl-C: the first one lets the current step finish, saves a checkpoint (with ``output_dir``)
    and returns; a second one stops at once (a checkpoint is still saved unless the interrupt
    landed inside an optimizer update). The model stays in memory either way.

    Returns:
        The :class:`History` (``interrupted=True`` after Ctrl-C, which is not re-raised; a
        command line should check the flag and exit with status 130).

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the message names epoch, step and value;
            the model holds the last good weights and the last checkpoint is untouched).
        KeyError: ``train_data`` lacks the train split. ValueError: too few identities for the
            batch size, or an unreadable training image. FileNotFoundError: ``resume`` names no
            checkpoint.

    Example:
        >>> history = fit(model, data, TrainConfig(epochs=2, lr=1e-4), eval_data=data)  # doctest: +SKIP
        >>> history.evals                                                                 # doctest: +SKIP
    """
    cfg = config if config is not None else TrainConfig()
    started_dist = _init_distributed(cfg.device)
    try:
        return _fit(model, train_data, cfg, eval_data, list(callbacks), resume, loss_fn, sampler)
    finally:
        if started_dist:
            dist.destroy_process_group()


def _fit(model: ClipModel, train_data: ReIdDataset, cfg: TrainConfig, eval_data: ReIdDataset | None,
         callbacks: list, resume, loss_fn: nn.Module | None, sampler) -> History:
    from .evaluate import evaluate

    rank, world = _world()
    main = rank == 0
    device = _pick_device(cfg.device)
    amp_dtype = _amp_dtype(cfg.amp, device)
    if cfg.accumulate > 1 and main:
        warnings.warn(
            f"accumulate={cfg.accumulate}: gradient accumulation averages the gradients of {cfg.accumulate} "
            f"micro-batches, but each InfoNCE still contrasts only the {2 * cfg.batch_size} images of its own "
            "micro-batch: it does NOT enlarge the set of negatives the way a larger batch_size does",
            UserWarning, stacklevel=3)
    train = _train_rows(train_data, cfg)
    was_training = model.training
    model.to(device)

    ckpt_path: Path | None = None
    if resume is not None and resume is not False:
        where = cfg.output_dir if resume is True else resume
        if where is None:
            raise ValueError("resume=True needs config.output_dir (the run folder to resume)")
        ckpt_path = find_checkpoint(where)
        if ckpt_path is None:
            raise FileNotFoundError(f"no complete checkpoint under {where}; start without resume= or point it at "
                                    "a run's output_dir / checkpoints/step-NNNNNNNN folder")
    _prepare_model(model, cfg, fresh=ckpt_path is None)
    _seed_all(cfg.seed + rank)
    if cfg.reinit_blocks and ckpt_path is None:
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices):   # same new weights on every rank; training RNG untouched
            torch.manual_seed(cfg.seed)
            reinit_top_blocks(model, cfg.reinit_blocks)

    if sampler is None:
        sampler = make_sampler(train, cfg, rank, world)
    batches_per_epoch = (len(sampler) // cfg.accumulate) * cfg.accumulate
    steps_per_epoch = batches_per_epoch // cfg.accumulate
    if steps_per_epoch == 0:
        raise ValueError(f"{train.name}: one epoch gives {len(sampler)} batches of {cfg.batch_size} pairs, fewer than "
                         f"accumulate={cfg.accumulate}; lower batch_size or accumulate")
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    criterion = loss_fn if loss_fn is not None else _make_loss_module(cfg, gather=world > 1)

    history = History()
    epoch, batch, step, seconds = 0, 0, 0, 0.0  # epoch index, batches done in it, optimizer steps, train time
    if ckpt_path is not None:
        st = _restore(ckpt_path, model, optimizer, scheduler, scaler, cfg, device, rank)
        epoch, batch, step, seconds = st["epoch"], st["batch"], st["step"], st["seconds"]
        history.rows, history.checkpoint = list(st["history"]), ckpt_path
        if main:
            log.info("resuming from %s (epoch %d, batch %d, step %d)", ckpt_path, epoch, batch, step)

    view = _PairImages(train, model.preprocess, cache=cfg.cache_images, progress=cfg.progress and main)
    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    ckpt_folder = Path(cfg.output_dir) / "checkpoints" if cfg.output_dir else None
    if main and cfg.output_dir:
        cfg.to_yaml(Path(cfg.output_dir) / "config.yaml")

    def row(kind: str, **values) -> dict:
        r = {c: float("nan") for c in COLUMNS}
        r.update(kind=kind, epoch=epoch + batch / batches_per_epoch, step=step, seconds=seconds,
                 lr=optimizer.param_groups[0]["lr"], logit_scale=float(model.logit_scale.detach().exp()))
        r.update({k: _to_python(v) for k, v in values.items()})
        return r

    def emit(event: str, r: dict | None = None) -> None:
        for cb in callbacks:
            cb({"event": event, **(r or {}), "history": history, "model": model, "config": cfg, "rank": rank})

    def save(reason: str, collective: bool = True) -> None:
        if ckpt_folder is None:
            return
        if main:
            state = {"format": 1, "epoch": epoch, "batch": batch, "step": step, "seconds": seconds,
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict(), "rng": _rng_state(device),
                     "sampler": {"seed": getattr(sampler, "seed", None), "epoch": epoch, "batches_done": batch,
                                 "world_size": world},
                     "config": cfg.to_dict(), "history": history.rows, "reason": reason,
                     "model": {"name": model.name, "pretrained": model.pretrained}}
            history.checkpoint = _save_checkpoint(ckpt_folder, model, state, cfg.keep_checkpoints)
            history.table.to_csv(Path(cfg.output_dir) / "history.csv", index=False)
        if world > 1 and collective:
            path = [str(history.checkpoint) if history.checkpoint else None]
            dist.broadcast_object_list(path, src=0)
            history.checkpoint = Path(path[0]) if path[0] else None

    def run_eval() -> None:
        if eval_data is None:
            return
        r = None
        if main:
            res = evaluate(model, eval_data, query=cfg.query_split, gallery=cfg.gallery_split, flip=cfg.eval_flip,
                           batch_size=cfg.eval_batch_size, progress=False)
            r = row("eval", mAP=res.mAP, rank1=res.cmc[1])
        if world > 1:
            box = [r]
            dist.broadcast_object_list(box, src=0)
            r = box[0]
        history.rows.append(r)
        emit("eval", r)
        if main:
            bar.set_postfix_str(f"mAP={r['mAP']:.4f} rank-1={r['rank1']:.4f}", refresh=False)

    def sync_flags(*flags: bool) -> list[bool]:
        """Any rank's flag stops every rank (ranks must leave the loop at the same step)."""
        if world == 1:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    bar = tqdm(total=total_steps, initial=step, desc="fit", unit="step", disable=not (cfg.progress and main),
               dynamic_ncols=True)
    t_call = time.perf_counter()
    in_update = False
    fresh = ckpt_path is None
    model.train()
    try:
        with _Stop() as stop:
            emit("train_begin", row("begin"))
            if fresh and cfg.eval_before:
                run_eval()
            while epoch < cfg.epochs and history.stopped is None:
                sampler.set_epoch(epoch)
                loader = DataLoader(view, batch_sampler=_SkipBatches(sampler, batch), num_workers=cfg.num_workers,
                                    pin_memory=device.type == "cuda", generator=torch.Generator(),
                                    persistent_workers=False)
                micro, loss_sum = 0, 0.0
                t_step = time.perf_counter()
                it = iter(loader)
                while batch < batches_per_epoch:
                    try:
                        x, idx = next(it)
                    except StopIteration:
                        break
                    except Exception:
                        if stop.requested:  # workers got the SIGINT too
                            raise KeyboardInterrupt from None
                        raise
                    b = x.shape[0] // 2
                    x = _joint_flip(x.to(device, non_blocking=True), cfg.seed, epoch, batch + micro, rank, world,
                                    cfg.flip_p)
                    ids = torch.as_tensor(train.pids[idx[:b].numpy()], device=device)
                    last_micro = world == 1 or micro == cfg.accumulate - 1  # DDP syncs gradients on the last one
                    with (contextlib.nullcontext() if last_micro else ddp_model.no_sync()):
                        loss, value = _pair_loss(ddp_model, criterion, x, ids, model.logit_scale.exp(), amp_dtype)
                        if not math.isfinite(value):
                            raise _non_finite(value, epoch, step, batch + micro, cfg, history)
                        scaler.scale(loss / cfg.accumulate).backward()
                    loss_sum += value
                    micro += 1
                    if micro < cfg.accumulate:
                        continue
                    in_update = True
                    if cfg.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    lr_used = optimizer.param_groups[0]["lr"]
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    if cfg.learn_temperature:
                        with torch.no_grad():
                            model.logit_scale.clamp_(0, math.log(cfg.max_logit_scale))
                    batch += micro
                    step += 1
                    in_update = False
                    now = time.perf_counter()
                    dt = now - t_step
                    seconds += dt
                    t_step = now
                    r = row("train", loss=loss_sum / micro, lr=lr_used,
                            images_per_s=2 * b * micro * world / dt if dt > 0 else float("nan"))
                    history.rows.append(r)
                    micro, loss_sum = 0, 0.0
                    bar.update(1)
                    if main and bar.disable is False:
                        bar.set_postfix(loss=f"{r['loss']:.4f}", lr=f"{lr_used:.2e}", refresh=False)
                    emit("step_end", r)
                    if cfg.save_every_steps and step % cfg.save_every_steps == 0 and batch < batches_per_epoch:
                        save("every_steps")
                    over_time = cfg.max_minutes is not None and time.perf_counter() - t_call > 60 * cfg.max_minutes
                    interrupt, over_time = sync_flags(stop.requested, over_time)
                    if interrupt:
                        raise KeyboardInterrupt
                    if cfg.max_steps is not None and step >= cfg.max_steps:
                        history.stopped = "max_steps"
                    elif over_time:
                        history.stopped = "max_minutes"
                    if history.stopped:
                        break
                    t_step = time.perf_counter()
                if history.stopped:
                    run_eval()
                    save(history.stopped)
                    break
                # epoch finished
                if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                    run_eval()
                elif not cfg.eval_every and epoch + 1 == cfg.epochs:
                    run_eval()
                losses = [r["loss"] for r in history.rows if r["kind"] == "train" and r["epoch"] > epoch]
                last_eval = history.final if history.final.get("epoch") == epoch + 1 else {}
                epoch, batch = epoch + 1, 0
                save("epoch_end")
                emit("epoch_end", row("epoch", loss=float(np.mean(losses)) if losses else float("nan"),
                                      mAP=last_eval.get("mAP", float("nan")), rank1=last_eval.get("rank1", float("nan"))))
                if sync_flags(stop.requested)[0]:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        history.interrupted, history.stopped = True, "interrupted"
        if in_update:
            log.warning("interrupted inside an optimizer update: no checkpoint saved (the state may be torn); "
                        "the last checkpoint is %s", history.checkpoint)
        else:
            try:
                save("interrupted", collective=False)
            except KeyboardInterrupt:
                log.warning("interrupted again while saving; the last complete checkpoint is %s", history.checkpoint)
        if main:
            log.warning("training interrupted at epoch %d, step %d; checkpoint: %s (resume with fit(..., resume=...))",
                        epoch, step, history.checkpoint)
    finally:
        bar.close()
        model.train(was_training)
    if main and cfg.output_dir and not history.interrupted:
        save_model(model, Path(cfg.output_dir) / "model.safetensors", metadata={"step": step})
    emit("train_end", history.rows[-1] if history.rows else None)
    return history


def _pair_loss(net: nn.Module, criterion: nn.Module, x: torch.Tensor, ids: torch.Tensor, scale: torch.Tensor,
               amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, float]:
    """Embed a batch ``[q_1..q_B, p_1..p_B]`` in one forward pass and compute the pair loss (in
    float32, outside autocast). Returns the loss and its value averaged over ranks (for logging
    and the NaN guard, identical on every rank)."""
    b = x.shape[0] // 2
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        emb = net(x)
    emb = emb.float()
    loss = criterion(emb[:b], emb[b:], scale, ids=ids)
    value = loss.detach().clone()
    rank, world = _world()
    if world > 1:
        dist.all_reduce(value)
        value /= world
    return loss, float(value)


def _restore(path: Path, model: ClipModel, optimizer, scheduler, scaler, cfg: TrainConfig, device: torch.device,
             rank: int) -> dict:
    """Load a checkpoint's weights, optimizer, scheduler, scaler and RNG states; return its state dict."""
    st = torch.load(path / _STATE, map_location="cpu", weights_only=True)
    _warn_config_changes(st["config"], cfg, path)
    try:
        model.load_state_dict(load_file(str(path / _WEIGHTS), device=str(device)), strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"checkpoint {path} does not fit this model ({model.name}): {err}") from err
    optimizer.load_state_dict(st["optimizer"])  # after the scheduler was built: it keeps the saved lr
    scheduler.load_state_dict(st["scheduler"])
    scaler.load_state_dict(st["scaler"])
    if rank == 0:
        _set_rng_state(st["rng"], device)
    else:  # only rank 0's generator states are stored; other ranks re-seed deterministically
        _seed_all(cfg.seed + rank + 7919 * st["step"])
    return st


def _non_finite(value: float, epoch: int, step: int, batch: int, cfg: TrainConfig, history: History
                ) -> NonFiniteLossError:
    where = history.checkpoint or "none (set TrainConfig.output_dir to keep checkpoints)"
    return NonFiniteLossError(
        f"loss is {value} at epoch {epoch + 1}/{cfg.epochs}, optimizer step {step + 1} (batch {batch} of the epoch); "
        f"training stopped before this update, so the model in memory holds the weights of step {step} and the last "
        f"checkpoint is {where}. Try a lower lr (now {cfg.lr:g}), amp='bf16' instead of fp16, grad_clip=1.0, or "
        "check the batch's images; continue with fit(..., resume=<checkpoint>).",
        epoch=epoch, step=step, loss=value, checkpoint=history.checkpoint, history=history)


_RESUME_NEUTRAL = {"output_dir", "progress", "num_workers", "max_steps", "max_minutes", "eval_batch_size",
                   "keep_checkpoints", "save_every_steps", "device", "data", "cache_images"}


def _warn_config_changes(saved: dict, cfg: TrainConfig, where: Path) -> None:
    now = cfg.to_dict()
    diff = {k: (saved.get(k), v) for k, v in now.items() if k not in _RESUME_NEUTRAL and saved.get(k) != v}
    if diff:
        warnings.warn(f"resuming {where} with a config that differs from the checkpoint's in "
                      + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
                      + "; the run will not match an uninterrupted one", UserWarning, stacklevel=5)


# =============================================================================== notebook helper
def live_plot(every: int = 10, figsize: tuple[float, float] = (9, 3)) -> Callable[[dict], None]:
    """A callback drawing the training loss and the evaluation mAP / rank-1 live in a notebook.

    Redraws every ``every`` steps and at each evaluation (matplotlib, one output area updated in
    place). Use: ``fit(model, data, cfg, eval_data=data, callbacks=[live_plot()])``.
    Returns the callback; its ``figure`` attribute is the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=figsize)
    plt.close(fig)  # shown through display() only
    handle: dict[str, Any] = {}

    def callback(event: dict) -> None:
        if event.get("rank", 0) != 0 or event["event"] not in ("step_end", "eval", "train_end"):
            return
        if event["event"] == "step_end" and event["step"] % every:
            return
        h = event["history"]
        steps, evals = h.steps, h.evals
        ax_loss.clear()
        ax_loss.plot(steps["step"], steps["loss"], lw=1)
        ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
        ax_map.clear()
        if len(evals):
            ax_map.plot(evals["epoch"], evals["mAP"], "o-", label="mAP")
            ax_map.plot(evals["epoch"], evals["rank1"], "s--", label="rank-1")
            ax_map.legend(loc="lower right")
        ax_map.set(xlabel="epoch", ylim=(0, 1.02), title="query/gallery")
        fig.tight_layout()
        try:
            from IPython.display import display

            if "display" not in handle:
                handle["display"] = display(fig, display_id=True)
            elif handle["display"] is not None:
                handle["display"].update(fig)
        except ImportError:
            pass

    callback.figure = fig  # type: ignore[attr-defined]
    return callback


# =============================================================================== config-driven runs
def _load_data(cfg: TrainConfig) -> ReIdDataset:
    from .data import read_dataset

    if cfg.data is None:
        raise ValueError("TrainConfig.data is not set: give a dataset folder/CSV, or 'synthetic'")
    if cfg.data == "synthetic":
        if not cfg.synthetic:
            from .default import players

            return players()  # the embedded default (smaller under CLIPTK_SMOKE=1)
        import hashlib

        from .models import data_dir
        from .synthetic import generate_players

        kw = dict(cfg.synthetic)
        key = hashlib.blake2b(json.dumps(kw, sort_keys=True, default=str).encode(), digest_size=4).hexdigest()
        root = kw.pop("root", None) or data_dir() / "generated" / f"players-{key}"
        return read_dataset(generate_players(root, **kw))
    return read_dataset(cfg.data)


def _load_model(cfg: TrainConfig, weights: str | os.PathLike | None = None) -> ClipModel:
    from .models import load_model

    device = "cpu" if cfg.device == "auto" and not torch.cuda.is_available() else (
        "cuda" if cfg.device == "auto" else cfg.device)
    return load_model(cfg.model, str(weights) if weights is not None else cfg.pretrained, device=device,
                      image_only=cfg.image_only, projection=cfg.projection, resize=cfg.resize)


def run_from_config(config: str | os.PathLike | TrainConfig | dict, overrides: dict[str, Any] | None = None, *,
                    resume: str | os.PathLike | bool | None = None,
                    callbacks: Sequence[Callable[[dict], Any]] = ()) -> tuple[ClipModel, History]:
    """Load the model and data a config names and :func:`fit` it (``python -m cliptk train``).

    Args:
        config: a YAML path (e.g. ``configs/cpu_tiny.yaml``), a dict or a :class:`TrainConfig`.
        overrides: field values to change (strings are converted, e.g. ``{"lr": "1e-4"}``).
        resume, callbacks: as in :func:`fit`.

    Under ``CLIPTK_SMOKE=1`` training stops after a few steps (``max_steps``, unless overridden)
    and ``data: synthetic`` is the small smoke world.

    Returns:
        ``(model, history)``; the fine-tuned weights are also in ``output_dir/model.safetensors``.

    Raises:
        WeightsNotAvailableError: the pretrained weights are not on this machine (the message says
            how to get them). Everything :func:`fit` raises.
    """
    cfg = load_config(config, overrides)
    if is_smoke() and "max_steps" not in (overrides or {}):
        cfg = cfg.replace(max_steps=min(cfg.max_steps or _SMOKE_STEPS, _SMOKE_STEPS))
    if is_smoke() and "batch_size" not in (overrides or {}):
        cfg = cfg.replace(batch_size=min(cfg.batch_size, 16))  # the smoke world has 60 training identities
    data = _load_data(cfg)
    model = _load_model(cfg)
    eval_data = data if {cfg.query_split, cfg.gallery_split} <= set(data.split_names) else None
    history = fit(model, data, cfg, eval_data=eval_data, callbacks=callbacks, resume=resume)
    return model, history


def evaluate_from_config(config: str | os.PathLike | TrainConfig | dict, overrides: dict[str, Any] | None = None, *,
                         checkpoint: str | os.PathLike | None = None, flip: bool | None = None):
    """Score a config's model on its data's query/gallery splits (``python -m cliptk eval``).

    Args:
        config, overrides: as in :func:`run_from_config`.
        checkpoint: fine-tuned weights: a ``.safetensors`` file, a checkpoint directory or a run's
            ``output_dir`` (its ``model.safetensors``, else its latest checkpoint). None = the
            config's ``pretrained`` weights (zero-shot).
        flip: average with the mirrored image (default: ``config.eval_flip``).

    Returns:
        A :class:`cliptk.metrics.ReIdResult` (``.mAP``, ``.cmc[1]``).

    Raises:
        FileNotFoundError: ``checkpoint`` holds no weights.
    """
    from .evaluate import evaluate

    cfg = load_config(config, overrides)
    weights = None
    if checkpoint is not None:
        p = Path(checkpoint)
        if p.is_file():
            weights = p
        elif (p / "model.safetensors").is_file() and not _CKPT.match(p.name):
            weights = p / "model.safetensors"
        else:
            found = find_checkpoint(p)
            if found is None:
                raise FileNotFoundError(f"no weights at {p}: expected a .safetensors file, a run folder with "
                                        "model.safetensors, or a checkpoints/step-NNNNNNNN folder")
            weights = found / _WEIGHTS
    data = _load_data(cfg)
    model = _load_model(cfg, weights)
    return evaluate(model, data, query=cfg.query_split, gallery=cfg.gallery_split,
                    flip=cfg.eval_flip if flip is None else flip, batch_size=cfg.eval_batch_size,
                    progress=cfg.progress)
