"""Synthetic basketball players: cliptk's offline, seeded stand-in for DeepSportRadar re-id data.

The DeepSportRadar player re-identification challenge (MMSports 2022; used by CLIP-ReIdent,
Habel et al., 2022) gives crops of basketball players named ``{pid}_{sequence}_{frame}.jpeg``.
No network is available here, so this module draws a small world of its own with PIL + numpy:

* **identities** (:class:`Player`) play in *games*; a game has two teams of ~5 players with
  distinct shirt numbers. A team wears a jersey whose colour has a plain name from
  :data:`COLOURS`. Players also differ in *fine cues* that captions never mention: skin tone,
  hair colour and style, shoe and sock colours, sock length, build, headband, arm sleeve.
* **look-alikes**: a team kit (colours and numbers) recurs in a later game worn by *different*
  players, so "red jersey, number 23" names several identities. Every such look-alike differs
  from the others in at least two fine cues (see :func:`make_players`).
* **images** (:func:`render_player`) vary in view (front / back / side), pose, lean, scale and
  position, court background (per game floor, per camera lines and colour cast), partial
  occlusion by another player, resolution, blur, lighting, noise and JPEG quality.
* **captions** (:func:`caption`) name only the coarse cues, with one template family
  (:data:`CAPTION_TEMPLATE`, :data:`COLOUR_PROMPT`, :data:`NUMBER_PROMPT`) that text probes reuse.

So a CLIP trained only on captions re-identifies players decently but not perfectly (it
confuses look-alikes and same-colour players whose number is hidden), and fine-tuning on
identities has fine cues to learn.

Example::

    >>> import numpy as np
    >>> from cliptk.synthetic import generate_players, make_players, render_player
    >>> root = generate_players("data/generated/players")   # ~5,000 crops  # doctest: +SKIP
    >>> players = make_players(20, seed=0)
    >>> img = render_player(players[0], np.random.default_rng(0))
    >>> img.size
    (64, 128)
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import shutil
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

RGB = tuple[int, int, int]

#: Jersey colours: the names are the words captions use.
COLOURS: dict[str, RGB] = {
    "red": (200, 30, 38),
    "blue": (28, 68, 190),
    "green": (18, 135, 62),
    "yellow": (245, 205, 35),
    "white": (238, 238, 234),
    "black": (28, 28, 33),
    "orange": (245, 122, 22),
    "purple": (108, 42, 152),
    "grey": (132, 134, 140),
    "pink": (236, 104, 164),
}
SKIN_TONES: dict[str, RGB] = {
    "pale": (246, 214, 190), "light": (228, 184, 150), "medium": (198, 148, 108),
    "tan": (166, 114, 78), "brown": (118, 78, 50), "dark": (74, 48, 32),
}
HAIR_COLOURS: dict[str, RGB] = {
    "black": (22, 18, 16), "brown": (92, 58, 30), "blond": (226, 190, 110),
    "red": (170, 66, 28), "grey": (170, 170, 168), "none": (0, 0, 0),
}
HAIR_STYLES = ("bald", "short", "afro", "long", "bun")
SHOE_COLOURS: dict[str, RGB] = {
    "white": (240, 240, 240), "black": (20, 20, 22), "red": (215, 30, 30), "blue": (30, 90, 225),
    "yellow": (250, 220, 30), "green": (40, 190, 70), "orange": (250, 130, 20),
    "pink": (250, 120, 200), "cyan": (40, 210, 225),
}
SOCK_COLOURS: dict[str, RGB] = {
    "white": (236, 236, 236), "black": (24, 24, 26), "grey": (140, 140, 144),
    "red": (205, 35, 40), "blue": (35, 75, 200), "yellow": (240, 210, 40),
}
SOCK_LENGTHS: dict[str, float] = {"low": 0.025, "crew": 0.07, "high": 0.13}  # of body height

#: The caption template family. Probes should use these strings, never their own wording.
CAPTION_TEMPLATE = "a photo of a basketball player in a {colour} jersey with number {number}"
COLOUR_PROMPT = "a photo of a basketball player in a {colour} jersey"
NUMBER_PROMPT = "a photo of a basketball player with number {number}"
CAPTION_TEMPLATES = (CAPTION_TEMPLATE, COLOUR_PROMPT, NUMBER_PROMPT)
_P_COLOUR_ONLY, _P_NUMBER_ONLY = 0.25, 0.15  # the rest name both cues

#: Bump when rendering changes: a stored dataset with another version is regenerated.
GENERATOR_VERSION = 1
SPLITS = ("train", "query", "gallery", "challenge_query", "challenge_gallery")
MANIFEST_COLUMNS = (
    "path", "pid", "camid", "caption", "split", "game", "team", "colour", "number", "sequence",
    "frame", "view", "number_visible", "occluded", "skin", "hair_colour", "hair_style", "shoes",
    "socks", "sock_length", "height", "width", "headband", "sleeve",
)
_SEQUENCES_PER_GAME = 3
_SS = 2  # supersampling factor of the drawing canvas
_CITIES = ("Aalst", "Bilbao", "Cork", "Dijon", "Essen", "Fano", "Gent", "Haarlem", "Izmir",
           "Jena", "Kaunas", "Lille", "Malaga", "Nancy", "Oviedo", "Porto", "Riga", "Split")
_MASCOTS = ("Hawks", "Bears", "Comets", "Foxes", "Giants", "Lions", "Owls", "Pilots", "Rockets",
            "Sharks", "Titans", "Wolves")


@dataclass(frozen=True)
class Player:
    """One synthetic identity: a team kit (coarse cues) plus body and gear (fine cues).

    ``colour`` (a key of :data:`COLOURS`) and ``number`` are the only cues captions name.
    ``skin``, ``hair_colour``, ``hair_style``, ``shoes``, ``socks``, ``sock_length``,
    ``height``, ``width``, ``headband`` and ``sleeve`` are names into this module's palettes
    (``None`` = not worn) and are never captioned.
    """

    pid: int
    game: int
    team: str
    colour: str
    jersey: RGB
    shorts: RGB
    trim: RGB
    number_rgb: RGB
    number: int
    skin: str
    hair_colour: str
    hair_style: str
    shoes: str
    socks: str
    sock_length: str
    height: float
    width: float
    headband: str | None = None
    sleeve: str | None = None


@dataclass(frozen=True)
class RenderInfo:
    """What :func:`render_player` drew: ``view`` in front/back/side, ``number_box`` as
    (x0, y0, x1, y1) pixels of the output image (``None`` if nothing of it shows),
    ``number_visible`` when >= 60 % of the digits' ink is unhidden, ``occluded`` when another
    player overlaps the crop."""

    camera: int
    view: str
    number_visible: bool
    number_box: tuple[int, int, int, int] | None
    occluded: bool


@dataclass(frozen=True)
class _Kit:
    team: str
    colour: str
    jersey: RGB
    shorts: RGB
    trim: RGB
    number_rgb: RGB


# --------------------------------------------------------------------------- identities
def _lum(c: Sequence[float]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _jitter(c: RGB, rng: np.random.Generator, amount: int) -> RGB:
    return tuple(int(v) for v in np.clip(np.asarray(c) + rng.integers(-amount, amount + 1, 3), 0, 255))


def _new_kit(colour: str, team: str, rng: np.random.Generator) -> _Kit:
    jersey = _jitter(COLOURS[colour], rng, 14)
    others = [c for c in COLOURS if c != colour]
    trim = COLOURS[others[rng.integers(len(others))]]
    r = rng.random()
    shorts = jersey if r < 0.6 else trim if r < 0.85 else (COLOURS["black"] if _lum(jersey) > 128 else COLOURS["white"])
    dark, light = (18, 18, 24), (248, 248, 246)
    number_rgb = dark if _lum(jersey) > 140 else light
    if abs(_lum(trim) - _lum(jersey)) > 110 and rng.random() < 0.4:
        number_rgb = trim
    return _Kit(team, colour, jersey, shorts, trim, number_rgb)


def _fine_cues(rng: np.random.Generator) -> dict:
    style = HAIR_STYLES[rng.choice(len(HAIR_STYLES), p=[0.14, 0.36, 0.18, 0.16, 0.16])]
    hair = "none" if style == "bald" else list(HAIR_COLOURS)[rng.choice(5, p=[0.4, 0.25, 0.15, 0.1, 0.1])]
    return dict(
        skin=list(SKIN_TONES)[rng.integers(len(SKIN_TONES))],
        hair_colour=hair,
        hair_style=style,
        shoes=list(SHOE_COLOURS)[rng.integers(len(SHOE_COLOURS))],
        socks=list(SOCK_COLOURS)[rng.integers(len(SOCK_COLOURS))],
        sock_length=list(SOCK_LENGTHS)[rng.integers(len(SOCK_LENGTHS))],
        height=round(float(rng.uniform(0.9, 1.06)), 3),
        width=round(float(rng.uniform(0.82, 1.22)), 3),
        headband=list(SOCK_COLOURS)[rng.integers(len(SOCK_COLOURS))] if rng.random() < 0.2 else None,
        sleeve=list(SOCK_COLOURS)[rng.integers(len(SOCK_COLOURS))] if rng.random() < 0.2 else None,
    )


_SALIENT_CUES = ("skin", "hair_colour", "hair_style", "shoes", "socks")


def _n_different(a: dict, b: Player) -> int:
    return sum(a[k] != getattr(b, k) for k in _SALIENT_CUES)


def _new_numbers(k: int, taken: set[int], rng: np.random.Generator) -> list[int]:
    # real rosters favour 0-35, then 36-55; few wear > 55
    w = np.where(np.arange(100) <= 35, 1.0, np.where(np.arange(100) <= 55, 0.45, 0.12))
    w[list(taken)] = 0.0
    return [int(n) for n in rng.choice(100, size=k, replace=False, p=w / w.sum())]


def make_players(n: int, seed: int = 0, *, players_per_team: int = 5, kit_repeat: float = 0.6,
                 first_pid: int = 0, first_game: int = 0) -> list[Player]:
    """Build ``n`` identities, game by game (two teams of ``players_per_team`` per game).

    The two teams of a game wear different jersey colours (names from :data:`COLOURS`) and
    all numbers in a game are distinct. With probability ``kit_repeat`` a team reuses the kit
    (team name, colours, ~80 % of the numbers) of an earlier team of the same colour, worn by
    new players: a "look-alike" with the same caption cues. Each look-alike differs from every
    earlier player with its (colour, number) in at least two of skin, hair colour, hair style,
    shoes and socks.

    Args:
        n: number of identities (>= 1); pids are ``first_pid .. first_pid + n - 1``.
        seed: world seed; ``(seed, first_game)`` fixes the result.
        first_game: index of the first game, so that separate worlds (train / test) do not
            share game ids.

    Raises:
        ValueError: if ``n < 1``, ``players_per_team`` is not in 1..50 or ``kit_repeat``
            is not in [0, 1].

    Example::

        >>> ps = make_players(20, seed=0)
        >>> len(ps), len({p.game for p in ps})
        (20, 2)
    """
    if n < 1:
        raise ValueError(f"make_players: n={n}; ask for at least one identity")
    if not 1 <= players_per_team <= 50:
        raise ValueError(f"make_players: players_per_team={players_per_team} must be in 1..50 (numbers are 0-99)")
    if not 0.0 <= kit_repeat <= 1.0:
        raise ValueError(f"make_players: kit_repeat={kit_repeat} must be a probability in [0, 1]")
    rng = np.random.default_rng([seed, first_game, 1])
    names = list(COLOURS)
    players: list[Player] = []
    kits: list[tuple[_Kit, list[int]]] = []
    used_teams: set[str] = set()
    by_combo: dict[tuple[str, int], list[Player]] = defaultdict(list)
    game = first_game
    while len(players) < n:
        taken: set[int] = set()
        for colour in (names[i] for i in rng.choice(len(names), 2, replace=False)):
            k = min(players_per_team, n - len(players))
            if k == 0:
                break
            earlier = [kn for kn in kits if kn[0].colour == colour]
            if earlier and rng.random() < kit_repeat:
                kit, old = earlier[rng.integers(len(earlier))]
                numbers = [x for x in old if x not in taken and rng.random() < 0.8][:k]
            else:
                team = f"{_CITIES[rng.integers(len(_CITIES))]} {_MASCOTS[rng.integers(len(_MASCOTS))]}"
                while team in used_teams:
                    team = f"{team} {len(used_teams)}"
                used_teams.add(team)
                kit, numbers = _new_kit(colour, team, rng), []
            numbers += _new_numbers(k - len(numbers), taken | set(numbers), rng)
            taken |= set(numbers)
            kits.append((kit, numbers))
            for number in numbers:
                twins = by_combo[(colour, number)]
                cues = _fine_cues(rng)
                while any(_n_different(cues, t) < 2 for t in twins):
                    cues = _fine_cues(rng)
                p = Player(pid=first_pid + len(players), game=game, team=kit.team, colour=colour,
                           jersey=kit.jersey, shorts=kit.shorts, trim=kit.trim,
                           number_rgb=kit.number_rgb, number=number, **cues)
                players.append(p)
                twins.append(p)
        game += 1
    return players


def make_world(n_train_ids: int = 400, n_test_ids: int = 100, n_challenge_ids: int = 0,
               seed: int = 0, **kwargs) -> dict[str, list[Player]]:
    """The identities of :func:`generate_players`: ``{"train", "test", "challenge"}`` lists.

    Each split is its own world (its own games, pids and look-alikes), so no game and no pid
    is shared between splits. Use ``world["train"]`` to pre-train on fresh renders
    (:func:`stream_players`) without ever seeing test identities. ``kwargs`` go to
    :func:`make_players`.

    Example::

        >>> w = make_world(40, 20, seed=0)
        >>> {p.game for p in w["train"]} & {p.game for p in w["test"]}
        set()
    """
    world: dict[str, list[Player]] = {}
    pid = game = 0
    for split, n in (("train", n_train_ids), ("test", n_test_ids), ("challenge", n_challenge_ids)):
        world[split] = make_players(n, seed, first_pid=pid, first_game=game, **kwargs) if n > 0 else []
        if world[split]:
            pid, game = world[split][-1].pid + 1, world[split][-1].game + 1
    return world


# --------------------------------------------------------------------------- captions
def caption(player: Player, rng: np.random.Generator, number_visible: bool = True) -> str:
    """A caption naming only coarse cues: jersey colour and (often) the shirt number.

    Draws one of :data:`CAPTION_TEMPLATES`: colour only with p=0.25 (always when the number
    is not visible), number only with p=0.15, both otherwise.

    Example::

        >>> p = make_players(1, seed=0)[0]
        >>> caption(p, np.random.default_rng(0), number_visible=False) == COLOUR_PROMPT.format(colour=p.colour)
        True
    """
    r = rng.random()
    if not number_visible or r < _P_COLOUR_ONLY:
        return COLOUR_PROMPT.format(colour=player.colour)
    if r < _P_COLOUR_ONLY + _P_NUMBER_ONLY:
        return NUMBER_PROMPT.format(number=player.number)
    return CAPTION_TEMPLATE.format(colour=player.colour, number=player.number)


def colour_prompts() -> list[str]:
    """One caption-template prompt per jersey colour, in :data:`COLOURS` order."""
    return [COLOUR_PROMPT.format(colour=c) for c in COLOURS]


def number_prompts(colour: str | None = None) -> list[str]:
    """Prompts for shirt numbers 0..99 (index = number), with the captions' own wording.

    Without ``colour`` it uses :data:`NUMBER_PROMPT`, else :data:`CAPTION_TEMPLATE`.

    Raises:
        ValueError: if ``colour`` is not a key of :data:`COLOURS`.
    """
    if colour is None:
        return [NUMBER_PROMPT.format(number=n) for n in range(100)]
    if colour not in COLOURS:
        raise ValueError(f"number_prompts: unknown colour {colour!r}; use one of {list(COLOURS)}")
    return [CAPTION_TEMPLATE.format(colour=colour, number=n) for n in range(100)]


# --------------------------------------------------------------------------- drawing
@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=128)
def _glyph(text: str) -> tuple[Image.Image, Image.Image]:
    """(fill, outline) masks of a bold jersey number, cropped to the outline's ink."""
    font, bold, outline = _font(64), 2, 7
    im_fill = Image.new("L", (64 * len(text) + 60, 110), 0)
    im_out = im_fill.copy()
    ImageDraw.Draw(im_out).text((30, 10), text, font=font, fill=255, stroke_width=outline, stroke_fill=255)
    ImageDraw.Draw(im_fill).text((30, 10), text, font=font, fill=255, stroke_width=bold, stroke_fill=255)
    box = im_out.getbbox()
    return im_fill.crop(box), im_out.crop(box)


