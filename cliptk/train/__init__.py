"""Contrastive fine-tuning of a CLIP image tower for re-identification (the CLIP-ReIdent recipe).

``fit(model, train_data, config, eval_data)`` trains ``model.encode_image`` on batches of
(query, positive) pairs of distinct identities with a symmetric InfoNCE loss and CLIP's learnable
temperature, as CLIP-ReIdent does (Habel, Deuser & Oswald, "CLIP-ReIdent: Contrastive Training for
Player Re-Identification", MMSports 2022):

* data (:mod:`~cliptk.train.batches`): :class:`cliptk.samplers.UniqueIdPairSampler` (a fresh
  random positive each epoch), the model's own preprocessing (letterbox by default), a horizontal
  flip applied to **both** images of a pair together (p = 0.5);
* optimisation (:mod:`~cliptk.train.schedule`): AdamW, learning rate ``lr`` → ``lr_end`` with a
  polynomial decay after a linear warm-up (:func:`lr_lambda`), weight decay on weight matrices
  only, optional gradient clipping and gradient accumulation;
* temperature: ``model.logit_scale`` (learnable, clamped to ``ln 100`` after each step as in
  CLIP) or fixed (``learn_temperature=False``; ``temperature=`` sets its value);
* AMP on CUDA (bf16, or fp16 with a gradient scaler), off on CPU; gradient checkpointing is
  passed through to ``model.set_grad_checkpointing``;
* evaluation (mAP, rank-1 on ``eval_data``'s query/gallery splits) before training and after each
  epoch; a :class:`History` table of every step and evaluation; ``tqdm.auto`` progress; callbacks
  (``callbacks=[fn]``, ``fn(event: dict)``, :mod:`~cliptk.train.callbacks`) for live plots;
* checkpoints (:mod:`~cliptk.train.checkpoint`) written atomically, holding everything needed
  to resume exactly (``fit(..., resume=path)``); on CPU a resumed run is bitwise identical to an
  uninterrupted one;
* a non-finite loss or gradient stops training before the update with :class:`NonFiniteLossError`
  (no extra host sync: see :mod:`~cliptk.train.loop`), and non-finite weights are never written;
  a fresh run refuses an ``output_dir`` holding another run (``resume=`` or
  ``TrainConfig.overwrite``); a resume skips an unreadable checkpoint (warning) for the one before; Ctrl-C
  (or a ``KeyboardInterrupt`` from a callback) finishes cleanly: the model stays in memory, a
  checkpoint is saved and the history comes back with ``interrupted=True``;
* several GPUs through ``torchrun``: the loss gathers embeddings from all ranks with gradients,
  the sampler shards each global batch by rank, only rank 0 evaluates, logs and writes.

The loop is a :class:`Trainer` (:mod:`~cliptk.train.loop`, built from :mod:`~cliptk.train.prepare`,
:mod:`~cliptk.train.run_dir` and :mod:`~cliptk.train.interrupt`); a new training method overrides
its one method :meth:`Trainer.compute_loss` and runs as ``fit(..., trainer=MyTrainer)``. Three such
methods ship, chosen by the config (:func:`trainer_for`, :mod:`~cliptk.train.objectives`):
:class:`ImageTextTrainer` (``objective="image_text"``: CLIP's image–caption InfoNCE, both towers or
one locked with ``lock``, LiT), :class:`DistillTrainer` (``distill_teacher``: MobileCLIP's
distillation from cached teacher embeddings) and :class:`TempNetTrainer` (``loss="tempnet"``: a
per-sample temperature, TempNet, trained with the tower). The
configuration is a :class:`TrainConfig` dataclass (:mod:`~cliptk.train.config`) with the paper's
defaults and a YAML round trip; :mod:`cliptk.recipes` loads what a YAML file names and runs it
end to end (``python -m cliptk train --config``).

Example (needs the bundled model and the generated players, hence skipped here):
    >>> import cliptk as ct
    >>> model = ct.load_model("cliptk-tiny", "synthetic-players", image_only=True)   # doctest: +SKIP
    >>> data = ct.read_dataset("data/generated/players")                              # doctest: +SKIP
    >>> cfg = TrainConfig(epochs=3, batch_size=32, lr=2e-4, lr_end=2e-5, output_dir="runs/tiny")
    >>> history = fit(model, data, cfg, eval_data=data)                               # doctest: +SKIP
    >>> history.evals[["epoch", "mAP", "rank1"]]                                      # doctest: +SKIP
"""
from __future__ import annotations

from .batches import Batch, PairImages, SkipBatches, joint_flip, make_sampler, train_rows
from .callbacks import live_plot
from .checkpoint import CheckpointError, RunExistsError, find_checkpoint, find_weights, load_checkpoint
from .config import LOCKS, OBJECTIVES, TrainConfig, load_config
from .distill import DistillTrainer
from .history import COLUMNS, History, NonFiniteLossError
from .image_text import ImageTextTrainer
from .loop import Trainer, fit
from .objectives import trainer_for
from .schedule import lr_lambda, make_scheduler
from .tempnet import TempNetTrainer
from .timelapse import Frame, Timelapse

__all__ = [
    "TrainConfig", "load_config", "OBJECTIVES", "LOCKS",
    "fit", "Trainer", "trainer_for", "ImageTextTrainer", "DistillTrainer", "TempNetTrainer",
    "Batch", "History", "COLUMNS", "NonFiniteLossError",
    "lr_lambda", "make_scheduler",
    "make_sampler", "PairImages", "SkipBatches", "joint_flip", "train_rows",
    "find_checkpoint", "find_weights", "load_checkpoint", "CheckpointError", "RunExistsError",
    "live_plot", "Timelapse", "Frame",
]
