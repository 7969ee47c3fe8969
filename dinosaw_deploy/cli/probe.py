"""``dinosaw-deploy probe``: the paper's positional-bias probe, the tile-seam audit and the
cyclic-shift equivariance check, written as a JSON report and a PNG figure."""
from __future__ import annotations

from pathlib import Path

import click

from dinosaw_deploy.cli._options import DEFAULT_ENGINE, backend_option, feature_options
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.probe.run import MAX_SAMPLE, ROLL_TOLERANCE


@click.command("probe")
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="JSON report; the figure is written beside it with the suffix .png.")
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="Exported model, for IMAGE inputs and --roll [default: engines/alibi_dv2_vits14.onnx].")
@click.option("--tiles", is_flag=True,
              help="Stitched feature stores (.zarr): probe tile-local ramps (position inside the engine tile) "
                   "and report the seam ratio.")
@click.option("--roll", is_flag=True,
              help="Check the engine's cyclic-shift equivariance on the images (or a synthetic micrograph).")
@click.option("--shift", "shifts", type=(int, int), multiple=True, metavar="KY KX",
              help="Whole-patch shift for --roll (repeatable; default: 1 row, 1 column, half the grid).")
@click.option("--roll-tolerance", type=click.FloatRange(min=0), default=ROLL_TOLERANCE, show_default=True,
              help="--roll passes when max deviation <= this x max |feature|.")
@click.option("--repeats", type=click.IntRange(min=1), default=6, show_default=True, help="Random samplings per input.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seed of the token sampling.")
@click.option("--top", type=click.IntRange(min=1), default=8, show_default=True, help="Positional channels to list.")
@click.option("--max-sample", type=click.IntRange(min=2), default=MAX_SAMPLE, show_default=True,
              help="Cap on the tokens each fit samples ((h*w)//36 otherwise; only reached above 720k tokens).")
@click.option("--intensity-range", nargs=2, type=float, default=None, metavar="LO HI",
              help="Map [LO, HI] to [0, 1] for IMAGE inputs instead of the per-dtype default.")
@click.option("--no-figure", is_flag=True, help="Write only the JSON report.")
@click.option("--compare", is_flag=True,
              help="INPUTS are ENGINE... IMAGE...: engines (.onnx/.plan; ENGINE+SUBSPACE.npz: with --debias) side by "
                   "side on the same images in one table and one figure.")
@click.option("--labels", type=click.Path(path_type=Path), default=None,
              help="--compare: scribbles of the first image; each engine's features train a model on them and its "
                   "labels are drawn side by side.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@backend_option
@feature_options
def probe_command(inputs, output, engine, tiles, roll, shifts, roll_tolerance, repeats, seed, top,
                  max_sample, intensity_range, no_figure, compare, labels, overwrite, backend, bias_jitter,
                  debias) -> None:
    """Positional-bias probe (paper Sec. 3.1) of IMAGE... (features from --engine) or FEATURES.npy|.zarr.

    Fits StandardScaler + Ridge(alpha=1) from features to x/y ramps on (h*w)//36 random tokens,
    scores R² on all tokens, 6 repeats per input; also diagonal/radial ramps and one-channel
    probes ranking the most positional channels. R² near 0 or below: no positional bias.
    """
    from dinosaw_deploy.engine.extractor import FeatureExtractor
    from dinosaw_deploy.probe.run import FEATURE_SUFFIXES, ProbeSettings, run_probe

    intensity_range = tuple(intensity_range) if intensity_range else None
    if compare:
        _compare(inputs, output, engine, tiles, roll, labels, ProbeSettings(repeats, seed, top, max_sample),
                 no_figure, overwrite, backend, bias_jitter, debias, intensity_range)
        return
    if labels is not None:
        raise DinosawError("--labels belongs to --compare")
    needs_engine = roll or any(Path(p).suffix.lower() not in FEATURE_SUFFIXES for p in inputs)
    extractor = None
    if needs_engine:
        extractor = FeatureExtractor(engine or DEFAULT_ENGINE, backend=backend, intensity_range=intensity_range,
                                     bias_jitter=bias_jitter, debias=debias)
    run_probe(inputs, output, extractor=extractor, tiles=tiles, roll=roll, shifts=shifts,
              roll_tolerance=roll_tolerance, settings=ProbeSettings(repeats, seed, top, max_sample),
              figure=not no_figure, overwrite=overwrite, echo=click.echo)


def _compare(inputs, output, engine, tiles, roll, labels, settings, no_figure, overwrite, backend,
             bias_jitter, debias, intensity_range) -> None:
    from dinosaw_deploy.engine.extractor import FeatureExtractor
    from dinosaw_deploy.probe.compare import run_compare

    if engine is not None or tiles or roll or debias is not None or bias_jitter:
        raise DinosawError("--compare takes the engines among its INPUTS (ENGINE[+SUBSPACE.npz]... IMAGE...): "
                           "drop --engine/--tiles/--roll/--debias/--bias-jitter")
    specs = [str(p) for p in inputs if Path(str(p).split("+")[0]).suffix.lower() in (".onnx", ".plan")]
    images = [Path(p) for p in inputs if str(p) not in specs]
    extractors = []
    for spec in specs:
        path, _, subspace = spec.partition("+")
        extractors.append(FeatureExtractor(path, backend=backend, intensity_range=intensity_range,
                                           debias=subspace or None))
    run_compare(extractors, images, output, labels=labels, settings=settings,
                figure=not no_figure, overwrite=overwrite, echo=click.echo)
