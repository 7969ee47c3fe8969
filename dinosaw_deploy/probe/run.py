"""The probe job: positional-bias probe of images or feature stores, seam audit and roll check, written as a
JSON report (and a PNG figure). :func:`run_probe` is what ``dinosaw-deploy probe`` calls."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy._version import __version__
from dinosaw_deploy.engine.contract import MAX_WHOLE_IMAGE_TOKENS
from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.engine.preprocess import grid_shape
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import check_output, output_lock
from dinosaw_deploy.image.reader import image_shape, read_image, to_channels_last
from dinosaw_deploy.probe.positional import ALPHA, RAMPS, SAMPLE_DIVISOR, summarize
from dinosaw_deploy.probe.report import display_maps, require_matplotlib, write_figure, write_report

FEATURE_SUFFIXES = (".npy", ".zarr")
MAX_SAMPLE = 20000  # fit tokens per repeat; the paper's (h*w)//36 is below this up to 720k tokens
ROLL_TOLERANCE = 1e-3
ROLL_IMAGE_SIZE = 224  # px, the synthetic micrograph used by --roll when no image is given
Echo = Callable[[str], None]


@dataclass(frozen=True)
class ProbeSettings:
    """The probe's protocol: random samplings per input (``repeats``), their ``seed``, how many of the most
    positional channels to list (``top``), the cap on tokens each fit samples (``max_sample``)."""

    repeats: int = 6
    seed: int = 0
    top: int = 8
    max_sample: int = MAX_SAMPLE


def load_features(path: Path, tiles: bool):
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


def read_whole_image(path: Path, extractor):
    """A whole image for a one-pass engine run; refuses images too large for that (tile them), from the
    header's declared size before decoding when the format tells it."""
    declared = image_shape(path)
    image = None
    if declared is None:
        image = read_image(path)
        declared = to_channels_last(image).shape[:2]
    h, w = grid_shape(*declared, extractor.patch_size)
    if h * w > MAX_WHOLE_IMAGE_TOKENS:
        raise DinosawError(
            f"{path.name}: {h}x{w} patches is too large for one engine pass; write tiled features "
            f"(dinosaw-deploy features {path.name} -o feats.zarr) and probe the store "
            "(--tiles for tile-local ramps)"
        )
    return read_image(path) if image is None else image


def _engine_info(extractor) -> dict[str, Any]:
    manifest = extractor.manifest
    return {
        "path": str(extractor.model_path),
        "model": manifest.get("model"),
        "precision": manifest.get("precision"),
        "bias": manifest.get("bias"),
        "onnx_sha256": manifest.get("onnx_sha256"),
    }


def _probe_inputs(inputs, images, extractor, tiles: bool, rng, repeats: int, max_sample: int, echo: Echo):
    """Probe every input in turn: (ProbeResults, per-input records, (features, result, positions) of the first)."""
    from dinosaw_deploy.probe.positional import global_positions, probe_features

    results, records, first = [], [], None
    for path in inputs:
        positions, seams = None, None
        if path in images:
            features, kind = extractor(read_whole_image(path, extractor)), "image"
        else:
            (features, positions, seams), kind = load_features(path, tiles), "features"
        result = probe_features(features, rng=rng, repeats=repeats, max_sample=max_sample, positions=positions)
        results.append(result)
        shape = [int(s) for s in features.shape]
        records.append({"path": str(path), "kind": kind, "shape": shape, "sample_size": result.sample_size,
                        "r2_xy": {"mean": float(result.xy.mean()), "std": float(result.xy.std())}, **(seams or {})})
        echo(f"{path.name}: features {tuple(shape)}, R²(x,y) = {result.xy.mean():.3f} ± {result.xy.std():.3f}")
        if first is None:
            first = (features, result, positions or global_positions(shape[1], shape[2]))
    return results, records, first


def _roll_checks(extractor, images, shifts, seed: int, tolerance: float, echo: Echo) -> dict[str, Any]:
    """The roll check on each image (or a synthetic micrograph), with the overall verdict."""
    from dinosaw_deploy.probe.roll import roll_check

    if images:
        targets = [(str(p), read_whole_image(p, extractor)) for p in images]
    else:
        from dinosaw_deploy.synthetic import synthetic_micrograph

        size = ROLL_IMAGE_SIZE
        targets = [(f"synthetic micrograph {size}x{size} (seed {seed})", synthetic_micrograph(size, size, seed)[0])]
    checks = [{"input": name, **roll_check(extractor, image, list(shifts) or None)} for name, image in targets]
    deviation = max(c["max_deviation"] for c in checks)
    relative = max(c["max_deviation"] / max(c["feature_max_abs"], 1e-12) for c in checks)
    passed = relative <= tolerance
    echo(f"roll equivariance: max deviation {deviation:.3g} ({relative:.3g} of max |feature|): "
               + ("PASS" if passed else "FAIL"))
    return {"checks": checks, "max_deviation": deviation, "relative_deviation": relative,
            "tolerance": tolerance, "passed": passed}


