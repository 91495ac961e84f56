"""Distillation from cached teacher embeddings (cliptk.train.distill): the loss is open_clip's
DistillClipLoss, the cache holds each training row in each view, and the trainer looks up the view the
joint flip gave each image, without a teacher forward pass."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import DistillClipLoss

from cliptk.losses import LOSSES
from cliptk.models import save_model
from cliptk.train import TrainConfig, Trainer, fit, trainer_for
from cliptk.train.distill import (DistillLoss, DistillTrainer, TeacherCache, cache_teacher_embeddings,
                                  neighbour_agreement)
from conftest import make_model


def _inputs(seed=0, b=7, d=12, dt=20):
    g = torch.Generator().manual_seed(seed)
    a, p = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)   # query / positive (student)
    ta, tp = torch.randn(b, dt, generator=g), torch.randn(b, dt, generator=g)  # teacher, another width
    return a, p, ta, tp


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_equals_open_clip_distill_clip_loss(seed):
    a, p, ta, tp = _inputs(seed)
    scale, t_scale = 14.0, 60.0
    # open_clip does not normalise its inputs: give it the unit vectors; ours normalises inside
    n = [F.normalize(x, dim=-1) for x in (a, p, ta, tp)]
    contrastive, distill = DistillClipLoss()(n[0], n[1], scale, n[2], n[3], t_scale)
    kw = dict(teacher=(ta, tp), teacher_scale=t_scale)
    torch.testing.assert_close(DistillLoss(1.0, 1.0)(a, p, scale, **kw), contrastive + distill)
    torch.testing.assert_close(DistillLoss(1.0, 0.0)(a, p, scale, **kw), contrastive)
    only = DistillLoss(0.0, 1.0)
    torch.testing.assert_close(only(a, p, scale, **kw), distill)
    assert only.last_terms == pytest.approx({"contrastive": contrastive.item(), "distill": distill.item()}, rel=1e-5)
    mix = DistillLoss(0.3, 0.7)(a, p, scale, **kw)
    torch.testing.assert_close(mix, 0.3 * contrastive + 0.7 * distill)


def test_loss_gradients_equal_open_clip():
    a, p, ta, tp = _inputs(2)
    a1, p1 = a.clone().requires_grad_(), p.clone().requires_grad_()
    sum(DistillClipLoss()(F.normalize(a1, dim=-1), F.normalize(p1, dim=-1), 10.0, F.normalize(ta, dim=-1),
                          F.normalize(tp, dim=-1), 50.0)).backward()
    a2, p2 = a.clone().requires_grad_(), p.clone().requires_grad_()
    DistillLoss()(a2, p2, 10.0, teacher=(ta, tp), teacher_scale=50.0).backward()
    torch.testing.assert_close(a2.grad, a1.grad)
    torch.testing.assert_close(p2.grad, p1.grad)


def test_registered_but_refused_by_a_plain_config():
    assert LOSSES["distill"] is DistillLoss
    with pytest.raises(ValueError, match="teacher="):
        TrainConfig(loss="distill")
    with pytest.raises(TypeError, match="teacher"):
        DistillLoss()(*_inputs()[:2], 10.0)


def test_cache_holds_every_row_in_both_views_and_round_trips(tiny_players, tmp_path):
    teacher = make_model("cliptk-micro", seed=3, image_only=True)
    cache = cache_teacher_embeddings(teacher, tiny_players, batch_size=5, path=tmp_path / "t.safetensors")
    train = tiny_players.subset("train")
    assert cache.embeddings.shape == (2, len(train), teacher.embed_dim) and cache.paths == train.table["path"].tolist()
    x = torch.stack([teacher.preprocess(train[i]) for i in (0, 4)])
    with torch.no_grad():
        plain, flip = teacher.encode_image(x), teacher.encode_image(x.flip(-1))
    torch.testing.assert_close(cache.lookup([0, 4], [False, True]), torch.stack([plain[0], flip[1]]))
    assert cache.logit_scale == pytest.approx(float(teacher.logit_scale.detach().exp()))
    back = TeacherCache.load(tmp_path / "t.safetensors")
    assert torch.equal(back.embeddings, cache.embeddings) and back.paths == cache.paths
    with pytest.raises(FileNotFoundError, match="cache_teacher_embeddings"):
        TeacherCache.load(tmp_path / "missing.safetensors")


def test_trainer_uses_the_cached_view_of_every_flipped_or_plain_image(tiny_players):
    """The teacher is a copy of the student (and lr is ~0, so the student stays put), so the student's
    embedding of every image must equal the cached teacher embedding of the view the joint flip produced."""
    student = make_model("cliptk-micro", seed=4, image_only=True)
    cache = cache_teacher_embeddings(copy.deepcopy(student), tiny_players)
    seen = []

    class Spy(DistillTrainer.using(cache, contrastive_weight=0.5, distill_weight=0.5)):
        def compute_loss(self, batch):
            with torch.no_grad():
                emb = F.normalize(self.encode(batch.images), dim=-1)
            seen.append((emb, self.cache.lookup(batch.extras["index"], batch.extras["flipped"]),
                         batch.extras["flipped"]))
            return super().compute_loss(batch)

    cfg = TrainConfig(batch_size=4, max_steps=3, eval_before=False, progress=False, device="cpu", flip_p=0.5,
                      lr=1e-12, lr_end=0.0)
    h = fit(student, tiny_players, cfg, trainer=Spy)
    emb, teacher, flipped = (torch.cat(parts) for parts in zip(*seen))
    assert flipped.any() and not flipped.all()           # the check covers both views
    torch.testing.assert_close(emb, teacher, atol=1e-5, rtol=1e-5)
    assert {"contrastive", "distill"} <= set(h.steps.columns) and len(h.steps) == 3


def test_trainer_refuses_a_cache_of_other_rows(tiny_players):
    teacher = make_model("cliptk-micro", seed=5, image_only=True)
    cache = cache_teacher_embeddings(teacher, tiny_players.subset("query", "gallery"), split=None)
    cfg = TrainConfig(batch_size=4, max_steps=1, eval_before=False, progress=False, device="cpu")
    with pytest.raises(ValueError, match="rebuild it"):
        fit(make_model("cliptk-micro", image_only=True), tiny_players, cfg, trainer=DistillTrainer.using(cache))
    with pytest.raises(ValueError, match="needs a teacher cache"):
        fit(make_model("cliptk-micro", image_only=True), tiny_players, cfg, trainer=DistillTrainer)


def _student_run(data, cfg, trainer):
    h = fit(make_model("cliptk-micro", seed=6, image_only=True), data, cfg, trainer=trainer)
    return h.steps[["loss", "contrastive", "distill"]].to_numpy()


def test_the_config_names_the_teacher_as_a_cache_file_or_a_model(tiny_players, tmp_path):
    """TrainConfig(distill_teacher=..., distill_weight=λ) trains exactly as DistillTrainer.using(cache, 1 - λ, λ):
    from a cache file, and from a model whose embeddings the trainer caches itself (without moving the RNG)."""
    teacher = make_model("cliptk-micro", seed=7, image_only=True)
    save_model(teacher, tmp_path / "teacher.safetensors")
    cache = cache_teacher_embeddings(teacher, tiny_players, path=tmp_path / "cache.safetensors")
    cfg = TrainConfig(batch_size=4, max_steps=2, eval_before=False, progress=False, device="cpu", flip_p=0.5)
    reference = _student_run(tiny_players, cfg, DistillTrainer.using(cache, contrastive_weight=0.7,
                                                                     distill_weight=0.3))
    from_file = cfg.replace(distill_teacher=str(tmp_path / "cache.safetensors"), distill_weight=0.3)
    from_model = cfg.replace(distill_teacher="cliptk-micro", distill_weight=0.3,
                             distill_teacher_pretrained=str(tmp_path / "teacher.safetensors"))
    for c in (from_file, from_model):
        assert trainer_for(c) is DistillTrainer
        np.testing.assert_array_equal(_student_run(tiny_players, c, trainer_for(c)), reference)   # bitwise


def test_a_teacher_in_the_config_is_never_silently_ignored(tiny_players, tmp_path):
    cfg = TrainConfig(batch_size=4, max_steps=1, eval_before=False, progress=False, device="cpu",
                      distill_teacher=str(tmp_path / "cache.safetensors"))
    with pytest.raises(ValueError, match=r"TrainConfig\.distill_teacher=.*DistillTrainer, not by Trainer"):
        fit(make_model("cliptk-micro", image_only=True), tiny_players, cfg, trainer=Trainer)
    cache = cache_teacher_embeddings(make_model("cliptk-micro", image_only=True), tiny_players)
    with pytest.raises(ValueError, match=r"TrainConfig\.distill_teacher=.*both name a teacher"):
        fit(make_model("cliptk-micro", image_only=True), tiny_players, cfg, trainer=DistillTrainer.using(cache))
    (tmp_path / "cache.safetensors").write_bytes(b"not a cache")
    with pytest.raises(ValueError, match=r"cache\.safetensors is not a teacher cache"):
        fit(make_model("cliptk-micro", image_only=True), tiny_players, cfg, trainer=DistillTrainer)


def test_neighbour_agreement():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert neighbour_agreement(x, x) == 1.0
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]])   # 0↔2 and 1↔3 are now neighbours
    assert neighbour_agreement(x, y) == 0.0
    with pytest.raises(ValueError, match="same N"):
        neighbour_agreement(x, y[:3])
