"""The ``features`` command: whole-image ``.npy`` for small images, tiled ``.zarr`` for any size."""
from __future__ import annotations

import json
from pathlib import Path

import click

from dinosaw_deploy.cli._options import backend_option, cluster_executor, cluster_options
from dinosaw_deploy.errors import DinosawError

# A whole-image pass attends over all tokens at once (memory ~ tokens^2): beyond this, tile.
MAX_WHOLE_IMAGE_TOKENS = 128 * 128
TILED_DEFAULTS = {"tile": 518, "overlap": 4, "batch": 4, "dtype": "float16", "merge": "blend"}


@click.command("features")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Output: .zarr (tiled, any size, resumable) or .npy (whole image in one pass, small images).")
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="Exported ONNX model [engines/alibi_dv2_vits14.onnx].")
@click.option("--intensity-range", nargs=2, type=float, default=None, metavar="LO HI",
              help="Map [LO, HI] to [0, 1] (default: dtype range for integers, sampled min/max for floats).")
@click.option("--intensity-percentiles", nargs=2, type=float, default=None, metavar="PLO PHI",
              help="Map these percentiles of a pixel sample to [0, 1] (a global contrast stretch).")
@click.option("--page", type=click.IntRange(min=0), default=0, show_default=True, help="TIFF page (IFD) to read.")
@click.option("--level", type=click.IntRange(min=0), default=0, show_default=True,
              help="Pyramid level (0 = full resolution).")
@click.option("--crop-databar", is_flag=True, help="Drop the FEI/Zeiss info bar (height taken from the metadata).")
@click.option("--tile", type=click.IntRange(min=14), default=None,
              help="Tile size in px, a multiple of 14 [.zarr; 518].")
@click.option("--overlap", type=click.IntRange(min=0), default=None, help="Tile overlap in patches [.zarr; 4].")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Tiles per engine call (memory ~ batch) [.zarr; 4].")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default=None, help="Stored dtype [.zarr; float16].")
@click.option("--merge", type=click.Choice(["blend", "central"]), default=None,
              help="Stitching: linear blend across overlaps, or each token from its most central tile [.zarr; blend].")
@click.option("--no-preview", is_flag=True, help="Do not write the PCA preview PNG [.zarr].")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@backend_option
@cluster_options
def features_command(image: Path, output: Path, engine: Path, intensity_range, intensity_percentiles, page, level,
                     crop_databar, tile, overlap, batch, dtype, merge, no_preview, as_json, overwrite,
                     backend: str, cluster: str | None, block: int | None) -> None:
    """Patch features of IMAGE: (C, H // 14, W // 14) as a chunked zarr store (.zarr) or a float32 .npy.

    A .zarr run streams the image tile by tile in bounded memory, shows progress, resumes where an
    interrupted run stopped, and writes a PCA preview PNG beside the store.
    """
    from dinosaw_deploy.cli._options import DEFAULT_ENGINE
    from dinosaw_deploy.engine.extractor import FeatureExtractor
    from dinosaw_deploy.files import check_output
    from dinosaw_deploy.image.reader import open_image

    engine = engine or DEFAULT_ENGINE
    tiled = {"tile": tile, "overlap": overlap, "batch": batch, "dtype": dtype, "merge": merge}
    suffix = output.suffix.lower()
    if suffix not in (".zarr", ".npy"):
        raise DinosawError(f"output must end in .zarr (tiled) or .npy (whole image), got {output.name}")
    if suffix == ".npy" and (any(v is not None for v in tiled.values()) or no_preview):
        raise DinosawError("--tile/--overlap/--batch/--dtype/--merge/--no-preview apply to .zarr outputs only")
    if suffix == ".npy" and cluster is not None:
        raise DinosawError("--cluster writes a .zarr feature store; a .npy is one pass in this process")
    if intensity_range and intensity_percentiles:
        raise DinosawError("give --intensity-range or --intensity-percentiles, not both")
    check_output(output, [image, engine], overwrite)
    if suffix == ".zarr" and not no_preview:
        from dinosaw_deploy.tiling.preview import preview_path

        check_output(preview_path(output), [image, engine], overwrite)
    ranges = {"intensity_range": tuple(intensity_range) if intensity_range else None,
              "percentiles": tuple(intensity_percentiles) if intensity_percentiles else None}
    with open_image(image, page=page, level=level, crop_databar=crop_databar) as reader:
        if suffix == ".npy":
            summary = _whole_image(reader, engine, output, backend=backend, **ranges)
        else:
            options = {k: TILED_DEFAULTS[k] if v is None else v for k, v in tiled.items()}
            extractor = FeatureExtractor(engine, batch_size=options["batch"], backend=backend)
            with cluster_executor(cluster, block, None, backend) as executor:
                summary = _tiled(reader, extractor, output, options, ranges, not no_preview, quiet=as_json,
                                 runner=executor.runner if executor else None)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"wrote {output}: features {tuple(summary['shape'])} {summary['dtype']} from {image.name}"
                   + (f" ({summary['tiles']} tiles, {summary['seconds']:.1f} s)" if "tiles" in summary else ""))


def _whole_image(reader, engine: Path, output: Path, *, backend: str, intensity_range, percentiles) -> dict:
    import numpy as np

    from dinosaw_deploy.engine.extractor import FeatureExtractor
    from dinosaw_deploy.engine.preprocess import grid_shape
    from dinosaw_deploy.files import atomic_path, atomic_write_bytes
    from dinosaw_deploy.image.intensity import fit_intensity_range

    h, w = grid_shape(*reader.shape)
    if h * w > MAX_WHOLE_IMAGE_TOKENS:
        raise DinosawError(
            f"{reader.path.name} gives {h}x{w} patches, too many for one pass (max {MAX_WHOLE_IMAGE_TOKENS}); "
            f"write a tiled .zarr output instead"
        )
    lo_hi = fit_intensity_range(reader, intensity_range=intensity_range, percentiles=percentiles)
    extractor = FeatureExtractor(engine, intensity_range=lo_hi, backend=backend)
    feats = extractor(reader.read_region(0, 0, *reader.shape))
    summary = {"output": str(output), "shape": list(feats.shape), "dtype": "float32",
               "intensity_range": list(lo_hi), "image": reader.info.to_dict()}
    with atomic_path(output) as tmp:
        np.save(tmp, feats)
    atomic_write_bytes(output.with_name(output.name + ".json"), (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _tiled(reader, extractor, output: Path, options: dict, ranges: dict, preview: bool, quiet: bool,
           runner=None) -> dict:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from dinosaw_deploy.tiling.pipeline import extract_tiled, run_tiles
    from dinosaw_deploy.tiling.store import FeatureStore

    bar = Progress(TextColumn("tiles"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn(), console=Console(stderr=True), disable=quiet)
    task = bar.add_task("tiles", total=None)

    def progress(done: int, total: int) -> None:  # the bar appears once the run is set up and checked
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        summary = extract_tiled(
            reader, extractor, output,
            tile=options["tile"], overlap=options["overlap"], window=options["merge"], batch=options["batch"],
            dtype=options["dtype"], **ranges, progress=progress, runner=runner or run_tiles,
        )
    finally:
        if bar.live.is_started:
            bar.stop()
    if preview:
        from dinosaw_deploy.tiling.preview import preview_path, write_preview

        summary["preview"] = str(write_preview(FeatureStore.open(output), preview_path(output)))
    return summary
