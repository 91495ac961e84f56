"""Batched image (and text) embedding with a progress bar and an on-disk cache.

``embed(model, dataset)`` returns an ``[N, D]`` float32 tensor of L2-normalised embeddings, one row
per image in dataset order. With ``cache_dir`` set, the result is stored as safetensors under a key
made of the model's weights and preprocessing (:meth:`ClipModel.fingerprint`), the flip option and
the file list (paths, sizes, modification times), so re-running a notebook cell is instant and any
change to the model or the files recomputes. A cache file that cannot be read or does not hold
what it should (one unit-length or skipped row per image) is recomputed with a warning naming it.

For datasets too large for one sitting, :func:`embed_to_folder` (the ``python -m cliptk embed``
command) writes the same rows as shard files plus the dataset's rows and a manifest: resumable
shard by shard, and split across the ranks of a ``torchrun`` job; :func:`load_shards` reads the
folder back in dataset order as an :class:`EmbeddedDataset`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ._util import atomic_path, atomic_write_text, barrier, pid_alive, sum_over_ranks, world
from .data import ReIdDataset

if TYPE_CHECKING:   # annotations only: `import cliptk` (every torchrun worker) need not import open_clip
    from .models import ClipModel

__all__ = ["embed", "embed_texts", "ImageFolderView", "embed_to_folder", "load_shards", "EmbeddedDataset", "ShardRun",
           "SHARD_SIZE"]


class ImageFolderView(Dataset):
    """A torch ``Dataset`` over a :class:`ReIdDataset` (or a list of PIL images) that applies a
    transform; returns ``(tensor, index)``. Unreadable files raise (naming the file) unless the
    dataset skips them, in which case a zero image is returned and the index is reported as -1."""

    def __init__(self, images: ReIdDataset | Sequence[Image.Image], transform):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.images[i]
        if img is None:  # skipped by the dataset's on_error="skip" policy
            return torch.zeros(3, 1, 1), -1
        return self.transform(img), i


def _file_key(paths: Sequence[Path]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()


def _read_cache(path: Path, n: int) -> torch.Tensor | None:
    """The cached ``[n, D]`` embeddings in ``path``, or None (with a warning naming the file) when
    it is unreadable or its content is not what :func:`embed` writes: float32 rows that are unit
    length, or all NaN for images the dataset skipped."""
    try:
        return _check_rows(load_file(str(path))["embeddings"], n)
    except Exception as err:   # a truncated or garbled file, a missing key, wrong content
        warnings.warn(f"embedding cache {path} is unusable ({type(err).__name__}: {err}); recomputing it",
                      UserWarning, stacklevel=3)
        return None


def _check_rows(emb: torch.Tensor, n: int) -> torch.Tensor:
    """``emb`` if it is what :func:`embed` writes for ``n`` images (float32 ``[n, D]``, rows unit
    length or all NaN for skipped images); otherwise ValueError saying what it holds."""
    if emb.dtype != torch.float32 or emb.ndim != 2 or emb.shape[0] != n:
        raise ValueError(f"holds a {emb.dtype} tensor of shape {tuple(emb.shape)}, expected [{n}, D] float32")
    skipped = torch.isnan(emb).all(dim=1)
    good = emb[~skipped]
    if not torch.isfinite(good).all() or not torch.allclose(good.norm(dim=1), torch.ones(len(good)), atol=1e-3):
        raise ValueError("holds rows that are neither unit-length embeddings nor skipped (all NaN)")
    return emb


def _collate(batch):
    ok = [(x, i) for x, i in batch if i >= 0]
    if not ok:
        return None, torch.tensor([], dtype=torch.long)
    return torch.stack([x for x, _ in ok]), torch.tensor([i for _, i in ok])


@torch.no_grad()
def embed(model: ClipModel, images: ReIdDataset | Sequence[Image.Image], *, batch_size: int = 64,
          flip: bool = False, cache_dir: str | os.PathLike | None = None, num_workers: int = 0,
          device: str | torch.device | None = None, amp: bool | None = None,
          progress: bool = True) -> torch.Tensor:
    """Embed images with ``model``'s image tower.

    Args:
        model: a :class:`ClipModel` (its ``preprocess`` is applied).
        images: a :class:`ReIdDataset` or a list of PIL images.
        batch_size, num_workers: DataLoader settings.
        flip: average the embeddings of the image and its horizontal mirror (then re-normalise).
        cache_dir: folder for the on-disk cache (datasets only; lists of PIL images are not cached).
        device: defaults to the model's device.
        amp: bf16 autocast on CUDA (default: on for CUDA, off on CPU).
        progress: show a ``tqdm.auto`` bar.

    Returns:
        ``[N, D]`` float32 CPU tensor, rows L2-normalised; rows of files skipped by the dataset's
        ``on_error="skip"`` policy are NaN.

    Raises:
        ImageLoadError: an image cannot be read (names the file).

    Example:
        >>> feats = embed(model, dataset.subset("query"), flip=True)   # doctest: +SKIP
    """
    device = torch.device(device) if device is not None else model.device
    cache_file = None
    if cache_dir is not None and isinstance(images, ReIdDataset):
        key = hashlib.blake2b(f"{model.fingerprint()}|{flip}|{_file_key(images.paths)}".encode(), digest_size=16).hexdigest()
        cache_file = Path(cache_dir) / f"emb-{key}.safetensors"
        if cache_file.is_file():
            cached = _read_cache(cache_file, len(images))
            if cached is not None:
                return cached
    out = _embed_rows(model, images, batch_size=batch_size, flip=flip, num_workers=num_workers, device=device,
                      amp=amp, progress=progress, desc=f"embed {getattr(images, 'name', 'images')}")
    if out is None:
        raise ValueError(f"embed: no readable image among {len(images)} inputs")
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            save_file({"embeddings": out.contiguous()}, str(tmp))
    return out


@torch.no_grad()
def _embed_rows(model: ClipModel, images, *, batch_size: int, flip: bool, num_workers: int, device: torch.device,
                amp: bool | None, progress: bool, desc: str) -> torch.Tensor | None:
    """The ``[N, D]`` rows of :func:`embed` (NaN for skipped images), or None when no image was readable."""
    amp = device.type == "cuda" if amp is None else amp
    loader = DataLoader(ImageFolderView(images, model.preprocess), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    out: torch.Tensor | None = None
    bar = tqdm(total=len(images), desc=desc, disable=not progress, unit="img", leave=False)
    try:
        for x, idx in loader:
            bar.update(len(idx) if x is None else x.shape[0])
            if x is None:
                continue
            x = x.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                f = model.encode_image(x.to(model.dtype), normalize=False).float()
                if flip:
                    f = F.normalize(f, dim=-1) + F.normalize(
                        model.encode_image(torch.flip(x, dims=[3]).to(model.dtype), normalize=False).float(), dim=-1)
            f = F.normalize(f, dim=-1).cpu()
            if out is None:
                out = torch.full((len(images), f.shape[1]), float("nan"))
            out[idx] = f
    finally:
        bar.close()
        model.train(was_training)
    return out


@torch.no_grad()
def embed_texts(model: ClipModel, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """``[N, D]`` L2-normalised text embeddings (float32, CPU) of ``texts``."""
    was_training = model.training
    model.eval()
    try:
        parts = [model.encode_text(list(texts[i:i + batch_size])).float().cpu()
                 for i in range(0, len(texts), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts)


# ------------------------------------------------------------------------------- sharded folders
#: images per shard file of :func:`embed_to_folder` (4096 x 512 float32 = 8 MB)
SHARD_SIZE = 4096
_INDEX = "embeddings.json"
_ROWS = "rows.csv"
_FORMAT = 1
_TMP = re.compile(r"^\.(?:shard-\d+\.safetensors|embeddings\.json|rows\.csv)\.tmp-(\d+)$")


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def _shard_key(fingerprint: str, flip: bool, paths: Sequence[Path], start: int) -> str:
    """What a shard's rows depend on: the model, the flip option, its first row and its files."""
    return hashlib.blake2b(f"{fingerprint}|{flip}|{start}|{_file_key(paths)}".encode(), digest_size=16).hexdigest()


