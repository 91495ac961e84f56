"""Score-CAM of image-to-image similarity: the result, the library path and cliptk's fast path.

Score-CAM (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
Networks", CVPR-W 2020, arXiv:1910.01279) masks the image with each channel of the target layer's
activation, scores each masked image — here ``scale * cos(f(A * mask_c), f(B))`` — and sums the
channels with the softmax of their scores. Two implementations give the same map:

* the **library path** (:func:`similarity_cam`'s default, except for a large tower on the CPU —
  see :class:`~cliptk.explain.CamConfig`): ``pytorch_grad_cam.ScoreCAM`` /
  ``GradCAM`` (Selvaraju et al., ICCV 2017) with :class:`~cliptk.explain.SimilarityTarget`, one
  call per pair;
* the **fast path** (:func:`similarity_cams`, :func:`explain_topk`, or ``fast=True``): the masked
  images of A do not depend on B, so A's masked embeddings are computed once and each gallery image
  costs one ``[C, D] @ [D]`` product (k maps for the price of one). Channels whose activation is
  constant give an all-zero mask, so they share one forward pass of the blank image. On CUDA it
  runs under ``torch.inference_mode`` with bf16 autocast and fp32 dot products. ``top_channels=k``
  approximates the map with ``k`` masked images: the channels are clustered into groups of
  similar maps and one masked image is scored per group (Group-CAM, Zhang et al.,
  arXiv:2103.13859, 2021). With ``approx="gradient"`` (the default) the group images are scored
  with one backward pass of the score to their masks, which corrects each channel's score to first
  order for B, and the rest of the budget scores exactly the channels predicted to carry the
  weight (after gScoreCAM, Chen et al., ACCV 2022); ``approx="groups"`` gives each channel its
  group's score (``benchmarks/bench_scorecam.py`` measures agreement and speed).

Traps of ``pytorch_grad_cam`` handled here: ScoreCAM weights channels by a softmax of the raw
target scores, so a plain cosine (range ~0.1 between masked images) gives almost uniform weights
and a map that hardly depends on B — the score is multiplied by the model's logit scale
(``scale=``); the batch size is an undocumented attribute ``cam.batch_size`` — it is ``batch_size=``
here; the CAM object holds forward hooks and its ``__exit__`` swallows ``IndexError`` — cliptk
releases the hooks in a ``finally`` and lets errors through; ScoreCAM prints a tqdm bar per map
— shown only for a long map; it decides whether a channel is constant after upsampling, where 1-ulp noise divided
by its 1e-8 epsilon turns a constant non-zero channel into a noise mask — the fast path decides on
the activations.

Example:
    >>> import cliptk as ct
    >>> from PIL import Image
    >>> model = ct.load_model("cliptk-micro", None)        # random init, offline
    >>> a, b = Image.new("RGB", (32, 64), "red"), Image.new("RGB", (30, 60), "blue")
    >>> cam = similarity_cam(model, a, b, fast=True)
    >>> cam.method, cam.map_a.shape, bool(0 <= cam.map_a.min() <= cam.map_a.max() <= 1)
    ('scorecam-fast', (64, 32), True)
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.cluster.hierarchy import fcluster, linkage
from torch import nn

from ..data import ReIdDataset
from ..embed import embed
from .inputs import ImageLike, _as_input, _Input, _to_image
from .layers import (_bar, _batch_size, _cam_mode, _device, _embed, _hook, _long_map, _reshape_for, _resolve_layer,
                     _scale, _ToGrid)
from .target import CamConfig, SimilarityTarget

__all__ = ["SimilarityCam", "similarity_cam", "similarity_cams", "explain_topk"]


@dataclass(repr=False)
class SimilarityCam:
    """A saliency map of image A for its similarity to B (and optionally of B for A).

    Attributes:
        similarity: cosine similarity of A's and B's embeddings (fp32).
        map_a: ``[h, w]`` float32 in [0, 1], at image A's own resolution (the model's letterbox /
            resize undone for PIL and dataset inputs; the model input size for tensor inputs).
        map_b: the same for B w.r.t. A (``symmetric=True``), else ``None``.
        input_map_a, input_map_b: the maps at the model's input resolution ``[H, W]``.
        input_a, input_b: the preprocessed ``[3, H, W]`` inputs (CPU fp32), for
            :func:`~cliptk.explain.faithfulness`.
        image_a, image_b: the images the maps belong to (PIL), for pictures.
        label_a, label_b: names for titles (``"players[3] pid 12"`` for dataset rows).
        method: ``"scorecam"`` (library), ``"scorecam-fast"``, ``"scorecam-approx"`` or ``"gradcam"``.
        layer: dotted name of the target layer.
        scale: the softmax temperature used in the Score-CAM score.
        channels: channels (exact fast path), channel groups (``approx="groups"``) or masked images
            per map (``approx="gradient"``) that were scored; ``None`` for the library.
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
        """The pair as a plotly figure (:func:`~cliptk.explain.plot_cam_pair`)."""
        from .plots import plot_cam_pair   # plotly loads on the first picture, not with cliptk.explain

        return plot_cam_pair(self, **kwargs)

    def __repr__(self) -> str:
        both = "A and B" if self.map_b is not None else "A"
        return (f"SimilarityCam(similarity={self.similarity:.4f}, method={self.method!r}, maps of {both}, "
                f"A={self.label_a!r} {self.map_a.shape[1]}x{self.map_a.shape[0]}, B={self.label_b!r}, "
                f"layer={self.layer!r})")


