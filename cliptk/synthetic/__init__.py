"""Synthetic basketball players: cliptk's offline, seeded stand-in for DeepSportRadar re-id data.

The DeepSportRadar player re-identification challenge (MMSports 2022; used by CLIP-ReIdent,
Habel et al., 2022) gives crops of basketball players named ``{pid}_{sequence}_{frame}.jpeg``.
No network is available here, so this package draws a small world of its own with PIL + numpy,
in three modules, each using only those before it:

* :mod:`~cliptk.synthetic.world` — the identities (:class:`Player`: a team kit that captions
  name, plus fine cues they never mention), games and look-alikes (:func:`make_players`,
  :func:`make_world`), captions (:func:`caption`) and the text prompts that reuse the caption
  templates (:func:`colour_prompts`, :func:`number_prompts`);
* :mod:`~cliptk.synthetic.render` — one crop of one player under one camera
  (:func:`render_player`) and in-memory batches (:func:`sample_batch`, :func:`stream_players`);
* :mod:`~cliptk.synthetic.write` — a dataset on disk in the DeepSportRadar layout
  (:func:`generate_players`), its manifest (:func:`read_manifest`) and a look at it
  (:func:`samples_grid`).

So a CLIP trained only on captions re-identifies players decently but not perfectly (it
confuses look-alikes and same-colour players whose number is hidden), and fine-tuning on
identities has fine cues to learn. Everything is seeded: the same arguments give byte-identical
images.

Example:
    >>> import numpy as np
    >>> from cliptk.synthetic import generate_players, make_players, render_player
    >>> root = generate_players("data/generated/players")   # ~5,000 crops, skipped for time  # doctest: +SKIP
    >>> players = make_players(20, seed=0)
    >>> img = render_player(players[0], np.random.default_rng(0))
    >>> img.size
    (64, 128)
"""

from .world import (CAPTION_TEMPLATE, CAPTION_TEMPLATES, COLOUR_PROMPT, COLOURS, HAIR_COLOURS, HAIR_STYLES,
                    NUMBER_PROMPT, RGB, SHOE_COLOURS, SKIN_TONES, SOCK_COLOURS, SOCK_LENGTHS, Player, caption,
                    colour_prompts, make_players, make_world, number_prompts)
from .render import PARTS, RenderInfo, render_player, sample_batch, stream_players
from .write import GENERATOR_VERSION, MANIFEST_COLUMNS, SPLITS, generate_players, read_manifest, samples_grid

__all__ = [
    "PARTS",
    # world
    "Player", "make_players", "make_world", "caption", "colour_prompts", "number_prompts",
    "COLOURS", "SKIN_TONES", "HAIR_COLOURS", "HAIR_STYLES", "SHOE_COLOURS", "SOCK_COLOURS", "SOCK_LENGTHS",
    "CAPTION_TEMPLATE", "COLOUR_PROMPT", "NUMBER_PROMPT", "CAPTION_TEMPLATES", "RGB",
    # render
    "render_player", "RenderInfo", "sample_batch", "stream_players",
    # write
    "generate_players", "read_manifest", "samples_grid", "GENERATOR_VERSION", "SPLITS", "MANIFEST_COLUMNS",
]
