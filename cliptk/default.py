"""The embedded default: the synthetic players dataset at the sizes every notebook and the demo use.

One place decides the sizes (full vs ``CLIPTK_SMOKE=1``) and the folder, so notebooks, the demo and
the benchmarks share one generated copy instead of each making its own.
"""
from __future__ import annotations

import os
from pathlib import Path

from .data import ReIdDataset, read_deepsportradar
from .smoke import is_smoke, pick
from .synthetic import generate_players

__all__ = ["players", "players_root", "PLAYERS_SIZES"]

#: (n_train_ids, n_test_ids, images_per_id) for the full and the smoke world
PLAYERS_SIZES = {"full": (400, 100, 10), "smoke": (60, 30, 6)}


def players_root() -> Path:
    """Where the embedded dataset lives: ``$CLIPTK_DATA/generated/players[-smoke]`` (``data/`` by default)."""
    from .models import data_dir

    return Path(data_dir()) / "generated" / pick("players", "players-smoke")


def players(root: str | os.PathLike | None = None, seed: int = 0) -> ReIdDataset:
    """Generate (once; cached on disk) and read the synthetic players dataset.

    Example:
        >>> ds = players()          # doctest: +SKIP
        >>> ds.subset("query")      # doctest: +SKIP
    """
    n_train, n_test, per_id = PLAYERS_SIZES["smoke" if is_smoke() else "full"]
    root = generate_players(root or players_root(), n_train_ids=n_train, n_test_ids=n_test, images_per_id=per_id,
                            seed=seed)
    return read_deepsportradar(root)
