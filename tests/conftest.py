"""Shared fixtures: tiny random-init models, a tiny synthetic players world, a headless Chromium.

Tests build models and data only through these (or say why not): ``micro_model`` (the 2-layer
``cliptk-micro`` config, random init), ``tiny_model`` (the bundled ``cliptk-tiny`` config, random
init, image tower only), ``rn_model`` (``cliptk-tiny-rn`` with calibrated batch-norm), and
``tiny_players`` (8 training + 3 test identities, 3 crops each, 32x64 px, DeepSportRadar layout).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import cliptk as ct

CHROMIUM = Path("/usr/bin/chromium")
# no sandbox (CI runs as root), no GPU, and nothing that reaches the network on its own
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


# `make test` runs the doctests, these tests and the notebooks in one process under CLIPTK_SMOKE=1;
# a doctest or test that changes it (it once did: `del os.environ[...]`) runs everything after it in
# full mode, an hour instead of minutes, silently. Read at collection, before any test ran.
_SMOKE_AT_START = os.environ.get("CLIPTK_SMOKE")


@pytest.fixture(autouse=True)
def _smoke_mode_unchanged():
    """Fail the first test that sees CLIPTK_SMOKE changed (by an earlier doctest or by itself)."""
    assert os.environ.get("CLIPTK_SMOKE") == _SMOKE_AT_START, (
        f"CLIPTK_SMOKE is {os.environ.get('CLIPTK_SMOKE')!r}, was {_SMOKE_AT_START!r} when the run started: "
        "an earlier doctest or test changed it (use monkeypatch.setenv or mock.patch.dict)")
    yield
    assert os.environ.get("CLIPTK_SMOKE") == _SMOKE_AT_START, (
        f"this test left CLIPTK_SMOKE at {os.environ.get('CLIPTK_SMOKE')!r} (was {_SMOKE_AT_START!r}); "
        "use monkeypatch.setenv or mock.patch.dict")


def make_model(name: str = "cliptk-micro", seed: int = 0, **kwargs) -> ct.ClipModel:
    """A random-init model of a cliptk config, seeded (a fresh one for tests that train it)."""
    torch.manual_seed(seed)
    return ct.load_model(name, None, **kwargs)


@pytest.fixture(scope="module")
def micro_model() -> ct.ClipModel:
    """``cliptk-micro``, random init, both towers (module-scoped: do not train it in place)."""
    return make_model("cliptk-micro")


@pytest.fixture(scope="module")
def tiny_model() -> ct.ClipModel:
    """``cliptk-tiny``, random init, image tower only."""
    return make_model("cliptk-tiny", image_only=True)


@pytest.fixture(scope="module")
def rn_model() -> ct.ClipModel:
    """``cliptk-tiny-rn``, random init, batch-norm statistics calibrated on noise."""
    return ct.models.calibrate_batchnorm(make_model("cliptk-tiny-rn"))


@pytest.fixture(scope="session")
def tiny_players_root(tmp_path_factory) -> Path:
    """A generated players tree: 8 training and 3 test identities, 3 crops each, 32x64 px."""
    return ct.generate_players(tmp_path_factory.mktemp("players") / "players", n_train_ids=8, n_test_ids=3,
                               images_per_id=3, size=(32, 64), workers=1, challenge=False)


@pytest.fixture(scope="session")
def tiny_players(tiny_players_root) -> ct.ReIdDataset:
    """:func:`tiny_players_root` read as a dataset (splits train / query / gallery)."""
    return ct.read_deepsportradar(tiny_players_root)


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium browser (module-scoped); skips when chromium or playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: install it with `apt-get update && apt-get install -y chromium`")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()
