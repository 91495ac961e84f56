"""Per-sample temperature (cliptk.tempnet): TempNet's τ stays in its configured range, its loss is the
formula of METHODS.md §5 (written out again here, loop by loop), and it trains on frozen features."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cliptk import lab
from cliptk.losses import LOSSES, make_loss
from cliptk.tempnet import TempNet, TempNetLoss, train_tempnet
from cliptk.train import TrainConfig


def _reference(a, b, tau_a, tau_b, rho):
    """METHODS.md §5: L_i = τ_i·log(1/(B−1) Σ_{j≠i} exp((s_ij − s_ii)/τ_i)) + τ_i·ρ, s = cosine, both
    directions averaged; in plain Python floats."""
    def unit(m):
        return [[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in m]

    def direction(rows, cols, taus):
        n, out = len(rows), []
        for i in range(n):
            s = [sum(p * q for p, q in zip(rows[i], cols[j])) for j in range(n)]
            t = taus[i]
            mean = sum(math.exp((s[j] - s[i]) / t) for j in range(n) if j != i) / (n - 1)
            out.append(t * math.log(mean) + t * rho)
        return sum(out) / n

    a, b = unit(a.tolist()), unit(b.tolist())
    return 0.5 * (direction(a, b, tau_a.tolist()) + direction(b, a, tau_b.tolist()))


@pytest.mark.parametrize("rho", [0.0, 7.0])
def test_loss_equals_the_formula_on_fixed_inputs(rho):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    tau_a = torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05, 0.025], dtype=torch.float64)
    tau_b = torch.tensor([0.05, 0.015, 0.02, 0.03, 0.01, 0.045], dtype=torch.float64)
    got = TempNetLoss(rho=rho)(a, b, 1.0, tau=(tau_a, tau_b))
    assert got.item() == pytest.approx(_reference(a, b, tau_a, tau_b, rho), rel=1e-9)


def test_temperature_stays_in_its_range():
    net = TempNet(8, tau_min=0.01, tau_max=0.05, hidden=16, prototypes=8).eval()
    g = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1.0, 1e3, 1e6):
        tau = net(scale * torch.randn(64, 8, generator=g))
        assert bool(((tau >= 0.01) & (tau <= 0.05)).all()), scale
    with torch.no_grad():                      # push the output layer to saturate both ways
        for sign in (1e4, -1e4):
            net.out.bias.fill_(sign)
            tau = net(torch.randn(4, 8, generator=g))
            assert bool(((tau >= 0.01) & (tau <= 0.05)).all())
    with pytest.raises(ValueError, match="tau_min < tau_max"):
        TempNet(8, tau_min=0.05, tau_max=0.01)


def test_tempnet_input_is_detached_and_its_own_parameters_learn():
    net = TempNet(8, hidden=16, prototypes=8).eval()   # no dropout: both passes see the same temperatures
    z = torch.randn(6, 8, requires_grad=True)
    b = torch.randn(6, 8)
    loss = TempNetLoss(rho=8.0)(z, b, 1.0, tau=(net(z), net(b)))
    loss.backward()
    assert net.out.weight.grad is not None and net.out.weight.grad.abs().sum() > 0
    # z gets gradients through the similarities only, not through TempNet
    z2 = z.detach().clone().requires_grad_()
    TempNetLoss(rho=8.0)(z2, b, 1.0, tau=(net(z).detach(), net(b).detach())).backward()
    torch.testing.assert_close(z.grad, z2.grad)


def test_registered_and_needs_its_temperatures():
    assert LOSSES["tempnet"] is TempNetLoss and make_loss("tempnet", rho=6.0).rho == 6.0
    with pytest.raises(ValueError, match="tau="):      # fit() cannot make temperatures: refused up front
        TrainConfig(loss="tempnet")
    with pytest.raises(TypeError, match="tau="):
        TempNetLoss()(torch.randn(3, 4), torch.randn(3, 4), 1.0)


def test_trained_on_frozen_features_like_the_lab():
    data = lab.planted_data(n_train_ids=24, n_test_ids=12, per_id=4, dim=16, seed=0)
    run = train_tempnet(data, epochs=2, batch_size=8, tau_min=0.02, tau_max=0.2, hidden=16, prototypes=8)
    h = run.history
    assert h["epoch"].tolist() == [0, 1, 2]
    assert h.loc[0, "mAP"] == pytest.approx(lab.evaluate_head(None, data).mAP)   # epoch 0 = the frozen features
    assert np.isfinite(h.loc[1:, "loss"]).all()
    tau = run.temperatures(data.query)
    assert tau.shape == (len(data.query),) and ((tau >= 0.02) & (tau <= 0.2)).all()
    again = train_tempnet(data, epochs=2, batch_size=8, tau_min=0.02, tau_max=0.2, hidden=16, prototypes=8)
    assert again.history.equals(h)                                                 # seeded: repeats exactly
