"""Image–text fine-tuning on (image, caption) rows with the same :func:`cliptk.train.fit`: both
towers, or one locked (LiT).

``fit`` trains the image tower on image–image pairs and freezes the text tower. A dataset with
captions (a CSV manifest's ``caption`` column, or the synthetic world's captions) can instead train
CLIP's own objective, the symmetric image–text InfoNCE (Radford et al., ICML 2021), with:

- ``lock="none"`` (``TrainConfig.lock``; ``None`` for :meth:`ImageTextTrainer.locked`) — both towers train;
- ``lock="image"`` — LiT ("locked-image tuning", Zhai et al., CVPR 2022): the image tower is
  frozen and the text tower learns to describe it (open_clip's ``--lock-image``);
- ``lock="text"`` — the reverse: the image tower learns to match a fixed text tower
  (open_clip's ``--lock-text``).

:class:`ImageTextTrainer` is a :class:`cliptk.train.Trainer` that overrides only
:meth:`~cliptk.train.Trainer.compute_loss` (plus its batches and evaluation row), so optimisation,
AMP, checkpoints, exact resume, Ctrl-C and the History are the ones of ``fit``. The config chooses
it: ``TrainConfig(objective="image_text", lock="none" | "image" | "text")``, which
:func:`cliptk.train.trainer_for` and :func:`cliptk.recipes.run_from_config` (``python -m cliptk
train``) turn into this trainer. A locked tower's parameters get ``requires_grad=False`` before the
optimizer is built (:func:`cliptk.train.prepare.prepare_model`), so they stay bit for bit
unchanged. Batches are :class:`CaptionBatchSampler`'s: ``2·batch_size`` captioned rows in a
random order each epoch (each row once). Rows with the same caption text (the synthetic captions
name only colour and number) are given one caption id, passed as ``ids`` to the loss: with
``TrainConfig(loss="supcon")`` or ``"decoupled"`` they count as positives of each other; plain
``"infonce"`` treats them as negatives, as CLIP does. Evaluation rows add text retrieval
(``t2i_R1``, ``t2i_R5``, ``i2t_R1``) to re-id ``mAP`` / ``rank1`` (NaN without query/gallery
splits).

:func:`evaluate_image_text` is the before/after table: text→image and image→text recall@k from
the captions, zero-shot accuracy on a metadata column with prompts, and re-id mAP when the data
has identities.

Example (a random ``cliptk-micro`` with its text tower, LiT, two steps):
    >>> import tempfile
    >>> from cliptk.data import read_deepsportradar
    >>> from cliptk.models import load_model
    >>> from cliptk.synthetic import generate_players
    >>> from cliptk.train import TrainConfig, fit
    >>> data = read_deepsportradar(generate_players(tempfile.mkdtemp(), n_train_ids=8, n_test_ids=3,
    ...                            images_per_id=3, size=(32, 64), workers=1, challenge=False))
    >>> model = load_model("cliptk-micro", None)
    >>> cfg = TrainConfig(batch_size=4, max_steps=2, eval_before=False, progress=False, device="cpu")
    >>> history = fit(model, data, cfg, trainer=ImageTextTrainer.locked("image"))
    >>> len(history.steps), model.visual.conv1.weight.requires_grad
    (2, False)
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .._util import world
from ..data import ReIdDataset
from ..embed import embed, embed_texts
from ..evaluate import evaluate, zero_shot_probe
from ..models import ClipModel
from .batches import Batch, train_rows
from .config import LOCKS, TrainConfig
from .devices import from_rank0
from .loop import Trainer
from .prepare import apply_lock, require_text_tower

__all__ = ["ImageTextTrainer", "CaptionBatchSampler", "evaluate_image_text", "retrieval_recall", "apply_lock",
           "compare"]


# =============================================================================== batches
class CaptionBatchSampler:
    """Batches of ``2 * batch_size`` captioned rows (per rank), each row once per epoch, in a
    random order that depends only on (seed, epoch); the global batch of ``2 * batch_size *
    world_size`` rows is sharded by rank. The last incomplete batch is dropped.

    Args:
        captioned: ``[N]`` bool, the rows that have a caption.
        batch_size: half the rows of a batch (``TrainConfig.batch_size``: a batch holds as many
            images as an image–image batch of that many pairs).

    Raises:
        ValueError: fewer captioned rows than one global batch.

    Example:
        >>> s = CaptionBatchSampler([True] * 10, batch_size=2)
        >>> len(s), len(next(iter(s)))
        (2, 4)
    """

    def __init__(self, captioned: Sequence[bool] | np.ndarray, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.rows = np.flatnonzero(np.asarray(captioned, dtype=bool))
        self.batch_size, self.seed, self.rank, self.world_size = int(batch_size), int(seed), rank, world_size
        self.epoch = 0
        per_global = 2 * self.batch_size * world_size
        if len(self.rows) < per_global:
            raise ValueError(f"{len(self.rows)} captioned rows cannot fill one batch of {per_global} images "
                             f"(2 x batch_size={self.batch_size} x {world_size} process(es)); lower batch_size")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows) // (2 * self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch, 0xCA9]).permutation(self.rows)
        per_rank = 2 * self.batch_size
        per_global = per_rank * self.world_size
        for s in range(0, len(self) * per_global, per_global):
            yield order[s + self.rank * per_rank:s + (self.rank + 1) * per_rank].tolist()


class _TwoTowers(nn.Module):
    """Both towers in one forward pass, so DDP sees (and synchronises) the text tower too."""

    def __init__(self, model: ClipModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clip = self.model.clip
        return clip.encode_image(images, normalize=False), clip.encode_text(tokens, normalize=False)


# =============================================================================== the trainer
class ImageTextTrainer(Trainer):
    """Symmetric image–text InfoNCE on (image, caption) rows, both towers or one locked (LiT).

    Chosen by ``TrainConfig(objective="image_text", lock=...)`` (:func:`cliptk.train.trainer_for`),
    or passed (or :meth:`locked`) to :func:`cliptk.train.fit` as ``trainer=``. The lock is
    ``TrainConfig.lock`` when the config says ``objective="image_text"``, else the class attribute
    (:meth:`locked` sets it); the run's config (and its ``config.yaml``) records both, so a resume
    picks the same trainer and lock. The criterion is ``TrainConfig.loss`` at the model's logit scale,
    called with the image embeddings as ``a``, the caption embeddings as ``b`` and the caption
    ids as ``ids``. Training data: the ``train_split`` rows with a caption (others are skipped).

    Raises:
        ValueError: the model has no text tower, no training row has a caption, an unknown
            ``lock``, a config ``lock`` that differs from the class's, or ``reinit_blocks`` with
            a locked image tower.
    """

    lock: str | None = None
    objective = "image_text"

    @classmethod
    def locked(cls, lock: str | None) -> type["ImageTextTrainer"]:
        """A subclass with ``lock`` set (None or ``"none"``, ``"image"``, ``"text"``), for ``fit(..., trainer=...)``."""
        if lock is not None and lock not in LOCKS:
            raise ValueError(f"ImageTextTrainer.locked({lock!r}): choose None or one of {LOCKS}")
        return type(cls.__name__, (cls,), {"lock": lock, "__module__": cls.__module__})

    def __init__(self, model: ClipModel, train_data: ReIdDataset, config: TrainConfig | None = None,
                 eval_data: ReIdDataset | None = None, *, sampler=None, **kwargs) -> None:
        cfg = config if config is not None else TrainConfig()
        mine = "none" if type(self).lock is None else type(self).lock
        if cfg.objective == "image_text" and mine != "none" and cfg.lock != mine:
            raise ValueError(f"TrainConfig.lock={cfg.lock!r} but the trainer is "
                             f"{type(self).__name__}.locked({mine!r}); drop one of the two")
        cfg = cfg.replace(objective="image_text", lock=cfg.lock if cfg.objective == "image_text" else mine)
        self.lock = None if cfg.lock == "none" else cfg.lock
        require_text_tower(model)   # before the base class claims (and with overwrite clears) output_dir
        rows = train_rows(train_data, cfg)
        captions = rows.table["caption"] if "caption" in rows.table.columns else pd.Series([None] * len(rows))
        captioned = captions.notna().to_numpy() & (captions.astype(str).str.strip() != "").to_numpy()
        if not captioned.any():
            raise ValueError(f"{rows.name}: no training row has a caption; image-text training needs a 'caption' "
                             "column (a CSV manifest path,pid,caption,...)")
        texts = np.array([str(c) if ok else "" for c, ok in zip(captions.tolist(), captioned)], dtype=object)
        self.captions = texts
        self.caption_ids = np.unique(texts, return_inverse=True)[1].reshape(-1)
        if sampler is None:
            rank, world_size = world()
            sampler = CaptionBatchSampler(captioned, cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world_size)
        super().__init__(model, train_data, cfg, eval_data, sampler=sampler, **kwargs)
        self.towers: nn.Module = _TwoTowers(model)
        if self.world_size > 1:
            self.towers = nn.parallel.DistributedDataParallel(
                self.towers, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def compute_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch's images against their captions' embeddings (``TrainConfig.loss``)."""
        images, _, extras = batch
        idx = np.asarray(extras["index"])
        tokens = self.model.tokenizer([self.captions[i] for i in idx]).to(self.device)
        with self.autocast():
            img, txt = self.towers(images, tokens)
        ids = torch.as_tensor(self.caption_ids[idx], device=self.device)
        with torch.autocast(images.device.type, enabled=False):
            loss = self.criterion(img.float(), txt.float(), self.model.logit_scale.exp(), ids=ids)
        same = ids[:, None] == ids[None, :]
        n = same.shape[0]
        return loss, {"same_caption": (same.sum() - n).float() / max(n * (n - 1), 1)}

    def evaluate(self) -> None:
        """The ``"eval"`` row: re-id ``mAP`` / ``rank1`` (when ``eval_data`` has the query and
        gallery splits) and ``t2i_R1``, ``t2i_R5``, ``i2t_R1`` on ``eval_data``'s captioned rows."""
        if self.eval_data is None:
            return
        cfg = self.config
        r = None
        if self.main:
            res = evaluate_image_text(self.model, self.eval_data, ks=(1, 5), query=cfg.query_split,
                                      gallery=cfg.gallery_split, batch_size=cfg.eval_batch_size)
            r = self.row("eval", mAP=res.get("mAP", float("nan")), rank1=res.get("rank1", float("nan")),
                         t2i_R1=res["t2i_R@1"], t2i_R5=res["t2i_R@5"], i2t_R1=res["i2t_R@1"])
        r = from_rank0(r, self.world_size)
        self.history.rows.append(r)
        self.emit("eval", r)


