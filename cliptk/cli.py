"""Command line: ``python -m cliptk {demo,data,eval,embed,train}``.

``demo`` is the main job, by default on the embedded default (no network, no GPU): generate the
synthetic players, evaluate the bundled tiny CLIP zero-shot, fine-tune it with the CLIP-ReIdent
recipe, evaluate again, project the embeddings, explain pairs with Score-CAM, and write one
self-contained HTML report plus the checkpoint. ``--data``, ``--model``, ``--pretrained``,
``--finetuned``, ``--config`` and ``--device`` are the notebooks' parameters, so the same report can
be made for any model and dataset.

``embed`` writes a dataset's embeddings to a folder of shards (resumable; under ``torchrun
--nproc_per_node=N`` each rank embeds its own shards), which :func:`cliptk.embed.load_shards` reads.

An error (a missing split, an unreadable image, missing weights, a bad config field) prints one
line naming what is wrong and what to do, and exits with status 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch.distributed as dist

from ._util import world
from .data import ImageLoadError, read_dataset
from .data.download import download_main
from .embed import SHARD_SIZE, embed_to_folder
from .evaluate import evaluate
from .models import WeightsNotAvailableError, load_model
from .recipes import config_path, dataset, resolve_device, run_from_config
from .synthetic import generate_players
from .train import load_config
from .train.devices import init_distributed, pick_device

__all__ = ["main"]


def _say(msg: str) -> None:
    print(f"[cliptk {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cmd_data_generate(args) -> int:
    root = generate_players(args.root, n_train_ids=args.train_ids, n_test_ids=args.test_ids,
                            images_per_id=args.images_per_id, seed=args.seed, workers=args.workers)
    print(read_dataset(root).summary().to_string())
    return 0


def cmd_data_download(args) -> int:
    return download_main(args.name, args.root, url=args.url, md5=args.md5)


def _pretrained(value: str | None) -> str | None:
    return None if value in (None, "none", "None", "") else value


def cmd_eval(args) -> int:
    model = load_model(args.model, _pretrained(args.pretrained), device=resolve_device(args.device), image_only=True)
    data = dataset(args.data, on_error="skip" if args.skip_unreadable else "raise")
    result = evaluate(model, data, flip=args.flip, rerank=args.rerank)
    print(result)
    return 0


def cmd_embed(args) -> int:
    started = init_distributed(args.device)   # under torchrun: gloo on the CPU, NCCL on GPUs
    try:
        device = pick_device(args.device)       # this rank's GPU under torchrun
        model = load_model(args.model, _pretrained(args.pretrained), device=str(device), image_only=True)
        data = dataset(args.data, on_error="skip" if args.skip_unreadable else "raise")
        if args.split:
            data = data.subset(*args.split)
        run = embed_to_folder(model, data, args.out, shard_size=args.shard_size, flip=args.flip,
                              batch_size=args.batch_size, num_workers=args.workers, device=device,
                              overwrite=args.overwrite, progress=not args.quiet)
        if world()[0] == 0:
            _say(f"{run}; read it with cliptk.embed.load_shards({str(run.out)!r})")
    finally:
        if started:
            dist.destroy_process_group()
    return 0


def _shard_size(value: str) -> int:
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise argparse.ArgumentTypeError(f"{value!r}: write a positive number of images per shard (e.g. 4096)")


def _resume_command(args) -> str:
    parts = ["python -m cliptk train --config", shlex.quote(str(args.config))]
    if args.set:
        parts += ["--set", *map(shlex.quote, args.set)]
    return " ".join(parts + ["--resume"])


def _summary(history, output_dir: str | None) -> str:
    evals = history.evals
    steps = int((history.table["kind"] == "train").sum())
    done = f"done: {steps} steps" + (f" (stopped: {history.stopped})" if history.stopped else "")
    if len(evals):
        last = evals.iloc[-1]
        done += f"; mAP {last['mAP']:.4f}, rank-1 {last['rank1']:.4f}"
        if len(evals) > 1:
            done += f" (before: mAP {evals.iloc[0]['mAP']:.4f}, rank-1 {evals.iloc[0]['rank1']:.4f})"
    else:
        done += "; not evaluated (no query/gallery split)"
    if output_dir:
        out = Path(output_dir).resolve()
        weights = out / "model.safetensors"
        done += f"; model: {weights if weights.is_file() else out}"
    return done


def cmd_train(args) -> int:
    overrides = dict(kv.split("=", 1) if "=" in kv else _bad_set(kv) for kv in args.set or [])
    if args.overwrite:
        overrides["overwrite"] = True
    resume = None if args.resume is None else (True if args.resume == "" else args.resume)
    _, history = run_from_config(args.config, overrides, resume=resume)
    if history is not None and history.interrupted:   # Ctrl-C: a checkpoint was written; the shell convention for SIGINT
        _say(f"interrupted; resume with: {_resume_command(args)}")
        return 130
    if history is not None and hasattr(history, "rows"):
        output_dir = overrides.get("output_dir") or load_config(config_path(args.config), overrides).output_dir
        _say(_summary(history, output_dir))
    return 0


def _bad_set(kv: str):
    raise ValueError(f"--set {kv!r}: write KEY=VALUE (e.g. --set lr=1e-4 data=/data/my_reid)")


def _top_channels(value: str) -> int | str | None:
    """``--top-channels``: ``auto``, ``exact`` or a positive number of channel groups."""
    if value in ("auto", "exact"):
        return None if value == "exact" else value
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise argparse.ArgumentTypeError(f"{value!r}: write auto, exact or a number of channel groups (e.g. 64)")


def cmd_demo(args) -> int:
    from .demo import run_demo  # here, not at the top: the demo pulls in plotly, umap and grad-cam

    run_demo(out=Path(args.out), data=args.data, minutes=args.minutes, finetune=not args.no_finetune, say=_say,
             model=args.model, pretrained=_pretrained(args.pretrained),
             config=args.config, finetuned=args.finetuned, device=args.device, top_channels=args.top_channels)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m cliptk", description=__doc__.splitlines()[0],
                                 epilog="--debug (anywhere): show the traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the whole story (default: on the embedded default); writes an HTML report")
    demo.add_argument("--out", default="runs/demo", help="report, checkpoint and history go here (overwritten)")
    demo.add_argument("--data", default=None,
                      help="a dataset folder or CSV manifest (default: the synthetic players, generated once)")
    demo.add_argument("--model", default=None, help="open_clip architecture (default: the config's, cliptk-tiny)")
    demo.add_argument("--pretrained", default=None,
                      help="open_clip tag or checkpoint file; with --model, omit or 'none' for random init")
    demo.add_argument("--finetuned", default=None, help="fine-tuned weights to load instead of fine-tuning")
    demo.add_argument("--config", default="clip_reident_tiny", help="the recipe: a shipped config's name or a YAML path")
    demo.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    demo.add_argument("--minutes", type=float, default=None, help="fine-tuning budget (default: the config's epochs)")
    demo.add_argument("--top-channels", type=_top_channels, default="auto",
                      help="Score-CAM channel groups: auto (approximate only for a large tower on the CPU), "
                           "exact, or a number of groups (approximate, faster on wide towers)")
    demo.add_argument("--no-finetune", action="store_true", help="stop after the zero-shot evaluation")
    demo.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    gen = dsub.add_parser("generate", help="write the synthetic players dataset (DeepSportRadar layout)")
    gen.add_argument("--root", default="data/generated/players")
    gen.add_argument("--train-ids", type=int, default=400)
    gen.add_argument("--test-ids", type=int, default=100)
    gen.add_argument("--images-per-id", type=int, default=10)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--workers", type=int, default=2)
    gen.set_defaults(func=cmd_data_generate)
    dl = dsub.add_parser("download", help="fetch a public dataset (needs internet), verify its MD5, unpack it")
    dl.add_argument("name", choices=["deepsportradar"])
    dl.add_argument("--root", default="data/deepsportradar")
    dl.add_argument("--url", default=None, help="a mirror or a local file:// archive")
    dl.add_argument("--md5", default=None, help="expected MD5 ('none' skips the check)")
    dl.set_defaults(func=cmd_data_download)

    ev = sub.add_parser("eval", help="re-id mAP / CMC of a model on a dataset's query vs gallery")
    ev.add_argument("--data", required=True, help="a dataset root or CSV manifest (layout is detected; without "
                    "query/gallery, 20%% of the identities are held out, as train does)")
    ev.add_argument("--model", default="cliptk-tiny")
    ev.add_argument("--pretrained", default="synthetic-players", help="tag, checkpoint file, or none")
    ev.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda ...")
    ev.add_argument("--flip", action="store_true")
    ev.add_argument("--rerank", action="store_true")
    ev.add_argument("--skip-unreadable", action="store_true", help="leave unreadable images out (counted) instead of failing")
    ev.set_defaults(func=cmd_eval)

    em = sub.add_parser("embed", help="embed a dataset into a folder of shards + manifest (resumable, torchrun-ready)")
    em.add_argument("--data", required=True, help="a dataset root or CSV manifest (layout is detected; without "
                    "query/gallery, 20%% of the identities are held out, as eval does)")
    em.add_argument("--model", default="cliptk-tiny")
    em.add_argument("--pretrained", default="synthetic-players", help="tag, checkpoint file, or none")
    em.add_argument("--out", required=True, help="the folder: rows.csv, embeddings.json, shard-*.safetensors")
    em.add_argument("--split", nargs="+", default=None, metavar="NAME", help="only these splits (e.g. query gallery)")
    em.add_argument("--device", default="auto", help="auto (CUDA when present; under torchrun each rank's GPU), cpu, cuda")
    em.add_argument("--flip", action="store_true", help="average with the mirrored image")
    em.add_argument("--batch-size", type=int, default=64)
    em.add_argument("--shard-size", type=_shard_size, default=SHARD_SIZE, help="images per shard (the unit of resuming)")
    em.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    em.add_argument("--skip-unreadable", action="store_true", help="embed unreadable images as NaN rows instead of failing")
    em.add_argument("--overwrite", action="store_true", help="embed into an --out that holds another model's or another image list's "
                    "embeddings instead of refusing (shards that still match are kept)")
    em.add_argument("--quiet", action="store_true", help="no progress bars")
    em.set_defaults(func=cmd_embed)

    tr = sub.add_parser("train", help="fine-tune from a YAML config (torchrun-ready)")
    tr.add_argument("--config", required=True, help="a YAML path or a shipped config's name (cpu_tiny, ...)")
    tr.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                    help="override config fields (repeatable: --set a=1 b=2 --set c=3)")
    tr.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                    help="continue exactly where a run stopped: its output_dir (default: the config's) or a checkpoint")
    tr.add_argument("--overwrite", action="store_true", help="replace a previous run in output_dir instead of refusing")
    tr.set_defaults(func=cmd_train)
    return ap


#: errors a user can fix; printed as one line (``--debug``: the traceback)
USER_ERRORS = (FileNotFoundError, NotADirectoryError, KeyError, ValueError, TypeError, ImageLoadError,
               WeightsNotAvailableError, OSError)   # OSError: a full disk, named by the error

CLI_WEIGHTS_HINT = ("On the command line: --pretrained /path/to/weights (eval, demo) or --set pretrained=/path/to/weights "
                    "(train); --pretrained none (or --set pretrained=none) for a random init.")

CLI_IMAGE_HINT = "On the command line: eval --skip-unreadable, embed --skip-unreadable, train --set on_error=skip."


def error_line(err: BaseException) -> str:
    """The one line the command line prints for ``err``: its message (a KeyError's without the
    quotes), and for missing weights how to give them on the command line."""
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    msg = " ".join(str(msg).split())
    if isinstance(err, WeightsNotAvailableError):
        msg += " " + CLI_WEIGHTS_HINT
    elif isinstance(err, ImageLoadError):
        msg += " " + CLI_IMAGE_HINT
    return f"cliptk: error: {msg}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"{error_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
