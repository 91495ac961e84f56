"""Training timelapse: one frame before training and one per epoch, mAP per frame as evaluate_reid
gives on the stored embeddings, no effect on training, alignment that removes spurious motion."""
from __future__ import annotations

import numpy as np
import pytest

from cliptk.metrics import evaluate_reid
from cliptk.train import TrainConfig, fit
from cliptk.train.timelapse import Timelapse, choose_probe, probe_map
from cliptk.viz.timelapse import aligned_frames, frame_displacement, plot_timelapse
from conftest import make_model

EPOCHS = 2


def _fit(data, callbacks=()):
    model = make_model("cliptk-micro", seed=0, image_only=True)
    cfg = TrainConfig(batch_size=4, epochs=EPOCHS, eval_before=False, eval_every=0, progress=False, lr=1e-3,
                      per_epoch="identities")
    return fit(model, data, cfg, callbacks=list(callbacks))


@pytest.fixture(scope="module")
def recorded(tiny_players):
    lapse = Timelapse(tiny_players.subset("query", "gallery"))
    history = _fit(tiny_players, [lapse])
    return lapse, history


def test_one_frame_before_training_and_one_per_epoch(recorded, tiny_players):
    lapse, _ = recorded
    assert len(lapse.frames) == EPOCHS + 1
    assert [f.label for f in lapse.frames] == ["before training"] + [f"epoch {e}" for e in range(1, EPOCHS + 1)]
    assert lapse.embeddings.shape == (EPOCHS + 1, len(lapse.probe), 32)
    assert not np.allclose(lapse.embeddings[0], lapse.embeddings[-1])     # training moved them


def test_map_per_frame_is_evaluate_reid_on_the_stored_embeddings(recorded):
    lapse, _ = recorded
    probe = lapse.probe
    q, g = probe.splits == "query", probe.splits == "gallery"
    for f in lapse.frames:
        ref = evaluate_reid(f.embeddings[q], f.embeddings[g], probe.pids[q], probe.pids[g], probe.camids[q],
                            probe.camids[g]).mAP
        assert f.mAP == pytest.approx(ref, abs=1e-12)


def test_the_callback_does_not_change_training(recorded, tiny_players):
    _, with_lapse = recorded
    without = _fit(tiny_players)
    np.testing.assert_array_equal(with_lapse.steps["loss"].to_numpy(), without.steps["loss"].to_numpy())


def test_leave_one_out_map_and_probe_choice(tiny_players):
    rows = tiny_players.subset("train")
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(rows), 6))
    # leave-one-out written out: every image queries all the others
    aps = []
    for i in range(len(rows)):
        others = np.delete(np.arange(len(rows)), i)
        aps.append(evaluate_reid(emb[[i]], emb[others], rows.pids[[i]], rows.pids[others]).mAP)
    assert probe_map(emb, rows) == pytest.approx(np.mean(aps))
    small = choose_probe(rows, max_images=10, seed=0)
    assert len(small) <= 10 and set(np.unique(small.pids, return_counts=True)[1]) == {3}   # whole identities


def test_alignment_removes_flips_and_rotations():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(80, 10)) * np.linspace(3, 0.5, 10)
    frames = [base]
    for t in range(4):                 # a little real motion, and a sign flip of a leading direction per frame
        flip = np.ones(10)
        flip[t % 2] = -1
        frames.append(frames[-1] * flip + 0.05 * rng.normal(size=base.shape))
    aligned = frame_displacement(aligned_frames(frames, "pca"))
    unaligned = frame_displacement(aligned_frames(frames, "independent_pca"))
    assert (aligned <= unaligned + 1e-9).all() and aligned.max() < 0.2 < unaligned.max()


def test_recorded_frames_move_less_aligned(recorded):
    lapse, _ = recorded
    a = frame_displacement(aligned_frames(lapse.embeddings, "pca")).sum()
    b = frame_displacement(aligned_frames(lapse.embeddings, "independent_pca")).sum()
    assert a <= b + 1e-6


def test_figure_has_a_frame_per_epoch_and_exports(recorded):
    lapse, _ = recorded
    fig = lapse.figure()
    assert len(fig.frames) == EPOCHS + 1 and len(fig.layout.sliders[0].steps) == EPOCHS + 1
    assert f"mAP {lapse.frames[2].mAP:.3f}" in fig.frames[2].layout.title.text
    assert [b.label for b in fig.layout.updatemenus[0].buttons][0].endswith("play")
    colours = fig.data[0].marker.color
    pids = lapse.probe.pids
    assert len({c for c, p in zip(colours, pids) if p == pids[0]}) == 1     # one colour per identity
    html = fig.to_html(include_plotlyjs=False)
    assert "animate" in html
    with pytest.raises(ValueError, match="labels"):
        plot_timelapse(lapse.embeddings, labels=["x"])


def test_a_run_stopped_between_epochs_gets_a_last_frame_of_the_returned_model(tiny_players):
    """max_steps inside the first epoch: frames before training and at the stop, the last one the
    model fit returned (its embeddings are what Timelapse.record gives for that model now)."""
    lapse = Timelapse(tiny_players.subset("query", "gallery"))
    model = make_model("cliptk-micro", seed=0, image_only=True)
    cfg = TrainConfig(batch_size=4, epochs=EPOCHS, max_steps=2, eval_before=False, eval_every=0, progress=False,
                      lr=1e-3, per_epoch="identities")
    history = fit(model, tiny_players, cfg, callbacks=[lapse])
    assert history.stopped == "max_steps"
    assert [f.label for f in lapse.frames] == ["before training", "step 2 (max steps)"]
    assert lapse.frames[-1].step == 2
    again = Timelapse(tiny_players.subset("query", "gallery")).record(model, "now")
    np.testing.assert_allclose(lapse.frames[-1].embeddings, again.embeddings, atol=1e-6)
    assert not np.allclose(lapse.frames[0].embeddings, lapse.frames[-1].embeddings, atol=1e-4)
