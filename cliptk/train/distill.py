"""Distillation from cached teacher embeddings (MobileCLIP, Vasu et al., CVPR 2024).

The student learns to reproduce the teacher's **similarity matrix** of each batch, besides (or
instead of) the contrastive loss. MobileCLIP's "reinforced dataset" stores the teacher's
embeddings of every augmentation of every image once, so training never runs the teacher:

- :func:`cache_teacher_embeddings` embeds the training rows with the teacher once per **view**
  the training loop can produce. cliptk's only training augmentation is the joint horizontal flip
  (:func:`cliptk.train.joint_flip`), so the views are ``"plain"`` and ``"flip"`` and the cache
  covers every image exactly as the student sees it. A :class:`TeacherCache` is saved and loaded
  as one safetensors file.
- :class:`DistillLoss` (registered as ``"distill"``):
  ``L = λ_c·½[CE(S_S, I) + CE(S_Sᵀ, I)] + λ_d·½[CE(softmax(S_T), S_S) + CE(softmax(S_Tᵀ), S_Sᵀ)]``
  with ``S_S = s·âb̂ᵀ`` the student's and ``S_T = s_T·t̂_a t̂_bᵀ`` the teacher's logits
  (METHODS.md §6; open_clip's ``DistillClipLoss``, which MobileCLIP's code patches). For
  image–image pairs the query and positive embeddings take the places of CLIP's image and text
  features. MobileCLIP's DataCompDR runs use ``λ = (0, 1)``, pure distillation.
- :class:`DistillTrainer` — a :class:`cliptk.train.Trainer` whose :meth:`compute_loss` looks the
  batch's teacher embeddings up in the cache (by row and by whether :func:`joint_flip` flipped
  that pair). Configure it with :meth:`DistillTrainer.using` and run it with the same
  :func:`cliptk.train.fit`, configs and checkpoints.
- :func:`neighbour_agreement` — how often the student's nearest neighbour of an image is the
  teacher's (top-1 agreement).

Example: the loss on random embeddings; λ = (1, 0) is plain InfoNCE:
    >>> import torch
    >>> from cliptk.losses import InfoNCE
    >>> a, b, ta, tb = (torch.randn(6, 8) for _ in range(4))
    >>> kd = DistillLoss(contrastive_weight=1.0, distill_weight=0.0)
    >>> torch.allclose(kd(a, b, 10.0, teacher=(ta, tb)), InfoNCE(label_smoothing=0.0)(a, b, 10.0))
    True
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .._util import atomic_path, world
from ..data import ReIdDataset
from ..gather import gather_no_grad
from ..losses import ContrastiveLoss, Views, register_loss
from ..models import ClipModel, load_model
from .batches import Batch, PairImages, joint_flip
from .checkpoint import find_weights
from .config import TrainConfig
from .loop import Trainer

__all__ = ["DistillLoss", "DistillTrainer", "TeacherCache", "cache_teacher_embeddings", "neighbour_agreement",
           "VIEWS"]

#: The views of a training image the loop can produce: ``joint_flip`` mirrors a pair or not.
VIEWS = ("plain", "flip")


# =============================================================================== the loss
def _soft_ce(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """``−1/B Σ_i Σ_j softmax(T)_ij log softmax(S)_ij`` (open_clip's ``DistillClipLoss.dist_loss``)."""
    return -(teacher_logits.softmax(dim=1) * student_logits.log_softmax(dim=1)).sum(dim=1).mean()


def _teacher_pair(value: Any, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
    if isinstance(value, Tensor) or not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError("DistillLoss: teacher= must be a pair (ta, tb) of teacher embeddings [B, D'] of the two views")
    out = []
    for e in value:
        e = torch.as_tensor(e)
        if e.ndim != 2 or e.shape[0] != n:
            raise ValueError(f"DistillLoss: teacher embeddings must be [B={n}, D'], got {tuple(e.shape)}")
        out.append(F.normalize(e.detach().to(device=like.device, dtype=torch.promote_types(like.dtype, torch.float32)),
                               dim=-1))
    return out[0], out[1]


@register_loss("distill")
class DistillLoss(ContrastiveLoss):
    """Contrastive loss plus similarity-matrix distillation (MobileCLIP, Vasu et al., CVPR 2024).

    ``λ_c·½[CE(S, I) + CE(Sᵀ, I)] + λ_d·½[H(softmax(T), S) + H(softmax(Tᵀ), Sᵀ)]`` where
    ``S = scale·â b̂ᵀ`` (the student's logits over the local rows against the global columns),
    ``T = teacher_scale·t̂_a t̂_bᵀ`` the teacher's, and ``H(p, S)`` the cross-entropy of the
    rows of ``p`` with ``log_softmax(S)``. With ``label_smoothing=0`` this is open_clip's
    ``DistillClipLoss`` (contrastive + distillation term, the two returned as a sum weighted by
    ``λ``); ``tests/test_distill.py`` checks it numerically.

    Extra inputs: ``teacher=(ta, tb)`` (required; frozen teacher embeddings ``[B, D']`` of the
    two views, detached and L2-normalised here; ``D'`` may differ from the student's) and
    ``teacher_scale=`` (the teacher's logit scale; default: the constructor's, which defaults to
    100, CLIP's clamped maximum and MobileCLIP's teachers). After each call ``last_terms`` holds
    the unweighted ``{"contrastive": ..., "distill": ...}`` values (floats).

    Args:
        contrastive_weight, distill_weight: ``λ_c``, ``λ_d`` (>= 0, not both 0).
        label_smoothing: ε of the contrastive term (0 = open_clip's).
        teacher_scale: default teacher logit scale.
        gather: local rows against all ranks' columns, for the student and the teacher.

    Example:
        >>> a, b = torch.randn(4, 8), torch.randn(4, 8)
        >>> DistillLoss(0.0, 1.0)(a, b, 20.0, teacher=(a, b), teacher_scale=20.0).ndim   # pure distillation
        0
    """

    extras = ("teacher", "teacher_scale")
    requires = ("teacher",)

    def __init__(self, contrastive_weight: float = 1.0, distill_weight: float = 1.0, label_smoothing: float = 0.0,
                 teacher_scale: float = 100.0, gather: bool = False) -> None:
        super().__init__(gather)
        if contrastive_weight < 0 or distill_weight < 0 or contrastive_weight + distill_weight == 0:
            raise ValueError(f"DistillLoss: contrastive_weight={contrastive_weight} and distill_weight="
                             f"{distill_weight} must be >= 0 and not both 0")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"DistillLoss: label_smoothing={label_smoothing} must be in [0, 1)")
        if not teacher_scale > 0:
            raise ValueError(f"DistillLoss: teacher_scale={teacher_scale} must be > 0")
        self.contrastive_weight, self.distill_weight = float(contrastive_weight), float(distill_weight)
        self.label_smoothing, self.teacher_scale = float(label_smoothing), float(teacher_scale)
        self.last_terms: dict[str, float] = {}

    def loss(self, v: Views, scale: Tensor, extra: dict[str, Any]) -> Tensor:
        if "teacher" not in extra:
            raise TypeError("DistillLoss needs teacher=(ta, tb): cached teacher embeddings of the two views")
        ta, tb = _teacher_pair(extra["teacher"], v.a.shape[0], v.a)
        gta, gtb = (gather_no_grad(ta), gather_no_grad(tb)) if self.gather else (ta, tb)
        ts = torch.as_tensor(extra.get("teacher_scale", self.teacher_scale), dtype=ta.dtype, device=ta.device)
        la, lb = scale * v.a @ v.gb.T, scale * v.b @ v.ga.T
        eps = self.label_smoothing
        contrastive = 0.5 * (F.cross_entropy(la, v.diag, label_smoothing=eps)
                             + F.cross_entropy(lb, v.diag, label_smoothing=eps))
        distill = 0.5 * (_soft_ce(ts * ta @ gtb.T, la) + _soft_ce(ts * tb @ gta.T, lb))
        self.last_terms = {"contrastive": float(contrastive.detach()), "distill": float(distill.detach())}
        return self.contrastive_weight * contrastive + self.distill_weight * distill

    def extra_repr(self) -> str:
        return (f"contrastive_weight={self.contrastive_weight}, distill_weight={self.distill_weight}, "
                f"label_smoothing={self.label_smoothing}, teacher_scale={self.teacher_scale}, gather={self.gather}")


# =============================================================================== the cache
@dataclass
class TeacherCache:
    """Teacher embeddings of every training row in every view, computed once.

    Attributes:
        embeddings: ``[len(views), N, D']`` float32, L2-normalised; ``embeddings[v, i]`` is row
            ``i`` of the training rows in view ``views[v]``.
        paths: the rows' paths relative to the dataset root (checked against the trainer's rows).
        logit_scale: the teacher's logit scale (``exp`` of its ``logit_scale``), used for ``S_T``.
        teacher: the teacher's name and pretrained tag, for the record.
        views: the view names (:data:`VIEWS`).
    """

    embeddings: Tensor
    paths: list[str]
    logit_scale: float
    teacher: str = ""
    views: tuple[str, ...] = VIEWS
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        e = self.embeddings
        if e.ndim != 3 or e.shape[0] != len(self.views) or e.shape[1] != len(self.paths):
            raise ValueError(f"TeacherCache: embeddings must be [views={len(self.views)}, rows={len(self.paths)}, D'], "
                             f"got {tuple(e.shape)}")

    def lookup(self, rows: Tensor | np.ndarray, flipped: Tensor | np.ndarray) -> Tensor:
        """``[len(rows), D']`` embeddings of ``rows`` in the view each was seen in (``flipped``: bool)."""
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        view = torch.as_tensor(np.asarray(flipped), dtype=torch.long)
        return self.embeddings[view.to(self.embeddings.device), rows.to(self.embeddings.device)]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the cache to one safetensors file (atomically)."""
        path = Path(path)
        meta = {"paths": json.dumps(self.paths), "logit_scale": repr(self.logit_scale), "teacher": self.teacher,
                "views": json.dumps(list(self.views)), "meta": json.dumps(self.meta)}
        with atomic_path(path) as tmp:
            save_file({"embeddings": self.embeddings.detach().cpu().contiguous()}, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TeacherCache":
        """Read a cache written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file (build it with :func:`cache_teacher_embeddings`).
            ValueError: the file is not a teacher cache (the message names it).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"teacher cache not found: {path}; build it with "
                                    "cliptk.train.distill.cache_teacher_embeddings(teacher, dataset, path=...)")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                emb = f.get_tensor("embeddings")
            return cls(emb, json.loads(meta["paths"]), float(meta["logit_scale"]), meta.get("teacher", ""),
                       tuple(json.loads(meta.get("views", json.dumps(list(VIEWS))))),
                       json.loads(meta.get("meta", "{}")))
        except Exception as err:
            raise ValueError(f"{path} is not a teacher cache ({type(err).__name__}: {err}); write one with "
                             "cliptk.train.distill.cache_teacher_embeddings(teacher, dataset, path=...), or name "
                             "the teacher model instead (TrainConfig.distill_teacher)") from err