@dataclass
class ShardRun:
    """What :func:`embed_to_folder` did, over all ranks: ``computed`` shards were embedded now,
    ``reused`` ones were already finished (a resumed run)."""

    out: Path
    n_images: int
    dim: int
    n_shards: int
    computed: int
    reused: int

    def __str__(self) -> str:
        return (f"{self.n_images} embeddings ({self.dim}-d) in {self.n_shards} shard(s) under {self.out}: "
                f"{self.computed} computed, {self.reused} already done")


@dataclass
class EmbeddedDataset:
    """A dataset and its embeddings, row for row, as :func:`load_shards` reads them from a folder.

    Attributes:
        embeddings: ``[N, D]`` float32, L2-normalised rows (NaN rows: images the dataset skipped).
        dataset: the :class:`ReIdDataset` rows they belong to (paths, pids, cameras, splits, metadata).
        info: the folder's manifest (model, pretrained tag, fingerprint, flip, shards).

    ``subset("query")`` selects splits of both, so ``q = e.subset("query")`` gives
    ``q.embeddings`` and ``q.dataset`` for :func:`cliptk.metrics.evaluate_reid` and
    ``rank_gallery(q.embeddings, g.embeddings, q.dataset, g.dataset)``;
    :meth:`without_skipped` drops the rows of images that could not be read.
    """

    embeddings: torch.Tensor
    dataset: ReIdDataset
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.dataset)

    def subset(self, *splits: str) -> "EmbeddedDataset":
        """The rows whose split is one of ``splits`` (KeyError lists the available ones)."""
        ds = self.dataset.subset(*splits)
        rows = np.flatnonzero(self.dataset.table["split"].isin(splits).to_numpy())
        return EmbeddedDataset(self.embeddings[torch.from_numpy(rows)], ds, self.info)

    def without_skipped(self) -> "EmbeddedDataset":
        """The rows that have an embedding: without the NaN rows of images the dataset skipped as
        unreadable when it was embedded (what :func:`cliptk.metrics.evaluate_reid`,
        :func:`cliptk.diagnose.rank_gallery` and the audits need; they refuse NaN rows)."""
        keep = ~torch.isnan(self.embeddings).all(dim=1)
        if bool(keep.all()):
            return self
        return EmbeddedDataset(self.embeddings[keep], self.dataset.select(keep.numpy()), self.info)

    def __repr__(self) -> str:
        return (f"EmbeddedDataset({len(self)} x {self.embeddings.shape[1]}, model={self.info.get('model')!r}, "
                f"pretrained={self.info.get('pretrained')!r}, flip={self.info.get('flip')}; {self.dataset!r})")


