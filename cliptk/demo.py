"""The main job: the whole CLIP-ReIdent story on the embedded default, as one function.

``run_demo()`` generates the synthetic players, evaluates the bundled tiny CLIP zero-shot (re-id
mAP / rank-k and shirt-number probing), fine-tunes it with the CLIP-ReIdent recipe
(``configs/cpu_tiny.yaml``), evaluates again, projects both embeddings, explains pairs with
Score-CAM, and writes ``report.html`` (self-contained) plus the checkpoint. Called by
``python -m cliptk demo``; under ``CLIPTK_SMOKE=1`` every stage is tiny.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import explain, viz
from .diagnose import rank_gallery, worst_queries_html
from .embed import embed
from .evaluate import evaluate, zero_shot_probe
from .models import load_model, save_model
from .recipes import config_path, load_from_config, players, players_root
from .settings import is_smoke, pick, smoke_run
from .synthetic import CAPTION_TEMPLATE
from .train import TrainConfig, fit
from .viz import Report

__all__ = ["run_demo", "history_figure"]


def history_figure(history):
    """Training loss per step and evaluation mAP / rank-1 per epoch, as one plotly figure."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss", "evaluation"))
    steps, evals = history.steps, history.evals
    fig.add_trace(go.Scatter(x=steps["step"], y=steps["loss"], mode="lines", name="loss"), row=1, col=1)
    for col in ("mAP", "rank1"):
        if len(evals) and col in evals:
            fig.add_trace(go.Scatter(x=evals["epoch"], y=evals[col], mode="lines+markers", name=col), row=1, col=2)
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_xaxes(title_text="epoch", row=1, col=2)
    fig.update_layout(height=350, margin=dict(t=40, b=40, l=40, r=20))
    return fig


def _row(name: str, result, probe=None) -> dict:
    row = {"model": name, "mAP": result.mAP, **{f"rank-{k}": v for k, v in result.cmc.items()}}
    if probe is not None:
        row.update({"number acc": probe.accuracy, "number chance": probe.chance})
    return row


def run_demo(out: Path = Path("runs/demo"), data_root: Path | None = None, minutes: float | None = None,
             finetune: bool = True, say: Callable[[str], None] = print) -> pd.DataFrame:
    """Run the story; return the metrics table (one row per model state).

    Args:
        out: folder for ``report.html``, ``metrics.csv``, ``model.safetensors`` and checkpoints.
        data_root: where the synthetic players go (default: ``data/generated/``).
        minutes: fine-tuning time budget (default: the config's epochs).
        finetune: ``False`` stops after the zero-shot evaluation.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report("cliptk demo: CLIP-ReIdent on synthetic players" + (" (smoke mode)" if is_smoke() else ""))

    say(f"1/6 data: synthetic players in {data_root or players_root()} (generated once, then cached)")
    ds = players(data_root)
    query, gallery = ds.subset("query"), ds.subset("gallery")
    test = ds.subset("query", "gallery")
    report.table("Dataset", ds.summary())

    cfg = TrainConfig.from_yaml(config_path("cpu_tiny"))
    say(f"2/6 zero-shot: {cfg.model} ({cfg.pretrained})")
    zero = load_model(cfg.model, cfg.pretrained)
    zs = evaluate(zero, ds, flip=cfg.eval_flip)   # the config's test protocol, as fit's evaluations
    colours = sorted(query.table["colour"].unique())
    prompts = {n: [CAPTION_TEMPLATE.format(colour=c, number=n) for c in colours] for n in range(100)}
    probe = zero_shot_probe(zero, query, "number", prompts)
    rows = [_row("zero-shot", zs, probe)]
    print(pd.DataFrame(rows).set_index("model").to_string(float_format=lambda v: f"{v:.3f}"), flush=True)
    emb_before = embed(zero, test)
    if not finetune:
        return _finish(rows, report, out, say)

    say("3/6 fine-tuning with the CLIP-ReIdent recipe (configs/cpu_tiny.yaml)")
    cfg = cfg.replace(output_dir=str(out / "checkpoints"), max_minutes=minutes)
    cfg = smoke_run(cfg)
    model = load_from_config(cfg)
    history = fit(model, ds, cfg, eval_data=ds)
    save_model(model, out / "model.safetensors")
    report.figure("Training", history_figure(history))

    say("4/6 evaluating the fine-tuned model")
    ft = evaluate(model, ds, flip=cfg.eval_flip)
    rows.append(_row("fine-tuned", ft))
    emb_after = embed(model, test)
    ranking = rank_gallery(emb_after[: len(query)], emb_after[len(query):], query, gallery)
    report.raw("Worst queries of the fine-tuned model (green: same player, red: another player)",
               str(worst_queries_html(ranking, k=8, per_page=pick(10, 3))))

    say("5/6 projecting the embeddings (UMAP, aligned before/after)")
    method = pick("aligned_umap", "pca")
    report.figure("Embedding space: zero-shot vs fine-tuned",
                  viz.plot_before_after(emb_before, emb_after, test, color_by="pid", method=method,
                                        titles=("zero-shot", "fine-tuned")))
    report.raw("Fine-tuned embeddings (hover a point to see the player)",
               viz.html_fragment(emb_after, test, method=pick("umap", "pca"), color_by="colour"))
    report.table("Embedding numbers", pd.concat({"zero-shot": viz.embedding_report(emb_before, test),
                                                 "fine-tuned": viz.embedding_report(emb_after, test)}, axis=1))

    say("6/6 explaining pairs with Score-CAM")
    q_emb, g_emb = emb_after[: len(query)], emb_after[len(query):]
    n_pairs = pick(6, 2)
    for kind in ("top_matches", "hardest_wrong"):
        pairs = explain.select_pairs(q_emb, g_emb, query.pids, gallery.pids, kind=kind, n=n_pairs)
        cams = [explain.similarity_cam(model, q, g, dataset=(query, gallery), symmetric=True, fast=True)
                for q, g, _ in pairs]
        report.figure(f"Score-CAM: {kind.replace('_', ' ')}", explain.plot_cam_grid(cams))
        if kind == "top_matches":
            report.figure("Faithfulness of the first map (deletion / insertion vs random order)",
                          explain.plot_faithfulness(explain.faithfulness(model, cams[0])))
    return _finish(rows, report, out, say)


def _finish(rows, report: Report, out: Path, say) -> pd.DataFrame:
    table = pd.DataFrame(rows).set_index("model")
    report.table("Metrics", table, na_rep="–", first=True)
    report.raw(None, "<p class='note'>The fine-tuned model is the image tower only (CLIP-ReIdent), so it has no "
                     "text probe. Chance for shirt numbers is 1 %. Re-id embeddings are averaged with their horizontal flip "
                     "when the config says so (<code>eval_flip</code>), for both models.</p>", first=True)
    table.to_csv(out / "metrics.csv")
    path = report.save(out / "report.html")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"), flush=True)
    say(f"report: {path}")
    return table
