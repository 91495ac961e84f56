"""Pre-train cliptk's bundled tiny CLIP on alt-text-like captions of synthetic players (CPU, random init).

This is the one way ``data/models/cliptk-tiny-synthetic-players.safetensors`` is made. The model learns
only from captions, like a web-scale CLIP learns from alt-text: it never sees identity labels.

Recipe (DESIGN.md §4, issue 15), a miniature of web CLIP pre-training:

* **captions like alt-text**: one per image, drawn at random from many templates, each naming a random
  subset of what the image shows: jersey (and sometimes shorts / trim) colour, the shirt number (only when
  ``RenderInfo.number_visible``; in most such captions), and sometimes shoes, socks (+ length), hair, skin,
  build, headband, arm sleeve, view, camera, occlusion, team / city. The captions' probe template
  (``synthetic.CAPTION_TEMPLATE``, also ``NUMBER_PROMPT`` / ``COLOUR_PROMPT``) is one of the templates,
  used often (alone or as the head of a longer caption), so the zero-shot probes have a wording that
  pre-training used; the wording ``"the player wearing shirt {number}"`` is never used (a novel-wording probe).
* **one positive per caption**: standard symmetric CLIP InfoNCE, learnable temperature (open_clip
  ``logit_scale``, clamped at 100); batches of distinct identities, a fraction of them from as few jersey
  colours as possible (in-batch hard negatives).
* **fresh renders every step** from a pre-training world disjoint from the dataset's identities
  (``make_players(players, seed=10_000 + seed, first_pid=100_000, first_game=10_000)``); batch ``k`` is
  rendered from ``default_rng([seed, k])``, so a run is defined by ``--steps`` and its seed, not by wall time.
* AdamW, linear warm-up then cosine decay over ``--steps``.
* every ``--eval-every`` steps: an ``EVAL`` line, the learning curve (``<out>.curve.json``), the model
  (``<out>``, fp16 safetensors via ``ct.save_model``) and a resumable checkpoint (``<out>.ckpt.pt``: model,
  optimiser, step, RNG). ``--resume`` continues from it.
* ``--init CKPT``: a second stage, starting from an earlier run's weights (its ``.ckpt.pt``) with a
  fresh optimiser and schedule; the caption stream continues at that run's step (new renders), and the
  curve and metadata record the stage it came from.

    python scripts/pretrain_tiny_clip.py --steps 6000 --threads 1        # a full run
    python scripts/pretrain_tiny_clip.py --steps 6000 --threads 1 --resume   # continue after an interruption
    python scripts/pretrain_tiny_clip.py --steps 40 --eval-every 20 --out /tmp/t.safetensors   # a quick look
    python scripts/pretrain_tiny_clip.py --init run1/model.ckpt.pt --steps 3000 --out run2/model.safetensors
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

import cliptk as ct
from cliptk import synthetic as syn
from cliptk.metrics import evaluate_reid

#: probe wording never used in pre-training (no caption says "wearing" or "shirt")
NOVEL_NUMBER_PROMPT = "the player wearing shirt {number}"

# --------------------------------------------------------------------------- alt-text captions
_CAMERAS = ("the main camera", "the baseline camera", "the corner camera", "the high camera")
_CAMERA_SHORT = ("main cam", "baseline cam", "corner cam", "high cam")


def _colour_name(rgb) -> str:
    """Nearest jersey-colour name of an RGB (shorts are the jersey, the trim, black or white)."""
    return min(syn.COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(syn.COLOURS[c], rgb)))


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _hair(p, rng) -> str | None:
    if p.hair_style == "bald" or p.hair_colour == "none":
        return _pick(rng, ["a bald head", "a shaved head", "no hair"])
    c, s = p.hair_colour, p.hair_style
    return {"short": _pick(rng, [f"short {c} hair", f"{c} hair", f"a short {c} haircut"]),
            "afro": _pick(rng, [f"a {c} afro", f"{c} afro hair", "an afro" if c == "black" else f"a {c} afro"]),
            "long": _pick(rng, [f"long {c} hair", f"{c} hair down to the shoulders"]),
            "bun": _pick(rng, [f"{c} hair in a bun", f"a {c} bun"])}.get(s, f"{c} hair")


def _socks(p, rng) -> str:
    length = {"low": _pick(rng, ["ankle", "low"]), "crew": _pick(rng, ["crew", "mid"]),
              "high": _pick(rng, ["high", "knee-high", "long"])}[p.sock_length]
    return _pick(rng, [f"{length} {p.socks} socks", f"{p.socks} {length} socks", f"{p.socks} socks"])


def _build(p, rng) -> str | None:
    tall = "tall" if p.height > 1.02 else "short" if p.height < 0.94 else None
    wide = _pick(rng, ["broad", "heavy-set", "stocky"]) if p.width > 1.12 else \
        _pick(rng, ["slim", "skinny", "thin"]) if p.width < 0.92 else None
    words = [w for w in (tall, wide) if w]
    return " and ".join(words) if words else None


def _number_phrase(n, info, rng) -> str:
    opts = [f"with number {n}", f"number {n}", f"#{n}", f"no. {n}", f"with the number {n}", f"number {n} on the jersey"]
    if info.view == "back":
        opts += [f"with {n} on the back", f"number {n} on the back"]
    return _pick(rng, opts)


def _extras(p, info, rng) -> list[str]:
    """Candidate clauses about fine cues and the picture (all true of this render)."""
    out = {
        "shoes": _pick(rng, [f"{p.shoes} shoes", f"{p.shoes} sneakers", f"{p.shoes} basketball shoes"]),
        "socks": _socks(p, rng),
        "hair": _hair(p, rng),
        "skin": _pick(rng, [f"{p.skin} skin", f"a {p.skin} skin tone"]),
        "shorts": f"{_colour_name(p.shorts)} shorts",
        "trim": f"{_colour_name(p.trim)} trim",
    }
    if p.headband:
        out["headband"] = f"a {p.headband} headband"
    if p.sleeve:
        out["sleeve"] = _pick(rng, [f"a {p.sleeve} arm sleeve", f"a {p.sleeve} sleeve on one arm"])
    return [v for v in out.values() if v]


def _scene(p, info, rng) -> list[str]:
    """Clauses about the picture rather than the player: view, camera, occlusion, team."""
    view = {"front": ["from the front", "facing the camera", "front view"],
            "back": ["from behind", "back view", "seen from the back"],
            "side": ["side view", "in profile", "seen from the side"]}[info.view]
    out = [_pick(rng, view), _pick(rng, [f"shot from {_CAMERAS[info.camera % 4]}", f"{_CAMERA_SHORT[info.camera % 4]}"]),
           _pick(rng, [f"of the {p.team}", f"playing for {p.team}", f"{p.team.split()[0]} team"])]
    if info.occluded:
        out.append(_pick(rng, ["partly hidden by another player", "next to another player",
                               "with another player in the frame"]))
    return out


def alt_caption(p, info, rng, p_template=0.3, p_number=0.9) -> str:
    """One alt-text-like caption of ``p`` as rendered (``info``): random template, random attributes.

    With probability ``p_template`` the caption starts with the probe family of ``cliptk.synthetic``
    (``CAPTION_TEMPLATE`` when the number is visible, else ``COLOUR_PROMPT``; sometimes ``NUMBER_PROMPT``),
    alone or followed by a few more details. Otherwise a free template names the jersey colour (most of
    the time), the number (``p_number`` of the captions whose image shows it) and 0-4 other details.
    """
    number = p.number if info.number_visible and rng.random() < p_number else None
    details = _extras(p, info, rng)
    scene = _scene(p, info, rng)
    pool = details + scene
    n_more = int(rng.choice(5, p=[0.2, 0.3, 0.25, 0.15, 0.1]))
    more = [pool[i] for i in rng.permutation(len(pool))[:n_more]]
    colour = p.colour
    if rng.random() < p_template:
        if number is not None:
            head = syn.NUMBER_PROMPT.format(number=number) if rng.random() < 0.15 else \
                syn.CAPTION_TEMPLATE.format(colour=colour, number=number)
        else:
            head = syn.COLOUR_PROMPT.format(colour=colour)
        if rng.random() < 0.5 or not more:
            return head
        return head + ", " + ", ".join(more[:3])
    # free alt-text
    prefix = _pick(rng, ["a photo of", "photo of", "an image of", "a picture of", "a blurry photo of", "a crop of",
                         "a low resolution photo of", "", "", "basketball:"])
    build = _build(p, rng) if rng.random() < 0.3 else None
    subject = _pick(rng, ["a basketball player", "a player", "a basketball player", "an athlete", "a guard",
                          "a forward", "a man", "a basketball player on court"])
    if build:
        subject = ("an " if build[0] in "aeiou" else "a ") + build + " " + subject.split(" ", 1)[1]
    kit = ""
    if rng.random() < 0.92:
        shorts = _colour_name(p.shorts)
        kit = _pick(rng, [f"in a {colour} jersey", f"in {colour}", f"in a {colour} uniform", f"in a {colour} top",
                          f"in a {colour} jersey and {shorts} shorts", f"in a {colour} kit"])
        if "shorts" in kit:
            more = [m for m in more if not m.endswith(" shorts")]
    num = _number_phrase(number, info, rng) if number is not None else ""
    style = int(rng.integers(4))
    if style == 0:    # "a photo of a player in red with number 7, white shoes, from behind"
        body = " ".join(w for w in (prefix, subject, kit, num) if w)
        text = body + (", " + ", ".join(more) if more else "")
    elif style == 1:  # "a player with white shoes and high red socks in a red jersey, number 7, back view"
        body = " ".join(w for w in (prefix, subject) if w)
        worn = [m for m in more if m in details][:2]
        rest = [m for m in more if m not in worn]
        mid = (" with " + " and ".join(worn)) if worn else ""
        text = body + mid + (" " + kit if kit else "") + (", " + num if num else "") + \
            (", " + ", ".join(rest) if rest else "")
    elif style == 2:  # tag list: "red jersey, #7, white shoes, back view"
        tags = [f"{colour} jersey" if kit else "", f"#{number}" if number is not None and rng.random() < 0.5 else
                (f"number {number}" if number is not None else "")] + more
        tags = [t for t in tags if t]
        text = ", ".join(tags[:1] + [tags[i] for i in rng.permutation(range(1, len(tags)))]) if tags else subject
    else:             # "number 7 of the Porto Hawks in a red jersey, with blond hair"
        lead = f"number {number}" if number is not None else subject
        text = " ".join(w for w in (prefix, lead, kit) if w) + (", " + ", ".join(more) if more else "")
    return " ".join(text.split()).strip(" ,:") or syn.COLOUR_PROMPT.format(colour=colour)


def fit_caption(text: str, count_tokens, limit: int) -> str:
    """Drop trailing clauses until the caption fits the text tower's context (with SOT/EOT)."""
    while count_tokens(text) + 2 > limit and ", " in text:
        text = text.rsplit(", ", 1)[0]
    return text


