"""``dinosaw-deploy probe``: the paper's positional-bias probe, the tile-seam audit and the
cyclic-shift equivariance check, written as a JSON report and a PNG figure."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dinosaw_deploy.cli._options import backend_option
from dinosaw_deploy.errors import DinosawError

FEATURE_SUFFIXES = (".npy", ".zarr")
MAX_SAMPLE = 20000  # fit tokens per repeat; the paper's (h*w)//36 is below this up to 720k tokens
ROLL_TOLERANCE = 1e-3
ROLL_IMAGE_SIZE = 224  # px, the synthetic micrograph used by --roll when no image is given


def _load_features(path: Path, tiles: bool):
    """(C, h, w) array, tile-local positions or None, seam report or None, for a .npy or .zarr input."""
    if path.suffix.lower() == ".npy":
        if tiles:
            raise DinosawError(f"{path}: --tiles needs a feature store (.zarr) that records its tile grid")
        import numpy as np

        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DinosawError(f"cannot read features {path}: {exc}") from None
        return array, None, None
    from dinosaw_deploy.tiling.store import FeatureStore

    store = FeatureStore.open(path)
    if not tiles:
        return store.array, None, None
    from dinosaw_deploy.probe.positional import tile_local_positions
    from dinosaw_deploy.tiling.seams import seam_stats

    grid = store.grid
    seams: dict[str, Any] = {"grid": grid.to_dict(), "seam_ratio": None}
    if grid.cuts_y or grid.cuts_x:  # a single-tile map has no seams to compare
        stats = seam_stats(store.array, grid.cuts_y, grid.cuts_x)
        seams.update(seam_ratio=stats["ratio"], seams=stats)
    return store.array, tile_local_positions(grid), seams


def _read_image(path: Path, extractor):
    """A whole image for a one-pass engine run; refuses images too large for that (tile them)."""
    from dinosaw_deploy.engine.contract import MAX_WHOLE_IMAGE_TOKENS
    from dinosaw_deploy.engine.preprocess import grid_shape
    from dinosaw_deploy.image.reader import image_shape, read_image, to_channels_last

    declared = image_shape(path)  # from the header: a huge image is refused before it is decoded
    if declared is not None:
        h, w = grid_shape(*declared, extractor.patch_size)
    else:
        image = read_image(path)
        h, w = grid_shape(*to_channels_last(image).shape[:2], extractor.patch_size)
    if h * w > MAX_WHOLE_IMAGE_TOKENS:
        raise DinosawError(
            f"{path.name}: {h}x{w} patches is too large for one engine pass; write tiled features "
            f"(dinosaw-deploy features {path.name} -o feats.zarr) and probe the store "
            "(--tiles for tile-local ramps)"
        )
    return read_image(path) if declared is not None else image


def _engine_info(extractor) -> dict[str, Any]:
    manifest = extractor.manifest
    return {
        "path": str(extractor.model_path),
        "model": manifest.get("model"),
        "precision": manifest.get("precision"),
        "bias": manifest.get("bias"),
        "onnx_sha256": manifest.get("onnx_sha256"),
    }


def _probe_inputs(inputs, images, extractor, tiles: bool, rng, repeats: int, max_sample: int):
    """Probe every input in turn: (ProbeResults, per-input records, (features, result, positions) of the first)."""
    from dinosaw_deploy.probe.positional import global_positions, probe_features

    results, records, first = [], [], None
    for path in inputs:
        positions, seams = None, None
        if path in images:
            features, kind = extractor(_read_image(path, extractor)), "image"
        else:
            (features, positions, seams), kind = _load_features(path, tiles), "features"
        result = probe_features(features, rng=rng, repeats=repeats, max_sample=max_sample, positions=positions)
        results.append(result)
        shape = [int(s) for s in features.shape]
        records.append({"path": str(path), "kind": kind, "shape": shape, "sample_size": result.sample_size,
                        "r2_xy": {"mean": float(result.xy.mean()), "std": float(result.xy.std())}, **(seams or {})})
        click.echo(f"{path.name}: features {tuple(shape)}, R²(x,y) = {result.xy.mean():.3f} ± {result.xy.std():.3f}")
        if first is None:
            first = (features, result, positions or global_positions(shape[1], shape[2]))
    return results, records, first


def _roll_checks(extractor, images, shifts, seed: int, tolerance: float) -> dict[str, Any]:
    """The roll check on each image (or a synthetic micrograph), with the overall verdict."""
    from dinosaw_deploy.probe.roll import roll_check

    if images:
        targets = [(str(p), _read_image(p, extractor)) for p in images]
    else:
        from dinosaw_deploy.synthetic import synthetic_micrograph

        size = ROLL_IMAGE_SIZE
        targets = [(f"synthetic micrograph {size}x{size} (seed {seed})", synthetic_micrograph(size, size, seed)[0])]
    checks = [{"input": name, **roll_check(extractor, image, list(shifts) or None)} for name, image in targets]
    deviation = max(c["max_deviation"] for c in checks)
    relative = max(c["max_deviation"] / max(c["feature_max_abs"], 1e-12) for c in checks)
    passed = relative <= tolerance
    click.echo(f"roll equivariance: max deviation {deviation:.3g} ({relative:.3g} of max |feature|): "
               + ("PASS" if passed else "FAIL"))
    return {"checks": checks, "max_deviation": deviation, "relative_deviation": relative,
            "tolerance": tolerance, "passed": passed}


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
    import numpy as np

    from dinosaw_deploy._version import __version__
    from dinosaw_deploy.cli._options import DEFAULT_ENGINE
    from dinosaw_deploy.files import check_output, output_lock
    from dinosaw_deploy.probe.positional import ALPHA, RAMPS, SAMPLE_DIVISOR, summarize
    from dinosaw_deploy.probe.report import display_maps, require_matplotlib, write_figure, write_report

    engine = engine or DEFAULT_ENGINE
    if not inputs and not roll:
        raise DinosawError("give IMAGE or FEATURES inputs to probe, or --roll to check an engine")
    if output.suffix != ".json":
        raise DinosawError(f"output must end in .json, got {output.name}")
    figure = None if no_figure else output.with_suffix(".png")
    targets = [output] + ([figure] if figure else [])
    for target in targets:
        check_output(target, list(inputs) + [engine], overwrite)
    click.get_current_context().with_resource(output_lock(targets))  # held until the command ends
    if figure:
        require_matplotlib()
    for path in inputs:
        if not path.exists():
            raise DinosawError(f"input not found: {path}")
    images = [p for p in inputs if p.suffix.lower() not in FEATURE_SUFFIXES]
    if tiles and images:
        raise DinosawError(f"--tiles probes feature stores (.zarr), not images: {images[0]}")

    extractor = None
    if images or roll:
        from dinosaw_deploy.engine.extractor import FeatureExtractor

        extractor = FeatureExtractor(
            engine, intensity_range=tuple(intensity_range) if intensity_range else None, backend=backend
        )

    rng = np.random.default_rng(seed)
    results, records, first = _probe_inputs(inputs, images, extractor, tiles, rng, repeats, max_sample)
    seam_values = [r["seam_ratio"] for r in records if r.get("seam_ratio") is not None]

    report: dict[str, Any] = {
        "tool": "dinosaw-deploy probe",
        "version": __version__,
        "protocol": {
            "reference": "method.md §4 (paper Sec. 3.1): StandardScaler + Ridge fitted on sampled tokens, "
                         "R² scored on all tokens",
            "sample": f"(h*w)//{SAMPLE_DIVISOR} tokens without replacement, at most {max_sample}",
            "alpha": ALPHA,
            "repeats": repeats,
            "seed": seed,
            "ramps": {"x": "left-right, linspace(0, 1, w)", "y": "up-down, linspace(0, 1, h)",
                      "diagonal": "(x + y) / 2", "radial": "distance from the centre / sqrt(0.5)"},
            "positions": "tile-local (position inside the engine tile)" if tiles else "global (whole map)",
            "std": "population std over inputs x repeats",
        },
        "inputs": records,
        "engine": _engine_info(extractor) if extractor else None,
    }
    if results:
        summary = summarize(results, top=top)
        report.update(summary)
        click.echo(f"R²(x,y) over {len(results)} input(s) x {repeats} repeats: "
                   f"{summary['r2_xy']['mean']:.3f} ± {summary['r2_xy']['std']:.3f}; "
                   + ", ".join(f"{r} {summary['r2'][r]['mean']:.3f}" for r in RAMPS))
        click.echo("most positional channels: " + ", ".join(
            f"{t['channel']} ({t['r2_xy']:.3f})" for t in summary["channels"]["top"]))
    if seam_values:
        report["seam_ratio"] = {"max": max(seam_values), "values": seam_values}
        click.echo(f"seam ratio: {max(seam_values):.3f} (1.0 = seams invisible)")

    if roll:
        report["roll"] = _roll_checks(extractor, images, shifts, seed, roll_tolerance)

    write_report(output, report)
    click.echo(f"wrote {output}")
    if figure and first:
        features, result, positions = first
        top_channels = [t["channel"] for t in report["channels"]["top"]]
        maps = display_maps(features, result, positions, top_channels)
        write_figure(figure, report, maps, name=Path(records[0]["path"]).name, tile_local=tiles)
        click.echo(f"wrote {figure}")
    if roll and not report["roll"]["passed"]:
        raise DinosawError(
            f"roll check failed: deviation {report['roll']['relative_deviation']:.3g} of max |feature| > "
            f"{roll_tolerance:g} (the engine is not cyclic-shift equivariant: its bias does not wrap, or it has "
            f"a positional embedding); report written to {output}"
        )
