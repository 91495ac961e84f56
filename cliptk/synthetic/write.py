"""Files on disk: a synthetic dataset in the DeepSportRadar layout, its manifest, and a look at it.

:func:`generate_players` writes the crops of a :func:`~cliptk.synthetic.world.make_world` world
(rendered by :func:`~cliptk.synthetic.render.render_player`) in the layout
:func:`cliptk.data.read_deepsportradar` reads, plus ``manifest.csv`` (captions and every cue, see
:data:`MANIFEST_COLUMNS`) and ``generator.json`` (the parameters, written last). Each image is
seeded by ``(seed, pid, sequence, frame)``, so the bytes do not depend on the number of worker
processes. The tree is built in a temporary sibling folder and swapped in with directory renames,
so an interrupted run leaves no half dataset. :func:`read_manifest` reads the manifest back and
:func:`samples_grid` draws a labelled grid of look-alikes.

Example (a tiny tree; the default sizes write about 5,000 crops):
    >>> import tempfile
    >>> root = generate_players(Path(tempfile.mkdtemp()) / "players", n_train_ids=2, n_test_ids=1,
    ...                         images_per_id=2, size=(32, 64), workers=1, challenge=False)
    >>> rows = read_manifest(root)
    >>> [r["split"] for r in rows], rows[-1]["path"]
    (['train', 'train', 'train', 'train', 'query', 'gallery'], 'reid_test/gallery/2_3_01.jpeg')
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import shutil
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .render import _font, render_player
from .world import Player, caption, make_world

__all__ = ["generate_players", "read_manifest", "samples_grid", "GENERATOR_VERSION", "SPLITS", "MANIFEST_COLUMNS"]

#: Bump when rendering changes: a stored dataset with another version is regenerated.
GENERATOR_VERSION = 1
SPLITS = ("train", "query", "gallery", "challenge_query", "challenge_gallery")
MANIFEST_COLUMNS = (
    "path", "pid", "camid", "caption", "split", "game", "team", "colour", "number", "sequence",
    "frame", "view", "number_visible", "occluded", "skin", "hair_colour", "hair_style", "shoes",
    "socks", "sock_length", "height", "width", "headband", "sleeve",
)
_SEQUENCES_PER_GAME = 3


def _plan(players: list[Player], images_per_id: int, n_cameras: int, seed: int):
    """Sequences, frames and cameras of every image of ``players``: (player, seq, frame, cam)."""
    out = []
    for p in players:
        rng = np.random.default_rng([seed, p.pid, 3])
        n_seq = 2 if (images_per_id >= 4 and rng.random() < 0.5) else 1
        ks = sorted(rng.choice(_SEQUENCES_PER_GAME, n_seq, replace=False).tolist())
        counts = [images_per_id // n_seq + (1 if j < images_per_id % n_seq else 0) for j in range(n_seq)]
        for k, count in zip(ks, counts):
            seq = p.game * _SEQUENCES_PER_GAME + int(k)
            offset = int(rng.integers(n_cameras))
            for frame in range(count):
                out.append((p, seq, frame, (offset + frame) % n_cameras))
    return out


def _render_job(job) -> list[dict]:
    """Worker: render and save all images of one player; return their manifest rows."""
    tmp, seed, size, player, others, items = job
    rows = []
    for rel, split, seq, frame, cam in items:
        rng = np.random.default_rng([seed, player.pid, seq, frame])
        img, info = render_player(player, rng, size, cam, others, return_info=True)
        img.save(Path(tmp) / rel, "JPEG", quality=92)
        row = dict(path=rel, pid=player.pid, camid=cam, caption=caption(player, rng, info.number_visible),
                   split=split, sequence=seq, frame=frame, view=info.view,
                   number_visible=int(info.number_visible), occluded=int(info.occluded))
        row.update({k: v for k, v in asdict(player).items() if k in MANIFEST_COLUMNS and k not in row})
        rows.append(row)
    return rows


def _holds(root: Path, params: dict) -> bool:
    """Whether ``root`` holds a complete dataset made with ``params`` (generator.json is written last)."""
    try:
        return json.loads((root / "generator.json").read_text()) == params
    except (OSError, json.JSONDecodeError):
        return False


def generate_players(root: str | os.PathLike, n_train_ids: int = 400, n_test_ids: int = 100,
                     images_per_id: int = 10, seed: int = 0, size: tuple[int, int] = (64, 128),
                     workers: int = 2, challenge: bool = True, n_cameras: int = 4,
                     overwrite: bool = False) -> Path:
    """Write a synthetic dataset in the DeepSportRadar / MMSports re-id layout; return ``root``.

    Layout (``frame`` two digits, ``sequence`` = game * 3 + moment)::

        root/reid_training/{pid}_{sequence}_{frame}.jpeg
        root/reid_test/query/{pid}_{sequence}_00.jpeg          # query = frame 00
        root/reid_test/gallery/{pid}_{sequence}_{frame}.jpeg   # frames >= 01
        root/reid_challenge/{query,gallery}/{index}.jpeg       # if challenge: unlabelled names
        root/manifest.csv     # path,pid,camid,caption,split + metadata (see MANIFEST_COLUMNS)
        root/generator.json   # the parameters; written last

    Each identity has ``images_per_id`` images from one or two sequences (moments) of its game;
    frame ``f`` of a sequence is seen by camera ``(offset + f) % n_cameras``. Train, test and
    challenge identities come from separate worlds (:func:`make_world`: disjoint pids and
    games). The challenge split has ``n_test_ids // 4`` identities; its files are named by a
    shuffled index, and the manifest keeps their true pids (ground truth for demos).

    Every image is seeded by ``(seed, pid, sequence, frame)``, so the bytes do not depend on
    ``workers``. The dataset is built in a temporary sibling directory and renamed into place,
    so an interrupted run leaves no half dataset. If ``root`` already holds a dataset made with
    the same parameters this returns at once.

    Args:
        root: output directory.
        n_train_ids, n_test_ids: identities per split (>= 1 each).
        images_per_id: images per identity (>= 2, so every query has gallery images).
        seed: world and image seed.
        size: (width, height) of each crop.
        workers: processes (<= 1 renders in this process).
        challenge: also write ``reid_challenge``.
        n_cameras: number of cameras (>= 2).
        overwrite: replace a different dataset found at ``root``.

    Raises:
        ValueError: for out-of-range arguments.
        FileExistsError: if ``root`` holds something else and ``overwrite`` is False.

    Example::

        >>> import tempfile
        >>> root = generate_players(Path(tempfile.mkdtemp()) / "players", 4, 4, images_per_id=2, size=(32, 64),
        ...                         workers=1)
        >>> sorted(p.name for p in root.iterdir())
        ['generator.json', 'manifest.csv', 'reid_challenge', 'reid_test', 'reid_training']
    """
    root = Path(root)
    if n_train_ids < 1 or n_test_ids < 1:
        raise ValueError(f"generate_players: n_train_ids={n_train_ids}, n_test_ids={n_test_ids}; both must be >= 1")
    if images_per_id < 2:
        raise ValueError(f"generate_players: images_per_id={images_per_id}; need >= 2 (one query + gallery)")
    if n_cameras < 2:
        raise ValueError(f"generate_players: n_cameras={n_cameras}; need >= 2 so queries have cross-camera matches")
    params = dict(version=GENERATOR_VERSION, n_train_ids=n_train_ids, n_test_ids=n_test_ids,
                  images_per_id=images_per_id, seed=seed, size=list(size), challenge=bool(challenge),
                  n_cameras=n_cameras)
    if _holds(root, params):
        return root
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"generate_players: {root} is not empty and was not made with {params}; "
                              "delete it, choose another root, or pass overwrite=True")

    world = make_world(n_train_ids, n_test_ids, max(1, n_test_ids // 4) if challenge else 0, seed)
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for sub in ("reid_training", "reid_test/query", "reid_test/gallery", "reid_challenge/query", "reid_challenge/gallery"):
            if challenge or not sub.startswith("reid_challenge"):
                (tmp / sub).mkdir(parents=True)
        jobs: dict[int, tuple] = {}
        crng = np.random.default_rng([seed, 17])
        for split, players in world.items():
            plan = _plan(players, images_per_id, n_cameras, seed)
            games: dict[int, tuple[Player, ...]] = defaultdict(tuple)
            for p in players:
                games[p.game] += (p,)
            if split == "challenge":
                nq = sum(1 for *_, f, _ in plan if f == 0)
                qidx, gidx = iter(crng.permutation(nq).tolist()), iter(crng.permutation(len(plan) - nq).tolist())
            for p, seq, frame, cam in plan:
                name = f"{p.pid}_{seq}_{frame:02d}.jpeg"
                if split == "train":
                    rel, sp = f"reid_training/{name}", "train"
                elif split == "test":
                    rel, sp = (f"reid_test/query/{name}", "query") if frame == 0 else (f"reid_test/gallery/{name}", "gallery")
                elif frame == 0:
                    rel, sp = f"reid_challenge/query/{next(qidx)}.jpeg", "challenge_query"
                else:
                    rel, sp = f"reid_challenge/gallery/{next(gidx)}.jpeg", "challenge_gallery"
                job = jobs.setdefault(p.pid, (str(tmp), seed, tuple(size), p, games[p.game], []))
                job[5].append((rel, sp, seq, frame, cam))
        job_list = list(jobs.values())
        if workers <= 1:
            results = [_render_job(j) for j in job_list]
        else:
            with ProcessPoolExecutor(workers) as pool:
                results = list(pool.map(_render_job, job_list, chunksize=max(1, len(job_list) // (8 * workers))))
        rows = [r for rs in results for r in rs]
        order = {s: i for i, s in enumerate(SPLITS)}
        rows.sort(key=lambda r: (order[r["split"]], r["path"] if "challenge" not in r["split"]
                                 else f"{int(Path(r['path']).stem):08d}"))
        with open(tmp / "manifest.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        (tmp / "generator.json").write_text(json.dumps(params, indent=1))
        if _holds(root, params):  # another process (e.g. a DDP rank) finished first
            return root
        if root.exists():
            trash = root.parent / f".{root.name}.old-{os.getpid()}"
            os.replace(root, trash)
            os.replace(tmp, root)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            root.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def read_manifest(root: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of ``root/manifest.csv`` as dicts of strings.

    Raises:
        FileNotFoundError: if ``root`` has no manifest (generate it with :func:`generate_players`).
    """
    path = Path(root) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"read_manifest: {path} not found; run generate_players({str(root)!r}) first")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- a look
