"""cliptk installed from its wheel (``pip install .`` without ``-e``, as Colab and workshop machines
do) works outside the checkout and offline: the bundled model, the players, the configs, the
shared fine-tuned model and the demo."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: what a build reads (a copy, so the build writes nothing into the checkout)
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "constraints.txt", "cliptk", "configs", "data/models")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out, src = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif (REPO / name).is_file():
            shutil.copy2(REPO / name, src / name)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                          str(src)], capture_output=True, text=True, cwd=out)
    assert res.returncode == 0, res.stderr[-3000:]
    return next(out.glob("cliptk-*.whl"))


def test_wheel_carries_the_bundled_model_and_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in (REPO / "data" / "models").glob("*"):
        if f.suffix in (".safetensors", ".md", ".json"):
            assert f"cliptk/_data/models/{f.name}" in names
    for f in (REPO / "configs").glob("*.yaml"):
        assert f"cliptk/_data/configs/{f.name}" in names
    assert "cliptk/model_configs/cliptk-tiny.json" in names
    assert not [n for n in names if "/generated/" in n or "__pycache__" in n]


def test_installed_wheel_runs_the_demo_outside_the_checkout(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, capture_output=True)
    py = env_dir / "bin" / "python"
    # reuse this environment's dependencies (torch, open_clip, ...) without its editable cliptk: a .pth line
    # adds the folder to sys.path after the new environment's own site-packages, where the wheel goes
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    res = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall", str(wheel)], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CLIPTK_DATA", "PYTHONPATH")}
    env.update(CLIPTK_SMOKE="1", HF_HUB_OFFLINE="1")
    check = ("import cliptk as ct, pathlib; "
             "assert pathlib.Path(ct.__file__).is_relative_to(pathlib.Path(r'%s')), ct.__file__; "
             "m = ct.load_model(); ds = ct.players(); print(ds); "
             "print(ct.recipes.config_path('cpu_tiny')); ft, h = ct.finetuned(); print(h)") % site
    res = subprocess.run([py, "-c", check], cwd=work, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "cpu_tiny.yaml" in res.stdout and "ReIdDataset" in res.stdout
    res = subprocess.run([py, "-m", "cliptk", "demo", "--out", str(work / "demo")], cwd=work, env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert (work / "demo" / "report.html").is_file() and (work / "demo" / "model.safetensors").is_file()