@lru_cache(maxsize=64)
def _camera(camera: int) -> dict:
    """Fixed look of one camera: colour cast, court-line angle, chance of ad boards."""
    rng = np.random.default_rng([camera, 13])
    base = [(1.0, 1.0, 1.0), (1.08, 1.0, 0.88), (0.9, 0.98, 1.1), (0.96, 1.06, 0.94)]
    cast = base[camera] if camera < len(base) else tuple(rng.uniform(0.88, 1.1, 3))
    return dict(cast=np.asarray(cast, np.float32), gain=float(rng.uniform(0.9, 1.1)),
                angle=float(rng.uniform(-0.6, 0.6)) + (camera % 2) * 1.4,
                boards=float(rng.uniform(0.1, 0.6)), blur=float(rng.uniform(0.0, 0.6)))


@lru_cache(maxsize=512)
def _court(game: int) -> dict:
    """Fixed look of one game's court: floor tone, plank brightness, paint and line colour."""
    rng = np.random.default_rng([game, 11])
    floors = [(212, 168, 118), (196, 146, 96), (178, 124, 80), (224, 186, 136), (150, 104, 70),
              (92, 112, 150), (120, 130, 138)]
    paint = list(COLOURS.values())[rng.integers(len(COLOURS))]
    return dict(floor=np.asarray(floors[rng.integers(len(floors))], np.float32),
                planks=rng.uniform(0.9, 1.1, 64).astype(np.float32),
                paint=np.asarray(paint, np.float32),
                line=np.asarray((245, 245, 240) if rng.random() < 0.8 else (20, 20, 24), np.float32))