# =============================================================================== evaluation
def retrieval_recall(image_emb: torch.Tensor, captions: Sequence[str], text_emb_of, ks: Sequence[int] = (1, 5, 10)
                     ) -> dict[str, float]:
    """Text→image and image→text recall@k with repeated captions handled.

    The queries of text→image are the **distinct** captions; a query is a hit at ``k`` when any
    image carrying that caption is among its ``k`` most similar images. Image→text: each image
    ranks the distinct captions; a hit when its own caption is among the top ``k``.

    Args:
        image_emb: ``[N, D]`` image embeddings (normalised here).
        captions: ``N`` caption strings, one per image.
        text_emb_of: a function ``list[str] -> [M, D]`` text embeddings (e.g.
            ``lambda t: cliptk.embed_texts(model, t)``).
        ks: the ``k`` values (clipped to the number of candidates).

    Returns:
        ``{"t2i_R@k": ..., "i2t_R@k": ..., "n_captions": M, "n_images": N}``.

    Example:
        >>> e = torch.eye(3)
        >>> retrieval_recall(e, ["a", "b", "a"], lambda t: torch.stack([e[0] + e[2] if s == "a" else e[1] for s in t]),
        ...                  ks=(1,))["t2i_R@1"]
        1.0
    """
    captions = [str(c) for c in captions]
    if len(captions) != image_emb.shape[0] or not captions:
        raise ValueError(f"retrieval_recall: {image_emb.shape[0]} images but {len(captions)} captions")
    unique, code = np.unique(np.array(captions, dtype=object), return_inverse=True)
    img = F.normalize(torch.as_tensor(image_emb, dtype=torch.float32), dim=-1)
    txt = F.normalize(torch.as_tensor(text_emb_of(list(unique)), dtype=torch.float32), dim=-1)
    sim = (txt @ img.T).numpy()                       # [M captions, N images]
    code = code.reshape(-1)
    out: dict[str, float] = {}
    rel = code[None, :] == np.arange(len(unique))[:, None]
    t2i_order = np.argsort(-sim, axis=1, kind="stable")
    i2t_order = np.argsort(-sim.T, axis=1, kind="stable")
    for k in ks:
        kt, ki = min(k, sim.shape[1]), min(k, sim.shape[0])
        out[f"t2i_R@{k}"] = float(np.take_along_axis(rel, t2i_order[:, :kt], axis=1).any(axis=1).mean())
        out[f"i2t_R@{k}"] = float((i2t_order[:, :ki] == code[:, None]).any(axis=1).mean())
    out["n_captions"], out["n_images"] = len(unique), len(captions)
    return out


