"""The main job: the whole CLIP-ReIdent story on the embedded default, as one function.

``run_demo()`` generates the synthetic players, evaluates the bundled tiny CLIP zero-shot
(re-id mAP / rank-k and shirt-number probing), and prints the metrics table. Called by
``python -m cliptk demo``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from .default import players, players_root
from .evaluate import evaluate, zero_shot_probe
from .models import DEFAULT_MODEL, DEFAULT_PRETRAINED, load_model
from .synthetic import CAPTION_TEMPLATE

__all__ = ["run_demo", "number_prompts_for"]


def number_prompts_for(dataset) -> dict:
    """Shirt-number prompts in the captions' own template, one per (colour, number) class seen in
    ``dataset``; keys are ``"colour/number"`` strings matching a ``colour_number`` column."""
    pairs = sorted(set(zip(dataset.table["colour"], dataset.table["number"])))
    return {f"{c}/{n}": CAPTION_TEMPLATE.format(colour=c, number=n) for c, n in pairs}


def run_demo(out: Path = Path("runs/demo"), data_root: Path | None = None,
             minutes: float | None = None, finetune: bool = True, say: Callable[[str], None] = print) -> pd.DataFrame:
    """Run the story; return the metrics table (one row per model state)."""
    out.mkdir(parents=True, exist_ok=True)
    say(f"generating synthetic players in {data_root or players_root()} (cached after the first run)")
    ds = players(data_root)
    say(f"dataset: {ds}")
    say(f"loading {DEFAULT_MODEL} ({DEFAULT_PRETRAINED})")
    model = load_model(DEFAULT_MODEL, DEFAULT_PRETRAINED)
    say("zero-shot evaluation")
    zs = evaluate(model, ds)
    query = ds.subset("query")
    probe = zero_shot_probe(model, query, "number",
                            {n: [CAPTION_TEMPLATE.format(colour=c, number=n) for c in sorted(query.table["colour"].unique())]
                             for n in range(100)})
    rows = [{"model": f"{DEFAULT_MODEL} zero-shot", "mAP": zs.mAP, **{f"rank-{k}": v for k, v in zs.cmc.items()},
             "number acc": probe.accuracy, "number chance": probe.chance}]
    table = pd.DataFrame(rows).set_index("model")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    table.to_csv(out / "metrics.csv")
    return table
