"""Runs that a config names, end to end, and the embedded default they share.

A :class:`cliptk.train.TrainConfig` names a model (``model``, ``pretrained``, ``image_only``,
``projection``, ``resize``, ``device``) and data (``data``, ``synthetic``). This module is the one
place that turns those fields into objects: :func:`load_from_config` (the model),
:func:`dataset_from_config` (the data), :func:`run_from_config` (load both and fine-tune: the
``python -m cliptk train --config`` command) and :func:`evaluate_from_config` (score zero-shot
or fine-tuned weights on the config's data; the ``eval`` command takes ``--data``/``--model``
instead and does not read a config).

What the notebooks' parameters name (``DATA``, ``MODEL``/``PRETRAINED``, ``FINETUNED``,
``CONFIG``, ``DEVICE``), turned into objects in one place: :func:`dataset` (a path, or ``None`` =
the embedded players; query/gallery held out when the data has none), :func:`train_config` (a
config name or file, with the model, device and data changes and the smoke rule applied),
:func:`finetuned` (any model fine-tuned on any data with any config, trained once and cached
under a key over all of them), :func:`resolve_device` and :func:`config_path`.

The embedded default, shared by the notebooks, the demo and the benchmarks so they use one
generated copy: :func:`players` (the synthetic players world at the sizes of
:data:`PLAYERS_SIZES`, full or ``CLIPTK_SMOKE=1``), and ``finetuned()`` without arguments (the
bundled tiny CLIP fine-tuned on it with ``configs/clip_reident_tiny.yaml``, the paper's recipe scaled
to the tiny model; ``configs/cpu_tiny.yaml`` adds kit batches and re-initialised blocks, an ablation).

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
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ._util import atomic_write_text
from .data import ReIdDataset, read_dataset, read_deepsportradar
from .evaluate import evaluate
from .metadata import note, with_eval_splits
from .metrics import ReIdResult
from .models import BUNDLED, ClipModel, load_model, save_model
from .settings import data_dir, is_smoke, pick, smoke_run
from .synthetic import generate_players
from .train import History, TrainConfig, find_weights, fit, load_config, trainer_for

__all__ = ["load_from_config", "dataset_from_config", "run_from_config", "evaluate_from_config", "players",
           "players_root", "finetuned", "config_path", "config_names", "dataset", "train_config", "resolve_device",
           "fit_to_data", "PLAYERS_SIZES"]

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
    device = resolve_device(cfg.device)
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
    return read_dataset(cfg.data, on_error=cfg.on_error)


def _eval_ready(cfg: TrainConfig, data: ReIdDataset) -> ReIdDataset:
    """``data`` with held-out query/gallery splits when it has none and the config uses the usual
    split names (:func:`cliptk.metadata.with_eval_splits`; the same identities every time, so
    ``train`` and ``eval`` of one folder agree)."""
    usual = (cfg.train_split, cfg.query_split, cfg.gallery_split) == ("train", "query", "gallery")
    if usual and "train" in data.split_names and not {"query", "gallery"} & set(data.split_names):
        return with_eval_splits(data)
    return data


def run_from_config(config: ConfigLike, overrides: dict[str, Any] | None = None, *,
                    resume: str | os.PathLike | bool | None = None,
                    callbacks: Sequence[Callable[[dict], Any]] = ()) -> tuple[ClipModel, History]:
    """Load the model and data a config names and :func:`cliptk.train.fit` it (``python -m cliptk train``)
    with the trainer the config names (:func:`cliptk.train.trainer_for`: ``objective:
    image_text`` with ``lock`` trains on the data's captions, ``distill_teacher`` distils a teacher).

    Args:
        config: a YAML path (e.g. ``configs/cpu_tiny.yaml``), a dict or a :class:`cliptk.train.TrainConfig`.
        overrides: field values to change (strings are converted, e.g. ``{"lr": "1e-4"}``).
        resume, callbacks: as in :func:`cliptk.train.fit`.

    Under ``CLIPTK_SMOKE=1`` the run is shrunk by :func:`cliptk.settings.smoke_run` (a few steps
    of one epoch, a small batch; fields given in ``overrides`` are kept) and ``data: synthetic``
    is the small smoke world. The query/gallery splits, when the data has them, are evaluated; a
    dataset with only a train split (a folder per identity) gets them from held-out identities
    (:func:`cliptk.metadata.with_eval_splits`), and the recipe is adapted to the data where it
    names what the data lacks (:func:`fit_to_data`). The model is built after seeding with the
    config's ``seed``, so a random-init run is the same every time.

    Returns:
        ``(model, history)``; the fine-tuned weights are also in ``output_dir/model.safetensors``.

    Raises:
        WeightsNotAvailableError: the pretrained weights are not on this machine (the message says
            how to get them). ValueError: ``objective: image_text`` with ``image_only: true`` (no
            text tower to train) or ``projection: false``. Everything :func:`cliptk.train.fit` raises.

    Example (trains; ``configs/cpu_tiny.yaml`` takes minutes):
        >>> model, history = run_from_config(config_path("cpu_tiny"), {"epochs": "1"})   # doctest: +SKIP
    """
    overrides = dict(overrides or {})
    cfg = smoke_run(load_config(config_path(config) if isinstance(config, (str, os.PathLike)) else config,
                                overrides), keep=set(overrides))
    if cfg.data not in (None, "synthetic") and Path(cfg.data).exists():  # config.yaml of the run: an absolute path
        cfg = cfg.replace(data=str(Path(cfg.data).resolve()))
    data = _eval_ready(cfg, dataset_from_config(cfg))
    cfg = fit_to_data(cfg, data, keep=set(overrides))
    if cfg.objective == "image_text" and cfg.image_only:
        raise ValueError("TrainConfig.image_only=True is invalid with objective='image_text': image-text training "
                         "needs the text tower; set image_only: false")
    if cfg.objective == "image_text" and not cfg.projection:
        raise ValueError("TrainConfig.projection=False is invalid with objective='image_text': the image embeddings "
                         "must be projected into the text tower's space; set projection: true")
    torch.manual_seed(cfg.seed)  # a random-init (or re-initialised) tower is the same in every run of a config
    model = load_from_config(cfg)
    eval_data = data if {cfg.query_split, cfg.gallery_split} <= set(data.split_names) else None
    if eval_data is None:
        note(f"no {cfg.query_split!r}/{cfg.gallery_split!r} split in {cfg.data}: training without evaluation "
             "(hold out identities with dataset.holdout(), or set query_split/gallery_split)")
    history = fit(model, data, cfg, eval_data=eval_data, callbacks=callbacks, resume=resume, trainer=trainer_for(cfg))
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
    cfg = load_config(config_path(config) if isinstance(config, (str, os.PathLike)) else config, overrides)
    weights = find_weights(checkpoint) if checkpoint is not None else None
    data = _eval_ready(cfg, dataset_from_config(cfg))
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


def _config_dirs() -> list[Path]:
    """Where shipped configs live: the checkout's ``configs/``, else the installed package's copy."""
    here = Path(__file__).resolve().parent
    return [d for d in (here.parent / "configs", here / "_data" / "configs") if d.is_dir()]


def config_names() -> list[str]:
    """The names of the configs shipped with cliptk (``cpu_tiny``, ``clip_reident_vitl14``, ...)."""
    return sorted({f.stem for d in _config_dirs() for f in d.glob("*.yaml")})


def config_path(name: str | os.PathLike = "clip_reident_tiny") -> Path:
    """The YAML file of a config: an existing file as given, else a config shipped with cliptk by
    name (``"cpu_tiny"`` or ``"cpu_tiny.yaml"``; found in a checkout and in an installed wheel alike,
    whatever the working directory).

    Raises:
        FileNotFoundError: neither a file nor a shipped name (the message lists the names).

    Example:
        >>> config_path("cpu_tiny").name, config_path("clip_reident_vitl14.yaml").stem
        ('cpu_tiny.yaml', 'clip_reident_vitl14')
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    for d in _config_dirs():
        if (d / f"{stem}.yaml").is_file():
            return d / f"{stem}.yaml"
    raise FileNotFoundError(f"config {str(name)!r} is neither a file nor a config shipped with cliptk "
                            f"({', '.join(config_names()) or 'none found'}); give a YAML path or one of those names")


def resolve_device(device: str | torch.device | None = "auto") -> str:
    """``"auto"`` (or None): ``"cuda"`` when a CUDA device is present, else ``"cpu"``; any other
    value as given.

    Example:
        >>> resolve_device("cpu"), resolve_device("auto") in ("cpu", "cuda")
        ('cpu', True)
    """
    if device is None or str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def dataset(data: str | os.PathLike | ReIdDataset | None = None, *, on_error: str = "raise",
            eval_splits: bool = True) -> ReIdDataset:
    """The dataset a ``DATA`` parameter names, ready for the notebooks: ``None`` (or
    ``"synthetic"``) is the embedded :func:`players`; a path is anything :func:`cliptk.read_dataset`
    reads (a DeepSportRadar or Market-1501 root, a folder per identity, a CSV manifest).

    With ``eval_splits`` (default) a dataset without query/gallery splits gets them from
    held-out identities (:func:`cliptk.metadata.with_eval_splits`: ``dataset.holdout(ids=0.2,
    seed=0)``, said in one line), the same ones on every call.

    Raises:
        FileNotFoundError: the path does not exist (the message names it).

    Example:
        >>> dataset("/no/such/folder")
        Traceback (most recent call last):
        FileNotFoundError: DATA: /no/such/folder does not exist; give a dataset folder or CSV manifest, or None for the embedded players
    """
    if data is None or str(data) == "synthetic":
        ds = players()
    elif isinstance(data, ReIdDataset):
        ds = data
    else:
        path = Path(data).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"DATA: {path} does not exist; give a dataset folder or CSV manifest, "
                                    "or None for the embedded players")
        ds = read_dataset(path, on_error=on_error)
    return with_eval_splits(ds) if eval_splits else ds


