"""Score-CAM explanations of image-to-image similarity, with a faithfulness check and plotly pictures.

Re-identification ranks gallery images by the cosine similarity of their embeddings to a query's
(CLIP-ReIdent, Habel et al., MMSports 2022). To see *what* makes two crops similar, this module
computes a saliency map of image A with respect to its similarity to image B's embedding:

* **Score-CAM** (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional
  Neural Networks", CVPR-W 2020, arXiv:1910.01279): each channel ``c`` of a target layer's
  activation ``A_c`` is upsampled to a mask, min-max normalised, multiplied into the image, and the
  masked image is scored; the map is ``relu(sum_c softmax(scores)_c * A_c)``. The score here is
  ``scale * cos(f(A * mask_c), f(B))`` (:class:`SimilarityTarget`).
* **Grad-CAM** (Selvaraju et al., ICCV 2017) of the same target, for comparison.
* **Deletion / insertion curves** (Petsiuk et al., "RISE", BMVC 2018): the similarity as the most
  salient pixels are removed / revealed first, against random orders (:func:`faithfulness`).

Two implementations of Score-CAM give the same map:

* the **library path** (:func:`similarity_cam`, default): ``pytorch_grad_cam.ScoreCAM`` /
  ``GradCAM`` with cliptk's :class:`SimilarityTarget`, one call per pair;
* the **fast path** (:func:`similarity_cams`, :func:`explain_topk`, or ``fast=True``): the masked
  images of A do not depend on B, so A's masked embeddings are computed once and each gallery image
  costs one ``[C, D] @ [D]`` product (k maps for the price of one). Channels whose activation is
  constant give an all-zero mask, so they share one forward pass of the blank image. On CUDA it runs
  under ``torch.inference_mode`` with bf16 autocast and fp32 dot products. ``top_channels=k`` is an
  approximation after Group-CAM (Zhang et al., arXiv:2103.13859, 2021): the channels are clustered
  into ``k`` groups of similar maps, one masked image is scored per group and each channel gets its
  group's score (``benchmarks/bench_scorecam.py`` measures its agreement and speed).

Traps of ``pytorch_grad_cam`` handled here: there is no similarity target in the library (only a
tutorial); ScoreCAM weights channels by a softmax of the raw target scores, so a plain cosine (range
~0.1 between masked images) gives almost uniform weights and a map that hardly depends on B — the
score is multiplied by the model's logit scale (``scale=``); the batch size is an undocumented
attribute ``cam.batch_size`` — it is ``batch_size=`` here; ViT activations are ``[B, 1 + h*w, C]``
tokens — reshaped to ``[B, C, h, w]`` with the grid computed from the model; the CAM object holds
forward hooks and its ``__exit__`` swallows ``IndexError`` — cliptk releases the hooks in a
``finally`` and lets errors through; ScoreCAM prints a tqdm bar per batch — silenced; it decides
whether a channel is constant after upsampling, where 1-ulp noise divided by its 1e-8 epsilon turns a
constant non-zero channel into a noise mask — the fast path decides on the activations; the model is
run in fp32, in eval mode, without parameter gradients, and its dtypes, mode, ``requires_grad``
flags and ``.grad`` tensors are restored afterwards.

Example:
    >>> import cliptk as ct
    >>> model = ct.load_model("cliptk-tiny")                              # doctest: +SKIP
    >>> cam = ct.similarity_cam(model, 0, 5, dataset=ds, symmetric=True)  # doctest: +SKIP
    >>> cam.figure().show()                                               # doctest: +SKIP
    >>> ct.faithfulness(model, cam)                                       # doctest: +SKIP
"""
from __future__ import annotations

import base64
import io
import math
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from types import SimpleNamespace
from typing import Iterator, Literal, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .data import ReIdDataset

__all__ = [
    "CamConfig",
    "SimilarityTarget",
    "SimilarityCam",
    "Faithfulness",
    "similarity_cam",
    "similarity_cams",
    "explain_topk",
    "faithfulness",
    "default_target_layer",
    "select_pairs",
    "plot_cam_pair",
    "plot_cam_grid",
    "plot_faithfulness",
]

#: An image to explain: a PIL image, a preprocessed ``[3, H, W]`` / ``[1, 3, H, W]`` tensor, or a
#: row index into ``dataset=``.
ImageLike = Union[Image.Image, torch.Tensor, int, np.integer]


# --------------------------------------------------------------------------------------------------
# configuration and target
# --------------------------------------------------------------------------------------------------
@dataclass
class CamConfig:
    """Options of an explanation (one config per job; every field is YAML-friendly).

    Attributes:
        method: ``"scorecam"`` or ``"gradcam"`` (Grad-CAM always uses the library).
        fast: :func:`similarity_cam` uses cliptk's exact fast Score-CAM instead of the library's
            (the batch functions :func:`similarity_cams` / :func:`explain_topk` always do).
        layer: dotted module name of the target layer, relative to the model
            (``"clip.visual.layer4.0"``) or to its image tower (``"layer4.0"``); ``None`` picks
            :func:`default_target_layer`.
        scale: multiplier of the cosine in the Score-CAM score (a softmax temperature); ``None``
            uses the model's ``logit_scale.exp()`` (capped at 100, as CLIP does).
        batch_size: masked images per forward pass; ``None``: 32 on CPU, 256 on CUDA.
        top_channels: fast path only, approximate Score-CAM: score this many masked images (an
            int), or this fraction of the channel count (a float in (0, 1]), instead of one per
            channel. The channels are clustered by the correlation of their activation maps into
            that many groups; each group's mask is the mean of its channels' masks, and every
            channel is weighted by its group's score (after Group-CAM, Zhang et al. 2021). 16
            groups of the fine-tuned tiny ViT's 128 channels keep Pearson r ~0.96 with the exact
            map at 5x fewer forward passes; on some towers single pairs agree far less (the bundled
            caption-pretrained tiny ViT: r < 0.6 for about one query in six; a tiny ViT from a
            newer fine-tuning recipe: r 0.88 / 0.78 on two of three benchmark pairs at 16 to 32
            groups), so check a few maps against the exact path. ``None`` (or at least the number of channels) = exact.
        amp: fast path: bf16 autocast for the masked forward passes; ``None`` = on for CUDA only.

    Raises:
        ValueError: an option is out of range (the message names it).
    """

    method: Literal["scorecam", "gradcam"] = "scorecam"
    fast: bool = False
    layer: str | None = None
    scale: float | None = None
    batch_size: int | None = None
    top_channels: int | float | None = None
    amp: bool | None = None

    def __post_init__(self) -> None:
        if self.method not in ("scorecam", "gradcam"):
            raise ValueError(f"CamConfig.method must be 'scorecam' or 'gradcam', got {self.method!r}")
        if self.method == "gradcam" and self.fast:
            raise ValueError("CamConfig: fast=True is a Score-CAM path; Grad-CAM needs fast=False")
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"CamConfig.scale must be > 0 (a softmax temperature), got {self.scale}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"CamConfig.batch_size must be >= 1, got {self.batch_size}")
        k = self.top_channels
        if k is not None and not ((isinstance(k, int) and k >= 1) or (isinstance(k, float) and 0 < k <= 1)):
            raise ValueError(f"CamConfig.top_channels must be an int >= 1 or a fraction in (0, 1], got {k!r}")

    @classmethod
    def from_options(cls, config: "CamConfig | dict | None" = None, **options) -> "CamConfig":
        """A config from another config or dict, with ``options`` overriding its fields.

        Raises:
            TypeError: an option is not a :class:`CamConfig` field (the message lists them).
        """
        base = config if isinstance(config, CamConfig) else cls(**(config or {}))
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown explanation option(s) {unknown}; CamConfig fields are {sorted(names)}")
        return replace(base, **options)


