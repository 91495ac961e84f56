"""Image–text fine-tuning (cliptk.train.image_text): a locked tower stays bit for bit unchanged while the
other one trains, a caption CSV without identity pairs trains, batches cover each captioned row once, and
retrieval recall@k matches a brute-force count."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import cliptk as ct
from cliptk.synthetic import number_prompts
from cliptk.train import TrainConfig, fit
from cliptk.train.image_text import (CaptionBatchSampler, ImageTextTrainer, apply_lock, evaluate_image_text,
                                     retrieval_recall)
from conftest import make_model


def _towers(model):
    image = {n: p.detach().clone() for n, p in model.clip.named_parameters() if n.startswith("visual.")}
    text = {n: p.detach().clone() for n, p in model.clip.named_parameters()
            if not n.startswith("visual.") and n != "logit_scale"}
    return image, text


def _changed(before, model):
    now = dict(model.clip.named_parameters())
    return {n for n, v in before.items() if not torch.equal(v, now[n].detach())}


def _cfg(**kw):
    return TrainConfig(batch_size=4, max_steps=3, lr=1e-3, lr_end=1e-4, warmup_epochs=0, eval_before=False,
                       progress=False, device="cpu", flip_p=0.0, label_smoothing=0.0, **kw)


@pytest.mark.parametrize("lock, frozen, trained", [("image", 0, 1), ("text", 1, 0), (None, None, None)])
def test_a_locked_tower_stays_bitwise_unchanged_and_the_other_trains(tiny_players, lock, frozen, trained):
    model = make_model("cliptk-micro", seed=0)
    before = _towers(model)
    h = fit(model, tiny_players, _cfg(), trainer=ImageTextTrainer.locked(lock))
    assert len(h.steps) == 3 and np.isfinite(h.steps["loss"]).all()
    changed = [_changed(part, model) for part in before]
    if lock is None:
        assert changed[0] and changed[1]
    else:
        assert changed[frozen] == set()
        assert len(changed[trained]) > len(before[trained]) // 2


def test_a_caption_csv_without_identity_pairs_trains_and_evaluates(tiny_players, tmp_path):
    """A user's image–caption CSV: every row its own identity, no query/gallery splits."""
    train = tiny_players.subset("train")
    rows = pd.DataFrame({"path": [str(p) for p in train.paths], "pid": np.arange(len(train)),
                         "caption": train.table["caption"]})
    rows.to_csv(tmp_path / "captions.csv", index=False)
    data = ct.read_csv(tmp_path / "captions.csv")
    model = make_model("cliptk-micro", seed=1)
    h = fit(model, data, _cfg(output_dir=str(tmp_path / "run")), eval_data=data, trainer=ImageTextTrainer)
    ev = h.evals
    assert len(ev) == 1 and 0 <= ev["t2i_R1"].iloc[-1] <= 1 and np.isnan(ev["mAP"].iloc[-1])
    assert (tmp_path / "run" / "model.safetensors").is_file()
    back = ct.load_model("cliptk-micro", str(tmp_path / "run" / "model.safetensors"))
    assert torch.equal(back.clip.token_embedding.weight, model.clip.token_embedding.weight.cpu())


def test_sampler_covers_each_captioned_row_once_and_shards_by_rank():
    captioned = np.ones(23, dtype=bool)
    captioned[[3, 7]] = False
    s = CaptionBatchSampler(captioned, batch_size=2, seed=5)
    batches = list(s)
    flat = [i for b in batches for i in b]
    assert len(batches) == len(s) == 21 // 4 and len(set(flat)) == len(flat) and not {3, 7} & set(flat)
    s.set_epoch(1)
    assert list(s) != batches
    shards = [list(CaptionBatchSampler(captioned, 2, seed=5, rank=r, world_size=2)) for r in (0, 1)]
    for b0, b1 in zip(*shards):
        assert len(b0) == len(b1) == 4 and not set(b0) & set(b1)
    with pytest.raises(ValueError, match="cannot fill one batch"):
        CaptionBatchSampler(captioned, batch_size=20)


