"""Tests for cliptk.losses against open_clip, hand formulas and brute-force loops of the papers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cliptk.losses import (
    LOSSES,
    ContrastiveLoss,
    DecoupledSoftmax,
    GISTFilter,
    GuidedInfoNCE,
    InfoNCE,
    LogitScale,
    SoftTargetInfoNCE,
    SupCon,
    Views,
    make_loss,
    register_loss,
)

B, D = 6, 5


def _pair(seed: int = 0, n: int = B, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=dtype), torch.randn(n, D, generator=g, dtype=dtype)


def _sims(a: torch.Tensor, b: torch.Tensor, scale: float) -> np.ndarray:
    """Scaled cosine similarity matrix as float64 numpy (independent of the loss code)."""
    an = a.double().numpy() / np.linalg.norm(a.double().numpy(), axis=1, keepdims=True)
    bn = b.double().numpy() / np.linalg.norm(b.double().numpy(), axis=1, keepdims=True)
    return scale * an @ bn.T


def _no_mask_guide(n: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    e = torch.eye(n, dtype=torch.float64)  # guide similarity 0 off-diagonal, 1 on it
    return e, e


# --------------------------------------------------------------------------- reductions to InfoNCE
@pytest.mark.parametrize(
    "make, kwargs",
    [
        (lambda: SupCon(), {"ids": torch.tensor([5, 3, 9, 0, 7, 1])}),
        (lambda: SupCon(), {}),
        (lambda: DecoupledSoftmax(), {"ids": torch.tensor([5, 3, 9, 0, 7, 1])}),
        (lambda: SoftTargetInfoNCE(), {"targets": torch.eye(B, dtype=torch.float64)}),
        (lambda: GuidedInfoNCE(margin=0.5), {"guide": _no_mask_guide()}),
    ],
    ids=["supcon", "supcon-noids", "decoupled", "soft-identity", "gist-nomask"],
)
def test_one_positive_per_row_equals_infonce(make, kwargs):
    a, b = _pair()
    a.requires_grad_(True)
    ref = InfoNCE(label_smoothing=0.0)(a, b, 7.3)
    (ga,) = torch.autograd.grad(ref, a)
    got = make()(a, b, 7.3, **kwargs)
    (gg,) = torch.autograd.grad(got, a)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(gg, ga)


def test_infonce_matches_open_clip_cliploss():
    open_clip_loss = pytest.importorskip("open_clip.loss")
    a, b = _pair(1, n=9, dtype=torch.float32)
    scale = torch.tensor(14.2857)
    ref = open_clip_loss.ClipLoss()(F.normalize(a, dim=-1), F.normalize(b, dim=-1), scale)
    torch.testing.assert_close(InfoNCE(label_smoothing=0.0)(a, b, scale), ref)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_infonce_label_smoothing_hand_formula(eps):
    a, b = _pair(2)
    s = _sims(a, b, 11.0)

    def smoothed_ce(m: np.ndarray) -> float:
        logp = m - np.log(np.exp(m).sum(1, keepdims=True))
        n = m.shape[0]
        target = (1 - eps) * np.eye(n) + eps / n  # smoothing spreads ε over all n classes
        return float(-(target * logp).sum(1).mean())

    expected = 0.5 * (smoothed_ce(s) + smoothed_ce(s.T))
    assert InfoNCE(label_smoothing=eps)(a, b, 11.0).item() == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------------- brute force vs paper formulas
IDS_DUP = torch.tensor([4, 4, 2, 7, 2, 4])


def test_supcon_cross_matches_brute_force():
    a, b = _pair(3)
    s, ids = _sims(a, b, 5.0), IDS_DUP.tolist()

    def direction(m: np.ndarray) -> float:
        total = 0.0
        for i in range(B):
            pos = [p for p in range(B) if ids[p] == ids[i]]
            denom = sum(math.exp(m[i, k]) for k in range(B))
            total += -sum(math.log(math.exp(m[i, p]) / denom) for p in pos) / len(pos)
        return total / B

    expected = 0.5 * (direction(s) + direction(s.T))
    assert SupCon(views="cross")(a, b, 5.0, ids=IDS_DUP).item() == pytest.approx(expected, rel=1e-10)


def test_supcon_all_views_matches_paper_formula():
    a, b = _pair(4)
    z = torch.cat([a, b])
    s = _sims(z, z, 5.0)
    ids = IDS_DUP.tolist() * 2
    n = 2 * B
    total = 0.0
    for i in range(n):  # Khosla et al. eq. 2: A(i) = all views but i, P(i) = same label in A(i)
        others = [k for k in range(n) if k != i]
        pos = [p for p in others if ids[p] == ids[i]]
        denom = sum(math.exp(s[i, k]) for k in others)
        total += -sum(math.log(math.exp(s[i, p]) / denom) for p in pos) / len(pos)
    expected = total / n
    assert SupCon(views="all")(a, b, 5.0, ids=IDS_DUP).item() == pytest.approx(expected, rel=1e-10)


def test_decoupled_matches_brute_force():
    a, b = _pair(5)
    s, ids = _sims(a, b, 6.0), IDS_DUP.tolist()

    def direction(m: np.ndarray) -> float:
        total = 0.0
        for i in range(B):
            pos = [p for p in range(B) if ids[p] == ids[i]]
            neg = sum(math.exp(m[i, k]) for k in range(B) if ids[k] != ids[i])
            total += -sum(math.log(math.exp(m[i, p]) / (math.exp(m[i, p]) + neg)) for p in pos) / len(pos)
        return total / B

    expected = 0.5 * (direction(s) + direction(s.T))
    assert DecoupledSoftmax()(a, b, 6.0, ids=IDS_DUP).item() == pytest.approx(expected, rel=1e-10)
    # and it differs from SupCon when rows have several positives (the denominators differ)
    assert abs(SupCon()(a, b, 6.0, ids=IDS_DUP).item() - expected) > 1e-3


def test_decoupled_row_without_negatives_is_zero():
    a, b = _pair(6)
    a.requires_grad_(True)
    loss = DecoupledSoftmax()(a, b, 10.0, ids=torch.zeros(B, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(a.grad).all()


def test_soft_target_cwcl_weights_match_brute_force():
    a, b = _pair(7)
    ta, tb = _pair(8)
    s = _sims(a, b, 9.0)
    t = (1 + _sims(ta, tb, 1.0)) / 2  # CWCL: w_ij = (1 + <q_i, q_j>) / 2, rows normalised

    def direction(m: np.ndarray, w: np.ndarray) -> float:
        w = w / w.sum(1, keepdims=True)
        logp = m - np.log(np.exp(m).sum(1, keepdims=True))
        return float(-(w * logp).sum(1).mean())

    expected = 0.5 * (direction(s, t) + direction(s.T, t.T))
    loss = SoftTargetInfoNCE()
    assert loss(a, b, 9.0, teacher=(ta, tb)).item() == pytest.approx(expected, rel=1e-10)
    # the same targets given as a matrix (unnormalised) give the same loss
    assert loss(a, b, 9.0, targets=torch.from_numpy(t)).item() == pytest.approx(expected, rel=1e-10)


def test_soft_target_needs_exactly_one_target_source():
    a, b = _pair(9)
    with pytest.raises(TypeError, match="exactly one"):
        SoftTargetInfoNCE()(a, b, 5.0)
    with pytest.raises(ValueError, match="non-negative"):
        SoftTargetInfoNCE()(a, b, 5.0, targets=-torch.eye(B))


# --------------------------------------------------------------------------- GIST
def _planted_guide() -> tuple[torch.Tensor, torch.Tensor]:
    """Rows 0 and 1 are the same player under the guide; everybody else is orthogonal."""
    base = torch.eye(B, dtype=torch.float64)
    base[1] = base[0] + 0.05 * base[1]  # near-duplicate of identity 0
    return base.clone(), base.clone()


def test_gist_mask_on_planted_case():
    ga, gb = _planted_guide()
    expected = torch.zeros(B, B, dtype=torch.bool)
    expected[0, 1] = expected[1, 0] = True
    assert torch.equal(GISTFilter(margin=0.1)(ga, gb), expected)
    # g_01 = cos = 0.9988 vs g_00 = 1: a margin of 0 keeps it (not above), a margin of 0.01 drops it
    assert not GISTFilter(margin=0.0)(ga, gb).any()
    assert torch.equal(GISTFilter(margin=0.002, strategy="relative")(ga, gb), expected)


def test_gist_loss_matches_brute_force_and_reports_rate():
    a, b = _pair(10)
    ga, gb = _planted_guide()
    masked = {(0, 1), (1, 0)}
    s = _sims(a, b, 8.0)

    def direction(m: np.ndarray) -> float:
        total = 0.0
        for i in range(B):
            keep = [j for j in range(B) if (i, j) not in masked]
            total += -math.log(math.exp(m[i, i]) / sum(math.exp(m[i, j]) for j in keep))
        return total / B

    loss = GuidedInfoNCE(margin=0.1)
    got = loss(a, b, 8.0, guide=(ga, gb))
    assert got.item() == pytest.approx(0.5 * (direction(s) + direction(s.T)), rel=1e-10)
    assert loss.last_mask_rate == pytest.approx(2 / (B * B - B))
    assert loss.last_mask is not None and loss.last_mask[0, 1] and not loss.last_mask[0, 0]


def test_gist_within_blocks_match_brute_force():
    a, b = _pair(11)
    ga, gb = _no_mask_guide()
    sab, saa, sbb = _sims(a, b, 4.0), _sims(a, a, 4.0), _sims(b, b, 4.0)

    def direction(cross: np.ndarray, within: np.ndarray) -> float:
        total = 0.0
        for i in range(B):  # candidates: all of the other view + the same view minus itself
            denom = sum(math.exp(cross[i, j]) for j in range(B)) + sum(math.exp(within[i, j]) for j in range(B) if j != i)
            total += -math.log(math.exp(cross[i, i]) / denom)
        return total / B

    expected = 0.5 * (direction(sab, saa) + direction(sab.T, sbb))
    got = GuidedInfoNCE(margin=0.5, within=True)(a, b, 4.0, guide=(ga, gb))
    assert got.item() == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------------- numerical robustness
ALL_LOSSES = [
    ("infonce", {}, {}),
    ("supcon", {}, {"ids": IDS_DUP}),
    ("supcon", {"views": "all"}, {"ids": IDS_DUP}),
    ("decoupled", {}, {"ids": IDS_DUP}),
    ("soft", {}, {"teacher": _pair(12)}),
    ("gist", {"margin": 0.1}, {"guide": _planted_guide()}),
    ("gist", {"margin": 0.1, "within": True}, {"guide": _planted_guide()}),
]


@pytest.mark.parametrize("name, kwargs, inputs", ALL_LOSSES)
@pytest.mark.parametrize("scale", [1e-3, 100.0, 1e4, "clamped"])
def test_gradients_finite_for_extreme_scales(name, kwargs, inputs, scale):
    a, b = _pair(13, dtype=torch.float32)
    a.requires_grad_(True)
    b.requires_grad_(True)
    if scale == "clamped":
        ls = LogitScale()
        with torch.no_grad():
            ls.log_scale.fill_(math.log(1e4))  # as if an optimiser had pushed it past the cap
        scale_t = ls()
        assert scale_t.item() == pytest.approx(100.0)
    else:
        scale_t = torch.tensor(scale, requires_grad=True)
    loss = make_loss(name, **kwargs)(a, b, scale_t, **inputs)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


@pytest.mark.parametrize("name, kwargs, inputs", ALL_LOSSES)
def test_gradients_finite_for_identical_embeddings(name, kwargs, inputs):
    a = torch.ones(B, D, requires_grad=True)
    b = torch.ones(B, D, requires_grad=True)
    loss = make_loss(name, **kwargs)(a, b, 100.0, **inputs)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    if name == "infonce":  # all logits equal: loss = (1-ε)·log B + ε·log B = log B
        assert loss.item() == pytest.approx(math.log(B), rel=1e-6)


# --------------------------------------------------------------------------- LogitScale
def test_logit_scale_init_and_clamps():
    s = LogitScale()
    assert s().item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert s.temperature == pytest.approx(0.07, rel=1e-6)
    assert [n for n, _ in s.named_parameters()] == ["log_scale"]
    with torch.no_grad():
        s.log_scale.fill_(math.log(1e4))
    assert s().item() == pytest.approx(100.0)  # forward clamps the value
    s.clamp_()
    assert s.log_scale.item() == pytest.approx(math.log(100.0))  # the parameter itself, as open_clip does
    with torch.no_grad():
        s.log_scale.fill_(-5.0)
    assert s().item() == pytest.approx(1.0)  # lower bound min_scale=1


def test_logit_scale_fixed_and_gradient():
    fixed = LogitScale(init=20.0, learnable=False)
    assert list(fixed.parameters()) == [] and fixed().item() == pytest.approx(20.0)
    learn = LogitScale(init=10.0)
    a, b = _pair(14, dtype=torch.float32)
    InfoNCE()(a, b, learn()).backward()
    assert learn.log_scale.grad is not None and learn.log_scale.grad.item() != 0.0


def test_logit_scale_rejects_out_of_range_init():
    with pytest.raises(ValueError, match="init=10000"):
        LogitScale(init=1e4)


# --------------------------------------------------------------------------- registry & errors
def test_make_loss_registry():
    # the built-in losses; modules that define more (cliptk.tempnet, cliptk.train.distill) register theirs on import
    assert {"infonce", "supcon", "decoupled", "soft", "gist"} <= set(LOSSES)
    assert isinstance(make_loss("InfoNCE", label_smoothing=0.0), InfoNCE)
    assert make_loss("supcon").needs_ids and make_loss("decoupled").needs_ids
    assert make_loss("gist").extras == ("guide",)
    with pytest.raises(ValueError, match="choose one of"):
        make_loss("triplet")


def test_input_errors_are_explicit():
    a, b = _pair(15)
    with pytest.raises(TypeError, match="unexpected extra"):
        InfoNCE()(a, b, 5.0, guide=(a, b))
    with pytest.raises(ValueError, match="equal shapes"):
        InfoNCE()(a, b[:3], 5.0)
    with pytest.raises(ValueError, match="ids must have"):
        SupCon()(a, b, 5.0, ids=torch.arange(3))
    with pytest.raises(ValueError, match="scalar"):
        InfoNCE()(a, b, torch.ones(2))
    with pytest.raises(ValueError, match="label_smoothing"):
        InfoNCE(label_smoothing=1.0)


# --------------------------------------------------------------------------- adding a loss
@pytest.fixture
def registry():
    """LOSSES as it was before the test (a test that registers a loss must not leak it)."""
    before = dict(LOSSES)
    yield LOSSES
    LOSSES.clear()
    LOSSES.update(before)


def test_requires_names_the_inputs_a_training_loop_must_make():
    builtin = ("infonce", "supcon", "decoupled", "soft", "gist")   # others may be registered by then (see above)
    assert {name: LOSSES[name].requires for name in builtin} == {
        "infonce": (), "supcon": (), "decoupled": (), "soft": ("teacher",), "gist": ("guide",)}
    assert ContrastiveLoss.requires == () and all(set(c.requires) <= set(c.extras) for c in LOSSES.values())
    assert all(issubclass(c, ContrastiveLoss) for c in LOSSES.values())


def test_a_registered_loss_is_built_by_make_loss_and_exact_as_a_formula(registry):
    @register_loss("One-Way ")  # names are stored lower-cased and stripped, as make_loss looks them up
    class OneWay(ContrastiveLoss):
        def loss(self, v: Views, scale, extra):
            return F.cross_entropy(scale * v.a @ v.gb.T, v.diag)

    assert LOSSES["one-way"] is OneWay
    assert "one-way" in str(pytest.raises(ValueError, make_loss, "triplet").value)  # listed among the choices
    a, b = _pair(16)
    s = _sims(a, b, 7.0)
    a.requires_grad_(True)
    got = make_loss("One-Way", gather=False)(a, b, 7.0)
    expected = float(np.mean(np.log(np.exp(s).sum(1)) - np.diag(s)))  # a→b cross-entropy, by hand
    assert got.item() == pytest.approx(expected, rel=1e-10)
    got.backward()
    assert torch.isfinite(a.grad).all()
    with pytest.raises(TypeError, match="unexpected extra"):  # forward's checks come with the base class
        OneWay()(a, b, 7.0, guide=(a, b))
    # a re-run notebook cell defines the class again: re-registering it replaces the old one
    replaced = register_loss("one-way", type("OneWay", (OneWay,), {"__qualname__": OneWay.__qualname__}))
    assert LOSSES["one-way"] is replaced


def test_register_loss_rejects_what_make_loss_could_not_use(registry):
    class NoFormula(ContrastiveLoss):
        pass

    class Needs(ContrastiveLoss):
        requires = ("guide",)  # but not in extras: forward would reject guide=

        def loss(self, v, scale, extra):
            return scale * 0

    with pytest.raises(TypeError, match="implement loss"):
        register_loss("none", NoFormula)
    with pytest.raises(TypeError, match="ContrastiveLoss"):
        register_loss("module", torch.nn.MSELoss)
    with pytest.raises(ValueError, match="not in"):
        register_loss("needs", Needs)
    with pytest.raises(ValueError, match="already"):
        register_loss("infonce", type("Other", (InfoNCE,), {}))
    register_loss("infonce", type("Other", (InfoNCE,), {}), replace=True)
    assert LOSSES["infonce"].__name__ == "Other"
    with pytest.raises(NotImplementedError, match="implement loss"):
        NoFormula()(*_pair(17), 1.0)
