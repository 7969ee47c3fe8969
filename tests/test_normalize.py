"""Intensity normalisation as a model setting: the rules, the bundle, scans of another exposure,
the training-histogram warning, and feature stores fitted under another range."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from scipy import ndimage as ndi

from dinosaw_deploy.cli import main
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.intensity import (
    ROBUST_PERCENTILES,
    fit_intensity_range,
    histogram_shift,
    intensity_histogram,
    percentiles_of,
)
from dinosaw_deploy.image.reader import ArrayRegions
from dinosaw_deploy.segment.bundle import CONFIG, bundle_bytes, read_bundle
from dinosaw_deploy.segment.classifier import ClassifierParams
from dinosaw_deploy.segment.job import SHIFT_WARNING
from dinosaw_deploy.segment.metrics import class_iou
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles
from dinosaw_deploy.tiling.store import ArrayGrid

FAST = ClassifierParams(rounds=20)


def test_each_rule_fits_its_range():
    rng = np.random.default_rng(0)
    image = rng.integers(40, 200, (300, 400)).astype(np.uint8)
    image[0, 0], image[0, 1] = 0, 255  # two outliers: min/max see them, the percentile rule does not
    source = ArrayRegions(image)
    values = image.astype(np.float64)
    assert fit_intensity_range(source, normalize="dtype") == (0.0, 255.0)
    assert fit_intensity_range(source, normalize="minmax") == (0.0, 255.0)
    assert fit_intensity_range(source, normalize="percentile") == tuple(np.percentile(values, ROBUST_PERCENTILES))
    lo, hi = fit_intensity_range(source, normalize="zscore")
    assert (lo + hi) / 2 == pytest.approx(values.mean()) and (hi - lo) / 6 == pytest.approx(values.std())
    flat = ArrayRegions(np.full((8, 8), 7, np.uint16))
    for rule in ("minmax", "percentile", "zscore"):
        assert fit_intensity_range(flat, normalize=rule) == (7.0, 8.0)
    with pytest.raises(DinosawError, match="unknown intensity normalisation 'auto'"):
        fit_intensity_range(source, normalize="auto")


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.bool_])
def test_integer_percentiles_equal_numpys(dtype):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype) if dtype != np.bool_ else None
    for size in (1, 2, 7, 10_001):
        values = (rng.integers(0, 2, size) if info is None else rng.integers(info.min, info.max, size)).astype(dtype)
        qs = (0.0, 0.5, 33.3, 99.5, 100.0)
        np.testing.assert_allclose(percentiles_of(values, qs), np.percentile(values.astype(np.float64), qs))


def test_gain_and_offset_do_not_change_a_stretched_models_labels():
    image, truth = synthetic_micrograph(192, 256, seed=4)
    scribbles = synthetic_scribbles(truth, fraction=0.03, seed=4)
    darker = image.astype(np.float32) * 0.6 + 11.0  # another session: gain and offset (kept exact as floats)
    same = Segmenter(normalize="minmax", classifier=FAST).fit(image.astype(np.float32), scribbles)
    changed = same.predict(darker) != same.predict(image.astype(np.float32))
    assert changed.mean() < 1e-3  # float rounding of the stretched values can flip a pixel on a class border
    plain = Segmenter(normalize="dtype", classifier=FAST).fit(image, scribbles)
    assert (plain.predict(np.rint(darker).astype(np.uint8)) != plain.predict(image)).mean() > 0.05


def _scene(seed: int, n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Three noisy classes in 32-px blocks (class 2 the brightest and noisiest)."""
    rng = np.random.default_rng(seed)
    regions = ndi.zoom(rng.integers(0, 3, (8, 8)), n // 8, order=0)
    base = np.array([60, 130, 190])[regions] + rng.normal(0, 60, (n, n)) * np.array([1.0, 0.5, 1.5])[regions]
    return np.clip(ndi.gaussian_filter(base, 1.0), 0, 255).astype(np.uint8), regions


def _points(truth: np.ndarray, classes: list[int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(truth.shape, np.uint8)
    for c in classes:
        ys, xs = np.nonzero(truth == c)
        pick = rng.choice(len(ys), 200, replace=False)
        labels[ys[pick], xs[pick]] = c + 1
    return labels


def test_a_class_never_scribbled_in_a_darker_image_is_still_found_there():
    """Image B (a darker session) holds class 3 but has no scribbles of it: under the dtype rule its
    class-3 pixels look like A's class 2 and are lost; the percentile rule finds them."""
    a, truth_a = _scene(1)
    b, truth_b = _scene(2)
    b = np.clip(b * 0.7 + 10, 0, 255).astype(np.uint8)
    labels = [_points(truth_a, [0, 1, 2], 0), _points(truth_b, [0, 1], 1)]
    iou = {rule: class_iou(Segmenter(normalize=rule, classifier=FAST).fit([a, b], labels).predict(b) - 1, truth_b)[2]
           for rule in ("dtype", "percentile")}
    assert iou["percentile"] > 0.9
    assert iou["dtype"] < 0.5


def test_the_rule_and_the_training_histogram_travel_in_the_bundle():
    image, truth = synthetic_micrograph(128, 160, seed=2)
    seg = Segmenter(normalize="zscore", classifier=FAST).fit(image, synthetic_scribbles(truth, fraction=0.03, seed=2))
    loaded = Segmenter.from_bytes(seg.to_bytes())
    assert loaded.normalize == "zscore"
    np.testing.assert_allclose(loaded.intensity_histogram, seg.intensity_histogram)
    np.testing.assert_array_equal(loaded.predict(image), seg.predict(image))
    assert seg.intensity_shift(seg.prepare(image)) == pytest.approx(0.0, abs=1e-12)
    assert seg.intensity_shift(seg.prepare(np.clip(image * 0.5 + 100, 0, 255).astype(np.uint8))) > 0.0

    def rewrite(change) -> bytes:
        bundle = read_bundle(seg.to_bytes())
        change(bundle.config)
        return bundle_bytes(bundle)

    old = Segmenter.from_bytes(rewrite(lambda c: (c.pop("normalize"), c.pop("intensity_histogram"))))
    assert old.normalize == "dtype" and old.intensity_histogram is None  # saved before the setting existed
    assert old.intensity_shift(old.prepare(image)) is None
    with pytest.raises(DinosawError, match="normalize: invalid enum value 'auto'"):
        Segmenter.from_bytes(rewrite(lambda c: c.update(normalize="auto")))
    with pytest.raises(DinosawError, match=r"intensity_histogram\[3\]: expected `float` <= 1.0"):
        Segmenter.from_bytes(rewrite(lambda c: c["intensity_histogram"].__setitem__(3, 2.0)))


def test_histogram_shift_is_the_mean_move_over_the_range():
    ramp = ArrayRegions(np.linspace(0.0, 0.5, 10_000).reshape(100, 100))
    shifted = ArrayRegions(np.linspace(0.25, 0.75, 10_000).reshape(100, 100))
    a, b = intensity_histogram(ramp, (0.0, 1.0)), intensity_histogram(shifted, (0.0, 1.0))
    assert histogram_shift(a, a) == 0.0
    assert histogram_shift(a, b) == pytest.approx(0.25, abs=1 / 64)


def test_apply_warns_once_when_a_scan_does_not_look_like_the_training_images(tmp_path):
    image, truth = synthetic_micrograph(160, 192, seed=5)
    tifffile.imwrite(tmp_path / "a.tif", image)
    tifffile.imwrite(tmp_path / "a_labels.tif", synthetic_scribbles(truth, fraction=0.03, seed=5))
    tifffile.imwrite(tmp_path / "odd.tif", np.clip(255.0 - image * 0.4, 0, 255).astype(np.uint8))  # inverted
    runner = CliRunner()
    fit = runner.invoke(main, ["fit", "--pair", str(tmp_path / "a.tif"), str(tmp_path / "a_labels.tif"), "-o",
                               str(tmp_path / "m.dsw"), "--no-vit", "--rounds", "10"])
    assert fit.exit_code == 0, fit.output
    with zipfile.ZipFile(tmp_path / "m.dsw") as archive:
        assert json.loads(archive.read(CONFIG))["normalize"] == "percentile"  # the default
    for name, warned in (("a.tif", False), ("odd.tif", True)):
        result = runner.invoke(main, ["apply", str(tmp_path / name), "--model", str(tmp_path / "m.dsw"),
                                      "-o", str(tmp_path / f"{name}.ome.tif")])
        assert result.exit_code == 0, result.output
        warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
        assert len(warnings) == (1 if warned else 0), result.output
        if warned:
            assert "odd.tif does not look like the training images" in warnings[0]


def test_a_feature_store_fitted_under_another_range_is_refused():
    image, truth = synthetic_micrograph(128, 128, seed=6)
    seg = Segmenter(normalize="percentile", classifier=FAST)
    prepared = seg.prepare(image)

    class Store(ArrayGrid):
        intensity_range = (0.0, 255.0)  # what `features` records under the dtype rule

    prepared.set_grid(Store(np.zeros((4, 9, 9), np.float32)))
    with pytest.raises(DinosawError, match="computed with the intensity range .* --intensity-range"):
        prepared.grid


def test_a_scan_lacking_a_phase_is_stretched_differently_and_flagged():
    """The limit of every per-image rule: an image that lacks the bright phase is stretched onto a
    different range, so its labels go wrong; the training-histogram check flags it."""
    image, truth = synthetic_micrograph(256, 320, seed=4)
    labels = synthetic_scribbles(truth, fraction=0.02, seed=4)
    other, other_truth = synthetic_micrograph(200, 200, seed=7)
    assert 2 not in np.unique(other_truth)
    for rule, lo_accuracy, flagged in (("dtype", 0.95, False), ("percentile", 0.0, True)):
        seg = Segmenter(normalize=rule, classifier=FAST).fit(image, labels)
        accuracy = (seg.predict(other) == other_truth).mean()
        assert accuracy > lo_accuracy
        assert (seg.intensity_shift(seg.prepare(other)) > SHIFT_WARNING) is flagged, rule
        if flagged:
            assert accuracy < 0.9
