"""Runs that a config names, end to end, and the embedded default they share.

A :class:`cliptk.train.TrainConfig` names a model (``model``, ``pretrained``, ``image_only``,
``projection``, ``resize``, ``device``) and data (``data``, ``synthetic``). This module is the one
place that turns those fields into objects: :func:`load_from_config` (the model),
:func:`dataset_from_config` (the data), :func:`run_from_config` (load both and fine-tune: the
``python -m cliptk train --config`` command) and :func:`evaluate_from_config` (score zero-shot
or fine-tuned weights on the config's data; the ``eval`` command takes ``--data``/``--model``
instead and does not read a config).

The embedded default, shared by the notebooks, the demo and the benchmarks so they use one
generated copy: :func:`players` (the synthetic players world at the sizes of
:data:`PLAYERS_SIZES`, full or ``CLIPTK_SMOKE=1``), :func:`finetuned` (the bundled tiny CLIP
fine-tuned on it with ``configs/cpu_tiny.yaml``, trained once and cached) and :func:`config_path`.

Example:
    >>> config_path("cpu_tiny").name
    'cpu_tiny.yaml'
    >>> players_root().parent.name
    'generated'
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ._util import atomic_write_text
from .data import ReIdDataset, read_dataset, read_deepsportradar
from .evaluate import evaluate
from .metrics import ReIdResult
from .models import BUNDLED, ClipModel, load_model, save_model
from .settings import data_dir, is_smoke, pick, smoke_run
from .synthetic import generate_players
from .train import History, TrainConfig, find_weights, fit, load_config

__all__ = ["load_from_config", "dataset_from_config", "run_from_config", "evaluate_from_config", "players",
           "players_root", "finetuned", "config_path", "PLAYERS_SIZES"]

#: (n_train_ids, n_test_ids, images_per_id) for the full and the smoke world
PLAYERS_SIZES = {"full": (400, 100, 10), "smoke": (60, 30, 6)}

ConfigLike = str | os.PathLike | TrainConfig | dict


# ------------------------------------------------------------------------------ what a config names
def load_from_config(config: ConfigLike, weights: str | os.PathLike | None = None) -> ClipModel:
    """The model a config names: ``load_model(model, pretrained, image_only=, projection=,
    resize=)`` on the config's device (``"auto"``: CUDA when available, else the CPU).

    Args:
        config: a :class:`cliptk.train.TrainConfig`, a YAML path or a dict.
        weights: a ``.safetensors`` file replacing ``pretrained`` (fine-tuned weights).

    Raises:
        WeightsNotAvailableError: the pretrained weights are not on this machine (the message says
            how to get them).

    Example:
        >>> model = load_from_config({"model": "cliptk-micro", "pretrained": None, "device": "cpu"})
        >>> model.name, model.image_only
        ('cliptk-micro', True)
    """
    cfg = load_config(config)
    device = "cpu" if cfg.device == "auto" and not torch.cuda.is_available() else (
        "cuda" if cfg.device == "auto" else cfg.device)
    return load_model(cfg.model, str(weights) if weights is not None else cfg.pretrained, device=device,
                      image_only=cfg.image_only, projection=cfg.projection, resize=cfg.resize)


def dataset_from_config(config: ConfigLike) -> ReIdDataset:
    """The data a config names: ``data`` read with :func:`cliptk.read_dataset`, or for
    ``data: synthetic`` the embedded :func:`players` (``synthetic: {}``) or the world that the
    :func:`cliptk.generate_players` arguments in ``synthetic`` describe, generated once under
    ``data/generated/players-<hash of the arguments>`` (or ``synthetic["root"]``).

    Raises:
        ValueError: ``data`` is not set. FileNotFoundError: the folder/CSV does not exist.

    Example:
        >>> dataset_from_config({})
        Traceback (most recent call last):
        ValueError: TrainConfig.data is not set: give a dataset folder/CSV, or 'synthetic'
    """
    cfg = load_config(config)
    if cfg.data is None:
        raise ValueError("TrainConfig.data is not set: give a dataset folder/CSV, or 'synthetic'")
    if cfg.data == "synthetic":
        if not cfg.synthetic:
            return players()  # the embedded default (smaller under CLIPTK_SMOKE=1)
        kw = dict(cfg.synthetic)
        key = hashlib.blake2b(json.dumps(kw, sort_keys=True, default=str).encode(), digest_size=4).hexdigest()
        root = kw.pop("root", None) or data_dir() / "generated" / f"players-{key}"
        return read_dataset(generate_players(root, **kw))
    return read_dataset(cfg.data)


def run_from_config(config: ConfigLike, overrides: dict[str, Any] | None = None, *,
                    resume: str | os.PathLike | bool | None = None,
                    callbacks: Sequence[Callable[[dict], Any]] = ()) -> tuple[ClipModel, History]:
    """Load the model and data a config names and :func:`cliptk.train.fit` it (``python -m cliptk train``).

    Args:
        config: a YAML path (e.g. ``configs/cpu_tiny.yaml``), a dict or a :class:`cliptk.train.TrainConfig`.
        overrides: field values to change (strings are converted, e.g. ``{"lr": "1e-4"}``).
        resume, callbacks: as in :func:`cliptk.train.fit`.

    Under ``CLIPTK_SMOKE=1`` the run is shrunk by :func:`cliptk.settings.smoke_run` (a few steps
    of one epoch, a small batch; fields given in ``overrides`` are kept) and ``data: synthetic``
    is the small smoke world. The query/gallery splits, when the data has them, are evaluated.

    Returns:
        ``(model, history)``; the fine-tuned weights are also in ``output_dir/model.safetensors``.

    Raises:
        WeightsNotAvailableError: the pretrained weights are not on this machine (the message says
            how to get them). Everything :func:`cliptk.train.fit` raises.

    Example (trains; ``configs/cpu_tiny.yaml`` takes minutes):
        >>> model, history = run_from_config(config_path("cpu_tiny"), {"epochs": "1"})   # doctest: +SKIP
    """
    overrides = dict(overrides or {})
    cfg = smoke_run(load_config(config, overrides), keep=set(overrides))
    data = dataset_from_config(cfg)
    model = load_from_config(cfg)
    eval_data = data if {cfg.query_split, cfg.gallery_split} <= set(data.split_names) else None
    history = fit(model, data, cfg, eval_data=eval_data, callbacks=callbacks, resume=resume)
    return model, history


def evaluate_from_config(config: ConfigLike, overrides: dict[str, Any] | None = None, *,
                         checkpoint: str | os.PathLike | None = None, flip: bool | None = None) -> ReIdResult:
    """Score a config's model (or fine-tuned weights of it) on its data's query/gallery splits.

    Args:
        config, overrides: as in :func:`run_from_config`.
        checkpoint: fine-tuned weights: a ``.safetensors`` file, a checkpoint directory or a run's
            ``output_dir`` (its ``model.safetensors``, else its latest checkpoint;
            :func:`cliptk.train.find_weights`). None = the config's ``pretrained`` weights
            (zero-shot).
        flip: average with the mirrored image (default: ``config.eval_flip``).

    Returns:
        A :class:`cliptk.metrics.ReIdResult` (``.mAP``, ``.cmc[1]``).

    Raises:
        FileNotFoundError: ``checkpoint`` holds no weights.

    Example (needs the embedded players):
        >>> evaluate_from_config(config_path("cpu_tiny"), checkpoint="runs/cpu_tiny")   # doctest: +SKIP
    """
    cfg = load_config(config, overrides)
    weights = find_weights(checkpoint) if checkpoint is not None else None
    data = dataset_from_config(cfg)
    model = load_from_config(cfg, weights)
    return evaluate(model, data, query=cfg.query_split, gallery=cfg.gallery_split,
                    flip=cfg.eval_flip if flip is None else flip, batch_size=cfg.eval_batch_size,
                    progress=cfg.progress)


# ------------------------------------------------------------------------------ the embedded default
def players_root() -> Path:
    """Where the embedded dataset lives: ``$CLIPTK_DATA/generated/players[-smoke]`` (``data/`` by default)."""
    return Path(data_dir()) / "generated" / pick("players", "players-smoke")


def players(root: str | os.PathLike | None = None, seed: int = 0) -> ReIdDataset:
    """Generate (once; cached on disk) and read the synthetic players dataset of :data:`PLAYERS_SIZES`.

    Example (generates ~5000 images on the first call):
        >>> ds = players()          # doctest: +SKIP
        >>> ds.subset("query")      # doctest: +SKIP
    """
    n_train, n_test, per_id = PLAYERS_SIZES["smoke" if is_smoke() else "full"]
    root = generate_players(root or players_root(), n_train_ids=n_train, n_test_ids=n_test, images_per_id=per_id,
                            seed=seed)
    return read_deepsportradar(root)


def config_path(name: str = "cpu_tiny") -> Path:
    """A config shipped in the repository's ``configs/`` folder."""
    return Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"