def run_probe(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    extractor: FeatureExtractor | None = None,
    tiles: bool = False,
    roll: bool = False,
    shifts: Sequence[tuple[int, int]] = (),
    roll_tolerance: float = ROLL_TOLERANCE,
    settings: ProbeSettings = ProbeSettings(),
    figure: bool = True,
    overwrite: bool = False,
    echo: Echo = lambda message: None,
) -> dict[str, Any]:
    """Probe ``inputs`` (images, run through ``extractor``; ``.npy``/``.zarr`` features) and write the JSON
    report ``output`` (+ ``.png`` figure). Raises DinosawError when ``roll`` fails (after writing the report)."""
    output, inputs = Path(output), [Path(p) for p in inputs]
    if not inputs and not roll:
        raise DinosawError("give IMAGE or FEATURES inputs to probe, or --roll to check an engine")
    if output.suffix != ".json":
        raise DinosawError(f"output must end in .json, got {output.name}")
    figure = output.with_suffix(".png") if figure else None
    targets = [output] + ([figure] if figure else [])
    for target in targets:
        check_output(target, inputs + ([Path(extractor.model_path)] if extractor is not None else []), overwrite)
    with output_lock(targets):
        return _probe(inputs, output, figure, extractor=extractor, tiles=tiles, roll=roll, shifts=shifts,
                      roll_tolerance=roll_tolerance, settings=settings, echo=echo)


def _probe(inputs: list[Path], output: Path, figure: Path | None, *, extractor, tiles, roll, shifts, roll_tolerance,
           settings: ProbeSettings, echo: Echo) -> dict[str, Any]:
    if figure:
        require_matplotlib()
    for path in inputs:
        if not path.exists():
            raise DinosawError(f"input not found: {path}")
    images = [p for p in inputs if p.suffix.lower() not in FEATURE_SUFFIXES]
    if tiles and images:
        raise DinosawError(f"--tiles probes feature stores (.zarr), not images: {images[0]}")

    if (images or roll) and extractor is None:
        raise DinosawError("image inputs and --roll need an engine (FeatureExtractor)")

    repeats, seed = settings.repeats, settings.seed
    rng = np.random.default_rng(seed)
    results, records, first = _probe_inputs(inputs, images, extractor, tiles, rng, repeats, settings.max_sample, echo)
    seam_values = [r["seam_ratio"] for r in records if r.get("seam_ratio") is not None]

    report: dict[str, Any] = {
        "tool": "dinosaw-deploy probe",
        "version": __version__,
        "protocol": {
            "reference": "method.md §4 (paper Sec. 3.1): StandardScaler + Ridge fitted on sampled tokens, "
                         "R² scored on all tokens",
            "sample": f"(h*w)//{SAMPLE_DIVISOR} tokens without replacement, at most {settings.max_sample}",
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
        summary = summarize(results, top=settings.top)
        report.update(summary)
        echo(f"R²(x,y) over {len(results)} input(s) x {repeats} repeats: "
                   f"{summary['r2_xy']['mean']:.3f} ± {summary['r2_xy']['std']:.3f}; "
                   + ", ".join(f"{r} {summary['r2'][r]['mean']:.3f}" for r in RAMPS))
        echo("most positional channels: " + ", ".join(
            f"{t['channel']} ({t['r2_xy']:.3f})" for t in summary["channels"]["top"]))
    if seam_values:
        report["seam_ratio"] = {"max": max(seam_values), "values": seam_values}
        echo(f"seam ratio: {max(seam_values):.3f} (1.0 = seams invisible)")

    if roll:
        report["roll"] = _roll_checks(extractor, images, shifts, seed, roll_tolerance, echo)

    write_report(output, report)
    echo(f"wrote {output}")
    if figure and first:
        features, result, positions = first
        top_channels = [t["channel"] for t in report["channels"]["top"]]
        maps = display_maps(features, result, positions, top_channels)
        write_figure(figure, report, maps, name=Path(records[0]["path"]).name, tile_local=tiles)
        echo(f"wrote {figure}")
    if roll and not report["roll"]["passed"]:
        raise DinosawError(
            f"roll check failed: deviation {report['roll']['relative_deviation']:.3g} of max |feature| > "
            f"{roll_tolerance:g} (the engine is not cyclic-shift equivariant: its bias does not wrap, or it has "
            f"a positional embedding); report written to {output}"
        )
    return report
