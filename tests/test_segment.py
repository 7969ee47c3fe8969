"""Segmenter: quality on synthetic data, tiled prediction, ViT channels, OME-TIFF writer."""
from __future__ import annotations

import copy
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.ome_writer import pyramid_factors, write_ome_pyramid
from dinosaw_deploy.segment.classifier import ClassifierParams
from dinosaw_deploy.segment.labels import scribbles_from_array
from dinosaw_deploy.segment.postprocess import modal_filter
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.segment.vit_channels import PcaFeatures
from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles
from dinosaw_deploy.tiling.parallel import in_own_thread
from dinosaw_deploy.tiling.store import ArrayGrid


def balanced_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean per-class recall (an all-matrix answer scores 1/3, though it is ~90 % of the pixels)."""
    return float(np.mean([(pred[truth == k] == k).mean() for k in np.unique(truth)]))


@pytest.fixture(scope="module")
def data():
    image, truth = synthetic_micrograph(256, 320, seed=4)
    return image, truth, synthetic_scribbles(truth, fraction=0.02, seed=4)


@pytest.fixture(scope="module")
def classical(data):
    image, _, labels = data
    # one synthetic session: the dtype rule (the unseen image below lacks two classes, which a per-image
    # stretch maps differently; test_normalize covers that case and its warning)
    return Segmenter(classifier=ClassifierParams(rounds=20), tile=128, threads=2, normalize="dtype").fit(image, labels)


def test_learns_the_synthetic_classes(data, classical):
    image, truth, labels = data
    pred = classical.predict(image)
    assert pred.shape == truth.shape and pred.dtype == np.uint8
    assert balanced_accuracy(pred, truth) > 0.9
    probs = classical.predict_proba(image)
    assert probs.shape == (3, *truth.shape)
    np.testing.assert_allclose(probs.sum(axis=0), 1, atol=1e-5)
    every_pixel = probs.argmax(axis=0) + 1
    np.testing.assert_array_equal(classical.prepare(image).labels(exact=True), every_pixel)
    assert np.mean(pred != every_pixel) < 0.005  # labels refined from a coarse grid: a few pixels differ
    other, other_truth = synthetic_micrograph(200, 200, seed=9)  # unseen image
    assert balanced_accuracy(classical.predict(other), other_truth) > 0.85


def test_tile_size_does_not_change_predictions(data, classical):
    image = data[0]
    big = copy.copy(classical)
    big.tile = 512
    a, b = classical.predict(image, modal=3), big.predict(image, modal=3)
    assert (a != b).mean() < 1e-4  # features agree to ~1e-6; a split threshold may sit in between


def test_modal_filter_is_a_majority_vote():
    labels = np.ones((9, 9), np.uint8)
    labels[4, 4] = 2
    labels[0:3, 6:9] = 3
    out = modal_filter(labels, 1, 3)
    assert out[4, 4] == 1 and out[1, 7] == 3 and out[0, 8] == 3


def test_fit_rejects_mismatched_or_untrained_use(data):
    image, _, labels = data
    with pytest.raises(DinosawError, match="labels are"):
        Segmenter().fit(image[:-1], labels)
    with pytest.raises(DinosawError, match="not trained"):
        Segmenter().predict(image)


def test_vit_upsampling_is_seam_free():
    rng = np.random.default_rng(0)
    grid = ArrayGrid(rng.normal(size=(16, 7, 9)).astype(np.float32))
    pca = PcaFeatures.fit(grid, n_components=4)
    projected = pca.project(grid.array)
    assert projected.shape == (4, 7, 9) and projected.min() >= 0 and projected.max() <= 1
    whole = pca.region(grid, (0, 100, 0, 130))
    assert whole.shape == (4, 100, 130)
    np.testing.assert_allclose(whole[:, 0, 0], projected[:, 0, 0], atol=1e-6)  # clamped at the grid's edges
    np.testing.assert_allclose(whole[:, 99, 129], projected[:, 6, 8], atol=1e-6)
    mid = whole[:, 34:36, 48:50].mean(axis=(1, 2))  # between patch centres: between their values
    corners = projected[:, 1:4, 2:5]
    assert (mid >= corners.min(axis=(1, 2)) - 1e-6).all() and (mid <= corners.max(axis=(1, 2)) + 1e-6).all()
    tiled = np.concatenate([np.concatenate([pca.region(grid, (y, min(y + 33, 100), x, min(x + 41, 130)))
                                            for x in range(0, 130, 41)], axis=2) for y in range(0, 100, 33)], axis=1)
    np.testing.assert_allclose(tiled, whole, atol=1e-6)  # only BLAS rounding differs between tiles
    restored = PcaFeatures.from_arrays(pca.to_arrays(), 14)
    np.testing.assert_allclose(restored.region(grid, (5, 60, 3, 90)), whole[:, 5:60, 3:90], atol=1e-6)


def test_vit_segmenter_with_tiny_engine(data, tiny_engine, tmp_path):
    from dinosaw_deploy.engine.extractor import FeatureExtractor

    image, truth, labels = data
    fx = FeatureExtractor(tiny_engine)
    seg = Segmenter(extractor=fx, classifier=ClassifierParams(rounds=10), threads=2).fit(image, labels)
    assert len(seg.channel_names) == seg.bank.num_channels + 9 and seg.channel_names[-1] == "vit_pca8"
    pred = seg.predict(image)
    assert balanced_accuracy(pred, truth) > 0.9
    path = seg.save(tmp_path / "vit.dsw")
    np.testing.assert_array_equal(Segmenter.load(path, extractor=fx).predict(image), pred)
    fp16 = FeatureExtractor(tiny_engine.with_name("tiny.fp16.onnx"))  # same weights: accepted
    assert Segmenter.load(path, extractor=fp16).pca is not None
    with pytest.raises(DinosawError, match="extractor"):
        Segmenter.load(path).predict(image)
    other = dict(fx.manifest, checkpoint={"sha256": "0" * 64})
    fx.manifest = other
    with pytest.raises(DinosawError, match="different model"):
        Segmenter.load(path, extractor=fx)


def test_ome_pyramid_roundtrip(tmp_path):
    labels = np.random.default_rng(1).integers(1, 4, (700, 1100)).astype(np.uint8)
    path = write_ome_pyramid(tmp_path / "x.ome.tif", labels, pixel_size=(5e-9, 4e-9), tile=256)
    assert pyramid_factors(700, 1100, 256) == [1, 2, 4, 8]
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert [level.shape for level in series.levels] == [(700, 1100), (350, 550), (175, 275), (88, 138)]
        np.testing.assert_array_equal(series.levels[0].asarray(), labels)
        np.testing.assert_array_equal(series.levels[3].asarray(), labels[::8, ::8])
        page = tif.pages[0]
        assert page.is_tiled and page.tilewidth == 256 and page.compression == 8  # deflate
        assert 'PhysicalSizeX="0.004"' in tif.ome_metadata and 'PhysicalSizeY="0.005"' in tif.ome_metadata
        assert page.tags["XResolution"].value == (2500000, 1)  # px per cm
    probs = np.random.default_rng(2).integers(0, 255, (2, 300, 260)).astype(np.uint8)
    path = write_ome_pyramid(tmp_path / "p.ome.tif", probs, channel_names=["a", "b"], tile=128)
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "CYX"
        np.testing.assert_array_equal(tif.series[0].levels[1].asarray(), probs[:, ::2, ::2])
    with pytest.raises(DinosawError):
        write_ome_pyramid(tmp_path / "bad.ome.tif", labels, tile=100)


def test_scribble_object_and_array_inputs_agree(data):
    image, _, labels = data
    a = Segmenter(classifier=ClassifierParams(rounds=3), threads=1).fit(image, labels).predict(image[:64, :64])
    b = Segmenter(classifier=ClassifierParams(rounds=3), threads=2).fit(image, scribbles_from_array(labels))
    np.testing.assert_array_equal(a, b.predict(image[:64, :64]))


def test_segmenter_is_a_lazy_package_attribute():
    import subprocess
    import sys

    code = ("import sys, dinosaw_deploy; assert 'dinosaw_deploy.segment.segmenter' not in sys.modules; "
            "from dinosaw_deploy import Segmenter; assert Segmenter.__module__ == 'dinosaw_deploy.segment.segmenter'; "
            "assert 'xgboost' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_clahe_tiles_exactly_and_evens_out_illumination(data, tmp_path):
    from dinosaw_deploy.segment.contrast import Clahe, ClaheConfig

    image = data[0].astype(np.float32) / 255
    lit = np.clip(image * np.linspace(0.4, 1.0, image.shape[1])[None, :], 0, 1).astype(np.float32)
    clahe = Clahe.fit(lit)
    whole = clahe.apply(lit, 0, 0)
    tiled = np.block([[clahe.apply(lit[y : y + 70, x : x + 90], y, x) for x in range(0, lit.shape[1], 90)]
                      for y in range(0, lit.shape[0], 70)])
    np.testing.assert_array_equal(tiled, whole)
    noise = np.random.default_rng(0).random(lit.shape, dtype=np.float32)
    ramp = ((0.3 + 0.4 * noise) * np.linspace(0.5, 1.0, lit.shape[1])[None, :]).astype(np.float32)
    even = Clahe.fit(ramp).apply(ramp, 0, 0)
    left, right = slice(None, 80), slice(-80, None)
    assert abs(even[:, left].mean() - even[:, right].mean()) < 0.6 * abs(ramp[:, left].mean() - ramp[:, right].mean())
    seg = Segmenter(classifier=ClassifierParams(rounds=5), contrast=ClaheConfig(), threads=2)
    seg.fit((lit * 255).astype(np.uint8), data[2])
    loaded = Segmenter.load(seg.save(tmp_path / "clahe.dsw"))
    assert loaded.contrast == ClaheConfig()
    np.testing.assert_array_equal(loaded.predict((lit * 255).astype(np.uint8)), seg.predict((lit * 255).astype(np.uint8)))


def _crf_case() -> tuple[np.ndarray, np.ndarray]:
    probs = np.full((2, 40, 40), 0.3, np.float32)
    probs[0, :, :20] = probs[1, :, 20:] = 0.7
    probs[:, 10, 10] = (0.45, 0.55)  # a lone, weakly confident outlier
    gray = np.where(np.arange(40) < 20, 0.2, 0.8)[None, :].repeat(40, 0).astype(np.float32)
    return probs, gray


def test_dense_crf_without_its_extra_says_which_extra():
    from importlib.util import find_spec

    from dinosaw_deploy.segment.postprocess import dense_crf

    if find_spec("pydensecrf") is not None:
        pytest.skip("pydensecrf is installed; the missing-extra message cannot be shown")
    with pytest.raises(DinosawError, match="crf"):
        dense_crf(*_crf_case())


def test_dense_crf_cleans_isolated_noise():
    pytest.importorskip("pydensecrf", reason="needs the 'crf' extra (pydensecrf2, built from source)")
    from dinosaw_deploy.segment.postprocess import dense_crf

    labels = dense_crf(*_crf_case())
    assert labels.shape == (40, 40) and labels[10, 10] == 1
    assert (labels[:, :20] == 1).all() and (labels[:, 20:] == 2).all()


def test_many_classes_shrink_the_training_sample(monkeypatch):
    """A dense label image with many classes keeps pixels x classes bounded (XGBoost's gradients)."""
    from dinosaw_deploy.segment import segmenter

    monkeypatch.setattr(segmenter, "MAX_PIXEL_CLASS_PAIRS", 20 * 20 * 30)
    kept = []
    original = segmenter.subsample_many

    def recording(scribbles, max_per_class, seed=0):
        kept.append(max_per_class)
        return original(scribbles, max_per_class, seed)

    monkeypatch.setattr(segmenter, "subsample_many", recording)
    dense = (np.arange(64 * 64).reshape(64, 64) % 20 + 1).astype(np.uint8)  # 20 classes, every pixel labelled
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    Segmenter(classifier=ClassifierParams(rounds=1), tile=64, threads=1).fit(image, dense)
    assert kept == [30]


def test_extractor_may_be_an_engine_path_and_nothing_else(tiny_engine):
    seg = Segmenter(extractor=str(tiny_engine))
    assert seg.extractor.model_path == tiny_engine and seg.extractor.patch_size == 14
    for wrong in (3, object(), [tiny_engine]):
        with pytest.raises(DinosawError, match="extractor must be a FeatureExtractor, an engine path or None"):
            Segmenter(extractor=wrong)
    with pytest.raises(DinosawError, match="model not found"):
        Segmenter(extractor="missing.onnx")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_training_leaves_no_openmp_threads_behind(data):
    """XGBoost's OpenMP team ends with the training: two long-lived threads (as a GUI's workers are) that
    each trained once hold no more threads than one (a lingering team per caller slows all of them)."""
    image, truth, scribbles = data

    def fit() -> None:
        Segmenter(classifier=ClassifierParams(rounds=2), threads=2).fit(image, scribbles)

    fit()  # process-wide pools (FFT, BLAS) start here
    done, release, counts = threading.Event(), threading.Event(), []

    def caller() -> None:
        fit()
        done.set()
        release.wait(30)

    callers = [threading.Thread(target=caller) for _ in range(2)]
    try:
        for thread in callers:
            done.clear()
            thread.start()
            assert done.wait(60)
            time.sleep(0.2)  # a finished team's threads exit after their master
            counts.append(len(os.listdir("/proc/self/task")) - threading.active_count())
    finally:
        release.set()
        for thread in callers:
            thread.join()
    assert counts[1] == counts[0]


def test_in_own_thread_returns_and_raises_on_the_caller():
    assert in_own_thread(lambda: threading.current_thread().name) == "dinosaw-openmp"
    with pytest.raises(DinosawError, match="inside"):
        in_own_thread(lambda: (_ for _ in ()).throw(DinosawError("inside")))


def test_xgboost_trains_on_the_segmenters_threads(data, monkeypatch):
    """XGBoost trains on ``threads``, in the live session too."""
    import xgboost

    from dinosaw_deploy.napari_plugin.session import LiveSession

    seen = []
    train = xgboost.train

    def recording(params, matrix, **kwargs):
        seen.append(params["nthread"])
        return train(params, matrix, **kwargs)

    monkeypatch.setattr(xgboost, "train", recording)
    image, truth, scribbles = data
    Segmenter(classifier=ClassifierParams(rounds=2), threads=2).fit(image, scribbles)
    Segmenter(classifier=ClassifierParams(rounds=2), threads=1).fit(image, scribbles)
    session = LiveSession(image, classifier=ClassifierParams(rounds=2), threads=2)
    session.train(scribbles, session.generations.new())
    assert seen == [2, 1, 2]
