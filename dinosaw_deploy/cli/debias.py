"""``dinosaw-deploy debias fit``: the positional subspace of an engine's features, for ``--debias``."""
from __future__ import annotations

from pathlib import Path

import click

from dinosaw_deploy.cli._options import DEFAULT_ENGINE, backend_option
from dinosaw_deploy.probe.debias import DEFAULT_MAX_RANK, DEFAULT_TARGET_R2


@click.group("debias")
def debias_group() -> None:
    """Remove the positional subspace from an engine's features (RASA's idea, at inference)."""


@debias_group.command("fit")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The subspace (.npz).")
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="Exported model whose features of IMAGE inputs are used [engines/alibi_dv2_vits14.onnx].")
@click.option("--max-rank", type=click.IntRange(min=1), default=DEFAULT_MAX_RANK, show_default=True,
              help="Most directions to remove.")
@click.option("--target-r2", type=float, default=DEFAULT_TARGET_R2, show_default=True,
              help="Stop once a held-out probe's R²(x,y) is below this.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True, help="Token sampling seed.")
@click.option("--intensity-range", nargs=2, type=float, default=None, metavar="LO HI",
              help="Map [LO, HI] to [0, 1] for IMAGE inputs instead of the per-dtype default.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@backend_option
def debias_fit_command(inputs, output, engine, max_rank, target_r2, seed, intensity_range, overwrite, backend) -> None:
    """Fit, on homogeneous scans (IMAGE... or FEATURES.npy|.zarr), the directions in which a linear probe reads
    position from the features; `--debias OUTPUT` on features/segment/fit/apply/probe projects them out."""
    from dinosaw_deploy.engine.extractor import FeatureExtractor
    from dinosaw_deploy.probe.debias import fit_debias
    from dinosaw_deploy.probe.run import FEATURE_SUFFIXES

    extractor = None
    if any(Path(p).suffix.lower() not in FEATURE_SUFFIXES for p in inputs):
        extractor = FeatureExtractor(engine or DEFAULT_ENGINE, backend=backend,
                                     intensity_range=tuple(intensity_range) if intensity_range else None)
    fit_debias(inputs, output, extractor=extractor, seed=seed, max_rank=max_rank, target_r2=target_r2,
               overwrite=overwrite, echo=click.echo)
