"""One model from several scribbled images (Python API and `fit` / `apply` CLI), ground-truth IoU, preview."""
from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from dinosaw_deploy.cli import main
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.intensity import fit_intensity_range, scale_intensity
from dinosaw_deploy.image.reader import ArrayRegions
from dinosaw_deploy.segment import labels as labels_module
from dinosaw_deploy.segment.classifier import ClassifierParams
from dinosaw_deploy.segment.labels import (
    ground_truth_strips,
    scribbles_from_array,
    subsample_many,
    unify_classes,
)
from dinosaw_deploy.segment.metrics import class_iou, confusion_matrix, iou_from_confusion
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.segment.vit_channels import PcaFeatures
from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles
from dinosaw_deploy.tiling.store import ArrayGrid

FAST = ClassifierParams(rounds=10)


@pytest.fixture(scope="module")
def pair():
    """Two synthetic images; the second image's scribbles lack class 2 (values 1 and 3 only)."""
    a, truth_a = synthetic_micrograph(160, 200, seed=1)
    b, truth_b = synthetic_micrograph(180, 150, seed=3)
    lab_a = synthetic_scribbles(truth_a, fraction=0.03, seed=1)
    lab_b = synthetic_scribbles(truth_b, fraction=0.03, seed=3)
    lab_b[lab_b == 2] = 0
    return (a, truth_a, lab_a), (b, truth_b, lab_b)


def test_classes_are_the_union_of_the_label_values(pair):
    (_, _, lab_a), (_, _, lab_b) = pair
    grey = scribbles_from_array(lab_b * 85)  # values 85, 255 -> classes 1, 2 of this file alone
    assert [c.source_value for c in grey.label_classes] == [(85,), (255,)]
    merged = unify_classes([scribbles_from_array(lab_a * 85), grey])
    assert [c.source_value for c in merged[0].label_classes] == [(85,), (170,), (255,)]
    np.testing.assert_array_equal(merged[1].classes, lab_b[merged[1].ys, merged[1].xs])  # 255 -> class 3
    colour = scribbles_from_array(np.stack([lab_a * 80] * 3, axis=-1))
    with pytest.raises(DinosawError, match="mix grey-level and colour"):
        unify_classes([grey, colour])


def test_subsampling_caps_each_class_over_all_images(pair):
    (_, _, lab_a), (_, _, lab_b) = pair
    both = unify_classes([scribbles_from_array(lab_a), scribbles_from_array(lab_b)])
    kept = subsample_many(both, 150, seed=0)
    total = sum(s.counts() for s in kept)
    available = sum(s.counts() for s in both)
    np.testing.assert_array_equal(total, np.minimum(available, 150))
    for s, full in zip(kept, both):  # kept pixels are real scribbled pixels of their own image
        dense = full.to_image()
        np.testing.assert_array_equal(dense[s.ys, s.xs], s.classes)
    single = both[0].subsample(100, seed=3)
    again = subsample_many([both[0]], 100, seed=3)[0]
    np.testing.assert_array_equal(single.ys, again.ys)


def test_fit_on_two_images_learns_a_class_missing_from_one(pair):
    (a, truth_a, lab_a), (b, truth_b, lab_b) = pair
    seg = Segmenter(classifier=FAST, tile=128, threads=2).fit([a, b], [lab_a, lab_b])
    assert [c.source_value for c in seg.label_classes] == [(1,), (2,), (3,)]
    assert seg.training["images"] == 2
    assert seg.training["pixels_labelled"] == [int((lab_a == k).sum() + (lab_b == k).sum()) for k in (1, 2, 3)]
    for image, truth in ((a, truth_a), (b, truth_b)):
        assert class_iou(seg.predict(image), truth).mean() > 0.6
    only_b = Segmenter(classifier=FAST, tile=128, threads=2).fit(b, lab_b)  # knows 2 classes only
    assert len(only_b.label_classes) == 2
    single = Segmenter(classifier=FAST, tile=128, threads=2)
    np.testing.assert_array_equal(single.fit([a], [lab_a]).predict(b), single.fit(a, lab_a).predict(b))
    with pytest.raises(DinosawError, match="one per image"):
        Segmenter().fit([a, b], [lab_a])
    with pytest.raises(DinosawError, match="labels are"):
        Segmenter().fit([a, b], [lab_a, lab_a])


