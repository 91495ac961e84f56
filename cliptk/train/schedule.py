"""The learning-rate schedule of a run: linear warm-up, then a polynomial (CLIP-ReIdent), cosine or
constant decay from ``lr`` to ``lr_end``, stepped once per optimizer step.

:func:`lr_lambda` is the formula (a pure function of the step); :func:`make_scheduler` wraps it in
a ``torch.optim.lr_scheduler.LambdaLR`` for a :class:`~cliptk.train.TrainConfig`.

Example:
    >>> [round(lr_lambda(s, total_steps=4, warmup_steps=2, lr=1.0, lr_end=0.0), 3) for s in range(5)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
"""
from __future__ import annotations

import math

import torch

from .config import TrainConfig

__all__ = ["lr_lambda", "make_scheduler"]


def lr_lambda(step: int, *, total_steps: int, warmup_steps: int, lr: float, lr_end: float,
              schedule: str = "polynomial", power: float = 1.0) -> float:
    """Learning-rate multiplier (of ``lr``) before optimizer step ``step`` (0-based).

    Warm-up: ``step / warmup_steps`` for ``step < warmup_steps``. Then, with
    ``t = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1]:

    * ``"polynomial"``: ``(lr_end + (lr - lr_end) * (1 - t) ** power) / lr`` — the schedule of
      CLIP-ReIdent (transformers' ``get_polynomial_decay_schedule_with_warmup``);
    * ``"cosine"``: ``(lr_end + (lr - lr_end) * (1 + cos(pi t)) / 2) / lr``;
    * ``"constant"``: 1.

    Example:
        >>> round(lr_lambda(5, total_steps=10, warmup_steps=0, lr=4e-5, lr_end=1e-5), 12)
        0.625
    """
    if step < warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    shape = (1 - t) ** power if schedule == "polynomial" else (1 + math.cos(math.pi * t)) / 2
    return (lr_end + (lr - lr_end) * shape) / lr


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step learning-rate scheduler of ``config`` (:func:`lr_lambda`) for an epoch of
    ``steps_per_epoch`` optimizer steps; warm-up lasts ``round(warmup_epochs * steps_per_epoch)``.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.AdamW([p], lr=1e-3)
        >>> sched = make_scheduler(opt, TrainConfig(epochs=2, lr=1e-3, lr_end=1e-4, warmup_epochs=1), 5)
        >>> opt.param_groups[0]["lr"]   # warm-up starts at 0
        0.0
    """
    total = steps_per_epoch * config.epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)
    kw = dict(total_steps=total, warmup_steps=warmup, lr=config.lr, lr_end=config.lr_end,
              schedule=config.schedule, power=config.power)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, **kw))

