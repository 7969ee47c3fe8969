"""``dinosaw-deploy segment`` and ``dinosaw-deploy apply``: parse options, pick the engine, call
:mod:`dinosaw_deploy.segment.run`, print."""
from __future__ import annotations

from pathlib import Path

import click

from dinosaw_deploy.cli._options import DEFAULT_ENGINE, backend_option, cluster_executor, cluster_options
from dinosaw_deploy.errors import DinosawError


def _engine(engine: Path | None, no_vit: bool, backend: str, required: bool = False):
    """The FeatureExtractor to use, or None for classical features only."""
    from dinosaw_deploy.engine.extractor import FeatureExtractor

    if no_vit:
        return None
    if engine is None:
        if not DEFAULT_ENGINE.is_file():
            if required:
                raise DinosawError(f"this model uses ViT features: pass --engine (no engine at {DEFAULT_ENGINE})")
            click.echo(f"notice: no engine at {DEFAULT_ENGINE}, so classical features only. For ViT features, "
                       "run `dinosaw-deploy export` (or pass --engine X.onnx); --no-vit silences this.")
            return None
        engine = DEFAULT_ENGINE
    return FeatureExtractor(engine, backend=backend)


class _Bar:
    """A click progress bar per stage, fed by the library's ``progress(done, total)`` callback."""

    def __init__(self) -> None:
        self.bar, self.total = None, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None or total != self.total:
            self.close()
            self.bar, self.total = click.progressbar(length=total, label="tiles", file=None), total
            self.bar.__enter__()
        self.bar.update(done - self.bar.pos)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@click.command("segment")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--labels", "labels_path", type=click.Path(path_type=Path), required=True,
              help="Scribbles: PNG/TIFF, 0 = unlabelled; classes 1..K, grey levels, or colours.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Label image (.ome.tif or .ome.zarr).")
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="Exported ALiBi-Dv2 (.onnx) for ViT features [engines/alibi_dv2_vits14.onnx if present].")
@click.option("--no-vit", is_flag=True, help="Classical features only.")
@click.option("--save-model", type=click.Path(path_type=Path), default=None, help="Also save the model (.dsw).")
@click.option("--probabilities", is_flag=True, help="Also write per-class probabilities (*.probabilities.ome.tif).")
@click.option("--modal", type=click.IntRange(min=0), default=0, help="Majority filter radius in px (0 = off).")
@click.option("--crf", is_flag=True, help="Dense-CRF post-processing per tile (needs the 'crf' extra).")
@click.option("--contrast", type=click.Choice(["none", "clahe"]), default="none", show_default=True,
              help="Contrast equalisation before the filter bank (CLAHE evens out uneven illumination).")
@click.option("--rounds", type=click.IntRange(min=1), default=100, show_default=True, help="XGBoost rounds.")
@click.option("--max-depth", type=click.IntRange(min=1), default=8, show_default=True, help="XGBoost tree depth.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="XGBoost training device.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads [all cores].")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@backend_option
@cluster_options
def segment_command(image: Path, labels_path: Path, output: Path, engine: Path | None, no_vit: bool,
                    save_model: Path | None, probabilities: bool, modal: int, crf: bool, contrast: str, rounds: int,
                    max_depth: int, device: str, threads: int | None, overwrite: bool, backend: str,
                    cluster: str | None, block: int | None) -> None:
    """Train on the scribbled pixels of IMAGE and segment all of it into a pyramidal OME-TIFF."""
    from dinosaw_deploy.segment.classifier import ClassifierParams
    from dinosaw_deploy.segment.run import segment_scan

    if engine is not None and no_vit:
        raise DinosawError("--engine and --no-vit contradict each other; pass one")
    for path in (image, labels_path):  # before the engine, whose notice would bury this error
        if not path.is_file():
            raise DinosawError(f"not found: {path}")
    bar = _Bar()
    try:
        with cluster_executor(cluster, block, threads, backend) as executor:
            segment_scan(image, labels_path, output, extractor=_engine(engine, no_vit, backend),
                         save_model=save_model, probabilities=probabilities, modal=modal, crf=crf, contrast=contrast,
                         classifier=ClassifierParams(rounds=rounds, max_depth=max_depth), device=device,
                         threads=threads, overwrite=overwrite, echo=click.echo, progress=bar, executor=executor)
    finally:
        bar.close()


@click.command("apply")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--model", "model_path", type=click.Path(path_type=Path), required=True, help="Trained model (.dsw).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Label image (.ome.tif or .ome.zarr).")
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="The engine the model was trained with (ViT models) [engines/alibi_dv2_vits14.onnx].")
@click.option("--probabilities", is_flag=True, help="Also write per-class probabilities (*.probabilities.ome.tif).")
@click.option("--modal", type=click.IntRange(min=0), default=0, help="Majority filter radius in px (0 = off).")
@click.option("--crf", is_flag=True, help="Dense-CRF post-processing per tile (needs the 'crf' extra).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads [all cores].")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@backend_option
@cluster_options
def apply_command(image: Path, model_path: Path, output: Path, engine: Path | None, probabilities: bool,
                  modal: int, crf: bool, threads: int | None, overwrite: bool, backend: str, cluster: str | None,
                  block: int | None) -> None:
    """Segment IMAGE with a model saved by `segment --save-model`."""
    from dinosaw_deploy.segment.bundle import load_bundle
    from dinosaw_deploy.segment.run import apply_scan

    for path in (image, model_path):
        if not path.is_file():
            raise DinosawError(f"not found: {path}")
    uses_vit = load_bundle(model_path).config.get("vit") is not None
    bar = _Bar()
    try:
        with cluster_executor(cluster, block, threads, backend) as executor:
            apply_scan(image, model_path, output, extractor=_engine(engine, not uses_vit, backend, required=True),
                       probabilities=probabilities, modal=modal, crf=crf, threads=threads, overwrite=overwrite,
                       echo=click.echo, progress=bar, executor=executor)
    finally:
        bar.close()