def fit_to_data(cfg: TrainConfig, data: ReIdDataset, keep: set[str] | Sequence[str] = (), *,
                quiet: bool = False) -> TrainConfig:
    """``cfg`` adapted to ``data`` where a recipe names what the data lacks, each change said in
    one line: ``group_by`` a column the data does not have is dropped (random unique-identity
    batches), and ``batch_size`` is capped at the number of training identities (a batch never
    holds an identity twice). Fields in ``keep`` (what the user set) are left as they are.

    Example:
        >>> import pandas as pd
        >>> ds = ReIdDataset("i", pd.DataFrame({"path": list("abcdef"), "pid": [1, 1, 2, 2, 3, 3]}))
        >>> cfg = fit_to_data(TrainConfig(group_by="team", batch_size=64), ds)
        recipe: group_by 'team' dropped (the data has no such column): random unique-identity batches
        recipe: batch_size 64 -> 3 (the 'train' split has 3 identities)
        >>> cfg.group_by, cfg.batch_size
        (None, 3)
    """
    keep = set(keep)
    say = (lambda m: None) if quiet else note
    changes: dict[str, Any] = {}
    if cfg.group_by and "group_by" not in keep and cfg.group_by not in data.table.columns:
        say(f"recipe: group_by {cfg.group_by!r} dropped (the data has no such column): random unique-identity batches")
        changes["group_by"] = None
    if cfg.train_split in data.split_names and "batch_size" not in keep:
        pids = data.table.loc[data.table["split"] == cfg.train_split, "pid"]
        n_ids = int(pids[pids >= 0].nunique())
        if 2 <= n_ids < cfg.batch_size:
            say(f"recipe: batch_size {cfg.batch_size} -> {n_ids} (the {cfg.train_split!r} split has {n_ids} identities)")
            changes["batch_size"] = n_ids
    return cfg.replace(**changes) if changes else cfg


