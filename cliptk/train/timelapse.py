"""A training timelapse: the embeddings of a fixed probe set before training and after every epoch.

Pass a :class:`Timelapse` to :func:`cliptk.train.fit` as a callback. At ``"train_begin"`` (the
model before this run's first step) and at every ``"epoch_end"`` it embeds the probe images — a
few hundred held-out images, nothing of the training set, so a frame costs one forward pass over
the probe only — and keeps the embeddings with the probe's mAP. A run that stops between epoch
ends (``max_steps``, a time budget, Ctrl-C) gets one more frame at ``"train_end"``, labelled with
its step and why it stopped, so the last frame is always the model ``fit`` returned. :meth:`Timelapse.figure` animates
the frames as one aligned projection (:func:`cliptk.viz.timelapse.plot_timelapse`: Procrustes-aligned
PCA or AlignedUMAP, a slider and a play button, coloured by identity, mAP in the title), so one sees
look-alike clusters split apart as training proceeds.

The probe's mAP: with ``query`` and ``gallery`` splits, queries against the gallery (the
:func:`cliptk.evaluate_reid` protocol, cameras included); otherwise leave-one-out, each image
against all the others. Embedding runs in eval mode under :func:`torch.random.fork_rng`, so a run
with the callback trains exactly as one without it. Only rank 0 records under torchrun.

Example (a random-init ``cliptk-micro`` on a tiny generated world, two epochs):
    >>> import tempfile
    >>> from cliptk.data import read_deepsportradar
    >>> from cliptk.models import load_model
    >>> from cliptk.synthetic import generate_players
    >>> from cliptk.train import TrainConfig, fit
    >>> data = read_deepsportradar(generate_players(tempfile.mkdtemp(), n_train_ids=8, n_test_ids=3,
    ...                            images_per_id=3, size=(32, 64), workers=1, challenge=False))
    >>> lapse = Timelapse(data.subset("query", "gallery"))
    >>> cfg = TrainConfig(batch_size=4, epochs=2, eval_before=False, progress=False)
    >>> _ = fit(load_model("cliptk-micro", None, image_only=True), data, cfg, callbacks=[lapse])
    >>> [f.label for f in lapse.frames], lapse.embeddings.shape
    (['before training', 'epoch 1', 'epoch 2'], (3, 9, 32))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data import ReIdDataset
from ..metrics import evaluate_reid

__all__ = ["Timelapse", "Frame", "probe_map", "choose_probe"]


@dataclass(frozen=True)
class Frame:
    """One recorded moment: ``label`` ("before training", "epoch 3"), ``epoch`` (float, as
    History), optimizer ``step``, probe ``embeddings`` ``[N, D]`` (L2-normalised, float32) and
    the probe's ``mAP``."""

    label: str
    epoch: float
    step: int
    embeddings: np.ndarray
    mAP: float


