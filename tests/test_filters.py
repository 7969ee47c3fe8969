"""Classical filter bank: channel semantics against scipy/numpy references, and tiled == whole."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.schema import convert, to_builtins
from dinosaw_deploy.segment.bundle_schema import stored_filter_bank
from dinosaw_deploy.segment.filters import FilterBank, FilterBankConfig, membrane_taps, mirror_indices, padded_region
from dinosaw_deploy.synthetic import synthetic_micrograph


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    image, _ = synthetic_micrograph(190, 230, seed=3)
    return image.astype(np.float32) / 255


@pytest.fixture(scope="module")
def whole(gray) -> np.ndarray:
    return FilterBank()(gray)


def test_default_bank_has_isb_channels_without_sigma_truncation(whole, gray):
    bank = FilterBank()
    assert whole.shape == (74, *gray.shape) and whole.dtype == np.float32
    assert len(set(bank.names)) == 74
    assert bank.halo >= 4 * 32 + 2  # the local variance at σ 32 is the widest channel
    names = list(bank.names)
    raw, s1, s2 = (whole[names.index(f"gaussian_s{s}")] for s in (0, 1, 2))
    np.testing.assert_array_equal(raw, gray)
    assert np.abs(s1 - raw).max() > 0.05 and np.abs(s2 - s1).max() > 0.01  # σ1, σ2 are real blurs


def test_scale_channels_match_scipy_and_numpy(whole, gray):
    names = list(FilterBank().names)
    for sigma in (1, 4, 16):
        ref = ndimage.gaussian_filter(gray.astype(np.float64), sigma, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(whole[names.index(f"gaussian_s{sigma}")], ref, atol=1e-5)
    smooth = ndimage.gaussian_filter(gray.astype(np.float64), 2, mode="reflect")
    gy, gx = np.gradient(smooth)
    a, b, d = np.gradient(gy, axis=0), np.gradient(gy, axis=1), np.gradient(gx, axis=1)
    root = np.sqrt((a - d) ** 2 + 4 * b * b)
    expected = {"hessian_eig1": (a + d + root) / 2, "hessian_eig2": (a + d - root) / 2,
                "hessian_mod": np.sqrt(a * a + b * b + d * d), "hessian_trace": a + d, "hessian_det": a * d - b * b}
    inner = (slice(3, -3), slice(3, -3))  # numpy.gradient is one-sided at the border
    for key, ref in expected.items():
        np.testing.assert_allclose(whole[names.index(f"{key}_s2")][inner], ref[inner], atol=1e-5)
    sobel = np.hypot(ndimage.sobel(smooth, axis=0), ndimage.sobel(smooth, axis=1)) / 8
    np.testing.assert_allclose(whole[names.index("gradient_s2")], sobel, atol=1e-5)
    dog = whole[names.index("dog_s1_s8")]
    np.testing.assert_allclose(dog, whole[names.index("gaussian_s1")] - whole[names.index("gaussian_s8")], atol=1e-6)


def test_structure_tensor_and_variance_match_scipy(whole, gray):
    names = list(FilterBank().names)
    image = gray.astype(np.float64)
    gy, gx = np.gradient(ndimage.gaussian_filter(image, 1, mode="reflect"))
    for rho in (1, 4):
        a, b, d = (ndimage.gaussian_filter(p, rho, mode="reflect") for p in (gy * gy, gy * gx, gx * gx))
        root = np.sqrt((a - d) ** 2 + 4 * b * b)
        # away from the border, where scipy mirrors the product gy * gx instead of the image
        inner = (slice(4 * rho + 3, -4 * rho - 3),) * 2
        np.testing.assert_allclose(whole[names.index(f"structure_l1_r{rho}")][inner], ((a + d + root) / 2)[inner],
                                   atol=1e-6)
        np.testing.assert_allclose(whole[names.index(f"structure_l2_r{rho}")][inner], ((a + d - root) / 2)[inner],
                                   atol=1e-6)
    for sigma in (1, 32):
        mean = ndimage.gaussian_filter(image, sigma, mode="reflect")
        variance = ndimage.gaussian_filter(image * image, sigma, mode="reflect") - mean * mean
        np.testing.assert_allclose(whole[names.index(f"variance_s{sigma}")], variance, atol=2e-6)
    assert (whole[names.index("variance_s4")] >= 0).all()


def test_membrane_projections_match_brute_force(whole, gray):
    taps = membrane_taps(15, 30)
    assert len(taps) == 30 and all(len(t) == 15 for t in taps)
    assert taps[0] == tuple((t, 0) for t in range(-7, 8))  # 0°: the vertical line
    padded = np.pad(gray.astype(np.float64), 7, mode="symmetric")
    h, w = gray.shape
    resp = np.stack([sum(padded[7 + dy : 7 + dy + h, 7 + dx : 7 + dx + w] for dy, dx in angle) for angle in taps])
    refs = [resp.mean(0), resp.max(0), resp.min(0), resp.sum(0), resp.std(0), np.median(resp, 0)]
    first = list(FilterBank().names).index("membrane_mean")
    for channel, ref in zip(whole[first : first + 6], refs):
        np.testing.assert_allclose(channel, ref, atol=2e-4, rtol=1e-5)


@pytest.mark.parametrize("tile", [(64, 64), (77, 101)])
def test_tiled_equals_whole(whole, gray, tile):
    bank = FilterBank()
    out = np.full_like(whole, np.nan)
    for y in range(0, gray.shape[0], tile[0]):
        for x in range(0, gray.shape[1], tile[1]):
            box = (y, min(y + tile[0], gray.shape[0]), x, min(x + tile[1], gray.shape[1]))
            out[:, box[0] : box[1], box[2] : box[3]] = bank.region(gray, box)
    assert np.abs(out - whole).max() <= 1e-5


def test_image_smaller_than_halo_and_padding():
    rng = np.random.default_rng(0)
    tiny = rng.random((9, 13), dtype=np.float32)
    assert np.array_equal(mirror_indices(-3, 3, 2), [1, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(padded_region(tiny, (0, 9, 0, 13), 20), np.pad(tiny, 20, mode="symmetric"))
    feats = FilterBank()(tiny)
    assert feats.shape == (74, 9, 13) and np.isfinite(feats).all()
    np.testing.assert_allclose(FilterBank().region(tiny, (2, 7, 5, 13)), feats[:, 2:7, 5:13], atol=1e-5)


def test_config_roundtrip_and_validation():
    config = FilterBankConfig(sigmas=(0, 2, 1), membrane_angles=12, structure_scales=(), variance_sigmas=(4, 1))
    assert config.sigmas == (0.0, 1.0, 2.0) and config.variance_sigmas == (1.0, 4.0)
    assert convert(to_builtins(config), FilterBankConfig, "filter_bank") == config
    bank = FilterBank(config)
    assert bank.num_channels == 3 * 7 + 1 + 6 + 2 and bank.halo == 16 + 2  # radius int(4σ + 0.5) + derivatives
    assert FilterBank(FilterBankConfig(sigmas=(0, 1), structure_scales=(8,), variance_sigmas=())).halo == 32 + 1 + 4
    old = {"sigmas": [0, 1, 2, 4, 8, 16], "truncate": 4.0, "membrane_length": 15, "membrane_angles": 30}
    assert FilterBank(convert(stored_filter_bank(old), FilterBankConfig, "f")).num_channels == 58  # older bundles
    for bad in ({"sigmas": (1, 1)}, {"sigmas": (-1,)}, {"membrane_length": 4}, {"structure_scales": (0,)},
                {"variance_sigmas": (2, 2)}):
        with pytest.raises(DinosawError):
            FilterBankConfig(**bad)
    with pytest.raises(DinosawError, match="filter_bank: filter sigmas must be distinct"):
        convert({"sigmas": [1, 1.0]}, FilterBankConfig, "filter_bank")
    with pytest.raises(DinosawError, match=r"filter_bank: sigmas\[0\]: expected `float` <= 64.0"):
        convert({"sigmas": [100]}, FilterBankConfig, "filter_bank")
    with pytest.raises(DinosawError):
        FilterBank()(np.zeros((4, 4, 3)))
