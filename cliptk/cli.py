"""Command line: ``python -m cliptk {demo,data,eval,train}``.

``demo`` is the main job on the embedded default (no network, no GPU): generate the synthetic
players, evaluate the bundled tiny CLIP zero-shot, fine-tune it with the CLIP-ReIdent recipe,
evaluate again, project the embeddings, explain pairs with Score-CAM, and write one
self-contained HTML report plus the checkpoint.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .data import read_dataset
from .data.download import download_main
from .evaluate import evaluate
from .models import load_model
from .recipes import run_from_config
from .synthetic import generate_players

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


def cmd_eval(args) -> int:
    pretrained = None if args.pretrained in ("none", "None", "") else args.pretrained
    model = load_model(args.model, pretrained, device=args.device, image_only=True)
    result = evaluate(model, read_dataset(args.data), flip=args.flip, rerank=args.rerank)
    print(result)
    return 0


def cmd_train(args) -> int:
    overrides = dict(kv.split("=", 1) for kv in args.set or [])
    resume = None if args.resume is None else (True if args.resume == "" else args.resume)
    _, history = run_from_config(args.config, overrides, resume=resume)
    if history.interrupted:   # Ctrl-C: a checkpoint was written; the shell convention for SIGINT
        _say(f"interrupted; resume with: python -m cliptk train --config {args.config} --resume")
        return 130
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo  # here, not at the top: the demo pulls in plotly, umap and grad-cam


    run_demo(out=Path(args.out), data_root=args.data, minutes=args.minutes, finetune=not args.no_finetune,
             say=_say)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m cliptk", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the whole story on the embedded default; writes an HTML report")
    demo.add_argument("--out", default="runs/demo", help="report, checkpoint and history go here")
    demo.add_argument("--data", default=None, help="where the synthetic players are generated (default: data/generated/)")
    demo.add_argument("--minutes", type=float, default=None, help="fine-tuning budget (default: the CPU config's)")
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
    ev.add_argument("--data", required=True, help="a dataset root or CSV manifest (layout is detected)")
    ev.add_argument("--model", default="cliptk-tiny")
    ev.add_argument("--pretrained", default="synthetic-players", help="tag, checkpoint file, or none")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--flip", action="store_true")
    ev.add_argument("--rerank", action="store_true")
    ev.set_defaults(func=cmd_eval)

    tr = sub.add_parser("train", help="fine-tune from a YAML config (torchrun-ready)")
    tr.add_argument("--config", required=True)
    tr.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override config fields")
    tr.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                    help="continue exactly where a run stopped: its output_dir (default: the config's) or a checkpoint")
    tr.set_defaults(func=cmd_train)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
