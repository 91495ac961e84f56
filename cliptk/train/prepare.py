"""What a run is built from: the model's trainable parts, the optimizer's parameter groups and
the loss module a :class:`~cliptk.train.TrainConfig` names.

:func:`prepare_model` decides what trains before the optimizer is built: for image–image
training (``TrainConfig.objective="image_image"``) the text tower of a full model is frozen; for
image–text training (``"image_text"``) :func:`apply_lock` keeps both towers trainable or freezes
one (``TrainConfig.lock``; ``"image"`` is LiT, Zhai et al., CVPR 2022, open_clip's
``--lock-image``). It also sets the temperature and passes gradient checkpointing through.
:func:`param_groups` puts weight decay on matrices only; :func:`make_loss_module` builds
``TrainConfig.loss`` with the label smoothing it takes; :func:`check_batches` refuses batches
that cannot teach a contrastive loss and warns about accumulation; :func:`check_trainer` refuses a
trainer class that does not train what the config's ``objective`` / ``distill_teacher`` name.

Example:
    >>> from cliptk.models import load_model
    >>> from cliptk.train import TrainConfig
    >>> m = load_model("cliptk-micro", None)
    >>> prepare_model(m, TrainConfig(), fresh=True)                   # image-image: the text tower is frozen
    >>> m.visual.conv1.weight.requires_grad, m.clip.token_embedding.weight.requires_grad
    (True, False)
    >>> prepare_model(m, TrainConfig(objective="image_text", lock="image"), fresh=True)   # LiT
    >>> m.visual.conv1.weight.requires_grad, m.clip.token_embedding.weight.requires_grad
    (False, True)
"""
from __future__ import annotations

import inspect
import logging
import math
import warnings

import torch
from torch import nn

from ..losses import LOSSES, make_loss
from ..models import ClipModel
from .config import LOCKS, TrainConfig

__all__ = ["prepare_model", "apply_lock", "require_text_tower", "param_groups", "make_loss_module", "check_batches",
           "check_trainer"]

log = logging.getLogger("cliptk.train")


def _text_param(name: str) -> bool:
    return not name.startswith("visual.") and name != "logit_scale"


def require_text_tower(model: ClipModel) -> None:
    """Raise ``ValueError`` (naming ``TrainConfig.image_only``) when ``model`` has no text tower."""
    if model.image_only:
        raise ValueError(f"{model.name} was loaded with image_only=True: image-text training needs the text tower; "
                         "load it with image_only=False (TrainConfig.image_only=False)")


def apply_lock(model: ClipModel, lock: str | None) -> ClipModel:
    """Set ``requires_grad`` of both towers for image–text training with ``lock`` (None or
    ``"none"``: both train; ``"image"``: the image tower is frozen; ``"text"``: the text tower is).
    The logit scale is left alone.

    Raises:
        ValueError: an unknown ``lock``, or a model without a text tower.

    Example:
        >>> from cliptk.models import load_model
        >>> m = apply_lock(load_model("cliptk-micro", None), "text")
        >>> m.visual.conv1.weight.requires_grad, m.clip.token_embedding.weight.requires_grad
        (True, False)
    """
    lock = "none" if lock is None else lock
    if lock not in LOCKS:
        raise ValueError(f"lock={lock!r}: choose None (train both towers), 'image' (LiT: freeze the image tower) "
                         "or 'text' (freeze the text tower)")
    require_text_tower(model)
    for name, p in model.clip.named_parameters():
        if name != "logit_scale":
            p.requires_grad_(lock != ("text" if _text_param(name) else "image"))
    return model