def test_vit_pca_pools_tokens_of_every_image():
    rng = np.random.default_rng(0)
    low = ArrayGrid(rng.normal(0, 1, (6, 10, 12)).astype(np.float32))
    high = ArrayGrid(rng.normal(10, 1, (6, 8, 9)).astype(np.float32))
    pooled = PcaFeatures.fit([low, high], n_components=3)
    expected = np.concatenate([low.array.reshape(6, -1), high.array.reshape(6, -1)], axis=1).mean(axis=1)
    np.testing.assert_allclose(pooled.mean, expected, atol=1e-4)
    np.testing.assert_allclose(PcaFeatures.fit(low, n_components=3).mean, low.array.reshape(6, -1).mean(1), atol=1e-5)


def test_streamed_iou_equals_whole_image_iou(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 4, (70, 50)).astype(np.uint8)  # 0 = not scored
    pred = rng.integers(1, 4, (70, 50)).astype(np.uint8)
    pred[truth == 2] = 2
    path = tmp_path / "gt.tif"
    tifffile.imwrite(path, truth * 85)
    classes = scribbles_from_array(np.array([[85, 170, 255]], np.uint8)).label_classes
    monkeypatch.setattr(labels_module, "STRIP_ROWS", 16)
    confusion = np.zeros((4, 4), np.int64)
    for y, strip in ground_truth_strips(path, classes, truth.shape):
        assert strip.shape[0] <= 16
        confusion += confusion_matrix(pred[y : y + strip.shape[0]], strip, 4)
    scored = truth > 0
    np.testing.assert_allclose(iou_from_confusion(confusion[1:, 1:]), class_iou(pred[scored], truth[scored]))
    assert confusion[0].sum() == (truth == 0).sum()  # unscored pixels land in row 0
    bad = truth * 85
    bad[40, 7] = 7
    tifffile.imwrite(path, bad)
    with pytest.raises(DinosawError, match="value 7 is none of the model's classes"):
        list(ground_truth_strips(path, classes, truth.shape))
    with pytest.raises(DinosawError, match="ground truth is 70x50"):
        list(ground_truth_strips(path, classes, (70, 51)))


