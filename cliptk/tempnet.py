"""Per-sample temperature: TempNet (Qiu et al., "To Cool or not to Cool? Temperature Network Meets
Large Foundation Models via DRO", ICML 2024).

The third temperature option after a fixed ``τ`` and CLIP's learnable scale
(:class:`cliptk.losses.LogitScale`): a small network predicts a temperature ``τ_i`` for every
anchor from its (detached) embedding, inside a configured range ``[tau_min, tau_max]``, and the
loss is TempNet's distributionally robust form (METHODS.md §5; the authors' ``Bimodal_CL``
``iSogCLR_TempNet_Loss`` without its per-sample moving averages, i.e. the in-batch estimate):

    ``L_i = τ_i · log( 1/(N−1) Σ_{j≠i} exp((s_ij − s_ii)/τ_i) ) + τ_i·ρ``

with ``s_ij`` the cosine similarity of anchor ``i`` and candidate ``j`` and ``s_ii`` its positive,
averaged over the anchors of both directions (``a→b`` with the ``a`` rows' temperatures,
``b→a`` with the ``b`` rows'). The ``τ_i·ρ`` term (``ρ`` the DRO radius, 6–8 in the paper) keeps
``τ`` from growing without bound.

- :class:`TempNet` — the network: ``sigmoid(Linear(z)) → dropout → softmax similarity to M
  learnable prototypes → the prototype mixture → Linear → τ_min + (τ_max − τ_min)·σ(·)``;
- :class:`TempNetLoss` — the loss above, registered as ``"tempnet"``; it takes the temperatures
  as an input (``tau=(tau_a, tau_b)``), so whoever owns the :class:`TempNet` trains it (a loss
  module's parameters would not reach :func:`cliptk.train.fit`'s optimizer);
- :func:`train_tempnet` — TempNet trained on top of a **frozen** model's features, as the losses
  lab (:mod:`cliptk.lab`) trains its heads: the same identity-started :class:`cliptk.lab.LabHead`,
  the same batches, the same evaluation, so its row sits next to :func:`cliptk.lab.run_lab`'s;
- :func:`temperatures` — the predicted ``τ`` of any features (e.g. as the colour of
  :func:`cliptk.plot_embeddings`).

Example:
    >>> import torch
    >>> net = TempNet(16, tau_min=0.01, tau_max=0.05)
    >>> tau = net(torch.randn(5, 16))
    >>> tau.shape, bool(((tau >= 0.01) & (tau <= 0.05)).all())
    (torch.Size([5]), True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import ContrastiveLoss, Views, register_loss

__all__ = ["TempNet", "TempNetLoss", "tempnet_rows", "train_tempnet", "temperatures", "TempNetRun"]


class TempNet(nn.Module):
    """A temperature per sample, in ``[tau_min, tau_max]`` (TempNet, Qiu et al., ICML 2024).

    ``h = dropout(sigmoid(W₁ z))``; ``w = softmax(ĥ · P̂ᵀ / 0.1)`` over ``prototypes`` learnable
    prototypes ``P`` (cosine similarity); ``τ = tau_min + (tau_max − tau_min)·σ(W₂ (w P))``. The
    input is detached (``detach=True``): the temperature network does not move the encoder, and
    it can be trained on a frozen model's features.

    Args:
        dim: input feature size.
        tau_min, tau_max: the range (``0 < tau_min < tau_max``); the paper uses about 0.01–0.05.
        hidden: width of ``h`` and the prototypes.
        prototypes: ``M`` (256 in the paper).
        dropout: dropout on ``h``.
        init_tau: the temperature an input starts at (the output layer's bias is set so);
            default the middle of the range.

    Raises:
        ValueError: a bad range, ``init_tau`` outside it, or non-positive sizes.
    """

    def __init__(self, dim: int, tau_min: float = 0.01, tau_max: float = 0.05, *, hidden: int = 256,
                 prototypes: int = 256, dropout: float = 0.1, init_tau: float | None = None,
                 detach: bool = True) -> None:
        super().__init__()
        if not 0 < tau_min < tau_max:
            raise ValueError(f"TempNet: need 0 < tau_min < tau_max, got tau_min={tau_min}, tau_max={tau_max}")
        if min(dim, hidden, prototypes) < 1:
            raise ValueError(f"TempNet: dim={dim}, hidden={hidden}, prototypes={prototypes} must be >= 1")
        init_tau = (tau_min + tau_max) / 2 if init_tau is None else float(init_tau)
        if not tau_min < init_tau < tau_max:
            raise ValueError(f"TempNet: init_tau={init_tau} must lie strictly inside ({tau_min}, {tau_max})")
        self.tau_min, self.tau_max, self.detach = float(tau_min), float(tau_max), detach
        self.inp = nn.Linear(dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.prototypes = nn.Parameter(torch.randn(prototypes, hidden) / math.sqrt(hidden))
        self.out = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            u = (init_tau - tau_min) / (tau_max - tau_min)
            self.out.bias.fill_(math.log(u / (1 - u)))

    def forward(self, z: Tensor) -> Tensor:
        """``[N, dim]`` features -> ``[N]`` temperatures in ``[tau_min, tau_max]``."""
        if self.detach:
            z = z.detach()
        h = self.drop(torch.sigmoid(self.inp(z.to(self.inp.weight.dtype))))
        w = torch.softmax(F.normalize(h, dim=-1) @ F.normalize(self.prototypes, dim=-1).T / 0.1, dim=-1)
        u = torch.sigmoid(self.out(w @ self.prototypes)).squeeze(-1)
        return self.tau_min + (self.tau_max - self.tau_min) * u

    def extra_repr(self) -> str:
        return f"range=[{self.tau_min:g}, {self.tau_max:g}], detach={self.detach}"


def tempnet_rows(sim: Tensor, diag: Tensor, tau: Tensor, rho: float) -> Tensor:
    """``[B]`` per-anchor losses ``τ_i·log(1/(N−1) Σ_{j≠i} exp((s_ij − s_ii)/τ_i)) + τ_i·ρ``.

    Args:
        sim: ``[B, N]`` cosine similarities of the anchors (rows) with the candidates.
        diag: ``[B]`` column of each anchor's positive.
        tau: ``[B]`` temperatures.
        rho: the DRO radius ``ρ``.
    """
    b, n = sim.shape
    if n < 2:
        raise ValueError("tempnet_rows: need at least two candidates per anchor")
    rows = torch.arange(b, device=sim.device)
    pos = sim[rows, diag]
    d = (sim - pos[:, None]) / tau[:, None]
    d = d.masked_fill(F.one_hot(diag, n).bool(), float("-inf"))
    return tau * (torch.logsumexp(d, dim=1) - math.log(n - 1)) + tau * rho


@register_loss("tempnet")
class TempNetLoss(ContrastiveLoss):
    """TempNet's robust contrastive loss with per-sample temperatures (Qiu et al., ICML 2024).

    ``½[mean_i L_i(a→b, τ^a) + mean_i L_i(b→a, τ^b)]`` with ``L_i`` of :func:`tempnet_rows`
    (METHODS.md §5). The temperatures come in as ``tau=(tau_a, tau_b)`` (``[B]`` each, e.g.
    ``TempNet(a)``, ``TempNet(b)``; one tensor means the same for both); the ``logit_scale``
    argument is not used (the temperature is per sample).

    Args:
        rho: the DRO radius ``ρ`` (default 8, the paper's 6–8).
        gather: local rows against all ranks' columns.

    Example:
        >>> a, b = torch.randn(4, 8), torch.randn(4, 8)
        >>> TempNetLoss()(a, b, 1.0, tau=torch.full((4,), 0.03)).ndim
        0
    """

    extras = ("tau",)
    requires = ("tau",)

    def __init__(self, rho: float = 8.0, gather: bool = False) -> None:
        super().__init__(gather)
        if not rho >= 0:
            raise ValueError(f"TempNetLoss: rho={rho} must be >= 0")
        self.rho = float(rho)

    def loss(self, v: Views, scale: Tensor, extra: dict[str, Any]) -> Tensor:
        if "tau" not in extra:
            raise TypeError("TempNetLoss needs tau=(tau_a, tau_b): per-sample temperatures [B] (from a TempNet)")
        tau = extra["tau"]
        tau_a, tau_b = (tau, tau) if isinstance(tau, Tensor) else tau
        n = v.a.shape[0]
        tau_a, tau_b = (torch.as_tensor(t, dtype=v.a.dtype, device=v.a.device).reshape(-1) for t in (tau_a, tau_b))
        if tau_a.shape[0] != n or tau_b.shape[0] != n:
            raise ValueError(f"TempNetLoss: tau must hold B={n} temperatures per view, got {tau_a.shape[0]} and "
                             f"{tau_b.shape[0]}")
        if not bool((tau_a > 0).all() and (tau_b > 0).all()):
            raise ValueError("TempNetLoss: temperatures must be > 0")
        la = tempnet_rows(v.a @ v.gb.T, v.diag, tau_a, self.rho)
        lb = tempnet_rows(v.b @ v.ga.T, v.diag, tau_b, self.rho)
        return 0.5 * (la.mean() + lb.mean())

    def extra_repr(self) -> str:
        return f"rho={self.rho}, gather={self.gather}"


# =============================================================================== on frozen features
@dataclass
class TempNetRun:
    """What :func:`train_tempnet` returns: the head, the temperature network and the history
    (one row per epoch: ``epoch``, ``loss``, ``tau_mean``, ``tau_min``, ``tau_max`` (over the train features), ``mAP``,
    ``rank-1``; epoch 0 = before training)."""

    head: nn.Module
    tempnet: TempNet
    history: pd.DataFrame

    def temperatures(self, features: Tensor | np.ndarray) -> np.ndarray:
        """Predicted ``τ`` of ``features`` (frozen-model features, as the head's input)."""
        return temperatures(self.tempnet, features, head=self.head)


@torch.no_grad()
def temperatures(tempnet: TempNet, features: Tensor | np.ndarray, *, head: nn.Module | None = None) -> np.ndarray:
    """``[N]`` temperatures TempNet predicts for ``features`` (passed through ``head`` first when given)."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    was = tempnet.training
    tempnet.eval()
    try:
        if head is not None:
            x = head(x)
        return tempnet(x).cpu().numpy()
    finally:
        tempnet.train(was)


def train_tempnet(data, *, epochs: int = 10, batch_size: int = 64, tau_min: float = 0.01, tau_max: float = 0.05,
                  rho: float = 8.0, lr: float = 2e-3, tempnet_lr: float | None = None, head: str = "linear",
                  hidden: int = 256, prototypes: int = 256, seed: int = 0) -> TempNetRun:
    """Train a lab head and a :class:`TempNet` on frozen features with :class:`TempNetLoss`.

    The lab's fairness rules hold (:mod:`cliptk.lab`): the head starts at the identity (epoch 0
    is the frozen baseline), batches are the lab's unique-identity batches of ``batch_size``
    pairs (:func:`cliptk.lab.batches`), AdamW, one CPU thread, seeded; the head is scored with
    :func:`cliptk.lab.evaluate_head` on the query/gallery features.

    Args:
        data: a :class:`cliptk.lab.LabData` (e.g. ``LabData.from_dataset(ds, ct.embed(model, ds))``).
        tau_min, tau_max, rho: TempNet's range and the DRO radius.
        lr, tempnet_lr: learning rates of the head and of TempNet (default: ``lr``).
        head, hidden: the lab head (``"linear"`` or ``"mlp"``) and TempNet's width.

    Returns:
        A :class:`TempNetRun`.

    Example:
        >>> from cliptk import lab
        >>> d = lab.planted_data(n_train_ids=20, n_test_ids=10, per_id=4, dim=16)
        >>> run = train_tempnet(d, epochs=1, batch_size=8, hidden=16, prototypes=8)
        >>> run.history["epoch"].tolist(), bool(0.01 <= run.history["tau_min"].iloc[-1])
        ([0, 1], True)
    """
    from . import lab  # the lab imports the losses; importing it here keeps `import cliptk.tempnet` light

    if not isinstance(data, lab.LabData):
        raise TypeError(f"train_tempnet: data must be a cliptk.lab.LabData, got {type(data).__name__}; build one "
                        "with LabData.from_dataset(dataset, features)")
    method = lab.LabMethod("TempNet", batching="unique", loss="infonce", batch_size=batch_size, head=head, lr=lr)
    codes = np.unique(data.train_pids, return_inverse=True)[1].reshape(-1)
    x = data.train
    loss_fn = TempNetLoss(rho=rho)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):   # seeded, dropout included; the caller's RNG is kept
            torch.manual_seed(seed)
            run = _fit_tempnet(data, x, codes, method, loss_fn, head, tau_min, tau_max, hidden, prototypes, lr,
                               tempnet_lr, epochs, batch_size, seed)
    finally:
        torch.set_num_threads(before)
    return run


def _fit_tempnet(data, x, codes, method, loss_fn, head, tau_min, tau_max, hidden, prototypes, lr, tempnet_lr,
                 epochs, batch_size, seed) -> TempNetRun:
    """The loop of :func:`train_tempnet` (inputs checked, RNG seeded, one thread)."""
    from . import lab

    h = lab.LabHead(x.shape[1], None, head, 256)
    net = TempNet(x.shape[1], tau_min, tau_max, hidden=hidden, prototypes=prototypes)
    opt = torch.optim.AdamW([{"params": h.proj.parameters(), "lr": lr},
                             *([{"params": h.mlp.parameters(), "lr": lr}] if h.mlp is not None else []),
                             {"params": net.parameters(), "lr": tempnet_lr or lr}], weight_decay=0.0)
    rows = []

    def record(epoch: int, loss: float) -> None:
        h.eval()
        tau = temperatures(net, x, head=h)
        res = lab.evaluate_head(h, data)
        rows.append({"epoch": epoch, "loss": loss, "tau_mean": float(tau.mean()), "tau_min": float(tau.min()),
                     "tau_max": float(tau.max()), "mAP": res.mAP, "rank-1": float(res.cmc[1])})

    record(0, float("nan"))
    for epoch in range(1, epochs + 1):
        h.train()
        net.train()
        plan = lab.batches(codes, method, seed, epoch)
        if not plan:
            raise ValueError(f"train_tempnet: no complete batch of {batch_size} pairs; lower batch_size")
        total = 0.0
        for ia, ib in plan:
            za, zb = h(x[torch.as_tensor(ia)]), h(x[torch.as_tensor(ib)])
            loss = loss_fn(za, zb, 1.0, tau=(net(za), net(zb)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        record(epoch, total / len(plan))
    h.eval()
    net.eval()
    return TempNetRun(h, net, pd.DataFrame(rows))
