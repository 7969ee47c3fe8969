"""Scribble loading: grey levels, class ids, colours, layouts, and one clear error per bad input."""
from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
import tifffile

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.segment.labels import load_scribbles, scribbles_from_array
from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles


def _grey(values=(85, 170, 255), shape=(20, 30)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    for i, v in enumerate(values):
        labels[2 + 5 * i, 3 : 3 + 2 + i] = v
    return labels


def test_spread_grey_levels_map_to_sorted_classes(tmp_path):
    labels = _grey()
    path = tmp_path / "labels.png"
    path.write_bytes(imagecodecs.png_encode(labels))
    s = load_scribbles(path, (20, 30))
    assert s.num_classes == 3 and s.counts().tolist() == [2, 3, 4]
    assert [c.source_value for c in s.label_classes] == [(85,), (170,), (255,)]
    dense = s.to_image()
    assert set(np.unique(dense[labels == 170])) == {2} and (dense[labels == 0] == 0).all()
    assert "label value 255 -> class 3" in s.describe()


def test_class_ids_and_1hw_tiff(tmp_path):
    labels = _grey(values=(1, 2))[None]
    path = tmp_path / "labels.tif"
    tifffile.imwrite(path, labels)
    s = load_scribbles(path, (20, 30))
    assert s.shape == (20, 30) and s.counts().tolist() == [2, 3]
    np.testing.assert_array_equal(s.to_image(), labels[0])


def test_colour_scribbles_black_and_transparent_unlabelled():
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[1, 1:4, :3] = (255, 0, 0)
    rgba[3, 1:3, :3] = (0, 0, 255)
    rgba[5, 1:6] = (0, 255, 0, 0)  # transparent: ignored
    s = scribbles_from_array(rgba)
    assert s.num_classes == 2
    assert [c.source_value for c in s.label_classes] == [(0, 0, 255), (255, 0, 0)]
    assert s.counts().tolist() == [2, 3]
    assert scribbles_from_array(rgba[..., :3]).num_classes == 3  # without alpha, green counts


@pytest.mark.parametrize(
    "labels, shape, message",
    [
        (_grey(), (21, 30), "image is 21x30"),
        (np.zeros((5, 5), np.uint8), None, "no labelled pixels"),
        (np.full((5, 5), 7, np.uint8), None, "only one class"),
        (np.arange(300, dtype=np.uint16).reshape(15, 20), None, "at most 255 classes"),
        (np.full((5, 5), 0.5, np.float32), None, "whole numbers"),
        (np.zeros((2, 5, 5), np.uint8), None, "labels must be"),
    ],
)
def test_bad_labels_give_one_clear_error(labels, shape, message):
    with pytest.raises(DinosawError, match=message):
        scribbles_from_array(labels, shape)


def test_subsample_caps_each_class():
    labels = np.zeros((50, 50), np.uint8)
    labels[:10] = 1
    labels[20:21, :7] = 2
    s = scribbles_from_array(labels).subsample(100, seed=1)
    assert s.counts().tolist() == [100, 7]
    assert (s.to_image()[s.ys, s.xs] == s.classes).all()


def test_synthetic_scribbles_follow_the_truth():
    _, truth = synthetic_micrograph(256, 256, seed=1)
    labels = synthetic_scribbles(truth, fraction=0.02, seed=0)
    labelled = labels > 0
    assert 0.015 < labelled.mean() < 0.03
    assert (labels[labelled] == truth[labelled]).all()
    assert set(np.unique(labels[labelled])) == {1, 2, 3}


def test_class_iou():
    from dinosaw_deploy.segment.metrics import class_iou

    truth = np.array([[1, 1, 2, 2]])
    np.testing.assert_allclose(class_iou(np.array([[1, 2, 2, 2]]), truth), [1 / 2, 2 / 3])
    with pytest.raises(DinosawError, match="shape"):
        class_iou(np.zeros((2, 2)), truth)


def test_scribbles_of_a_large_sparse_label_array_need_no_full_size_temporaries():
    """A paint layer of 4096² px with a few strokes: reading its scribbles allocates less than the layer
    itself (a uint64 key per pixel would be 8x the layer; the napari widget reads it after every stroke)."""
    import tracemalloc

    labels = np.zeros((4096, 4096), np.uint8)
    labels[100:103, 50:90], labels[3000:3003, 4000:4090] = 1, 2
    tracemalloc.start()
    marks = scribbles_from_array(labels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < labels.nbytes
    ys, xs = np.nonzero(labels)
    np.testing.assert_array_equal(marks.ys, ys)
    np.testing.assert_array_equal(marks.xs, xs)
    np.testing.assert_array_equal(marks.classes, labels[ys, xs])