def probe_map(embeddings: Any, probe: ReIdDataset) -> float:
    """The probe's mAP for ``embeddings`` (one row per probe image): ``query`` vs ``gallery``
    rows when the probe has both splits, else leave-one-out (each image a query against all the
    others; no camera filtering). NaN when no query has a match.

    Example:
        >>> import pandas as pd
        >>> probe = ReIdDataset(".", pd.DataFrame({"path": list("abcd"), "pid": [0, 0, 1, 1], "camid": 0,
        ...                                        "split": "all"}))
        >>> probe_map(np.array([[1, 0], [1, .1], [0, 1], [.1, 1]]), probe)
        1.0
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    splits = np.asarray(probe.splits)
    try:
        if {"query", "gallery"} <= set(splits.tolist()):
            q, g = splits == "query", splits == "gallery"
            cams = probe.has_cameras
            return evaluate_reid(emb[q], emb[g], probe.pids[q], probe.pids[g],
                                 probe.camids[q] if cams else None, probe.camids[g] if cams else None).mAP
        n = len(emb)
        own = np.arange(n)   # a distinct "camera" per image: only the image itself is dropped as junk
        return evaluate_reid(emb, emb, probe.pids, probe.pids, own, own).mAP
    except ValueError:       # no query with a match
        return float("nan")


def choose_probe(dataset: ReIdDataset, max_images: int = 400, seed: int = 0) -> ReIdDataset:
    """At most ``max_images`` rows of ``dataset``, whole identities chosen at random (so every
    probe identity keeps its query and gallery images); all of it when it is small enough.

    Example:
        >>> import pandas as pd
        >>> ds = ReIdDataset(".", pd.DataFrame({"path": list("abcdef"), "pid": [0, 0, 1, 1, 2, 2], "camid": 0,
        ...                                     "split": "all"}))
        >>> len(choose_probe(ds, max_images=4))
        4
    """
    if len(dataset) <= max_images:
        return dataset
    pids = dataset.pids
    ids, counts = np.unique(pids, return_counts=True)
    order = np.random.default_rng([seed, 31]).permutation(len(ids))
    keep, total = [], 0
    for i in order:
        if total + counts[i] <= max_images:
            keep.append(ids[i])
            total += counts[i]
    return dataset.select(np.isin(pids, keep))


class Timelapse:
    """A :func:`cliptk.train.fit` callback recording the probe's embeddings per epoch.

    Args:
        probe: the images to follow (e.g. ``data.subset("query", "gallery")`` of held-out
            identities); reduced to ``max_images`` whole identities by :func:`choose_probe`.
        max_images: the probe's size bound (a frame costs one forward pass over it).
        every: record every ``every`` epochs (and before training, and after the last epoch).
        batch_size: embedding batch size.

    Attributes:
        probe: the probe rows in use. frames: the :class:`Frame`\\ s so far.
        embeddings: ``[T, N, D]`` array of all frames. maps: ``[T]`` mAP per frame.
    """

    def __init__(self, probe: ReIdDataset, *, max_images: int = 400, every: int = 1, batch_size: int = 128,
                 seed: int = 0):
        if not isinstance(probe, ReIdDataset):
            raise TypeError(f"Timelapse: probe must be a cliptk ReIdDataset, got {type(probe).__name__}")
        if every < 1:
            raise ValueError(f"Timelapse: every={every} must be >= 1")
        self.probe = choose_probe(probe, max_images, seed)
        self.every, self.batch_size = every, batch_size
        self.frames: list[Frame] = []

    def record(self, model, label: str, epoch: float = 0.0, step: int = 0) -> Frame:
        """Embed the probe with ``model`` now and append a frame (also usable outside ``fit``)."""
        from ..embed import embed

        device = next(model.parameters()).device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):   # the DataLoader draws a seed: leave training's RNG alone
            emb = embed(model, self.probe, batch_size=self.batch_size, progress=False).numpy().astype(np.float32)
        frame = Frame(label, float(epoch), int(step), emb, probe_map(emb, self.probe))
        self.frames.append(frame)
        return frame

    def __call__(self, event: dict) -> None:
        if event.get("rank", 0) != 0:
            return
        kind = event.get("event")
        epoch = float(event.get("epoch", 0.0))
        if kind == "train_begin":
            if not self.frames or self.frames[-1].epoch != epoch:
                self.record(event["model"], "before training" if epoch == 0 else f"resumed at epoch {epoch:g}",
                            epoch, event.get("step", 0))
        elif kind == "epoch_end":
            last = getattr(event.get("config"), "epochs", None)
            if round(epoch) % self.every == 0 or (last is not None and round(epoch) >= last):
                self.record(event["model"], f"epoch {epoch:g}", epoch, event.get("step", 0))
        elif kind == "train_end":
            step = event.get("step")
            if self.frames and step is not None and self.frames[-1].step != step:
                why = (event["history"].stopped or "end").replace("_", " ")
                self.record(event["model"], f"step {step} ({why})", epoch, step)

    @property
    def embeddings(self) -> np.ndarray:
        """``[T, N, D]`` embeddings of every frame."""
        if not self.frames:
            raise ValueError("Timelapse has no frames yet: pass it to fit(..., callbacks=[timelapse])")
        return np.stack([f.embeddings for f in self.frames])

    @property
    def maps(self) -> np.ndarray:
        """``[T]`` probe mAP of every frame."""
        return np.array([f.mAP for f in self.frames])

    def figure(self, method: str = "pca", color_by: Any = "pid", **options):
        """The frames animated as one aligned projection (:func:`cliptk.viz.timelapse.plot_timelapse`;
        plotly loads here). ``fig.write_html(path)`` exports it."""
        from ..viz.timelapse import plot_timelapse

        return plot_timelapse(self.embeddings, labels=[f.label for f in self.frames], maps=self.maps,
                              dataset=self.probe, color_by=color_by, method=method, **options)

    def __repr__(self) -> str:
        body = ", ".join(f"{f.label}: mAP {f.mAP:.3f}" for f in self.frames) or "no frames"
        return f"Timelapse({len(self.probe)} probe images; {body})"