class SimilarityTarget:
    """A ``pytorch_grad_cam`` target: ``scale * cos(output, reference)``.

    ``output`` is the model's embedding of one image ``[D]`` (as ScoreCAM passes it) or of a batch
    ``[N, D]`` (returns ``[N]``). ``scale`` sharpens the softmax that ScoreCAM applies across
    channels; with ``scale=1`` the weights are nearly uniform and the map hardly depends on
    ``reference``.

    Example:
        >>> t = SimilarityTarget(torch.tensor([1.0, 0.0]), scale=10.0)
        >>> float(t(torch.tensor([1.0, 1.0])))   # 10 * cos(45 deg)  # doctest: +ELLIPSIS
        7.071...
    """

    def __init__(self, reference: torch.Tensor, scale: float = 1.0):
        self.reference = reference.detach().reshape(-1).float()
        self.scale = float(scale)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        ref = self.reference.to(output.device, output.dtype)
        return self.scale * F.cosine_similarity(output, ref.expand_as(output), dim=-1)

    def __repr__(self) -> str:
        return f"SimilarityTarget(dim={self.reference.numel()}, scale={self.scale:.3g})"


# --------------------------------------------------------------------------------------------------
# model plumbing: target layer, token grid, fp32 eval mode, hooks
# --------------------------------------------------------------------------------------------------
def _tower(model: nn.Module) -> nn.Module:
    return getattr(model, "visual", model)


def _tower_type(model: nn.Module) -> str:
    if hasattr(model, "tower_type"):
        return model.tower_type
    return {"VisionTransformer": "vit", "ModifiedResNet": "resnet"}.get(type(_tower(model)).__name__, "")


def default_target_layer(model: nn.Module) -> str:
    """The dotted name (relative to ``model``) of the layer Score-CAM explains by default.

    * ViT (open_clip ``VisionTransformer``): ``ln_1`` of the last residual block, i.e. the tokens
      entering the last attention. (The last block's *output* tokens reach the embedding only
      through the class token, so their Grad-CAM gradients are zero.)
    * ResNet (open_clip ``ModifiedResNet``): the last bottleneck of ``layer4``, before the
      attention pool.

    Raises:
        ValueError: another tower type; pass ``layer=`` (a dotted module name) instead.

    Example:
        >>> default_target_layer(ct.load_model("cliptk-tiny", None))   # doctest: +SKIP
        'clip.visual.transformer.resblocks.3.ln_1'
    """
    kind, tower = _tower_type(model), _tower(model)
    prefix = next((n for n, m in model.named_modules() if m is tower), "")
    prefix = f"{prefix}." if prefix else ""
    if kind == "vit":
        return f"{prefix}transformer.resblocks.{len(tower.transformer.resblocks) - 1}.ln_1"
    if kind == "resnet":
        return f"{prefix}layer4.{len(tower.layer4) - 1}"
    raise ValueError(f"no default Score-CAM layer for a {type(tower).__name__} tower; pass layer='<dotted name>' "
                     f"of a layer with spatial output, one of e.g. {[n for n, _ in model.named_modules()][-5:]}")


def _resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
    if isinstance(layer, nn.Module):
        name = next((n for n, m in model.named_modules() if m is layer), None)
        if name is None:
            raise ValueError("layer= is a module that is not part of the model; pass one of model.named_modules()")
        return name, layer
    name = default_target_layer(model) if layer is None else layer
    for root in (model, _tower(model)):
        try:
            module = root.get_submodule(name)
        except AttributeError:
            continue
        if not any(m is module for m in _tower(model).modules()):
            raise ValueError(f"layer {name!r} is not part of the image tower, so it never runs on images; "
                             f"pick one under {default_target_layer(model).rsplit('.', 3)[0]!r}")
        return next(n for n, m in model.named_modules() if m is module), module
    raise ValueError(f"layer {name!r} is not a submodule of {type(model).__name__} nor of its image tower; "
                     "list candidates with [n for n, _ in model.named_modules()]")


def _token_grid(model: nn.Module) -> tuple[int, int]:
    """``(rows, cols)`` of a ViT's patch grid: image size / patch size of the tower."""
    tower = _tower(model)
    if hasattr(tower, "grid_size"):
        return tuple(int(g) for g in tower.grid_size)
    size = getattr(model, "image_size", None) or tower.image_size
    patch = tower.patch_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return size[0] // patch[0], size[1] // patch[1]


class _ToGrid:
    """Reshape transform for the library: ``[B, C, h, w]`` passes; tokens ``[B, N, C]`` (batch-first,
    as open_clip's transformer runs; ``[N, B, C]`` when ``batch_first`` is False) drop their leading
    prefix tokens (class token, registers) and become ``[B, C, rows, cols]``."""

    def __init__(self, grid: tuple[int, int] | None, batch_first: bool = True):
        self.grid, self.batch_first = grid, batch_first

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return x
        if x.ndim != 3 or self.grid is None:
            raise ValueError(f"target layer output has shape {tuple(x.shape)}: expected [B, C, h, w] or ViT tokens "
                             "[B, 1 + h*w, C]; choose a layer with spatial output (layer=)")
        if not self.batch_first:
            x = x.transpose(0, 1)
        rows, cols = self.grid
        n_prefix = x.shape[1] - rows * cols
        if n_prefix < 0:
            raise ValueError(f"ViT layer has {x.shape[1]} tokens, fewer than its {rows}x{cols} patch grid")
        return x[:, n_prefix:].reshape(x.shape[0], rows, cols, x.shape[2]).permute(0, 3, 1, 2)


def _reshape_for(model: nn.Module) -> _ToGrid:
    tower = _tower(model)
    if _tower_type(model) == "vit" or hasattr(tower, "transformer"):
        return _ToGrid(_token_grid(model), getattr(getattr(tower, "transformer", None), "batch_first", True))
    return _ToGrid(None)


