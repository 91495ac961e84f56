"""What a training run did: :class:`History` (one row per optimizer step and per evaluation) and
:class:`NonFiniteLossError` (the run stopped on a NaN/inf loss, gradient or weight, with the history up to
it).

The rows are plain dicts (they go into every checkpoint, so a resumed run continues the same
table); :attr:`History.table` is the ``pandas`` view. Columns are :data:`COLUMNS`, plus any scalar
a :meth:`cliptk.train.Trainer.compute_loss` override logs.

Example:
    >>> h = History(rows=[{"kind": "train", "epoch": 0.5, "step": 1, "loss": 2.0},
    ...                   {"kind": "eval", "epoch": 1.0, "step": 2, "mAP": 0.5, "rank1": 0.75}])
    >>> h
    History(1 steps, mAP=0.5000, rank-1=0.7500, checkpoint=None)
    >>> list(h.steps["loss"])
    [2.0]
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["COLUMNS", "History", "NonFiniteLossError"]

#: The columns of every history row; extra scalars logged by a Trainer subclass follow them.
COLUMNS = ("kind", "epoch", "step", "loss", "lr", "logit_scale", "mAP", "rank1", "images_per_s", "seconds")


@dataclass
class History:
    """What a :func:`cliptk.train.fit` run did: one row per optimizer step (``kind="train"``) and
    per evaluation (``kind="eval"``).

    Attributes:
        rows: the rows as dicts (columns :data:`COLUMNS`: ``epoch`` is fractional progress,
            ``step`` the global optimizer step, ``seconds`` training time since the run began;
            then the scalars a :meth:`cliptk.train.Trainer.compute_loss` override logs, averaged
            over the step's micro-batches).
        interrupted: training stopped by Ctrl-C / ``KeyboardInterrupt`` (a checkpoint was saved
            when ``output_dir`` is set).
        stopped: why training ended early: ``"interrupted"``, ``"max_steps"``,
            ``"max_minutes"``, or None when all epochs ran.
        checkpoint: the last checkpoint written (None without ``output_dir``).

    ``table`` is a ``pandas.DataFrame`` of all rows; ``steps`` and ``evals`` select one kind.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    stopped: str | None = None
    checkpoint: Path | None = None

    @property
    def table(self) -> pd.DataFrame:
        """All rows: the :data:`COLUMNS`, then logged extras in order of first appearance."""
        extra = dict.fromkeys(k for r in self.rows for k in r if k not in COLUMNS)
        return pd.DataFrame(self.rows, columns=[*COLUMNS, *extra])

    @property
    def steps(self) -> pd.DataFrame:
        t = self.table
        return t[t["kind"] == "train"].reset_index(drop=True)

    @property
    def evals(self) -> pd.DataFrame:
        t = self.table
        return t[t["kind"] == "eval"].reset_index(drop=True)

    @property
    def final(self) -> dict[str, Any]:
        """The last evaluation row ({} if none ran)."""
        ev = [r for r in self.rows if r["kind"] == "eval"]
        return dict(ev[-1]) if ev else {}

    def __repr__(self) -> str:
        n = sum(r["kind"] == "train" for r in self.rows)
        f = self.final
        score = f", mAP={f['mAP']:.4f}, rank-1={f['rank1']:.4f}" if f else ""
        flag = f", stopped={self.stopped!r}" if self.stopped else ""
        return f"History({n} steps{score}{flag}, checkpoint={str(self.checkpoint) if self.checkpoint else None})"

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(repr(self))}</p>" + self.evals.to_html(index=False, float_format=lambda v: f"{v:.4g}")


class NonFiniteLossError(FloatingPointError):
    """The loss, the gradients or the weights became NaN or infinite; training stopped before
    applying that update, and nothing non-finite was written to disk.

    Attributes: ``kind`` (``"loss"``, ``"gradients"`` or ``"weights"``), ``epoch``, ``step``,
    ``loss`` (the loss value; NaN when unknown), ``checkpoint`` (the last good one or None) and
    ``history`` (the rows up to the failure)."""

    def __init__(self, message: str, *, epoch: int, step: int, loss: float, checkpoint: Path | None,
                 history: History, kind: str = "loss"):
        super().__init__(message)
        self.epoch, self.step, self.loss, self.checkpoint, self.history = epoch, step, loss, checkpoint, history
        self.kind = kind
