"""The segment and apply jobs on files: scribbles -> model -> pyramidal OME-TIFF or OME-Zarr, resumable.

Each is a short sequence of calls on a :class:`~dinosaw_deploy.segment.job.ScanJob`: it runs tile by tile
in bounded memory and resumes after a kill from its work folder ``<output>.work/`` (removed once the outputs
are written); the outputs are locked for the whole run, so a second run writing the same output fails at once.

>>> segment_scan("scan.tif", "scribbles.png", "seg.ome.tif", extractor=fx, save_model="seg.dsw")
>>> apply_scan("other.tif", "seg.dsw", "other.ome.tif", extractor=fx)
>>> fit_scans([("a.tif", "a_labels.png"), ("b.tif", "b_labels.png")], "model.dsw", extractor=fx)
>>> apply_scans(["c.tif", "d.tif"], "model.dsw", "out/", extractor=fx)   # out/c.ome.tif, out/d.ome.tif

Options travel as :class:`ModelOptions` (training), :class:`PredictOptions` (what is written) and
:class:`RunOptions` (overwrite, threads, progress, executor). Each run prints the per-class pixel
fractions of its result, and with ``ground_truth`` (a dense label file) the per-class IoU and mIoU.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import atomic_path, check_output, output_lock
from dinosaw_deploy.image.reader import open_image
from dinosaw_deploy.preflight import Planned, check_pixels, check_space, feature_store_bytes, out_of_space
from dinosaw_deploy.segment.bundle import ModelFile
from dinosaw_deploy.segment.job import ScanJob, ScanResult, add_patch_grid, ome_suffix, output_paths, require_inputs
from dinosaw_deploy.segment.labels import describe_classes, load_scribbles
from dinosaw_deploy.segment.options import ModelOptions, PredictOptions, RunOptions
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.segment.work import WorkFolder

__all__ = ["ModelOptions", "PredictOptions", "RunOptions", "ScanResult", "apply_scan", "apply_scans", "fit_scans",
           "scan_stem", "segment_scan"]


def _engine_inputs(extractor: FeatureExtractor | None) -> list[Path]:
    return [Path(extractor.model_path)] if extractor is not None else []


def segment_scan(image: str | os.PathLike, labels: str | os.PathLike, output: str | os.PathLike, *,
                 extractor: FeatureExtractor | None = None, save_model: str | os.PathLike | None = None,
                 ground_truth: str | os.PathLike | None = None, model: ModelOptions = ModelOptions(),
                 predict: PredictOptions = PredictOptions(), run: RunOptions = RunOptions()) -> ScanResult:
    """Train on the scribbled pixels of ``image`` and segment all of it into ``output`` (.ome.tif or
    .ome.zarr); ``save_model`` also keeps the model (.dsw); with ``ground_truth`` (a dense label file) also
    report per-class IoU and mIoU."""
    labels = Path(labels)
    save_model = None if save_model is None else Path(save_model)
    if save_model is not None and save_model.suffix != ".dsw":
        raise DinosawError(f"--save-model must end in .dsw, got {save_model.name}")
    fresh = model.segmenter(extractor, run)
    command = {"name": "segment", "vit": extractor is not None,
               "feature_settings": getattr(extractor, "feature_settings", None), "rounds": fresh.classifier.rounds,
               "max_depth": fresh.classifier.max_depth, "contrast": model.contrast, "normalize": model.normalize,
               "modal": predict.modal, "crf": predict.crf, "probabilities": predict.probabilities}
    job = ScanJob(Path(image), Path(output), command, inputs=[labels, *_engine_inputs(extractor)], predict=predict,
                  run=run, extractor=extractor, ground_truth=None if ground_truth is None else Path(ground_truth),
                  extra_outputs=[save_model] if save_model else [])
    with job:
        scribbles = load_scribbles(labels, job.shape)
        job.start()
        seg = job.trained_model(extractor) or fresh
        prepared = job.prepare(seg)
        if seg.booster is None:
            run.echo(scribbles.describe())
            run.echo(f"training on {int(scribbles.counts().sum())} labelled px "
                     f"({seg.bank.num_channels + (seg.n_components if extractor else 0)} features) ...")
            seg.fit_prepared([(prepared, scribbles)])
            seg.save(job.work.model)
        result = job.predict(prepared, scribbles)
        if save_model is not None:
            with atomic_path(save_model) as tmp:
                shutil.copyfile(job.work.model, tmp)
            result.outputs["model"] = save_model
            run.echo(f"wrote {save_model}")
    return result


def apply_scan(image: str | os.PathLike, model: str | os.PathLike | ModelFile, output: str | os.PathLike, *,
               extractor: FeatureExtractor | None = None, ground_truth: str | os.PathLike | None = None,
               predict: PredictOptions = PredictOptions(), run: RunOptions = RunOptions()) -> ScanResult:
    """Segment ``image`` with a model saved by :func:`segment_scan` (``save_model``), :func:`fit_scans`
    or :meth:`Segmenter.save` (a path, or a :class:`ModelFile` already read); with ``ground_truth`` also report
    per-class IoU and mIoU."""
    model = model if isinstance(model, ModelFile) else ModelFile.read(model)
    seg = Segmenter.from_bundle(model.bundle, str(model.path), extractor, threads=run.threads)
    command = {"name": "apply", "model_sha256": model.sha256, "modal": predict.modal, "crf": predict.crf,
               "probabilities": predict.probabilities}
    job = ScanJob(Path(image), Path(output), command, inputs=[model.path, *_engine_inputs(extractor)],
                  predict=predict, run=run, extractor=seg.extractor,
                  ground_truth=None if ground_truth is None else Path(ground_truth), classes=len(seg.label_classes))
    with job:
        job.start()
        prepared = job.prepare(seg)
        shift = job.exposure_check(prepared)
        result = job.predict(prepared, extra=None if shift is None else {"intensity_shift": shift})
    return result


# -- several images: one model from several scribbled images, one model applied to a folder ------------------
def fit_scans(pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]], output: str | os.PathLike, *,
              extractor: FeatureExtractor | None = None, model: ModelOptions = ModelOptions(),
              run: RunOptions = RunOptions()) -> Segmenter:
    """Train one model (``output``, .dsw) on several (image, scribbles) pairs; see
    :meth:`Segmenter.fit_prepared` for how the images are combined. ViT patch features go to a
    resumable work folder ``<output>.work/`` (one store per image), removed at the end."""
    pairs = [(Path(image), Path(labels)) for image, labels in pairs]
    output, echo = Path(output), run.echo
    if not pairs:
        raise DinosawError("pass at least one image and its scribbles (--pair IMAGE LABELS)")
    if output.suffix != ".dsw":
        raise DinosawError(f"the model must end in .dsw, got {output.name}")
    seg = model.segmenter(extractor, run)
    inputs = [path for pair in pairs for path in pair] + _engine_inputs(extractor)
    require_inputs(inputs)
    check_output(output, inputs, run.overwrite)
    command = {"name": "fit", "vit": extractor is not None,
               "feature_settings": getattr(extractor, "feature_settings", None),
               "contrast": model.contrast, "normalize": model.normalize}
    work = WorkFolder.of(output)
    with ExitStack() as stack:
        stack.enter_context(output_lock([output]))
        readers = [stack.enter_context(open_image(image)) for image, _ in pairs]
        for reader in readers:
            check_pixels(reader.shape, run.max_pixels, reader.path.name)
        planned = [] if extractor is None else [
            Planned(work.features(i), feature_store_bytes(reader.shape, extractor.patch_size, extractor.embed_dim),
                    f"ViT features of {reader.path.name}")
            for i, reader in enumerate(readers)]
        check_space(planned)
        scribbles = [load_scribbles(labels, reader.shape) for (_, labels), reader in zip(pairs, readers)]
        work.claim(command, inputs, echo)
        items = []
        for i, ((image, _), reader, marks) in enumerate(zip(pairs, readers, scribbles)):
            echo(f"{image.name}: {int(marks.counts().sum())} labelled px")
            prepared = seg.prepare(reader, cache_bytes=0)
            with out_of_space(planned):
                add_patch_grid(prepared, extractor, work.features(i), echo, run.progress, run.executor)
            items.append((prepared, marks))
        echo(f"training on {len(items)} images ...")
        seg.fit_prepared(items)
        echo(describe_classes(seg.label_classes, seg.training["pixels_labelled"]))
        seg.save(output)
        work.remove(inputs)
    echo(f"wrote {output}")
    return seg


def scan_stem(image: Path) -> str:
    """``a.ome.tif`` / ``a.tif`` / ``a.png`` -> ``a``: the name of an image's outputs in a folder."""
    suffix = ome_suffix(image.name)
    return image.stem if suffix is None else image.name[: -len(suffix)]