@contextmanager
def _cam_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in fp32, eval mode and without parameter gradients; restore every tensor's dtype,
    the train/eval mode, ``requires_grad`` and ``.grad`` afterwards (also on error)."""
    params = list(model.named_parameters())
    buffers = [(m, n, b) for m in model.modules() for n, b in m._buffers.items() if b is not None]
    dtypes = {id(p): p.dtype for _, p in params}
    buf_dtypes = [(m, n, b.dtype) for m, n, b in buffers]
    grads = {id(p): p.grad for _, p in params}
    flags = {id(p): p.requires_grad for _, p in params}
    training = model.training
    try:
        with torch.inference_mode(False):
            for _, p in params:
                p.grad = None
                p.requires_grad_(False)
            all_dtypes = [*dtypes.values(), *(dt for *_, dt in buf_dtypes)]
            if any(dt.is_floating_point and dt != torch.float32 for dt in all_dtypes):
                model.float()   # otherwise a no-op walk over every tensor (~1 ms of a 50 ms call on the tiny ViT)
        model.eval()
        yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for _, p in params:
                if p.dtype != dtypes[id(p)]:
                    p.data = p.data.to(dtypes[id(p)])
                p.requires_grad_(flags[id(p)])
                p.grad = grads[id(p)]
            for m, n, dt in buf_dtypes:
                if m._buffers[n] is not None and m._buffers[n].dtype != dt:
                    m._buffers[n] = m._buffers[n].to(dt)
        model.train(training)


@contextmanager
def _hook(layer: nn.Module, store: list) -> Iterator[None]:
    handle = layer.register_forward_hook(lambda _m, _i, out: store.append(out[0] if isinstance(out, tuple) else out))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _library_cam(cls, model: nn.Module, layer: nn.Module, reshape: _ToGrid) -> Iterator:
    """A ``pytorch_grad_cam`` CAM object whose hooks are released on exit; errors propagate (the
    library's own ``__exit__`` swallows ``IndexError``) and ScoreCAM's per-batch tqdm bars are off."""
    import pytorch_grad_cam.score_cam as score_cam_module

    quiet = SimpleNamespace(tqdm=lambda iterable, *args, **kwargs: iterable)
    original = score_cam_module.tqdm
    cam = cls(model, [layer], reshape_transform=reshape)
    score_cam_module.tqdm = quiet
    try:
        yield cam
    finally:
        score_cam_module.tqdm = original
        cam.activations_and_grads.release()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _scale(model: nn.Module, config: CamConfig) -> float:
    if config.scale is not None:
        return float(config.scale)
    logit_scale = getattr(model, "logit_scale", None)
    return float(min(logit_scale.detach().float().exp().item(), 100.0)) if logit_scale is not None else 100.0


def _batch_size(config: CamConfig, device: torch.device) -> int:
    return config.batch_size or (256 if device.type == "cuda" else 32)


def _embed(model: nn.Module, x: torch.Tensor, batch_size: int, amp: bool = False) -> torch.Tensor:
    """L2-normalised fp32 embeddings of ``x`` ``[N, 3, H, W]`` in batches (model already in CAM mode)."""
    out = []
    for i in range(0, x.shape[0], batch_size):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out.append(model(x[i:i + batch_size]).float())
    return F.normalize(torch.cat(out), dim=-1)


# --------------------------------------------------------------------------------------------------
# inputs: PIL / tensor / dataset index -> model input and display image
# --------------------------------------------------------------------------------------------------
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


def _minmax(m: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of ``[..., H, W]`` to [0, 1] (as pytorch_grad_cam does)."""
    flat = m.flatten(-2)
    lo, hi = flat.min(-1, keepdim=True).values, flat.max(-1, keepdim=True).values
    return ((flat - lo) / (hi - lo + 1e-7)).view_as(m)


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------
@dataclass(repr=False)
class SimilarityCam:
    """A saliency map of image A for its similarity to B (and optionally of B for A).

    Attributes:
        similarity: cosine similarity of A's and B's embeddings (fp32).
        map_a: ``[h, w]`` float32 in [0, 1], at image A's own resolution (the model's letterbox /
            resize undone for PIL and dataset inputs; the model input size for tensor inputs).
        map_b: the same for B w.r.t. A (``symmetric=True``), else ``None``.
        input_map_a, input_map_b: the maps at the model's input resolution ``[H, W]``.
        input_a, input_b: the preprocessed ``[3, H, W]`` inputs (CPU fp32), for :func:`faithfulness`.
        image_a, image_b: the images the maps belong to (PIL), for pictures.
        label_a, label_b: names for titles (``"players[3] pid 12"`` for dataset rows).
        method: ``"scorecam"`` (library), ``"scorecam-fast"``, ``"scorecam-approx"`` or ``"gradcam"``.
        layer: dotted name of the target layer.
        scale: the softmax temperature used in the Score-CAM score.
        channels: channels (exact fast path) or channel groups (approximate) that were scored;
            ``None`` for the library.
        grid: ``(rows, cols)`` of the target layer's activation map (the map's true resolution).
    """

    similarity: float
    map_a: np.ndarray
    input_map_a: np.ndarray
    input_a: torch.Tensor
    input_b: torch.Tensor
    image_a: Image.Image
    image_b: Image.Image
    method: str
    layer: str
    scale: float
    label_a: str = "A"
    label_b: str = "B"
    map_b: np.ndarray | None = None
    input_map_b: np.ndarray | None = None
    channels: int | None = None
    grid: tuple[int, int] | None = None

    def figure(self, **kwargs):
        """The pair as a plotly figure (:func:`plot_cam_pair`)."""
        return plot_cam_pair(self, **kwargs)

    def __repr__(self) -> str:
        both = "A and B" if self.map_b is not None else "A"
        return (f"SimilarityCam(similarity={self.similarity:.4f}, method={self.method!r}, maps of {both}, "
                f"A={self.label_a!r} {self.map_a.shape[1]}x{self.map_a.shape[0]}, B={self.label_b!r}, "
                f"layer={self.layer!r})")


# --------------------------------------------------------------------------------------------------
# the library path
# --------------------------------------------------------------------------------------------------
def _library_map(model: nn.Module, x: torch.Tensor, reference: torch.Tensor, name: str, layer: nn.Module,
                 config: CamConfig, scale: float) -> tuple[np.ndarray, tuple[int, int]]:
    """One library CAM ``[H, W]`` of ``x`` ``[3, H, W]`` for ``SimilarityTarget(reference)``, and the
    target layer's grid."""
    from pytorch_grad_cam import GradCAM, ScoreCAM

    cls = ScoreCAM if config.method == "scorecam" else GradCAM
    device = _device(model)
    with _library_cam(cls, model, layer, _reshape_for(model)) as cam:
        cam.batch_size = _batch_size(config, device)   # the library's undocumented batch-size attribute
        cam.compute_input_gradient = config.method == "gradcam"   # gradients even through frozen layers
        maps = cam(x[None].to(device), targets=[SimilarityTarget(reference, scale)])
        grid = tuple(cam.activations_and_grads.activations[0].shape[-2:])
    if maps is None:
        raise RuntimeError(f"pytorch_grad_cam returned no map for layer {name!r}")
    return np.asarray(maps[0], dtype=np.float32), grid


# --------------------------------------------------------------------------------------------------
# the fast path
# --------------------------------------------------------------------------------------------------
def _n_channels(top: int | float | None, available: int) -> int:
    if top is None:
        return available
    k = top if isinstance(top, int) else math.ceil(top * available)
    return max(1, min(int(k), available))


def _embed_with_activations(model: nn.Module, x: torch.Tensor, layer: nn.Module, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings ``[N, D]`` and target-layer activations ``[N, C, h, w]`` (fp32) of ``x`` in one pass."""
    store: list[torch.Tensor] = []
    with torch.inference_mode(), _hook(layer, store):
        emb = _embed(model, x, bs)
    grid = _reshape_for(model)
    return emb, torch.cat([grid(a.float()) for a in store])


def _channel_groups(acts: torch.Tensor, k: int) -> torch.Tensor:
    """Labels ``[C]`` in ``0 .. g-1`` (``g <= k`` groups) of the channel maps ``acts`` ``[C, h, w]``:
    Ward agglomerative clustering of the maps after centring and L2-normalising each one, i.e. by
    correlation, so channels that light up the same places group together whatever their scale
    or offset (both vanish in the min-max normalised mask). Deterministic (no random init)."""
    from scipy.cluster.hierarchy import fcluster, linkage

    z = acts.flatten(1).double()
    z = F.normalize(z - z.mean(1, keepdim=True), dim=1).cpu().numpy()
    labels = fcluster(linkage(z, "ward"), k, criterion="maxclust")
    return torch.from_numpy(np.unique(labels, return_inverse=True)[1].reshape(-1)).to(acts.device)


def _fast_maps(model: nn.Module, x: torch.Tensor, acts: torch.Tensor, references: torch.Tensor, config: CamConfig,
               scale: float) -> tuple[np.ndarray, int]:
    """Score-CAM maps ``[k, H, W]`` of ``x`` ``[3, H, W]`` (target-layer activations ``acts``
    ``[C, h, w]``) for each row of ``references`` ``[k, D]``, from one set of masked forward passes;
    also returns the number of channels (exact) or channel groups (approximate) scored.

    Same masks, softmax and normalisation as ``pytorch_grad_cam.ScoreCAM``: mask_c = min-max
    normalised bilinear (align_corners=True) upsampling of A_c; weights = softmax_c(scale * cos);
    map = minmax(resize(minmax(relu(sum_c w_c A_c)))). A channel with constant activation carries no
    spatial information: its mask is all zero (the library's intent: ``(A - min) / (0 + eps)``), so
    all of them share one forward pass of the blank image. (The library decides after upsampling,
    where a constant non-zero channel picks up 1-ulp noise that its normalisation blows up into a
    noise mask; cliptk decides on the activations.)

    Approximate mode (``config.top_channels`` below the number of varying channels), after Group-CAM
    (Zhang et al., "Group-CAM: Group Score-Weighted Visual Explanations for Deep Convolutional
    Networks", arXiv:2103.13859, 2021): the varying channels are clustered into groups
    (:func:`_channel_groups`), one masked image per group is scored, its mask being the mean of its
    channels' masks, and every channel gets its group's score; the map still sums all channels with
    Score-CAM's softmax weights. Why grouping and not dropping: the scores depend on B (on the
    fine-tuned tiny ViT two gallery images share a fifth of their top-10 channels), so no
    B-independent choice of channels finds the few that carry the weight, and giving the unscored
    ones the mean score flattens the map. Grouping by correlation keeps every channel's mask near a
    scored one. Measured on the fine-tuned tiny ViT (128 channels, 6 queries x 10 gallery images,
    median Pearson r with the exact map): 16 correlation groups 0.96 (worst query 0.93); 16 groups
    of consecutive channels, as Group-CAM forms them, 0.77; the 16 channels of highest activation
    variance with the mean score for the rest (cliptk's first approximation) 0.89 (worst 0.83). On a
    model from a newer fine-tuning recipe the groups explain almost none of the score variance of
    some pairs (even the exact scores averaged per group give r 0.84 on the benchmark's library
    pairs at 16 groups); no B-independent grouping variant tried (scaled, uncentred or min-max
    maps, average linkage, largest channels as singletons) reached r 0.9 there at 16-20 groups."""
    device = x.device
    amp = device.type == "cuda" if config.amp is None else bool(config.amp)
    bs = _batch_size(config, device)
    H, W = x.shape[-2:]
    C = acts.shape[0]
    with torch.inference_mode():
        flat = acts.flatten(1)
        constant = flat.min(1).values == flat.max(1).values   # not on the upsampled maps: they add 1-ulp noise
        varying = torch.nonzero(~constant).flatten()
        masks = F.interpolate(acts[None, varying], size=(H, W), mode="bilinear", align_corners=True)[0].flatten(1)
        lo, hi = masks.min(1, keepdim=True).values, masks.max(1, keepdim=True).values
        masks = masks.sub_(lo).div_(hi - lo + 1e-8)                                   # [V, H*W]
        n_scored = _n_channels(config.top_channels, C)
        groups = torch.arange(len(varying), device=device)                          # channel -> scored mask
        if n_scored < len(varying):
            groups = _channel_groups(acts[varying], n_scored)
            n_scored = int(groups.max()) + 1
            counts = torch.bincount(groups, minlength=n_scored).to(masks.dtype)
            masks = torch.zeros(n_scored, H * W, device=device).index_add_(0, groups, masks) / counts[:, None]
        else:
            n_scored = C
        refs = F.normalize(references.float(), dim=-1).T
        scores = torch.empty(C, refs.shape[1], device=device)
        if len(masks):
            embs = torch.cat([_embed(model, x[None] * masks[i:i + bs].view(-1, 1, H, W), bs, amp)
                              for i in range(0, len(masks), bs)])
            scores[varying] = (scale * embs @ refs)[groups]                           # fp32
        if constant.any():
            scores[constant] = scale * _embed(model, torch.zeros_like(x)[None], 1, amp) @ refs
        weights = scores.softmax(dim=0)
        cams = torch.einsum("ck,chw->khw", weights, acts).clamp_min(0)
        cams = F.interpolate(_minmax(cams)[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        return _minmax(cams).cpu().numpy().astype(np.float32), n_scored


# --------------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------------
def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module) or not hasattr(model, "preprocess"):
        raise TypeError(f"expected a cliptk ClipModel (from ct.load_model), got {type(model).__name__}")


def similarity_cam(model: nn.Module, image_a: ImageLike, image_b: ImageLike, *,
                   dataset: ReIdDataset | tuple[ReIdDataset, ReIdDataset] | None = None, symmetric: bool = False,
                   config: CamConfig | dict | None = None, **options) -> SimilarityCam:
    """Saliency map of image A for its similarity to image B's embedding (and of B for A).

    Args:
        model: a :class:`cliptk.ClipModel` (ViT or ModifiedResNet tower; any dtype, any device).
        image_a, image_b: PIL images, preprocessed ``[3, H, W]`` tensors, or row indices into
            ``dataset`` (one dataset, or a pair ``(dataset_a, dataset_b)`` e.g. query and gallery).
        symmetric: also compute B's map w.r.t. A's embedding.
        config, options: a :class:`CamConfig` and/or its fields as keywords: ``method``
            (``"scorecam"`` / ``"gradcam"``), ``fast``, ``layer``, ``scale``, ``batch_size``,
            ``top_channels`` (needs ``fast=True``), ``amp``.

    Returns:
        :class:`SimilarityCam`: maps in [0, 1] at each image's resolution, the cosine similarity.

    Raises:
        TypeError: unknown option, or an index without ``dataset``. ValueError: a bad layer / option /
        tensor shape (the message names it). IndexError: an index outside the dataset.

    Example:
        >>> cam = similarity_cam(model, query_img, gallery_img, symmetric=True)   # doctest: +SKIP
        >>> cam.similarity, cam.map_a.shape                                       # doctest: +SKIP
        (0.83, (256, 128))
    """
    _check_model(model)
    cfg = CamConfig.from_options(config, **options)
    if cfg.fast:
        return similarity_cams(model, image_a, [image_b], dataset=dataset, symmetric=symmetric, config=cfg)[0]
    if cfg.top_channels is not None:
        raise ValueError("top_channels (approximate Score-CAM) needs the fast path: pass fast=True")
    a = _as_input(model, image_a, dataset, 0, "image_a")
    b = _as_input(model, image_b, dataset, 1, "image_b")
    name, layer = _resolve_layer(model, cfg.layer)
    with _cam_mode(model):
        scale = _scale(model, cfg)
        device = _device(model)
        with torch.no_grad():
            ea, eb = _embed(model, torch.stack([a.x, b.x]).to(device), 2)
        map_a, grid = _library_map(model, a.x, eb, name, layer, cfg, scale)
        map_b = _library_map(model, b.x, ea, name, layer, cfg, scale)[0] if symmetric else None
    return _result(model, a, b, float(ea @ eb), map_a, map_b, cfg.method, name, scale, None, grid)


def _result(model, a: _Input, b: _Input, sim: float, map_a: np.ndarray, map_b: np.ndarray | None, method: str,
            layer: str, scale: float, channels: int | None, grid: tuple[int, int]) -> SimilarityCam:
    def back(inp: _Input, m: np.ndarray) -> np.ndarray:
        return np.clip(_to_image(model, m, inp.image), 0, 1) if inp.original else m

    return SimilarityCam(similarity=sim, map_a=back(a, map_a), input_map_a=map_a, input_a=a.x, input_b=b.x,
                         image_a=a.image, image_b=b.image, method=method, layer=layer, scale=scale,
                         label_a=a.label, label_b=b.label, map_b=None if map_b is None else back(b, map_b),
                         input_map_b=map_b, channels=channels, grid=grid)


def similarity_cams(model: nn.Module, image_a: ImageLike, images_b: Sequence[ImageLike], *,
                    dataset: ReIdDataset | tuple[ReIdDataset, ReIdDataset] | None = None, symmetric: bool = False,
                    config: CamConfig | dict | None = None, **options) -> list[SimilarityCam]:
    """Score-CAM maps of one image A for its similarity to each of ``images_b`` — the fast path.

    A's masked images do not depend on B: they are embedded once (one forward pass per non-constant
    channel of the target layer, batched), each B is embedded once, and each map costs one
    ``[C, D] @ [D]`` product — k maps for about the price of one. The result equals the library's
    ScoreCAM on the same model, layer and images (same masks, softmax and normalisation; tested at
    Pearson >= 0.99). With ``top_channels=k`` the channels are clustered into ``k`` groups and one
    masked image is scored per group (approximate, see :class:`CamConfig`; ``method`` then reads
    ``"scorecam-approx"`` and ``channels`` counts the groups).

    With ``symmetric=True`` each B's own map w.r.t. A is computed too (one fast pass per B).

    Args:
        model, image_a, dataset, config, options: as :func:`similarity_cam` (``method`` must be
            ``"scorecam"``; ``fast`` is implied).
        images_b: the images to compare with (PIL, tensors or dataset indices).

    Returns:
        one :class:`SimilarityCam` per image of ``images_b``, in order.

    Raises:
        ValueError: ``method="gradcam"`` (use :func:`similarity_cam`), or as :func:`similarity_cam`.

    Example:
        >>> cams = similarity_cams(model, 0, [3, 8, 11], dataset=(query, gallery))   # doctest: +SKIP
    """
    _check_model(model)
    cfg = CamConfig.from_options(config, **options)
    if cfg.method != "scorecam":
        raise ValueError(f"similarity_cams computes Score-CAM only; for {cfg.method!r} call similarity_cam per pair")
    images_b = list(images_b)
    if not images_b:
        return []
    a = _as_input(model, image_a, dataset, 0, "image_a")
    bs = [_as_input(model, img, dataset, 1, f"images_b[{i}]") for i, img in enumerate(images_b)]
    name, layer = _resolve_layer(model, cfg.layer)
    method = "scorecam-fast" if cfg.top_channels is None else "scorecam-approx"
    with _cam_mode(model):
        scale = _scale(model, cfg)
        device = _device(model)
        xs = torch.stack([a.x] + [b.x for b in bs]).to(device)
        emb, acts = _embed_with_activations(model, xs, layer, _batch_size(cfg, device))
        maps_a, n_channels = _fast_maps(model, xs[0], acts[0], emb[1:], cfg, scale)
        maps_b = ([_fast_maps(model, xs[i + 1], acts[i + 1], emb[:1], cfg, scale)[0][0] for i in range(len(bs))]
                  if symmetric else None)
    sims = (emb[1:] @ emb[0]).cpu().tolist()
    grid = tuple(acts.shape[-2:])
    return [_result(model, a, b, sims[i], maps_a[i], None if maps_b is None else maps_b[i], method, name, scale,
                    n_channels, grid) for i, b in enumerate(bs)]


def explain_topk(model: nn.Module, query: ImageLike, gallery: ReIdDataset | Sequence[ImageLike], k: int = 5, *,
                 dataset: ReIdDataset | None = None, gallery_embeddings: torch.Tensor | None = None,
                 symmetric: bool = False, config: CamConfig | dict | None = None, **options) -> list[SimilarityCam]:
    """Explain a query against its ``k`` most similar gallery images (fast Score-CAM, one pass over A).

    Args:
        query: PIL image, tensor, or row index into ``dataset``.
        gallery: a :class:`ReIdDataset` (e.g. ``ds.subset("gallery")``) or a list of images/tensors.
        k: number of top matches to explain.
        dataset: where ``query`` indices point (defaults to ``gallery`` when that is a dataset).
        gallery_embeddings: precomputed ``[N, D]`` L2-normalised gallery embeddings (e.g. from
            :func:`cliptk.embed`); computed here otherwise.
        symmetric, config, options: as :func:`similarity_cams`.

    Returns:
        ``k`` :class:`SimilarityCam` results, most similar first; labels name the gallery rows.

    Raises:
        ValueError: ``k < 1`` or ``gallery_embeddings`` of the wrong length.

    Example:
        >>> cams = explain_topk(model, 0, ds.subset("gallery"), k=5, dataset=ds.subset("query"))  # doctest: +SKIP
        >>> plot_cam_grid(cams)                                                                     # doctest: +SKIP
    """
    if k < 1:
        raise ValueError(f"explain_topk: k must be >= 1, got {k}")
    query_ds = dataset if dataset is not None else (gallery if isinstance(gallery, ReIdDataset) else None)
    q = _as_input(model, query, query_ds, 0, "query")
    if gallery_embeddings is None:
        from .embed import embed

        if isinstance(gallery, ReIdDataset):
            gallery_embeddings = embed(model, gallery, progress=False)
        else:
            xs = torch.stack([_as_input(model, g, None, 1, f"gallery[{i}]").x for i, g in enumerate(gallery)])
            with _cam_mode(model), torch.inference_mode():
                gallery_embeddings = _embed(model, xs.to(_device(model)), 64).cpu()
    if len(gallery_embeddings) != len(gallery):
        raise ValueError(f"explain_topk: gallery_embeddings has {len(gallery_embeddings)} rows for a gallery of "
                         f"{len(gallery)} images")
    with _cam_mode(model), torch.inference_mode():
        eq = _embed(model, q.x[None].to(_device(model)), 1).cpu()[0]
    order = torch.argsort(F.normalize(gallery_embeddings.float(), dim=-1) @ eq, descending=True)[:k].tolist()
    if isinstance(gallery, ReIdDataset):
        return similarity_cams(model, query, order, dataset=(query_ds, gallery), symmetric=symmetric,
                               config=config, **options)
    cams = similarity_cams(model, query, [gallery[i] for i in order], dataset=(query_ds, None), symmetric=symmetric,
                           config=config, **options)
    for cam, i in zip(cams, order):
        if not isinstance(gallery[i], (int, np.integer)):
            cam.label_b = f"gallery[{i}]"
    return cams


# --------------------------------------------------------------------------------------------------
# faithfulness: deletion / insertion
# --------------------------------------------------------------------------------------------------
@dataclass(repr=False)
class Faithfulness:
    """Deletion and insertion curves of a saliency map (Petsiuk et al., RISE, BMVC 2018).

    ``deletion[i]``: cosine similarity to B after the ``fractions[i]`` most salient pixels of A are
    replaced by the mean colour (a faithful map makes it fall fast: low AUC). ``insertion[i]``: the
    similarity when those pixels are revealed on a blurred copy of A (rises fast: high AUC). The
    ``random_*`` curves use random orders (random smooth maps by default; mean over ``n_random``
    orders, see :func:`faithfulness`); a map is meaningful
    when ``deletion_gain`` and ``insertion_gain`` (AUC differences to random) are clearly positive.
    AUCs are trapezoid areas over fractions in [0, 1], in similarity units.
    """

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    random_deletion: np.ndarray
    random_insertion: np.ndarray
    similarity: float
    label: str = ""

    @staticmethod
    def _auc(curve: np.ndarray, x: np.ndarray) -> float:
        return float(np.trapezoid(curve, x))

    @property
    def deletion_auc(self) -> float:
        return self._auc(self.deletion, self.fractions)

    @property
    def insertion_auc(self) -> float:
        return self._auc(self.insertion, self.fractions)

    @property
    def random_deletion_auc(self) -> float:
        return self._auc(self.random_deletion, self.fractions)

    @property
    def random_insertion_auc(self) -> float:
        return self._auc(self.random_insertion, self.fractions)

    @property
    def deletion_gain(self) -> float:
        """Random deletion AUC minus the map's (> 0: the map finds what matters)."""
        return self.random_deletion_auc - self.deletion_auc

    @property
    def insertion_gain(self) -> float:
        """The map's insertion AUC minus random's (> 0: the map finds what matters)."""
        return self.insertion_auc - self.random_insertion_auc

    def to_dict(self) -> dict[str, float]:
        return {"deletion_auc": self.deletion_auc, "random_deletion_auc": self.random_deletion_auc,
                "insertion_auc": self.insertion_auc, "random_insertion_auc": self.random_insertion_auc,
                "deletion_gain": self.deletion_gain, "insertion_gain": self.insertion_gain}

    def figure(self, **kwargs):
        """The curves as a plotly figure (:func:`plot_faithfulness`)."""
        return plot_faithfulness(self, **kwargs)

    def __repr__(self) -> str:
        d = self.to_dict()
        return (f"Faithfulness({self.label or 'map'}: deletion AUC {d['deletion_auc']:.4f} vs random "
                f"{d['random_deletion_auc']:.4f} (gain {d['deletion_gain']:+.4f}), insertion AUC "
                f"{d['insertion_auc']:.4f} vs random {d['random_insertion_auc']:.4f} (gain {d['insertion_gain']:+.4f}))")


def _blur(x: torch.Tensor) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    sigma = max(x.shape[-2:]) / 20
    k = 2 * math.ceil(2 * sigma) + 1
    k = min(k, 2 * (min(x.shape[-2:]) // 2) - 1)
    return gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma]) if k >= 3 else x


def _curves(model: nn.Module, x: torch.Tensor, order: torch.Tensor, reference: torch.Tensor, counts: torch.Tensor,
            bs: int) -> tuple[np.ndarray, np.ndarray]:
    H, W = x.shape[-2:]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    reveal = (rank.view(1, H, W) < counts.view(-1, 1, 1))[:, None]                    # [S, 1, H, W]
    deleted = torch.where(reveal, torch.zeros_like(x), x)
    inserted = torch.where(reveal, x, _blur(x[None])[0])
    sims = _embed(model, torch.cat([deleted, inserted]), bs) @ reference
    return sims[:len(counts)].cpu().numpy(), sims[len(counts):].cpu().numpy()


def faithfulness(model: nn.Module, cam: SimilarityCam, *, which: Literal["a", "b"] = "a", steps: int = 20,
                 n_random: int = 3, random_order: Literal["smooth", "pixel"] = "smooth", seed: int = 0,
                 batch_size: int | None = None, saliency: np.ndarray | None = None) -> Faithfulness:
    """Deletion / insertion curves of ``cam``'s map of A (or B) against random orders.

    Pixels are ranked by the map at the model's input resolution (``cam.input_map_a``); at step
    ``i`` the top ``fractions[i]`` of them are deleted (set to the mean colour, 0 after
    normalisation) or inserted into a Gaussian-blurred copy, and the cosine similarity to the other
    image's embedding is recorded. Costs ``2 * (steps + 1) * (1 + n_random)`` forward passes.

    The baseline ranks pixels by random maps. ``"smooth"`` (default) draws uniform noise on the
    target layer's grid (``cam.grid``) and upsamples it like a CAM: a map as smooth as the real one
    but without information, so the comparison isolates *where* the map points. ``"pixel"`` uses
    random pixel permutations; scattering deletions over the whole image hurts a network more than
    deleting any compact region, which flatters every smooth map on the deletion curve.

    Args:
        cam: a result of :func:`similarity_cam` / :func:`similarity_cams`.
        which: ``"a"`` (map of A w.r.t. B) or ``"b"`` (needs ``symmetric=True``).
        steps: number of fraction steps (``fractions = linspace(0, 1, steps + 1)``).
        n_random: random orders averaged for the baseline curves.
        random_order: ``"smooth"`` or ``"pixel"`` (see above).
        saliency: another ``[H, W]`` map to evaluate on the same pair (e.g. a Grad-CAM map).

    Returns:
        :class:`Faithfulness` (curves, AUCs and gains over random).

    Raises:
        ValueError: ``which="b"`` without a map of B, a map of the wrong shape, ``steps < 1``.

    Example:
        >>> f = faithfulness(model, similarity_cam(model, qa, gb))   # doctest: +SKIP
        >>> f.deletion_auc < f.random_deletion_auc                    # doctest: +SKIP
    """
    if steps < 1 or n_random < 1:
        raise ValueError(f"faithfulness: steps and n_random must be >= 1, got {steps}, {n_random}")
    if which not in ("a", "b"):
        raise ValueError(f"faithfulness: which must be 'a' or 'b', got {which!r}")
    if random_order not in ("smooth", "pixel"):
        raise ValueError(f"faithfulness: random_order must be 'smooth' or 'pixel', got {random_order!r}")
    x, other = (cam.input_a, cam.input_b) if which == "a" else (cam.input_b, cam.input_a)
    m = saliency if saliency is not None else (cam.input_map_a if which == "a" else cam.input_map_b)
    if m is None:
        raise ValueError("faithfulness(which='b') needs the map of B: compute the cam with symmetric=True")
    if tuple(np.shape(m)) != tuple(x.shape[-2:]):
        raise ValueError(f"faithfulness: saliency has shape {np.shape(m)}, expected the input size {tuple(x.shape[-2:])}")
    fractions = np.linspace(0.0, 1.0, steps + 1)
    with _cam_mode(model), torch.inference_mode():
        device = _device(model)
        bs = batch_size or (256 if device.type == "cuda" else 32)
        x, other = x.to(device), other.to(device)
        reference = _embed(model, other[None], 1)[0]
        similarity = float(_embed(model, x[None], 1)[0] @ reference)
        n = x.shape[-2] * x.shape[-1]
        counts = torch.from_numpy(np.round(fractions * n).astype(np.int64)).to(device)
        sal = torch.as_tensor(np.asarray(m, dtype=np.float32), device=device).flatten()
        deletion, insertion = _curves(model, x, torch.argsort(sal, descending=True, stable=True), reference, counts, bs)
        gen = torch.Generator().manual_seed(seed)
        H, W = x.shape[-2:]
        grid = cam.grid or (max(1, H // 8), max(1, W // 8))
        rand = []
        for _ in range(n_random):
            if random_order == "pixel":
                order = torch.randperm(n, generator=gen)
            else:
                noise = torch.rand(1, 1, *grid, generator=gen)
                smooth = F.interpolate(noise, size=(H, W), mode="bilinear", align_corners=False).flatten()
                order = torch.argsort(smooth, descending=True, stable=True)
            rand.append(_curves(model, x, order.to(device), reference, counts, bs))
    label = (cam.label_a if which == "a" else cam.label_b) + ("" if saliency is not None else f" ({cam.method})")
    return Faithfulness(fractions, deletion, insertion, np.mean([r[0] for r in rand], axis=0),
                        np.mean([r[1] for r in rand], axis=0), similarity, label)


# --------------------------------------------------------------------------------------------------
# picking pairs from an evaluation
# --------------------------------------------------------------------------------------------------
def select_pairs(query_emb: torch.Tensor | np.ndarray, gallery_emb: torch.Tensor | np.ndarray,
                 query_pids: Sequence[int] | np.ndarray, gallery_pids: Sequence[int] | np.ndarray, *,
                 kind: Literal["top_matches", "hardest_wrong", "hardest_right"] = "top_matches",
                 n: int = 8) -> list[tuple[int, int, float]]:
    """Pairs worth explaining, one per query: ``(query_row, gallery_row, cosine similarity)``.

    * ``"top_matches"``: each query's most similar gallery image (right or wrong), most similar first;
    * ``"hardest_wrong"``: each query's most similar gallery image of *another* identity, highest first
      (the confusions that cost rank-1);
    * ``"hardest_right"``: each query's least similar image of its *own* identity, lowest first.

    Rows index the query / gallery embeddings (e.g. ``ds.subset("query")`` rows).

    Raises:
        ValueError: unknown ``kind`` or mismatched lengths.

    Example:
        >>> pairs = select_pairs(qf, gf, q.pids, g.pids, kind="hardest_wrong", n=4)   # doctest: +SKIP
        >>> cams = [similarity_cam(model, i, j, dataset=(q, g)) for i, j, _ in pairs]  # doctest: +SKIP
    """
    q = F.normalize(torch.as_tensor(np.asarray(query_emb), dtype=torch.float32), dim=-1)
    g = F.normalize(torch.as_tensor(np.asarray(gallery_emb), dtype=torch.float32), dim=-1)
    qp, gp = np.asarray(query_pids), np.asarray(gallery_pids)
    if len(qp) != len(q) or len(gp) != len(g):
        raise ValueError(f"select_pairs: {len(q)} query embeddings with {len(qp)} pids, {len(g)} gallery "
                         f"embeddings with {len(gp)} pids")
    sim = (q @ g.T).numpy()
    same = qp[:, None] == gp[None, :]
    if kind == "top_matches":
        masked, pick, descending = sim, np.argmax, True
    elif kind == "hardest_wrong":
        masked, pick, descending = np.where(same, -np.inf, sim), np.argmax, True
    elif kind == "hardest_right":
        masked, pick, descending = np.where(same, sim, np.inf), np.argmin, False
    else:
        raise ValueError(f"select_pairs: kind must be 'top_matches', 'hardest_wrong' or 'hardest_right', got {kind!r}")
    cols = pick(masked, axis=1)
    vals = masked[np.arange(len(q)), cols]
    rows = [i for i in np.argsort(-vals if descending else vals, kind="stable") if np.isfinite(vals[i])]
    return [(int(i), int(cols[i]), float(sim[i, cols[i]])) for i in rows[:n]]


# --------------------------------------------------------------------------------------------------
# pictures (plotly)
# --------------------------------------------------------------------------------------------------
def _data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _add_overlay(fig, image: Image.Image, m: np.ndarray | None, row: int, col: int, *, opacity: float,
                 colorscale: str, max_side: int, showscale: bool, heat_side: int = 64) -> None:
    """The image (a JPEG data URI) with the map as a semi-transparent heatmap on the same pixel grid.
    The map is smooth (a CAM of a coarse layer), so it is stored at most ``heat_side`` cells on its
    longer side, in whole percent (uint8), to keep figures and HTML reports small."""
    import plotly.graph_objects as go

    w, h = image.size
    f = min(1.0, max_side / max(w, h))
    shown = (max(1, round(w * f)), max(1, round(h * f)))
    base = image.resize(shown, Image.BILINEAR) if shown != (w, h) else image
    fig.add_trace(go.Image(source=_data_uri(base), x0=0, y0=0, dx=1, dy=1, hoverinfo="skip"), row=row, col=col)
    if m is None:
        return
    g = min(1.0, heat_side / max(shown))
    cells = (max(1, round(shown[1] * g)), max(1, round(shown[0] * g)))
    z = np.round(100 * np.clip(_resize_map(m, cells), 0, 1)).astype(np.uint8)
    dy, dx = shown[1] / cells[0], shown[0] / cells[1]
    fig.add_trace(go.Heatmap(z=z, x0=(dx - 1) / 2, dx=dx, y0=(dy - 1) / 2, dy=dy, zmin=0, zmax=100,
                             colorscale=colorscale, opacity=opacity, showscale=showscale,
                             colorbar=dict(title="saliency %", len=0.6),
                             hovertemplate="saliency %{z}%<extra></extra>"), row=row, col=col)


def plot_cam_grid(cams: Sequence[SimilarityCam], *, titles: Sequence[str] | None = None, pairs_per_row: int = 3,
                  opacity: float = 0.45, colorscale: str = "Turbo", max_side: int = 192, title: str | None = None,
                  height_per_row: int = 300):
    """A grid of explained pairs: for each pair, A with its map and B (with its map if symmetric).

    Args:
        cams: :class:`SimilarityCam` results (e.g. :func:`explain_topk` or pairs from :func:`select_pairs`).
        titles: one caption per pair (default: labels and the similarity).
        pairs_per_row: pairs side by side in a row (each pair takes two columns).
        opacity, colorscale: of the saliency heatmap over the image (a plotly colorscale name).
        max_side: images are shown at most this many pixels on their longer side.

    Returns:
        a ``plotly.graph_objects.Figure`` (``fig.show()`` in a notebook; ``fig.to_html(include_plotlyjs="cdn")``
        or ``fig.write_html(path)`` for a report).

    Raises:
        ValueError: no cams, or ``titles`` of the wrong length.
    """
    from plotly.subplots import make_subplots

    cams = list(cams)
    if not cams:
        raise ValueError("plot_cam_grid: no explanations to draw")
    if titles is not None and len(titles) != len(cams):
        raise ValueError(f"plot_cam_grid: {len(titles)} titles for {len(cams)} pairs")
    per_row = max(1, min(pairs_per_row, len(cams)))
    rows = math.ceil(len(cams) / per_row)
    subtitles = []
    for i, c in enumerate(cams):
        head = titles[i] if titles is not None else f"sim {c.similarity:.3f}"
        subtitles += [f"{head}<br>A: {c.label_a}", f"{c.method}<br>B: {c.label_b}"]
    subtitles += [""] * (rows * per_row * 2 - len(subtitles))
    height = height_per_row * rows + 80
    fig = make_subplots(rows=rows, cols=2 * per_row, subplot_titles=subtitles, horizontal_spacing=0.02,
                        vertical_spacing=min(0.3, 60 / height))   # room for two-line titles
    for i, c in enumerate(cams):
        r, col = i // per_row + 1, 2 * (i % per_row) + 1
        _add_overlay(fig, c.image_a, c.map_a, r, col, opacity=opacity, colorscale=colorscale, max_side=max_side,
                     showscale=i == 0)
        _add_overlay(fig, c.image_b, c.map_b, r, col + 1, opacity=opacity, colorscale=colorscale, max_side=max_side,
                     showscale=False)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=11)
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=80, b=10),
                      plot_bgcolor="white")
    return fig


def plot_cam_pair(cam: SimilarityCam, *, opacity: float = 0.45, colorscale: str = "Turbo", max_side: int = 256,
                  height: int = 420):
    """A and B side by side, each with its map overlaid (B's only if ``symmetric``), titled with
    the similarity. Returns a plotly ``Figure`` (notebook or ``fig.to_html(include_plotlyjs=...)``)."""
    fig = plot_cam_grid([cam], pairs_per_row=1, opacity=opacity, colorscale=colorscale, max_side=max_side,
                        height_per_row=height - 80,
                        title=f"{cam.method} of the similarity {cam.similarity:.3f} (layer {cam.layer})")
    return fig


def plot_faithfulness(results: Faithfulness | Sequence[Faithfulness], *, height: int = 360):
    """Deletion (left) and insertion (right) curves of one or more maps, with random-order baselines
    (dashed). Legend entries carry the AUCs. Returns a plotly ``Figure``."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    results = [results] if isinstance(results, Faithfulness) else list(results)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["deletion (lower is better)", "insertion (higher is better)"])
    for i, r in enumerate(results):
        colour = qualitative.Plotly[i % len(qualitative.Plotly)]
        name = r.label or f"map {i}"
        for col, curve, rand, auc, rauc in ((1, r.deletion, r.random_deletion, r.deletion_auc, r.random_deletion_auc),
                                            (2, r.insertion, r.random_insertion, r.insertion_auc,
                                             r.random_insertion_auc)):
            fig.add_trace(go.Scatter(x=r.fractions, y=curve, mode="lines", line=dict(color=colour),
                                     name=f"{name} AUC {auc:.3f}", legendgroup=name), row=1, col=col)
            fig.add_trace(go.Scatter(x=r.fractions, y=rand, mode="lines", line=dict(color=colour, dash="dash"),
                                     name=f"{name} random AUC {rauc:.3f}", legendgroup=name), row=1, col=col)
    fig.update_xaxes(title_text="fraction of pixels")
    fig.update_yaxes(title_text="cosine similarity", col=1)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10))
    return fig
