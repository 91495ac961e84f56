"""The command line and the main job (smoke mode), run as a user would: in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

import cliptk as ct


def _run(args, tmp_path, timeout=900):
    env = {**os.environ, "CLIPTK_SMOKE": "1", "CLIPTK_DATA": str(tmp_path / "data")}
    # CLIPTK_DATA moves the generated data; the bundled weights must still be found
    (tmp_path / "data").mkdir(exist_ok=True)
    models = ct.settings.data_dir() / "models"
    if models.is_dir() and not (tmp_path / "data" / "models").exists():
        (tmp_path / "data" / "models").symlink_to(models)
    return subprocess.run([sys.executable, "-m", "cliptk", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_demo_writes_report_and_checkpoint(tmp_path):
    res = _run(["demo", "--out", str(tmp_path / "out")], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "out"
    metrics = pd.read_csv(out / "metrics.csv", index_col=0)
    assert list(metrics.index) == ["zero-shot", "fine-tuned"]
    assert metrics["mAP"].between(0, 1).all()
    html = (out / "report.html").read_text()
    for heading in ("Metrics", "Training", "Embedding space", "Worst queries", "Score-CAM: top matches", "Faithfulness",
                    "Training timelapse", "Before / after, per query", "Before / after: the most improved query",
                    "Before / after: the most hurt query", "Where the models look: each part",
                    "zero-shot mass", "fine-tuned mass"):   # part shares on the renderer's masks, both models
        assert heading in html
    # the timelapse: a frame before training and one where the smoke run stopped (max_steps, mid-epoch)
    assert "before training" in html and f"step {ct.settings.SMOKE_STEPS} (max steps)" in html and "Plotly.addFrames" in html
    assert "<table id='cliptk-compare-" in html and "addEventListener('click'" in html   # the sortable table
    assert "data:image" in html  # thumbnails travel inside the file
    assert "plotly.js v" in html and 'src="https://cdn.plot.ly' not in html  # plotly.js inlined: opens offline
    model = ct.load_model("cliptk-tiny", out / "model.safetensors", image_only=True)
    assert model.embed_dim > 0
    for stage in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6"):
        assert stage in res.stdout  # progress is shown throughout


def test_data_generate_and_eval(tmp_path):
    root = tmp_path / "players"
    res = _run(["data", "generate", "--root", str(root), "--train-ids", "4", "--test-ids", "4",
                "--images-per-id", "3"], tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "query" in res.stdout and (root / "reid_test" / "query").is_dir()
    res = _run(["eval", "--data", str(root), "--model", "cliptk-micro", "--pretrained", "none"], tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "mAP" in res.stdout


def test_help_lists_commands():
    res = subprocess.run([sys.executable, "-m", "cliptk", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for cmd in ("demo", "data", "eval", "train"):
        assert cmd in res.stdout


def test_train_passes_resume_and_exits_130_when_interrupted(monkeypatch, tmp_path):
    from cliptk import cli

    calls = []

    class FakeHistory:
        interrupted = True

    def fake_run(config, overrides, resume=None):
        calls.append((config, overrides, resume))
        return None, FakeHistory()

    monkeypatch.setattr(cli, "run_from_config", fake_run)
    assert cli.main(["train", "--config", "c.yaml", "--set", "lr=1e-4", "--resume"]) == 130
    assert cli.main(["train", "--config", "c.yaml", "--resume", str(tmp_path)]) == 130
    FakeHistory.interrupted = False
    assert cli.main(["train", "--config", "c.yaml"]) == 0
    assert calls == [("c.yaml", {"lr": "1e-4"}, True), ("c.yaml", {}, str(tmp_path)), ("c.yaml", {}, None)]


def test_train_overwrite_and_the_resume_command_keeps_the_overrides(monkeypatch, capsys):
    from cliptk import cli

    calls = []

    class Interrupted:
        interrupted = True

    monkeypatch.setattr(cli, "run_from_config", lambda config, overrides, resume=None: (calls.append(overrides), (None, Interrupted()))[1])
    assert cli.main(["train", "--config", "cpu_tiny", "--set", "lr=1e-4", "data=/my data", "--overwrite"]) == 130
    assert calls == [{"lr": "1e-4", "data": "/my data", "overwrite": True}]
    out = capsys.readouterr().out
    assert "python -m cliptk train --config cpu_tiny --set lr=1e-4 '/my data' --resume" not in out
    assert "python -m cliptk train --config cpu_tiny --set lr=1e-4 'data=/my data' --resume" in out


def test_repeated_set_flags_add_up_and_top_channels_parse(monkeypatch, capsys):
    from cliptk import cli

    calls = []

    class Interrupted:
        interrupted = True

    monkeypatch.setattr(cli, "run_from_config", lambda config, overrides, resume=None: (calls.append(overrides), (None, Interrupted()))[1])
    assert cli.main(["train", "--config", "cpu_tiny", "--set", "lr=1e-4", "--set", "epochs=2", "seed=3"]) == 130
    assert calls == [{"lr": "1e-4", "epochs": "2", "seed": "3"}]
    assert "--set lr=1e-4 epochs=2 seed=3 --resume" in capsys.readouterr().out
    parse = cli.build_parser().parse_args
    assert parse(["demo"]).top_channels == "auto"
    assert parse(["demo", "--top-channels", "exact"]).top_channels is None
    assert parse(["demo", "--top-channels", "16"]).top_channels == 16
    with pytest.raises(SystemExit):
        parse(["demo", "--top-channels", "many"])
    assert "write auto, exact or a number" in capsys.readouterr().err


def test_train_prints_a_final_summary(monkeypatch, capsys, tmp_path):
    from cliptk import cli
    from cliptk.train import History

    rows = [{"kind": "eval", "epoch": 0.0, "step": 0, "mAP": 0.25, "rank1": 0.5},
            {"kind": "train", "epoch": 0.5, "step": 1, "loss": 1.0},
            {"kind": "eval", "epoch": 1.0, "step": 1, "mAP": 0.75, "rank1": 0.875}]
    (tmp_path / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(cli, "run_from_config", lambda config, overrides, resume=None: (None, History(rows=rows)))
    assert cli.main(["train", "--config", "cpu_tiny", "--set", f"output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "done: 1 steps; mAP 0.7500, rank-1 0.8750 (before: mAP 0.2500, rank-1 0.5000)" in out
    assert str(tmp_path / "model.safetensors") in out


def _error(capsys, argv):
    from cliptk import cli

    assert cli.main(argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "cliptk" in line]   # not progress bars
    assert len(err) == 1 and err[0].startswith("cliptk: error: ") and err[0].endswith("(--debug shows the traceback)")
    return err[0]


def test_errors_are_one_line_and_debug_shows_the_traceback(capsys, tmp_path, tiny_players):
    from cliptk import cli

    assert "DATA: /nowhere does not exist" in _error(capsys, ["eval", "--data", "/nowhere", "--model", "cliptk-micro",
                                                                "--pretrained", "none"])
    with pytest.raises(FileNotFoundError):
        cli.main(["eval", "--data", "/nowhere", "--debug"])
    # missing weights: the message says how to give them on the command line
    line = _error(capsys, ["eval", "--data", str(tiny_players.root), "--model", "ViT-B-32", "--pretrained", "/no/w.bin"])
    assert "/no/w.bin" in line and "--pretrained /path/to/weights" in line and "--set pretrained=" in line
    # a missing split: a query-only manifest cannot be evaluated nor held out
    q = tiny_players.subset("query")
    csv = q.to_csv(tmp_path / "query_only.csv")
    line = _error(capsys, ["eval", "--data", str(csv), "--model", "cliptk-micro", "--pretrained", "none"])
    assert "no split ['gallery']" in line and "query" in line
    # an unreadable image
    table = tiny_players.subset("query", "gallery").table.copy()
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"not a jpeg")
    table.loc[0, "path"] = str(bad)
    table["path"] = [p if p.startswith("/") else str(tiny_players.root / p) for p in table["path"]]
    table.to_csv(tmp_path / "bad.csv", index=False)
    line = _error(capsys, ["eval", "--data", str(tmp_path / "bad.csv"), "--model", "cliptk-micro", "--pretrained", "none"])
    assert "broken.jpeg" in line and "--skip-unreadable" in line
    assert cli.main(["eval", "--data", str(tmp_path / "bad.csv"), "--model", "cliptk-micro", "--pretrained", "none",
                     "--skip-unreadable"]) == 0


@pytest.mark.slow
def test_demo_runs_on_a_folder_of_photos_and_another_model(tmp_path):
    pytest.importorskip("skimage", reason="scikit-image (dev extra) builds the photo dataset")
    from cliptk.tools.photo_folder import write_photo_folder

    photos = write_photo_folder(tmp_path / "photos", photos=("astronaut", "coffee", "chelsea", "rocket", "camera",
                                                              "coins", "logo"), images_per_id=3)
    res = _run(["demo", "--out", str(tmp_path / "out"), "--data", str(photos), "--model", "cliptk-micro",
                "--pretrained", "none", "--top-channels", "8"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "held out" in res.stdout and "skipped the shirt-number probe" in res.stdout
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv", index_col=0)
    assert list(metrics.index) == ["zero-shot", "fine-tuned"] and metrics["mAP"].between(0, 1).all()
    html = (tmp_path / "out" / "report.html").read_text()
    assert "cliptk-micro on photos" in html
    assert "Training timelapse" in html and "Before / after, per query" in html
    assert "Where the models look, part by part" in html and "no part mask" in html   # photos: one line says why
