"""PreparedImage: features once per box, predictions of any box equal the whole image's."""
from __future__ import annotations

import numpy as np
import pytest

from dinosaw_deploy import FeatureExtractor
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.reader import ArrayRegions
from dinosaw_deploy.segment.classifier import ClassifierParams
from dinosaw_deploy.segment.filters import FilterBank, FilterBankConfig
from dinosaw_deploy.segment.labels import scribbles_from_array
from dinosaw_deploy.segment.refine import GRID
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles


@pytest.fixture(scope="module")
def data():
    image, truth = synthetic_micrograph(200, 260, seed=5)
    return image, synthetic_scribbles(truth, fraction=0.02, seed=5)


@pytest.fixture(scope="module")
def seg(data):
    return Segmenter(classifier=ClassifierParams(rounds=10), tile=96, threads=2).fit(*data)


def counting(seg: Segmenter, monkeypatch) -> list:
    """Count the filter-bank runs of ``seg`` (the work the cache saves)."""
    calls, region = [], seg.bank.region

    def counted(gray, box):
        calls.append(tuple(box))
        return region(gray, box)

    monkeypatch.setattr(seg.bank, "region", counted)
    return calls


@pytest.mark.parametrize("modal", [0, 2])
def test_any_box_equals_the_whole_image_prediction(data, seg, modal):
    image = data[0]
    whole = seg.predict(image, modal=modal)  # labels refined from the coarse grid
    every_pixel, whole_probs = seg.prepare(image, cache_bytes=0).predict(modal=modal, exact=True)
    prepared = seg.prepare(image)
    box = (37, 171, 50, 241)  # crosses tile borders and grid cells in both axes
    inner = (slice(37, 171), slice(50, 241))
    labels, probs = prepared.predict(box, modal=modal)  # the labels do not depend on writing probabilities
    np.testing.assert_array_equal(labels, whole[inner])
    np.testing.assert_array_equal(prepared.labels(box, modal=modal, exact=True), every_pixel[inner])
    np.testing.assert_array_equal(probs, whole_probs[(slice(None), *inner)])
    if modal == 0:
        np.testing.assert_array_equal(every_pixel, whole_probs.argmax(axis=0) + 1)
    np.testing.assert_array_equal(prepared.labels(modal=modal), whole)
    assert 0 < np.mean(whole != every_pixel) < 0.005


def test_repeated_and_overlapping_requests_reuse_the_features(data, seg, monkeypatch):
    prepared = seg.prepare(data[0])
    calls = counting(seg, monkeypatch)
    first = prepared.probabilities((0, 100, 0, 100))  # tiles (0,0) (0,1) (1,0) (1,1) of 96 px
    assert len(calls) == 4 and prepared.cache_stats.misses == 4
    again = prepared.probabilities((10, 90, 10, 200))  # tiles (0,0) (0,1) (0,2): one new
    assert len(calls) == 5 and prepared.cache_stats.hits == 2
    np.testing.assert_array_equal(again[:, :80, :80], first[:, 10:90, 10:90])
    prepared.probabilities((0, 100, 0, 100))
    assert len(calls) == 5 and prepared.cache_stats.hits == 6


def test_refitting_keeps_the_cache_and_a_new_filter_bank_empties_it(data, monkeypatch):
    image, labels = data
    # no prior sampling: on 96-px tiles it would read every pixel of each labelled tile
    seg = Segmenter(classifier=ClassifierParams(rounds=5), tile=96, threads=1, estimate_prior=False)
    prepared = seg.prepare(image)
    scribbles = scribbles_from_array(labels)
    seg.fit_prepared([(prepared, scribbles)])
    stats, one_tile = prepared.cache_stats, 96 * 96 * seg.bank.num_channels * 4
    assert 0 < stats.nbytes < stats.entries * one_tile / 4  # the sampled pixels' rows are kept, not the stacks
    calls = counting(seg, monkeypatch)
    seg.fit_prepared([(prepared, scribbles)])  # same scribbles: same boxes, all from the cache
    assert calls == []
    seg.classifier = ClassifierParams(rounds=6)  # another classifier: the features stay valid
    seg.fit_prepared([(prepared, scribbles)])
    assert calls == []
    seg.bank = FilterBank(FilterBankConfig(sigmas=(0.0, 1.0)))
    calls = counting(seg, monkeypatch)
    seg.fit_prepared([(prepared, scribbles)])
    assert calls and prepared.features(calls[0]).shape[0] == seg.bank.num_channels


def test_a_stroke_in_a_new_tile_recomputes_only_that_tile(data, monkeypatch):
    """With the class prior estimated, a retrain after a stroke in a tile that had no scribbles runs the
    filter bank of that tile alone: the unlabelled pixels sampled from the other tiles stay the same."""
    image, labels = data
    monkeypatch.setattr("dinosaw_deploy.segment.segmenter.PRIOR_PIXELS", 3000)  # fewer than a tile's pixels
    seg = Segmenter(classifier=ClassifierParams(rounds=3), tile=96, threads=1)
    prepared = seg.prepare(image)
    first = np.where(np.arange(image.shape[0])[:, None] < 96, labels, 0)  # the top row of tiles only
    seg.fit_prepared([(prepared, scribbles_from_array(first))])
    calls = counting(seg, monkeypatch)
    stroke = first.copy()
    stroke[150:153, 20:40] = labels[labels > 0][0]  # in tile (1, 0), which had none
    seg.fit_prepared([(prepared, scribbles_from_array(stroke))])
    assert len(calls) == 1 and calls[0][0] == 96 and calls[0][2] == 0


