"""The runtime's ALiBi bias equals the reference's, and its switches do what they say."""
import numpy as np
import pytest

from dinosaw_deploy.engine.bias import BiasConfig, attention_bias, distance_matrix, head_slopes

from .conftest import golden_cases, golden_sets


@pytest.mark.parametrize("root", golden_sets())
def test_bias_equals_golden(root):
    for name, case in golden_cases(root).items():
        h, w = (int(v) for v in case["grid"])
        ours = attention_bias(h, w, 6)
        assert ours.shape == (1, 1, 5 + h * w, 5 + h * w), name
        np.testing.assert_allclose(np.broadcast_to(ours, case["attn_bias"].shape), case["attn_bias"], atol=1e-7)
        if "dist_matrix" in case:
            np.testing.assert_allclose(distance_matrix(h, w), case["dist_matrix"], atol=1e-7)


def test_bias_structure():
    bias = distance_matrix(4, 6)
    assert np.all(bias[:5] == 0) and np.all(bias[:, :5] == 0)
    patch = bias[5:, 5:]
    assert patch.min() == pytest.approx(-1.0) and patch.max() == 0.0
    assert np.allclose(patch, patch.T)
    # toroidal: token (0, 0) is as far from (0, 5) as from (0, 1)
    assert patch[0, 5] == pytest.approx(patch[0, 1])


def test_switches_change_the_bias():
    base = distance_matrix(5, 7)
    no_wrap = distance_matrix(5, 7, wrap=False)
    manhattan = distance_matrix(5, 7, metric="manhattan")
    raw = distance_matrix(5, 7, normalize=False)
    assert not np.allclose(base, no_wrap)
    assert no_wrap[5, 5 + 6] == pytest.approx(-6 / np.hypot(4, 6))  # (0,0)-(0,6), no wrap, max at the corners
    assert manhattan[5, 5 + 1 * 7 + 1] == pytest.approx(-2 / (2 + 3))  # (0,0)-(1,1): 2 / max manhattan (2+3)
    assert raw.min() == pytest.approx(-np.hypot(2, 3))


def test_geometric_slopes_per_head():
    slopes = head_slopes(6, "geometric")
    np.testing.assert_allclose(slopes, [2 ** (-8 * (i + 1) / 6) for i in range(6)])
    bias = attention_bias(3, 3, 6, BiasConfig(slopes="geometric"))
    assert bias.shape == (1, 6, 14, 14)
    np.testing.assert_allclose(bias[0, 2], slopes[2] * distance_matrix(3, 3), rtol=1e-6)


def test_cached_and_read_only():
    a = attention_bias(8, 9, 6)
    assert attention_bias(8, 9, 6) is a
    with pytest.raises(ValueError):
        a[0, 0, 0, 0] = 1.0


def test_degenerate_and_invalid():
    assert np.all(distance_matrix(1, 1) == 0)
    with pytest.raises(ValueError):
        distance_matrix(0, 3)
    with pytest.raises(ValueError):
        BiasConfig(metric="cosine")
    with pytest.raises(ValueError):
        BiasConfig(slopes="learned")
