"""The synthetic world: identities, team kits, games, look-alikes, captions and text prompts.

This is what the synthetic players *are*, before any pixel is drawn (:mod:`.render` draws them,
:mod:`.write` writes a dataset of them):

* **identities** (:class:`Player`) play in *games*; a game has two teams of ~5 players with
  distinct shirt numbers. A team wears a jersey whose colour has a plain name from
  :data:`COLOURS`. Players also differ in *fine cues* that captions never mention: skin tone,
  hair colour and style, shoe and sock colours, sock length, build, headband, arm sleeve.
* **look-alikes**: a team kit (colours and numbers) recurs in a later game worn by *different*
  players, so "red jersey, number 23" names several identities. Every such look-alike differs
  from the others in at least two fine cues (see :func:`make_players`).
* **captions** (:func:`caption`) name only the coarse cues, with one template family
  (:data:`CAPTION_TEMPLATE`, :data:`COLOUR_PROMPT`, :data:`NUMBER_PROMPT`) that text probes
  reuse (:func:`colour_prompts`, :func:`number_prompts`).

Everything is drawn from seeded numpy generators: the same seed gives the same world, and the
order of the draws is part of the format (changing it changes every stored dataset).

Example:
    >>> w = make_world(20, 10, seed=0)
    >>> len(w["train"]), len(w["test"]), w["test"][0].pid
    (20, 10, 20)
    >>> colour_prompts()[0]
    'a photo of a basketball player in a red jersey'
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Player", "make_players", "make_world", "caption", "colour_prompts", "number_prompts",
    "COLOURS", "SKIN_TONES", "HAIR_COLOURS", "HAIR_STYLES", "SHOE_COLOURS", "SOCK_COLOURS", "SOCK_LENGTHS",
    "CAPTION_TEMPLATE", "COLOUR_PROMPT", "NUMBER_PROMPT", "CAPTION_TEMPLATES", "RGB",
]

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
    """The identities of :func:`~cliptk.synthetic.write.generate_players`: ``{"train", "test",
    "challenge"}`` lists.

    Each split is its own world (its own games, pids and look-alikes), so no game and no pid
    is shared between splits. Use ``world["train"]`` to pre-train on fresh renders
    (:func:`~cliptk.synthetic.render.stream_players`) without ever seeing test identities.
    ``kwargs`` go to :func:`make_players`.

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
    """One caption-template prompt per jersey colour, in :data:`COLOURS` order.

    Example:
        >>> colour_prompts()[1] == COLOUR_PROMPT.format(colour="blue")
        True
    """
    return [COLOUR_PROMPT.format(colour=c) for c in COLOURS]


def number_prompts(colour: str | None = None) -> list[str]:
    """Prompts for shirt numbers 0..99 (index = number), with the captions' own wording.

    Without ``colour`` it uses :data:`NUMBER_PROMPT`, else :data:`CAPTION_TEMPLATE`.

    Raises:
        ValueError: if ``colour`` is not a key of :data:`COLOURS`.

    Example:
        >>> number_prompts()[23], number_prompts("red")[7]
        ('a photo of a basketball player with number 23', 'a photo of a basketball player in a red jersey with number 7')
    """
    if colour is None:
        return [NUMBER_PROMPT.format(number=n) for n in range(100)]
    if colour not in COLOURS:
        raise ValueError(f"number_prompts: unknown colour {colour!r}; use one of {list(COLOURS)}")
    return [CAPTION_TEMPLATE.format(colour=colour, number=n) for n in range(100)]


# --------------------------------------------------------------------------- extras
def _random_player(rng: np.random.Generator) -> Player:
    """An extra from no game (pid -1), for :mod:`.render` to draw as an occluder when the crop's
    own game offers nobody; same draws as a kit and a player of :func:`make_players`."""
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    kit = _new_kit(colour, "extras", rng)
    return Player(pid=-1, game=-1, team=kit.team, colour=colour, jersey=kit.jersey, shorts=kit.shorts,
                  trim=kit.trim, number_rgb=kit.number_rgb, number=int(rng.integers(100)), **_fine_cues(rng))