# --------------------------------------------------------------------------- data
def sample_identities(players, by_colour, batch_size, rng, hard):
    """Indices of ``batch_size`` distinct identities (``hard``: as few jersey colours as possible)."""
    if hard:
        order: list[int] = []
        for c in rng.permutation(sorted(by_colour)):
            order += list(rng.permutation(by_colour[str(c)]))
        return order[:batch_size]
    return [int(i) for i in rng.choice(len(players), batch_size, replace=False)]


class CaptionStream(IterableDataset):
    """Preprocessed (images, tokens, captions, worker CPU s) for steps ``start, start+1, ...``.

    Batch ``k`` comes from ``np.random.default_rng([seed, k])`` alone: the same steps give the same
    batches whether the run is resumed or not, with any number of workers."""

    def __init__(self, players, batch_size, seed, start, preprocess, tokenizer, hard_fraction, p_template, p_number):
        self.players, self.batch_size, self.seed, self.start = players, batch_size, seed, start
        self.preprocess, self.tokenizer, self.hard_fraction = preprocess, tokenizer, hard_fraction
        self.p_template, self.p_number = p_template, p_number

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        by_colour, by_game = defaultdict(list), defaultdict(list)
        for i, p in enumerate(self.players):
            by_colour[p.colour].append(i)
            by_game[p.game].append(p)
        enc = getattr(self.tokenizer, "encode", None)
        limit = getattr(self.tokenizer, "context_length", 32)
        count = (lambda t: len(enc(t))) if enc else (lambda t: len(t.split()) * 2)
        step = self.start + wid
        while True:
            rng = np.random.default_rng([self.seed, step])
            hard = rng.random() < self.hard_fraction
            images, captions = [], []
            for i in sample_identities(self.players, by_colour, self.batch_size, rng, hard):
                p = self.players[i]
                img, rinfo = syn.render_player(p, rng, camera=int(rng.integers(4)), others=by_game[p.game],
                                               return_info=True)
                images.append(self.preprocess(img))
                captions.append(fit_caption(alt_caption(p, rinfo, rng, self.p_template, self.p_number), count, limit))
            yield torch.stack(images), self.tokenizer(captions), captions, hard, time.process_time()
            step += nw