def run(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def files(tmp_path_factory, pair):
    root = tmp_path_factory.mktemp("fit")
    for name, (image, truth, lab) in zip(("a", "b"), pair):
        tifffile.imwrite(root / f"{name}.tif", image)
        (root / f"{name}_labels.png").write_bytes(imagecodecs.png_encode(lab * 85))
        tifffile.imwrite(root / f"{name}_gt.tif", truth * 85)
    return root


def test_fit_and_apply_a_folder_resumably(files, tmp_path):
    model = tmp_path / "m.dsw"
    code, text = run("fit", "--pair", files / "a.tif", files / "a_labels.png", "--pair", files / "b.tif",
                     files / "b_labels.png", "-o", model, "--no-vit", "--rounds", "10", "--threads", "2")
    assert code == 0, text
    assert "label value 170 -> class 2" in text and "label value 255 -> class 3" in text and model.is_file()
    out = tmp_path / "out"
    args = ["apply", files / "a.tif", files / "b.tif", "--model", model, "-o", out,
            "--ground-truth", files / "a_gt.tif", "--ground-truth", files / "b_gt.tif"]
    code, text = run(*args)
    assert code == 0, text
    seg = Segmenter.load(model)
    for name in ("a", "b"):
        labels = tifffile.imread(out / f"{name}.ome.tif")
        np.testing.assert_array_equal(labels, seg.predict(tifffile.imread(files / f"{name}.tif")))
        truth = tifffile.imread(files / f"{name}_gt.tif") // 85
        assert f"mIoU {class_iou(labels, truth).mean():.4f}" in text
    fractions = np.bincount(labels.ravel(), minlength=4)[1:] / labels.size
    assert f"3 (class 3) {100 * fractions[2]:.2f} %" in text
    code, text = run(*args)
    assert code == 0 and text.count("done already") == 2
    code, text = run("apply", files / "a.tif", files / "b.tif", "--model", model, "-o", tmp_path / "x.ome.tif")
    assert code == 1 and "need an output folder" in text
    code, text = run(*args[:-2])
    assert code == 1 and "1 ground truths for 2 images" in text


def test_preview_shows_image_scribbles_and_result(files, tmp_path):
    from PIL import Image

    out = tmp_path / "s.ome.tif"
    code, text = run("segment", files / "a.tif", "--labels", files / "a_labels.png", "-o", out, "--no-vit",
                     "--rounds", "5", "--save-model", tmp_path / "s.dsw", "--ground-truth", files / "a_gt.tif")
    assert code == 0, text and "mIoU" in text
    preview = np.asarray(Image.open(tmp_path / "s.preview.png"))
    assert preview.shape[1] == 3 * 200 + 2 * 8  # image | scribbles | result
    image = tifffile.imread(files / "a.tif")
    seen = scale_intensity(image, fit_intensity_range(ArrayRegions(image), normalize="percentile"))
    np.testing.assert_array_equal(preview[:160, :200, 0], (seen * 255).astype(np.uint8))  # the model's view first
    code, text = run("apply", files / "a.tif", "--model", tmp_path / "s.dsw", "-o", tmp_path / "t.ome.tif")
    assert code == 0, text
    assert np.asarray(Image.open(tmp_path / "t.preview.png")).shape[1] == 2 * 200 + 8  # no scribbles to show


def test_fit_with_vit_engine_on_two_images(files, tiny_engine, tmp_path):
    model = tmp_path / "vit.dsw"
    code, text = run("fit", "--pair", files / "a.tif", files / "a_labels.png", "--pair", files / "b.tif",
                     files / "b_labels.png", "-o", model, "--engine", tiny_engine, "--rounds", "5", "--threads", "2")
    assert code == 0, text
    assert not (tmp_path / "vit.dsw.work").exists()
    code, text = run("apply", files / "b.tif", "--model", model, "-o", tmp_path / "b.ome.tif", "--engine", tiny_engine)
    assert code == 0, text
    assert tifffile.imread(tmp_path / "b.ome.tif").shape == (180, 150)


def test_prior_estimate_moves_towards_the_class_frequencies():
    from dinosaw_deploy.segment.classifier import apply_prior, estimate_prior

    rng = np.random.default_rng(0)
    truth = rng.random(50_000) < 0.1  # 10 % of class 2
    x = rng.normal(np.where(truth, 3.0, 0.0), 1.0)
    like = np.stack([np.exp(-0.5 * x**2), np.exp(-0.5 * (x - 3) ** 2)], axis=1)
    equal = like / like.sum(axis=1, keepdims=True)  # a calibrated classifier trained on balanced classes
    prior = estimate_prior(equal)
    assert truth.mean() < prior[1] < 0.2 and abs(prior.sum() - 1) < 1e-9  # between the truth and 1/2
    adjusted = apply_prior(equal.T, prior)
    assert (adjusted.argmax(0) == truth).mean() > (equal.argmax(1) == truth).mean() + 0.01  # fewer false class 2
    np.testing.assert_allclose(adjusted.sum(0), 1, atol=1e-6)


def test_bundles_saved_before_issue_12_still_load(pair, tmp_path):
    from dinosaw_deploy.segment.bundle import Bundle, load_bundle, save_bundle
    from dinosaw_deploy.segment.filters import FilterBankConfig

    (a, _, lab_a), _ = pair
    old = FilterBankConfig(structure_scales=(), variance_sigmas=())
    seg = Segmenter(filter_bank=old, estimate_prior=False, classifier=FAST, threads=2).fit(a, lab_a)
    bundle = load_bundle(seg.save(tmp_path / "new.dsw"))
    config = dict(bundle.config, filter_bank={k: v for k, v in bundle.config["filter_bank"].items()
                                              if k not in ("structure_scales", "variance_sigmas")})
    del config["class_prior"]
    save_bundle(tmp_path / "old.dsw", Bundle(config, bundle.arrays, bundle.classifier))
    loaded = Segmenter.load(tmp_path / "old.dsw")
    assert loaded.bank.num_channels == 58 and loaded.class_prior is None
    np.testing.assert_array_equal(loaded.predict(a), seg.predict(a))
    new = Segmenter(classifier=FAST, threads=2).fit(a, lab_a)
    again = Segmenter.load(new.save(tmp_path / "prior.dsw"))
    np.testing.assert_allclose(again.class_prior, new.class_prior)
    assert new.class_prior.shape == (3,) and abs(float(new.class_prior.sum()) - 1) < 1e-5
    np.testing.assert_array_equal(again.predict(a), new.predict(a))


def test_fit_and_apply_mistakes_give_one_error_line(files, tmp_path):
    pair = ["--pair", files / "a.tif", files / "a_labels.png"]
    code, text = run("fit", *pair, "-o", tmp_path / "m.model", "--no-vit")
    assert code == 1 and "must end in .dsw" in text and "Traceback" not in text
    code, text = run("fit", "--pair", files / "a.tif", files / "missing.png", "-o", tmp_path / "m.dsw", "--no-vit")
    assert code == 1 and "not found" in text
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.tif").write_bytes((files / "a.tif").read_bytes())
    code, text = run("fit", *pair, "-o", tmp_path / "m.dsw", "--no-vit", "--rounds", "3")
    assert code == 0, text
    code, text = run("apply", files / "a.tif", tmp_path / "other" / "a.tif", "--model", tmp_path / "m.dsw",
                     "-o", tmp_path / "out")
    assert code == 1 and "share a name" in text and not list((tmp_path / "out").glob("*.ome.tif"))
