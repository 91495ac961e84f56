"""Per-sample temperature while fine-tuning: TempNet (Qiu et al., ICML 2024) trained with the model.

``TrainConfig(loss="tempnet")`` fine-tunes the image tower on identity pairs, as the default
recipe does, with TempNet's robust loss (:class:`cliptk.tempnet.TempNetLoss`, METHODS.md §5)
instead of InfoNCE at one temperature: a :class:`cliptk.tempnet.TempNet` predicts a temperature
``τ_i`` in ``[tau_min, tau_max]`` for every query and every positive from its (detached,
normalised) embedding. :func:`cliptk.train.trainer_for` turns such a config into
:class:`TempNetTrainer`, so ``python -m cliptk train`` and :func:`cliptk.recipes.run_from_config`
run it like any other config.

The network is a submodule of the model (``model.tempnet``): the trainer's one AdamW optimises it
with the tower, checkpoints hold it (an interrupted run resumes exactly), and after training
``cliptk.tempnet.temperatures(model.tempnet, embeddings)`` colours an embedding view by
temperature. ``loss_kwargs`` carries both the loss's option (``rho``) and the network's
(:data:`NET_OPTIONS`: ``tau_min``, ``tau_max``, ``hidden``, ``prototypes``, ``dropout``,
``init_tau``). The model's ``logit_scale`` is not used by this loss. The History gets a
``tau_mean`` column (the batch's mean temperature).

Example (a random micro model on a tiny generated world, two steps):
    >>> import tempfile
    >>> from cliptk.data import read_deepsportradar
    >>> from cliptk.models import load_model
    >>> from cliptk.synthetic import generate_players
    >>> from cliptk.train import TrainConfig, fit, trainer_for
    >>> data = read_deepsportradar(generate_players(tempfile.mkdtemp(), n_train_ids=8, n_test_ids=3,
    ...                            images_per_id=3, size=(32, 64), workers=1, challenge=False))
    >>> cfg = TrainConfig(batch_size=4, max_steps=2, eval_before=False, progress=False, device="cpu",
    ...                   loss="tempnet", loss_kwargs={"tau_min": 0.02, "tau_max": 0.08, "hidden": 16,
    ...                                                "prototypes": 8})
    >>> model = load_model("cliptk-micro", None, image_only=True)
    >>> h = fit(model, data, cfg, trainer=trainer_for(cfg))
    >>> bool(h.steps["tau_mean"].between(0.02, 0.08).all()), type(model.tempnet).__name__
    (True, 'TempNet')
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._util import world
from ..tempnet import TempNet, TempNetLoss
from .batches import Batch
from .config import TrainConfig
from .loop import Trainer

__all__ = ["TempNetTrainer", "NET_OPTIONS", "split_options"]

#: ``loss_kwargs`` keys that configure the :class:`~cliptk.tempnet.TempNet`, not the loss
NET_OPTIONS = ("tau_min", "tau_max", "hidden", "prototypes", "dropout", "init_tau")


def split_options(loss_kwargs: dict) -> tuple[dict, dict]:
    """``loss_kwargs`` split into the network's options (:data:`NET_OPTIONS`) and the loss's.

    Example:
        >>> split_options({"rho": 6, "tau_max": 0.1})
        ({'tau_max': 0.1}, {'rho': 6})
    """
    net = {k: v for k, v in loss_kwargs.items() if k in NET_OPTIONS}
    return net, {k: v for k, v in loss_kwargs.items() if k not in NET_OPTIONS}


class TempNetTrainer(Trainer):
    """:class:`cliptk.train.Trainer` with a per-sample temperature (TempNet) trained alongside the
    image tower; see the module docstring. Chosen by :func:`cliptk.train.trainer_for` for
    ``TrainConfig(loss="tempnet")``.

    Raises:
        ValueError: ``loss_kwargs`` the network or the loss does not take (names the key), or a
            bad temperature range (:class:`~cliptk.tempnet.TempNet`'s message).
    """

    per_sample_temperature = True   # reads TrainConfig.loss="tempnet" (see Trainer.per_sample_temperature)

    def __init__(self, model, train_data, config: TrainConfig | None = None, eval_data=None, *, loss_fn=None,
                 **kwargs):
        cfg = config if config is not None else TrainConfig()
        net_kw, loss_kw = split_options(cfg.loss_kwargs)
        unknown = sorted(set(loss_kw) - {"rho"})
        if unknown:
            raise ValueError(f"TrainConfig.loss_kwargs: {unknown} are not options of loss='tempnet'; it takes rho "
                             f"(the loss) and {list(NET_OPTIONS)} (the temperature network)")
        if getattr(model, "tempnet", None) is None:
            # before the optimiser and the checkpoint restore are built: both see it as part of the model
            model.tempnet = TempNet(model.embed_dim, **net_kw)
        if loss_fn is None:
            loss_fn = TempNetLoss(gather=world()[1] > 1, **loss_kw)
        super().__init__(model, train_data, config, eval_data, loss_fn=loss_fn, **kwargs)

    def compute_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """TempNet's loss of the batch's query and positive embeddings, each row at its own
        predicted temperature; logs ``tau_mean``."""
        images, ids, _ = batch
        emb = self.encode(images)
        b = emb.shape[0] // 2
        with torch.autocast(emb.device.type, enabled=False):
            a, p = emb[:b].float(), emb[b:].float()
            net = self.model.tempnet
            tau_a, tau_b = net(F.normalize(a, dim=-1)), net(F.normalize(p, dim=-1))
            loss = self.criterion(a, p, self.model.logit_scale.exp(), ids=ids, tau=(tau_a, tau_b))
        return loss, {"tau_mean": 0.5 * (tau_a.mean() + tau_b.mean()).detach()}
