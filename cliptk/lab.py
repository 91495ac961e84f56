"""The losses lab: contrastive methods side by side on cached features (the "feature-cache sandbox").

Encode a labelled set **once** with a frozen model (``cliptk.embed(model, ds, cache_dir=...)``, or
any ``[N, D]`` tensor), then train a light head on the train split's features with each method and
score the query/gallery splits with :func:`cliptk.metrics.evaluate_reid`. Everything runs on CPU in
seconds per method, so batching, loss and temperature can be compared with everything else fixed
(METHODS.md §1, §3, §4, §5).

- :class:`LabMethod`: one method as data (batching + loss + temperature + head).
- :data:`DEFAULT_METHODS`: (a) random batches + InfoNCE (CLIP, Radford et al. 2021), (b) unique-id
  batches + InfoNCE (CLIP-ReIdent, Habel et al. 2022), (c) P×K + SupCon (Khosla et al. 2020),
  (d) P×K + decoupled softmax (DEXML, Gupta et al. 2024), (e) soft targets (CWCL, Srinivasa et
  al. 2023; teacher = the frozen input features), (f) guide filtering (GISTEmbed, Solatorio 2024;
  guide = the frozen input features) on random batches. :data:`TEMPERATURE_SWEEP` is (g): fixed
  temperatures against the learnable scale of (b).
- :class:`LabData`: train / query / gallery features with their pids (and camids).
- :func:`train_head` -> ``(head, history)``; :func:`evaluate_head` -> the head's query/gallery
  :class:`cliptk.metrics.ReIdResult`; :func:`run_lab` -> one table row per method plus the
  frozen-feature baseline; :func:`plot_lab` -> one plotly figure.
- :func:`batches`: the exact index batches a method trains on (for diagnostics and tests);
  :func:`false_negative_rate`: the analytic same-id rate of random batches;
  :func:`gist_mask_sweep`: GIST mask rate / precision / recall against the margin;
  :func:`planted_data`: a planted-cluster feature set that needs no images.

Fair by construction: every method gets the same head (started at the identity, so step 0 is
the frozen baseline), the same optimiser, the same number of steps per epoch and the same batch
of ``batch_size`` (anchor, positive) rows ``a``, ``b`` (``2 * batch_size`` embeddings); the P×K
batches put the first ``K/2`` images of each identity in ``a`` and the rest in ``b``. Training
runs on one CPU thread (tiny matrices), seeded, so runs repeat exactly.

Besides mAP and rank-1 the lab reports, per method, the fraction of the in-batch negatives the
loss actually uses (cross block ``a→b``, off the diagonal) that share the anchor's identity: for
random batches its expectation is ``Σ_i n_i(n_i−1) / (N(N−1))`` over identities with ``n_i``
images (``N = Σ n_i``); unique-id batches make it 0; multi-positive losses use only
other-identity columns as negatives (0); GIST drops the masked columns first. For GIST it also
reports the mask's precision and recall against the true same-identity pairs.

A loss added with :func:`cliptk.losses.register_loss` can be used as ``LabMethod(loss=name)``
at once; if it ``requires`` ``guide=`` or ``teacher=`` it gets the guide features of the batch.

One module on purpose, although it is over 600 lines: it is one concept, *the experiment*
(methods as data, their batches, one training loop, the table and its plot), and the parts only
make sense together: the fairness rules above bind the batching, the head and the loop, and the
bookkeeping of false negatives and GIST masks reads all three. The reusable pieces it builds
on live elsewhere (losses, samplers, metrics).

Example:
    >>> from cliptk import lab
    >>> data = lab.planted_data(n_train_ids=40, n_test_ids=20, per_id=6, dim=32, seed=0)
    >>> table = lab.run_lab(data, lab.DEFAULT_METHODS[:2], epochs=2, batch_size=16)
    >>> list(table.index)
    ['no training (frozen)', 'random + InfoNCE', 'unique-id + InfoNCE']
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import ReIdDataset, camids_for_evaluation
from .losses import LOSSES, ContrastiveLoss, GISTFilter, GuidedInfoNCE, LogitScale, make_loss
from .metrics import ReIdResult, evaluate_reid
from .samplers import PKSampler, UniqueIdPairSampler

__all__ = [
    "LabMethod",
    "LabData",
    "LabHead",
    "DEFAULT_METHODS",
    "TEMPERATURE_SWEEP",
    "batches",
    "train_head",
    "evaluate_head",
    "run_lab",
    "plot_lab",
    "planted_data",
    "false_negative_rate",
    "gist_mask_sweep",
]

Batching = Literal["random", "unique", "pk"]
_LAB_INPUTS = ("teacher", "guide")  # extra loss inputs the lab can make (from the guide features)
_LOSS_OPTIONS = ("label_smoothing", "margin")  # LabMethod fields passed to a loss that takes them


# --------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class LabMethod:
    """One contrastive method of the lab, as data.

    Attributes:
        name: row label in the table and legend.
        batching: ``"random"`` (random (query, positive) pairs; identities may repeat, so same-id
            in-batch negatives happen), ``"unique"`` (:class:`cliptk.samplers.UniqueIdPairSampler`,
            CLIP-ReIdent) or ``"pk"`` (:class:`cliptk.samplers.PKSampler`, ``2*batch_size/k``
            identities × ``k`` images).
        loss: a name in :data:`cliptk.losses.LOSSES`: ``"infonce"``, ``"supcon"``,
            ``"decoupled"``, ``"soft"`` (CWCL, teacher = guide features), ``"gist"`` (guide
            filtering) or one added with :func:`cliptk.losses.register_loss`. A loss that
            ``requires`` ``guide=`` or ``teacher=`` gets the guide features of the batch's two views.
        temperature: a fixed τ (logit scale ``1/τ``), or ``None`` for CLIP's learnable scale
            started at ``init_temperature``. Both must lie in ``[0.01, 1]`` (scale 1–100).
        init_temperature: start of the learnable temperature.
        batch_size: (anchor, positive) rows per batch; a batch holds ``2 * batch_size`` embeddings.
        k: images per identity for ``"pk"`` batching (even, >= 2).
        label_smoothing: ε of InfoNCE (CLIP-ReIdent uses 0.1; 0 keeps losses comparable);
            passed to any loss whose constructor takes ``label_smoothing``.
        margin: GISTEmbed margin (absolute): a candidate is masked when its guide similarity
            exceeds the positive's minus ``margin``; passed to any loss that takes ``margin``.
        target_temperature: soft targets only. ``None``: CWCL weights ``(1 + cos)/2`` of the
            guide features (Srinivasa et al., 2023); a float ``τt >= 0.025``: sharpened targets
            ``softmax_j(cos_ij / τt)`` (Dialog2Flow-style).
        head: ``"linear"`` (a ``D -> out_dim`` matrix started at the identity) or ``"mlp"``
            (that plus a residual 2-layer MLP whose last layer starts at zero); either way the
            untrained head returns the frozen features, so training starts at the baseline.
        out_dim: output size (default: the feature size).
        hidden: hidden width of the ``"mlp"`` head.
        lr, weight_decay: AdamW settings.
        group: a label used to group rows (table column, plot colour).

    Raises:
        ValueError: for an unknown batching / loss / head, a loss requiring inputs the lab
            cannot make, an odd or too small ``k``, or a temperature outside ``[0.01, 1]``.

    Example:
        >>> LabMethod("P×K + SupCon", batching="pk", loss="supcon", k=4).batching
        'pk'
    """

    name: str
    batching: Batching = "unique"
    loss: str = "infonce"
    temperature: float | None = None
    init_temperature: float = 0.07
    batch_size: int = 64
    k: int = 4
    label_smoothing: float = 0.0
    margin: float = 0.0
    target_temperature: float | None = None
    head: Literal["linear", "mlp"] = "linear"
    out_dim: int | None = None
    hidden: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.0
    group: str = ""

    def __post_init__(self) -> None:
        if self.batching not in ("random", "unique", "pk"):
            raise ValueError(f"{self.name}: batching must be 'random', 'unique' or 'pk', got {self.batching!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"{self.name}: loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        missing = [r for r in LOSSES[self.loss].requires if r not in _LAB_INPUTS]
        if missing:
            raise ValueError(f"{self.name}: loss {self.loss!r} requires {missing}, which the lab cannot make; "
                             f"it passes its guide features as {' or '.join(f'{r}=' for r in _LAB_INPUTS)}")
        if self.head not in ("linear", "mlp"):
            raise ValueError(f"{self.name}: head must be 'linear' or 'mlp', got {self.head!r}")
        if self.batch_size < 2:
            raise ValueError(f"{self.name}: batch_size must be >= 2, got {self.batch_size}")
        if self.batching == "pk" and (self.k < 2 or self.k % 2 or (2 * self.batch_size) % self.k):
            raise ValueError(
                f"{self.name}: P×K batching needs an even k >= 2 that divides 2*batch_size="
                f"{2 * self.batch_size}, got k={self.k}"
            )
        for what, tau in (("temperature", self.temperature), ("init_temperature", self.init_temperature)):
            if tau is not None and not 0.01 <= tau <= 1.0:
                raise ValueError(f"{self.name}: {what}={tau} is outside [0.01, 1] (logit scale 1 to 100)")
        if self.target_temperature is not None and self.target_temperature < 0.025:
            raise ValueError(
                f"{self.name}: target_temperature={self.target_temperature} < 0.025 underflows float32 targets"
            )

    @property
    def learnable(self) -> bool:
        """True when the logit scale is trained (``temperature is None``)."""
        return self.temperature is None

    def replace(self, **changes) -> LabMethod:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


DEFAULT_METHODS: tuple[LabMethod, ...] = (
    LabMethod("random + InfoNCE", batching="random", loss="infonce", group="batching"),
    LabMethod("unique-id + InfoNCE", batching="unique", loss="infonce", group="batching"),
    LabMethod("P×K + SupCon", batching="pk", loss="supcon", group="multi-positive"),
    LabMethod("P×K + decoupled", batching="pk", loss="decoupled", group="multi-positive"),
    LabMethod("soft targets (CWCL)", batching="random", loss="soft", group="label-free"),
    LabMethod("GIST filter", batching="random", loss="gist", margin=0.0, group="label-free"),
)
"""(a)-(f) of the lab; every method uses the same head, batch size, learning rate and a learnable
temperature started at 0.07 (no label smoothing, GIST margin 0 as in sentence-transformers'
``GISTEmbedLoss``). Add :data:`TEMPERATURE_SWEEP` for (g)."""

TEMPERATURE_SWEEP: tuple[LabMethod, ...] = tuple(
    LabMethod(f"unique-id + InfoNCE, τ={tau:g} fixed", batching="unique", loss="infonce", temperature=tau,
              group="temperature")
    for tau in (0.01, 0.03, 0.1, 0.3)
)
"""(g): unique-id InfoNCE at fixed temperatures, to compare with the learnable scale of (b)."""


@dataclass
class LabData:
    """Frozen features of a re-id set: train split to fit heads on, query/gallery to score them.

    Attributes:
        train, query, gallery: ``[N, D]`` float features (rows need not be normalised).
        train_pids, query_pids, gallery_pids: identity labels, one per row.
        query_camids, gallery_camids: camera ids (or ``None``: every pair cross-camera).
        guide: ``[N_train, D']`` frozen features for the label-free methods (CWCL teacher, GIST
            guide); ``None`` = the train features themselves.

    Raises:
        ValueError: when a split's row counts disagree (the message names the split).

    Example (not run by the doctests: it needs a model and a dataset on disk):
        >>> feats = embed(model, ds, cache_dir="runs/cache")          # doctest: +SKIP
        >>> data = LabData.from_dataset(ds, feats)                    # doctest: +SKIP
    """

    train: Tensor
    train_pids: np.ndarray
    query: Tensor
    query_pids: np.ndarray
    gallery: Tensor
    gallery_pids: np.ndarray
    query_camids: np.ndarray | None = None
    gallery_camids: np.ndarray | None = None
    guide: Tensor | None = None

    def __post_init__(self) -> None:
        for split in ("train", "query", "gallery"):
            x = torch.as_tensor(getattr(self, split), dtype=torch.float32)
            if x.ndim != 2:
                raise ValueError(f"LabData: {split} features must be [N, D], got shape {tuple(x.shape)}")
            setattr(self, split, x)
            pids = np.asarray(getattr(self, f"{split}_pids"))
            if pids.shape != (x.shape[0],):
                raise ValueError(f"LabData: {split} has {x.shape[0]} rows but {pids.shape} pids")
            setattr(self, f"{split}_pids", pids)
        if self.query.shape[1] != self.train.shape[1] or self.gallery.shape[1] != self.train.shape[1]:
            raise ValueError(
                f"LabData: feature sizes differ (train {self.train.shape[1]}, query {self.query.shape[1]}, "
                f"gallery {self.gallery.shape[1]}); embed all splits with the same model"
            )
        if self.guide is not None:
            self.guide = torch.as_tensor(self.guide, dtype=torch.float32)
            if self.guide.ndim != 2 or self.guide.shape[0] != self.train.shape[0]:
                raise ValueError(
                    f"LabData: guide must be [N_train={self.train.shape[0]}, D'], got {tuple(self.guide.shape)}"
                )

    @classmethod
    def from_dataset(cls, dataset: ReIdDataset, features: Tensor | np.ndarray, *, train: str = "train",
                     query: str = "query", gallery: str = "gallery",
                     guide: Tensor | np.ndarray | None = None) -> LabData:
        """Split ``features`` (``[len(dataset), D]``, dataset row order) by ``dataset``'s split column.

        ``guide`` (optional) is aligned with ``dataset`` too; its train rows become the guide.

        Raises:
            ValueError: if ``features`` does not have one row per dataset row, or holds NaN rows
                in a used split (unreadable images; leave them out with ``dataset.without_unreadable(features)``).
            KeyError: if a split is missing (the message lists the available ones).
        """
        feats = torch.as_tensor(features, dtype=torch.float32)
        if feats.ndim != 2 or feats.shape[0] != len(dataset):
            raise ValueError(
                f"LabData.from_dataset: {dataset.name} has {len(dataset)} rows but features have shape "
                f"{tuple(feats.shape)}; embed the same dataset object"
            )
        parts = {}
        for role, split in (("train", train), ("query", query), ("gallery", gallery)):
            if split not in dataset.split_names:
                raise KeyError(f"LabData.from_dataset: {dataset.name} has no split {split!r}; "
                               f"available: {dataset.split_names}")
            rows = np.flatnonzero(dataset.splits == split)
            x = feats[rows]
            if torch.isnan(x).any():
                raise ValueError(f"LabData.from_dataset: split {split!r} has NaN features (unreadable images); "
                                 "leave them out first: dataset, features = dataset.without_unreadable(features)")
            parts[role] = (x, dataset.pids[rows], dataset.camids[rows])
        # unknown cameras: no camera filtering (the query image itself is never a match)
        qc, gc, _ = camids_for_evaluation(dataset.subset(query), dataset.subset(gallery))
        parts["query"], parts["gallery"] = (*parts["query"][:2], qc), (*parts["gallery"][:2], gc)
        g = None
        if guide is not None:
            g = torch.as_tensor(guide, dtype=torch.float32)[np.flatnonzero(dataset.splits == train)]
        return cls(parts["train"][0], parts["train"][1], parts["query"][0], parts["query"][1],
                   parts["gallery"][0], parts["gallery"][1], parts["query"][2], parts["gallery"][2], g)

    def __repr__(self) -> str:
        return (f"LabData(train={tuple(self.train.shape)}, {len(np.unique(self.train_pids))} ids; "
                f"query={self.query.shape[0]}, gallery={self.gallery.shape[0]}, "
                f"{len(np.unique(self.query_pids))} ids; "
                f"guide={'own' if self.guide is None else tuple(self.guide.shape)})")


# --------------------------------------------------------------------------- head
class LabHead(nn.Module):
    """A light projection head on frozen features, with its own logit scale.

    ``linear``: ``y = W x`` with ``W`` started at the identity (the first ``min(D, out_dim)``
    coordinates); ``mlp``: ``y = W x + MLP(x)`` with a 2-layer ReLU MLP whose last layer starts
    at zero. So an untrained head returns (the leading coordinates of) its input, and the frozen
    features are the starting point of every method. ``logit_scale`` is a
    :class:`cliptk.losses.LogitScale` (learnable or fixed).

    Example:
        >>> h = LabHead(8, kind="mlp")
        >>> x = torch.randn(3, 8); torch.allclose(h(x), x)
        True
    """

    def __init__(self, dim: int, out_dim: int | None = None, kind: Literal["linear", "mlp"] = "linear",
                 hidden: int = 256, temperature: float | None = None, init_temperature: float = 0.07) -> None:
        super().__init__()
        out_dim = out_dim or dim
        self.kind = kind
        self.proj = nn.Linear(dim, out_dim, bias=False)
        nn.init.eye_(self.proj.weight)
        self.mlp: nn.Module | None = None
        if kind == "mlp":
            last = nn.Linear(hidden, out_dim)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), last)
        tau = init_temperature if temperature is None else temperature
        self.logit_scale = LogitScale(init=1.0 / tau, learnable=temperature is None)

    def forward(self, x: Tensor) -> Tensor:
        y = self.proj(x)
        return y if self.mlp is None else y + self.mlp(x)

    @property
    def temperature(self) -> float:
        """Current temperature ``1 / logit_scale``."""
        return self.logit_scale.temperature


# --------------------------------------------------------------------------- batches
def _codes(pids: Sequence | np.ndarray) -> np.ndarray:
    arr = np.asarray(pids)
    if arr.ndim != 1:
        raise ValueError(f"pids must be 1-D, got shape {arr.shape}")
    return np.unique(arr, return_inverse=True)[1].reshape(-1)


def _random_pairs(codes: np.ndarray, batch_size: int,
                  rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Random (query, positive) pairs: every image with a same-id partner is a query once, in random order."""
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    eligible = np.flatnonzero(counts[codes] >= 2)
    queries = rng.permutation(eligible)
    c = codes[queries]
    # rank of each query inside its identity, then a random other member of the identity
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - np.repeat(starts, counts)
    shift = rng.integers(1, counts[c])  # 1 .. n_i - 1
    positives = order[starts[c] + (rank[queries] + shift) % counts[c]]
    for s in range(0, len(queries) - batch_size + 1, batch_size):
        yield queries[s:s + batch_size], positives[s:s + batch_size]