# --------------------------------------------------------------------------- evaluation
class HeldOut:
    """Fixed renders of an unseen world (1 query + 5 gallery per identity), rendered once."""

    def __init__(self, model, world, seed=7):
        rng = np.random.default_rng(seed)
        by_game = defaultdict(list)
        for p in world:
            by_game[p.game].append(p)
        xs, self.players, self.visible, self.is_query = [], [], [], []
        for p in world:
            for k in range(6):
                img, info = syn.render_player(p, rng, camera=int(rng.integers(4)), others=by_game[p.game],
                                              return_info=True)
                xs.append(model.preprocess(img))
                self.players.append(p)
                self.visible.append(info.number_visible)
                self.is_query.append(k == 0)
        self.x = torch.stack(xs)
        self.pids = np.array([p.pid for p in self.players])
        self.numbers = np.array([p.number for p in self.players])
        self.visible, self.is_query = np.array(self.visible), np.array(self.is_query)


@torch.no_grad()
def evaluate(model, held: HeldOut) -> dict:
    """Zero-shot probes (projected image features vs text) and re-id mAP (with and without projection)."""
    was_training = model.training
    model.eval()
    batches = [held.x[i:i + 300] for i in range(0, len(held.x), 300)]
    f = F.normalize(torch.cat([model.visual(b) for b in batches]), dim=-1)
    proj = model.visual.proj
    model.visual.proj = None  # the benchmark's zero-shot: ViT pooled width, projection removed
    try:
        g = F.normalize(torch.cat([model.visual(b) for b in batches]), dim=-1)
    finally:
        model.visual.proj = proj
    colours = list(syn.COLOURS)
    tc = model.encode_text(syn.colour_prompts())
    colour_acc = float(((f @ tc.T).argmax(1).numpy() == np.array([colours.index(p.colour) for p in held.players])).mean())
    pred = np.zeros(len(f), int)
    for c in colours:  # number given the true colour, the captions' template
        idx = [i for i, p in enumerate(held.players) if p.colour == c]
        if idx:
            pred[idx] = (f[idx] @ model.encode_text(syn.number_prompts(c)).T).argmax(1).numpy()
    hit = pred == held.numbers
    plain = (f @ model.encode_text(syn.number_prompts()).T).argmax(1).numpy() == held.numbers
    novel_prompts = [NOVEL_NUMBER_PROMPT.format(number=n) for n in range(100)]
    novel = (f @ model.encode_text(novel_prompts).T).argmax(1).numpy() == held.numbers
    q = held.is_query
    res = evaluate_reid(g[q], g[~q], held.pids[q], held.pids[~q])
    res_proj = evaluate_reid(f[q], f[~q], held.pids[q], held.pids[~q])
    if was_training:
        model.train()
    r = lambda v: round(float(v), 3)
    return dict(colour_acc=r(colour_acc), number_acc_template=r(hit.mean()),
                number_acc_template_visible=r(hit[held.visible].mean()),
                number_acc_plain=r(plain.mean()), number_acc_novel=r(novel.mean()),
                reid_mAP=r(res.mAP), reid_rank1=r(res.cmc[1]), reid_mAP_proj=r(res_proj.mAP))


