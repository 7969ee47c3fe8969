"""``dinosaw-deploy features``: parse options, call :func:`dinosaw_deploy.tiling.run.extract_features`, print."""
from __future__ import annotations

import json
from pathlib import Path

import click

from dinosaw_deploy.cli._options import (
    DEFAULT_ENGINE,
    backend_option,
    cluster_executor,
    cluster_options,
    feature_options,
    max_pixels_option,
)
from dinosaw_deploy.cli._progress import TileProgress


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
@feature_options
@cluster_options
@max_pixels_option
def features_command(image: Path, output: Path, engine: Path, intensity_range, intensity_percentiles, page, level,
                     crop_databar, tile, overlap, batch, dtype, merge, no_preview, as_json, overwrite,
                     backend: str, bias_jitter: float, debias: Path | None, cluster: str | None,
                     block: int | None, connect_timeout: float, max_pixels: int) -> None:
    """Patch features of IMAGE: (C, H // 14, W // 14) as a chunked zarr store (.zarr) or a float32 .npy.

    A .zarr run streams the image tile by tile in bounded memory, shows progress, resumes where an
    interrupted run stopped, and writes a PCA preview PNG beside the store.
    """
    from dinosaw_deploy.engine.extractor import FeatureExtractor
    from dinosaw_deploy.image.reader import PageChoice
    from dinosaw_deploy.tiling.run import TILED_DEFAULTS, extract_features

    engine = engine or DEFAULT_ENGINE
    extractor = FeatureExtractor(engine, batch_size=batch or TILED_DEFAULTS["batch"], backend=backend,
                                 bias_jitter=bias_jitter, debias=debias)
    tiled = {"tile": tile, "overlap": overlap, "batch": batch, "dtype": dtype, "merge": merge}
    with (TileProgress(quiet=as_json) as progress,
          cluster_executor(cluster, block, None, backend, connect_timeout) as executor):
        summary = extract_features(
            image, output, extractor, select=PageChoice(page, level, crop_databar), tiled=tiled,
            preview=not no_preview, intensity_range=tuple(intensity_range) if intensity_range else None,
            percentiles=tuple(intensity_percentiles) if intensity_percentiles else None, overwrite=overwrite,
            progress=progress, max_pixels=max_pixels, **({"runner": executor.runner} if executor else {}),
        )
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"wrote {output}: features {tuple(summary['shape'])} {summary['dtype']} from {image.name}"
                   + (f" ({summary['tiles']} tiles, {summary['seconds']:.1f} s)" if "tiles" in summary else ""))
