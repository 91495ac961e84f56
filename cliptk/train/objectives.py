"""Which :class:`~cliptk.train.Trainer` a :class:`~cliptk.train.TrainConfig` names.

``objective="image_image"`` trains the image tower on identity pairs (:class:`Trainer`,
CLIP-ReIdent), with ``distill_teacher`` set it also distils a teacher
(:class:`~cliptk.train.DistillTrainer`, MobileCLIP); ``objective="image_text"`` trains CLIP's
image–caption objective with ``lock`` (:class:`~cliptk.train.ImageTextTrainer`, LiT);
``loss="tempnet"`` trains a per-sample temperature with the tower
(:class:`~cliptk.train.TempNetTrainer`, TempNet).
:func:`cliptk.recipes.run_from_config` (``python -m cliptk train``) runs what :func:`trainer_for`
returns; ``fit(model, data, cfg, trainer=trainer_for(cfg))`` does the same in a notebook.

Example:
    >>> from cliptk.train import TrainConfig
    >>> trainer_for(TrainConfig(objective="image_text", lock="image")).__name__
    'ImageTextTrainer'
    >>> trainer_for(TrainConfig()).__name__
    'Trainer'
    >>> trainer_for(TrainConfig(loss="tempnet")).__name__
    'TempNetTrainer'
"""
from __future__ import annotations

from .config import TrainConfig
from .distill import DistillTrainer
from .image_text import ImageTextTrainer
from .loop import Trainer
from .tempnet import TempNetTrainer

__all__ = ["trainer_for"]


def trainer_for(config: TrainConfig) -> type[Trainer]:
    """The trainer class ``config`` names (``objective``, ``distill_teacher``, ``loss="tempnet"``);
    its lock, teacher, weights and temperature network are read from the config by the trainer
    itself."""
    if config.objective == "image_text":
        return ImageTextTrainer
    if config.distill_teacher is not None:
        return DistillTrainer
    if config.loss.lower() == "tempnet":
        return TempNetTrainer
    return Trainer
