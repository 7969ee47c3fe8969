"""``dinosaw-deploy fit``: one model from the scribbles of several images (calls :func:`segment.run.fit_scans`)."""
from __future__ import annotations

from pathlib import Path

import click

from dinosaw_deploy.cli._options import (
    backend_option,
    feature_options,
    max_pixels_option,
    open_engine,
    training_options,
)
from dinosaw_deploy.cli._progress import TileProgress
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.reader import require_file


@click.command("fit")
@click.option("--pair", "pairs", nargs=2, multiple=True, required=True,
              type=(click.Path(path_type=Path), click.Path(path_type=Path)), metavar="IMAGE LABELS",
              help="An image and its scribbles (PNG/TIFF, 0 = unlabelled); repeat for several images.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Model (.dsw).")
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="Exported engine (.onnx/.plan, any family) for ViT features [engines/alibi_dv2_vits14.onnx if present].")
@click.option("--no-vit", is_flag=True, help="Classical features only.")
@training_options
@click.option("--overwrite", is_flag=True, help="Replace an existing model.")
@backend_option
@feature_options
@max_pixels_option
def fit_command(pairs: tuple[tuple[Path, Path], ...], output: Path, engine: Path | None, no_vit: bool, contrast: str,
                normalize: str, rounds: int, max_depth: int, device: str, threads: int | None, overwrite: bool, backend: str,
                bias_jitter: float, debias: Path | None, max_pixels: int) -> None:
    """Train one model on the scribbles of one or more images; apply it with `dinosaw-deploy apply`."""
    from dinosaw_deploy.segment.classifier import ClassifierParams
    from dinosaw_deploy.segment.run import ModelOptions, RunOptions, fit_scans

    if engine is not None and no_vit:
        raise DinosawError("--engine and --no-vit contradict each other; pass one")
    for path in (p for pair in pairs for p in pair):  # before the engine, whose notice would bury this error
        require_file(path, "input")
    model = ModelOptions(contrast=contrast, normalize=normalize,
                         classifier=ClassifierParams(rounds=rounds, max_depth=max_depth))
    with TileProgress() as progress:
        fit_scans(pairs, output, extractor=open_engine(engine, no_vit, backend, bias_jitter=bias_jitter, debias=debias),
                  model=model, run=RunOptions(overwrite=overwrite, threads=threads, device=device, echo=click.echo,
                                              progress=progress, max_pixels=max_pixels))
