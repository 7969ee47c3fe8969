"""Defaults and click options shared by the commands that run an engine."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import click

from dinosaw_deploy.engine.backends import BACKENDS
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.intensity import DEFAULT_NORMALIZE, NORMALIZATIONS
from dinosaw_deploy.preflight import DEFAULT_MAX_PIXELS
from dinosaw_deploy.segment.classifier import MAX_DEPTH, MAX_ROUNDS, ClassifierParams

DEFAULT_ENGINE = Path("engines") / "alibi_dv2_vits14.onnx"

max_pixels_option = click.option(
    "--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
    help="Refuse images that declare more pixels (a guard against size bombs; raise it for larger real scans).")

backend_option = click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="Inference backend (auto: TensorRT plan, else ONNX Runtime TensorRT > CUDA > CPU, whichever exist).",
)

CLASSIFIER = ClassifierParams()  # the defaults shown in --help


def training_options(command):
    """The classifier and threading options of ``segment`` and ``fit``."""
    for option in reversed([
        click.option("--contrast", type=click.Choice(["none", "clahe"]), default="none", show_default=True,
                     help="Contrast equalisation before the filter bank (CLAHE evens out uneven illumination; "
                          "fitted per image)."),
        click.option("--normalize", type=click.Choice(NORMALIZATIONS), default=DEFAULT_NORMALIZE, show_default=True,
                     help="How each image's intensities map to [0, 1], fitted per image and stored in the model: "
                          "dtype = the pixel type's range; minmax, percentile (0.5-99.5 %) or zscore (mean +- 3 "
                          "std) of a sample of the whole image (robust to exposure changes between scans)."),
        click.option("--rounds", type=click.IntRange(1, MAX_ROUNDS), default=CLASSIFIER.rounds, show_default=True,
                     help=f"XGBoost rounds (learning rate {CLASSIFIER.learning_rate})."),
        click.option("--max-depth", type=click.IntRange(1, MAX_DEPTH), default=CLASSIFIER.max_depth, show_default=True,
                     help="XGBoost tree depth."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="XGBoost training device."),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads [all cores]."),
    ]):
        command = option(command)
    return command


def prediction_options(command):
    """What ``segment`` and ``apply`` write besides the labels and how they label pixels."""
    for option in reversed([
        click.option("--probabilities", is_flag=True, help="Also write per-class probabilities (*.probabilities.ome.tif)."),
        click.option("--exact", is_flag=True,
                     help="Classify every pixel (default: a 3-px grid, then each pixel near a class boundary or "
                          "uncertain: about 4x less classifier time, the same labels on > 99.9 % of pixels; a "
                          "1-2 px structure the grid misses is lost)."),
        click.option("--modal", type=click.IntRange(0, 256), default=0, help="Majority filter radius in px (0 = off)."),
        click.option("--crf", is_flag=True, help="Dense-CRF post-processing per tile (needs the 'crf' extra)."),
    ]):
        command = option(command)
    return command


def feature_options(command):
    """``--bias-jitter SIGMA`` and ``--debias P.npz``: what the extractor does to an engine's features."""
    command = click.option(
        "--debias", type=click.Path(path_type=Path, dir_okay=False), default=None,
        help="Project this positional subspace (from `dinosaw-deploy debias fit`) out of the ViT features; a "
             "model trained with one keeps it.")(command)
    return click.option(
        "--bias-jitter", type=click.FloatRange(0, 1), default=0.0, show_default=True,
        help="Std of Gaussian noise on the ALiBi distances (one seeded draw per grid size; paper S4: clears "
             "faint structure on flat images); a model trained with it keeps it.")(command)


def open_engine(engine: Path | None, no_vit: bool, backend: str, required: bool = False, *,
                bias_jitter: float = 0.0, debias: Path | None = None):
    """The FeatureExtractor for segment/fit/apply, or None for classical features only (with a notice when
    the default engine is missing and not ``required``)."""
    from dinosaw_deploy.engine.extractor import FeatureExtractor

    if no_vit:
        if bias_jitter or debias:
            raise DinosawError("--bias-jitter and --debias change ViT features: they need an engine, not --no-vit")
        return None
    if engine is None:
        if not DEFAULT_ENGINE.is_file():
            if required:
                raise DinosawError(f"this model uses ViT features: pass --engine (no engine at {DEFAULT_ENGINE})")
            click.echo(f"notice: no engine at {DEFAULT_ENGINE}, so classical features only. For ViT features, "
                       "run `dinosaw-deploy export` (or pass --engine X.onnx); --no-vit silences this.")
            return None
        engine = DEFAULT_ENGINE
    return FeatureExtractor(engine, backend=backend, bias_jitter=bias_jitter, debias=debias)


def cluster_options(command):
    """``--cluster SPEC``, ``--block PX`` and ``--connect-timeout S`` (docs/cluster.md)."""
    command = click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=5.0,
                           show_default=True, help="Seconds to wait for a tcp:// scheduler.")(command)
    command = click.option("--block", type=click.IntRange(min=1), default=None,
                           help="Block edge in px on a cluster, rounded to the chunk grid "
                                "[features 2688, labels 1024].")(command)
    return click.option("--cluster", default=None, metavar="SPEC",
                        help="Run the blocks on dask.distributed: local[:N], tcp://HOST:PORT or slurm:CONFIG.yaml "
                             "(needs the 'cluster' extra).")(command)


def cluster_executor(cluster: str | None, block: int | None, threads: int | None, backend: str,
                     connect_timeout: float = 5.0):
    """A context giving the job's ``DaskExecutor`` for ``--cluster``, or None (dask not imported)."""
    if cluster is None:
        if block is not None:
            raise DinosawError("--block applies with --cluster only")
        return nullcontext()
    from dinosaw_deploy.cluster import cluster_executor as start

    return start(cluster, block=block, threads=threads or 1, backend=backend, connect_timeout=connect_timeout)
