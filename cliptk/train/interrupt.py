"""Ctrl-C during training: the first SIGINT asks the run to stop after the current step, a second
one stops at once.

:class:`StopRequest` is the context :meth:`cliptk.train.Trainer.fit` runs in: while it is entered
(in the main thread), SIGINT sets ``requested`` instead of raising, so the step in progress
finishes, the checkpoint stays consistent and the loop leaves at a step boundary; a second SIGINT
raises ``KeyboardInterrupt`` at once. The previous handler is restored on exit.

Example:
    >>> with StopRequest() as stop:
    ...     stop.requested
    False
"""
from __future__ import annotations

import logging
import signal
import threading

__all__ = ["StopRequest"]

log = logging.getLogger("cliptk.train")


class StopRequest:
    """Ctrl-C handling: the first SIGINT asks training to stop at the end of the current step
    (so the checkpoint is consistent); a second one raises KeyboardInterrupt at once. Outside the
    main thread (where signals cannot be caught) it only holds ``requested = False``."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)

            def handler(signum, frame):
                if self.requested:
                    raise KeyboardInterrupt
                self.requested = True
                log.warning("interrupt: stopping after the current step (press Ctrl-C again to stop at once)")

            signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
