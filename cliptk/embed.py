"""Batched image (and text) embedding with a progress bar and an on-disk cache.

``embed(model, dataset)`` returns an ``[N, D]`` float32 tensor of L2-normalised embeddings, one row
per image in dataset order. With ``cache_dir`` set, the result is stored as safetensors under a key
made of the model's weights and preprocessing (:meth:`ClipModel.fingerprint`), the flip option and
the file list (paths, sizes, modification times), so re-running a notebook cell is instant and any
change to the model or the files recomputes. A cache file that cannot be read or does not hold
what it should (one unit-length or skipped row per image) is recomputed with a warning naming it.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ._util import atomic_path
from .data import ReIdDataset
from .models import ClipModel

__all__ = ["embed", "embed_texts", "ImageFolderView"]


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


def _file_key(dataset: ReIdDataset) -> str:
    h = hashlib.blake2b(digest_size=12)
    for p in dataset.paths:
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
        emb = load_file(str(path))["embeddings"]
        if emb.dtype != torch.float32 or emb.ndim != 2 or emb.shape[0] != n:
            raise ValueError(f"holds a {emb.dtype} tensor of shape {tuple(emb.shape)}, expected [{n}, D] float32")
        skipped = torch.isnan(emb).all(dim=1)
        good = emb[~skipped]
        if not torch.isfinite(good).all() or not torch.allclose(good.norm(dim=1), torch.ones(len(good)), atol=1e-3):
            raise ValueError("holds rows that are neither unit-length embeddings nor skipped (all NaN)")
        return emb
    except Exception as err:   # a truncated or garbled file, a missing key, wrong content
        warnings.warn(f"embedding cache {path} is unusable ({type(err).__name__}: {err}); recomputing it",
                      UserWarning, stacklevel=3)
        return None


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
        key = hashlib.blake2b(f"{model.fingerprint()}|{flip}|{_file_key(images)}".encode(), digest_size=16).hexdigest()
        cache_file = Path(cache_dir) / f"emb-{key}.safetensors"
        if cache_file.is_file():
            cached = _read_cache(cache_file, len(images))
            if cached is not None:
                return cached
    amp = device.type == "cuda" if amp is None else amp
    loader = DataLoader(ImageFolderView(images, model.preprocess), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    out: torch.Tensor | None = None
    bar = tqdm(total=len(images), desc=f"embed {getattr(images, 'name', 'images')}", disable=not progress,
               unit="img", leave=False)
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
    if out is None:
        raise ValueError(f"embed: no readable image among {len(images)} inputs")
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            save_file({"embeddings": out.contiguous()}, str(tmp))
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
