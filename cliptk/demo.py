"""The main job: the whole CLIP-ReIdent story, as one function, on any model and data.

``run_demo()`` reads the data (default: generates the synthetic players), evaluates the model
zero-shot (re-id mAP / rank-k, and shirt-number probing when the data has a number column),
fine-tunes it with the CLIP-ReIdent recipe (``configs/clip_reident_tiny.yaml`` by default) or loads a
fine-tuned checkpoint, evaluates again, compares the two query by query, projects both embeddings,
explains pairs with Score-CAM, and writes ``report.html`` (self-contained) plus the checkpoint.
While it trains, a :class:`cliptk.train.Timelapse` records a probe of held-out images before
training and after every epoch (one forward pass over the probe each time), shown as an animated
aligned projection. Called by ``python -m cliptk demo`` with the notebooks' parameters
(``--data``, ``--model``, ``--pretrained``, ``--finetuned``, ``--config``, ``--device``); under
``CLIPTK_SMOKE=1`` every stage is tiny.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import explain, viz
from .explain import sanity
from .diagnose import compare_rankings, rank_gallery, worst_queries_html
from .embed import embed
from .evaluate import evaluate
from . import metadata
from .models import load_model, save_model
from .recipes import config_path, dataset, load_from_config, players_root, resolve_device, train_config
from .settings import is_smoke, pick
from .train import Timelapse, find_weights, fit
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


def run_demo(out: Path = Path("runs/demo"), data: str | Path | None = None, minutes: float | None = None,
             finetune: bool = True, say: Callable[[str], None] = print, *, model: str | None = None,
             pretrained: str | None = None, config: str | Path = "clip_reident_tiny", finetuned: str | Path | None = None,
             device: str = "auto", top_channels: int | float | str | None = "auto") -> pd.DataFrame:
    """Run the story; return the metrics table (one row per model state).

    Args:
        out: folder for ``report.html``, ``metrics.csv``, ``model.safetensors`` and checkpoints
            (a previous demo run there is overwritten).
        data: a dataset folder or CSV manifest (:func:`cliptk.recipes.dataset`; held-out
            query/gallery when it has none); None = the embedded synthetic players.
        minutes: fine-tuning time budget (default: the config's epochs).
        finetune: ``False`` stops after the zero-shot evaluation.
        model, pretrained: the model to start from (default: the config's, the bundled tiny CLIP);
            ``pretrained`` None with a ``model`` is a random init.
        config: the recipe: a shipped config's name or a YAML path.
        finetuned: fine-tuned weights to load instead of training (a ``.safetensors`` file or a run folder).
        device: ``"auto"`` (CUDA when present) or a device.
        top_channels: Score-CAM maps with this many channel groups (approximate, much faster on
            wide towers); None = exact; ``"auto"`` = approximate only where an exact map is slow
            (a large tower on the CPU, :meth:`cliptk.explain.CamConfig.for_model`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    say(f"1/6 data: {data if data is not None else f'synthetic players in {players_root()} (generated once, then cached)'}")
    ds = dataset(data)
    cfg = train_config(config, dataset=ds, model=model, pretrained=pretrained, device=device)
    name = "synthetic players" if data is None else Path(str(data)).name
    report = Report(f"cliptk demo: CLIP-ReIdent, {cfg.model} on {name}" + (" (smoke mode)" if is_smoke() else ""))
    query, gallery = ds.subset("query"), ds.subset("gallery")
    test = ds.subset("query", "gallery")
    report.table("Dataset", ds.summary())

    say(f"2/6 zero-shot: {cfg.model} ({cfg.pretrained if cfg.pretrained is not None else 'random init'})")
    zero = load_model(cfg.model, cfg.pretrained, device=device)
    zs = evaluate(zero, ds, flip=cfg.eval_flip)   # the config's test protocol, as fit's evaluations
    probe = metadata.probe_numbers(zero, query)
    rows = [_row("zero-shot", zs, probe)]
    print(pd.DataFrame(rows).set_index("model").to_string(float_format=lambda v: f"{v:.3f}"), flush=True)
    emb_before = embed(zero, test)
    if not finetune:
        return _finish(rows, report, out, say)

    cfg = cfg.replace(output_dir=str(out / "checkpoints"), max_minutes=minutes, overwrite=True)
    if finetuned is not None:
        say(f"3/6 loading the fine-tuned weights {finetuned}")
        model_ft = load_from_config(cfg, find_weights(finetuned))
        report.text("Training timelapse", "not recorded: the fine-tuned weights were loaded, not trained in this run")
    else:
        say(f"3/6 fine-tuning with the CLIP-ReIdent recipe ({config_path(config).name})")
        model_ft = load_from_config(cfg)
        lapse = Timelapse(test, max_images=pick(300, 60))   # a probe of held-out identities, embedded per epoch
        history = fit(model_ft, ds, cfg, eval_data=ds, callbacks=[lapse])
        report.figure("Training", history_figure(history))
        report.figure("Training timelapse: held-out players after each epoch", lapse.figure(), auto_play=False,
                      note=f"{len(lapse.probe)} held-out images ({len(set(lapse.probe.pids.tolist()))} identities), "
                           "one colour per identity, embedded before training and after every epoch and drawn in "
                           "one aligned frame (Procrustes-aligned PCA), so what moves is what training changed; "
                           "press play or drag the slider. The title gives the probe's mAP.")
    save_model(model_ft, out / "model.safetensors")

    say("4/6 evaluating the fine-tuned model")
    ft = evaluate(model_ft, ds, flip=cfg.eval_flip)
    rows.append(_row("fine-tuned", ft))
    emb_after = embed(model_ft, test)
    ranking = rank_gallery(emb_after[: len(query)], emb_after[len(query):], query, gallery)
    report.raw("Worst queries of the fine-tuned model (green: same identity, red: another)",
               str(worst_queries_html(ranking, k=8, per_page=pick(10, 3))))
    cmp = compare_rankings(rank_gallery(emb_before[: len(query)], emb_before[len(query):], query, gallery), ranking,
                           names=("zero-shot", "fine-tuned"))
    report.raw("Before / after, per query (click a column header to sort)",
               str(cmp.table_html(max_rows=pick(None, 20))))
    for label, table in (("most improved", cmp.most_improved(1)), ("most hurt", cmp.most_hurt(1))):
        report.figure(f"Before / after: the {label} query, top 5 under both models",
                      cmp.figure(int(table["query_index"].iloc[0]), k=5))

    say("5/6 projecting the embeddings (UMAP, aligned before/after)")
    method = pick("aligned_umap", "pca")
    report.figure("Embedding space: zero-shot vs fine-tuned",
                  viz.plot_before_after(emb_before, emb_after, test, color_by="pid", method=method,
                                        titles=("zero-shot", "fine-tuned")))
    report.raw("Fine-tuned embeddings (hover a point to see the image)",
               viz.html_fragment(emb_after, test, method=pick("umap", "pca"), color_by=metadata.color_by(test)))
    report.table("Embedding numbers", pd.concat({"zero-shot": viz.embedding_report(emb_before, test),
                                                 "fine-tuned": viz.embedding_report(emb_after, test)}, axis=1))

    say("6/6 explaining pairs with Score-CAM" + (f" (approximate: {top_channels} masked images per map)" if isinstance(top_channels, (int, float)) else ""))
    q_emb, g_emb = emb_after[: len(query)], emb_after[len(query):]
    n_pairs = pick(6, 2)
    for kind in ("top_matches", "hardest_wrong"):
        pairs = explain.select_pairs(q_emb, g_emb, query.pids, gallery.pids, kind=kind, n=n_pairs)
        if not pairs:
            metadata.note(f"skipped Score-CAM of {kind.replace('_', ' ')}: no such pairs in this query/gallery")
            continue
        cams = [explain.similarity_cam(model_ft, q, g, dataset=(query, gallery), symmetric=True, fast=True,
                                       top_channels=top_channels) for q, g, _ in pairs]
        report.figure(f"Score-CAM: {kind.replace('_', ' ')}", explain.plot_cam_grid(cams))
        if kind == "top_matches":
            report.figure("Faithfulness of the first map (deletion / insertion vs random order)",
                          explain.plot_faithfulness(explain.faithfulness(model_ft, cams[0])))
    # where each model looks, on the synthetic renderer's part masks; on other data one line says there are none
    parts = sanity.part_saliency({"zero-shot": zero, "fine-tuned": model_ft}, test, n_pairs=pick(8, 2),
                                 top_channels=top_channels)
    if parts.note:
        report.text("Where the models look, part by part", parts.note)
    else:
        report.figure("Where the models look: each part's share of the Score-CAM mass, same-player pairs",
                      parts.figure(), note="grey: the part's share of the image area; a model that looks at "
                                           "nothing in particular would follow it")
        report.table("Where the models look (mass: share of the saliency; peak: share of pairs whose peak is there)",
                     parts.table)
    return _finish(rows, report, out, say)


def _finish(rows, report: Report, out: Path, say) -> pd.DataFrame:
    table = pd.DataFrame(rows).set_index("model")
    report.table("Metrics", table, na_rep="–", first=True)
    report.raw(None, "<p class='note'>The fine-tuned model is the image tower only (CLIP-ReIdent), so it has no "
                     "text probe; the zero-shot model is probed for shirt numbers when the data has a number column (chance 1 % "
                     "for numbers 0-99). Re-id embeddings are averaged with their horizontal flip "
                     "when the config says so (<code>eval_flip</code>), for both models.</p>", first=True)
    table.to_csv(out / "metrics.csv")
    path = report.save(out / "report.html")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"), flush=True)
    say(f"report: {path}")
    return table
