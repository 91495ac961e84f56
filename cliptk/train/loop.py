"""The training loop: :class:`Trainer` (one run's state and its steps) and :func:`fit` (run one).

:func:`fit` starts torchrun's process group when there is one, builds a :class:`Trainer` and calls
:meth:`Trainer.fit`, the loop over epochs and batches. A method changes only what a batch's loss is:
subclass :class:`Trainer`, override :meth:`Trainer.compute_loss`, and pass the class as
``fit(..., trainer=MyTrainer)``. Everything around the loss stays in :meth:`Trainer.step`, written
once: autocast and fp16 gradient scaling, gradient accumulation (and DDP's ``no_sync``), the
finite loss-and-gradient guard, gradient clipping, the optimizer and schedule step, the temperature
clamp, the history row, callbacks, periodic checkpoints and the stop conditions. Checkpoints, exact
resume (bitwise on CPU, falling back past an unreadable checkpoint), several processes and Ctrl-C
are handled by the Trainer as well; a fresh run refuses an ``output_dir`` that holds another run.
What the Trainer is built from lives beside it: the trainable parts, optimizer groups and loss module
in :mod:`~cliptk.train.prepare`, what a run does with its ``output_dir`` (claim, resume point,
saves, final weights) in :mod:`~cliptk.train.run_dir`, Ctrl-C in :mod:`~cliptk.train.interrupt`.

The finite guard costs no extra host sync: the loss value (which the History row needs anyway) and
the gradients' global norm (computed on the device, as part of clipping when ``grad_clip`` is set)
come to the host together in one transfer per micro-batch, as the loss alone did before; under fp16
the gradient scaler's own overflow check decides instead.

Example: the override point's signature (a full subclass runs in :class:`Trainer`'s docstring):
    >>> import inspect
    >>> print(inspect.signature(Trainer.compute_loss))
    (self, batch: 'Batch') -> 'tuple[torch.Tensor, dict[str, float]]'
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .._util import world
from ..data import ReIdDataset
from ..evaluate import evaluate
from ..models import ClipModel, reinit_top_blocks
from . import checkpoint as ckpt
from . import run_dir
from .batches import Batch, PairImages, SkipBatches, joint_flip, make_sampler, train_rows
from .config import TrainConfig
from .devices import amp_dtype, any_rank, from_rank0, init_distributed, pick_device
from .guard import grad_norm, non_finite_message, step_scalars
from .history import COLUMNS, History, NonFiniteLossError
from .interrupt import StopRequest
from .prepare import check_batches, check_trainer, make_loss_module, param_groups, prepare_model
from .schedule import make_scheduler

__all__ = ["Trainer", "fit", "param_groups"]

log = logging.getLogger("cliptk.train")


# =============================================================================== the trainer
class Trainer:
    """One fine-tuning run of ``model``'s image tower on identity pairs (CLIP-ReIdent), as state
    and steps. :func:`fit` builds one and calls :meth:`fit`; the arguments are :func:`fit`'s.

    **Override point.** :meth:`compute_loss` ``(batch) -> (loss, logs)`` is the one method a new
    training method changes (as open_clip's ``training_forward`` or torchreid's
    ``forward_backward``): ``batch`` is a :class:`cliptk.train.Batch` ``(images, ids, extras)``
    as the sampler yields it (``[2B, 3, H, W]`` queries then positives, ``[B]`` identities,
    ``{"index": row indices}``), ``loss`` a scalar tensor to minimise and ``logs`` a dict of extra
    scalars, which appear as History columns (averaged over the step's micro-batches and the
    ranks). :meth:`step` wraps it with everything that must not be re-written per method. Use
    :meth:`encode` for the forward pass (it goes through DDP when there are several processes)
    and :meth:`pair_loss` (``self.criterion`` at ``self.model.logit_scale``) for the configured loss.
    Pass the subclass to :func:`fit` as ``trainer=``; :func:`fit` also starts and ends torchrun's
    process group (``MyTrainer(...).fit()`` works in a single process, or inside a process group
    of your own).

    Example: InfoNCE plus a small penalty on the embeddings' mean, logged as its own column (a
    random-init ``cliptk-micro`` on a tiny generated world, two steps, a few seconds):

        >>> import tempfile
        >>> from cliptk.data import read_deepsportradar
        >>> from cliptk.models import load_model
        >>> from cliptk.synthetic import generate_players
        >>> from cliptk.train import Trainer, TrainConfig, fit
        >>> class CentredTrainer(Trainer):
        ...     def compute_loss(self, batch):
        ...         images, ids, extras = batch
        ...         emb = self.encode(images)                  # [2B, D], float32
        ...         centre = emb.mean(0).norm()                # distance of the embeddings' mean from 0
        ...         return self.pair_loss(emb, ids) + 0.1 * centre, {"centre": centre}
        >>> data = read_deepsportradar(generate_players(tempfile.mkdtemp(), n_train_ids=8, n_test_ids=3,
        ...                            images_per_id=3, size=(32, 64), workers=1, challenge=False))
        >>> model = load_model("cliptk-micro", None, image_only=True)
        >>> cfg = TrainConfig(batch_size=4, epochs=1, max_steps=2, eval_before=False, progress=False)
        >>> history = fit(model, data, cfg, trainer=CentredTrainer)
        >>> len(history.steps), bool(history.steps["centre"].gt(0).all())
        (2, True)

    Attributes (read them in :meth:`compute_loss` or a callback; the counters are what a checkpoint
    stores):
        model, config, train (the training rows), eval_data, history (:class:`cliptk.train.History`),
        device, rank, world_size, net (the model, DDP-wrapped under several processes),
        criterion (the loss module), optimizer, scheduler, scaler, sampler, images
        (:class:`cliptk.train.PairImages` of the training rows), epoch (index), batch
        (micro-batches done in the epoch), step_count (optimizer steps done: History's ``step``),
        seconds (training time), batches_per_epoch, steps_per_epoch, total_steps.

    Raises:
        KeyError: ``train_data`` lacks the train split. ValueError: too few identities for the
        batch size, a batch of one pair (no negatives), an unreadable training image,
        ``resume=True`` without ``output_dir``, ``resume=`` together with ``overwrite=True``, a
        config whose ``objective``, ``distill_teacher`` or ``loss="tempnet"`` this class does not train (:func:`cliptk.train.trainer_for`).
        FileNotFoundError: ``resume`` names no checkpoint. RunExistsError: a fresh run into an
        ``output_dir`` holding another run. CheckpointError: no readable checkpoint to resume.
    """

    #: the ``TrainConfig.objective`` this class trains, whether it reads ``distill_teacher`` and
    #: whether it trains ``loss="tempnet"``'s per-sample temperature (:func:`cliptk.train.trainer_for`
    #: picks the class a config names)
    objective, distils, per_sample_temperature = "image_image", False, False

    def __init__(self, model: ClipModel, train_data: ReIdDataset, config: TrainConfig | None = None,
                 eval_data: ReIdDataset | None = None, *, callbacks: Sequence[Callable[[dict], Any]] = (),
                 resume: str | os.PathLike | bool | None = None, loss_fn: nn.Module | None = None, sampler=None):
        cfg = self.config = config if config is not None else TrainConfig()
        self.model, self.eval_data, self.callbacks = model, eval_data, list(callbacks)
        self.rank, self.world_size = world()
        self.main = self.rank == 0
        self.device = pick_device(cfg.device)
        self.amp_dtype = amp_dtype(cfg.amp, self.device)
        check_trainer(cfg, self)
        check_batches(cfg, self.world_size, warn=self.main, custom_loss=loss_fn is not None,
                      custom_sampler=sampler is not None)
        self.train = train_rows(train_data, cfg)
        self._was_training = model.training
        model.to(self.device)

        self.resumed_from, loaded = run_dir.resume_point(resume, cfg, warn=self.main)
        self.fresh = self.resumed_from is None
        if self.fresh and cfg.output_dir:
            run_dir.claim(cfg, self.main, self.world_size)
        prepare_model(model, cfg, fresh=self.fresh)
        ckpt.seed_all(cfg.seed + self.rank)
        if cfg.reinit_blocks and self.fresh:
            rng_devices = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=rng_devices):   # same new weights on every rank; training RNG untouched
                torch.manual_seed(cfg.seed)
                reinit_top_blocks(model, cfg.reinit_blocks)

        self.sampler = sampler if sampler is not None else make_sampler(self.train, cfg, self.rank, self.world_size)
        self.batches_per_epoch = (len(self.sampler) // cfg.accumulate) * cfg.accumulate
        self.steps_per_epoch = self.batches_per_epoch // cfg.accumulate
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.train.name}: one epoch gives {len(self.sampler)} batches of {cfg.batch_size} "
                             f"pairs, fewer than accumulate={cfg.accumulate}; lower batch_size or accumulate")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
        self.scheduler = make_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.criterion = loss_fn if loss_fn is not None else make_loss_module(cfg, gather=self.world_size > 1)

        self.history = History()
        self.epoch, self.batch, self.step_count, self.seconds = 0, 0, 0, 0.0
        self._resume_reason = None
        if self.resumed_from is not None:
            st = ckpt.restore(self.resumed_from, model, self.optimizer, self.scheduler, self.scaler, cfg, self.device,
                              self.rank, loaded=loaded)
            self._resume_reason = st.get("reason")
            self.epoch, self.batch, self.step_count, self.seconds = st["epoch"], st["batch"], st["step"], st["seconds"]
            self.history.rows, self.history.checkpoint = list(st["history"]), self.resumed_from
            if self.main:
                log.info("resuming from %s (epoch %d, batch %d, step %d)", self.resumed_from, self.epoch, self.batch,
                         self.step_count)

        self.images = PairImages(self.train, model.preprocess, cache=cfg.cache_images, progress=cfg.progress and self.main)
        self.net: nn.Module = model
        if self.world_size > 1:
            self.net = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.main and cfg.output_dir:
            run_dir.write_config(cfg)

        self.bar = None                      # the progress bar of fit()
        self.stop = StopRequest()            # Ctrl-C while fit() runs
        self._t_start = self._t_step = time.perf_counter()
        self._in_update = False
        self._micro, self._loss_sum, self._log_sums = 0, 0.0, {}
        self._fp16_skips = 0                 # consecutive fp16 steps the grad scaler skipped (inf/NaN gradients)

    # ------------------------------------------------------------------------- the override point
    def compute_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one batch and extra scalars to log: CLIP-ReIdent's pair loss by default
        (:meth:`pair_loss` of the batch's embeddings).

        Args:
            batch: ``(images [2B, 3, H, W], ids [B], extras)`` (:class:`cliptk.train.Batch`).

        Returns:
            ``(loss, logs)``: a scalar tensor (gradients flow into the model) and a dict of
            scalars (floats or 0-d tensors) that become History columns; ``{}`` here.

        Runs under the run's autocast (:meth:`step` enters it).
        """
        images, ids, _ = batch
        return self.pair_loss(self.encode(images), ids), {}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[N, D]`` (float32, not normalised) of ``images`` from the trained network
        (DDP-wrapped under several processes, so gradients are synchronised), computed under the
        run's autocast."""
        with self.autocast():
            return self.net(images).float()

    def pair_loss(self, emb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``self.criterion`` of the query rows ``emb[:B]`` against the positive rows ``emb[B:]``
        at the model's temperature (``logit_scale.exp()``), in float32 outside autocast as CLIP
        computes its loss."""
        b = emb.shape[0] // 2
        with torch.autocast(emb.device.type, enabled=False):
            return self.criterion(emb[:b].float(), emb[b:].float(), self.model.logit_scale.exp(), ids=ids)

    def autocast(self):
        """The run's autocast context (``TrainConfig.amp``; disabled on CPU)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                              enabled=self.amp_dtype is not None)

    # ------------------------------------------------------------------------- one step
    def step(self, batch: Batch) -> dict[str, float]:
        """Train on one (micro-)batch: :meth:`compute_loss` under autocast, the scaled backward
        pass, the finite guard; on the last micro-batch of ``accumulate`` also gradient clipping,
        the optimizer and schedule step, the temperature clamp, the History row, the
        ``"step_end"`` callbacks, a periodic checkpoint and the stop conditions (``max_steps``,
        ``max_minutes``, Ctrl-C, which raises ``KeyboardInterrupt`` for :meth:`fit`).

        The finite guard: the loss value and, on the last micro-batch, the gradients' global norm
        reach the host in one transfer (the one the loss value always needed); a NaN/inf in
        either stops before the optimizer step. Under fp16 the gradient scaler skips a step whose
        gradients overflowed (that is how fp16 training runs); only a run of
        :attr:`FP16_MAX_SKIPS` skipped steps in a row stops.

        Returns:
            This micro-batch's logs: ``{"loss": value, **logs}`` (values averaged over ranks).

        Raises:
            NonFiniteLossError: the loss or the gradients are NaN/inf; nothing of this step was
                applied and the gradients are cleared.
            ValueError: a logged name is a History column (``loss``, ``lr`` ...).
        """
        cfg = self.config
        last_micro = self.world_size == 1 or self._micro == cfg.accumulate - 1  # DDP syncs gradients on the last one
        with contextlib.nullcontext() if last_micro else self.net.no_sync():
            with self.autocast():
                loss, logs = self.compute_loss(batch)
            self.scaler.scale(loss / cfg.accumulate).backward()
        update = self._micro + 1 == cfg.accumulate
        norm = grad_norm(self.optimizer, self.scaler, cfg.grad_clip) if update else None
        value, gnorm, logs = self._mean_over_ranks(loss, logs, norm)  # the step's one host sync
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            raise self._non_finite("loss", value)
        if norm is not None and not math.isfinite(gnorm):
            if not self.scaler.is_enabled():
                self.optimizer.zero_grad(set_to_none=True)
                raise self._non_finite("gradients", gnorm, loss=value)
            self._fp16_skips += 1   # scaler.step below skips this update and lowers the scale
            if self._fp16_skips >= self.FP16_MAX_SKIPS:
                self.optimizer.zero_grad(set_to_none=True)
                raise self._non_finite("gradients", gnorm, loss=value)
        elif norm is not None:
            self._fp16_skips = 0
        self._loss_sum += value
        for k, v in logs.items():
            self._log_sums[k] = self._log_sums.get(k, 0.0) + v
        self._micro += 1
        if update:
            self._update(images=batch[0].shape[0])
        return {"loss": value, **logs}

    #: under fp16, this many optimizer steps in a row skipped by the grad scaler (inf/NaN
    #: gradients, the scale halved each time) stop the run: the gradients are not an overflow
    FP16_MAX_SKIPS = 30

    def _mean_over_ranks(self, loss: torch.Tensor, logs: dict, norm: torch.Tensor | None = None
                         ) -> tuple[float, float, dict[str, float]]:
        """:func:`cliptk.train.guard.step_scalars` (the step's one host sync); logged names must
        not be History columns."""
        clash = set(logs) & set(COLUMNS)
        if clash:
            raise ValueError(f"{type(self).__name__}.compute_loss logged {sorted(clash)}, which are History columns; "
                             "rename them")
        return step_scalars(loss, norm, logs, self.world_size)

    def _update(self, images: int) -> None:
        """The optimizer step after the last micro-batch (gradients already unscaled, clipped and
        checked by :meth:`step`), then its History row and bookkeeping."""
        cfg, opt = self.config, self.optimizer
        self._in_update = True
        self.scaler.step(opt)
        self.scaler.update()
        lr_used = opt.param_groups[0]["lr"]
        self.scheduler.step()
        opt.zero_grad(set_to_none=True)
        if cfg.learn_temperature:
            with torch.no_grad():
                self.model.logit_scale.clamp_(0, math.log(cfg.max_logit_scale))
        micro = self._micro
        self.batch += micro
        self.step_count += 1
        self._in_update = False
        now = time.perf_counter()
        dt = now - self._t_step
        self.seconds += dt
        self._t_step = now
        r = self.row("train", loss=self._loss_sum / micro, lr=lr_used,
                     images_per_s=images * micro * self.world_size / dt if dt > 0 else float("nan"),
                     **{k: v / micro for k, v in self._log_sums.items()})
        self.history.rows.append(r)
        self._micro, self._loss_sum, self._log_sums = 0, 0.0, {}
        if self.bar is not None:
            self.bar.update(1)
            if self.main and self.bar.disable is False:
                self.bar.set_postfix(loss=f"{r['loss']:.4f}", lr=f"{lr_used:.2e}", refresh=False)
        self.emit("step_end", r)
        if cfg.save_every_steps and self.step_count % cfg.save_every_steps == 0 and self.batch < self.batches_per_epoch:
            self.save("every_steps")
        over_time = cfg.max_minutes is not None and time.perf_counter() - self._t_start > 60 * cfg.max_minutes
        interrupt, over_time = self.sync_flags(self.stop.requested, over_time)
        if interrupt:
            raise KeyboardInterrupt
        if cfg.max_steps is not None and self.step_count >= cfg.max_steps:
            self.history.stopped = "max_steps"
        elif over_time:
            self.history.stopped = "max_minutes"
        self._t_step = time.perf_counter()

    def _non_finite(self, what: str, value: float | str, loss: float | None = None) -> NonFiniteLossError:
        """The error for a NaN/inf ``what`` (``"loss"``, ``"gradients"``, ``"weights"``, see
        :func:`cliptk.train.guard.non_finite_message`). Weights that are no longer finite
        (corrupted outside an update: a hook, a callback) are reset to the last checkpoint's."""
        bad = value if what == "weights" else ckpt.first_nonfinite(self.model.state_dict())  # failure path only
        kept = run_dir.reset_weights(self.model, self.history.checkpoint, self.device) if bad is not None else \
            f"the model in memory holds the weights of step {self.step_count}"
        h = self.history
        msg = non_finite_message(what, value, loss, bad_weights=bad, kept=kept, cfg=self.config, epoch=self.epoch,
                                 step=self.step_count, batch=self.batch + self._micro, checkpoint=h.checkpoint)
        return NonFiniteLossError(msg, epoch=self.epoch, step=self.step_count,
                                  loss=float(value) if what == "loss" else (loss if loss is not None else float("nan")),
                                  checkpoint=h.checkpoint, history=h, kind=what)

    # ------------------------------------------------------------------------- batches and epochs
    def batches(self) -> Iterator[Batch]:
        """The micro-batches of the current epoch not done yet (a resumed epoch skips its first
        ``batch``), on the device, jointly flipped (:func:`cliptk.train.joint_flip`)."""
        cfg = self.config
        self.sampler.set_epoch(self.epoch)
        loader = DataLoader(self.images, batch_sampler=SkipBatches(self.sampler, self.batch),
                            num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator(), persistent_workers=False)
        self._micro, self._loss_sum, self._log_sums = 0, 0.0, {}
        self._t_step = time.perf_counter()
        it = iter(loader)
        index = self.batch
        while index < self.batches_per_epoch:
            try:
                x, idx = next(it)
            except StopIteration:
                return
            except Exception:
                if self.stop.requested:  # workers got the SIGINT too
                    raise KeyboardInterrupt from None
                raise
            b = x.shape[0] // 2
            x = joint_flip(x.to(self.device, non_blocking=True), cfg.seed, self.epoch, index, self.rank,
                           self.world_size, cfg.flip_p)
            ids = torch.as_tensor(self.train.pids[idx[:b].numpy()], device=self.device)
            yield Batch(x, ids, {"index": idx})
            index += 1

    def end_epoch(self) -> None:
        """After an epoch's last step: evaluate (per ``eval_every``), checkpoint, ``"epoch_end"``."""
        cfg, epoch = self.config, self.epoch
        if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            self.evaluate()
        elif not cfg.eval_every and epoch + 1 == cfg.epochs:
            self.evaluate()
        losses = [r["loss"] for r in self.history.rows if r["kind"] == "train" and r["epoch"] > epoch]
        final = self.history.final
        last_eval = final if final.get("epoch") == epoch + 1 else {}
        self.epoch, self.batch = epoch + 1, 0
        self.save("epoch_end")
        self.emit("epoch_end", self.row("epoch", loss=float(np.mean(losses)) if losses else float("nan"),
                                        mAP=last_eval.get("mAP", float("nan")),
                                        rank1=last_eval.get("rank1", float("nan"))))
        if self.sync_flags(self.stop.requested)[0]:
            raise KeyboardInterrupt

    # ------------------------------------------------------------------------- the loop
    def fit(self) -> History:
        """Run the remaining epochs and return the :class:`cliptk.train.History` (see :func:`fit`
        for Ctrl-C, the files written and what is raised)."""
        cfg, h = self.config, self.history
        self.bar = tqdm(total=self.total_steps, initial=self.step_count, desc="fit", unit="step",
                        disable=not (cfg.progress and self.main), dynamic_ncols=True)
        self._t_start = time.perf_counter()
        self._in_update = False
        self.model.train()
        try:
            with self.stop:
                self.emit("train_begin", self.row("begin"))
                if self.fresh and cfg.eval_before:
                    self.evaluate()
                if not self.fresh and cfg.max_steps is not None and self.step_count >= cfg.max_steps:
                    self._resumed_at_max_steps()
                while self.epoch < cfg.epochs and not h.stopped:
                    for batch in self.batches():
                        self.step(batch)
                        if h.stopped:
                            break
                    if h.stopped:
                        self.evaluate()
                        self.save(h.stopped)
                        break
                    self.end_epoch()
        except KeyboardInterrupt:
            self._interrupted()
        finally:
            self.bar.close()
            self.model.train(self._was_training)
        if self.main and cfg.output_dir and not h.interrupted:
            self._check_weights()
            run_dir.write_final(cfg, self.model, self.step_count, h.checkpoint)
        self.emit("train_end", h.rows[-1] if h.rows else None)
        return h

    def _resumed_at_max_steps(self) -> None:
        """A run resumed at (or past) ``max_steps`` trains no further step; it only adds what an
        uninterrupted run did on reaching ``max_steps`` (its evaluation and ``"max_steps"``
        checkpoint) when the checkpoint came before that, e.g. from an interrupt."""
        h = self.history
        h.stopped = "max_steps"
        if self._resume_reason == "max_steps":
            return
        evaluated = bool(h.rows) and h.rows[-1]["kind"] == "eval" and h.rows[-1]["step"] == self.step_count
        if not evaluated:
            self.evaluate()
        self.save("max_steps")

    def _check_weights(self) -> None:
        """Raise :class:`NonFiniteLossError` (after resetting the model to the last checkpoint)
        if any weight is NaN/inf: nothing non-finite is ever written."""
        bad = ckpt.first_nonfinite(self.model.state_dict())
        if bad is not None:
            raise self._non_finite("weights", bad)

    def _interrupted(self) -> None:
        h = self.history
        h.interrupted, h.stopped = True, "interrupted"
        if self._in_update:
            log.warning("interrupted inside an optimizer update: no checkpoint saved (the state may be torn); "
                        "the last checkpoint is %s", h.checkpoint)
        else:
            try:
                self.save("interrupted", collective=False)
            except KeyboardInterrupt:
                log.warning("interrupted again while saving; the last complete checkpoint is %s", h.checkpoint)
        if self.main:
            log.warning("training interrupted at epoch %d, step %d; checkpoint: %s (resume with fit(..., resume=...))",
                        self.epoch, self.step_count, h.checkpoint)

    # ------------------------------------------------------------------------- rows, events, files
    def row(self, kind: str, **values) -> dict:
        """A History row of ``kind`` at the current position (NaN for the columns not given)."""
        r = {c: float("nan") for c in COLUMNS}
        r.update(kind=kind, epoch=self.epoch + self.batch / self.batches_per_epoch, step=self.step_count,
                 seconds=self.seconds, lr=self.optimizer.param_groups[0]["lr"],
                 logit_scale=float(self.model.logit_scale.detach().exp()))
        r.update({k: v.item() if isinstance(v, (np.generic, torch.Tensor)) else v for k, v in values.items()})
        return r

    def emit(self, event: str, r: dict | None = None) -> None:
        """Call every callback with ``event``, the row's fields, ``history``, ``model``, ``config``, ``rank``."""
        for cb in self.callbacks:
            cb({"event": event, **(r or {}), "history": self.history, "model": self.model, "config": self.config,
                "rank": self.rank})

    def evaluate(self) -> None:
        """Score the model on ``eval_data``'s query/gallery splits (rank 0; the row is broadcast),
        append the ``"eval"`` row and call the ``"eval"`` callbacks. Nothing without ``eval_data``."""
        if self.eval_data is None:
            return
        cfg = self.config
        r = None
        if self.main:
            res = evaluate(self.model, self.eval_data, query=cfg.query_split, gallery=cfg.gallery_split,
                           flip=cfg.eval_flip, batch_size=cfg.eval_batch_size, progress=False)
            r = self.row("eval", mAP=res.mAP, rank1=res.cmc[1])
        r = from_rank0(r, self.world_size)
        self.history.rows.append(r)
        self.emit("eval", r)
        if self.main and self.bar is not None:
            self.bar.set_postfix_str(f"mAP={r['mAP']:.4f} rank-1={r['rank1']:.4f}", refresh=False)

    def state(self, reason: str) -> dict:
        """Everything a checkpoint stores besides the weights (:func:`cliptk.train.run_dir.trainer_state`)."""
        return run_dir.trainer_state(self, reason)

    def save(self, reason: str, collective: bool = True) -> None:
        """Write a checkpoint and ``history.csv`` (rank 0, with ``output_dir``); with several
        processes, every rank learns its path (unless ``collective=False``)."""
        if not self.config.output_dir:
            return
        h = self.history
        self._check_weights()   # on every rank (the weights are the same), so every rank raises together
        h.checkpoint = run_dir.save(self.config, self.model, self.state(reason) if self.main else {},
                                    h.table if self.main else None, main=self.main, world_size=self.world_size,
                                    collective=collective, checkpoint=h.checkpoint)

    def sync_flags(self, *flags: bool) -> list[bool]:
        """Any rank's flag stops every rank (ranks must leave the loop at the same step)."""
        return any_rank(flags, self.world_size, self.device)


# =============================================================================== fit
def fit(model: ClipModel, train_data: ReIdDataset, config: TrainConfig | None = None,
        eval_data: ReIdDataset | None = None, *, callbacks: Sequence[Callable[[dict], Any]] = (),
        resume: str | os.PathLike | bool | None = None, loss_fn: nn.Module | None = None,
        sampler=None, trainer: type[Trainer] = Trainer) -> History:
    """Fine-tune ``model``'s image tower on identity pairs from ``train_data`` (CLIP-ReIdent).

    Args:
        model: a :class:`cliptk.ClipModel` (it is moved to ``config.device`` and trained in place;
            a text tower, if present, is frozen).
        train_data: a :class:`cliptk.ReIdDataset`; if it holds several splits, the
            ``config.train_split`` rows are used. Identities need >= 2 images.
        config: a :class:`cliptk.train.TrainConfig` (default: CLIP-ReIdent's recipe).
        eval_data: a dataset with ``config.query_split`` and ``config.gallery_split`` rows, scored
            (mAP, rank-1) before training and after every ``eval_every`` epochs; None = no evaluation.
        callbacks: functions called with an event dict at ``"train_begin"``, ``"step_end"``,
            ``"eval"``, ``"epoch_end"`` and ``"train_end"``. The dict holds ``event``, the history
            row's fields (``epoch``, ``step``, ``loss``, ``lr``, ``logit_scale``, ``mAP``,
            ``rank1``, ``images_per_s``, ``seconds``), ``history`` (the History), ``model``,
            ``config`` and ``rank``. Raising ``KeyboardInterrupt`` stops training like Ctrl-C
            (see :func:`cliptk.train.live_plot` for a ready-made one).
        resume: a checkpoint directory, a run's ``output_dir``, or True for ``config.output_dir``:
            continue exactly where that run stopped (weights, optimizer, schedule, RNG, sampler,
            history). The current ``config`` is used; fields that differ from the checkpoint's are
            warned about.
        loss_fn: a loss module with the :mod:`cliptk.losses` signature, replacing ``config.loss``.
        sampler: a batch sampler over the rows of the training split replacing the default
            :class:`cliptk.samplers.UniqueIdPairSampler` (e.g. one that builds batches of hard
            negatives). It must yield flat index lists ``[q_1..q_B, p_1..p_B]``, have ``len()`` and
            ``set_epoch(epoch)``, and be deterministic given its seed and epoch (exact resume
            re-creates an epoch and skips its first batches); under DDP it must shard by rank.
        trainer: the :class:`Trainer` class to run, e.g. a subclass overriding
            :meth:`Trainer.compute_loss` (see its docstring), or the one ``config.objective`` /
            ``distill_teacher`` name: ``trainer=cliptk.train.trainer_for(config)``.

    Ctrl-C: the first one lets the current step finish, saves a checkpoint (with ``output_dir``)
    and returns; a second one stops at once (a checkpoint is still saved unless the interrupt
    landed inside an optimizer update). The model stays in memory either way.

    Files (with ``output_dir``): ``config.yaml``, ``checkpoints/step-NNNNNNNN/`` (atomic, see
    :mod:`cliptk.train.checkpoint`), ``history.csv`` and, after a run that was not interrupted,
    ``model.safetensors``; never weights holding NaN/inf. A fresh run (no ``resume``) refuses an
    ``output_dir`` that already holds a run's checkpoints, weights or history unless
    ``config.overwrite`` is True (which deletes just those first). A resume that finds its newest
    checkpoint unreadable warns (naming the file) and continues from the one before. Under
    torchrun only rank 0 evaluates, logs and writes.

    Returns:
        The :class:`cliptk.train.History` (``interrupted=True`` after Ctrl-C, which is not
        re-raised; a command line should check the flag and exit with status 130).

    Raises:
        NonFiniteLossError: the loss, the gradients (with a finite loss) or the weights became
            NaN/inf (the message names what, the epoch, step and value; the model holds the last
            good weights and the last checkpoint is untouched).
        KeyError: ``train_data`` lacks the train split. ValueError: too few identities for the
            batch size, a batch of one pair, or an unreadable training image.
            FileNotFoundError: ``resume`` names no checkpoint. RunExistsError (a ValueError):
            ``output_dir`` holds another run. CheckpointError: no readable checkpoint to resume.
            OSError: a file could not be written (the message names it; the previous checkpoint
            is intact).

    Example:
        >>> history = fit(model, data, TrainConfig(epochs=2, lr=1e-4), eval_data=data)  # doctest: +SKIP
        >>> history.evals                                                                 # doctest: +SKIP
    """
    cfg = config if config is not None else TrainConfig()
    started_dist = init_distributed(cfg.device)
    try:
        return trainer(model, train_data, cfg, eval_data, callbacks=callbacks, resume=resume, loss_fn=loss_fn,
                       sampler=sampler).fit()
    finally:
        if started_dist:
            dist.destroy_process_group()