def samples_grid(source: str | os.PathLike | Sequence[Player], n: int = 24, per_id: int = 4,
                 scale: int = 3, split: str = "train", seed: int = 0) -> Image.Image:
    """A labelled grid of crops: rows show look-alike pairs (same colour and number, two pids).

    Each row holds two identities x ``per_id`` crops, upscaled ``scale`` times with NEAREST
    and labelled ``pid <pid>`` and ``<colour> #<number>``. Look-alike pairs come first.

    Args:
        source: a dataset root written by :func:`generate_players` (crops of ``split`` are
            read from disk) or a sequence of :class:`Player` (rendered here).
        n: number of crops (a multiple of ``2 * per_id`` is neatest).

    Raises:
        FileNotFoundError: if ``source`` is a directory without a manifest.

    Example::

        >>> from cliptk.synthetic import make_players
        >>> samples_grid(make_players(20), n=8, per_id=4).mode
        'RGB'
    """
    rng = np.random.default_rng([seed, 23])
    crops: dict[int, list[Image.Image]] = {}
    label: dict[int, str] = {}
    combo: dict[int, tuple[str, int]] = {}
    if isinstance(source, (str, os.PathLike)):
        rows = [r for r in read_manifest(source) if r["split"] == split]
        by_pid: dict[int, list[dict]] = defaultdict(list)
        for r in rows:
            by_pid[int(r["pid"])].append(r)
        for pid, rs in by_pid.items():
            combo[pid] = (rs[0]["colour"], int(rs[0]["number"]))
        pick = lambda pid: [Image.open(Path(source) / r["path"]).convert("RGB") for r in by_pid[pid][:per_id]]
    else:
        players = {p.pid: p for p in source}
        for pid, p in players.items():
            combo[pid] = (p.colour, p.number)
        pick = lambda pid: [render_player(players[pid], rng, camera=int(rng.integers(4))) for _ in range(per_id)]
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for pid, c in sorted(combo.items()):
        groups[c].append(pid)
    pairs_by_colour: dict[str, list[list[int]]] = defaultdict(list)  # one pair per colour first
    for (colour, _), g in groups.items():
        if len(g) > 1:
            pairs_by_colour[colour].append(g[:2])
    pairs = [pr for rnd in itertools.zip_longest(*pairs_by_colour.values()) for pr in rnd if pr]
    singles = [g[0] for g in groups.values() if len(g) == 1]
    order = [pid for pair in pairs for pid in pair] + singles
    chosen = order[: max(1, n // per_id)]
    for pid in chosen:
        crops[pid] = pick(pid)
        label[pid] = f"{combo[pid][0]} #{combo[pid][1]}"
    cw, ch = crops[chosen[0]][0].size
    cw, ch = cw * scale, ch * scale
    font = _font(max(10, 5 * scale))
    pad, text_h = 4, 2 * (5 * scale + 3)
    cols = 2 * per_id
    cells = [(pid, im) for pid in chosen for im in crops[pid]][:n]
    rows_n = math.ceil(len(cells) / cols)
    grid = Image.new("RGB", (cols * (cw + pad) + pad, rows_n * (ch + text_h + pad) + pad), (250, 250, 250))
    draw = ImageDraw.Draw(grid)
    for i, (pid, im) in enumerate(cells):
        r, c = divmod(i, cols)
        x, y = pad + c * (cw + pad), pad + r * (ch + text_h + pad)
        grid.paste(im.resize((cw, ch), Image.NEAREST), (x, y))
        draw.text((x + 2, y + ch + 1), f"pid {pid}", fill=(0, 0, 0), font=font)
        draw.text((x + 2, y + ch + 1 + text_h // 2), label[pid], fill=(90, 90, 90), font=font)
    return grid
