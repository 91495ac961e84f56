"""Pre-train cliptk's bundled tiny CLIP on synthetic-player captions (CPU, from random init).

This is how ``data/models/cliptk-tiny-synthetic-players.safetensors`` was made. The model learns
only from captions (jersey colour, shirt number, sometimes missing), like a web-scale CLIP learns
from alt-text: it never sees identity labels, so its zero-shot re-id is decent but imperfect and
fine-tuning has something left to learn.

Recipe (DESIGN.md §4): image-text InfoNCE where images whose captions are identical count as
positives of each other (multi-positive targets), half of the batches drawn from as few jersey
colours as possible (in-batch hard negatives: only the number and fine cues differ), fresh renders
every step from a world of identities disjoint from the dataset's train/test players, AdamW with
warm-up, a constant rate and a cosine decay over the last 30 % of the time budget. A learning curve (loss, colour/number probe accuracy, zero-shot re-id
mAP) is written beside the checkpoint.

    python scripts/pretrain_tiny_clip.py --minutes 45          # what made the bundled file
    python scripts/pretrain_tiny_clip.py --minutes 1 --out /tmp/t.safetensors   # a quick look
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

import cliptk as ct
from cliptk import synthetic as syn
from cliptk.metrics import evaluate_reid


class CaptionStream(IterableDataset):
    """Endless preprocessed (images, tokens, captions) batches rendered in a worker process."""

    def __init__(self, players, batch_size, seed, preprocess, tokenizer, hard_fraction):
        self.players, self.batch_size, self.seed = players, batch_size, seed
        self.preprocess, self.tokenizer, self.hard_fraction = preprocess, tokenizer, hard_fraction

    def __iter__(self):
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            hard = rng.random() < self.hard_fraction
            images, captions, _ = syn.sample_batch(self.players, self.batch_size, rng, same_colour=hard)
            yield torch.stack([self.preprocess(im) for im in images]), self.tokenizer(captions), captions


def multi_positive_loss(img, txt, scale, captions):
    """Symmetric InfoNCE whose targets spread over all items with the same caption."""
    logits = scale * img @ txt.T
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=img.dtype)
    targets = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


@torch.no_grad()
def probe(model, held_out):
    """Colour and number zero-shot accuracy (captions' own templates) on fixed renders."""
    model.eval()
    images, players = held_out
    x = torch.stack([model.preprocess(im) for im in images])
    f = F.normalize(model.visual(x), dim=-1)
    colours = list(syn.COLOURS)
    tc = model.encode_text(syn.colour_prompts())
    acc_colour = float(((f @ tc.T).argmax(1).numpy() == np.array([colours.index(p.colour) for p in players])).mean())
    # number given the true colour (the caption template with colour and number)
    hits = []
    for c in colours:
        idx = [i for i, p in enumerate(players) if p.colour == c]
        if idx:
            tn = model.encode_text(syn.number_prompts(c))
            hits += list((f[idx] @ tn.T).argmax(1).numpy() == np.array([players[i].number for i in idx]))
    tn = model.encode_text(syn.number_prompts())
    acc_number_plain = float(((f @ tn.T).argmax(1).numpy() == np.array([p.number for p in players])).mean())
    model.train()
    return acc_colour, float(np.mean(hits)), acc_number_plain


@torch.no_grad()
def reid_map(model, world, seed=7):
    """Zero-shot re-id mAP on fresh renders of unseen identities (1 query + 5 gallery each)."""
    model.eval()
    rng = np.random.default_rng(seed)
    q, g, qp, gp = [], [], [], []
    for p in world:
        for k in range(6):
            img = model.preprocess(syn.render_player(p, rng, camera=int(rng.integers(4))))
            (q if k == 0 else g).append(img)
            (qp if k == 0 else gp).append(p.pid)
    emb = lambda xs: torch.cat([F.normalize(model.visual(torch.stack(xs[i:i + 256])), dim=-1)
                                for i in range(0, len(xs), 256)])
    res = evaluate_reid(emb(q), emb(g), np.array(qp), np.array(gp))
    model.train()
    return res.mAP, res.cmc[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=45)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hard-fraction", type=float, default=0.5)
    ap.add_argument("--players", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=float, default=5.0, help="minutes between probes and checkpoints")
    ap.add_argument("--out", type=Path, default=ct.models.data_dir() / ct.models.BUNDLED[("cliptk-tiny", "synthetic-players")])
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    # a world of its own: games/pids far from generate_players' train/test worlds
    players = syn.make_players(args.players, seed=10_000 + args.seed, first_pid=100_000, first_game=10_000)
    eval_world = syn.make_players(100, seed=20_000 + args.seed, first_pid=200_000, first_game=20_000)
    rng = np.random.default_rng(1)
    held_out = ([syn.render_player(p, rng, camera=int(rng.integers(4))) for p in eval_world for _ in range(3)],
                [p for p in eval_world for _ in range(3)])

    model = ct.load_model("cliptk-tiny", None)
    model.train()
    stream = CaptionStream(players, args.batch, args.seed, model.preprocess, model.tokenizer, args.hard_fraction)
    loader = DataLoader(stream, batch_size=None, num_workers=1, prefetch_factor=4, persistent_workers=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    budget = args.minutes * 60
    warmup = 100
    curve = []
    start = last_eval = time.time()
    seen = 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for step, (x, tokens, captions) in enumerate(loader):
        elapsed = time.time() - start
        frac = min(elapsed / budget, 1.0)
        # constant after warm-up, cosine decay over the last 30 % of the time budget: robust to a
        # throughput that changes while it runs (a shared machine)
        tail = max(0.0, (frac - 0.7) / 0.3)
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * tail)))
        for group in opt.param_groups:
            group["lr"] = lr
        img = model.encode_image(x)
        txt = model.clip.encode_text(tokens, normalize=True)
        scale = model.logit_scale.exp().clamp(max=100)
        loss = multi_positive_loss(img, txt, scale, captions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        seen += len(captions)
        done = elapsed >= budget
        if step % 50 == 0:
            print(f"step {step:6d}  {elapsed / 60:5.1f} min  loss {loss.item():.3f}  lr {lr:.2e}  "
                  f"scale {scale.item():.1f}  {seen / max(elapsed, 1e-6):.0f} pairs/s", flush=True)
        if done or time.time() - last_eval > args.eval_every * 60 or step == 0:
            colour, number, number_plain = probe(model, held_out)
            m, r1 = reid_map(model, eval_world)
            row = dict(step=step, minutes=round(elapsed / 60, 2), pairs=seen, loss=round(loss.item(), 4),
                       colour_acc=round(colour, 3), number_acc_given_colour=round(number, 3),
                       number_acc=round(number_plain, 3), reid_mAP=round(m, 3), reid_rank1=round(r1, 3))
            curve.append(row)
            print("EVAL", json.dumps(row), flush=True)
            ct.save_model(model, args.out, metadata={"curve": curve, "args": {k: str(v) for k, v in vars(args).items()}})
            args.out.with_suffix(".curve.json").write_text(json.dumps(curve, indent=1))
            last_eval = time.time()
        if done:
            break
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
