"""The features job on files: a scan -> tiled zarr feature store (+ PCA preview), or one whole-image ``.npy``.

>>> extract_features("scan.tif", "feats.zarr", FeatureExtractor("engines/alibi_dv2_vits14.onnx"))
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy.engine.contract import MAX_WHOLE_IMAGE_TOKENS
from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.engine.preprocess import grid_shape
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import atomic_path, atomic_write_bytes, check_output, output_lock
from dinosaw_deploy.image.intensity import fit_intensity_range
from dinosaw_deploy.image.reader import ImageReader, PageChoice
from dinosaw_deploy.preflight import (
    DEFAULT_MAX_PIXELS,
    Planned,
    check_pixels,
    check_space,
    feature_store_bytes,
    out_of_space,
)
from dinosaw_deploy.tiling.pipeline import extract_tiled, run_tiles, tile_input
from dinosaw_deploy.tiling.preview import preview_path, write_preview
from dinosaw_deploy.tiling.store import FeatureStore

TILED_DEFAULTS = {"tile": 518, "overlap": 4, "batch": 4, "dtype": "float16", "merge": "blend"}


def extract_features(
    image: str | os.PathLike,
    output: str | os.PathLike,
    extractor: FeatureExtractor,
    *,
    select: PageChoice = PageChoice(),
    tiled: dict[str, Any] | None = None,
    preview: bool = True,
    intensity_range: tuple[float, float] | None = None,
    percentiles: tuple[float, float] | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    runner: Callable[..., dict[str, Any]] = run_tiles,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict[str, Any]:
    """Patch features of ``image`` into ``output``: ``.zarr`` (tiled, resumable, any size; ``tiled`` may set
    tile/overlap/batch/dtype/merge) or ``.npy`` (one whole-image pass, small images). Returns the run summary.
    ``runner`` computes the store's tiles (default here; a cluster's, e.g. ``DaskTiles``, elsewhere). Images above
    ``max_pixels`` and stores that cannot fit on the disk are refused first (:mod:`dinosaw_deploy.preflight`)."""
    image, output = Path(image), Path(output)
    tiled = {k: v for k, v in (tiled or {}).items() if v is not None}
    unknown = set(tiled) - set(TILED_DEFAULTS)
    if unknown:
        raise DinosawError(f"unknown tiling options: {', '.join(sorted(unknown))}")
    suffix = output.suffix.lower()
    if suffix not in (".zarr", ".npy"):
        raise DinosawError(f"output must end in .zarr (tiled) or .npy (whole image), got {output.name}")
    if suffix == ".npy" and (tiled or not preview):
        raise DinosawError("--tile/--overlap/--batch/--dtype/--merge/--no-preview apply to .zarr outputs only")
    if suffix == ".npy" and runner is not run_tiles:
        raise DinosawError("--cluster writes a .zarr feature store; a .npy is one pass in this process")
    if intensity_range and percentiles:
        raise DinosawError("give --intensity-range or --intensity-percentiles, not both")
    outputs = [output]
    if suffix == ".npy":
        outputs.append(output.with_name(output.name + ".json"))  # the sidecar is an output too
    elif preview:
        outputs.append(preview_path(output))
    for path in outputs:
        check_output(path, [image, extractor.model_path], overwrite)
    with output_lock(outputs), select.open(image) as reader:
        check_pixels(reader.shape, max_pixels, image.name)
        dtype = "float32" if suffix == ".npy" else tiled.get("dtype", TILED_DEFAULTS["dtype"])
        planned = [Planned(output, feature_store_bytes(reader.shape, extractor.patch_size, extractor.embed_dim, dtype),
                           "feature store")]
        check_space(planned)
        if suffix == ".npy":
            return _whole_image(reader, extractor, output, intensity_range=intensity_range, percentiles=percentiles)
        options = {**TILED_DEFAULTS, **tiled}
        with out_of_space(planned):
            summary = extract_tiled(reader, extractor, output, tile=options["tile"], overlap=options["overlap"],
                                    window=options["merge"], batch=options["batch"], dtype=options["dtype"],
                                    intensity_range=intensity_range, percentiles=percentiles, progress=progress,
                                    runner=runner)
        if preview:
            summary["preview"] = str(write_preview(FeatureStore.open(output), preview_path(output)))
    return summary


def _whole_image(reader: ImageReader, extractor: FeatureExtractor, output: Path, *, intensity_range,
                 percentiles) -> dict[str, Any]:
    """One engine pass over the whole image (attention over all tokens: refused above the token limit)."""
    h, w = grid_shape(*reader.shape, extractor.patch_size)
    if h * w > MAX_WHOLE_IMAGE_TOKENS:
        raise DinosawError(
            f"{reader.path.name} gives {h}x{w} patches, too many for one pass (max {MAX_WHOLE_IMAGE_TOKENS}); "
            f"write a tiled .zarr output instead"
        )
    lo_hi = fit_intensity_range(reader, intensity_range=intensity_range, percentiles=percentiles)
    feats = extractor.run(tile_input(reader.read_region(0, 0, *reader.shape), extractor, lo_hi)[None])[0]
    summary = {"output": str(output), "shape": list(feats.shape), "dtype": "float32",
               "intensity_range": list(lo_hi), "image": reader.info.to_dict()}
    with atomic_path(output) as tmp:
        np.save(tmp, feats)
    atomic_write_bytes(output.with_name(output.name + ".json"), (json.dumps(summary, indent=2) + "\n").encode())
    return summary

