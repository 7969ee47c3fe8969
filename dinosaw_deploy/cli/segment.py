"""``dinosaw-deploy segment`` and ``dinosaw-deploy apply``: parse options, pick the engine, call
:mod:`dinosaw_deploy.segment.run`, print."""
from __future__ import annotations

from pathlib import Path

import click

from dinosaw_deploy.cli._options import (
    backend_option,
    cluster_executor,
    cluster_options,
    feature_options,
    max_pixels_option,
    open_engine,
    prediction_options,
    training_options,
)
from dinosaw_deploy.cli._progress import TileProgress
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.reader import require_file


@click.command("segment")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--labels", "labels_path", type=click.Path(path_type=Path), required=True,
              help="Scribbles: PNG/TIFF, 0 = unlabelled; classes 1..K, grey levels, or colours.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Label image (.ome.tif or .ome.zarr).")
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="Exported engine (.onnx/.plan, any family) for ViT features [engines/alibi_dv2_vits14.onnx if present].")
@click.option("--no-vit", is_flag=True, help="Classical features only.")
@click.option("--save-model", type=click.Path(path_type=Path), default=None, help="Also save the model (.dsw).")
@prediction_options
@training_options
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--ground-truth", type=click.Path(path_type=Path), default=None,
              help="Dense label file (the scribbles' conventions): print mIoU and per-class IoU.")
@backend_option
@feature_options
@cluster_options
@max_pixels_option
def segment_command(image: Path, labels_path: Path, output: Path, engine: Path | None, no_vit: bool,
                    save_model: Path | None, probabilities: bool, exact: bool, modal: int, crf: bool, contrast: str, normalize: str,
                    rounds: int,
                    max_depth: int, device: str, threads: int | None, overwrite: bool, ground_truth: Path | None,
                    backend: str, bias_jitter: float, debias: Path | None, cluster: str | None, block: int | None,
                    connect_timeout: float, max_pixels: int) -> None:
    """Train on the scribbled pixels of IMAGE and segment all of it into a pyramidal OME-TIFF."""
    from dinosaw_deploy.segment.classifier import ClassifierParams
    from dinosaw_deploy.segment.run import ModelOptions, PredictOptions, RunOptions, segment_scan

    if engine is not None and no_vit:
        raise DinosawError("--engine and --no-vit contradict each other; pass one")
    for path in (image, labels_path, *([ground_truth] if ground_truth else [])):  # before the engine's notice
        require_file(path, "input")
    model = ModelOptions(contrast=contrast, normalize=normalize,
                         classifier=ClassifierParams(rounds=rounds, max_depth=max_depth))
    with TileProgress() as progress, cluster_executor(cluster, block, threads, backend, connect_timeout) as executor:
        extractor = open_engine(engine, no_vit, backend, bias_jitter=bias_jitter, debias=debias)
        segment_scan(image, labels_path, output, extractor=extractor, save_model=save_model, ground_truth=ground_truth,
                     model=model, predict=PredictOptions(probabilities=probabilities, modal=modal, crf=crf, exact=exact),
                     run=RunOptions(overwrite=overwrite, threads=threads, device=device, echo=click.echo,
                                    progress=progress, executor=executor, max_pixels=max_pixels))


@click.command("apply")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_path", type=click.Path(path_type=Path), required=True, help="Trained model (.dsw).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Label image (.ome.tif or .ome.zarr) for one image; a folder (gets <name>.ome.tif per image; "
                   "an existing one, or OUT/ with a slash, for one image) "
                   "for several.")
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="The engine the model was trained with (ViT models) [engines/alibi_dv2_vits14.onnx].")
@prediction_options
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads [all cores].")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (else finished images are skipped).")
@click.option("--ground-truth", "ground_truths", multiple=True, type=click.Path(path_type=Path),
              help="Dense label file per image, in the images' order: print mIoU and per-class IoU.")
@backend_option
@feature_options
@cluster_options
@max_pixels_option
def apply_command(images: tuple[Path, ...], model_path: Path, output: Path, engine: Path | None, probabilities: bool,
                  exact: bool, modal: int, crf: bool, threads: int | None, overwrite: bool, ground_truths: tuple[Path, ...],
                  backend: str, bias_jitter: float, debias: Path | None, cluster: str | None, block: int | None,
                  connect_timeout: float, max_pixels: int) -> None:
    """Segment one or more IMAGES with a model saved by `fit` or `segment --save-model`."""
    from dinosaw_deploy.segment.bundle import ModelFile
    from dinosaw_deploy.segment.run import PredictOptions, RunOptions, apply_scans

    for path in (*images, model_path, *ground_truths):
        require_file(path, "input")
    model = ModelFile.read(model_path)  # the one read of the bundle
    uses_vit = model.bundle.config.get("vit") is not None
    with TileProgress() as progress, cluster_executor(cluster, block, threads, backend, connect_timeout) as executor:
        extractor = open_engine(engine, not uses_vit, backend, required=True, bias_jitter=bias_jitter, debias=debias)
        apply_scans(images, model, output, extractor=extractor, ground_truths=ground_truths,
                    predict=PredictOptions(probabilities=probabilities, modal=modal, crf=crf, exact=exact),
                    run=RunOptions(overwrite=overwrite, threads=threads, echo=click.echo, progress=progress,
                                   executor=executor, max_pixels=max_pixels))
