"""Ready-made callbacks for :func:`cliptk.train.fit`.

A callback is any function of one event dict, called at ``"train_begin"``, ``"step_end"``,
``"eval"``, ``"epoch_end"`` and ``"train_end"``; the dict holds ``event``, the history row's fields
(``epoch``, ``step``, ``loss``, ``lr``, ``logit_scale``, ``mAP``, ``rank1``, ``images_per_s``,
``seconds``), ``history``, ``model``, ``config`` and ``rank``. Raising ``KeyboardInterrupt`` from a
callback stops training like Ctrl-C. :func:`live_plot` draws the loss and the evaluations live in a
notebook.

Example:
    >>> seen = []
    >>> def log_loss(event):   # a callback of one's own: fit(..., callbacks=[log_loss])
    ...     if event["event"] == "step_end":
    ...         seen.append(event["loss"])
    >>> log_loss({"event": "step_end", "loss": 1.5}); seen
    [1.5]
"""
from __future__ import annotations

from typing import Any, Callable

__all__ = ["live_plot"]


def live_plot(every: int = 10, figsize: tuple[float, float] = (9, 3)) -> Callable[[dict], None]:
    """A callback drawing the training loss and the evaluation mAP / rank-1 live in a notebook.

    Redraws every ``every`` steps and at each evaluation (matplotlib, one output area updated in
    place; outside IPython it only draws). Only rank 0 draws.

    Returns:
        The callback; its ``figure`` attribute is the matplotlib figure.

    Example:
        >>> import matplotlib; matplotlib.use("Agg")
        >>> cb = live_plot(every=5)
        >>> len(cb.figure.axes)
        2
        >>> history = fit(model, data, cfg, eval_data=data, callbacks=[cb])   # doctest: +SKIP
    """
    # matplotlib is imported here, not at the top: only a notebook that draws needs it, and a
    # torchrun worker importing cliptk.train should not pay for it
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=figsize)
    plt.close(fig)  # shown through display() only
    handle: dict[str, Any] = {}

    def callback(event: dict) -> None:
        if event.get("rank", 0) != 0 or event["event"] not in ("step_end", "eval", "train_end"):
            return
        if event["event"] == "step_end" and event["step"] % every:
            return
        h = event["history"]
        steps, evals = h.steps, h.evals
        ax_loss.clear()
        ax_loss.plot(steps["step"], steps["loss"], lw=1)
        ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
        ax_map.clear()
        if len(evals):
            ax_map.plot(evals["epoch"], evals["mAP"], "o-", label="mAP")
            ax_map.plot(evals["epoch"], evals["rank1"], "s--", label="rank-1")
            ax_map.legend(loc="lower right")
        ax_map.set(xlabel="epoch", ylim=(0, 1.02), title="query/gallery")
        fig.tight_layout()
        try:
            from IPython.display import display   # optional: only inside IPython / Jupyter

            if "display" not in handle:
                handle["display"] = display(fig, display_id=True)
            elif handle["display"] is not None:
                handle["display"].update(fig)
        except ImportError:
            pass

    callback.figure = fig  # type: ignore[attr-defined]
    return callback
