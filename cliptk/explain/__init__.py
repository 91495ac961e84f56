"""Explanations of image-to-image similarity: Score-CAM maps, a faithfulness check, pictures.

Re-identification ranks gallery images by the cosine similarity of their embeddings to a query's
(CLIP-ReIdent, Habel et al., MMSports 2022). To see *what* makes two crops similar, this family
computes a saliency map of image A with respect to its similarity to image B's embedding:

* **Score-CAM** (Wang et al., CVPR-W 2020, arXiv:1910.01279) of the score
  ``scale * cos(f(A * mask_c), f(B))``, through ``pytorch_grad_cam`` or cliptk's exact fast path
  (k gallery images for the price of one), optionally approximated by channel groups (Group-CAM,
  Zhang et al. 2021);
* **Grad-CAM** (Selvaraju et al., ICCV 2017) of the same target, for comparison;
* **deletion / insertion curves** (Petsiuk et al., RISE, BMVC 2018) against random orders, to
  check that a map points where the similarity comes from.

Modules, in dependency order:

* ``target``   — what to explain: :class:`CamConfig`, :class:`SimilarityTarget`, :func:`select_pairs`;
* ``layers``   — where to look and how to run the model: :func:`default_target_layer`, token grids,
  fp32 / eval mode with everything restored, hooks;
* ``inputs``   — images in (PIL, tensor, dataset row) and maps back onto the original image;
* ``scorecam`` — :class:`SimilarityCam`, :func:`similarity_cam`, :func:`similarity_cams`,
  :func:`explain_topk` (library path, exact fast path, approximate groups);
* ``deletion`` — :class:`Faithfulness`, :func:`faithfulness`;
* ``plots``    — :func:`plot_cam_pair`, :func:`plot_cam_grid`, :func:`plot_faithfulness` (plotly).

The ``plot_*`` names load ``plots`` — and so plotly — on first use (PEP 562 ``__getattr__``), and
``pytorch_grad_cam`` (OpenCV, matplotlib) loads on the first library-path map, so ``import
cliptk.explain`` stays light.

Example:
    >>> import cliptk as ct
    >>> from PIL import Image
    >>> model = ct.load_model("cliptk-micro", None)        # random init, offline
    >>> a, b = Image.new("RGB", (32, 64), "red"), Image.new("RGB", (30, 60), "blue")
    >>> cam = similarity_cam(model, a, b, symmetric=True, fast=True)
    >>> cam.map_a.shape, cam.map_b.shape
    ((64, 32), (60, 30))
    >>> fig = cam.figure()                  # plotly: fig.show() in a notebook
    >>> faithfulness(model, cam, steps=2, n_random=1).deletion.shape
    (3,)
"""
from __future__ import annotations

import importlib
from typing import Any

from .deletion import Faithfulness, faithfulness
from .inputs import ImageLike
from .layers import default_target_layer
from .scorecam import SimilarityCam, explain_topk, similarity_cam, similarity_cams
from .target import CamConfig, SimilarityTarget, select_pairs

__all__ = [
    "CamConfig",
    "SimilarityTarget",
    "SimilarityCam",
    "Faithfulness",
    "ImageLike",
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

_PLOTS = ("plot_cam_pair", "plot_cam_grid", "plot_faithfulness")


def __getattr__(name: str) -> Any:
    if name in _PLOTS:   # plotly loads here, on the first picture
        value = getattr(importlib.import_module(".plots", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