@torch.no_grad()
def cache_teacher_embeddings(teacher: ClipModel, dataset: ReIdDataset, *, split: str | None = "train",
                             batch_size: int = 64, path: str | os.PathLike | None = None,
                             device: str | torch.device | None = None) -> TeacherCache:
    """Embed ``dataset``'s training rows with ``teacher`` once per view (:data:`VIEWS`).

    Args:
        teacher: the teacher model (its own preprocessing is used; only its image tower runs).
        dataset: the training data, as given to :func:`cliptk.train.fit`.
        split: the training split (``TrainConfig.train_split``); a dataset with a single split
            is used whole, as ``fit`` does. None = every row.
        path: also write the cache there (:meth:`TeacherCache.save`).
        device: where to run the teacher (default: its device).

    Returns:
        A :class:`TeacherCache` of ``[2, N, D']`` embeddings (``"plain"``, ``"flip"``).

    Raises:
        KeyError: ``split`` is not a split of a multi-split dataset.
        ValueError: an unreadable image (every training image is needed).
    """
    rows = dataset
    if split is not None and len(dataset.split_names) > 1:
        if split not in dataset.split_names:
            raise KeyError(f"cache_teacher_embeddings: {dataset.name} has splits {dataset.split_names}, not {split!r}")
        rows = dataset.subset(split)
    device = torch.device(device) if device is not None else teacher.device
    images = PairImages(rows, teacher.preprocess)
    was_training = teacher.training
    teacher.eval()
    parts: list[list[Tensor]] = [[] for _ in VIEWS]
    try:
        for s in range(0, len(images), batch_size):
            x = torch.stack([images[i][0] for i in range(s, min(s + batch_size, len(images)))]).to(device)
            for v, view in enumerate(VIEWS):
                xv = x.flip(-1) if view == "flip" else x
                parts[v].append(teacher.encode_image(xv.to(teacher.dtype), normalize=True).float().cpu())
    finally:
        teacher.train(was_training)
    emb = torch.stack([torch.cat(p) for p in parts])
    cache = TeacherCache(emb, rows.table["path"].tolist(), float(teacher.logit_scale.detach().exp()),
                         f"{teacher.name}/{teacher.pretrained}")
    if path is not None:
        cache.save(path)
    return cache