# --------------------------------------------------------------------------- training
def lr_at(step, steps, base, warmup, final_frac=0.02):
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, steps - warmup))
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def clip_loss(img, txt, scale):
    """Symmetric InfoNCE, one positive per row (the diagonal)."""
    logits = scale * img @ txt.T
    labels = torch.arange(len(img))
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def save_fp16(model, path, metadata):
    half = copy.deepcopy(model).half()
    ct.save_model(half, path, metadata={**metadata, "stored_dtype": "float16"})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6000, help="optimiser steps: the run's budget")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--hard-fraction", type=float, default=0.5, help="batches from as few jersey colours as possible")
    ap.add_argument("--p-template", type=float, default=0.3, help="captions starting with the probe template family")
    ap.add_argument("--p-number", type=float, default=0.9, help="captions naming the number when it is visible")
    ap.add_argument("--players", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="render processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=250, help="steps between EVAL lines and checkpoints")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--resume", action="store_true", help="continue from <out>.ckpt.pt")
    ap.add_argument("--init", type=Path, default=None,
                    help="a second stage: start from this earlier run's .ckpt.pt (weights only; fresh optimiser "
                         "and schedule, the caption stream continuing at its step)")
    ap.add_argument("--show-captions", type=int, default=0, help="print N example captions and exit")
    ap.add_argument("--out", type=Path, default=ct.settings.data_dir() / ct.models.BUNDLED[("cliptk-tiny", "synthetic-players")])
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    # a world of its own: games/pids far from generate_players' train/test worlds
    players = syn.make_players(args.players, seed=10_000 + args.seed, first_pid=100_000, first_game=10_000)
    eval_world = syn.make_players(100, seed=20_000 + args.seed, first_pid=200_000, first_game=20_000)

    model = ct.load_model("cliptk-tiny", None)
    if args.show_captions:
        rng = np.random.default_rng(args.seed)
        for p in players[: args.show_captions]:
            _, info = syn.render_player(p, rng, camera=int(rng.integers(4)), return_info=True)
            print(f"[{p.colour} {p.number} {info.view} visible={info.number_visible}]", alt_caption(p, info, rng))
        return
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    ckpt_path = args.out.with_name(args.out.stem + ".ckpt.pt")
    curve_path = args.out.with_suffix(".curve.json")
    start, curve, cpu_before, wall_before = 0, [], 0.0, 0.0
    offset = 0   # the caption stream's first batch: a second stage continues its first stage's stream
    if args.init is not None:
        if args.resume:
            ap.error("--init starts a new stage; --resume continues one (pass only one of them)")
        first = torch.load(args.init, weights_only=False, map_location="cpu")
        ct.models.load_state(model, first["model"], source=str(args.init))
        offset = int(first["step"])
        print(f"second stage from {args.init} (its step {offset}, args {first['args']})", flush=True)
    if args.resume:
        ck = torch.load(ckpt_path, weights_only=False)
        ct.models.load_state(model, ck["model"], source=str(ckpt_path))
        opt.load_state_dict(ck["opt"])
        torch.set_rng_state(ck["torch_rng"])
        start, curve, cpu_before, wall_before = ck["step"], ck["curve"], ck["cpu_s"], ck["wall_s"]
        offset = int(ck.get("offset", 0))
        if ck["args"]["steps"] != args.steps or ck["args"]["seed"] != args.seed:
            print(f"note: checkpoint was made with steps={ck['args']['steps']} seed={ck['args']['seed']}", flush=True)
        print(f"resumed from {ckpt_path} at step {start}", flush=True)
    model.train()
    held = HeldOut(model, eval_world)
    run_args = {k: str(v) for k, v in vars(args).items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    stream = CaptionStream(players, args.batch, args.seed, offset + start, model.preprocess, model.tokenizer,
                           args.hard_fraction, args.p_template, args.p_number)
    loader = DataLoader(stream, batch_size=None, num_workers=args.workers,
                        prefetch_factor=4 if args.workers else None, persistent_workers=args.workers > 0)
    t0, cpu0 = time.time(), time.process_time()
    worker_cpu: dict[int, float] = {}
    losses, step = [], start

    def cpu_s():
        return cpu_before + (time.process_time() - cpu0) + sum(worker_cpu.values())

    def checkpoint(step, row):
        curve.append(row)
        print("EVAL", json.dumps(row), flush=True)
        meta = {"curve": curve, "args": run_args}
        save_fp16(model, args.out, meta)
        curve_path.write_text(json.dumps(curve, indent=1))
        tmp = ckpt_path.with_name(ckpt_path.name + ".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "curve": curve,
                    "torch_rng": torch.get_rng_state(), "cpu_s": cpu_s(), "wall_s": wall_before + time.time() - t0,
                    "offset": offset, "args": vars(args) | {"out": str(args.out)}}, tmp)
        os.replace(tmp, ckpt_path)

    def eval_row(step, loss):
        return dict(step=step, pairs=step * args.batch, cpu_min=round(cpu_s() / 60, 2),
                    wall_min=round((wall_before + time.time() - t0) / 60, 2),
                    loss=None if loss is None else round(loss, 4), lr=float(f"{lr_at(step, args.steps, args.lr, args.warmup):.3g}"),
                    scale=round(model.logit_scale.exp().item(), 2), **evaluate(model, held))

    if start == 0:
        checkpoint(0, eval_row(0, None))
    if start < args.steps:
        for wi, (x, tokens, captions, hard, wcpu) in enumerate(loader):
            worker_cpu[wi % max(1, args.workers)] = wcpu
            lr = lr_at(step, args.steps, args.lr, args.warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            img = model.encode_image(x)
            txt = model.clip.encode_text(tokens, normalize=True)
            scale = model.logit_scale.exp().clamp(max=100)
            loss = clip_loss(img, txt, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            step += 1
            if step % args.log_every == 0 or step == start + 1:
                wall = time.time() - t0
                print(f"step {step:6d}/{args.steps}  loss {np.mean(losses[-args.log_every:]):.3f}  lr {lr:.2e}  "
                      f"scale {scale.item():.1f}  {(step - start) / max(wall, 1e-6):.3f} steps/s  "
                      f"cpu {cpu_s() / 60:.1f} min  wall {(wall_before + wall) / 60:.1f} min", flush=True)
            if step % args.eval_every == 0 or step == args.steps:
                checkpoint(step, eval_row(step, float(np.mean(losses[-args.eval_every:]))))
            if step >= args.steps:
                break
    print(f"saved {args.out} (fp16), curve {curve_path}, checkpoint {ckpt_path}", flush=True)


if __name__ == "__main__":
    main()
