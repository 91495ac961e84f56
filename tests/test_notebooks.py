"""The notebooks are driven by parameters: one cell tagged ``parameters`` decides data, model,
checkpoint, config, device and sizes, and papermill runs every notebook on a model and data that
are not the embedded default (``make test`` also runs them on the default, with nbmake).

The papermill run: a random-init open_clip ``ViT-S-32`` at its native 224 px (Score-CAM on the
approximate path, ``TOP_CHANNELS=16``) on a folder-per-identity dataset cut from scikit-image's
photographs (mixed JPEG/PNG and image modes, no captions, no cameras, no query/gallery split).
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
#: every notebook runs on the photo folder (07 skips its image-text section there, and says so)
PHOTO_NOTEBOOKS = NOTEBOOKS
NEEDED = {"DATA", "MODEL", "PRETRAINED", "DEVICE"}
#: what papermill passes: a model and data that are not the embedded default
PARAMETERS = {"MODEL": "ViT-S-32", "PRETRAINED": None, "TOP_CHANNELS": 16}
#: a line each notebook must print on the photo folder (a step it skipped or adapted, said once)
SAYS = {
    "01_data_and_zero_shot": ["no query/gallery split: held out", "skipped the shirt-number probe"],
    "03_embedding_space": ["colour by 'pid'"],
    "06_debugging": ["breakdown by"],
    "07_beyond_reid": ["skipped: section 1 (image-text fine-tuning: the data has no captions)"],
}


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_parameters_cell_decides_everything_below(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    tagged = [i for i, c in enumerate(code) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert tagged == [1], f"{path.name}: the second code cell (after setup) must be the one tagged 'parameters'"
    names = {t.id for node in ast.walk(ast.parse(_source(code[1]))) if isinstance(node, ast.Assign)
             for t in node.targets for t in (t.elts if isinstance(t, ast.Tuple) else [t]) if isinstance(t, ast.Name)}
    assert NEEDED <= names, f"{path.name}: the parameters cell lacks {NEEDED - names}"
    below = "\n".join(_source(c) for c in code[2:])
    for pattern, why in ((r"\.\./", "a working-directory path"), (r"ct\.players\(\)", "the embedded default"),
                         (r"cliptk-tiny|synthetic-players", "the bundled model"), (r"\"colour\"|'colour'", "a synthetic-only column")):
        assert not re.search(pattern, below), f"{path.name}: a cell below the parameters hard-codes {why} ({pattern})"


@pytest.fixture(scope="session")
def photo_env(tmp_path_factory):
    """CLIPTK_DATA in a temporary folder (the bundled model linked in) and the photo folder."""
    pytest.importorskip("skimage", reason="scikit-image (dev extra) builds the photo dataset")
    from cliptk.settings import data_dir
    from cliptk.tools.photo_folder import write_photo_folder

    base = tmp_path_factory.mktemp("nb")
    (base / "data").mkdir()
    models = data_dir() / "models"
    if models.is_dir():
        (base / "data" / "models").symlink_to(models)
    return base, write_photo_folder(base / "photos")


@pytest.mark.slow
@pytest.mark.parametrize("path", PHOTO_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_photos_and_a_random_vit_with_papermill(path, photo_env, monkeypatch):
    pm = pytest.importorskip("papermill", reason="papermill (dev extra) drives the notebooks")
    base, photos = photo_env
    monkeypatch.setenv("CLIPTK_SMOKE", "1")
    monkeypatch.setenv("CLIPTK_DATA", str(base / "data"))
    monkeypatch.chdir(REPO)   # papermill from the project root, as the README says
    out = base / f"{path.stem}.out.ipynb"
    # execution_timeout: a cell that never reports back fails this test (naming the cell) instead of waiting forever
    pm.execute_notebook(str(path), str(out), parameters={"DATA": str(photos), **PARAMETERS}, kernel_name="python3",
                        progress_bar=False, execution_timeout=900)
    text = "\n".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                     for c in _cells(out) if c["cell_type"] == "code" for o in c.get("outputs", []))
    for line in SAYS.get(path.stem, []):
        assert line in text, f"{path.name} on photos: expected the line {line!r} in its output"