def finetuned(config: str | os.PathLike | None = None, *, progress: bool = True,
              callbacks: Sequence[Callable[[dict], Any]] = ()) -> tuple[ClipModel, History]:
    """The bundled tiny CLIP fine-tuned on the embedded default (``configs/cpu_tiny.yaml``).

    Trained on the first call (a few minutes on a CPU; a few steps under ``CLIPTK_SMOKE=1``, by
    :func:`cliptk.settings.smoke_run`) and cached in ``data/generated/finetuned-<hash of the
    config>/``, so notebooks 00, 03 and 04 and the demo share one fine-tuned model instead of each
    training their own.

    Returns:
        ``(model, history)``; ``history`` is the :class:`cliptk.train.History` of the run that made
        the weights (read back from the cache when it exists).

    Example (trains on the first call):
        >>> model, history = finetuned()   # doctest: +SKIP
    """
    cfg = smoke_run(TrainConfig.from_yaml(config or config_path()))
    source = cfg.pretrained
    if (cfg.model, str(cfg.pretrained)) in BUNDLED:  # the bundled file may be re-made: key on its bytes' identity
        st = (Path(data_dir()) / BUNDLED[(cfg.model, str(cfg.pretrained))]).stat()
        source = f"{source}:{st.st_size}:{st.st_mtime_ns}"
    key = hashlib.blake2b(f"{cfg.to_yaml()}|{source}".encode(), digest_size=6).hexdigest()
    out = Path(data_dir()) / "generated" / f"finetuned-{key}{'-smoke' if is_smoke() else ''}"
    weights, rows = out / "model.safetensors", out / "history.json"
    if weights.is_file() and rows.is_file():
        return load_from_config(cfg, weights), History(rows=json.loads(rows.read_text()))
    data = players()
    model = load_from_config(cfg)
    history = fit(model, data, cfg.replace(output_dir=str(out), progress=progress), eval_data=data,
                  callbacks=callbacks)
    save_model(model, weights)
    atomic_write_text(rows, json.dumps(history.rows, default=float))
    return model, history