def _minmax(m: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of ``[..., H, W]`` to [0, 1] (as pytorch_grad_cam does)."""
    flat = m.flatten(-2)
    lo, hi = flat.min(-1, keepdim=True).values, flat.max(-1, keepdim=True).values
    return ((flat - lo) / (hi - lo + 1e-7)).view_as(m)


# ------------------------------------------------------------------------------------ library path
@contextmanager
def _library_cam(cls, model: nn.Module, layer: nn.Module, reshape: _ToGrid, config: CamConfig) -> Iterator:
    """A ``pytorch_grad_cam`` CAM object whose hooks are released on exit; errors propagate (the
    library's own ``__exit__`` swallows ``IndexError``) and ScoreCAM's per-batch tqdm bar shows only
    for a long map (:func:`~cliptk.explain.layers._long_map`)."""
    # pytorch_grad_cam imports OpenCV, matplotlib and scikit-learn (seconds); only this path needs it
    import pytorch_grad_cam.score_cam as score_cam_module

    def bar(iterable, *args, **kwargs):   # the library's loop over the masked batches of one map
        return _bar(iterable, _long_map(model, config, len(iterable), approximate=False), "Score-CAM")

    quiet = SimpleNamespace(tqdm=bar)
    original = score_cam_module.tqdm
    cam = cls(model, [layer], reshape_transform=reshape)
    score_cam_module.tqdm = quiet
    try:
        yield cam
    finally:
        score_cam_module.tqdm = original
        cam.activations_and_grads.release()


def _library_map(model: nn.Module, x: torch.Tensor, reference: torch.Tensor, name: str, layer: nn.Module,
                 config: CamConfig, scale: float) -> tuple[np.ndarray, tuple[int, int]]:
    """One library CAM ``[H, W]`` of ``x`` ``[3, H, W]`` for ``SimilarityTarget(reference)``, and the
    target layer's grid."""
    from pytorch_grad_cam import GradCAM, ScoreCAM   # heavy (OpenCV, matplotlib): see _library_cam

    cls = ScoreCAM if config.method == "scorecam" else GradCAM
    device = _device(model)
    with _library_cam(cls, model, layer, _reshape_for(model), config) as cam:
        cam.batch_size = _batch_size(config.batch_size, device)   # the library's undocumented batch-size attribute
        cam.compute_input_gradient = config.method == "gradcam"   # gradients even through frozen layers
        maps = cam(x[None].to(device), targets=[SimilarityTarget(reference, scale)])
        grid = tuple(cam.activations_and_grads.activations[0].shape[-2:])
    if maps is None:
        raise RuntimeError(f"pytorch_grad_cam returned no map for layer {name!r}")
    return np.asarray(maps[0], dtype=np.float32), grid


# --------------------------------------------------------------------------------------- fast path
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
    z = acts.flatten(1).double()
    z = F.normalize(z - z.mean(1, keepdim=True), dim=1).cpu().numpy()
    labels = fcluster(linkage(z, "ward"), k, criterion="maxclust")
    return torch.from_numpy(np.unique(labels, return_inverse=True)[1].reshape(-1)).to(acts.device)


def _group_masks(masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean mask ``[g, H*W]`` of each group of ``masks`` ``[V, H*W]`` (``labels`` ``[V]`` in ``0 .. g-1``)."""
    n = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=n).to(masks.dtype)
    return torch.zeros(n, masks.shape[1], device=masks.device).index_add_(0, labels, masks) / counts[:, None]


def _gradient_scores(model: nn.Module, x: torch.Tensor, acts: torch.Tensor, masks: torch.Tensor, refs: torch.Tensor,
                     budget: int, scale: float, bs: int, amp: bool, show: bool) -> tuple[torch.Tensor, int, int]:
    """Approximate Score-CAM scores ``[V, k]`` of the ``V`` channels (activations ``acts`` ``[V, h, w]``,
    min-max masks ``masks`` ``[V, H*W]``) of ``x`` ``[3, H, W]`` for each of the ``k`` unit
    references ``refs`` ``[D, k]``, from ``budget`` masked images per reference (``approx="gradient"``).

    1. ``g = budget - budget // 4`` correlation groups (:func:`_channel_groups`); each group's mean
       mask ``m_G`` is scored *with gradients*: ``s_G = scale * cos(f(x * m_G), ref)`` and, by one
       backward pass per reference, ``d s_G / d m_G``. Channel ``c`` of group ``G`` is predicted by
       the first-order expansion ``s_G + <d s_G / d m_G, m_c - m_G>``: the gradient depends on B,
       so the prediction sees which members of a group B's score favours, which the group score
       alone (Group-CAM) cannot.
    2. The remaining ``budget - g`` images score exactly, per reference, the channels whose predicted
       score is highest: the softmax puts the weight there, and a prediction that overshoots is
       replaced by the true score.

    Returns the scores, the number of masked images actually embedded (groups plus the union of
    the references' exact channels) and the number per reference (``<= budget``)."""
    H, W = x.shape[-2:]
    labels = _channel_groups(acts, max(1, budget - budget // 4))
    centres = _group_masks(masks, labels)
    n_groups = len(centres)
    k = refs.shape[1]
    with torch.inference_mode(False), torch.enable_grad():
        xg, refs_g = x.clone(), refs.clone()           # inference tensors cannot be saved for backward
        group_scores, group_grads = [], []
        for i in _bar(range(0, n_groups, bs), show, "Score-CAM"):
            m = centres[i:i + bs].clone().requires_grad_(True)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                emb = model(xg[None] * m.view(-1, 1, H, W))
            s = scale * F.normalize(emb.float(), dim=-1) @ refs_g                       # [b, k]
            grads = [torch.autograd.grad(s[:, j].sum(), m, retain_graph=j + 1 < k)[0] for j in range(k)]
            group_scores.append(s.detach())
            group_grads.append(torch.stack(grads, -1).detach())                         # [b, H*W, k]
    group_scores, group_grads = torch.cat(group_scores), torch.cat(group_grads)
    offsets = masks - centres[labels]                                                   # [V, H*W]
    scores = group_scores[labels] + torch.einsum("vp,vpk->vk", offsets, group_grads[labels])
    n_exact = min(budget - n_groups, len(masks))
    if n_exact <= 0:
        return scores, n_groups, n_groups
    top = torch.topk(scores, n_exact, dim=0).indices                                    # [n_exact, k]
    union, where = torch.unique(top, return_inverse=True)
    exact = torch.cat([_embed(model, x[None] * masks[union[i:i + bs]].view(-1, 1, H, W), bs, amp)
                       for i in range(0, len(union), bs)]) @ refs * scale                # [U, k]
    cols = torch.arange(k, device=scores.device).expand_as(top)
    scores[top, cols] = exact[where, cols]
    return scores, n_groups + len(union), n_groups + n_exact


def _fast_maps(model: nn.Module, x: torch.Tensor, acts: torch.Tensor, references: torch.Tensor, config: CamConfig,
               scale: float) -> tuple[np.ndarray, int]:
    """Score-CAM maps ``[k, H, W]`` of ``x`` ``[3, H, W]`` (target-layer activations ``acts``
    ``[C, h, w]``) for each row of ``references`` ``[k, D]``, from one set of masked forward passes;
    also returns the number of channels (exact), channel groups (``approx="groups"``) or masked
    images per map (``approx="gradient"``) scored.

    Same masks, softmax and normalisation as ``pytorch_grad_cam.ScoreCAM``, except that a channel
    with constant activation gets an all-zero mask (decided on the activations, not on the noisy
    upsampled maps) and all such channels share one pass of the blank image. With
    ``config.top_channels`` below the number of varying channels, the channels are grouped by
    correlation (:func:`_channel_groups`) and one mean mask per group is scored: with
    ``approx="groups"`` each channel gets its group's score (Group-CAM), with ``"gradient"`` its
    group's score corrected by the gradient plus exact scores for the channels predicted to
    carry the weight (:func:`_gradient_scores`). Grouping, not dropping, because which channels
    carry the weight depends on B (why and how well: ``benchmarks/RESULTS.md``)."""
    config = config.for_model(model)   # a no-op for the entry points' configs (already decided)
    device = x.device
    amp = device.type == "cuda" if config.amp is None else bool(config.amp)
    bs = _batch_size(config.batch_size, device)
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
        refs = F.normalize(references.float(), dim=-1).T
        scores = torch.empty(C, refs.shape[1], device=device)
        blank = int(bool(constant.any()))   # the constant channels' blank image counts against the budget
        if n_scored < len(varying) and config.approx == "gradient" and n_scored > blank:
            show = _long_map(model, config, math.ceil(n_scored / bs), approximate=True)
            scores[varying], _, n_scored = _gradient_scores(model, x, acts[varying], masks, refs, n_scored - blank,
                                                            scale, bs, amp, show)
            n_scored += blank
        elif len(masks):
            groups = torch.arange(len(varying), device=device)                      # channel -> scored mask
            if n_scored < len(varying):
                groups = _channel_groups(acts[varying], n_scored)
                masks = _group_masks(masks, groups)
                n_scored = len(masks)
            else:
                n_scored = C
            starts = range(0, len(masks), bs)
            show = _long_map(model, config, len(starts), approximate=config.top_channels is not None)
            embs = torch.cat([_embed(model, x[None] * masks[i:i + bs].view(-1, 1, H, W), bs, amp)
                              for i in _bar(starts, show, "Score-CAM")])
            scores[varying] = (scale * embs @ refs)[groups]                           # fp32
        else:
            n_scored = C
        if constant.any():
            scores[constant] = scale * _embed(model, torch.zeros_like(x)[None], 1, amp) @ refs
        weights = scores.softmax(dim=0)
        cams = torch.einsum("ck,chw->khw", weights, acts).clamp_min(0)
        cams = F.interpolate(_minmax(cams)[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        return _minmax(cams).cpu().numpy().astype(np.float32), n_scored


# ------------------------------------------------------------------------------------ entry points
def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module) or not hasattr(model, "preprocess"):
        raise TypeError(f"expected a cliptk ClipModel (from ct.load_model), got {type(model).__name__}")


def _result(model, a: _Input, b: _Input, sim: float, map_a: np.ndarray, map_b: np.ndarray | None, method: str,
            layer: str, scale: float, channels: int | None, grid: tuple[int, int]) -> SimilarityCam:
    def back(inp: _Input, m: np.ndarray) -> np.ndarray:
        return np.clip(_to_image(model, m, inp.image), 0, 1) if inp.original else m

    return SimilarityCam(similarity=sim, map_a=back(a, map_a), input_map_a=map_a, input_a=a.x, input_b=b.x,
                         image_a=a.image, image_b=b.image, method=method, layer=layer, scale=scale,
                         label_a=a.label, label_b=b.label, map_b=None if map_b is None else back(b, map_b),
                         input_map_b=map_b, channels=channels, grid=grid)


def similarity_cam(model: nn.Module, image_a: ImageLike, image_b: ImageLike, *,
                   dataset: ReIdDataset | tuple[ReIdDataset, ReIdDataset] | None = None, symmetric: bool = False,
                   config: CamConfig | dict | None = None, **options) -> SimilarityCam:
    """Saliency map of image A for its similarity to image B's embedding (and of B for A).

    The model runs in fp32, eval mode, without parameter gradients; its dtypes, mode,
    ``requires_grad`` flags and ``.grad`` tensors are restored afterwards.

    Args:
        model: a :class:`cliptk.ClipModel` (ViT or ModifiedResNet tower; any dtype, any device).
        image_a, image_b: PIL images, preprocessed ``[3, H, W]`` tensors, or row indices into
            ``dataset`` (one dataset, or a pair ``(dataset_a, dataset_b)`` e.g. query and gallery).
        symmetric: also compute B's map w.r.t. A's embedding.
        config, options: a :class:`~cliptk.explain.CamConfig` and/or its fields as keywords:
            ``method`` (``"scorecam"`` / ``"gradcam"``), ``fast``, ``layer``, ``scale``,
            ``batch_size``, ``top_channels`` (the fast path), ``amp``, ``progress``. The defaults
            depend on the device and the tower (exact, or approximate for a large tower on the
            CPU): see :class:`~cliptk.explain.CamConfig`.

    Returns:
        :class:`SimilarityCam`: maps in [0, 1] at each image's resolution, the cosine similarity.

    Raises:
        TypeError: unknown option, or an index without ``dataset``. ValueError: a bad layer / option /
        tensor shape (the message names it). IndexError: an index outside the dataset.

    Example (the library's Grad-CAM of a random-init model, both maps):
        >>> import cliptk as ct
        >>> from PIL import Image
        >>> model = ct.load_model("cliptk-micro", None)
        >>> a, b = Image.new("RGB", (32, 64), "red"), Image.new("RGB", (30, 60), "blue")
        >>> cam = similarity_cam(model, a, b, symmetric=True, method="gradcam")
        >>> cam.method, cam.map_a.shape, cam.map_b.shape
        ('gradcam', (64, 32), (60, 30))
    """
    _check_model(model)
    cfg = CamConfig.from_options(config, **options).for_model(model)
    if cfg.fast:
        return similarity_cams(model, image_a, [image_b], dataset=dataset, symmetric=symmetric, config=cfg)[0]
    if cfg.top_channels is not None:
        raise ValueError(f"top_channels={cfg.top_channels!r} (approximate Score-CAM) needs the fast path: pass "
                         "fast=True (or leave fast unset)")
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


def similarity_cams(model: nn.Module, image_a: ImageLike, images_b: Sequence[ImageLike], *,
                    dataset: ReIdDataset | tuple[ReIdDataset, ReIdDataset] | None = None, symmetric: bool = False,
                    config: CamConfig | dict | None = None, **options) -> list[SimilarityCam]:
    """Score-CAM maps of one image A for its similarity to each of ``images_b`` — the fast path.

    A's masked images do not depend on B: they are embedded once (one forward pass per non-constant
    channel of the target layer, batched), each B is embedded once, and each map costs one
    ``[C, D] @ [D]`` product — k maps for about the price of one. The result equals the library's
    ScoreCAM on the same model, layer and images (same masks, softmax and normalisation; tested at
    Pearson >= 0.99). With ``top_channels=k`` each map scores ``k`` masked images (approximate, see
    :class:`~cliptk.explain.CamConfig` ``top_channels`` and ``approx``; ``method`` then reads
    ``"scorecam-approx"`` and ``channels`` counts the masked images per map, or the groups for
    ``approx="groups"``). With ``approx="gradient"`` each B gets its own exactly scored channels
    (one backward pass per B, and A's masked images of their union are embedded once), so a map is
    the same whichever other B's share the call.

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
        >>> import cliptk as ct
        >>> from PIL import Image
        >>> model = ct.load_model("cliptk-micro", None)
        >>> a = Image.new("RGB", (32, 64), "red")
        >>> cams = similarity_cams(model, a, [Image.new("RGB", (32, 64), c) for c in ("blue", "red")], top_channels=4)
        >>> [c.method for c in cams], cams[0].channels
        (['scorecam-approx', 'scorecam-approx'], 4)
    """
    _check_model(model)
    cfg = CamConfig.from_options(config, **options)
    cfg = replace(cfg, fast=True).for_model(model) if cfg.method == "scorecam" else cfg   # fast is implied here
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
        emb, acts = _embed_with_activations(model, xs, layer, _batch_size(cfg.batch_size, device))
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
        gallery: a :class:`~cliptk.ReIdDataset` (e.g. ``ds.subset("gallery")``) or a list of
            images/tensors.
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
        >>> import cliptk as ct
        >>> from PIL import Image
        >>> model = ct.load_model("cliptk-micro", None)
        >>> gallery = [Image.new("RGB", (32, 64), c) for c in ("blue", "red", "green")]
        >>> cams = explain_topk(model, Image.new("RGB", (32, 64), "red"), gallery, k=2)
        >>> len(cams), cams[0].similarity >= cams[1].similarity, cams[0].label_b.startswith("gallery[")
        (2, True, True)
    """
    if k < 1:
        raise ValueError(f"explain_topk: k must be >= 1, got {k}")
    query_ds = dataset if dataset is not None else (gallery if isinstance(gallery, ReIdDataset) else None)
    q = _as_input(model, query, query_ds, 0, "query")
    if gallery_embeddings is None:
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