def train_config(config: ConfigLike = "clip_reident_tiny", *, dataset: ReIdDataset | None = None, model: str | None = None,
                 pretrained: str | os.PathLike | None = None, device: str | None = "auto",
                 overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The training config the notebooks' parameters describe.

    Args:
        config: a shipped config's name (``"cpu_tiny"``), a YAML path, a dict or a config.
        dataset: adapt the recipe to this data (:func:`fit_to_data`).
        model, pretrained: replace the config's model. With ``model`` given, ``pretrained`` is
            taken as is (None = random init); with ``model=None`` the config's model is kept and
            ``pretrained``, when given, replaces its weights.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:1"``...; None keeps the config's.
        overrides: other fields (as ``--set``); kept by the smoke rule and by :func:`fit_to_data`.

    Under ``CLIPTK_SMOKE=1`` the run is shrunk by :func:`cliptk.settings.smoke_run`.

    Example:
        >>> cfg = train_config("cpu_tiny", model="ViT-S-32", device="cpu")
        recipe: reinit_blocks 3 -> 0 (a random-init ViT-S-32 has nothing to re-initialise)
        >>> cfg.model, cfg.pretrained, cfg.device
        ('ViT-S-32', None, 'cpu')
    """
    overrides = dict(overrides or {})
    cfg = load_config(config_path(config) if isinstance(config, (str, os.PathLike)) else config, overrides)
    if model is not None:
        cfg = cfg.replace(model=model, pretrained=None if pretrained is None else str(pretrained))
        if cfg.pretrained is None and cfg.reinit_blocks and "reinit_blocks" not in overrides:
            note(f"recipe: reinit_blocks {cfg.reinit_blocks} -> 0 (a random-init {model} has nothing to re-initialise)")
            cfg = cfg.replace(reinit_blocks=0)
    elif pretrained is not None:
        cfg = cfg.replace(pretrained=str(pretrained))
    if device is not None:
        cfg = cfg.replace(device=resolve_device(device))
    cfg = smoke_run(cfg, keep=set(overrides))
    return fit_to_data(cfg, dataset, keep=set(overrides)) if dataset is not None else cfg


def _file_identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _weights_identity(model: str, pretrained: str | None) -> str:
    """The weights a (model, pretrained) pair starts from: a file's identity, else the tag."""
    if pretrained is None:
        return "random-init"
    if (model, str(pretrained)) in BUNDLED:  # the bundled file may be re-made: key on its bytes' identity
        path = Path(data_dir()) / BUNDLED[(model, str(pretrained))]
        return f"{pretrained}:{_file_identity(path)}" if path.is_file() else str(pretrained)
    path = Path(pretrained).expanduser()
    return _file_identity(path) if path.is_file() else str(pretrained)


def _data_identity(ds: ReIdDataset) -> str:
    """The images and labels a run trains and evaluates on: root, table and each file's size and time."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(Path(ds.root).resolve()).encode())
    h.update(ds.table[["path", "pid", "split"]].to_csv(index=False).encode())
    for p in ds.paths:
        try:
            st = p.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
        except OSError:
            h.update(b"missing;")
    return h.hexdigest()


def finetuned(config: ConfigLike = "clip_reident_tiny", *, data: str | os.PathLike | ReIdDataset | None = None,
              model: str | None = None, pretrained: str | os.PathLike | None = None,
              checkpoint: str | os.PathLike | None = None, device: str | None = "auto", overwrite: bool = False,
              progress: bool = True, callbacks: Sequence[Callable[[dict], Any]] = ()) -> tuple[ClipModel, History | None]:
    """A model fine-tuned with ``config`` on ``data``, trained on the first call and cached.

    Without arguments: the bundled tiny CLIP fine-tuned on the embedded players with
    ``configs/clip_reident_tiny.yaml`` (the paper's recipe; a few minutes on a CPU, a few steps under
    ``CLIPTK_SMOKE=1``), so the notebooks and the demo share one fine-tuned model. With the notebooks'
    parameters (``finetuned(CONFIG, data=DATA, model=MODEL, pretrained=PRETRAINED,
    checkpoint=FINETUNED, device=DEVICE)``) any model on any data: the cache key covers the
    config (after :func:`train_config`), the starting weights (a file's size and time, or the
    tag) and the data (its table and files), and the result lives in
    ``data/generated/finetuned-<key>[-smoke]/``.

    Args:
        config, model, pretrained, device: as in :func:`train_config`.
        data: as in :func:`dataset` (None = the embedded players; a path; or a dataset already
            read, e.g. the notebook's ``ds``; held-out query/gallery when the data has none).
            Training uses the config's train split.
        checkpoint: already fine-tuned weights (a ``.safetensors`` file or a run's output folder,
            :func:`cliptk.train.find_weights`): load them instead of training; ``history`` is the
            run's ``history.json`` beside them when there is one, else None.
        overwrite: train again even when the cache holds a result.
        progress, callbacks: as in :func:`cliptk.train.fit` (not part of the key).

    Returns:
        ``(model, history)``: the :class:`cliptk.train.History` of the run that made the weights.

    Example (trains on the first call):
        >>> model, history = finetuned()                                              # doctest: +SKIP
        >>> model, history = finetuned("cpu_tiny", data="/data/my_crops", model="ViT-B-16", pretrained="openai")  # doctest: +SKIP
    """
    ds = dataset(data)
    cfg = train_config(config, dataset=ds, model=model, pretrained=pretrained, device=device)
    where = "synthetic" if data is None or str(data) == "synthetic" else (
        str(Path(data.root).resolve()) if isinstance(data, ReIdDataset) else str(Path(data).resolve()))
    cfg = cfg.replace(data=where)   # the run's config.yaml records where the data is (the key uses the data itself)
    if checkpoint is not None:
        weights = find_weights(checkpoint)
        rows = weights.parent / "history.json"
        history = History(rows=json.loads(rows.read_text())) if rows.is_file() else None
        return load_from_config(cfg, weights), history
    key = hashlib.blake2b(f"{cfg.replace(data=None).to_yaml()}|{_weights_identity(cfg.model, cfg.pretrained)}|{_data_identity(ds)}"
                          .encode(), digest_size=6).hexdigest()
    out = Path(data_dir()) / "generated" / f"finetuned-{key}{'-smoke' if is_smoke() else ''}"
    weights, rows = out / "model.safetensors", out / "history.json"
    if weights.is_file() and rows.is_file() and not overwrite:
        return load_from_config(cfg, weights), History(rows=json.loads(rows.read_text()))
    shutil.rmtree(out, ignore_errors=True)  # an interrupted or overwritten run: start clean
    torch.manual_seed(cfg.seed)
    net = load_from_config(cfg)
    eval_data = ds if {cfg.query_split, cfg.gallery_split} <= set(ds.split_names) else None
    history = fit(net, ds, cfg.replace(output_dir=str(out), progress=progress), eval_data=eval_data,
                  callbacks=callbacks, trainer=trainer_for(cfg))
    save_model(net, weights)
    atomic_write_text(rows, json.dumps(history.rows, default=float))
    return net, history
