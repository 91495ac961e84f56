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
    for heading in ("Metrics", "Training", "Embedding space", "Worst queries", "Score-CAM: top matches", "Faithfulness"):
        assert heading in html
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
