"""Drawing: one crop of one player, as a camera of the synthetic court sees it.

:func:`render_player` draws a :class:`~cliptk.synthetic.world.Player` with PIL + numpy, varying
view (front / back / side), pose, lean, scale and position, court background (per game floor,
per camera lines and colour cast), partial occlusion by another player, resolution, blur,
lighting, noise and JPEG quality. :func:`sample_batch` and :func:`stream_players` render
batches in memory (caption pre-training without touching disk).

Every random choice comes from the ``rng`` passed in, in a fixed order, so the same generator
state gives the same pixels; the tests pin image hashes (``tests/test_synthetic.py``), and a
change to what is drawn must bump :data:`~cliptk.synthetic.write.GENERATOR_VERSION`.

``render_player(..., return_masks=True)`` also returns the ground-truth **part mask** of the crop:
a ``uint8`` label map indexing :data:`PARTS` (number, jersey, shorts, socks, shoes, skin, hair ...),
drawn on a second canvas by the same strokes as the pixels. It draws no random numbers, so the
image and the generator's state afterwards are the same with or without it
(``tests/test_part_masks.py``).

Example:
    >>> import numpy as np
    >>> from cliptk.synthetic import make_players
    >>> img = render_player(make_players(20, seed=0)[0], np.random.default_rng(0))
    >>> img.size
    (64, 128)
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from .world import (COLOURS, HAIR_COLOURS, SHOE_COLOURS, SKIN_TONES, SOCK_COLOURS, SOCK_LENGTHS, Player, _lum,
                    _random_player, caption)

__all__ = ["render_player", "RenderInfo", "PARTS", "sample_batch", "stream_players"]

_SS = 2  # supersampling factor of the drawing canvas

#: Names of the labels in a part mask (``render_player(..., return_masks=True)``): label ``i`` is
#: ``PARTS[i]``. ``number`` holds the digits with their outline and the name bar on the back;
#: ``accessory`` the headband and arm sleeve; ``other_player`` the player who occludes the crop
#: (in front, or behind where no part of the player is drawn); ``background`` the court.
PARTS: tuple[str, ...] = ("background", "skin", "hair", "jersey", "number", "shorts", "socks", "shoes",
                          "accessory", "other_player")
_PART = {name: i for i, name in enumerate(PARTS)}


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
        self.labels: ImageDraw.ImageDraw | None = None  # the part mask, drawn with label ``part``
        self.part = 0
        self.px, self.py = pivot
        self.c, self.s = math.cos(math.radians(lean_deg)), math.sin(math.radians(lean_deg))

    def P(self, x: float, y: float) -> tuple[float, float]:
        dx, dy = x - self.px, y - self.py
        return (self.px + dx * self.c + dy * self.s, self.py - dx * self.s + dy * self.c)

    def _both(self):
        return ([(self.d, None)] + ([(self.mask, 255)] if self.mask is not None else [])
                + ([(self.labels, self.part)] if self.labels is not None else []))

    def on(self, part: str) -> "_Pen":
        """Label what is drawn next as ``part`` in the part mask (no effect on the pixels)."""
        self.part = _PART[part]
        return self

    def poly(self, pts, fill) -> None:
        q = [self.P(x, y) for x, y in pts]
        for d, f in self._both():
            d.polygon(q, fill=fill if f is None else f)

    def line(self, pts, fill, width: float, caps: bool = False) -> None:
        q = [self.P(x, y) for x, y in pts]
        wdt = max(1, int(round(width)))
        for d, f in self._both():
            d.line(q, fill=fill if f is None else f, width=wdt, joint="curve")
            if caps:
                for x, y in (q[0], q[-1]):
                    d.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=fill if f is None else f)

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill) -> None:
        x, y = self.P(x, y)
        for d, f in self._both():
            d.ellipse((x - rx, y - ry, x + rx, y + ry), fill=fill if f is None else f)

    def chord(self, x: float, y0: float, y1: float, rx: float, start: float, end: float, fill) -> None:
        """Chord of the ellipse spanning x±rx, y0..y1, angles in PIL's clockwise degrees."""
        x, yc = self.P(x, (y0 + y1) / 2)
        ry = (y1 - y0) / 2
        lean = math.degrees(math.atan2(self.s, self.c))
        self.d.chord((x - rx, yc - ry, x + rx, yc + ry), start - lean, end - lean, fill=fill)
        if self.labels is not None:
            self.labels.chord((x - rx, yc - ry, x + rx, yc + ry), start - lean, end - lean, fill=self.part)