def _background(game: int, camera: int, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Court floor of ``game`` under ``camera``: planks, maybe paint and lines, maybe ad boards."""
    court, cam = _court(game), _camera(camera)
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]
    a = cam["angle"] + rng.uniform(-0.15, 0.15)
    t = xs * math.cos(a) + ys * math.sin(a) + rng.uniform(0, 1000)
    shade = court["planks"][(t // (0.09 * h)).astype(np.int64) % 64]
    img = court["floor"] * shade[..., None]
    s = xs * math.cos(a + 1.57) + ys * math.sin(a + 1.57)
    lo, hi = float(s.min()), float(s.max())
    if rng.random() < 0.25:  # painted key
        img[s > rng.uniform(lo + 0.5 * (hi - lo), hi)] = court["paint"] * 0.85
    for _ in range(int(rng.integers(0, 3))):  # court lines
        img[np.abs(s - rng.uniform(lo, hi)) < 0.012 * h] = court["line"]
    img = Image.fromarray(img.astype(np.uint8))
    if rng.random() < cam["boards"]:  # ad boards and crowd at the top
        draw = ImageDraw.Draw(img)
        hb = int(h * rng.uniform(0.08, 0.3))
        draw.rectangle((0, 0, w, hb), fill=tuple(int(v) for v in rng.integers(15, 70, 3)))
        x = int(rng.integers(-20, 10))
        while x < w:
            bw = int(rng.integers(w // 6, w // 2))
            draw.rectangle((x, int(hb * 0.45), x + bw, hb), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            x += bw + int(rng.integers(2, 10))
    return img


class _Pen:
    """Draws on the figure (and optionally a mask) with every point rotated by the lean."""

    def __init__(self, fig: Image.Image, pivot: tuple[float, float], lean_deg: float):
        self.d = ImageDraw.Draw(fig)
        self.mask: ImageDraw.ImageDraw | None = None
        self.px, self.py = pivot
        self.c, self.s = math.cos(math.radians(lean_deg)), math.sin(math.radians(lean_deg))

    def P(self, x: float, y: float) -> tuple[float, float]:
        dx, dy = x - self.px, y - self.py
        return (self.px + dx * self.c + dy * self.s, self.py - dx * self.s + dy * self.c)

    def _both(self):
        return [(self.d, None)] + ([(self.mask, 255)] if self.mask is not None else [])

    def poly(self, pts, fill) -> None:
        q = [self.P(x, y) for x, y in pts]
        for d, f in self._both():
            d.polygon(q, fill=f or fill)

    def line(self, pts, fill, width: float, caps: bool = False) -> None:
        q = [self.P(x, y) for x, y in pts]
        wdt = max(1, int(round(width)))
        for d, f in self._both():
            d.line(q, fill=f or fill, width=wdt, joint="curve")
            if caps:
                for x, y in (q[0], q[-1]):
                    d.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=f or fill)

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill) -> None:
        x, y = self.P(x, y)
        for d, f in self._both():
            d.ellipse((x - rx, y - ry, x + rx, y + ry), fill=f or fill)

    def chord(self, x: float, y0: float, y1: float, rx: float, start: float, end: float, fill) -> None:
        """Chord of the ellipse spanning x±rx, y0..y1, angles in PIL's clockwise degrees."""
        x, yc = self.P(x, (y0 + y1) / 2)
        ry = (y1 - y0) / 2
        lean = math.degrees(math.atan2(self.s, self.c))
        self.d.chord((x - rx, yc - ry, x + rx, yc + ry), start - lean, end - lean, fill=fill)


def _draw_figure(p: Player, rng: np.random.Generator, canvas: tuple[int, int], cx: float,
                 foot_y: float, u: float, view: str, lean: float):
    """Draw one player, ``u`` px tall, feet at (cx, foot_y), leaning ``lean`` degrees.

    Returns ``(figure RGBA, ink, visible, box)``: ``ink`` is the number's total ink (sum of
    its mask), ``visible`` the L mask of its unhidden ink inside ``box`` (x0, y0, x1, y1).
    """
    fig = Image.new("RGBA", canvas, (0, 0, 0, 0))
    pen = _Pen(fig, (cx, foot_y), lean)
    top = foot_y - u

    def Y(f: float) -> float:
        return top + f * u

    skin = SKIN_TONES[p.skin]
    hair = HAIR_COLOURS[p.hair_colour]
    wd = p.width
    side = 1 if rng.random() < 0.5 else -1  # facing direction in side view
    sw, ww = 0.125 * u * wd, 0.105 * u * wd
    if view == "side":
        sw, ww = sw * 0.72, ww * 0.8
    hx, hy = cx + rng.uniform(-0.01, 0.01) * u + (0.02 * u * side if view == "side" else 0.0), Y(0.075)
    rx, ry = 0.052 * u, 0.068 * u

    def rect(x0, y0, x1, y1, fill):
        pen.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill)

    # hair behind the head (afro, long) in front and side views
    if view != "back":
        if p.hair_style == "afro":
            pen.ellipse(hx, hy - ry * 0.4, rx * 1.45, ry * 0.95, hair)
        elif p.hair_style == "long":
            rect(hx - rx * 1.15, hy - ry * 0.6, hx + rx * 1.15, Y(0.215), hair)

    # legs: hips -> knees -> ankles, one foot sometimes raised; socks and shoes
    spread = rng.uniform(0.0, 0.06) * u
    raised = int(rng.integers(2)) if rng.random() < 0.35 else -1
    legs = []
    for i, sgn in enumerate((-1, 1)):
        hip = (cx + sgn * 0.05 * u * wd, Y(0.6))
        ank = [cx + sgn * (0.055 * u * wd + spread), Y(0.955)]
        knee = [(hip[0] + ank[0]) / 2 + rng.uniform(-0.02, 0.03) * u * sgn, Y(0.78)]
        if i == raised:
            lift = rng.uniform(0.03, 0.1) * u
            ank[1] -= lift
            knee = [knee[0] + sgn * lift * 0.5, knee[1] - lift * 0.4]
        legs.append((hip, tuple(knee), tuple(ank)))
    thigh, calf = 0.062 * u * wd, 0.05 * u * wd
    for hip, knee, ank in legs:
        pen.line([hip, knee], skin, thigh)
        pen.line([knee, ank], skin, calf, caps=True)
        frac = min(0.9, SOCK_LENGTHS[p.sock_length] * u / max(1.0, math.dist(knee, ank)))
        stop = (ank[0] + (knee[0] - ank[0]) * frac, ank[1] + (knee[1] - ank[1]) * frac)
        pen.line([ank, stop], SOCK_COLOURS[p.socks], calf * 1.12, caps=True)
        dx = 0.018 * u * side if view == "side" else 0.0
        pen.ellipse(ank[0] + dx, ank[1] + 0.014 * u, 0.045 * u, 0.022 * u, SHOE_COLOURS[p.shoes])

    # shorts follow the thighs
    yb = Y(0.68)

    def along(hip, knee, y):
        return hip[0] + (knee[0] - hip[0]) * (y - hip[1]) / max(1e-6, knee[1] - hip[1])

    xl, xr = along(*legs[0][:2], yb), along(*legs[1][:2], yb)
    shorts = [(cx - ww * 1.1, Y(0.46)), (cx + ww * 1.1, Y(0.46)), (xr + thigh * 0.85, yb),
              (xr - thigh * 0.7, yb), (cx, Y(0.61)), (xl + thigh * 0.7, yb), (xl - thigh * 0.85, yb)]
    pen.poly(shorts, p.shorts)
    lw = max(1, int(0.014 * u))
    if view != "back":
        pen.line([shorts[1], shorts[2]], p.trim, lw)
        pen.line([shorts[0], shorts[6]], p.trim, lw)

    # neck, arms (the far one first in side view), then the jersey
    rect(hx - 0.026 * u, Y(0.12), hx + 0.026 * u, Y(0.2), skin)
    arms = []
    for sgn in (-1, 1):
        shoulder = (cx + sgn * sw * 0.92, Y(0.2))
        if rng.random() < 0.12:
            a = math.radians(rng.uniform(100, 165))  # shooting / defending
        else:
            a = math.radians(rng.uniform(-5, 45))
        b = math.radians(rng.uniform(-80, 35))
        elbow = (shoulder[0] + sgn * 0.16 * u * math.sin(a), shoulder[1] + 0.16 * u * math.cos(a))
        wrist = (elbow[0] + sgn * 0.15 * u * math.sin(a + b), elbow[1] + 0.15 * u * math.cos(a + b))
        arms.append((sgn, shoulder, elbow, wrist))

    def draw_arm(arm):
        sgn, shoulder, elbow, wrist = arm
        pen.line([shoulder, elbow, wrist], skin, 0.046 * u * wd, caps=True)
        if p.sleeve is not None and sgn == -1:
            pen.line([shoulder, elbow, wrist], SOCK_COLOURS[p.sleeve], 0.05 * u * wd, caps=True)
        pen.ellipse(wrist[0], wrist[1], 0.026 * u, 0.026 * u, skin)

    if view == "side":
        far = arms[0] if side == 1 else arms[1]
        draw_arm(far)
        arms = [a for a in arms if a is not far]
    torso = [(cx - sw * 0.55, Y(0.165)), (cx + sw * 0.55, Y(0.165)), (cx + sw, Y(0.19)),
             (cx + sw * 0.86, Y(0.29)), (cx + ww, Y(0.5)), (cx - ww, Y(0.5)),
             (cx - sw * 0.86, Y(0.29)), (cx - sw, Y(0.19))]
    pen.poly(torso, p.jersey)
    jm = Image.new("L", canvas, 0)
    ImageDraw.Draw(jm).polygon([pen.P(x, y) for x, y in torso], fill=255)
    pen.line([torso[2], torso[3]], p.trim, lw)
    pen.line([torso[7], torso[6]], p.trim, lw)
    if view == "front":
        v = [(hx - 0.04 * u, Y(0.165)), (hx, Y(0.225)), (hx + 0.04 * u, Y(0.165))]
        pen.poly(v, skin)
        pen.line(v, p.trim, lw)
    elif view == "side":
        pen.line([(hx - 0.03 * u, Y(0.168)), (hx + 0.03 * u, Y(0.168))], p.trim, lw)
    else:
        pen.chord(hx, Y(0.14), Y(0.19), 0.045 * u, 0, 180, p.trim)
        for j in range(7):  # the name bar above the number on the back
            x0 = cx - 0.07 * u + j * 0.02 * u
            rect(x0, Y(0.215), x0 + 0.012 * u, Y(0.235), p.number_rgb)

    # the number: bold digits outlined in the trim colour, clipped to the jersey
    fill_g, out_g = _glyph(str(p.number))
    nh = u * (0.17 if view == "back" else 0.15) * rng.uniform(0.95, 1.05)
    nw = nh * out_g.width / out_g.height * (0.6 if view == "side" else 1.0)
    nw = min(nw, 2 * ww * (1.25 if view == "side" else 0.95))
    size = (max(2, int(round(nw))), max(2, int(round(nh))))
    fill_m = fill_g.resize(size, Image.BILINEAR).rotate(lean, Image.BILINEAR, expand=True)
    out_m = out_g.resize(size, Image.BILINEAR).rotate(lean, Image.BILINEAR, expand=True)
    ncx, ncy = pen.P(cx + (side * 0.075 * u if view == "side" else rng.uniform(-0.01, 0.01) * u),
                     Y(0.33 if view == "back" else 0.345))
    x0, y0 = int(round(ncx - fill_m.width / 2)), int(round(ncy - fill_m.height / 2))
    box = (x0, y0, x0 + fill_m.width, y0 + fill_m.height)
    jm = jm.crop(box)
    edge = p.trim if abs(_lum(p.trim) - _lum(p.number_rgb)) > 70 else p.jersey
    fig.paste(edge, box, ImageChops.multiply(out_m, jm))
    visible = ImageChops.multiply(fill_m, jm)
    fig.paste(p.number_rgb, box, visible)

    over = Image.new("L", canvas, 0)  # what is drawn over the number: arms and hands
    pen.mask = ImageDraw.Draw(over)
    for arm in arms:
        draw_arm(arm)
    pen.mask = None
    visible = ImageChops.multiply(visible, ImageChops.invert(over.crop(box)))

    # head, hair, headband, eyes
    pen.ellipse(hx, hy, rx, ry, skin)
    if view == "back":
        if p.hair_style == "afro":
            pen.ellipse(hx, hy - ry * 0.33, rx * 1.45, ry * 1.03, hair)
        elif p.hair_style == "long":
            rect(hx - rx * 1.15, hy - ry * 1.05, hx + rx * 1.15, Y(0.215), hair)
            pen.ellipse(hx, hy - ry * 0.2, rx * 1.15, ry * 0.9, hair)
        elif p.hair_style != "bald":
            pen.ellipse(hx, hy - ry * 0.14, rx * 1.06, ry * 0.94, hair)
    elif p.hair_style != "bald":
        k = 1.2 if p.hair_style == "afro" else 1.08
        pen.chord(hx, hy - ry * 1.12 * k, hy + ry * 0.5, rx * k, 180, 360, hair)
        if view == "side":
            pen.ellipse(hx - side * rx * 0.5, hy - ry * 0.2, rx * 1.0, ry * 0.8, hair)
    if p.hair_style == "bun":
        pen.ellipse(hx, hy - ry * 1.35, rx * 0.45, rx * 0.45, hair)
    if p.headband is not None:
        pen.line([(hx - rx * 1.02, hy - ry * 0.32), (hx + rx * 1.02, hy - ry * 0.32)],
                 SOCK_COLOURS[p.headband], 0.022 * u)
    if view == "front":
        for ex in (-0.4, 0.4):
            pen.ellipse(hx + ex * rx, hy - 0.002 * u, 0.008 * u, 0.006 * u, (30, 22, 20))
    return fig, float(np.asarray(fill_m, np.float32).sum()), visible, box