def prepare_model(model: ClipModel, cfg: TrainConfig, fresh: bool) -> None:
    """Choose what trains (``cfg.objective``: for ``"image_image"`` the image tower, a full
    model's text tower frozen; for ``"image_text"`` the towers ``cfg.lock`` leaves unlocked, see
    :func:`apply_lock`), start the temperature at ``cfg.temperature`` on a fresh run, freeze it
    unless ``cfg.learn_temperature``, and pass ``cfg.grad_checkpointing`` through.

    Raises:
        ValueError: image–text training of a model without a text tower.
    """
    if cfg.objective == "image_text":
        apply_lock(model, cfg.lock)
    elif not model.image_only:
        for n, p in model.clip.named_parameters():
            if _text_param(n):
                p.requires_grad_(False)
    if fresh and cfg.temperature is not None:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(1.0 / cfg.temperature))
    model.logit_scale.requires_grad_(cfg.learn_temperature)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups of the trainable parameters: weight decay on matrices only (not biases,
    norms, rank-1 embeddings or the temperature).

    Example:
        >>> [len(g["params"]) for g in param_groups(nn.Linear(3, 2), 0.1)]
        [1, 1]
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith("logit_scale") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_loss_module(cfg: TrainConfig, gather: bool) -> nn.Module:
    """``cfg.loss`` with ``cfg.loss_kwargs``, and ``cfg.label_smoothing`` when the loss takes it
    (``gather``: contrast against every rank's embeddings).

    Example:
        >>> make_loss_module(TrainConfig(loss="supcon"), gather=False).__class__.__name__
        'SupCon'
    """
    cls = LOSSES[cfg.loss.lower()]
    kw = dict(cfg.loss_kwargs)
    if "label_smoothing" in inspect.signature(cls.__init__).parameters:
        kw.setdefault("label_smoothing", cfg.label_smoothing)
    elif cfg.label_smoothing:
        log.info("loss %r takes no label smoothing; label_smoothing=%s is not used", cfg.loss, cfg.label_smoothing)
    return make_loss(cfg.loss, gather=gather, **kw)


def check_batches(cfg: TrainConfig, world_size: int, *, warn: bool = True, custom_loss: bool = False,
                  custom_sampler: bool = False) -> None:
    """Refuse batches of one (query, positive) pair (no negatives: InfoNCE is exactly 0; only a
    warning with a custom loss, nothing with a custom sampler) and warn (``warn``: rank 0) that
    ``accumulate`` does not enlarge the set of negatives.

    Raises:
        ValueError: ``batch_size * world_size < 2`` with the configured loss and sampler.

    Example:
        >>> check_batches(TrainConfig(batch_size=1), world_size=1)   # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: TrainConfig.batch_size=1 with 1 process(es) gives batches of ONE (query, positive) pair: ...
    """
    if cfg.accumulate > 1 and warn:
        warnings.warn(
            f"accumulate={cfg.accumulate}: gradient accumulation averages the gradients of {cfg.accumulate} "
            f"micro-batches, but each InfoNCE still contrasts only the {2 * cfg.batch_size} images of its own "
            "micro-batch: it does NOT enlarge the set of negatives the way a larger batch_size does",
            UserWarning, stacklevel=4)
    if not custom_sampler and cfg.batch_size * world_size < 2:
        msg = (f"TrainConfig.batch_size={cfg.batch_size} with {world_size} process(es) gives batches of ONE "
               "(query, positive) pair: a contrastive loss then has no negatives, InfoNCE is exactly 0 and nothing "
               "is learnt; set batch_size >= 2 (the training split needs at least 2 identities)")
        if not custom_loss:
            raise ValueError(msg)
        warnings.warn(msg + " (a custom loss_fn is used: make sure it learns from a single pair)", UserWarning,
                      stacklevel=4)


def check_trainer(cfg: TrainConfig, trainer) -> None:
    """Refuse a config that names another objective (``objective``), a teacher
    (``distill_teacher``) or a per-sample temperature (``loss="tempnet"``) than ``trainer`` (a :class:`~cliptk.train.Trainer`, or its class) trains,
    naming the field: a config must not be silently half-used.

    Raises:
        ValueError: the objective or teacher is not the trainer's; use
            :func:`cliptk.train.trainer_for` (or :func:`cliptk.recipes.run_from_config`).
    """
    cls = trainer if isinstance(trainer, type) else type(trainer)
    how = "pass fit(..., trainer=cliptk.train.trainer_for(config)), or run it with cliptk.recipes.run_from_config"
    if cfg.objective != cls.objective:
        raise ValueError(f"TrainConfig.objective={cfg.objective!r} is not what {cls.__name__} trains "
                         f"({cls.objective!r}): {how}")
    if cfg.distill_teacher is not None and not cls.distils:
        raise ValueError(f"TrainConfig.distill_teacher={cfg.distill_teacher!r} is read by DistillTrainer, not by "
                         f"{cls.__name__}: {how}")
    if cfg.loss.lower() == "tempnet" and not cls.per_sample_temperature:
        raise ValueError(f"TrainConfig.loss='tempnet' needs per-sample temperatures that TempNetTrainer computes, "
                         f"not {cls.__name__}: {how}")
