"""What to explain: the options of an explanation, the score it explains, and which pairs.

An explanation of re-identification answers "why does the model find image A similar to image
B?". Three small things say what is asked before any map is computed:

* :class:`CamConfig` — how to explain (Score-CAM or Grad-CAM, exact or approximate, which layer,
  the softmax temperature, batch sizes): one YAML-friendly config per job;
* :class:`SimilarityTarget` — the score whose saliency is mapped, ``scale * cos(f(A'), f(B))``, as a
  ``pytorch_grad_cam`` target (the library ships none for similarity);
* :func:`select_pairs` — which pairs of an evaluation are worth explaining (top matches, hardest
  confusions, hardest true matches).

Example:
    >>> cfg = CamConfig.from_options({"layer": "layer4.0"}, fast=True, top_channels=16)
    >>> cfg.fast, cfg.layer, cfg.top_channels, cfg.approx
    (True, 'layer4.0', 16, 'gradient')
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import cost

__all__ = ["CamConfig", "SimilarityTarget", "select_pairs"]


@dataclass
class CamConfig:
    """Options of an explanation (one config per job; every field is YAML-friendly).

    Defaults per device (``fast=None``, ``top_channels="auto"``; :meth:`for_model` applies them):
    an exact Score-CAM map passes one masked image per channel of the target layer (hundreds to
    thousands for a real tower) through the image tower. So on the CPU a *large* image tower
    (more than :data:`~cliptk.explain.cost.LARGE_TOWER` parameters: ViT-S and up, RN50 and up)
    is explained with the approximate fast path (``fast=True``,
    ``top_channels=cost.AUTO_GROUPS``); cliptk's tiny towers on the CPU, and every tower on a CUDA
    device, get the exact map (the library's Score-CAM for :func:`~cliptk.explain.similarity_cam`,
    cliptk's exact fast path for the batch functions). Set ``fast`` / ``top_channels`` yourself to
    choose: ``top_channels=None`` is always exact. A long exact map on the CPU shows a progress
    bar and says once how to make it faster.

    Attributes:
        method: ``"scorecam"`` or ``"gradcam"`` (Grad-CAM always uses the library).
        fast: :func:`~cliptk.explain.similarity_cam` uses cliptk's exact fast Score-CAM instead of
            the library's (the batch functions :func:`~cliptk.explain.similarity_cams` /
            :func:`~cliptk.explain.explain_topk` always do); ``None`` = by the rule above (and
            ``True`` whenever ``top_channels`` is a number).
        layer: dotted module name of the target layer, relative to the model
            (``"clip.visual.layer4.0"``) or to its image tower (``"layer4.0"``); ``None`` picks
            :func:`~cliptk.explain.default_target_layer`.
        scale: multiplier of the cosine in the Score-CAM score (a softmax temperature); ``None``
            uses the model's ``logit_scale.exp()`` (capped at 100, as CLIP does).
        batch_size: masked images per forward pass; ``None``: 32 on CPU, 256 on CUDA.
        top_channels: fast path only, approximate Score-CAM: score this many masked images (an
            int), or this fraction of the channel count (a float in (0, 1]), instead of one per
            channel. The channels are clustered by the correlation of their activation maps into
            groups; each group's mask is the mean of its channels' masks, and every channel's
            score is derived from its group's (after Group-CAM, Zhang et al. 2021), as ``approx``
            says. Far fewer forward passes, but single pairs can agree less with the exact map
            (``benchmarks/RESULTS.md``), so check a few maps against the exact path.
            ``None`` (or at least the number of channels) = exact; ``"auto"`` = by the rule above.
        amp: fast path: bf16 autocast for the masked forward passes; ``None`` = on for CUDA only.
        progress: a ``tqdm`` bar over the masked batches of each map; ``None`` = only for long maps
            (:data:`~cliptk.explain.cost.LONG_MAP_BATCHES` batches or more on a large tower on
            the CPU).
        approx: how ``top_channels=k`` approximates the map (the budget is ``k`` masked images per
            map either way):

            * ``"gradient"`` (default) — B-dependent, after gScoreCAM (Chen et al., ACCV 2022):
              about 3/4 of the budget scores the correlation groups' mean masks *with* one
              backward pass of the score ``s(A * m, B)`` to the masks, so every channel gets its
              group's score plus a first-order correction ``grad . (m_c - m_group)``; the rest
              of the budget scores exactly the channels whose predicted score is highest (they
              carry the softmax weight, and an over-estimated prediction gets checked). With
              several images B each map uses only its own exact channels, so a map does not
              depend on the other B's (the masked images of their union are embedded once).
            * ``"groups"`` — B-independent Group-CAM: every channel gets its group's score
              (forward passes only: cheaper in wall time, less faithful on trained towers).

    Raises:
        ValueError: an option is out of range (the message names it).

    Example:
        >>> CamConfig(method="gradcam", fast=True)
        Traceback (most recent call last):
        ValueError: CamConfig: fast=True is a Score-CAM path; Grad-CAM needs fast=False
    """

    method: Literal["scorecam", "gradcam"] = "scorecam"
    fast: bool | None = None
    layer: str | None = None
    scale: float | None = None
    batch_size: int | None = None
    top_channels: int | float | str | None = "auto"
    amp: bool | None = None
    progress: bool | None = None
    approx: Literal["gradient", "groups"] = "gradient"

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
        if k is not None and k != "auto" and not (
                (isinstance(k, int) and not isinstance(k, bool) and k >= 1) or (isinstance(k, float) and 0 < k <= 1)):
            raise ValueError(f"CamConfig.top_channels must be 'auto', None, an int >= 1 or a fraction in (0, 1], "
                             f"got {k!r}")
        if self.approx not in ("gradient", "groups"):
            raise ValueError(f"CamConfig.approx must be 'gradient' or 'groups', got {self.approx!r}")

    def for_model(self, model, device: str | torch.device | None = None) -> "CamConfig":
        """This config with ``fast=None`` and ``top_channels="auto"`` decided for ``model`` on
        ``device`` (default: the model's), by the per-device rule of the class docstring.

        Example:
            >>> import cliptk as ct
            >>> cfg = CamConfig().for_model(ct.load_model("cliptk-micro", None))   # a tiny tower: exact
            >>> cfg.fast, cfg.top_channels
            (False, None)
        """

        top, fast = self.top_channels, self.fast
        if self.method == "gradcam":
            return replace(self, fast=False, top_channels=None if top == "auto" else top)
        if top == "auto":
            top = cost.AUTO_GROUPS if fast is not False and cost.slow_exact(model, device) else None
        if fast is None:
            fast = top is not None
        return replace(self, fast=fast, top_channels=top)

    @classmethod
    def from_options(cls, config: "CamConfig | dict | None" = None, **options) -> "CamConfig":
        """A config from another config or dict, with ``options`` overriding its fields.

        Raises:
            TypeError: an option is not a :class:`CamConfig` field (the message lists them).

        Example:
            >>> CamConfig.from_options(CamConfig(scale=2.0), batch_size=4)
            CamConfig(method='scorecam', fast=None, layer=None, scale=2.0, batch_size=4, top_channels='auto', amp=None, progress=None, approx='gradient')
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


def select_pairs(query_emb: torch.Tensor | np.ndarray, gallery_emb: torch.Tensor | np.ndarray,
                 query_pids: Sequence[int] | np.ndarray, gallery_pids: Sequence[int] | np.ndarray, *,
                 kind: Literal["top_matches", "hardest_wrong", "hardest_right"] = "top_matches",
                 n: int = 8) -> list[tuple[int, int, float]]:
    """Pairs worth explaining, one per query: ``(query_row, gallery_row, cosine similarity)``.

    * ``"top_matches"``: each query's most similar gallery image (right or wrong), most similar first;
    * ``"hardest_wrong"``: each query's most similar gallery image of *another* identity, highest first
      (the confusions that cost rank-1);
    * ``"hardest_right"``: each query's least similar image of its *own* identity, lowest first.

    Rows index the query / gallery embeddings (e.g. ``ds.subset("query")`` rows); the embeddings
    are ``[Q, D]`` and ``[G, D]`` (L2-normalised here).

    Raises:
        ValueError: unknown ``kind`` or mismatched lengths.

    Example:
        >>> q = np.array([[1.0, 0.0], [0.0, 1.0]])                  # two queries, pids 0 and 1
        >>> g = np.array([[1.0, 0.1], [0.1, 1.0], [0.7, 0.7]])      # gallery pids 0, 1, 2
        >>> [(i, j, round(s, 3)) for i, j, s in select_pairs(q, g, [0, 1], [0, 1, 2], kind="top_matches")]
        [(0, 0, 0.995), (1, 1, 0.995)]
        >>> [(i, j, round(s, 3)) for i, j, s in select_pairs(q, g, [0, 1], [0, 1, 2], kind="hardest_wrong")]
        [(0, 2, 0.707), (1, 2, 0.707)]

    Then explain them, e.g. ``[similarity_cam(model, i, j, dataset=(query, gallery)) for i, j, _ in pairs]``.
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
