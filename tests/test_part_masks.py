"""Part masks of the synthetic renderer: they change no pixel and draw no random number, and they
label what is drawn (checked against the renderer's own, independently computed RenderInfo)."""
from __future__ import annotations

import hashlib

import numpy as np

import cliptk.synthetic as syn
from cliptk.synthetic.render import PARTS

# sha256 of the pixels of render_player(make_players(3, seed=0)[i], default_rng(i)), as before part masks
PINNED = ["8e67cde6c3a1c691a0aa2b1dd623795f0ac1f1517f3b3f2efb1db7e4dca629c8",   # as tests/test_synthetic.py
          "296dce64418fba2f94a2e1a29480e0622fd6b07ed1a0e8feae2b2354c4dfc63c",
          "b4d8b62024f334aee93e7986d07eb1d60693cf403d0a7323cd02f4f1e292ada8"]


def test_masks_change_no_pixel_and_no_random_number():
    for i, p in enumerate(syn.make_players(3, seed=0)):
        im, mask = syn.render_player(p, np.random.default_rng(i), return_masks=True)
        assert hashlib.sha256(np.asarray(im).tobytes()).hexdigest() == PINNED[i]
        assert mask.shape == (128, 64) and mask.dtype == np.uint8
    players = syn.make_players(24, seed=5)
    for i, p in enumerate(players):
        size = [(64, 128), (32, 64), (40, 72)][i % 3]
        r1, r2 = np.random.default_rng([i, 1]), np.random.default_rng([i, 1])
        a, ia = syn.render_player(p, r1, size, i % 5, players, return_info=True)
        b, ib, m = syn.render_player(p, r2, size, i % 5, players, return_info=True, return_masks=True)
        assert a.tobytes() == b.tobytes() and ia == ib
        assert r1.bit_generator.state == r2.bit_generator.state   # the masks drew nothing
        assert m.shape == (size[1], size[0]) and int(m.max()) < len(PARTS)


def test_masks_label_what_is_drawn():
    players = syn.make_players(40, seed=2)
    seen = set()
    for i, p in enumerate(players):
        _, info, m = syn.render_player(p, np.random.default_rng(i), return_info=True, return_masks=True)
        names = {PARTS[v] for v in np.unique(m)}
        seen |= names
        assert {"background", "jersey", "shorts", "skin", "shoes"} <= names
        if p.hair_style == "bald" and p.headband is None:
            assert "hair" not in names
        if not info.occluded:
            assert "other_player" not in names
        if info.view == "front" and info.number_visible and not info.occluded and info.number_box is not None:
            x0, y0, x1, y1 = info.number_box
            number = m == PARTS.index("number")
            inside = number[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2].sum()
            assert inside >= 0.8 * number[:int(0.6 * m.shape[0])].sum() > 0   # the digits sit in the box
    assert seen == set(PARTS) - {"accessory"} or seen == set(PARTS)