def batches(pids: Sequence | np.ndarray, method: LabMethod, seed: int = 0,
            epoch: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (anchor rows, positive rows) index batches ``method`` trains on in ``epoch``.

    Indices point into ``pids`` (and the train features). Deterministic in ``(seed, epoch)``.
    Identities with one image are never anchors. Every batching gets the same number of batches
    per epoch, ``⌊N₂ / batch_size⌋`` with ``N₂`` the images of identities that have two or more,
    so methods are compared at equal steps and equal batch size:

    - ``"random"``: a random order of those images, each paired with a random other image of its
      identity (each image anchors once per epoch); identities can repeat inside a batch.
    - ``"unique"``: :class:`cliptk.samplers.UniqueIdPairSampler` (``per_epoch="images"``).
    - ``"pk"``: :class:`cliptk.samplers.PKSampler` with ``P = 2*batch_size/k``; the first ``k/2``
      images of each identity form ``a``, the rest ``b`` (so row ``i`` of ``a`` and ``b`` share
      an identity).

    The samplers are seeded from ``(seed, epoch)`` and run for as many of their own epochs as it
    takes to fill the lab epoch (a P×K sampler epoch is shorter: it uses ``⌊n_i/k⌋`` groups per
    identity).

    Raises:
        ValueError: if there are too few identities for the batch size (from the samplers).

    Example:
        >>> a, b = batches([0, 0, 1, 1, 2, 2], LabMethod("x", batching="random", batch_size=2))[0]
        >>> len(a), len(b)
        (2, 2)
    """
    codes = _codes(pids)
    bs = method.batch_size
    counts = np.bincount(codes)
    n_steps = int(counts[counts >= 2].sum()) // bs
    if method.batching == "random":
        rng = np.random.default_rng([seed, epoch, 7])
        return list(_random_pairs(codes, bs, rng))
    sub_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    if method.batching == "unique":
        sampler = UniqueIdPairSampler(codes, batch_size=bs, seed=sub_seed, drop_last=True)
    else:
        sampler = PKSampler(codes, p=2 * bs // method.k, k=method.k, seed=sub_seed, drop_last=True)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    sub_epoch = 0
    while len(out) < n_steps:
        sampler.set_epoch(sub_epoch)
        for flat in sampler:
            if method.batching == "unique":
                out.append((np.asarray(flat[:bs]), np.asarray(flat[bs:])))
            else:
                grid = np.asarray(flat).reshape(-1, method.k)
                out.append((grid[:, : method.k // 2].reshape(-1), grid[:, method.k // 2:].reshape(-1)))
        if len(sampler) == 0:
            break
        sub_epoch += 1
    return out[:n_steps]


def false_negative_rate(pids: Sequence | np.ndarray) -> float:
    """Expected fraction of same-identity in-batch negatives under random batching.

    Anchors are a uniformly random order of the images, so two different rows of a batch are a
    uniformly random pair of distinct images: ``Σ_i n_i(n_i−1) / (N(N−1))`` over identities with
    at least two images (``n_i`` images each, ``N = Σ n_i``; single-image identities never anchor).

    Example:
        >>> false_negative_rate([0, 0, 1, 1])   # 2·(2·1) / (4·3)
        0.3333333333333333
    """
    n = np.bincount(_codes(pids))
    n = n[n >= 2].astype(np.float64)
    total = n.sum()
    return float((n * (n - 1)).sum() / (total * (total - 1))) if total > 1 else 0.0


def gist_mask_sweep(guide: Tensor | np.ndarray, pids: Sequence | np.ndarray,
                    margins: Sequence[float] = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1), *, batch_size: int = 64,
                    seed: int = 0, epoch: int = 1) -> pd.DataFrame:
    """How the GISTEmbed mask trades precision for recall as the margin grows (METHODS.md §3).

    Applies :class:`cliptk.losses.GISTFilter` (absolute margin) with the frozen ``guide``
    features to the ``a→b`` blocks of one epoch of random batches (the batches
    :func:`train_head` uses in ``epoch`` for ``batching="random"``) and counts, over the
    off-diagonal pairs: ``mask_rate`` = masked / all, ``precision`` = masked same-identity /
    masked, ``recall`` = masked same-identity / same-identity. ``same_id_rate`` is the fraction
    of same-identity pairs (the false negatives plain InfoNCE would keep).

    Returns:
        One row per margin: ``margin``, ``mask_rate``, ``precision``, ``recall``, ``same_id_rate``.

    Example:
        >>> d = planted_data(n_train_ids=20, n_test_ids=5, per_id=4, dim=16)
        >>> gist_mask_sweep(d.train, d.train_pids, margins=[0.0, 0.1], batch_size=16)["margin"].tolist()
        [0.0, 0.1]
    """
    g = torch.as_tensor(guide, dtype=torch.float32)
    codes = torch.as_tensor(_codes(pids))
    if g.ndim != 2 or g.shape[0] != len(codes):
        raise ValueError(f"guide must be [N, D'] with N = len(pids) = {len(codes)}, got {tuple(g.shape)}")
    plan = batches(codes.numpy(), LabMethod("gist sweep", batching="random", batch_size=batch_size), seed, epoch)
    rows = []
    for margin in margins:
        filt = GISTFilter(margin)
        masked = tp = same_n = pairs = 0
        for ia, ib in plan:
            mask = filt(g[ia], g[ib])
            same = codes[ia][:, None] == codes[ib][None, :]
            same.fill_diagonal_(False)
            masked += int(mask.sum())
            tp += int((mask & same).sum())
            same_n += int(same.sum())
            pairs += len(ia) * (len(ia) - 1)
        rows.append({"margin": float(margin), "mask_rate": masked / pairs,
                     "precision": tp / masked if masked else float("nan"),
                     "recall": tp / same_n if same_n else float("nan"), "same_id_rate": same_n / pairs})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- training
@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one CPU thread (tiny matrices: threads only add overhead, and the result no
    longer depends on the machine's core count); restore the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _soft_targets(ta: Tensor, tb: Tensor, tau_t: float) -> Tensor:
    """[B, B] non-negative targets whose rows (and columns) normalise to softmax(cos / τt)."""
    c = F.normalize(ta, dim=-1) @ F.normalize(tb, dim=-1).T
    return torch.exp((c - c.max()) / tau_t)


def evaluate_head(head: nn.Module | None, data: LabData) -> ReIdResult:
    """Re-id mAP / CMC of ``head(query)`` vs ``head(gallery)``; ``head=None`` scores the frozen features.

    Example:
        >>> data = planted_data(n_train_ids=10, n_test_ids=10, per_id=4, dim=16)
        >>> 0.0 < evaluate_head(None, data).mAP <= 1.0
        True
    """
    with torch.no_grad():
        q = data.query if head is None else head(data.query)
        g = data.gallery if head is None else head(data.gallery)
    return evaluate_reid(q, g, data.query_pids, data.gallery_pids, data.query_camids, data.gallery_camids)


def train_head(train_feats: Tensor | np.ndarray, train_pids: Sequence | np.ndarray, method: LabMethod,
               *, epochs: int = 10, seed: int = 0, guide: Tensor | np.ndarray | None = None,
               eval_data: LabData | None = None) -> tuple[LabHead, pd.DataFrame]:
    """Train a :class:`LabHead` on frozen features with one method; return it and its history.

    Each epoch runs the batches of :func:`batches`: the head maps ``feats[a]`` and ``feats[b]``,
    and the method's loss (:func:`cliptk.losses.make_loss`) is called as
    ``loss(za, zb, logit_scale, ids=..., **extra)`` with the inputs the loss ``requires``
    (``teacher=`` / ``targets=`` for soft, ``guide=`` for GIST) taken from the frozen ``guide``
    features (default: ``train_feats``).
    AdamW, one step per batch; a learnable logit scale is clamped to [1, 100] after each step.
    Deterministic on CPU for a given ``seed`` (the caller's global RNG state is left unchanged).

    Args:
        train_feats: ``[N, D]`` frozen features.
        train_pids: ``[N]`` identity labels.
        method: the :class:`LabMethod`.
        epochs: passes over the training batches.
        seed: seeds the batches and the head's initialisation.
        guide: ``[N, D']`` frozen teacher / guide features for ``"soft"`` and ``"gist"``.
        eval_data: if given, query/gallery mAP and rank-1 are recorded after every epoch
            (and before training, as epoch 0).

    Returns:
        ``(head, history)``; ``history`` has one row per epoch (0 = before training) with
        ``loss`` (mean over the epoch's batches), ``temperature``, ``false_neg`` (fraction of the
        used in-batch negatives that share the anchor's identity), ``mask_rate``,
        ``mask_precision``, ``mask_recall`` (GIST only, else NaN; micro-averaged over the epoch's
        batches, off-diagonal pairs of the ``a→b`` block), ``steps``, and ``mAP`` / ``rank-1``
        when ``eval_data`` is given.

    Raises:
        ValueError: on mismatched shapes, ``epochs < 0``, or too few identities for the batch size.

    Example:
        >>> d = planted_data(n_train_ids=30, n_test_ids=10, per_id=4, dim=16)
        >>> head, hist = train_head(d.train, d.train_pids, LabMethod("b", batch_size=8), epochs=1)
        >>> list(hist["epoch"])
        [0, 1]
    """
    x = torch.as_tensor(train_feats, dtype=torch.float32)
    codes = _codes(train_pids)
    if x.ndim != 2 or x.shape[0] != len(codes):
        raise ValueError(f"train_feats must be [N, D] with N = len(train_pids) = {len(codes)}, got {tuple(x.shape)}")
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    g = x if guide is None else torch.as_tensor(guide, dtype=torch.float32)
    if g.ndim != 2 or g.shape[0] != x.shape[0]:
        raise ValueError(f"guide must be [N={x.shape[0]}, D'], got {tuple(g.shape)}")
    with _one_thread():
        return _train_head_loop(x, codes, g, method, epochs, seed, eval_data)


def _lab_loss(method: LabMethod) -> ContrastiveLoss:
    """The method's loss, given the :class:`LabMethod` options (``label_smoothing``, ``margin``)
    that its constructor takes."""
    params = inspect.signature(LOSSES[method.loss].__init__).parameters
    return make_loss(method.loss, **{k: getattr(method, k) for k in _LOSS_OPTIONS if k in params})


def _frozen_inputs(loss_fn: ContrastiveLoss, method: LabMethod, ga: Tensor, gb: Tensor) -> dict[str, Any]:
    """The extra inputs ``loss_fn.requires``, made from the guide features of the batch's two views:
    ``(ga, gb)`` for ``guide`` and ``teacher``; soft targets in place of the teacher when the method
    sets ``target_temperature``."""
    extra: dict[str, Any] = {}
    for name in loss_fn.requires:
        if name == "teacher" and method.target_temperature is not None and "targets" in loss_fn.extras:
            extra["targets"] = _soft_targets(ga, gb, method.target_temperature)
        else:
            extra[name] = (ga, gb)
    return extra


def _train_head_loop(x: Tensor, codes: np.ndarray, g: Tensor, method: LabMethod, epochs: int, seed: int,
                     eval_data: LabData | None) -> tuple[LabHead, pd.DataFrame]:
    """The training loop of :func:`train_head` (inputs already checked)."""
    ids_all = torch.as_tensor(codes)
    loss_fn = _lab_loss(method)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = LabHead(x.shape[1], method.out_dim, method.head, method.hidden, method.temperature,
                       method.init_temperature)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=method.lr,
                            weight_decay=method.weight_decay)

    rows = []

    def record(epoch: int, stats: dict) -> None:
        row = {"epoch": epoch, **stats, "temperature": head.temperature}
        if eval_data is not None:
            res = evaluate_head(head, eval_data)
            row.update({"mAP": res.mAP, "rank-1": res.cmc[1]})
        rows.append(row)

    nan = float("nan")
    record(0, {"loss": nan, "false_neg": nan, "mask_rate": nan, "mask_precision": nan, "mask_recall": nan,
               "steps": 0})
    for epoch in range(1, epochs + 1):
        head.train()
        tot = dict(loss=0.0, neg=0, fneg=0, masked=0, tp=0, same=0, pairs=0)
        plan = batches(codes, method, seed, epoch)
        if not plan:
            raise ValueError(f"{method.name}: no complete batch of {method.batch_size} pairs; lower batch_size")
        for ia, ib in plan:
            ia_t, ib_t = torch.as_tensor(ia), torch.as_tensor(ib)
            ids = ids_all[ia_t]
            extra = _frozen_inputs(loss_fn, method, g[ia_t], g[ib_t])
            za, zb = head(x[ia_t]), head(x[ib_t])
            loss = loss_fn(za, zb, head.logit_scale(), ids=ids, **extra)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            head.logit_scale.clamp_()
            # bookkeeping on the a→b block, off the diagonal
            with torch.no_grad():
                same = ids[:, None] == ids_all[ib_t][None, :]
                off = ~torch.eye(len(ia), dtype=torch.bool)
                neg = off & ~same if loss_fn.needs_ids else off.clone()
                if isinstance(loss_fn, GuidedInfoNCE):
                    mask = loss_fn.last_mask & off
                    neg &= ~mask
                    tot["masked"] += int(mask.sum())
                    tot["tp"] += int((mask & same).sum())
                tot["same"] += int((same & off).sum())
                tot["pairs"] += int(off.sum())
                tot["neg"] += int(neg.sum())
                tot["fneg"] += int((neg & same).sum())
            tot["loss"] += loss.item()
        gist = isinstance(loss_fn, GuidedInfoNCE)
        record(epoch, {
            "loss": tot["loss"] / len(plan),
            "false_neg": tot["fneg"] / tot["neg"] if tot["neg"] else 0.0,
            "mask_rate": tot["masked"] / tot["pairs"] if gist else nan,
            "mask_precision": (tot["tp"] / tot["masked"] if tot["masked"] else nan) if gist else nan,
            "mask_recall": (tot["tp"] / tot["same"] if tot["same"] else nan) if gist else nan,
            "steps": len(plan),
        })
    head.eval()
    cols = ["epoch", "loss", "temperature", "false_neg", "mask_rate", "mask_precision", "mask_recall", "steps"]
    cols += [c for c in ("mAP", "rank-1") if eval_data is not None]
    return head, pd.DataFrame(rows)[cols]


# --------------------------------------------------------------------------- the lab
def _weighted(hist: pd.DataFrame, col: str) -> float:
    """Mean of a per-epoch rate over the training epochs (epochs have near-equal step counts)."""
    h = hist[hist["epoch"] > 0]
    v = h[col].to_numpy(dtype=float)
    w = h["steps"].to_numpy(dtype=float)
    ok = ~np.isnan(v)
    return float(np.average(v[ok], weights=w[ok])) if ok.any() else float("nan")


def run_lab(data: LabData | ReIdDataset | tuple[ReIdDataset, Tensor | np.ndarray],
            methods: Sequence[LabMethod] = DEFAULT_METHODS + TEMPERATURE_SWEEP, *,
            features: Tensor | np.ndarray | None = None, epochs: int = 10, seed: int = 0,
            return_histories: bool = False, progress: bool = False,
            **overrides) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Train a head per method on the same frozen features and tabulate query/gallery results.

    Args:
        data: a :class:`LabData`; or a :class:`cliptk.data.ReIdDataset` with ``features=``
            (``[len(dataset), D]`` in dataset order, e.g. ``cliptk.embed(model, dataset,
            cache_dir=...)``); or the pair ``(dataset, features)``. The ``train``, ``query`` and
            ``gallery`` splits are used (:meth:`LabData.from_dataset`).
        methods: the :class:`LabMethod` s to compare (names must be unique).
        features: see ``data``.
        epochs, seed: passed to :func:`train_head` (same seed for every method).
        return_histories: also return ``{method name: history}`` (for :func:`plot_lab`).
        progress: print one line per method.
        **overrides: :class:`LabMethod` fields set on every method (e.g. ``batch_size=32``).

    Returns:
        A DataFrame indexed by ``method`` with the frozen baseline first (``no training
        (frozen)``), then one row per method: ``group``, ``batching``, ``loss``, ``temperature``
        (final τ), ``mAP``, ``rank-1``, ``rank-5``, ``ΔmAP`` (vs the baseline), ``false_neg``,
        ``mask_rate``, ``mask_precision``, ``mask_recall`` (averaged over training, see
        :func:`train_head`) and ``seconds`` (training time).

    Raises:
        TypeError: ``methods`` holds something other than :class:`LabMethod` (e.g. features
            passed positionally: use ``features=``), or ``features`` given with a :class:`LabData`.
        ValueError: duplicate method names, missing ``features`` for a dataset, or a
            :class:`LabMethod` field error from ``overrides``.

    Example:
        >>> data = planted_data(n_train_ids=40, n_test_ids=20, per_id=6, dim=32)
        >>> t = run_lab(data, DEFAULT_METHODS[:1], epochs=1, batch_size=16)
        >>> t.loc["random + InfoNCE", "batching"]
        'random'
    """
    if isinstance(methods, LabMethod):
        methods = [methods]
    bad = [type(m).__name__ for m in methods if not isinstance(m, LabMethod)] if isinstance(methods, Sequence) else [
        type(methods).__name__]
    if bad:
        raise TypeError(f"run_lab: methods must be LabMethod objects, got {bad[:3]}; "
                        "pass features of a dataset as features=, not as the second argument")
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], ReIdDataset):
        if features is not None:
            raise TypeError("run_lab: give the features once, either in the (dataset, features) pair or as features=")
        data, features = data
    if isinstance(data, ReIdDataset):
        if features is None:
            raise ValueError("run_lab: pass features=[len(dataset), D] with a dataset, e.g. ct.embed(model, ds)")
        data = LabData.from_dataset(data, features)
    elif not isinstance(data, LabData):
        raise TypeError(f"run_lab: data must be a LabData, a ReIdDataset or (dataset, features), "
                        f"got {type(data).__name__}")
    elif features is not None:
        raise TypeError("run_lab: features= is only for a dataset; a LabData already holds its features")
    names = [m.name for m in methods]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"run_lab: duplicate method names {dup}; give each LabMethod its own name")
    methods = [m.replace(**overrides) if overrides else m for m in methods]

    base = evaluate_head(None, data)
    rows = [{"method": "no training (frozen)", "group": "baseline", "batching": "", "loss": "",
             "temperature": float("nan"), "mAP": base.mAP, "rank-1": base.cmc[1], "rank-5": base.cmc[5],
             "ΔmAP": 0.0, "false_neg": float("nan"), "mask_rate": float("nan"),
             "mask_precision": float("nan"), "mask_recall": float("nan"), "seconds": 0.0}]
    histories: dict[str, pd.DataFrame] = {}
    for m in methods:
        t0 = time.perf_counter()
        head, hist = train_head(data.train, data.train_pids, m, epochs=epochs, seed=seed, guide=data.guide,
                                eval_data=data)
        seconds = time.perf_counter() - t0
        res = evaluate_head(head, data)
        histories[m.name] = hist
        rows.append({"method": m.name, "group": m.group, "batching": m.batching, "loss": m.loss,
                     "temperature": head.temperature, "mAP": res.mAP, "rank-1": res.cmc[1],
                     "rank-5": res.cmc[5], "ΔmAP": res.mAP - base.mAP,
                     **{c: _weighted(hist, c) for c in ("false_neg", "mask_rate", "mask_precision", "mask_recall")},
                     "seconds": seconds})
        if progress:
            print(f"{m.name:<40} mAP {res.mAP:.3f}  rank-1 {res.cmc[1]:.3f}  ({seconds:.1f}s)")
    table = pd.DataFrame(rows).set_index("method")
    return (table, histories) if return_histories else table


def plot_lab(results: pd.DataFrame | Mapping[str, pd.DataFrame], metric: str = "mAP", title: str | None = None):
    """One plotly figure of the lab.

    - a table from :func:`run_lab`: one horizontal bar per method, coloured by group, drawn from
      the frozen baseline (dashed line) to the method's ``metric``, so its length and direction
      are what training added;
    - a ``{name: history}`` mapping (``run_lab(..., return_histories=True)[1]``): ``metric`` per
      epoch, one line per method (epoch 0 is the frozen baseline for every method).

    Raises:
        KeyError: if ``metric`` is not a column (histories need ``eval_data`` for mAP/rank-1).

    Example:
        >>> data = planted_data(n_train_ids=40, n_test_ids=20, per_id=6, dim=32)
        >>> fig = plot_lab(run_lab(data, DEFAULT_METHODS[:2], epochs=1, batch_size=16))
        >>> len(fig.data) >= 1
        True
    """
    import plotly.graph_objects as go  # here, not at the top: `import cliptk` must not load plotly

    if isinstance(results, pd.DataFrame):
        if metric not in results.columns:
            raise KeyError(f"plot_lab: no column {metric!r}; columns: {list(results.columns)}")
        t = results.reset_index()
        base = t[t["group"] == "baseline"]
        rest = t[t["group"] != "baseline"]
        extra = [c for c in ("temperature", "false_neg", "mask_precision", "mask_recall") if c in t.columns]
        b0 = float(base[metric].iloc[0]) if len(base) else 0.0
        fig = go.Figure()
        for group, part in rest.groupby("group", sort=False):
            fig.add_trace(go.Bar(
                x=part[metric] - b0, base=b0, y=part["method"], orientation="h", name=group or "methods",
                customdata=part[[metric, *extra]].to_numpy(),
                hovertemplate="%{y}<br>" + f"{metric} %{{customdata[0]:.3f}}"
                + "".join(f"<br>{c} %{{customdata[{i + 1}]:.3f}}" for i, c in enumerate(extra)) + "<extra></extra>"))
        if len(base):
            fig.add_vline(x=b0, line_dash="dash", line_color="grey", annotation_text="no training",
                          annotation_position="top")
        lo, hi = float(t[metric].min()), float(t[metric].max())
        pad = 0.05 * (hi - lo) + 0.01
        fig.update_yaxes(categoryorder="array", categoryarray=list(rest["method"])[::-1])
        fig.update_xaxes(title=metric, range=[lo - pad, hi + pad])
        fig.update_layout(title=title or f"{metric} per method; bars start at the frozen features (dashed)",
                          barmode="group", height=160 + 26 * len(rest), legend_title_text="")
        return fig
    fig = go.Figure()
    for name, hist in results.items():
        if metric not in hist.columns:
            raise KeyError(f"plot_lab: history of {name!r} has no {metric!r} column; "
                           "train with eval_data to record mAP / rank-1")
        fig.add_trace(go.Scatter(x=hist["epoch"], y=hist[metric], mode="lines+markers", name=name))
    fig.update_layout(title=title or f"{metric} per epoch (epoch 0 = frozen features)", xaxis_title="epoch",
                      yaxis_title=metric)
    return fig


# --------------------------------------------------------------------------- synthetic features
def planted_data(n_train_ids: int = 200, n_test_ids: int = 50, per_id: int = 8, dim: int = 64, *,
                 n_cameras: int = 4, nuisance: float = 1.2, noise: float = 0.6, seed: int = 0) -> LabData:
    """Planted-cluster features: identity centres plus a camera nuisance a linear head can remove.

    Feature of image ``j`` of identity ``i`` seen by camera ``c``:
    ``centre_i + nuisance · cam_c + noise · ε`` with ``centre_i`` a random unit vector,
    ``ε ~ N(0, I/dim)`` and the camera vectors ``cam_c`` random unit vectors in a fixed
    4-dimensional subspace (shared by train and test). Cosine ranking on these features confuses same-camera images of different identities;
    projecting out the camera subspace (which a trained linear head can learn) fixes most of it.
    Train and test identities are disjoint. Test: image 0 of each identity (camera 0) is the
    query, the others (cameras 1..) the gallery.

    Example:
        >>> d = planted_data(n_train_ids=10, n_test_ids=5, per_id=4, dim=16)
        >>> d.train.shape, d.query.shape, d.gallery.shape
        (torch.Size([40, 16]), torch.Size([5, 16]), torch.Size([15, 16]))
    """
    if per_id < 2 or n_cameras < 2:
        raise ValueError(f"planted_data: need per_id >= 2 and n_cameras >= 2, got {per_id}, {n_cameras}")
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, min(4, dim))))[0]  # [dim, 4] orthonormal
    cams = rng.normal(size=(n_cameras, basis.shape[1])) @ basis.T
    cams /= np.linalg.norm(cams, axis=1, keepdims=True)

    def split(n_ids: int, first_pid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centres = rng.normal(size=(n_ids, dim))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        pid = np.repeat(np.arange(n_ids), per_id)
        cam = np.tile(np.arange(per_id) % n_cameras, n_ids)
        eps = rng.normal(size=(n_ids * per_id, dim)) / math.sqrt(dim)
        x = centres[pid] + nuisance * cams[cam] + noise * eps
        return x.astype(np.float32), pid + first_pid, cam

    xt, pt, _ = split(n_train_ids, 0)
    xs, ps, cs = split(n_test_ids, n_train_ids)
    is_query = np.zeros(len(ps), dtype=bool)
    is_query[::per_id] = True  # image 0 of each identity, camera 0
    g = ~is_query
    return LabData(torch.from_numpy(xt), pt, torch.from_numpy(xs[is_query]), ps[is_query],
                   torch.from_numpy(xs[g]), ps[g], cs[is_query], cs[g])
