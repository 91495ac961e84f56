"""Benchmark the fine-tuning engine on the embedded default (not a test).

Prints, for the bundled tiny CLIP on the synthetic players (2 CPU threads by default), or any
config's model and data (``--config``, ``--model``, ``--pretrained``):

1. zero-shot mAP / rank-1 on the query/gallery split;
2. the same after fine-tuning with ``configs/clip_reident_tiny.yaml`` (the paper's recipe; default) within
   ``--minutes``, and the wall time;
   with ``--scratch`` (the default) also the same config, budget and seed from a random-init model
   of the same architecture (does pre-training matter?);
3. training throughput (images/s) of :func:`cliptk.train.fit` divided by that of a bare
   hand-written loop of the same steps (same model, same batches and flips, same loss, AdamW; no
   finite guards, schedule, History, callbacks or checkpoints), measured side by side in this run,
   alternating fit / bare ``--rounds`` times. fit runs with its finite loss-and-gradient guard on
   (it always is: the loss value and the gradients' norm reach the host in one transfer per step).
   The bare loop is built from cliptk.train's public pieces (``make_sampler``, ``PairImages``,
   ``joint_flip``), so the ratio is the cost of everything ``Trainer.step`` adds around the loss.
   ``--throughput-only`` measures just this (a few minutes on a CPU);
4. zero-shot shirt-number reading of the query images with the full model (text tower included):
   with the captions' template (:func:`cliptk.metadata.probe_numbers`, the wording the bundled
   model card names) and with a wording never used in its pre-training (:data:`NOVEL_NUMBER_PROMPT`),
   chance 1 % (skipped on data without a ``number`` column or a model without a text tower).

Targets: fine-tuned mAP >= 0.90 and >= 10 points above zero-shot within 5 minutes; throughput
ratio >= 0.95.

Measured: see benchmarks/RESULTS.md, the README's table and the bundled model's card
(``data/models/cliptk-tiny-synthetic-players.md``); ``--config configs/cpu_tiny.yaml`` runs the
ablation's kit-batch / re-initialised-blocks variant.

    python benchmarks/bench_finetune.py                         # the embedded default
    python benchmarks/bench_finetune.py --minutes 3 --ratio-steps 20
    python benchmarks/bench_finetune.py --model cliptk-tiny --pretrained none   # from random init
    CLIPTK_SMOKE=1 python benchmarks/bench_finetune.py --throughput-only --batch-size 32 --ratio-steps 15
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from cliptk import metadata
from cliptk.evaluate import evaluate, zero_shot_probe
from cliptk.losses import make_loss
from cliptk.models import load_model
from cliptk.recipes import dataset_from_config, load_from_config
from cliptk.train import PairImages, fit, joint_flip, load_config, make_sampler, train_rows

ROOT = Path(__file__).resolve().parents[1]
#: a number prompt the bundled model never saw in pre-training (its captions: cliptk.synthetic
#: CAPTION_TEMPLATE and the alt-text templates of scripts/pretrain_tiny_clip.py)
NOVEL_NUMBER_PROMPT = "the player wearing shirt {number}"


def number_probes(cfg, data) -> tuple[float, float, float] | None:
    """Zero-shot shirt-number accuracy on the query split with the config's model loaded whole
    (text tower included): (captions' template, novel wording, chance); None when the data has no
    number column or the model no text tower."""
    query = data.subset(cfg.query_split)
    column = metadata.number_column(query)
    if column is None or cfg.pretrained in (None, "none"):
        return None
    try:
        clip = load_model(cfg.model, cfg.pretrained, image_only=False, resize=cfg.resize)
    except (ValueError, KeyError) as e:   # a checkpoint of the image tower only
        print(f"number probe skipped: {e}")
        return None
    template = metadata.probe_numbers(clip, query, column=column, progress=False)
    if template is None:
        return None
    novel = zero_shot_probe(clip, query, column, {n: NOVEL_NUMBER_PROMPT.format(number=n) for n in range(100)},
                            progress=False)
    return template.accuracy, novel.accuracy, template.chance


def bare_loop(model, train, cfg, steps: int) -> list[float]:
    """The reference: a plain loop over the same batches (forward, loss, backward, AdamW step, and
    nothing else); returns per-step wall times (s). Like ``fit``, it starts with an empty image
    cache (a cache shared across runs once made the bare loop skip the decoding ``fit`` pays)."""
    view = PairImages(train, model.preprocess, cache=cfg.cache_images)
    sampler = make_sampler(train, cfg)
    loader = DataLoader(view, batch_sampler=sampler, num_workers=cfg.num_workers)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    loss_fn = make_loss(cfg.loss, label_smoothing=cfg.label_smoothing)
    model.train()
    times: list[float] = []
    epoch = 0
    t = time.perf_counter()
    while len(times) < steps:
        sampler.set_epoch(epoch)
        for batch, (x, idx) in enumerate(loader):
            b = x.shape[0] // 2
            x = joint_flip(x, cfg.seed, epoch, batch, 0, 1, cfg.flip_p)
            e = model(x).float()
            loss = loss_fn(e[:b], e[b:], model.logit_scale.exp(), ids=torch.as_tensor(train.pids[idx[:b].numpy()]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            now = time.perf_counter()
            times.append(now - t)
            t = now
            if len(times) == steps:
                break
        epoch += 1
    return times


def throughput(base, train, cfg, steps: int, rounds: int) -> tuple[float, float, dict[str, list[float]]]:
    """images/s of fit and of :func:`bare_loop` over ``steps`` steps each (the first, warm-up step
    dropped), alternated ``rounds`` times on fresh copies of ``base``; returns the means and runs."""
    quick = cfg.replace(max_steps=steps, max_minutes=None, output_dir=None, eval_before=False, progress=False)
    imgs = 2 * cfg.batch_size
    rates: dict[str, list[float]] = {"fit": [], "bare": []}
    for _ in range(rounds):
        h = fit(copy.deepcopy(base), train, quick)
        secs = h.steps["seconds"].diff().to_numpy()[1:]   # per-step times, the first (warm-up) step dropped
        rates["fit"].append(imgs * len(secs) / secs.sum())
        times = bare_loop(copy.deepcopy(base), train, cfg, steps)[1:]
        rates["bare"].append(imgs * len(times) / sum(times))
    return float(np.mean(rates["fit"])), float(np.mean(rates["bare"])), rates


def print_throughput(cfg, fit_ips: float, bare_ips: float, rates: dict[str, list[float]], threads: int) -> None:
    """The side-by-side table (Markdown) with the ratio."""
    runs = {k: ", ".join(f"{r:.1f}" for r in v) for k, v in rates.items()}
    per_round = [f / b for f, b in zip(rates["fit"], rates["bare"])]   # each fit run against the bare run after it
    print(f"\nthroughput: {cfg.model}, batch {cfg.batch_size} pairs ({2 * cfg.batch_size} images), loss {cfg.loss}, "
          f"{threads} threads, {len(rates['fit'])} alternations")
    print("| loop | images/s (mean) | runs |\n|---|---|---|")
    print(f"| `fit` (Trainer.step: finite guards, schedule, History) | {fit_ips:.1f} | {runs['fit']} |")
    print(f"| bare hand-written loop (forward, loss, backward, AdamW) | {bare_ips:.1f} | {runs['bare']} |")
    print(f"| **ratio fit / bare** (of the means) | **{fit_ips / bare_ips:.3f}** | target >= 0.95 |")
    print(f"| ratio per alternation (median {np.median(per_round):.3f}) | | {', '.join(f'{r:.3f}' for r in per_round)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "clip_reident_tiny.yaml"))
    ap.add_argument("--model", default=None, help="override the config's model (e.g. cliptk-tiny)")
    ap.add_argument("--pretrained", default=None, help="override the config's weights (tag, file, or none)")
    ap.add_argument("--minutes", type=float, default=5.0, help="fine-tuning time budget")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--ratio-steps", type=int, default=25, help="steps per throughput measurement")
    ap.add_argument("--rounds", type=int, default=2, help="fit / bare alternations of the throughput measurement")
    ap.add_argument("--batch-size", type=int, default=None, help="override the config's batch size (pairs)")
    ap.add_argument("--throughput-only", action="store_true", help="only the fit / bare-loop throughput table")
    ap.add_argument("--scratch", action=argparse.BooleanOptionalAction, default=True,
                    help="also fine-tune a random-init model of the same architecture with the same config and budget")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_finetune"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    over: dict = {"max_minutes": args.minutes, "output_dir": args.out}
    if args.model:
        over["model"] = args.model
    if args.pretrained:
        over["pretrained"] = args.pretrained
    if args.batch_size:
        over["batch_size"] = args.batch_size
    cfg = load_config(args.config, over)
    data = dataset_from_config(cfg)
    train = train_rows(data, cfg)
    base = load_from_config(cfg)
    print(f"model {cfg.model} / {cfg.pretrained}; data {data!r}; {args.threads} threads")

    # 1. throughput: fit vs a bare loop, same batches, alternated (fit, bare, fit, bare, ...)
    fit_ips, bare_ips, rates = throughput(base, train, cfg, args.ratio_steps, args.rounds)
    print_throughput(cfg, fit_ips, bare_ips, rates, args.threads)
    if args.throughput_only:
        return

    # 2. zero-shot
    t0 = time.perf_counter()
    zero = evaluate(base, data, query=cfg.query_split, gallery=cfg.gallery_split, flip=cfg.eval_flip, progress=False)
    t_eval = time.perf_counter() - t0

    # 3. fine-tune within the budget
    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    history = fit(model, data, cfg, eval_data=data)
    wall = time.perf_counter() - t0
    final = history.final
    other = not cfg.eval_flip   # the other evaluation protocol, for the record
    zero_other = evaluate(base, data, query=cfg.query_split, gallery=cfg.gallery_split, flip=other, progress=False)
    final_other = evaluate(model, data, query=cfg.query_split, gallery=cfg.gallery_split, flip=other, progress=False)
    steps = history.steps
    scratch = None
    if args.scratch:
        torch.manual_seed(cfg.seed)
        scratch_cfg = cfg.replace(pretrained=None, output_dir=str(Path(args.out) / "scratch"))
        scratch = fit(load_from_config(scratch_cfg), data, scratch_cfg, eval_data=data)
    probes = number_probes(cfg, data)

    print("\nevaluations during fine-tuning:")
    print(history.evals[["epoch", "step", "mAP", "rank1", "seconds"]].to_string(index=False))
    gain = 100 * (final["mAP"] - zero.mAP)
    rows = [
        ("zero-shot mAP / rank-1", f"{zero.mAP:.4f} / {zero.cmc[1]:.4f}  ({t_eval:.1f} s to evaluate)"),
        ("fine-tuned mAP / rank-1", f"{final['mAP']:.4f} / {final['rank1']:.4f}"),
        ("gain (mAP points)", f"{gain:+.1f}"),
        (f"{'with' if other else 'without'} flip averaging: zero-shot / fine-tuned mAP",
         f"{zero_other.mAP:.4f} / {final_other.mAP:.4f}"),
        *([("same config from random init: fine-tuned mAP / rank-1",
             f"{scratch.final['mAP']:.4f} / {scratch.final['rank1']:.4f}  ({len(scratch.steps)} steps)")]
          if scratch is not None else []),
        *([(f"zero-shot shirt numbers: captions' template / novel wording ({NOVEL_NUMBER_PROMPT!r})",
            f"{probes[0]:.3f} / {probes[1]:.3f}  (chance {probes[2]:.3f})")] if probes is not None else []),
        ("fine-tuning wall time", f"{wall / 60:.2f} min ({len(steps)} steps, epoch {final['epoch']:.2f}, "
                                  f"stopped: {history.stopped or 'all epochs done'})"),
        ("fit throughput", f"{fit_ips:.1f} images/s  (runs: {', '.join(f'{r:.1f}' for r in rates['fit'])})"),
        ("bare-loop throughput", f"{bare_ips:.1f} images/s  (runs: {', '.join(f'{r:.1f}' for r in rates['bare'])})"),
        ("throughput ratio fit / bare", f"{fit_ips / bare_ips:.3f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n| " + "quantity".ljust(width) + " | value |\n|" + "-" * (width + 2) + "|-------|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")
    checks = {
        "fine-tuned mAP >= 0.90": final["mAP"] >= 0.90,
        "gain >= 10 points": gain >= 10,
        f"all epochs within {args.minutes:g} minutes": history.stopped != "max_minutes",
        "throughput ratio >= 0.95": fit_ips / bare_ips >= 0.95,
    }
    if scratch is not None:
        checks["random init >= 10 points below"] = final["mAP"] - scratch.final["mAP"] >= 0.10
    if probes is not None:
        checks["number probe (template) >= 0.50"] = probes[0] >= 0.50
    print("\n" + "\n".join(f"[{'PASS' if ok else 'MISS'}] {name}" for name, ok in checks.items()))


if __name__ == "__main__":
    main()
