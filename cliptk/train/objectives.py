"""Which :class:`~cliptk.train.Trainer` a :class:`~cliptk.train.TrainConfig` names.

``objective="image_image"`` trains the image tower on identity pairs (:class:`Trainer`,
CLIP-ReIdent), with ``distill_teacher`` set it also distils a teacher
(:class:`~cliptk.train.DistillTrainer`, MobileCLIP); ``objective="image_text"`` trains CLIP's
image–caption objective with ``lock`` (:class:`~cliptk.train.ImageTextTrainer`, LiT).
:func:`cliptk.recipes.run_from_config` (``python -m cliptk train``) runs what :func:`trainer_for`
returns; ``fit(model, data, cfg, trainer=trainer_for(cfg))`` does the same in a notebook.

Example:
    >>> from cliptk.train import TrainConfig
    >>> trainer_for(TrainConfig(objective="image_text", lock="image")).__name__
    'ImageTextTrainer'
    >>> trainer_for(TrainConfig()).__name__
    'Trainer'
"""
from __future__ import annotations

from .config import TrainConfig
from .distill import DistillTrainer
from .image_text import ImageTextTrainer
from .loop import Trainer

__all__ = ["trainer_for"]


def trainer_for(config: TrainConfig) -> type[Trainer]:
    """The trainer class ``config`` names (``objective``, ``distill_teacher``); its lock, teacher
    and weights are read from the config by the trainer itself."""
    if config.objective == "image_text":
        return ImageTextTrainer
    if config.distill_teacher is not None:
        return DistillTrainer
    return Trainer
