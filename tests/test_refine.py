"""Labels from a coarse grid refined near class boundaries (segment/refine.py)."""
import numpy as np

from dinosaw_deploy.segment.refine import GRID, grid_box, refined_labels


def threshold_classifier(image: np.ndarray, calls: list):
    """Two classes by ``image``: p(class 1) = clip(value, 0, 1); records how many pixels it was asked for."""

    def classify(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        calls.append(len(ys))
        p = np.clip(image[ys, xs], 0, 1)
        return np.stack([1 - p, p]).astype(np.float32)

    return classify


def test_settled_cells_take_the_corner_class_and_only_boundary_pixels_are_classified():
    h, w = 61, 80
    ramp = np.zeros((h, w), np.float32)
    ramp[:, 40:] = 1.0  # a vertical step: certain on both sides
    ramp[20:23, 5:7] = 0.6  # a small uncertain blob inside class 0 (margin 0.2 < MARGIN)
    calls = []
    labels = refined_labels(threshold_classifier(ramp, calls), ramp.shape)
    exact = (ramp > 0.5).astype(np.int64)
    np.testing.assert_array_equal(labels, exact)
    grid_pixels = len(range(0, h, GRID)) * len(range(0, w, GRID))
    assert calls[0] == grid_pixels and sum(calls) < 0.3 * h * w


def test_a_thin_line_between_confident_corners_is_not_seen():
    """What the grid gives up: a one-pixel line off the grid, with sure corners on both sides."""
    image = np.zeros((30, 30), np.float32)
    image[4, :] = 1.0  # row 4 is not a grid row
    labels = refined_labels(threshold_classifier(image, []), image.shape)
    assert not labels[4, :27].any()  # columns 27-29: the image's last partial cells, classified themselves
    assert labels[4, 27:].all()


def test_uncertain_corners_send_their_cells_to_the_classifier():
    image = np.full((30, 30), 0.3, np.float32)  # class 0, margin 0.4 < MARGIN
    image[10:20, 10:20] = 0.8  # class 1, margin 0.6: its cells with corners on rows/cols 12, 15, 18 settle
    calls = []
    labels = refined_labels(threshold_classifier(image, calls), image.shape)
    np.testing.assert_array_equal(labels, (image > 0.5).astype(np.int64))
    settled = 6 * 6 - 2 * 2  # pixels 12..17 in both axes, less their grid points
    assert sum(calls) == 30 * 30 - settled  # every other pixel classified once


def test_grid_box_starts_on_the_grid_and_reaches_the_next_corner():
    assert grid_box((512, 1024, 0, 100), (2000, 100)) == (510, 1027, 0, 100)
    assert grid_box((0, 6, 3, 7), (10, 10)) == (0, 7, 3, 10)
    y0, y1, x0, x1 = grid_box((7, 8, 7, 8), (100, 100))
    assert y0 % GRID == 0 and (y1 - 1) % GRID == 0 and y0 <= 7 < 8 <= y1 - 1