def _random_view(rng: np.random.Generator) -> str:
    r = rng.random()
    return "front" if r < 0.6 else "back" if r < 0.85 else "side"


def _random_player(rng: np.random.Generator) -> Player:
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    kit = _new_kit(colour, "extras", rng)
    return Player(pid=-1, game=-1, team=kit.team, colour=colour, jersey=kit.jersey, shorts=kit.shorts,
                  trim=kit.trim, number_rgb=kit.number_rgb, number=int(rng.integers(100)), **_fine_cues(rng))


def render_player(player: Player, rng: np.random.Generator, size: tuple[int, int] = (64, 128),
                  camera: int = 0, others: Sequence[Player] = (), return_info: bool = False):
    """Draw one crop of ``player`` as seen by ``camera``: an RGB ``PIL.Image`` of ``size`` (w, h).

    Random per call (from ``rng``): view (front 60 %, back 25 %, side 15 %), pose, lean,
    scale and position, court background of ``player.game`` under ``camera``'s line angle and
    colour cast, occlusion by a player from ``others`` (or a random extra) with p=0.35,
    low resolution, blur, brightness / contrast / gradient lighting, noise and JPEG quality.
    The shirt number is drawn big (15 % of body height) so it is legible at 64x128 in most
    front and back views.

    Args:
        player: the identity to draw.
        rng: source of all randomness; the same generator state gives the same image.
        size: (width, height) of the output; both >= 16.
        camera: camera index >= 0 (0-3 have hand-picked colour casts).
        others: candidates for the occluding player (e.g. the same game's players).
        return_info: also return a :class:`RenderInfo`.

    Returns:
        ``PIL.Image`` (mode RGB), or ``(image, RenderInfo)`` when ``return_info``.

    Raises:
        ValueError: if ``size`` or ``camera`` is out of range.

    Example::

        >>> p = make_players(1)[0]
        >>> im, info = render_player(p, np.random.default_rng(0), return_info=True)
        >>> im.mode, im.size, info.view in ("front", "back", "side")
        ('RGB', (64, 128), True)
    """
    w, h = size
    if w < 16 or h < 16:
        raise ValueError(f"render_player: size={size} is too small; use (width, height) >= (16, 16), e.g. (64, 128)")
    if camera < 0:
        raise ValueError(f"render_player: camera={camera} must be >= 0")
    cw, ch = w * _SS, h * _SS  # players are drawn supersampled, the court at output size
    court = _background(player.game, camera, rng, w, h)

    u = min(ch, 2.1 * cw) * rng.uniform(0.8, 0.95) * player.height
    foot_y = ch * rng.uniform(0.965, 1.02)
    cx = cw / 2 + rng.uniform(-0.08, 0.08) * cw
    view = _random_view(rng)
    fig, ink, visible, box = _draw_figure(player, rng, (cw, ch), cx, foot_y, u, view, rng.uniform(-8, 8))

    occluded = rng.random() < 0.35
    front_occ = None
    if occluded:
        pool = [o for o in others if o.pid != player.pid]
        other = pool[rng.integers(len(pool))] if pool else _random_player(rng)
        ocx = cx + (1 if rng.random() < 0.5 else -1) * cw * rng.uniform(0.5, 0.85)
        ofig = _draw_figure(other, rng, (cw, ch), ocx, foot_y + rng.uniform(-0.04, 0.08) * ch,
                            u * rng.uniform(0.9, 1.15), _random_view(rng), rng.uniform(-10, 10))[0]
        if rng.random() < 0.7:
            front_occ = ofig
        else:
            fig = Image.alpha_composite(ofig, fig)
    if front_occ is not None:
        fig = Image.alpha_composite(fig, front_occ)
        visible = ImageChops.multiply(visible, ImageChops.invert(front_occ.getchannel("A").crop(box)))
    fig = fig.reduce(_SS)
    court.paste(fig, (0, 0), fig)

    vis = np.asarray(visible)
    number_visible = ink > 0 and float(vis.sum(dtype=np.float64)) >= 0.6 * ink
    inner = visible.point(lambda v: 255 if v > 96 else 0).getbbox()
    number_box = None
    if inner is not None:
        bx = (box[0] + inner[0], box[1] + inner[1], box[0] + inner[2], box[1] + inner[3])
        number_box = tuple(int(min(max(v / _SS, 0), lim)) for v, lim in zip(bx, (w, h, w, h)))

    img = _degrade(court, rng, camera)
    if return_info:
        return img, RenderInfo(camera, view, bool(number_visible), number_box, bool(occluded))
    return img