# =============================================================================== the trainer
class DistillTrainer(Trainer):
    """:class:`cliptk.train.Trainer` that distils a teacher from a :class:`TeacherCache` (no
    teacher forward pass while training).

    Configure it from the config, ``TrainConfig(distill_teacher=..., distill_weight=λ)`` (a
    teacher-cache file, or a model name with weights ``distill_teacher_pretrained`` whose
    embeddings of the training rows are cached once here, before the first step; the loss is
    MobileCLIP's ``(1 − λ)·contrastive + λ·distillation``), which :func:`cliptk.train.trainer_for`
    and :func:`cliptk.recipes.run_from_config` turn into this trainer; or with :meth:`using` (the
    cache, ``λ_c``, ``λ_d``), passing the class to :func:`cliptk.train.fit` as ``trainer=``. Each batch looks up the teacher embeddings of its
    rows in the view :func:`cliptk.train.joint_flip` gave them and calls :class:`DistillLoss`
    (the contrastive term uses ``TrainConfig.label_smoothing``); the History gets
    ``contrastive`` and ``distill`` columns (unweighted terms). ``TrainConfig.loss`` is not used.

    Example (a teacher cache of a random micro model, two steps):
        >>> import tempfile
        >>> from cliptk.data import read_deepsportradar
        >>> from cliptk.models import load_model
        >>> from cliptk.synthetic import generate_players
        >>> from cliptk.train import TrainConfig, fit
        >>> data = read_deepsportradar(generate_players(tempfile.mkdtemp(), n_train_ids=8, n_test_ids=3,
        ...                            images_per_id=3, size=(32, 64), workers=1, challenge=False))
        >>> teacher = load_model("cliptk-micro", None, image_only=True)
        >>> cache = cache_teacher_embeddings(teacher, data)
        >>> student = load_model("cliptk-micro", None, image_only=True)
        >>> cfg = TrainConfig(batch_size=4, max_steps=2, eval_before=False, progress=False, device="cpu")
        >>> h = fit(student, data, cfg, trainer=DistillTrainer.using(cache, contrastive_weight=0.5))
        >>> sorted(c for c in h.steps.columns if c in ("contrastive", "distill"))
        ['contrastive', 'distill']
    """

    teacher_cache: TeacherCache | str | os.PathLike | None = None
    contrastive_weight: float = 1.0
    distill_weight: float = 1.0
    distils = True   # reads TrainConfig.distill_teacher (see Trainer.distils)

    @classmethod
    def using(cls, cache: TeacherCache | str | os.PathLike, *, contrastive_weight: float = 1.0,
              distill_weight: float = 1.0) -> type["DistillTrainer"]:
        """A subclass bound to ``cache`` (a :class:`TeacherCache` or its file) and the weights,
        for ``fit(..., trainer=DistillTrainer.using(cache, ...))``."""
        DistillLoss(contrastive_weight, distill_weight)  # validate now, not at the first step
        return type(cls.__name__, (cls,), {"teacher_cache": cache, "contrastive_weight": float(contrastive_weight),
                                           "distill_weight": float(distill_weight), "__module__": cls.__module__})

    def __init__(self, model, train_data, config=None, eval_data=None, *, loss_fn=None, **kwargs):
        cfg = config if config is not None else TrainConfig()
        bound = self.teacher_cache is not None   # DistillTrainer.using(cache)
        if bound and cfg.distill_teacher is not None:
            raise ValueError(f"TrainConfig.distill_teacher={cfg.distill_teacher!r} and DistillTrainer.using(cache) "
                             "both name a teacher: drop one of the two")
        if not bound and cfg.distill_teacher is None:
            raise ValueError("DistillTrainer needs a teacher cache: TrainConfig.distill_teacher (a cache file or a "
                             "model name), or fit(..., trainer=DistillTrainer.using(cache)) with cache = "
                             "cache_teacher_embeddings(teacher, train_data)")
        weights = (self.contrastive_weight, self.distill_weight) if bound else (1 - cfg.distill_weight,
                                                                               cfg.distill_weight)
        if loss_fn is None:
            loss_fn = DistillLoss(*weights, label_smoothing=cfg.label_smoothing, gather=world()[1] > 1)
        super().__init__(model, train_data, config, eval_data, loss_fn=loss_fn, **kwargs)
        cache = self.teacher_cache if bound else self._config_teacher(cfg)
        cache = cache if isinstance(cache, TeacherCache) else TeacherCache.load(cache)
        own = self.train.table["path"].tolist()
        if cache.paths != own:
            n_same = sum(a == b for a, b in zip(cache.paths, own))
            raise ValueError(f"DistillTrainer: the teacher cache holds {len(cache.paths)} rows but the training split "
                             f"of {self.train.name} has {len(own)} ({n_same} in the same place); rebuild it with "
                             "cache_teacher_embeddings(teacher, train_data) for these rows")
        self.cache = TeacherCache(cache.embeddings.to(self.device), cache.paths, cache.logit_scale, cache.teacher,
                                  cache.views, cache.meta)

    def _config_teacher(self, cfg: TrainConfig) -> TeacherCache | Path:
        """``cfg.distill_teacher``: a cache file as it is, or a model (weights
        ``cfg.distill_teacher_pretrained``: a tag, a file or a run folder) whose embeddings of the
        training rows are computed now, with the global RNG left as it was (the run stays the
        same as with the cache file)."""
        source = Path(cfg.distill_teacher).expanduser()
        if source.is_file():
            return source
        weights = cfg.distill_teacher_pretrained
        if weights is not None and Path(weights).expanduser().is_dir():
            weights = str(find_weights(Path(weights).expanduser()))
        rng_devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices):   # a random-init teacher must not move the training RNG
            teacher = load_model(cfg.distill_teacher, weights, device=self.device, image_only=True,
                                 resize=cfg.resize)
            return cache_teacher_embeddings(teacher, self.train, split=None, batch_size=cfg.eval_batch_size)

    def batches(self):
        """The base batches plus ``extras["flipped"]`` (``[2B]`` bool): which rows
        :func:`cliptk.train.joint_flip` mirrored (found by flipping a marker with the same call)."""
        cfg = self.config
        index = self.batch
        for batch in super().batches():
            n = batch.images.shape[0]
            marker = torch.zeros(n, 1, 1, 2)
            marker[..., 1] = 1.0
            marker = joint_flip(marker, cfg.seed, self.epoch, index, self.rank, self.world_size, cfg.flip_p)
            batch.extras["flipped"] = marker[:, 0, 0, 0] == 1.0
            yield batch
            index += 1

    def compute_loss(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Student embeddings of the batch against the cached teacher's, through :class:`DistillLoss`."""
        images, ids, extras = batch
        emb = self.encode(images)
        b = emb.shape[0] // 2
        t = self.cache.lookup(extras["index"], extras["flipped"])
        with torch.autocast(emb.device.type, enabled=False):
            loss = self.criterion(emb[:b].float(), emb[b:].float(), self.model.logit_scale.exp(), ids=ids,
                                  teacher=(t[:b], t[b:]), teacher_scale=self.cache.logit_scale)
        terms = getattr(self.criterion, "last_terms", {})
        return loss, dict(terms)


# =============================================================================== agreement
def neighbour_agreement(student: Tensor | np.ndarray, teacher: Tensor | np.ndarray) -> float:
    """Fraction of images whose nearest other image (cosine) is the same under both embeddings.

    Args:
        student, teacher: ``[N, D]`` and ``[N, D']`` embeddings of the same images, in order.

    Example:
        >>> x = torch.eye(4) + 0.1 * torch.arange(16.).reshape(4, 4)
        >>> neighbour_agreement(x, x)
        1.0
    """
    s, t = (F.normalize(torch.as_tensor(np.asarray(x), dtype=torch.float64), dim=-1) for x in (student, teacher))
    if s.ndim != 2 or t.ndim != 2 or s.shape[0] != t.shape[0] or s.shape[0] < 2:
        raise ValueError(f"neighbour_agreement: need [N, D] and [N, D'] with the same N >= 2, got {tuple(s.shape)} "
                         f"and {tuple(t.shape)}")

    def top1(x: Tensor) -> Tensor:
        sim = x @ x.T
        sim.fill_diagonal_(-float("inf"))
        return sim.argmax(1)

    return float((top1(s) == top1(t)).double().mean())