def _targets(images: list[Path], output: Path, as_folder: bool, probabilities: bool) -> list[Path]:
    """The label file of each image: ``output`` itself for one image, else ``output/<stem>.ome.tif``."""
    if ome_suffix(output.name) is not None or not as_folder:
        if len(images) > 1:
            raise DinosawError(f"{len(images)} images need an output folder, not the file {output.name}")
        output_paths(output, probabilities)  # a file name we can write, or a clear error
        return [output]
    if output.exists() and not output.is_dir():
        raise DinosawError(f"{output} is a file; several images need an output folder")
    stems = [scan_stem(i) for i in images]
    if len(set(stems)) < len(stems):
        raise DinosawError("two images share a name (" + next(s for s in stems if stems.count(s) > 1)
                           + "); their outputs would collide in one folder")
    output.mkdir(exist_ok=True)
    return [output / f"{stem}.ome.tif" for stem in stems]


def apply_scans(images: Sequence[str | os.PathLike], model: str | os.PathLike | ModelFile,
                output: str | os.PathLike, *, extractor: FeatureExtractor | None = None,
                ground_truths: Sequence[str | os.PathLike] = (), predict: PredictOptions = PredictOptions(),
                run: RunOptions = RunOptions()) -> list[ScanResult]:
    """Segment several images with one model. ``output`` is a file (``.ome.tif``, ``.ome.zarr``) for one
    image, else a folder (existing, or named with a trailing ``/``, for one image) that receives
    ``<stem>.ome.tif`` per image. Resumable per image: an image whose outputs all exist (and have no
    unfinished work folder) is skipped; ``ground_truths`` pairs with ``images``."""
    as_folder = len(images) > 1 or str(output).endswith(("/", os.sep)) or Path(output).is_dir()
    images, output = [Path(i) for i in images], Path(output)
    if not images:
        raise DinosawError("no images to segment")
    if ground_truths and len(ground_truths) != len(images):
        raise DinosawError(f"{len(ground_truths)} ground truths for {len(images)} images; pass one per image")
    truths = [Path(t) for t in ground_truths] or [None] * len(images)
    model = model if isinstance(model, ModelFile) else ModelFile.read(model)  # read once for every image
    results = []
    targets = _targets(images, output, as_folder, predict.probabilities)
    for n, (image, target, truth) in enumerate(zip(images, targets, truths), start=1):
        paths = output_paths(target, predict.probabilities)
        if not run.overwrite and all(p.exists() for p in paths.values()) and not WorkFolder.of(target).path.exists():
            run.echo(f"[{n}/{len(images)}] {image.name}: done already ({target.name}), skipped")
            continue
        run.echo(f"[{n}/{len(images)}] {image.name} -> {target}")
        results.append(apply_scan(image, model, target, extractor=extractor, ground_truth=truth, predict=predict,
                                  run=run))
    return results