def _draw_figure(p: Player, rng: np.random.Generator, canvas: tuple[int, int], cx: float,
                 foot_y: float, u: float, view: str, lean: float, labels: Image.Image | None = None):
    """Draw one player, ``u`` px tall, feet at (cx, foot_y), leaning ``lean`` degrees.

    Returns ``(figure RGBA, ink, visible, box)``: ``ink`` is the number's total ink (sum of
    its mask), ``visible`` the L mask of its unhidden ink inside ``box`` (x0, y0, x1, y1).
    With ``labels`` (an L image of ``canvas`` size) every stroke is also drawn there with its
    :data:`PARTS` label; that draws no random numbers.
    """
    fig = Image.new("RGBA", canvas, (0, 0, 0, 0))
    pen = _Pen(fig, (cx, foot_y), lean)
    pen.labels = ImageDraw.Draw(labels) if labels is not None else None
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
    pen.on("hair")
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
        pen.on("skin").line([hip, knee], skin, thigh)
        pen.line([knee, ank], skin, calf, caps=True)
        frac = min(0.9, SOCK_LENGTHS[p.sock_length] * u / max(1.0, math.dist(knee, ank)))
        stop = (ank[0] + (knee[0] - ank[0]) * frac, ank[1] + (knee[1] - ank[1]) * frac)
        pen.on("socks").line([ank, stop], SOCK_COLOURS[p.socks], calf * 1.12, caps=True)
        dx = 0.018 * u * side if view == "side" else 0.0
        pen.on("shoes").ellipse(ank[0] + dx, ank[1] + 0.014 * u, 0.045 * u, 0.022 * u, SHOE_COLOURS[p.shoes])

    # shorts follow the thighs
    yb = Y(0.68)

    def along(hip, knee, y):
        return hip[0] + (knee[0] - hip[0]) * (y - hip[1]) / max(1e-6, knee[1] - hip[1])

    xl, xr = along(*legs[0][:2], yb), along(*legs[1][:2], yb)
    shorts = [(cx - ww * 1.1, Y(0.46)), (cx + ww * 1.1, Y(0.46)), (xr + thigh * 0.85, yb),
              (xr - thigh * 0.7, yb), (cx, Y(0.61)), (xl + thigh * 0.7, yb), (xl - thigh * 0.85, yb)]
    pen.on("shorts").poly(shorts, p.shorts)
    lw = max(1, int(0.014 * u))
    if view != "back":
        pen.line([shorts[1], shorts[2]], p.trim, lw)
        pen.line([shorts[0], shorts[6]], p.trim, lw)

    # neck, arms (the far one first in side view), then the jersey
    pen.on("skin")
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
        pen.on("skin").line([shoulder, elbow, wrist], skin, 0.046 * u * wd, caps=True)
        if p.sleeve is not None and sgn == -1:
            pen.on("accessory").line([shoulder, elbow, wrist], SOCK_COLOURS[p.sleeve], 0.05 * u * wd, caps=True)
        pen.on("skin").ellipse(wrist[0], wrist[1], 0.026 * u, 0.026 * u, skin)

    if view == "side":
        far = arms[0] if side == 1 else arms[1]
        draw_arm(far)
        arms = [a for a in arms if a is not far]
    torso = [(cx - sw * 0.55, Y(0.165)), (cx + sw * 0.55, Y(0.165)), (cx + sw, Y(0.19)),
             (cx + sw * 0.86, Y(0.29)), (cx + ww, Y(0.5)), (cx - ww, Y(0.5)),
             (cx - sw * 0.86, Y(0.29)), (cx - sw, Y(0.19))]
    pen.on("jersey").poly(torso, p.jersey)
    jm = Image.new("L", canvas, 0)
    ImageDraw.Draw(jm).polygon([pen.P(x, y) for x, y in torso], fill=255)
    pen.line([torso[2], torso[3]], p.trim, lw)
    pen.line([torso[7], torso[6]], p.trim, lw)
    if view == "front":
        v = [(hx - 0.04 * u, Y(0.165)), (hx, Y(0.225)), (hx + 0.04 * u, Y(0.165))]
        pen.on("skin").poly(v, skin)
        pen.on("jersey").line(v, p.trim, lw)
    elif view == "side":
        pen.line([(hx - 0.03 * u, Y(0.168)), (hx + 0.03 * u, Y(0.168))], p.trim, lw)
    else:
        pen.chord(hx, Y(0.14), Y(0.19), 0.045 * u, 0, 180, p.trim)
        pen.on("number")
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
    if labels is not None:   # where the outline covers at least half a pixel
        labels.paste(_PART["number"], box, ImageChops.multiply(out_m, jm).point(lambda v: 255 if v >= 128 else 0))

    over = Image.new("L", canvas, 0)  # what is drawn over the number: arms and hands
    pen.mask = ImageDraw.Draw(over)
    for arm in arms:
        draw_arm(arm)
    pen.mask = None
    visible = ImageChops.multiply(visible, ImageChops.invert(over.crop(box)))

    # head, hair, headband, eyes
    pen.on("skin").ellipse(hx, hy, rx, ry, skin)
    pen.on("hair")
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
        pen.on("accessory").line([(hx - rx * 1.02, hy - ry * 0.32), (hx + rx * 1.02, hy - ry * 0.32)],
                 SOCK_COLOURS[p.headband], 0.022 * u)
    if view == "front":
        pen.on("skin")
        for ex in (-0.4, 0.4):
            pen.ellipse(hx + ex * rx, hy - 0.002 * u, 0.008 * u, 0.006 * u, (30, 22, 20))
    return fig, float(np.asarray(fill_m, np.float32).sum()), visible, box