def test_a_small_budget_evicts_instead_of_growing(data, seg):
    prepared = seg.prepare(data[0], cache_bytes=96 * 96 * seg.bank.num_channels * 4 * 2)  # two tiles
    prepared.labels()  # 9 tiles, the edge ones smaller
    stats = prepared.cache_stats
    assert stats.misses == 9 and stats.evictions == 9 - stats.entries and stats.entries < 9
    assert 0 < stats.nbytes <= stats.max_bytes


@pytest.mark.parametrize("box, message", [((0, 0, 0, 10), "empty or outside"), ((0, 10, 0, 261), "outside"),
                                          ((-1, 10, 0, 10), "outside"), ("all", "a box is"), ((0, 1, 2), "a box is")])
def test_bad_boxes_are_one_clear_error(data, seg, box, message):
    with pytest.raises(DinosawError, match=message):
        seg.prepare(data[0]).labels(box)


def test_mistakes_are_clear_errors(data, seg, tiny_engine):
    image, labels = data
    other = Segmenter(tile=96)
    with pytest.raises(DinosawError, match="prepared for another segmenter"):
        other.fit_prepared([(seg.prepare(image), scribbles_from_array(labels))])
    with pytest.raises(DinosawError, match="labels are"):
        seg.fit_prepared([(seg.prepare(image[:100]), scribbles_from_array(labels))])
    vit = Segmenter(extractor=FeatureExtractor(tiny_engine, backend="cpu"), classifier=ClassifierParams(rounds=3),
                    tile=96, threads=1)
    with pytest.raises(DinosawError, match="pass the image's patch features"):  # a reader: no whole-image pass
        vit.fit_prepared([(vit.prepare(ArrayRegions(image)), scribbles_from_array(labels))])
    vit.fit(image, labels)
    vit.extractor = None
    with pytest.raises(DinosawError, match="uses ViT features: load it with extractor"):
        vit.prepare(image).labels((0, 10, 0, 10))


def test_vit_features_are_computed_once_per_image(data, tiny_engine, monkeypatch):
    from dinosaw_deploy.segment import prepared as prepared_module

    image, labels = data
    passes = []
    original = prepared_module.patch_features
    monkeypatch.setattr(prepared_module, "patch_features", lambda *a, **k: passes.append(1) or original(*a, **k))
    vit = Segmenter(extractor=FeatureExtractor(tiny_engine, backend="cpu"), classifier=ClassifierParams(rounds=3),
                    tile=96, threads=1)
    prepared = vit.prepare(image)
    vit.fit_prepared([(prepared, scribbles_from_array(labels))])
    labels_a = prepared.labels()
    assert len(passes) == 1 and prepared.features((0, 10, 0, 10)).shape[0] == len(vit.channel_names)
    np.testing.assert_array_equal(labels_a, vit.predict(image))


def test_vit_channels_are_cached_under_the_same_pca_and_grid(data, tiny_engine, monkeypatch):
    """Refitting on the same scribbles gives the same PCA, so the ViT channels of a box come from the cache;
    a changed PCA or new patch features compute them again, and the labels stay those of a fresh image."""
    from dinosaw_deploy.segment.vit_channels import PcaFeatures

    image, labels = data
    calls, region = [], PcaFeatures.region
    monkeypatch.setattr(PcaFeatures, "region", lambda self, grid, box: calls.append(box) or region(self, grid, box))
    vit = Segmenter(extractor=FeatureExtractor(tiny_engine, backend="cpu"), classifier=ClassifierParams(rounds=3),
                    tile=96, threads=1)
    prepared, scribbles = vit.prepare(image), scribbles_from_array(labels)
    vit.fit_prepared([(prepared, scribbles)])
    prepared.labels()
    seen = len(calls)
    vit.fit_prepared([(prepared, scribbles)])
    np.testing.assert_array_equal(prepared.labels(), vit.predict(image))
    after_refit = len(calls)
    vit.n_components -= 1  # another PCA
    vit.fit_prepared([(prepared, scribbles)])
    prepared.labels()
    after_new_pca = len(calls)
    prepared.set_grid(prepared.grid)  # the same features, but set anew: not trusted to be the same
    prepared.labels()
    assert after_refit - seen == 9  # vit.predict's own fresh image: its 9 tiles
    assert after_new_pca > after_refit and len(calls) > after_new_pca


def test_a_preview_is_the_full_prediction_at_the_grid_pixels(data, seg):
    prepared = seg.prepare(data[0])
    box = (10, 95, 20, 96)  # starts off the grid
    full, _ = seg.predict_box(prepared, box)
    preview, probs = seg.predict_box(prepared, box, preview=True)
    assert preview.shape == full.shape and probs.shape[1:] == full.shape
    ys, xs = np.arange(12, 95, GRID) - 10, np.arange(21, 96, GRID) - 20  # image rows/cols on the grid
    np.testing.assert_array_equal(preview[np.ix_(ys, xs)], full[np.ix_(ys, xs)])
    cells = np.repeat(np.repeat(preview[np.ix_(ys, xs)], GRID, 0), GRID, 1)
    np.testing.assert_array_equal(preview[2:, 1:], cells[: full.shape[0] - 2, : full.shape[1] - 1])
    np.testing.assert_array_equal(preview[0], preview[1])  # image rows 10 and 11: the cell of grid row 9
    with pytest.raises(DinosawError, match="preview"):
        seg.predict_box(prepared, box, preview=True, modal=1)
