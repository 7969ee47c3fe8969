"""``dinosaw-deploy probe --compare``: several engines side by side on the same scans, in the probe's protocol.

For every engine (a :class:`~dinosaw_deploy.engine.extractor.FeatureExtractor`, with its bias jitter or positional
subspace if it has one): the positional probe of every image (x,y R², per-ramp R², top positional channels,
one-channel R² of every channel), the feature PCA of the first image, and, given scribbles for the first image,
the labels a model trained on those scribbles with that engine's features predicts for it. One JSON report and
one figure (a row per engine).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy._version import __version__
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import check_output, output_lock
from dinosaw_deploy.probe.positional import RAMPS, probe_features, summarize
from dinosaw_deploy.probe.report import require_matplotlib, write_compare_figure, write_report
from dinosaw_deploy.probe.run import ProbeSettings, read_whole_image

Echo = Callable[[str], None]


def engine_label(extractor) -> str:
    """What a row of the comparison is called: the engine's name, its family and its feature settings."""
    manifest = extractor.manifest
    name = f"{manifest.get('model') or Path(extractor.model_path).stem} ({manifest.get('family', 'alibi-dv2')})"
    if extractor.debias is not None:
        name += f" + debias rank {extractor.debias.rank}"
    if extractor.bias_jitter:
        name += f" + jitter {extractor.bias_jitter:g}"
    return name


def _segment(extractor, image: np.ndarray, scribbles, seed: int) -> np.ndarray:
    from dinosaw_deploy.segment.classifier import ClassifierParams
    from dinosaw_deploy.segment.segmenter import Segmenter

    segmenter = Segmenter(extractor=extractor, classifier=ClassifierParams(seed=seed))
    return segmenter.fit(image, scribbles).predict(image)


def run_compare(
    extractors: Sequence[Any],
    images: Sequence[str | Path],
    output: str | Path,
    *,
    labels: str | Path | None = None,
    settings: ProbeSettings = ProbeSettings(),
    figure: bool = True,
    overwrite: bool = False,
    echo: Echo = lambda message: None,
) -> dict[str, Any]:
    """Probe ``images`` with every extractor and write the report ``output`` (.json) and its ``.png`` figure;
    ``labels``: scribbles of the first image, for the segmentation row."""
    repeats, seed = settings.repeats, settings.seed
    output, images = Path(output), [Path(p) for p in images]
    if len(extractors) < 1 or not images:
        raise DinosawError("--compare needs at least one ENGINE (.onnx/.plan) and one IMAGE")
    if output.suffix != ".json":
        raise DinosawError(f"output must end in .json, got {output.name}")
    for path in images + ([Path(labels)] if labels else []):
        if not path.is_file():
            raise DinosawError(f"input not found: {path}")
    figure_path = output.with_suffix(".png") if figure else None
    targets = [output] + ([figure_path] if figure_path else [])
    inputs = images + [Path(e.model_path) for e in extractors] + ([Path(labels)] if labels else [])
    for target in targets:
        check_output(target, inputs, overwrite)
    if figure_path:
        require_matplotlib()
    scribbles = None
    if labels is not None:
        from dinosaw_deploy.segment.labels import load_scribbles

        first = read_whole_image(images[0], extractors[0])
        scribbles = load_scribbles(labels, first.shape[:2])
    rows = []
    with output_lock(targets):
        for extractor in extractors:
            name = engine_label(extractor)
            rng = np.random.default_rng(seed)  # the same token samples for every engine
            results, first_features, first_image = [], None, None
            for path in images:
                image = read_whole_image(path, extractor)
                features = extractor(image)
                if first_features is None:
                    first_features, first_image = features, image
                results.append(probe_features(features, rng=rng, repeats=repeats, max_sample=settings.max_sample))
            summary = summarize(results, top=settings.top)
            row = {"engine": name, "path": str(extractor.model_path),
                   "family": extractor.manifest.get("family", "alibi-dv2"),
                   "feature_settings": extractor.feature_settings, **summary}
            labels_map = None
            if scribbles is not None:
                labels_map = _segment(extractor, first_image, scribbles, seed)
            rows.append((row, first_features, labels_map))
            echo(f"{name}: R²(x,y) = {summary['r2_xy']['mean']:.3f} ± {summary['r2_xy']['std']:.3f}; "
                 + ", ".join(f"{r} {summary['r2'][r]['mean']:.3f}" for r in RAMPS)
                 + "; top channels " + ", ".join(str(t["channel"]) for t in summary["channels"]["top"][:4]))
        report = {
            "tool": "dinosaw-deploy probe --compare",
            "version": __version__,
            "protocol": "method.md §4: StandardScaler + Ridge(alpha=1) on (h*w)//36 sampled tokens, R² on all "
                        f"tokens, {repeats} repeats per image, the same samples for every engine (seed {seed})",
            "images": [str(p) for p in images],
            "labels": None if labels is None else str(labels),
            "engines": [row for row, _, _ in rows],
        }
        write_report(output, report)
        echo(f"wrote {output}")
        if figure_path:
            write_compare_figure(figure_path, [(row, feats, lab) for row, feats, lab in rows], images[0].name)
            echo(f"wrote {figure_path}")
    return report
