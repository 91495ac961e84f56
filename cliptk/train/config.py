"""The training-run configuration: :class:`TrainConfig`, its YAML / ``--set`` round trip and
:func:`load_config`.

One dataclass holds every field a fine-tuning run reads, with CLIP-ReIdent's defaults (Habel,
Deuser & Oswald, MMSports 2022) and validation in ``__post_init__`` that names the bad field. The
command line's ``--set field=value`` strings are converted to each field's type here
(:meth:`TrainConfig.replace`), so a YAML file, a dict and a command line all give the same config.

Example:
    >>> cfg = load_config(None, {"epochs": "2", "lr": "1e-4"})
    >>> (cfg.epochs, cfg.lr)
    (2, 0.0001)
"""
from __future__ import annotations

import difflib
import math
import numbers
import os
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .._util import atomic_write_text
from ..losses import LOSSES

__all__ = ["TrainConfig", "load_config", "OBJECTIVES", "LOCKS"]

#: what a run trains: image tower on identity pairs, or CLIP's image-caption objective
OBJECTIVES = ("image_image", "image_text")
#: which tower an image-text run keeps frozen (LiT: "image")
LOCKS = ("none", "image", "text")
_AMP = ("auto", "bf16", "fp16", "off")
_SCHEDULES = ("polynomial", "cosine", "constant")
_ON_ERROR = ("raise", "skip")


