"""What the notebooks' parameters name (cliptk.recipes) and how steps adapt to the data (cliptk.metadata)."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

import cliptk as ct
from cliptk import metadata, recipes
from cliptk.train import History
from conftest import make_model


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _capture_fit(monkeypatch):
    seen = []

    def fake_fit(model, data, cfg, **kw):
        seen.append((_state(model), data, cfg, kw))
        return History()

    monkeypatch.setattr(recipes, "fit", fake_fit)
    return seen


def test_run_from_config_seeds_before_building_a_random_init_model(monkeypatch, tiny_players_root, tmp_path):
    seen = _capture_fit(monkeypatch)
    cfg = {"model": "cliptk-micro", "pretrained": None, "device": "cpu", "data": str(tiny_players_root),
           "output_dir": str(tmp_path / "run"), "batch_size": 4}
    for noise in (1, 2):
        torch.manual_seed(noise)   # whatever the global RNG holds, the config's seed decides the init
        recipes.run_from_config(cfg)
    recipes.run_from_config({**cfg, "seed": 7})
    (a, *_), (b, *_), (c, *_) = seen
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_run_from_config_holds_out_identities_of_a_folder_and_records_an_absolute_path(monkeypatch, tmp_path,
                                                                                         tiny_players):
    seen = _capture_fit(monkeypatch)
    folder = tmp_path / "crops"
    for i, p in enumerate(tiny_players.subset("train").paths):
        (folder / f"id{tiny_players.subset('train').pids[i]}").mkdir(parents=True, exist_ok=True)
        (folder / f"id{tiny_players.subset('train').pids[i]}" / f"{i}.png").write_bytes(p.read_bytes())
    monkeypatch.chdir(tmp_path)
    recipes.run_from_config({"model": "cliptk-micro", "pretrained": None, "device": "cpu", "data": "crops",
                             "output_dir": str(tmp_path / "run"), "group_by": "team", "batch_size": 64})
    _, data, cfg, kw = seen[0]
    assert {"train", "query", "gallery"} <= set(data.split_names) and kw["eval_data"] is data
    assert not set(data.subset("query").pids) & set(data.subset("train").pids)
    assert cfg.data == str(folder.resolve())
    assert cfg.group_by is None   # the synthetic-only column of a recipe is dropped for data without it
    assert cfg.batch_size == len(set(data.subset("train").pids))


def test_fit_to_data_keeps_what_the_user_set(tiny_players):
    cfg = ct.TrainConfig(group_by="no_such_column", batch_size=500)
    kept = recipes.fit_to_data(cfg, tiny_players, keep={"group_by", "batch_size"}, quiet=True)
    assert (kept.group_by, kept.batch_size) == ("no_such_column", 500)


def test_config_by_name_or_path_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert recipes.config_path("cpu_tiny") == recipes.config_path("cpu_tiny.yaml")
    assert recipes.config_path("cpu_tiny").is_file() and "cpu_tiny" in recipes.config_names()
    (tmp_path / "mine.yaml").write_text("model: cliptk-micro\n")
    assert recipes.config_path("mine.yaml").resolve() == (tmp_path / "mine.yaml").resolve()
    with pytest.raises(FileNotFoundError, match="cpu_tiny"):
        recipes.config_path("no_such_recipe")


def test_train_config_applies_model_pretrained_and_device():
    base = recipes.train_config("cpu_tiny", device=None)
    assert (base.model, base.pretrained) == ("cliptk-tiny", "synthetic-players")
    assert recipes.train_config("cpu_tiny", model="ViT-S-32").pretrained is None   # a model without weights: random init
    assert recipes.train_config("cpu_tiny", pretrained="/w.safetensors").model == "cliptk-tiny"
    assert recipes.train_config("cpu_tiny", device="auto").device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_finetuned_caches_per_model_data_and_config(monkeypatch, tmp_path, tiny_players_root):
    monkeypatch.setenv("CLIPTK_DATA", str(tmp_path / "data"))
    calls = []
    real_fit = recipes.fit

    def counting_fit(model, data, cfg, **kw):
        calls.append(cfg)
        return real_fit(model, data, cfg, **kw)

    monkeypatch.setattr(recipes, "fit", counting_fit)
    config = {"model": "cliptk-micro", "pretrained": None, "device": "cpu", "batch_size": 4, "max_steps": 2,
              "epochs": 1, "eval_before": False, "progress": False}
    m1, h1 = recipes.finetuned(config, data=tiny_players_root)
    m2, h2 = recipes.finetuned(config, data=str(tiny_players_root))   # the same run: from the cache
    assert len(calls) == 1 and h2.table.equals(h1.table)
    x = torch.randn(2, 3, *m1.image_size)
    assert torch.allclose(m1.encode_image(x), m2.encode_image(x), atol=1e-6)
    recipes.finetuned({**config, "lr": 1e-3}, data=tiny_players_root)          # another config
    recipes.finetuned(config, data=tiny_players_root, model="cliptk-tiny")   # another model
    assert len(calls) == 3
    recipes.finetuned(config, data=tiny_players_root, overwrite=True)
    assert len(calls) == 4
    weights = next((tmp_path / "data" / "generated").glob("finetuned-*/model.safetensors"))
    m3, h3 = recipes.finetuned(config, data=tiny_players_root, checkpoint=weights)   # FINETUNED: load, never train
    assert len(calls) == 4 and h3 is not None


def test_dataset_names_the_missing_path():
    with pytest.raises(FileNotFoundError, match="DATA: .*nowhere"):
        recipes.dataset("/nowhere")


def test_number_probe_runs_on_any_manifest_with_a_number_column(tmp_path, tiny_players, micro_model):
    q = tiny_players.subset("query")
    table = q.table[["path", "pid"]].copy()
    table["path"] = [str(p) for p in q.paths]
    table["shirt_number"] = q.table["number"].astype(int).to_numpy()
    table.loc[0, "shirt_number"] = None   # a missing number is left out, not a failure
    csv = tmp_path / "m.csv"
    table.to_csv(csv, index=False)
    ds = ct.read_csv(csv)
    assert metadata.number_column(ds) == "shirt_number"
    probe = metadata.probe_numbers(micro_model, ds, progress=False)
    assert probe is not None and probe.n_evaluated == len(ds) - 1 and probe.chance == pytest.approx(0.01)
    prompts = metadata.number_prompts(ds, "shirt_number")
    assert prompts[7] == [ct.synthetic.NUMBER_PROMPT.format(number=7)]   # no colour column: the number-only wording


def test_steps_skip_with_one_line_when_the_data_lacks_metadata(capsys, micro_model, tiny_players):
    bare = ct.ReIdDataset(tiny_players.root, tiny_players.table[["path", "pid", "split"]])
    assert metadata.probe_numbers(micro_model, bare) is None
    image_only = ct.load_model("cliptk-micro", None, image_only=True)
    assert metadata.probe_numbers(image_only, tiny_players.subset("query")) is None
    assert metadata.color_by(bare) == "pid" and metadata.color_by(tiny_players) == "colour"
    assert metadata.breakdown_by(bare) == "pid"
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and "number column" in lines[0] and "text tower" in lines[1]
    assert metadata.samples(bare, n=4).size[0] > 0


def test_with_eval_splits_is_deterministic_and_leaves_evaluable_data_alone(tiny_players):
    assert metadata.with_eval_splits(tiny_players) is tiny_players
    train = tiny_players.subset("train")
    a = metadata.with_eval_splits(train, quiet=True)
    b = metadata.with_eval_splits(ct.ReIdDataset(train.root, train.table.sample(frac=1, random_state=3)), quiet=True)
    key = lambda d: sorted(zip(d.table["path"], d.table["split"]))
    assert key(a) == key(b)
    assert isinstance(a.summary(), pd.DataFrame)


# --------------------------------------------------------------------------- the objective a config names
def _caption_csv(tmp_path, tiny_players):
    """A user's image-caption manifest (path, pid, caption) with captions written here, not the world's."""
    train = tiny_players.subset("train")
    words = ["red", "blue", "green", "white"]
    rows = pd.DataFrame({"path": [str(p) for p in train.paths], "pid": train.pids,
                         "caption": [f"a player in {words[int(pid) % 4]}, photo {i}" for i, pid in enumerate(train.pids)]})
    rows.to_csv(tmp_path / "captions.csv", index=False)
    return tmp_path / "captions.csv"


def _towers(model):
    params = dict(model.clip.named_parameters())
    image = {n: p.detach().clone() for n, p in params.items() if n.startswith("visual.")}
    text = {n: p.detach().clone() for n, p in params.items() if not n.startswith("visual.") and n != "logit_scale"}
    return image, text


def test_run_from_config_with_objective_image_text_trains_the_text_tower_of_a_caption_csv(tmp_path, tiny_players):
    start = tmp_path / "start.safetensors"
    ct.models.save_model(make_model("cliptk-micro", seed=11), start)
    image0, text0 = _towers(ct.load_model("cliptk-micro", str(start), image_only=False))
    cfg = {"model": "cliptk-micro", "pretrained": str(start), "image_only": False, "projection": True, "device": "cpu",
           "data": str(_caption_csv(tmp_path, tiny_players)), "objective": "image_text", "lock": "image",
           "batch_size": 4, "epochs": 1, "max_steps": 2, "lr": 1e-3, "lr_end": 1e-4, "warmup_epochs": 0,
           "eval_before": False, "progress": False, "output_dir": str(tmp_path / "run")}
    model, history = recipes.run_from_config(cfg)
    assert len(history.steps) == 2 and "same_caption" in history.steps.columns   # ImageTextTrainer's column
    assert "t2i_R1" in history.evals.columns
    image1, text1 = _towers(model)
    assert all(torch.equal(image0[n], image1[n]) for n in image0)                # LiT: the image tower is locked
    changed = [n for n in text0 if not torch.equal(text0[n], text1[n])]
    assert len(changed) > len(text0) // 2                                        # the text tower trained
    saved = ct.TrainConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert (saved.objective, saved.lock) == ("image_text", "image")             # a resume picks the same trainer


@pytest.mark.parametrize("changes, field", [
    ({"objective": "captions"}, "objective"),
    ({"objective": "image_text", "lock": "sideways"}, "lock"),
    ({"lock": "image"}, "lock"),                                                 # a lock without image-text training
    ({"objective": "image_text", "image_only": True}, "image_only"),             # no text tower to train
    ({"objective": "image_text", "image_only": False}, "projection"),            # image embeddings not in text space
    ({"objective": "image_text", "distill_teacher": "cliptk-micro"}, "distill_teacher"),
    ({"distill_weight": -0.1}, "distill_weight"),
])
def test_bad_objective_values_give_errors_naming_the_field(tmp_path, tiny_players_root, changes, field):
    cfg = {"model": "cliptk-micro", "pretrained": None, "device": "cpu", "data": str(tiny_players_root),
           "output_dir": str(tmp_path / "run"), "batch_size": 4, **changes}
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}\b"):
        recipes.run_from_config(cfg)
    assert not (tmp_path / "run").exists()                                       # refused before anything is written