def _random_view(rng: np.random.Generator) -> str:
    r = rng.random()
    return "front" if r < 0.6 else "back" if r < 0.85 else "side"


def render_player(player: Player, rng: np.random.Generator, size: tuple[int, int] = (64, 128),
                  camera: int = 0, others: Sequence[Player] = (), return_info: bool = False,
                  return_masks: bool = False):
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
        return_masks: also return the part mask: a ``uint8`` ``[h, w]`` array whose value at a
            pixel indexes :data:`PARTS` (what is drawn there; at the 2x supersampled canvas the
            majority label of the pixel's 4 samples, ties to the lower label). Drawing it uses
            no random numbers: the image and ``rng``'s state are the same with or without it.

    Returns:
        ``PIL.Image`` (mode RGB); ``(image, RenderInfo)`` with ``return_info``; ``(image,
        mask)`` with ``return_masks``; ``(image, RenderInfo, mask)`` with both.

    Raises:
        ValueError: if ``size`` or ``camera`` is out of range.

    Example::

        >>> from cliptk.synthetic import make_players
        >>> p = make_players(1)[0]
        >>> im, info = render_player(p, np.random.default_rng(0), return_info=True)
        >>> im.mode, im.size, info.view in ("front", "back", "side")
        ('RGB', (64, 128), True)
        >>> im2, mask = render_player(p, np.random.default_rng(0), return_masks=True)
        >>> im2.tobytes() == im.tobytes(), mask.shape, PARTS[mask[64, 32]] != "background"
        (True, (128, 64), True)
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
    labels = Image.new("L", (cw, ch), _PART["background"]) if return_masks else None
    fig, ink, visible, box = _draw_figure(player, rng, (cw, ch), cx, foot_y, u, view, rng.uniform(-8, 8), labels)

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
            if labels is not None:   # the other player shows where this one draws nothing
                behind = ImageChops.multiply(ofig.getchannel("A").point(lambda v: 255 if v >= 128 else 0),
                                             labels.point(lambda v: 255 if v == _PART["background"] else 0))
                labels.paste(_PART["other_player"], (0, 0), behind)
    if front_occ is not None:
        fig = Image.alpha_composite(fig, front_occ)
        visible = ImageChops.multiply(visible, ImageChops.invert(front_occ.getchannel("A").crop(box)))
        if labels is not None:
            labels.paste(_PART["other_player"], (0, 0), front_occ.getchannel("A").point(lambda v: 255 if v >= 128 else 0))
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
    out: tuple = (img,)
    if return_info:
        out += (RenderInfo(camera, view, bool(number_visible), number_box, bool(occluded)),)
    if return_masks:
        out += (_reduce_labels(np.asarray(labels), _SS),)
    return out[0] if len(out) == 1 else out


def _reduce_labels(labels: np.ndarray, k: int) -> np.ndarray:
    """The ``[H/k, W/k]`` majority label of each ``k x k`` block of ``labels`` (ties: lower label)."""
    h, w = labels.shape[0] // k, labels.shape[1] // k
    blocks = labels[:h * k, :w * k].reshape(h, k, w, k)
    counts = np.stack([(blocks == i).sum(axis=(1, 3)) for i in range(len(PARTS))])
    return counts.argmax(0).astype(np.uint8)


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

        >>> from cliptk.synthetic import make_players
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
        >>> from cliptk.synthetic import make_players
        >>> for ims, caps, pids in itertools.islice(stream_players(make_players(16), 8), 2):
        ...     assert len(ims) == 8
    """
    rng = np.random.default_rng([seed, 5])
    while True:
        yield sample_batch(players, batch_size, rng, **kwargs)

