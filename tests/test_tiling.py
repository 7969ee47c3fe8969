"""Tile grid (split), row merger (merge) and the seam statistics."""
from __future__ import annotations

import numpy as np
import pytest

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.tiling.grid import RowMerger, TileGrid
from dinosaw_deploy.tiling.seams import seam_stats


@pytest.mark.parametrize("height, width, tile, overlap", [
    (1100, 2000, 518, 4), (518, 518, 518, 4), (300, 5000, 518, 0), (6000, 700, 224, 3), (14, 14, 518, 4),
])
def test_tiles_have_one_shape_and_cover_the_grid(height, width, tile, overlap):
    grid = TileGrid.for_image(height, width, tile=tile, overlap=overlap)
    assert (grid.grid_h, grid.grid_w) == (height // 14, width // 14)
    assert grid.tile_h == min(tile // 14, grid.grid_h) and grid.tile_w == min(tile // 14, grid.grid_w)
    covered = np.zeros((grid.grid_h, grid.grid_w), int)
    for t in grid.tiles():
        assert 0 <= t.y0 <= grid.grid_h - grid.tile_h and 0 <= t.x0 <= grid.grid_w - grid.tile_w
        covered[t.y0 : t.y0 + grid.tile_h, t.x0 : t.x0 + grid.tile_w] += 1
        y, x, h, w = grid.pixel_region(t)
        assert y % 14 == 0 and x % 14 == 0 and y + h <= height and x + w <= width
    assert covered.min() >= 1
    for origins, size in ((grid.origins_y, grid.tile_h), (grid.origins_x, grid.tile_w)):
        steps = np.diff(origins)
        assert (steps[:-1] == size - overlap).all() and ((steps >= 1) & (steps <= size - overlap)).all()


def test_bad_tiling_options():
    with pytest.raises(DinosawError, match="multiple of 14"):
        TileGrid.for_image(1000, 1000, tile=500)
    with pytest.raises(DinosawError, match="overlap"):
        TileGrid.for_image(1000, 1000, tile=140, overlap=10)
    with pytest.raises(DinosawError, match="smaller than one"):
        TileGrid.for_image(10, 1000)
    with pytest.raises(DinosawError, match="window"):
        TileGrid.for_image(1000, 1000, window="max")


@pytest.mark.parametrize("window", ["central", "blend"])
def test_weights_partition_every_token(window):
    grid = TileGrid.for_image(1300, 1700, tile=224, overlap=5, window=window)
    total = np.zeros((grid.grid_h, grid.grid_w))
    for t in grid.tiles():
        total[t.y0 : t.y0 + grid.tile_h, t.x0 : t.x0 + grid.tile_w] += grid.weights(t)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    if window == "central":  # each token owned by exactly one tile; ownership changes at the cuts
        owner = np.full((grid.grid_h, grid.grid_w), -1)
        for k, t in enumerate(grid.tiles()):
            owner[t.y0 : t.y0 + grid.tile_h, t.x0 : t.x0 + grid.tile_w][grid.weights(t) == 1] = k
        changes_x = sorted({int(c) for c in np.flatnonzero(np.diff(owner, axis=1).any(0)) + 1})
        assert changes_x == list(grid.cuts_x)


@pytest.mark.parametrize("window", ["central", "blend"])
def test_merger_reassembles_a_global_map_row_by_row(window):
    grid = TileGrid.for_image(2000, 900, tile=196, overlap=4, window=window)
    truth = np.random.default_rng(0).normal(size=(5, grid.grid_h, grid.grid_w)).astype(np.float32)
    merger, parts, next_row = RowMerger(grid, 5), [], 0
    for row in range(grid.rows):
        for t in grid.tiles(row):
            merger.add(t, truth[:, t.y0 : t.y0 + grid.tile_h, t.x0 : t.x0 + grid.tile_w])
        start, rows = merger.release(row)
        assert start == next_row and rows.shape[1] <= 2 * grid.tile_h  # bounded, in order
        next_row = start + rows.shape[1]
        parts.append(rows)
    stitched = np.concatenate(parts, axis=1)
    if window == "central":
        np.testing.assert_array_equal(stitched, truth)  # exact: one tile per token
    else:
        np.testing.assert_allclose(stitched, truth, atol=1e-5)


def test_resume_row_and_serialisation():
    grid = TileGrid.for_image(3000, 1000, tile=518, overlap=4)
    assert TileGrid.from_dict(grid.to_dict()) == grid
    assert grid.first_row_for(0) == 0 and grid.first_row_for(grid.grid_h) == grid.rows
    for patch_row in (1, 40, 100):
        row = grid.first_row_for(patch_row)
        assert grid.row_support(row)[0] <= patch_row < grid.row_support(row)[1]


def _brute_seams(feats, cuts_y, cuts_x):
    seam, interior = [], []
    c, h, w = feats.shape
    for y in range(h):
        for x in range(w):
            for dy, dx, cuts, pos in ((0, 1, cuts_x, x + 1), (1, 0, cuts_y, y + 1)):
                if y + dy < h and x + dx < w:
                    d = np.linalg.norm(feats[:, y + dy, x + dx] - feats[:, y, x])
                    (seam if pos in cuts else interior).append(d)
    return np.mean(seam), np.mean(interior)


def test_seam_stats_against_brute_force_and_a_visible_seam():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(4, 23, 31)).astype(np.float32)
    stats = seam_stats(feats, (7, 15), (10,), band=5)  # small bands exercise the streaming
    seam, interior = _brute_seams(feats, (7, 15), (10,))
    assert stats["seam_mean"] == pytest.approx(seam, rel=1e-5)
    assert stats["interior_mean"] == pytest.approx(interior, rel=1e-5)
    assert stats["seam_pairs"] == 2 * 31 + 23
    stepped = feats.copy()
    stepped[:, :, 10:] += 3.0  # a feature jump at column 10
    assert seam_stats(stepped, (7, 15), (10,))["ratio"] > 1.25 * stats["ratio"]


def test_negative_overlap_on_a_single_tile_grid_is_a_clear_error():
    with pytest.raises(DinosawError, match="overlap must be 0 <= overlap"):
        TileGrid(3, 3, 5, 5, -1)


def test_seam_ratio_of_a_constant_map_is_one_not_a_division_by_zero():
    flat = np.full((4, 30, 30), 0.25, np.float32)  # a flat scan through a wrap-ALiBi engine gives exactly this
    assert seam_stats(flat, [10, 20], [15])["ratio"] == 1.0
    stepped = flat.copy()
    stepped[:, :, 15:] += 1.0  # a jump exactly at a seam, nothing inside the tiles
    assert seam_stats(stepped, [], [15])["ratio"] == float("inf")
