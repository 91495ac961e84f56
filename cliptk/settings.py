"""Settings read from the environment at call time: smoke mode and the data folder.

``CLIPTK_SMOKE=1`` shrinks data, steps and projections so every notebook and the demo run in CI in
seconds to minutes; ``CLIPTK_DATA`` moves the data folder (bundled models, generated players,
caches). Both are read when a function asks, never frozen at import, so a test or a notebook can
set them at any time. This module holds the one smoke rule for a training run
(:func:`smoke_run`); nothing else shrinks a config.

Example:
    >>> import os
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"CLIPTK_SMOKE": "1"}):
    ...     pick(full=4, smoke=1)
    1
    >>> with mock.patch.dict(os.environ, {"CLIPTK_SMOKE": ""}):
    ...     pick(full=4, smoke=1)
    4
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

__all__ = ["is_smoke", "pick", "smoke_run", "data_dir", "SMOKE_STEPS", "SMOKE_BATCH"]

#: A smoke-mode training run takes at most this many optimiser steps in one epoch ...
SMOKE_STEPS = 6
#: ... with at most this many pairs a batch (the smoke world has 60 training identities).
SMOKE_BATCH = 16


def is_smoke() -> bool:
    """True when ``CLIPTK_SMOKE`` is set to a true value (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get("CLIPTK_SMOKE", "").strip().lower() in ("1", "true", "yes", "on")


def pick(full: T, smoke: T) -> T:
    """``smoke`` in smoke mode, else ``full`` (decided at call time)."""
    return smoke if is_smoke() else full


def smoke_run(config, keep: tuple[str, ...] | set[str] = ()):
    """The one smoke rule for a training run: ``config`` (a dataclass with ``max_steps``,
    ``epochs``, ``eval_every`` and ``batch_size``) shrunk to a few steps of one epoch with a batch
    the smoke world can fill; unchanged outside smoke mode. Fields named in ``keep`` (e.g. what
    the user set with ``--set``) are left as they are.

    Example:
        >>> from unittest import mock
        >>> @dataclasses.dataclass
        ... class C:
        ...     max_steps: int | None = None
        ...     epochs: int = 10
        ...     eval_every: int = 2
        ...     batch_size: int = 64
        >>> with mock.patch.dict(os.environ, {"CLIPTK_SMOKE": "1"}):
        ...     smoke_run(C())
        C(max_steps=6, epochs=1, eval_every=1, batch_size=16)
    """
    if not is_smoke():
        return config
    changes = {"max_steps": min(config.max_steps or SMOKE_STEPS, SMOKE_STEPS), "epochs": 1, "eval_every": 1,
               "batch_size": min(config.batch_size, SMOKE_BATCH)}
    if hasattr(config, "warmup_epochs"):  # warm-up cannot outlast the one epoch
        changes["warmup_epochs"] = min(config.warmup_epochs, 1)
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if k not in set(keep)})


def data_dir() -> Path:
    """The data folder: ``CLIPTK_DATA`` if set, else ``cliptk/_data/`` in an installed wheel (the
    bundled model and configs travel there), else the checkout's ``data/`` folder."""
    env = os.environ.get("CLIPTK_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    if (here / "_data").is_dir():  # an installed wheel
        return here / "_data"
    return here.parent / "data"
