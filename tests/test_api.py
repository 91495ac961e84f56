"""The top-level API: what ``import cliptk`` loads, and that every name it lists resolves."""
from __future__ import annotations

import json
import subprocess
import sys

import cliptk as ct

#: libraries that `import cliptk` (so every torchrun worker) must not load: plotting, widgets and CAM
#: machinery load on first use of their names; open_clip, scikit-learn load with the first model / metric
HEAVY = ("plotly", "ipywidgets", "umap", "pytorch_grad_cam", "open_clip", "sklearn")


def _modules_after(code: str) -> list[str]:
    probe = f"import sys, json; {code}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_cliptk_loads_no_heavy_library_and_names_load_them_on_use():
    assert _modules_after("import cliptk") == []
    # a fresh interpreter per probe: touching a name pulls in what it needs, and only that
    assert _modules_after("import cliptk as ct; ct.load_model") == ["open_clip"]
    assert "plotly" in _modules_after("import cliptk as ct; ct.plot_embeddings")


def test_every_listed_name_resolves_and_the_story_verbs_are_at_the_top():
    for name in ct.__all__:
        assert getattr(ct, name) is not None, name
    story = {"load_model", "embed", "evaluate", "evaluate_reid", "fit", "TrainConfig", "read_dataset", "read_folder",
             "read_csv", "read_market1501", "read_deepsportradar", "ReIdDataset", "ImageLoadError", "players",
             "similarity_cam", "similarity_cams", "plot_embeddings", "export_html", "Explorer", "rank_gallery"}
    assert story <= set(ct.__all__)
    assert callable(ct.embed) and callable(ct.evaluate)   # the functions, not their modules
    assert len(ct.__all__) < 80
