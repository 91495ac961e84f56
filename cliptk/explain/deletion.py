"""Is a saliency map faithful? Deletion and insertion curves against random orders.

A map is only useful if the pixels it marks are the ones the similarity depends on. The deletion /
insertion test (Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box
Models", BMVC 2018) measures that: remove the most salient pixels of A first and the similarity to
B should fall fast (low area under the curve); reveal them first on a blurred copy and it should
rise fast (high area). :func:`faithfulness` computes both curves for a
:class:`~cliptk.explain.SimilarityCam` (or any other map of the same pair) and the same curves for
random orders, so the gains over random say whether the map points somewhere meaningful.

(The module is called ``deletion`` rather than ``faithfulness`` so that ``cliptk.explain.faithfulness``
stays the function.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from .layers import _batch_size, _cam_mode, _device, _embed
from .scorecam import SimilarityCam

__all__ = ["Faithfulness", "faithfulness"]


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

    Example:
        >>> x = np.linspace(0, 1, 3)
        >>> f = Faithfulness(x, np.array([1.0, 0.2, 0.0]), np.array([0.0, 0.8, 1.0]), np.array([1.0, 0.5, 0.0]),
        ...                  np.array([0.0, 0.5, 1.0]), similarity=1.0)
        >>> round(f.deletion_gain, 3), round(f.insertion_gain, 3)
        (0.15, 0.15)
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
        """The curves as a plotly figure (:func:`~cliptk.explain.plot_faithfulness`)."""
        from .plots import plot_faithfulness   # plotly loads on the first picture, not with cliptk.explain

        return plot_faithfulness(self, **kwargs)

    def __repr__(self) -> str:
        d = self.to_dict()
        return (f"Faithfulness({self.label or 'map'}: deletion AUC {d['deletion_auc']:.4f} vs random "
                f"{d['random_deletion_auc']:.4f} (gain {d['deletion_gain']:+.4f}), insertion AUC "
                f"{d['insertion_auc']:.4f} vs random {d['random_insertion_auc']:.4f} (gain {d['insertion_gain']:+.4f}))")


def _blur(x: torch.Tensor) -> torch.Tensor:
    """The Gaussian-blurred copy of ``x`` ``[N, 3, H, W]`` that insertion starts from (sigma 1/20 of
    the longer side)."""
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
        cam: a result of :func:`~cliptk.explain.similarity_cam` / :func:`~cliptk.explain.similarity_cams`.
        which: ``"a"`` (map of A w.r.t. B) or ``"b"`` (needs ``symmetric=True``).
        steps: number of fraction steps (``fractions = linspace(0, 1, steps + 1)``).
        n_random: random orders averaged for the baseline curves.
        random_order: ``"smooth"`` or ``"pixel"`` (see above).
        batch_size: images per forward pass; ``None``: 32 on CPU, 256 on CUDA.
        saliency: another ``[H, W]`` map to evaluate on the same pair (e.g. a Grad-CAM map).

    Returns:
        :class:`Faithfulness` (curves, AUCs and gains over random).

    Raises:
        ValueError: ``which="b"`` without a map of B, a map of the wrong shape, ``steps < 1``.

    Example:
        >>> import cliptk as ct
        >>> from PIL import Image
        >>> model = ct.load_model("cliptk-micro", None)        # random init, offline
        >>> red, blue = Image.new("RGB", (32, 64), "red"), Image.new("RGB", (32, 64), "blue")
        >>> f = faithfulness(model, ct.similarity_cam(model, red, blue, fast=True), steps=4, n_random=1)
        >>> f.fractions.tolist(), f.deletion.shape
        ([0.0, 0.25, 0.5, 0.75, 1.0], (5,))
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
        bs = _batch_size(batch_size, device)
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
