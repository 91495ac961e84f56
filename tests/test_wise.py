"""WiSE-FT (cliptk.wise): the endpoints are the two models exactly, the middle is the weight average,
image-only and projection-less fine-tuned models are handled as documented, and the curve call writes the
chosen model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import cliptk as ct
from cliptk.synthetic import number_prompts
from cliptk.wise import wise_ft, wise_ft_curve
from conftest import make_model


def _images(model, n=3, seed=0):
    return torch.randn(n, 3, *model.image_size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pair():
    """A zero-shot model with both towers and a different ("fine-tuned") image-only one."""
    return make_model("cliptk-micro", seed=0), make_model("cliptk-micro", seed=1, image_only=True)


def test_alpha_0_is_the_zero_shot_model_exactly(pair):
    zs, ft = pair
    m = wise_ft(zs, ft, 0.0)
    a, b = m.state_dict(), zs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = _images(zs)
    assert torch.equal(m.encode_image(x), zs.encode_image(x))
    assert torch.equal(m.encode_text(["a red jersey"]), zs.encode_text(["a red jersey"]))


def test_alpha_1_is_the_fine_tuned_model_exactly_and_keeps_the_zero_shot_text_tower(pair):
    zs, ft = pair
    m = wise_ft(zs, ft, 1.0)
    a, f, z = m.state_dict(), ft.state_dict(), zs.state_dict()
    assert all(torch.equal(a[k], f[k]) for k in f)                     # every entry the fine-tuned model has
    text = [k for k in a if k not in f]
    assert text and all(torch.equal(a[k], z[k]) for k in text)         # the rest (text tower) from zero-shot
    x = _images(zs)
    assert torch.equal(m.encode_image(x), ft.encode_image(x))
    assert torch.equal(m.encode_text(["a red jersey"]), zs.encode_text(["a red jersey"]))


def test_middle_alpha_is_the_weight_average(pair):
    zs, ft = pair
    m = wise_ft(zs, ft, 0.3)
    for k in ("clip.visual.conv1.weight", "clip.logit_scale"):
        expected = 0.7 * zs.state_dict()[k] + 0.3 * ft.state_dict()[k]
        torch.testing.assert_close(m.state_dict()[k], expected)
    assert not torch.equal(m.state_dict()["clip.visual.conv1.weight"], zs.state_dict()["clip.visual.conv1.weight"])


def test_inputs_are_not_modified(pair):
    zs, ft = pair
    before = {k: v.clone() for k, v in zs.state_dict().items()}
    wise_ft(zs, ft, 0.5)
    assert all(torch.equal(before[k], v) for k, v in zs.state_dict().items())


def test_projectionless_fine_tuned_model_gives_a_projectionless_result(pair):
    zs, _ = pair
    ft = make_model("cliptk-micro", seed=2, image_only=True, projection=False)
    with pytest.warns(UserWarning, match="no output projection"):
        m = wise_ft(zs, ft, 1.0)
    assert not m.projection
    x = _images(zs)
    assert torch.equal(m.encode_image(x), ft.encode_image(x))


def test_bad_inputs_name_the_problem(pair):
    zs, ft = pair
    with pytest.raises(ValueError, match="alpha=1.5"):
        wise_ft(zs, ft, 1.5)
    with pytest.raises(ValueError, match="same architecture|is 'cliptk-micro' but"):
        wise_ft(zs, make_model("cliptk-tiny", image_only=True), 0.5)
    with pytest.raises(ValueError, match="projection that zero_shot lacks"):
        wise_ft(make_model("cliptk-micro", projection=False), ft, 0.5)


def test_curve_measures_every_alpha_and_writes_the_chosen_model(pair, tiny_players, tmp_path):
    zs, ft = pair
    prompts = dict(enumerate(number_prompts()))
    out = tmp_path / "wise.safetensors"
    curve = wise_ft_curve(zs, ft, tiny_players, alphas=(0, 0.5, 1), column="number", prompts=prompts,
                          choose=0.5, output=out)
    t = curve.table
    assert t["alpha"].tolist() == [0.0, 0.5, 1.0] and t["chosen"].tolist() == [False, True, False]
    assert np.isfinite(t[["mAP", "rank1", "zero_shot"]].to_numpy()).all()
    assert curve.alpha == 0.5 and curve.path == out
    # the endpoints of the curve are the two models' own numbers
    assert t["mAP"].iloc[0] == pytest.approx(ct.evaluate(zs, tiny_players, progress=False).mAP, abs=1e-6)
    assert t["mAP"].iloc[-1] == pytest.approx(ct.evaluate(ft, tiny_players, progress=False).mAP, abs=1e-6)
    loaded = ct.load_model("cliptk-micro", str(out))
    x = _images(zs)
    assert torch.allclose(loaded.encode_image(x), curve.model.encode_image(x), atol=1e-6)
    assert wise_ft_curve(zs, ft, tiny_players, alphas=(0, 1), choose="mAP").alpha in (0.0, 1.0)
