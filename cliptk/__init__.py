"""cliptk: contrastive fine-tuning of CLIP-style models, embedding-space exploration and Score-CAM
explanations of image-to-image similarity (player re-identification, after CLIP-ReIdent).

    import cliptk as ct
    ds = ct.players()                             # the embedded default, or ct.read_dataset("/data/my_reid")
    model = ct.load_model()                       # the bundled tiny CLIP, offline
    print(ct.evaluate(model, ds))                 # zero-shot re-id mAP / CMC

The verbs of the story live here (about forty names, each used by a notebook, the README or the
command line). Everything else is reached through its family: ``ct.data``, ``ct.synthetic``,
``ct.models``, ``ct.metrics``, ``ct.losses``, ``ct.samplers``, ``ct.train``, ``ct.recipes``,
``ct.explain``, ``ct.viz``, ``ct.diagnose``, ``ct.widgets``, ``ct.lab``, ``ct.settings``, ``ct.wise``
(WiSE-FT), ``ct.tempnet`` (per-sample temperature), ``ct.metadata`` (what a dataset's columns allow).

Names load on first use (PEP 562), so ``import cliptk`` — and so every ``torchrun`` worker — does not
import plotly, ipywidgets, umap or grad-cam until a plotting, widget or explanation name is touched.
``embed`` and ``evaluate`` are imported eagerly: they are also the names of their modules, and a lazy
submodule import would rebind the package attribute to the module.
"""
from __future__ import annotations

import importlib
from typing import Any

import pandas as _pd

# File names that are not valid UTF-8 reach Python as surrogate-escaped strings (os.fsdecode), and the
# tables of cliptk's datasets hold them. pandas 3 stores strings in pyarrow when pyarrow is installed
# (jupyter-scatter, a dependency, needs it), and pyarrow cannot hold a surrogate: reading such a folder
# or manifest, or building its table, would raise UnicodeEncodeError. Python-backed strings (pandas'
# behaviour without pyarrow) hold them; this is a process-wide pandas option, set once here.
_pd.set_option("mode.string_storage", "python")

from .embed import embed, embed_texts
from .evaluate import evaluate, zero_shot_probe

__version__ = "0.1.0"

#: top-level name -> module it lives in (relative to the package)
_VERBS: dict[str, str] = {
    # data
    "ReIdDataset": ".data", "ImageLoadError": ".data", "read_dataset": ".data", "read_deepsportradar": ".data",
    "read_market1501": ".data", "read_folder": ".data", "read_csv": ".data",
    "players": ".recipes", "generate_players": ".synthetic", "samples_grid": ".synthetic",
    # models and evaluation
    "load_model": ".models", "save_model": ".models", "WeightsNotAvailableError": ".models",
    "evaluate_reid": ".metrics",
    # fine-tuning
    "TrainConfig": ".train", "fit": ".train", "Trainer": ".train", "live_plot": ".train",
    "run_from_config": ".recipes", "finetuned": ".recipes",
    # explanations
    "similarity_cam": ".explain", "similarity_cams": ".explain", "explain_topk": ".explain",
    "select_pairs": ".explain", "faithfulness": ".explain", "plot_cam_pair": ".explain",
    "plot_cam_grid": ".explain", "plot_faithfulness": ".explain",
    # embedding space
    "project": ".viz", "warm_up": ".viz", "plot_embeddings": ".viz", "plot_before_after": ".viz",
    "export_html": ".viz", "embedding_report": ".viz",
    # debugging
    "rank_gallery": ".diagnose", "plot_ranked": ".diagnose", "worst_queries_html": ".diagnose",
    # widgets
    "Explorer": ".widgets", "CamPairPicker": ".widgets", "RankBrowser": ".widgets",
}

_FAMILIES = ("data", "synthetic", "models", "metrics", "losses", "samplers", "train", "recipes", "explain", "viz",
             "diagnose", "widgets", "lab", "settings", "wise", "tempnet", "metadata")

__all__ = ["embed", "embed_texts", "evaluate", "zero_shot_probe", *_VERBS, *_FAMILIES]


def __getattr__(name: str) -> Any:
    if name in _VERBS:
        value = getattr(importlib.import_module(_VERBS[name], __name__), name)
    elif name in _FAMILIES:
        value = importlib.import_module("." + name, __name__)
    else:
        raise AttributeError(f"module 'cliptk' has no attribute {name!r}; the families are {', '.join(_FAMILIES)} "
                             f"(e.g. ct.losses.SupCon)")
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
