"""``dinosaw-deploy probe``: the paper's positional-bias probe, the tile-seam audit and the
cyclic-shift equivariance check, written as a JSON report and a PNG figure."""
from __future__ import annotations

from pathlib import Path

import click

from dinosaw_deploy.cli._options import DEFAULT_ENGINE, backend_option
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
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@backend_option
def probe_command(inputs, output, engine, tiles, roll, shifts, roll_tolerance, repeats, seed, top,
                  max_sample, intensity_range, no_figure, overwrite, backend) -> None:
    """Positional-bias probe (paper Sec. 3.1) of IMAGE... (features from --engine) or FEATURES.npy|.zarr.

    Fits StandardScaler + Ridge(alpha=1) from features to x/y ramps on (h*w)//36 random tokens,
    scores R² on all tokens, 6 repeats per input; also diagonal/radial ramps and one-channel
    probes ranking the most positional channels. R² near 0 or below: no positional bias.
    """
    from dinosaw_deploy.engine.extractor import FeatureExtractor
    from dinosaw_deploy.probe.run import FEATURE_SUFFIXES, run_probe

    needs_engine = roll or any(Path(p).suffix.lower() not in FEATURE_SUFFIXES for p in inputs)
    extractor = None
    if needs_engine:
        extractor = FeatureExtractor(engine or DEFAULT_ENGINE, backend=backend,
                                     intensity_range=tuple(intensity_range) if intensity_range else None)
    run_probe(inputs, output, extractor=extractor, tiles=tiles, roll=roll, shifts=shifts,
              roll_tolerance=roll_tolerance, repeats=repeats, seed=seed, top=top, max_sample=max_sample,
              figure=not no_figure, overwrite=overwrite, echo=click.echo)
