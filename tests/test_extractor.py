"""FeatureExtractor and preprocessing: torch-free, same numbers as the reference."""
import subprocess
import sys

import numpy as np
import pytest

from dinosaw_deploy import FeatureExtractor
from dinosaw_deploy.engine.contract import IMAGENET_MEAN, IMAGENET_STD
from dinosaw_deploy.engine.preprocess import preprocess
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.intensity import scale_intensity
from dinosaw_deploy.image.reader import to_channels_last

from .conftest import TINY, golden_cases


def test_runtime_never_imports_torch():
    code = (
        "import sys, dinosaw_deploy, dinosaw_deploy.cli, dinosaw_deploy.engine.extractor\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_matches_golden(tiny_engine):
    fx = FeatureExtractor(tiny_engine, batch_size=1)
    assert fx.embed_dim == 96 and fx.patch_size == 14
    for name, case in golden_cases(TINY).items():
        got = fx.run(case["input"])  # golden inputs are already normalised; batch 2 runs as two calls
        assert np.abs(got - case["feature_map"]).max() <= 1e-4, name


def test_call_preprocesses_like_the_reference(tiny_engine):
    """A uint8 grayscale image goes through /255, replication, ImageNet normalisation, top-left crop."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(60, 75), dtype=np.uint8)
    rgb01 = np.repeat(image[:56, :70, None] / 255.0, 3, axis=2)
    expected_input = ((rgb01 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None].astype(np.float32)
    fx = FeatureExtractor(tiny_engine)
    np.testing.assert_allclose(fx.preprocess(image), expected_input[0], atol=1e-6)
    assert fx(image).shape == (96, 4, 5)
    np.testing.assert_allclose(fx(image), fx.run(expected_input)[0], atol=1e-5)


def test_extract_batch_equals_single_calls(tiny_engine):
    rng = np.random.default_rng(1)
    images = [rng.random((42, 56), dtype=np.float32) for _ in range(3)]
    fx = FeatureExtractor(tiny_engine, batch_size=2)
    batch = fx.extract_batch(images)
    assert batch.shape == (3, 96, 3, 4)
    for image, feats in zip(images, batch):
        np.testing.assert_allclose(feats, fx(image), atol=1e-5)
    with pytest.raises(DinosawError, match="one size"):
        fx.extract_batch([images[0], images[0][:28]])


def test_embedded_manifest_is_enough(tiny_engine, tmp_path):
    copy = tmp_path / "renamed.onnx"
    copy.write_bytes(tiny_engine.read_bytes())  # no sidecar beside the copy
    assert FeatureExtractor(copy).manifest["architecture"]["embed_dim"] == 96


def test_bad_models(tmp_path):
    with pytest.raises(DinosawError, match="not found"):
        FeatureExtractor(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(DinosawError, match="not a loadable ONNX"):
        FeatureExtractor(junk)


@pytest.mark.parametrize(
    "image, expected",
    [
        (np.full((3, 3), 255, np.uint8), 1.0),
        (np.full((3, 3), 65535, np.uint16), 1.0),
        (np.full((3, 3), 0.5, np.float32), 0.5),
        (np.array([[0.0, 4.0], [2.0, 4.0]]), [[0.0, 1.0], [0.5, 1.0]]),
        (np.array([[True, False]]), [[1.0, 0.0]]),
    ],
)
def test_intensity_rules(image, expected):
    np.testing.assert_allclose(scale_intensity(image), np.broadcast_to(expected, image.shape))


def test_intensity_range_and_errors():
    np.testing.assert_allclose(scale_intensity(np.array([0, 100, 300]), (100, 200)), [0, 0, 1])
    with pytest.raises(DinosawError):
        scale_intensity(np.array([1.0, np.nan]))
    with pytest.raises(DinosawError):
        scale_intensity(np.zeros(3), (5, 5))


@pytest.mark.parametrize("shape", [(28, 42), (28, 42, 1), (28, 42, 3), (28, 42, 4), (3, 28, 42), (1, 28, 42)])
def test_layouts(shape):
    assert to_channels_last(np.zeros(shape, np.uint8)).shape == (28, 42, 3)
    assert preprocess(np.zeros(shape, np.uint8)).shape == (3, 28, 42)


def test_rgba_drops_alpha_and_small_images_refused():
    rgba = np.zeros((14, 14, 4), np.uint8)
    rgba[..., 3] = 255
    np.testing.assert_array_equal(to_channels_last(rgba), 0)
    with pytest.raises(DinosawError, match="smaller than one"):
        preprocess(np.zeros((13, 100), np.uint8))
    with pytest.raises(DinosawError, match="expected a 2D"):
        preprocess(np.zeros((5, 28, 28, 3), np.uint8))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_run_refuses_non_finite_batches_like_the_frame_door(tiny_engine, bad):
    fx = FeatureExtractor(tiny_engine)
    frame = np.zeros((28, 28), np.float32)
    frame[3, 5] = bad
    with pytest.raises(DinosawError) as from_frame:
        fx(frame)
    batch = np.zeros((2, 3, 28, 28), np.float32)
    batch[1, 2, 3, 5] = bad
    with pytest.raises(DinosawError) as from_batch:
        fx.run(batch)
    assert str(from_batch.value) == str(from_frame.value) == "the image contains NaN or infinite values"