def _read_index(out: Path) -> dict | None:
    path = out / _INDEX
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(index, dict) or index.get("format") != _FORMAT:
            raise ValueError(f"not a cliptk embeddings manifest of format {_FORMAT}")
        return index
    except (ValueError, OSError) as err:
        raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err}); delete the folder or pass "
                         "--overwrite (overwrite=True) to embed into it afresh") from err


def _read_shard(path: Path, start: int, stop: int, *, key: str | None = None,
                fingerprint: str | None = None) -> torch.Tensor | None:
    """The ``[stop - start, D]`` rows in shard ``path``, or None: silently when it was made from
    other files (``key`` differs: stale, to recompute), with a warning naming it when it is
    unreadable or holds the wrong rows (a truncated copy, another folder's shard)."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if key is not None and meta.get("key") != key:
                return None
            if fingerprint is not None and meta.get("fingerprint") != fingerprint:
                raise ValueError(f"was made by another model (fingerprint {meta.get('fingerprint')}, "
                                 f"the manifest says {fingerprint})")
            rows = f.get_tensor("rows")
            emb = f.get_tensor("embeddings")
        if not torch.equal(rows, torch.arange(start, stop)):
            raise ValueError(f"holds rows {int(rows[0]) if len(rows) else '-'}..{int(rows[-1]) if len(rows) else '-'}, "
                             f"expected {start}..{stop - 1}")
        return _check_rows(emb, stop - start)
    except Exception as err:   # a truncated or garbled file, a missing key, wrong content
        warnings.warn(f"embedding shard {path} is unusable ({type(err).__name__}: {err}); "
                      + ("recomputing it" if key is not None else "rerun the embed command to redo it"),
                      UserWarning, stacklevel=3)
        return None


def _list_key(dataset: ReIdDataset) -> str:
    """Which images, in which order (not their contents: a changed file only makes its shard stale)."""
    h = hashlib.blake2b(str(dataset.root.resolve()).encode(), digest_size=12)
    for p in dataset.table["path"]:
        h.update(f"\n{p}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _prepare(out: Path, dataset: ReIdDataset, index: dict) -> None:
    """Rank 0, before any shard is written: clear leftovers of killed writers and shards beyond
    the new last one, and write the rows and the manifest. Shards of another model or of changed
    files stay until recomputed: their key no longer matches, and :func:`load_shards` refuses a
    folder while one is left."""
    out.mkdir(parents=True, exist_ok=True)
    for p in out.iterdir():
        m = _TMP.match(p.name)
        if m and not pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
    n_shards = len(index["shards"])
    for p in out.glob("shard-*.safetensors"):
        m = re.fullmatch(r"shard-(\d+)\.safetensors", p.name)
        if m and int(m.group(1)) >= n_shards:
            p.unlink(missing_ok=True)
    rows_copy = ReIdDataset(dataset.root.resolve(), dataset.table, name=dataset.name)
    rows_copy.to_csv(out / _ROWS)   # paths relative to the folder when under it, else absolute
    atomic_write_text(out / _INDEX, json.dumps(index, indent=1))


def embed_to_folder(model: ClipModel, dataset: ReIdDataset, out: str | os.PathLike, *, shard_size: int = SHARD_SIZE,
                    flip: bool = False, batch_size: int = 64, num_workers: int = 0,
                    device: str | torch.device | None = None, amp: bool | None = None, overwrite: bool = False,
                    progress: bool = True) -> ShardRun:
    """Embed ``dataset`` into a folder of shard files, resumably, and across the ranks of a
    ``torchrun`` job (the ``python -m cliptk embed`` command).

    The folder holds ``rows.csv`` (the dataset's rows, which :func:`cliptk.read_csv` also reads),
    ``embeddings.json`` (the manifest: model, fingerprint, flip, shard bounds) and
    ``shard-00000.safetensors`` ... with rows ``[i * shard_size, (i + 1) * shard_size)``: their
    :func:`embed` embeddings and row numbers. Each file lands atomically, so a killed run leaves
    only finished shards, and a rerun embeds only the shards that are missing, unreadable or made
    from files that changed since (each shard records a key of the model, the flip option and its
    files' paths, sizes and modification times). Under ``torch.distributed`` (started by the caller;
    the command does it) rank ``r`` embeds shards ``r, r + world_size, ...``; rank 0 writes the
    rows and the manifest. The result equals one process's ``embed(model, dataset)`` row for row
    (same code, batches cut at shard bounds). Read it with :func:`load_shards`.

    Args:
        shard_size: images per shard (the unit of resuming and of work per rank).
        overwrite: embed into a folder that holds another model's or flip option's embeddings, or
            those of another list of images, instead of refusing (shards that still match are kept).
        flip, batch_size, num_workers, device, amp, progress: as for :func:`embed`.

    Returns:
        :class:`ShardRun` (counts over all ranks).

    Raises:
        ValueError: ``out`` holds embeddings of another model, flip option or list of images (and
            not ``overwrite``), its manifest is unreadable, or the dataset is empty.
        ImageLoadError: an image cannot be read (names the file), unless the dataset skips them
            (``on_error="skip"``: NaN rows, as :func:`embed`).

    Example:
        >>> run = embed_to_folder(model, dataset, "runs/emb", shard_size=1024)   # doctest: +SKIP
        >>> load_shards("runs/emb").embeddings.shape                              # doctest: +SKIP
        torch.Size([12000, 512])
    """
    if not isinstance(dataset, ReIdDataset):
        raise TypeError(f"embed_to_folder needs a ReIdDataset (its rows are written beside the embeddings), "
                        f"got {type(dataset).__name__}; use embed() for a list of images")
    if isinstance(shard_size, bool) or int(shard_size) != shard_size or shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    if not len(dataset):
        raise ValueError(f"{dataset.name}: the dataset is empty; nothing to embed")
    out = Path(out)
    rank, n_ranks = world()
    device = torch.device(device) if device is not None else model.device
    fingerprint = model.fingerprint()
    n = len(dataset)
    bounds = [(s, min(s + int(shard_size), n)) for s in range(0, n, int(shard_size))]
    index = {"format": _FORMAT, "model": model.name, "pretrained": model.pretrained, "fingerprint": fingerprint,
             "flip": bool(flip), "dataset": dataset.name, "n_images": n, "images": _list_key(dataset),
             "shard_size": int(shard_size), "dim": None, "rows": _ROWS,
             "shards": [{"file": _shard_name(i), "start": a, "stop": b} for i, (a, b) in enumerate(bounds)],
             "complete": False}
    old = _read_index(out) if not overwrite else None
    if old is not None and (old.get("fingerprint"), old.get("flip")) != (fingerprint, bool(flip)):
        raise ValueError(f"{out} holds embeddings of another model or setting (model {old.get('model')!r}, "
                         f"pretrained {old.get('pretrained')!r}, flip={old.get('flip')}; now {model.name!r}, "
                         f"{model.pretrained!r}, flip={bool(flip)}); choose another --out, or pass --overwrite "
                         "(overwrite=True) to replace them")
    if old is not None and old.get("images") != index["images"]:
        raise ValueError(f"{out} holds embeddings of another list of images ({old.get('n_images')} rows of "
                         f"{old.get('dataset')!r}; now {n} of {dataset.name!r}); choose another --out, or pass "
                         "--overwrite (overwrite=True) to replace them (shards that still match are kept)")
    if rank == 0:
        _prepare(out, dataset, index)
    barrier()
    paths = dataset.paths
    computed = reused = 0
    dim = 0
    mine = list(range(rank, len(bounds), n_ranks))
    for j, i in enumerate(mine):
        start, stop = bounds[i]
        path = out / _shard_name(i)
        key = _shard_key(fingerprint, flip, paths[start:stop], start)
        if path.is_file() and (done := _read_shard(path, start, stop, key=key)) is not None:
            reused, dim = reused + 1, done.shape[1]
            continue
        rows = _embed_rows(model, dataset.select(np.arange(start, stop)), batch_size=batch_size, flip=flip,
                           num_workers=num_workers, device=device, amp=amp, progress=progress,
                           desc=f"embed shard {i + 1}/{len(bounds)}" + (f" (rank {rank})" if n_ranks > 1 else ""))
        if rows is None:   # no readable image in this shard: all NaN, as embed() marks skipped images
            rows = torch.full((stop - start, _output_dim(model, device)), float("nan"))
        with atomic_path(path) as tmp:
            save_file({"embeddings": rows.contiguous(), "rows": torch.arange(start, stop)}, str(tmp),
                      metadata={"key": key, "fingerprint": fingerprint, "start": str(start), "stop": str(stop),
                                "rank": str(rank)})
        computed, dim = computed + 1, rows.shape[1]
    computed, reused = sum_over_ranks([computed, reused])   # also waits for every rank's shards
    if rank == 0:
        with safe_open(str(out / _shard_name(0)), "pt") as f:
            dim = int(f.get_slice("embeddings").get_shape()[1])
        atomic_write_text(out / _INDEX, json.dumps({**index, "dim": dim, "complete": True}, indent=1))
    barrier()   # the manifest says complete before any rank returns
    if not dim:
        dim = int(json.loads((out / _INDEX).read_text(encoding="utf-8"))["dim"])
    return ShardRun(out, n, dim, len(bounds), computed, reused)


@torch.no_grad()
def _output_dim(model: ClipModel, device: torch.device) -> int:
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, 3, *model.image_size, device=device, dtype=model.dtype)
        return int(model.encode_image(x).shape[-1])
    finally:
        model.train(was_training)


def load_shards(folder: str | os.PathLike) -> EmbeddedDataset:
    """The embeddings of a folder written by :func:`embed_to_folder` (``python -m cliptk embed``),
    in dataset order, with the dataset rows they belong to.

    The images need not be present (their paths are kept as written); every shard is checked:
    its rows, its model fingerprint against the manifest's, unit-length or NaN rows.

    Raises:
        FileNotFoundError: ``folder`` has no manifest (``embeddings.json``).
        ValueError: shards are missing, unfinished or unusable (the message lists them and says to
            rerun the embed command, which redoes only those), or the manifest is unreadable.

    Example:
        >>> e = load_shards("runs/emb")            # doctest: +SKIP
        >>> q, g = e.subset("query"), e.subset("gallery")   # doctest: +SKIP
    """
    out = Path(folder)
    index = _read_index(out)
    if index is None:
        raise FileNotFoundError(f"{out / _INDEX} not found: {out} is not an embeddings folder; write one with "
                                "`python -m cliptk embed --data ... --out DIR` (or cliptk.embed.embed_to_folder)")
    parts, bad = [], []
    for s in index["shards"]:
        path = out / s["file"]
        emb = _read_shard(path, s["start"], s["stop"], fingerprint=index["fingerprint"]) if path.is_file() else None
        if emb is None:
            bad.append(s["file"])
        else:
            parts.append(emb)
    if bad:
        raise ValueError(f"{out}: {len(bad)} of {len(index['shards'])} shard(s) missing or unfinished "
                         f"({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}); rerun the same embed command "
                         "(it redoes only these)")
    if len({p.shape[1] for p in parts}) != 1:
        raise ValueError(f"{out}: the shards hold embeddings of different widths {sorted({p.shape[1] for p in parts})}; "
                         "embed the folder afresh (--overwrite)")
    table = pd.read_csv(out / index.get("rows", _ROWS), dtype={"path": str, "caption": object, "split": str},
                        keep_default_na=False, na_values={"caption": [""]}, encoding="utf-8-sig",
                        encoding_errors="surrogateescape")
    if len(table) != index["n_images"]:
        raise ValueError(f"{out / _ROWS} has {len(table)} rows but the manifest {index['n_images']} images; "
                         "embed the folder afresh (--overwrite)")
    dataset = ReIdDataset(out, table, name=index.get("dataset") or out.name)
    return EmbeddedDataset(torch.cat(parts), dataset, index)