def test_retrieval_recall_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(12, 6, generator=g), dim=-1)
    caps = ["a", "b", "c", "a", "d", "b", "e", "a", "c", "f", "g", "h"]
    names = sorted(set(caps))
    table = dict(zip(names, torch.nn.functional.normalize(torch.randn(len(names), 6, generator=g), dim=-1)))
    got = retrieval_recall(img, caps, lambda t: torch.stack([table[x] for x in t]), ks=(1, 3))
    for k in (1, 3):
        t2i = np.mean([any(caps[j] == c for j in np.argsort(-(img @ table[c]).numpy())[:k]) for c in names])
        i2t = np.mean([caps[i] in [names[m] for m in np.argsort(-np.array([float(img[i] @ table[c]) for c in names]))[:k]]
                       for i in range(len(caps))])
        assert got[f"t2i_R@{k}"] == pytest.approx(t2i) and got[f"i2t_R@{k}"] == pytest.approx(i2t)
    assert got["n_captions"] == len(names)


def test_evaluate_image_text_reports_retrieval_probe_and_reid(tiny_players):
    model = make_model("cliptk-micro", seed=2)
    r = evaluate_image_text(model, tiny_players, ks=(1, 5), column="number", prompts=dict(enumerate(number_prompts())))
    assert {"t2i_R@1", "t2i_R@5", "i2t_R@1", "zero_shot", "chance", "mAP", "rank1"} <= set(r)
    assert r["mAP"] == pytest.approx(ct.evaluate(model, tiny_players, progress=False).mAP)


def test_clear_errors(tiny_players):
    with pytest.raises(ValueError, match="image_only=True"):
        fit(make_model("cliptk-micro", image_only=True), tiny_players, _cfg(), trainer=ImageTextTrainer)
    with pytest.raises(ValueError, match="lock='sideways'|choose None"):
        apply_lock(make_model("cliptk-micro"), "sideways")
    with pytest.raises(ValueError, match="reinit_blocks"):
        fit(make_model("cliptk-micro"), tiny_players, _cfg(reinit_blocks=1), trainer=ImageTextTrainer.locked("image"))
    no_captions = ct.ReIdDataset(tiny_players.root, tiny_players.table.assign(caption=None))
    with pytest.raises(ValueError, match="no training row has a caption"):
        fit(make_model("cliptk-micro"), no_captions, _cfg(), trainer=ImageTextTrainer)


def test_probe_with_precomputed_image_embeddings_equals_the_probe_that_embeds(tiny_players):
    model = make_model("cliptk-micro", seed=3)
    q = tiny_players.subset("query")
    prompts = {n: [p, p.replace("photo", "picture")] for n, p in enumerate(number_prompts()) if n < 40}
    given = ct.zero_shot_probe(model, q, "number", prompts, image_emb=ct.embed(model, q, progress=False))
    ref = ct.zero_shot_probe(model, q, "number", prompts, progress=False)
    assert given.accuracy == ref.accuracy and np.array_equal(given.predictions, ref.predictions)

def test_the_config_chooses_the_objective_and_the_lock(tiny_players, tmp_path):
    """TrainConfig(objective="image_text", lock=...) picks ImageTextTrainer and its lock; the plain Trainer refuses
    a config it would only half-use; a config lock that contradicts ImageTextTrainer.locked(...) is refused."""
    cfg = _cfg(objective="image_text", lock="text", output_dir=str(tmp_path / "run"))
    assert ct.train.trainer_for(cfg) is ImageTextTrainer
    model = make_model("cliptk-micro", seed=4)
    image, text = _towers(model)
    fit(model, tiny_players, cfg.replace(max_steps=1), trainer=ct.train.trainer_for(cfg))
    assert _changed(text, model) == set() and _changed(image, model)
    with pytest.raises(ValueError, match=r"TrainConfig\.objective='image_text' is not what Trainer trains"):
        fit(make_model("cliptk-micro"), tiny_players, cfg, trainer=ct.train.Trainer)
    with pytest.raises(ValueError, match=r"TrainConfig\.lock='text' but the trainer is .*locked\('image'\)"):
        fit(make_model("cliptk-micro"), tiny_players, cfg, trainer=ImageTextTrainer.locked("image"))