def _degrade(img: Image.Image, rng: np.random.Generator, camera: int) -> Image.Image:
    """Camera look and image quality: low resolution, blur, light, cast, noise, JPEG."""
    w, h = img.size
    cam = _camera(camera)
    if rng.random() < 0.2:
        f = rng.uniform(0.5, 0.8)
        img = img.resize((max(8, int(w * f)), max(8, int(h * f))), Image.BILINEAR).resize((w, h), Image.BILINEAR)
    radius = cam["blur"] + (rng.uniform(0.2, 0.9) if rng.random() < 0.4 else 0.0)
    if radius > 0.25:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    x = np.asarray(img, np.float32)
    contrast = rng.uniform(0.75, 1.2)
    gain = cam["cast"] * (cam["gain"] * rng.uniform(0.75, 1.25))
    ramp = 1.0 + rng.uniform(-0.25, 0.25) * np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :, None]
    mean = float(x.mean())
    x = ((x - mean) * contrast + mean) * gain * ramp
    x += rng.standard_normal(x.shape, dtype=np.float32) * rng.uniform(0.0, 5.0) + 0.5
    img = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
    if rng.random() < 0.6:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(30, 90)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


# --------------------------------------------------------------------------- in-memory batches
def sample_batch(players: Sequence[Player], batch_size: int, rng: np.random.Generator, *,
                 size: tuple[int, int] = (64, 128), same_colour: bool = False, n_cameras: int = 4,
                 ) -> tuple[list[Image.Image], list[str], np.ndarray]:
    """Render one batch of distinct identities with captions, without touching disk.

    Args:
        players: identities to draw from (e.g. ``make_world()["train"]``).
        batch_size: number of distinct identities (<= ``len(players)``).
        rng: randomness for sampling, rendering and captions.
        same_colour: in-batch hard negatives: fill the batch from as few jersey colours as
            possible (one colour, topped up with a second, ...) so captions and images must
            be told apart by number and fine cues rather than colour.
        n_cameras: cameras are drawn uniformly from ``0 .. n_cameras - 1``.

    Returns:
        ``(images, captions, pids)``: ``batch_size`` RGB images, caption strings and an
        int64 array of pids, all aligned.

    Raises:
        ValueError: if ``batch_size`` is < 1 or larger than ``len(players)``.

    Example::

        >>> ims, caps, pids = sample_batch(make_players(12), 8, np.random.default_rng(0), same_colour=True)
        >>> len(ims), len(set(pids.tolist()))
        (8, 8)
    """
    if not 1 <= batch_size <= len(players):
        raise ValueError(f"sample_batch: batch_size={batch_size} needs 1..{len(players)} distinct players; "
                         "pass more players or a smaller batch")
    if same_colour:
        by_colour: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(players):
            by_colour[p.colour].append(i)
        order: list[int] = []
        for c in rng.permutation(sorted(by_colour)):
            order += list(rng.permutation(by_colour[str(c)]))
        idx = order[:batch_size]
    else:
        idx = list(rng.choice(len(players), batch_size, replace=False))
    by_game: dict[int, list[Player]] = defaultdict(list)
    for p in players:
        by_game[p.game].append(p)
    images, captions, pids = [], [], []
    for i in idx:
        p = players[int(i)]
        img, info = render_player(p, rng, size, int(rng.integers(n_cameras)), by_game[p.game], return_info=True)
        images.append(img)
        captions.append(caption(p, rng, info.number_visible))
        pids.append(p.pid)
    return images, captions, np.asarray(pids, np.int64)


def stream_players(players: Sequence[Player], batch_size: int, seed: int = 0, **kwargs,
                   ) -> Iterator[tuple[list[Image.Image], list[str], np.ndarray]]:
    """Endless, seeded stream of :func:`sample_batch` batches (fresh renders every time).

    ``kwargs`` go to :func:`sample_batch` (``size``, ``same_colour``, ``n_cameras``).

    Example::

        >>> import itertools
        >>> for ims, caps, pids in itertools.islice(stream_players(make_players(16), 8), 2):
        ...     assert len(ims) == 8
    """
    rng = np.random.default_rng([seed, 5])
    while True:
        yield sample_batch(players, batch_size, rng, **kwargs)


# --------------------------------------------------------------------------- files on disk
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

        >>> root = generate_players("/tmp/players", 20, 10, images_per_id=4)   # doctest: +SKIP
        >>> sorted(p.name for p in root.iterdir())                               # doctest: +SKIP
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