def evaluate_image_text(model: ClipModel, dataset: ReIdDataset, *, splits: Sequence[str] | None = None,
                        ks: Sequence[int] = (1, 5, 10), column: str | None = None,
                        prompts: dict | Sequence[str] | None = None, query: str = "query", gallery: str = "gallery",
                        batch_size: int = 64, progress: bool = False) -> dict[str, float]:
    """What image–text fine-tuning changed: retrieval from the captions, a zero-shot probe, re-id.

    Args:
        model: a :class:`cliptk.ClipModel` with its text tower.
        dataset: rows with captions (rows without one are left out of retrieval).
        splits: the rows scored for retrieval and the probe (default: ``query`` and ``gallery``
            when the dataset has them, else every row).
        ks: recall@k values.
        column, prompts: a zero-shot probe of a metadata column (:func:`cliptk.zero_shot_probe`),
            e.g. ``"number"`` and ``dict(enumerate(ct.synthetic.number_prompts()))``.
        query, gallery: the re-id splits; ``mAP`` and ``rank1`` are added when both exist and
            the gallery holds the queries' identities.

    Returns:
        A dict: ``t2i_R@k``, ``i2t_R@k`` (see :func:`retrieval_recall`), ``n_captions``,
        ``zero_shot`` and ``chance`` (with a probe), ``mAP`` and ``rank1`` (with re-id splits).

    Raises:
        ValueError: no row to score has a caption, or the model has no text tower.
    """
    if model.image_only:
        raise ValueError(f"{model.name} has no text tower (image_only=True); retrieval needs one")
    names = dataset.split_names
    if splits is None:
        splits = [s for s in (query, gallery) if s in names] or names
    data = dataset.subset(*splits)
    caps = data.table["caption"]
    keep = caps.notna().to_numpy() & (caps.astype(str).str.strip() != "").to_numpy()
    out: dict[str, float] = {}
    emb = embed(model, data, batch_size=batch_size, progress=progress)   # once, for retrieval and the probe
    if keep.any():
        out.update(retrieval_recall(emb[np.flatnonzero(keep)], caps[keep].tolist(), lambda t: embed_texts(model, t),
                                    ks))
    elif column is None and not (query in names and gallery in names):
        raise ValueError(f"{dataset.name}: no caption in splits {list(splits)} and nothing else to score")
    else:
        out.update({f"{d}_R@{k}": float("nan") for d in ("t2i", "i2t") for k in ks})
    if column is not None:
        probe = zero_shot_probe(model, data, column, prompts, image_emb=emb, progress=False)
        out["zero_shot"], out["chance"] = probe.accuracy, probe.chance
    if query in names and gallery in names:
        res = evaluate(model, dataset, query=query, gallery=gallery, batch_size=batch_size, progress=progress)
        out["mAP"], out["rank1"] = res.mAP, float(res.cmc[1])
    return out


def compare(results: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per named :func:`evaluate_image_text` result (e.g. ``{"zero-shot": ..., "LiT": ...}``)."""
    return pd.DataFrame.from_dict(results, orient="index")