@dataclass
class TrainConfig:
    """Everything a fine-tuning run needs, with CLIP-ReIdent's defaults (Habel et al., 2022).

    :func:`cliptk.train.fit` uses the data/optimisation/loss/precision/evaluation/checkpoint
    fields; the model and ``data`` fields are read by :func:`cliptk.recipes.run_from_config` (the
    command line), which loads them.

    Model (``run_from_config`` only): ``model``, ``pretrained``, ``image_only``, ``projection``
    (False removes the ViT's output projection, as the paper does), ``resize``.

    Data: ``data`` (a folder/CSV for :func:`cliptk.read_dataset`, or ``"synthetic"``: the embedded
    synthetic players of :func:`cliptk.recipes.players`, or, when ``synthetic`` holds
    :func:`cliptk.generate_players` keyword arguments (``root`` optional), that world under
    ``data/generated/players-<hash>``), ``train_split``, ``query_split``, ``gallery_split``, ``batch_size`` ((query,
    positive) pairs per step and per GPU, i.e. ``2 * batch_size`` images), ``per_epoch``
    (``"images"``: every image is a query once per epoch; ``"identities"``: one query per
    identity), ``flip_p`` (joint horizontal flip of both images of a pair), ``num_workers``,
    ``cache_images`` (preprocess every training image once and keep the tensors in memory),
    ``group_by`` (None: :class:`cliptk.samplers.UniqueIdPairSampler`'s random batches; a metadata
    column such as ``"team"`` or ``"game"``: :class:`cliptk.samplers.GroupedPairSampler` batches of
    whole groups, i.e. in-batch hard negatives), ``on_error`` (``"raise"``: an unreadable image
    stops reading the dataset; ``"skip"``: it is left out with a warning; passed to
    :func:`cliptk.read_dataset` by :func:`cliptk.recipes.run_from_config`).

    Objective: ``objective`` (``"image_image"``: the image tower on (query, positive) identity
    pairs, CLIP-ReIdent, a full model's text tower frozen; ``"image_text"``: symmetric image–caption
    InfoNCE on the rows with a ``caption``, :class:`cliptk.train.ImageTextTrainer`), ``lock``
    (``"image_text"`` only: ``"none"`` trains both towers, ``"image"`` freezes the image tower
    (LiT, Zhai et al., CVPR 2022), ``"text"`` the text tower), ``distill_teacher`` (distil a teacher,
    MobileCLIP, Vasu et al., CVPR 2024, with :class:`cliptk.train.DistillTrainer`: a teacher-cache
    file written by :func:`cliptk.train.distill.cache_teacher_embeddings`, or a model name whose
    embeddings are cached once at the start, with weights ``distill_teacher_pretrained``: a tag, a
    ``.safetensors`` file or a run folder; None = no teacher), ``distill_weight`` (MobileCLIP's
    ``λ``: the loss is ``(1 − λ)·contrastive + λ·distillation``; 1 = distillation only).
    :func:`cliptk.train.trainer_for` (and so :func:`cliptk.recipes.run_from_config`) picks the
    trainer these name.

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
    each epoch end), ``keep_checkpoints``, ``progress``, ``overwrite`` (a fresh run into an
    ``output_dir`` that holds a previous run refuses unless this is True, which first deletes that
    run's files: see :func:`cliptk.train.checkpoint.run_files`; resuming is ``fit(..., resume=)``).

    Every field is type-checked: integers must be whole numbers (``epochs: 1.5`` is refused),
    floats finite numbers (``lr: inf`` is refused), strings strings, flags true/false.

    Raises:
        ValueError: a field has the wrong type or is out of range; the message names it, its
            value and what is allowed.

    Example:
        >>> cfg = TrainConfig(epochs=2, lr=1e-4)
        >>> TrainConfig.from_yaml(cfg.to_yaml()) == cfg
        True
    """

    # model (read by cliptk.recipes.run_from_config)
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
    on_error: str = "raise"
    # objective
    objective: str = "image_image"
    lock: str = "none"
    distill_teacher: str | None = None
    distill_teacher_pretrained: str | None = None
    distill_weight: float = 1.0
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
    overwrite: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.amp, bool):  # YAML 1.1 reads a bare `off` as false
            self.amp = "auto" if self.amp else "off"
        if self.lock is None:           # `lock: null` / ImageTextTrainer's None: both towers train
            self.lock = "none"
        hints = _hints()
        for f in fields(self):  # types first: the range checks below compare numbers
            setattr(self, f.name, _typed(f.name, getattr(self, f.name), hints[f.name]))

        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is invalid: {allowed}")

        for name in ("model", "train_split", "query_split", "gallery_split"):
            if not getattr(self, name).strip():
                raise bad(name, "must be a non-empty string")
        for name in ("data", "output_dir", "group_by", "distill_teacher", "distill_teacher_pretrained"):
            if getattr(self, name) is not None and not getattr(self, name).strip():
                raise bad(name, "must be None or a non-empty string")

        for name in ("batch_size", "epochs", "accumulate", "eval_batch_size", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be an integer >= 1")
        for name in ("num_workers", "eval_every", "reinit_blocks"):
            if int(getattr(self, name)) < 0:
                raise bad(name, "must be an integer >= 0")
        for name in ("max_steps", "save_every_steps"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise bad(name, "must be None or an integer >= 1")
        if self.seed < 0:
            raise bad("seed", "must be an integer >= 0")
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
        requires = LOSSES[self.loss.lower()].requires   # extra inputs the loss needs; fit makes none
        if self.loss.lower() == "tempnet":            # ... but TempNetTrainer makes tempnet's (trainer_for)
            if self.objective != "image_image" or self.distill_teacher is not None:
                raise bad("loss", "'tempnet' trains image-image pairs with a per-sample temperature; it does not go "
                          "with objective='image_text' or a distill_teacher")
        elif requires:
            usable = ", ".join(repr(name) for name, cls in LOSSES.items() if not cls.requires)
            raise bad("loss", f"this loss needs {', '.join(r + '=' for r in requires)} inputs that fit() does not "
                      f"compute; pass your own module as fit(..., loss_fn=...) or use {usable}")
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
        if self.on_error not in _ON_ERROR:
            raise bad("on_error", f"choose one of {_ON_ERROR}")
        if self.objective not in OBJECTIVES:
            raise bad("objective", f"choose one of {OBJECTIVES}")
        if self.lock not in LOCKS:
            raise bad("lock", f"choose one of {LOCKS}")
        if self.lock != "none" and self.objective != "image_text":
            raise bad("lock", f"locks a tower of image-text training; objective={self.objective!r} trains the image "
                      "tower only (set objective: image_text, or lock: none)")
        if self.lock == "image" and self.reinit_blocks:
            raise bad("reinit_blocks", "would re-initialise the locked image tower (lock='image'); set reinit_blocks=0")
        if self.distill_teacher is not None and self.objective != "image_image":
            raise bad("distill_teacher", f"distils image-image pairs; objective={self.objective!r} is not supported "
                      "with a teacher (set distill_teacher: null or objective: image_image)")
        if self.distill_teacher_pretrained is not None and self.distill_teacher is None:
            raise bad("distill_teacher_pretrained", "names the weights of distill_teacher, which is not set")
        if not 0 <= self.distill_weight <= 1:
            raise bad("distill_weight", "must be in [0, 1] (MobileCLIP's lambda: (1 - l)*contrastive + l*distillation)")

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
            atomic_write_text(Path(path), text)
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


def _hints() -> dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(TrainConfig)
    return _HINTS


_HINTS: dict[str, Any] | None = None
_PATHS = {"data", "output_dir"}   # str fields that also take a pathlib.Path
_TYPE_HINTS = {"epochs": " (whole epochs: the schedule spans them; stop part-way with max_steps)"}


def _typed(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the plain Python type of field ``name`` (annotation ``hint``), or a
    ``ValueError`` naming the field: ints must be whole (``2.0`` is 2, ``1.5`` is refused), floats
    finite, bools true/false, ``X | None`` also takes None; YAML lists become the tuple of
    ``betas``, None becomes ``{}`` for the dict fields."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    origin = typing.get_origin(base) or base
    what = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
            dict: "a mapping of key: value", tuple: f"a list of {len(typing.get_args(base))} numbers"}[origin]

    def bad() -> ValueError:
        return ValueError(f"TrainConfig.{name}={value!r} is invalid: must be {what}{' or None' if optional else ''}, "
                          f"got {type(value).__name__}{_TYPE_HINTS.get(name, '')}")

    if value is None:
        if optional:
            return None
        if origin is dict:
            return {}
        raise bad()
    is_bool = isinstance(value, (bool, np.bool_))
    if origin is bool:
        if not is_bool:
            raise bad()
        return bool(value)
    if origin is int:
        if is_bool or not isinstance(value, numbers.Real) or not math.isfinite(value) or value != int(value):
            raise bad()
        return int(value)
    if origin is float:
        if is_bool or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise bad()
        return float(value)
    if origin is str:
        if name in _PATHS and isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise bad()
        return value
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad()
        return dict(value)
    # tuple[float, ...] (betas)
    n = len(typing.get_args(base))
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != n:
        raise bad()
    try:
        return tuple(_typed(name, v, float) for v in value)
    except ValueError:
        raise bad() from None


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

