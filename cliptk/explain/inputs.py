"""Images in, maps out: what the user passes and where the map is drawn.

An image to explain can be a PIL image, a preprocessed ``[3, H, W]`` tensor, or a row of a
:class:`~cliptk.ReIdDataset` (:data:`ImageLike`). :func:`_as_input` turns each into the model input
and the picture to draw on; :func:`_to_image` maps a saliency map computed at the model's input
resolution back onto the original image, undoing the model's letterbox / squash / crop resize, so
a map lines up with the pixels the user sees.

Example:
    >>> import numpy as np
    >>> _resize_map(np.eye(2, dtype=np.float32), (4, 4)).shape
    (4, 4)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..data import ReIdDataset

__all__ = ["ImageLike"]

#: An image to explain: a PIL image, a preprocessed ``[3, H, W]`` / ``[1, 3, H, W]`` tensor, or a
#: row index into ``dataset=``.
ImageLike = Union[Image.Image, torch.Tensor, int, np.integer]


@dataclass
class _Input:
    x: torch.Tensor          # [3, H, W] preprocessed, CPU fp32
    image: Image.Image       # what to draw the map on
    original: bool           # image is the user's image (map is mapped back to its size)
    label: str


def _denormalise(model: nn.Module, x: torch.Tensor) -> Image.Image:
    mean = torch.tensor(getattr(model, "mean", (0.0, 0.0, 0.0))).view(3, 1, 1)
    std = torch.tensor(getattr(model, "std", (1.0, 1.0, 1.0))).view(3, 1, 1)
    rgb = (x.float().cpu() * std + mean).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(rgb)


def _as_input(model: nn.Module, item: ImageLike, dataset, which: int, name: str) -> _Input:
    """The model input and display image of ``item``; ``dataset`` is a dataset or a pair of them
    (``which`` picks one) for index items; ``name`` is the argument's name in error messages."""
    size = tuple(getattr(model, "image_size", ()))
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        ds = dataset[which] if isinstance(dataset, (tuple, list)) else dataset
        if not isinstance(ds, ReIdDataset):
            raise TypeError(f"{name} is the index {item}: pass dataset= (a ReIdDataset, or a pair "
                            "(dataset_a, dataset_b)) to look it up, or pass a PIL image / tensor")
        if not 0 <= int(item) < len(ds):
            raise IndexError(f"{name}: index {item} is out of range for dataset {ds.name!r} with {len(ds)} rows")
        image = ds[int(item)]
        if image is None:
            raise ValueError(f"{name}: image {ds.paths[int(item)]} is unreadable (skipped by the dataset)")
        label = f"{ds.name}[{int(item)}] pid {int(ds.pids[int(item)])}"
        return _Input(model.preprocess(image), image, True, label)
    if isinstance(item, Image.Image):
        return _Input(model.preprocess(item.convert("RGB")), item.convert("RGB"), True, name)
    if isinstance(item, torch.Tensor):
        x = item.detach()
        x = x[0] if x.ndim == 4 and x.shape[0] == 1 else x
        if x.ndim != 3 or x.shape[0] != 3 or (size and tuple(x.shape[1:]) != size):
            raise ValueError(f"{name}: tensor of shape {tuple(item.shape)} is not a preprocessed image; expected "
                             f"[3, {size[0] if size else 'H'}, {size[1] if size else 'W'}] (use model.preprocess)")
        x = x.float().cpu()
        return _Input(x, _denormalise(model, x), False, name)
    raise TypeError(f"{name}: expected a PIL image, a preprocessed tensor or a dataset index, got {type(item).__name__}")


def _resize_map(m: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``m`` ``[h, w]`` bilinearly resized to ``hw`` (float32)."""
    if tuple(m.shape) == tuple(hw):
        return m.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    return F.interpolate(t, size=hw, mode="bilinear", align_corners=False)[0, 0].numpy()


def _to_image(model: nn.Module, m: np.ndarray, image: Image.Image) -> np.ndarray:
    """Undo the model's resize (letterbox / squash / crop) on a map at input resolution ``[H, W]``;
    returns a map of the original image's ``[h, w]`` (zero where a crop hid the image)."""
    H, W = m.shape
    w, h = image.size
    mode = getattr(model, "resize", "squash")
    if mode == "letterbox":
        ratio = max(h / H, w / W)
        rh, rw = max(1, round(h / ratio)), max(1, round(w / ratio))
        top, left = max(0, (H - rh) // 2), max(0, (W - rw) // 2)
        return _resize_map(m[top:top + rh, left:left + rw], (h, w))
    if mode == "crop":
        ratio = min(h / H, w / W)
        rh, rw = max(H, round(h / ratio)), max(W, round(w / ratio))
        top, left = int(round((rh - H) / 2.0)), int(round((rw - W) / 2.0))
        canvas = np.zeros((rh, rw), np.float32)
        canvas[top:top + H, left:left + W] = m
        return _resize_map(canvas, (h, w))
    return _resize_map(m, (h, w))
