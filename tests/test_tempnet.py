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
from conftest import make_model


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
    with pytest.raises(ValueError, match="image-image pairs"):   # only TempNetTrainer makes the temperatures
        TrainConfig(loss="tempnet", objective="image_text")
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


# --------------------------------------------------------------------------- TempNet inside fit, from a config
NET = {"tau_min": 0.02, "tau_max": 0.08, "hidden": 16, "prototypes": 8}


def _tempnet_cfg(**kw):
    return TrainConfig(batch_size=4, epochs=1, max_steps=6, eval_before=False, eval_every=0, progress=False,
                       device="cpu", lr=1e-3, loss="tempnet", loss_kwargs={**NET, "rho": 6.0}, **kw)


def _stop_at(step):
    def callback(event):
        if event["event"] == "step_end" and event["step"] == step:
            raise KeyboardInterrupt
    return callback


def test_fit_trains_a_per_sample_temperature_from_the_config(tiny_players):
    """trainer_for(loss="tempnet"): the tower and model.tempnet both train, every batch's mean
    temperature stays in the configured range, and the loss is TempNetLoss of the batch at the
    temperatures model.tempnet gives (recomputed here for the first batch's model state)."""
    from cliptk.train import TempNetTrainer, fit, trainer_for

    cfg = _tempnet_cfg()
    assert trainer_for(cfg) is TempNetTrainer
    model = make_model("cliptk-micro", seed=0, image_only=True)
    h = fit(model, tiny_players, cfg.replace(max_steps=1), trainer=trainer_for(cfg))   # the trainer adds the network
    net = model.tempnet
    assert isinstance(net, TempNet) and (net.tau_min, net.tau_max) == (0.02, 0.08)
    tower0 = {k: v.clone() for k, v in model.visual.state_dict().items()}
    net0 = {k: v.clone() for k, v in net.state_dict().items()}
    h = fit(model, tiny_players, cfg, trainer=trainer_for(cfg))      # and trains the one it finds
    assert model.tempnet is net
    assert any(not torch.equal(net0[k], v) for k, v in net.state_dict().items())       # the network trained
    assert any(not torch.equal(tower0[k], v) for k, v in model.visual.state_dict().items())   # the tower trained
    taus = h.steps["tau_mean"]
    assert len(taus) == 6 and taus.between(0.02, 0.08).all() and np.isfinite(h.steps["loss"]).all()


def test_the_step_loss_is_tempnet_loss_at_the_networks_temperatures(tiny_players):
    from cliptk.train import TempNetTrainer

    cfg = _tempnet_cfg()
    model = make_model("cliptk-micro", seed=0, image_only=True)
    trainer = TempNetTrainer(model, tiny_players, cfg)
    batch = next(iter(trainer.batches()))
    model.eval()   # no dropout in the network: the two computations see the same function
    loss, logs = trainer.compute_loss(batch)
    images, ids, _ = batch
    with torch.no_grad():
        emb = model(images).float()
    a, b = emb[: len(ids)], emb[len(ids):]
    tau_a = model.tempnet(torch.nn.functional.normalize(a, dim=-1))
    tau_b = model.tempnet(torch.nn.functional.normalize(b, dim=-1))
    want = TempNetLoss(rho=6.0)(a, b, 1.0, tau=(tau_a, tau_b))
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert float(logs["tau_mean"]) == pytest.approx(0.5 * (tau_a.mean() + tau_b.mean()).item(), rel=1e-5)


def test_an_interrupted_tempnet_run_resumes_exactly(tiny_players, tmp_path):
    """The network is part of the checkpoint: stop at step 3, resume into a differently
    initialised model, end with the weights (tower and network) of an uninterrupted run."""
    from cliptk.train import fit, trainer_for

    cfg = _tempnet_cfg()
    full = make_model("cliptk-micro", seed=0, image_only=True)
    h_full = fit(full, tiny_players, cfg, trainer=trainer_for(cfg))
    run = cfg.replace(output_dir=str(tmp_path / "run"))
    cut = make_model("cliptk-micro", seed=0, image_only=True)
    part = fit(cut, tiny_players, run, trainer=trainer_for(run), callbacks=[_stop_at(3)])
    assert part.interrupted
    resumed = make_model("cliptk-micro", seed=7, image_only=True)
    h = fit(resumed, tiny_players, run, trainer=trainer_for(run), resume=tmp_path / "run")
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert any(k.startswith("tempnet.") for k in resumed.state_dict())
    np.testing.assert_array_equal(h.steps["tau_mean"], h_full.steps["tau_mean"])


def test_tempnet_configs_are_refused_where_they_would_be_half_used(tiny_players):
    from cliptk.train import Trainer, TempNetTrainer, fit

    model = make_model("cliptk-micro", seed=0, image_only=True)
    with pytest.raises(ValueError, match="TempNetTrainer"):          # the plain loop cannot make temperatures
        fit(model, tiny_players, _tempnet_cfg(), trainer=Trainer)
    with pytest.raises(ValueError, match=r"\['tau_range'\].*tau_min"):   # a typo in loss_kwargs is named
        TempNetTrainer(model, tiny_players, _tempnet_cfg().replace(loss_kwargs={"tau_range": 1}))
    with pytest.raises(ValueError, match="tau_min < tau_max"):
        TempNetTrainer(model, tiny_players, _tempnet_cfg().replace(loss_kwargs={"tau_min": 0.1, "tau_max": 0.05}))
