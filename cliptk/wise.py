"""WiSE-FT: undo what fine-tuning costs in zero-shot by interpolating weights (Wortsman et al., CVPR 2022).

Fine-tuning the image tower for re-identification moves it away from the text tower it was
trained with, so zero-shot probes (shirt numbers, jersey colours, text retrieval) get worse: the
"forgetting" open_clip users report after fine-tuning. WiSE-FT ("Robust fine-tuning of zero-shot
models", Wortsman et al., CVPR 2022) mixes the weights of the zero-shot and the fine-tuned model,
``θ(α) = (1 − α)·θ_zero_shot + α·θ_fine_tuned``, and picks the ``α`` that keeps most of both.

- :func:`wise_ft` — the interpolated model at one ``α``;
- :func:`wise_ft_curve` — one call: re-id mAP / rank-1 and zero-shot accuracy over a grid of
  ``α`` (a :class:`WiseCurve`), the chosen ``α``, and the chosen model written with
  :func:`cliptk.save_model`.

**Which weights are mixed.** Only the state-dict entries that both models have. The fine-tuned
model is often image-only (``load_model(..., image_only=True)``, as ``fit`` trains it): its
missing text tower is taken from the zero-shot model unchanged at every ``α``, so the result can
still run text probes. An image tower the fine-tuned model lacks (keys ``clip.visual.*``) is an
error: there is nothing to interpolate. The fine-tuned model's output **projection** decides the
structure: if it was removed (``projection=False``, CLIP-ReIdent), the result has no projection
either (a warning says so), its image embeddings are no longer in the text space, and its
zero-shot accuracy is reported as NaN; a fine-tuned model *with* a projection mixed into a
zero-shot model without one is an error. Endpoints are exact: at ``α = 0`` every entry is the
zero-shot one, at ``α = 1`` every shared entry is the fine-tuned one (bit for bit). Integer
buffers are not interpolated (the fine-tuned value from ``α >= 0.5`` on). WiSE-FT assumes both
models share their initialisation; weights re-initialised before fine-tuning
(``TrainConfig.reinit_blocks``) have no zero-shot counterpart worth mixing.

Example (two random ``cliptk-micro`` models stand in for zero-shot and fine-tuned):
    >>> import torch
    >>> from cliptk.models import load_model
    >>> torch.manual_seed(0); zs = load_model("cliptk-micro", None)
    <torch._C.Generator object at ...>
    >>> torch.manual_seed(1); ft = load_model("cliptk-micro", None, image_only=True)
    <torch._C.Generator object at ...>
    >>> mid = wise_ft(zs, ft, 0.5)
    >>> k = "clip.visual.conv1.weight"
    >>> torch.allclose(mid.state_dict()[k], (zs.state_dict()[k] + ft.state_dict()[k]) / 2)
    True
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch  # noqa: F401  (the doctests use it)

from .data import ReIdDataset
from .evaluate import evaluate, zero_shot_probe
from .models import ClipModel, remove_projection, save_model

__all__ = ["wise_ft", "wise_ft_curve", "WiseCurve"]


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
        raise ValueError(f"wise_ft: alpha={alpha} must be in [0, 1] (0 = zero-shot weights, 1 = fine-tuned)")
    return alpha


def wise_ft(zero_shot: ClipModel, fine_tuned: ClipModel, alpha: float) -> ClipModel:
    """The WiSE-FT model ``(1 − alpha)·zero_shot + alpha·fine_tuned`` (a new model; inputs untouched).

    Args:
        zero_shot: the model before fine-tuning (with its text tower, for zero-shot probes).
        fine_tuned: the fine-tuned model of the same architecture (image-only is fine).
        alpha: 0 = the zero-shot weights, 1 = the fine-tuned ones.

    Returns:
        A :class:`cliptk.ClipModel` with ``zero_shot``'s preprocessing, tokenizer and towers,
        on ``zero_shot``'s device, in eval mode. Entries only ``zero_shot`` has (the text
        tower of an image-only fine-tuned model) keep their zero-shot values; see the module
        docstring for the projection.

    Raises:
        ValueError: ``alpha`` outside ``[0, 1]``; different architectures (names the first
            entry whose shape differs); the fine-tuned model lacks image-tower weights, or has a
            projection the zero-shot model lacks.
    """
    alpha = _check_alpha(alpha)
    if zero_shot.name != fine_tuned.name:
        raise ValueError(f"wise_ft: zero_shot is {zero_shot.name!r} but fine_tuned is {fine_tuned.name!r}; "
                         "WiSE-FT interpolates two versions of one architecture")
    if fine_tuned.projection and not zero_shot.projection:
        raise ValueError("wise_ft: fine_tuned has an output projection that zero_shot lacks; load the zero-shot "
                         "model with projection=True")
    merged = copy.deepcopy(zero_shot).eval()
    if zero_shot.projection and not fine_tuned.projection:
        warnings.warn("wise_ft: fine_tuned has no output projection (projection=False), so neither has the result: "
                      "its image embeddings are not in the text tower's space and zero-shot probes do not apply; "
                      "fine-tune with projection=True to measure zero-shot accuracy", UserWarning, stacklevel=2)
        remove_projection(merged)
    zs, ft = merged.state_dict(), fine_tuned.state_dict()
    lacking = [k for k in zs if k.startswith("clip.visual.") and k not in ft]
    if lacking:
        raise ValueError(f"wise_ft: fine_tuned lacks image-tower weights {lacking[:3]} that zero_shot has; "
                         "both must be the same architecture")
    out = {}
    for k, a in zs.items():
        if k not in ft:
            continue  # e.g. the text tower of an image-only fine-tuned model: keep the zero-shot weights
        b = ft[k].to(a.device)
        if b.shape != a.shape:
            raise ValueError(f"wise_ft: {k} has shape {tuple(a.shape)} in zero_shot but {tuple(b.shape)} in "
                             "fine_tuned; both must be the same architecture")
        if alpha == 0.0:
            v = a.clone()
        elif alpha == 1.0:
            v = b.to(a.dtype).clone()
        elif a.is_floating_point():
            v = ((1.0 - alpha) * a.double() + alpha * b.double()).to(a.dtype)
        else:
            v = (b if alpha >= 0.5 else a).clone()
        out[k] = v
    merged.load_state_dict(out, strict=False)
    merged.pretrained = f"wise-ft(alpha={alpha:g}; {zero_shot.pretrained}, {fine_tuned.pretrained})"
    return merged


@dataclass
class WiseCurve:
    """What :func:`wise_ft_curve` measured.

    Attributes:
        table: one row per ``alpha``: ``alpha``, ``mAP``, ``rank1``, ``zero_shot`` (accuracy of
            the probe; NaN without a probe or a text-aligned image tower), ``chance`` (the probe's
            chance level), ``chosen`` (bool).
        alpha: the chosen ``alpha``.
        model: the model at the chosen ``alpha``.
        path: where it was written (None without ``output``).
    """

    table: pd.DataFrame
    alpha: float
    model: ClipModel
    path: Path | None = None

    def _repr_html_(self) -> str:
        return f"<p>WiSE-FT: chosen alpha = {self.alpha:g}</p>" + self.table.to_html(index=False, float_format="%.4f")

    def __repr__(self) -> str:
        return f"WiSE-FT (chosen alpha = {self.alpha:g})\n{self.table.to_string(index=False)}"


def _choose(table: pd.DataFrame, choose) -> float:
    if callable(choose):
        return float(choose(table))
    if isinstance(choose, (int, float)) and not isinstance(choose, bool):
        alpha = float(choose)
        if not np.isclose(table["alpha"], alpha).any():
            raise ValueError(f"wise_ft_curve: choose={alpha} is not one of the alphas {table['alpha'].tolist()}")
        return float(table["alpha"][np.isclose(table["alpha"], alpha)].iloc[0])
    if choose == "sum":   # the best sum of re-id mAP and zero-shot accuracy (a missing probe counts as 0)
        score = table["mAP"].fillna(0) + table["zero_shot"].fillna(0)
    elif choose == "mAP":
        score = table["mAP"].fillna(-1)
    elif choose == "zero_shot":
        score = table["zero_shot"].fillna(-1)
    else:
        raise ValueError(f"wise_ft_curve: choose={choose!r}; use 'sum', 'mAP', 'zero_shot', an alpha of the grid "
                         "or a function table -> alpha")
    return float(table["alpha"].iloc[int(np.argmax(score.to_numpy()))])


def wise_ft_curve(zero_shot: ClipModel, fine_tuned: ClipModel, dataset: ReIdDataset,
                  alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), *, column: str | None = None,
                  prompts: dict | Sequence[str] | None = None, probe_split: str | None = "query",
                  query: str = "query", gallery: str = "gallery", flip: bool = False,
                  choose: str | float | Callable[[pd.DataFrame], float] = "sum",
                  output: str | os.PathLike | None = None, batch_size: int = 64,
                  progress: bool = False) -> WiseCurve:
    """Re-id mAP and zero-shot accuracy of :func:`wise_ft` over ``alphas``; write the chosen model.

    Args:
        zero_shot, fine_tuned: as for :func:`wise_ft`.
        dataset: scored on its ``query`` / ``gallery`` splits (:func:`cliptk.evaluate`) and, with
            ``column`` and ``prompts``, probed on its ``probe_split`` rows (None = all rows)
            with :func:`cliptk.zero_shot_probe`'s rule (e.g. ``column="number"`` and the synthetic
            world's ``dict(enumerate(ct.synthetic.number_prompts()))``).
        alphas: the grid, each in ``[0, 1]``.
        choose: ``"sum"`` (the best ``mAP + zero_shot``, the default), ``"mAP"``,
            ``"zero_shot"``, an ``alpha`` of the grid, or a function ``table -> alpha``.
        output: a ``.safetensors`` path for the chosen model (:func:`cliptk.save_model`, with
            ``wise_alpha`` in its metadata); None writes nothing.
        flip, batch_size, progress: passed to the evaluation.

    Returns:
        A :class:`WiseCurve` (its ``table`` is the curve, one row per ``alpha``).

    Raises:
        ValueError: an ``alpha`` outside ``[0, 1]``, an empty grid, only one of ``column`` /
            ``prompts``, or an unknown ``choose``. KeyError: a missing split or column.
    """
    grid = sorted({_check_alpha(a) for a in alphas})
    if not grid:
        raise ValueError("wise_ft_curve: alphas is empty; pass e.g. (0, 0.25, 0.5, 0.75, 1)")
    if (column is None) != (prompts is None):
        raise ValueError("wise_ft_curve: pass both column= and prompts= for the zero-shot probe, or neither")
    probe_data = dataset.subset(probe_split) if column is not None and probe_split is not None else dataset

    rows, models = [], {}
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.filterwarnings("ignore", message="wise_ft: fine_tuned has no output projection")
        for alpha in grid:
            m = wise_ft(zero_shot, fine_tuned, alpha)
            res = evaluate(m, dataset, query=query, gallery=gallery, flip=flip, batch_size=batch_size,
                           progress=progress, cache_dir=tmp)
            acc = chance = float("nan")
            if column is not None and not m.image_only and m.projection:
                probe = zero_shot_probe(m, probe_data, column, prompts, cache_dir=tmp, batch_size=batch_size,
                                        progress=False)
                acc, chance = probe.accuracy, probe.chance
            rows.append({"alpha": alpha, "mAP": res.mAP, "rank1": float(res.cmc[1]), "zero_shot": acc,
                         "chance": chance})
            models[alpha] = m
    if column is not None and not (zero_shot.projection and fine_tuned.projection) and not zero_shot.image_only:
        warnings.warn("wise_ft_curve: the fine-tuned model has no projection, so zero_shot is NaN at every alpha",
                      UserWarning, stacklevel=2)
    table = pd.DataFrame(rows)
    alpha = _choose(table, choose)
    table["chosen"] = np.isclose(table["alpha"], alpha)
    model = models[alpha] if alpha in models else wise_ft(zero_shot, fine_tuned, alpha)
    path = None
    if output is not None:
        path = save_model(model, output, metadata={"wise_alpha": alpha})
    return WiseCurve(table, alpha, model, path)
