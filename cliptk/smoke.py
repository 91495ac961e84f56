"""Smoke mode: one environment variable, ``CLIPTK_SMOKE=1``, shrinks data, steps and projections so
every notebook and the demo run in CI in seconds to minutes. Read it here, never per notebook.

    from cliptk.smoke import SMOKE, pick
    n_epochs = pick(full=4, smoke=1)
"""
from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")

__all__ = ["SMOKE", "is_smoke", "pick"]


def is_smoke() -> bool:
    """True when ``CLIPTK_SMOKE`` is set to a true value (``1``, ``true``, ``yes``)."""
    return os.environ.get("CLIPTK_SMOKE", "").strip().lower() in ("1", "true", "yes", "on")


SMOKE = is_smoke()


def pick(full: T, smoke: T) -> T:
    """``smoke`` in smoke mode, else ``full`` (evaluated at call time, so tests can set the variable)."""
    return smoke if is_smoke() else full
