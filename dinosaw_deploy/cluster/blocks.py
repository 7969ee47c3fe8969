"""How a scan is cut into blocks: pure layout functions, no dask.

Feature blocks are patch boxes ``(r0, r1, c0, c1)`` on the store's chunk grid (edges on multiples of
``tiling.store.CHUNK`` patches, or the grid's end), so no two blocks write one chunk. A block
computes exactly the tiles of the :class:`~dinosaw_deploy.tiling.grid.TileGrid` whose merge weights
reach its box (its halo: the ViT tile overlap), in the engine batches of the single-process run
(``run_tiles`` batches ``batch`` tiles of a tile row at a time), and merges them with the grid's
weights in the same order: its patch rows equal the stitched rows of one process bit for bit.

Label blocks are groups of the segmenter's prediction tiles (``tile_boxes(shape, seg.tile)``),
each predicted exactly as one process predicts it (``Segmenter.predict_box`` reads its own halo:
the filter bank's margin (130 px with the default scales), ``modal`` px, 64 px for the CRF), so labels do not depend
on the layout.
"""
from __future__ import annotations

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.tiling.grid import Box, Tile, TileGrid, tile_boxes
from dinosaw_deploy.tiling.store import CHUNK

# A feature block spans the full width up to this many block heights (memory grows with width;
# each extra column edge recomputes one tile column).
MAX_ASPECT = 4
DEFAULT_BLOCK = 3 * CHUNK * 14  # feature blocks, px: about 192 patch rows (2688 px)
DEFAULT_LABEL_BLOCK = 1024  # label blocks, px: their memory does not grow with the block, so small ones balance


def block_name(box: Box) -> str:
    """``r0-r1_c0-c1``: a block's name in markers and errors."""
    return f"{box[0]}-{box[1]}_{box[2]}-{box[3]}"


def extent(boxes: list[Box]) -> Box:
    """The box spanning ``boxes``."""
    return (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes))


def _split(length: int, target: int, unit: int, at_most: bool = False) -> int:
    """A step (multiple of ``unit``) cutting ``length`` into about ``length / target`` near-equal
    parts (no thin last part: each block edge costs a recomputed tile row); ``at_most``: parts no
    longer than ``target`` (rounded up to ``unit``)."""
    target = max(target, 1)
    parts = max(1, -(-length // target) if at_most else round(length / target))
    return -(-(-(-length // parts)) // unit) * unit


def feature_blocks(grid: TileGrid, block: int = DEFAULT_BLOCK, aspect: float = MAX_ASPECT) -> list[Box]:
    """Row-major chunk-aligned patch boxes covering the grid: about ``block`` px tall (at most 1.5x,
    rounded up to the chunk), at most ``aspect`` times that wide (the full width when it fits)."""
    if block < 1:
        raise DinosawError(f"block must be >= 1 px, got {block}")
    target = max(CHUNK, block // grid.patch_size)
    rows = _split(grid.grid_h, target, CHUNK)
    cols = _split(grid.grid_w, int(aspect * target), CHUNK, at_most=True)
    return [(r, min(r + rows, grid.grid_h), c, min(c + cols, grid.grid_w))
            for r in range(0, grid.grid_h, rows) for c in range(0, grid.grid_w, cols)]


def _support(weights_1d) -> tuple[int, int]:
    nz = weights_1d.nonzero()[0]
    return int(nz[0]), int(nz[-1]) + 1


def block_batches(grid: TileGrid, box: Box, batch: int) -> list[list[Tile]]:
    """The engine batches (row-major) whose tiles reach patch box ``box``: every batch of
    ``run_tiles`` (``batch`` consecutive tiles of a tile row) holding at least one such tile."""
    r0, r1, c0, c1 = box
    first = grid.tiles(0)
    reach_x = []
    for tile in first:
        lo, hi = _support(grid.weights(tile).any(0))
        reach_x.append(tile.x0 + lo < c1 and tile.x0 + hi > c0)
    batches = []
    for row in range(grid.rows):
        lo, hi = grid.row_support(row)
        if lo >= r1 or hi <= r0:
            continue
        batches += [chunk for k, chunk in enumerate(grid.batches(row, batch))
                    if any(reach_x[k * batch : (k + 1) * batch])]
    return batches


def label_blocks(shape: tuple[int, int], tile: int, block: int = DEFAULT_LABEL_BLOCK) -> list[list[Box]]:
    """Groups of prediction tiles (``tile_boxes(shape, tile)``) about ``block`` px square, row-major;
    block edges lie on multiples of ``tile`` (the label arrays' chunk)."""
    if block < 1:
        raise DinosawError(f"block must be >= 1 px, got {block}")
    n = max(1, round(block / tile)) * tile
    groups: dict[tuple[int, int], list[Box]] = {}
    for box in tile_boxes(shape, tile):
        groups.setdefault((box[0] // n, box[2] // n), []).append(box)
    return [groups[key] for key in sorted(groups)]
