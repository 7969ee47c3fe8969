"""The segment and apply jobs on files: scribbles -> model -> pyramidal OME-TIFF or OME-Zarr, resumable.

Both run tile by tile in bounded memory and resume after a kill: the work folder
``<output>.work/`` holds the ViT feature store, the trained model and the finished prediction
tiles (zarr + one marker file per tile); a rerun of the same call continues where it stopped and
gives the same files as an uninterrupted run. It is removed once the outputs are written. The work
folder carries our marker (a folder of that name we did not make is refused, never deleted), and the
outputs are locked for the whole run (:func:`dinosaw_deploy.files.output_lock`): a second run
writing the same output fails at once.

>>> segment_scan("scan.tif", "scribbles.png", "seg.ome.tif", extractor=fx, save_model="seg.dsw")
>>> apply_scan("other.tif", "seg.dsw", "other.ome.tif", extractor=fx)
>>> fit_scans([("a.tif", "a_labels.png"), ("b.tif", "b_labels.png")], "model.dsw", extractor=fx)
>>> apply_scans(["c.tif", "d.tif"], "model.dsw", "out/", extractor=fx)   # out/c.ome.tif, out/d.ome.tif

Each run prints the per-class pixel fractions of its result, and with ``ground_truth`` (a dense
label file) the per-class IoU and mIoU, counted strip by strip.

``echo(message)`` receives progress lines, ``progress(done, total)`` the tile counts of each stage.
An ``executor`` (:class:`Executor`, e.g. ``dinosaw_deploy.cluster.DaskExecutor``) runs the two
tiled stages (features, prediction) elsewhere; fitting and the output files stay here.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import (
    atomic_path,
    check_output,
    fingerprint,
    is_owned,
    make_owned_dir,
    output_lock,
    remove_owned,
)
from dinosaw_deploy.image.box import Box
from dinosaw_deploy.image.intensity import DEFAULT_NORMALIZE
from dinosaw_deploy.image.ome_writer import write_ome_pyramid
from dinosaw_deploy.image.ome_zarr import build_levels, create_ome_zarr, publish
from dinosaw_deploy.image.reader import ImageReader, open_image
from dinosaw_deploy.preflight import (
    DEFAULT_MAX_PIXELS,
    Planned,
    check_pixels,
    check_space,
    feature_store_bytes,
    label_bytes,
    out_of_space,
)
from dinosaw_deploy.segment.bundle import ModelFile
from dinosaw_deploy.segment.classifier import ClassifierParams
from dinosaw_deploy.segment.contrast import ClaheConfig
from dinosaw_deploy.segment.label_preview import write_label_preview
from dinosaw_deploy.segment.labels import (
    LabelClass,
    Scribbles,
    describe_classes,
    load_scribbles,
)
from dinosaw_deploy.segment.merger import ZarrMerger
from dinosaw_deploy.segment.metrics import scan_quality
from dinosaw_deploy.segment.prepared import GrayImage, PreparedImage
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.tiling.grid import tile_boxes
from dinosaw_deploy.tiling.pipeline import extract_tiled
from dinosaw_deploy.tiling.store import FeatureStore

RUN_FILE = "run.json"
Echo = Callable[[str], None]
Progress = Callable[[int, int], None]
SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.zarr")
SHIFT_WARNING = 0.10  # intensity shift (earth mover's distance over [0, 1]) above which apply warns


class Executor(Protocol):
    """Runs the tiled stages of a job (default: in this process)."""

    def extract(self, reader: ImageReader, extractor: FeatureExtractor, store: Path,
                intensity_range: tuple[float, float], progress: Progress | None) -> None:
        """Write ``reader``'s feature store to ``store``, as ``extract_tiled`` does under ``intensity_range``."""

    def predict(self, prepared: PreparedImage, merger: ZarrMerger, *, modal: int, crf: bool,
                echo: Echo, progress: Progress | None) -> None:
        """Predict every tile of ``prepared.segmenter.tile`` not yet done into ``merger`` (marking what it did,
        so a cut run resumes)."""


@dataclass
class ScanResult:
    """What a segment/apply run wrote."""

    outputs: dict[str, Path]
    classes: list[LabelClass]
    shape: tuple[int, int]
    pixel_size: tuple[float, float] | None
    extra: dict[str, Any] = field(default_factory=dict)


def output_paths(output: str | os.PathLike, probabilities: bool) -> dict[str, Path]:
    """The files a run writes: labels (``X.ome.tif`` or ``X.ome.zarr``), preview PNG, optional probabilities."""
    output = Path(output)
    name = output.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            stem = name[: -len(suffix)]
            break
    else:
        raise DinosawError(f"output must end in .ome.tif, .ome.tiff or .ome.zarr, got {output.name}")
    paths = {"labels": output, "preview": output.with_name(f"{stem}.preview.png")}
    if probabilities:
        kind = ".ome.zarr" if suffix == ".ome.zarr" else ".ome.tif"
        paths["probabilities"] = output.with_name(f"{stem}.probabilities{kind}")
    return paths


def new_segmenter(extractor: FeatureExtractor | None, contrast: str, classifier: ClassifierParams | None,
                  threads: int | None, device: str, normalize: str = DEFAULT_NORMALIZE) -> Segmenter:
    """An untrained Segmenter from the job options (``contrast``: ``none`` or ``clahe``)."""
    if contrast not in ("none", "clahe"):
        raise DinosawError(f"contrast must be none or clahe, not {contrast!r}")
    return Segmenter(extractor=extractor, classifier=classifier or ClassifierParams(),
                     contrast=ClaheConfig() if contrast == "clahe" else None, normalize=normalize,
                     threads=threads, device=device)


def work_path(output: str | os.PathLike) -> Path:
    """The resumable work folder of a run writing ``output``: ``<output>.work``."""
    output = Path(output)
    return output.with_name(output.name + ".work")


def _work_dir(output: Path, run: dict[str, Any], inputs: list[Path], echo: Echo) -> Path:
    """``<output>.work``, reused only if we made it for this very job on these very inputs; a folder
    of that name we did not make is refused, never deleted."""
    work = work_path(output)
    record = json.dumps(run, sort_keys=True)
    if is_owned(work):
        previous = work / RUN_FILE
        if previous.is_file() and previous.read_text() == record:
            echo(f"resuming the unfinished run in {work}")
            return work
        echo(f"{work} belongs to a different run; starting over")
    remove_owned(work, inputs)
    make_owned_dir(work)
    (work / RUN_FILE).write_text(record)
    return work


def _add_patch_grid(prepared: PreparedImage, extractor: FeatureExtractor | None, work: Path, echo: Echo,
                    progress: Progress | None, name: str = "features.zarr",
                    executor: Executor | None = None) -> None:
    """Give ``prepared`` its stitched ViT features (resumable store ``name`` in the work folder),
    computed under the image's intensity range; nothing for a classical model."""
    if extractor is None:
        return
    store, reader, range_ = work / name, prepared.source, prepared.intensity_range
    if not store.is_dir():
        echo("computing ViT patch features ...")
        if executor is not None:
            executor.extract(reader, extractor, store, range_, progress)
        else:
            extract_tiled(reader, extractor, store, intensity_range=range_, progress=progress)
    prepared.set_grid(FeatureStore.open(store))


def _merger(paths: dict[str, Path], seg: Segmenter, shape: tuple[int, int], pixel_size, work: Path) -> ZarrMerger:
    """The merger of the level-0 zarr arrays in ``work`` that prediction fills (created on the first run):
    OME-Zarr groups for ``.ome.zarr`` outputs (finished in place), plain arrays converted to OME-TIFF; done
    markers in ``work/done``."""
    import zarr

    k, tile = len(seg.label_classes), seg.tile
    shapes = {"labels": shape, "probabilities": (k, *shape)}
    targets, created = {}, False
    for key in ("labels", "probabilities"):
        if key not in paths:
            continue
        if paths[key].name.lower().endswith(".ome.zarr"):
            group = work / f"{key}.ome.zarr"
            if not group.is_dir():
                names = [c.name for c in seg.label_classes] if key == "probabilities" else None
                fresh = create_ome_zarr(work / f"{key}.new", shapes[key], chunk=tile, pixel_size=pixel_size,
                                        channel_names=names, name=paths[key].name)
                os.replace(fresh, group)
                created = True
            targets[key] = group / "0"
        else:
            targets[key] = work / f"{key}.zarr"
            lead = (1,) if key == "probabilities" else ()
            zarr.open_array(targets[key], mode="a", shape=shapes[key], chunks=(*lead, tile, tile), dtype="uint8",
                            fill_value=0)
    if created:  # markers of tiles written into an earlier copy (published, then the job was cut) are void
        shutil.rmtree(work / "done", ignore_errors=True)
    return ZarrMerger.at(targets, work / "done")


def _predict(prepared: PreparedImage, merger: ZarrMerger, *, modal: int, crf: bool, echo: Echo,
             progress: Progress | None, executor: Executor | None = None) -> None:
    """Predict every tile not yet done into ``merger``'s arrays (on ``executor`` if given)."""
    if executor is not None:
        executor.predict(prepared, merger, modal=modal, crf=crf, echo=echo, progress=progress)
        return
    boxes = tile_boxes(prepared.shape, prepared.segmenter.tile)
    todo = [b for b in boxes if not merger.done(_tile_name(b))]
    if len(todo) < len(boxes):
        echo(f"{len(boxes) - len(todo)} of {len(boxes)} tiles already predicted")
    echo(f"predicting {len(todo)} tiles ...")
    for count, (box, tile_labels, tile_probs) in enumerate(prepared.tiles(todo, modal=modal, crf=crf), start=1):
        merger.aggregate(box, tile_labels, tile_probs)
        merger.mark(_tile_name(box))
        if progress:
            progress(count, len(todo))


def _tile_name(box: Box) -> str:
    return f"{box[0]}_{box[2]}"


def _exposure_check(seg: Segmenter, prepared: PreparedImage, image: Path, echo: Echo) -> float | None:
    """The image's intensity shift from the training images (:meth:`Segmenter.intensity_shift`); one
    warning line when it exceeds :data:`SHIFT_WARNING`."""
    shift = seg.intensity_shift(prepared)
    if shift is not None and shift > SHIFT_WARNING:
        hint = "" if seg.normalize != "dtype" else "; a model trained with --normalize percentile adapts to each scan"
        echo(f"warning: {image.name} does not look like the training images (intensity shift {shift:.3f} of the "
             f"range, above {SHIFT_WARNING}): expect poorer labels{hint}")
    return shift


def _write(path: Path, array, target: Path, pixel_size, names: list[str] | None) -> None:
    """Finish an OME-Zarr target in place (pyramid levels, then rename) or convert it to OME-TIFF."""
    if path.name.lower().endswith(".ome.zarr"):
        build_levels(target.parent)
        publish(target.parent, path)
    else:
        write_ome_pyramid(path, array, pixel_size=pixel_size, channel_names=names, name=path.name)


def _write_outputs(paths: dict[str, Path], seg: Segmenter, gray: GrayImage, reader: ImageReader,
                   merger: ZarrMerger, echo: Echo, scribbles: Scribbles | None = None) -> None:
    """The finished outputs from ``merger``'s arrays: OME-TIFF pyramids written, OME-Zarr groups finished."""
    labels, probs = merger.finalize()
    targets = {k: Path(v) for k, v in merger.targets.items()}
    pixel_size = reader.info.pixel_size
    names = [c.name for c in seg.label_classes]
    if probs is not None:
        _write(paths["probabilities"], probs, targets["probabilities"], pixel_size, names)
        echo(f"wrote {paths['probabilities']} (per-class probability x 255)")
    write_label_preview(paths["preview"], gray, labels, seg.label_classes, scribbles)
    _write(paths["labels"], labels, targets["labels"], pixel_size, None)
    echo(f"wrote {paths['labels']} ({labels.shape[0]}x{labels.shape[1]} uint8 classes 1..{len(names)}, "
         f"pixel size {pixel_size or 'unknown'})")
    echo(f"wrote {paths['preview']}")


def _preflight(reader: ImageReader, paths: dict[str, Path], work: Path, extractor: FeatureExtractor | None,
               classes: int, max_pixels: int) -> list[Planned]:
    """Refuse, from the header alone, an image above ``max_pixels`` or outputs that cannot fit on their disks;
    returns what was planned."""
    check_pixels(reader.shape, max_pixels, reader.path.name)
    planned = [Planned(paths["labels"], label_bytes(reader.shape), "labels")]
    if "probabilities" in paths:
        planned.append(Planned(paths["probabilities"], label_bytes(reader.shape, classes), "probabilities"))
    if extractor is not None:
        planned.append(Planned(work / "features.zarr", feature_store_bytes(
            reader.shape, extractor.patch_size, extractor.embed_dim), "ViT feature store"))
    check_space(planned)
    return planned


def _run(image: Path, output: Path, inputs: list[Path], options: dict[str, Any], *, overwrite: bool,
         probabilities: bool, modal: int, crf: bool, extra_outputs: list[Path],
         get_segmenter: Callable[[Path], Segmenter], train: Callable[..., None] | None,
         extractor: FeatureExtractor | None, echo: Echo, progress: Progress | None,
         check: Callable[[ImageReader], Any] | None = None,
         ground_truth: Path | None = None, executor: Executor | None = None, classes: int = 2,
         max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Path, ScanResult]:
    """Shared body of segment/apply: returns the work folder (removed by the caller when done).
    ``check(reader)`` validates inputs against the image before any expensive work; its result
    (the scribbles, for segment) goes to ``train`` and the preview."""
    for path in inputs:
        if not path.is_file():
            raise DinosawError(f"not found: {path}")
    paths = output_paths(output, probabilities)
    for path in [*paths.values(), *extra_outputs]:
        check_output(path, inputs, overwrite)
    check_output(work_path(output), inputs, overwrite=True)
    run = {"command": options, "inputs": [fingerprint(p) for p in inputs]}
    with open_image(image) as reader:
        planned = _preflight(reader, paths, work_path(output), extractor, classes, max_pixels)
        with out_of_space(planned):
            checked = check(reader) if check is not None else None
            if ground_truth is not None:
                with open_image(ground_truth) as truth:
                    if tuple(truth.shape) != tuple(reader.shape):
                        raise DinosawError(f"{ground_truth}: ground truth is {truth.shape[0]}x{truth.shape[1]} px "
                                           f"but the image is {reader.shape[0]}x{reader.shape[1]} px")
            work = _work_dir(output, run, inputs, echo)
            seg = get_segmenter(work)
            prepared = seg.prepare(reader, cache_bytes=0)  # each tile is computed once
            _add_patch_grid(prepared, extractor, work, echo, progress, executor=executor)
            if seg.booster is None:
                train(prepared, work, checked)
            shift = None if train is not None else _exposure_check(seg, prepared, image, echo)
            merger = _merger(paths, seg, tuple(reader.shape), reader.info.pixel_size, work)
            _predict(prepared, merger, modal=modal, crf=crf, echo=echo, progress=progress, executor=executor)
            # scored before an OME-Zarr target moves
            quality = scan_quality(merger.finalize()[0], seg.label_classes, ground_truth, echo)
            _write_outputs(paths, seg, prepared.gray, reader, merger, echo, checked)
            result = ScanResult(paths, list(seg.label_classes), tuple(reader.shape), reader.info.pixel_size,
                                {**quality, **({} if shift is None else {"intensity_shift": shift})})
    return work, result


def segment_scan(
    image: str | os.PathLike,
    labels: str | os.PathLike,
    output: str | os.PathLike,
    *,
    extractor: FeatureExtractor | None = None,
    save_model: str | os.PathLike | None = None,
    probabilities: bool = False,
    modal: int = 0,
    crf: bool = False,
    contrast: str = "none",
    normalize: str = DEFAULT_NORMALIZE,
    classifier: ClassifierParams | None = None,
    device: str = "auto",
    threads: int | None = None,
    overwrite: bool = False,
    ground_truth: str | os.PathLike | None = None,
    echo: Echo = lambda message: None,
    progress: Progress | None = None,
    executor: Executor | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ScanResult:
    """Train on the scribbled pixels of ``image`` and segment all of it into ``output`` (.ome.tif or
    .ome.zarr); with ``ground_truth`` (a dense label file) also report per-class IoU and mIoU."""
    image, labels, output = Path(image), Path(labels), Path(output)
    ground_truth = None if ground_truth is None else Path(ground_truth)
    save_model = None if save_model is None else Path(save_model)
    if save_model is not None and save_model.suffix != ".dsw":
        raise DinosawError(f"--save-model must end in .dsw, got {save_model.name}")
    fresh = new_segmenter(extractor, contrast, classifier, threads, device, normalize)  # checked before any work
    inputs = [image, labels] + ([Path(extractor.model_path)] if extractor is not None else [])
    inputs += [ground_truth] if ground_truth is not None else []
    options = {"name": "segment", "vit": extractor is not None,
               "feature_settings": getattr(extractor, "feature_settings", None), "rounds": fresh.classifier.rounds,
               "max_depth": fresh.classifier.max_depth, "contrast": contrast, "normalize": normalize,
               "modal": modal, "crf": crf,
               "probabilities": probabilities}

    def get_segmenter(work: Path) -> Segmenter:
        if (work / "model.dsw").is_file():
            return Segmenter.load(work / "model.dsw", extractor, threads=threads)
        return fresh

    def train(prepared: PreparedImage, work: Path, scribbles) -> None:
        seg = prepared.segmenter
        echo(scribbles.describe())
        echo(f"training on {int(scribbles.counts().sum())} labelled px "
             f"({seg.bank.num_channels + (seg.n_components if extractor else 0)} features) ...")
        seg.fit_prepared([(prepared, scribbles)])
        seg.save(work / "model.dsw")

    extra = [save_model] if save_model else []
    with output_lock([*output_paths(output, probabilities).values(), *extra]):
        work, result = _run(image, output, inputs, options, overwrite=overwrite, probabilities=probabilities,
                            modal=modal, crf=crf, extra_outputs=extra, get_segmenter=get_segmenter, train=train,
                            extractor=extractor, echo=echo, progress=progress,
                            check=lambda reader: load_scribbles(labels, reader.shape), ground_truth=ground_truth,
                            executor=executor, max_pixels=max_pixels)
        if save_model is not None:
            with atomic_path(save_model) as tmp:
                shutil.copyfile(work / "model.dsw", tmp)
            result.outputs["model"] = save_model
            echo(f"wrote {save_model}")
        remove_owned(work, inputs)
    return result


def apply_scan(
    image: str | os.PathLike,
    model: str | os.PathLike | ModelFile,
    output: str | os.PathLike,
    *,
    extractor: FeatureExtractor | None = None,
    probabilities: bool = False,
    modal: int = 0,
    crf: bool = False,
    threads: int | None = None,
    overwrite: bool = False,
    ground_truth: str | os.PathLike | None = None,
    echo: Echo = lambda message: None,
    progress: Progress | None = None,
    executor: Executor | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ScanResult:
    """Segment ``image`` with a model saved by :func:`segment_scan` (``save_model``), :func:`fit_scans`
    or :meth:`Segmenter.save` (a path, or a :class:`ModelFile` already read); with ``ground_truth`` also report
    per-class IoU and mIoU."""
    image, output = Path(image), Path(output)
    ground_truth = None if ground_truth is None else Path(ground_truth)
    inputs = [image] + ([Path(extractor.model_path)] if extractor is not None else [])
    inputs += [ground_truth] if ground_truth is not None else []
    for path in inputs:
        if not path.is_file():
            raise DinosawError(f"not found: {path}")
    model = model if isinstance(model, ModelFile) else ModelFile.read(model)
    inputs.insert(1, model.path)
    seg = Segmenter.from_bundle(model.bundle, str(model.path), extractor, threads=threads)
    options = {"name": "apply", "model_sha256": model.sha256, "modal": modal, "crf": crf,
               "probabilities": probabilities}
    with output_lock(output_paths(output, probabilities).values()):
        work, result = _run(image, output, inputs, options, overwrite=overwrite, probabilities=probabilities,
                            modal=modal, crf=crf, extra_outputs=[], get_segmenter=lambda _: seg, train=None,
                            extractor=seg.extractor, echo=echo, progress=progress,
                            ground_truth=ground_truth, executor=executor, classes=len(seg.label_classes),
                            max_pixels=max_pixels)
        remove_owned(work, inputs)
    return result


# -- several images: one model from several scribbled images, one model applied to a folder ------------------
def fit_scans(
    pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
    output: str | os.PathLike,
    *,
    extractor: FeatureExtractor | None = None,
    contrast: str = "none",
    normalize: str = DEFAULT_NORMALIZE,
    classifier: ClassifierParams | None = None,
    device: str = "auto",
    threads: int | None = None,
    overwrite: bool = False,
    echo: Echo = lambda message: None,
    progress: Progress | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Segmenter:
    """Train one model (``output``, .dsw) on several (image, scribbles) pairs; see
    :meth:`Segmenter.fit_prepared` for how the images are combined. ViT patch features go to a
    resumable work folder ``<output>.work/`` (one store per image), removed at the end."""
    pairs = [(Path(image), Path(labels)) for image, labels in pairs]
    output = Path(output)
    if not pairs:
        raise DinosawError("pass at least one image and its scribbles (--pair IMAGE LABELS)")
    if output.suffix != ".dsw":
        raise DinosawError(f"the model must end in .dsw, got {output.name}")
    seg = new_segmenter(extractor, contrast, classifier, threads, device, normalize)
    inputs = [path for pair in pairs for path in pair] + ([Path(extractor.model_path)] if extractor else [])
    for path in inputs:
        if not path.is_file():
            raise DinosawError(f"not found: {path}")
    check_output(output, inputs, overwrite)
    run = {"command": {"name": "fit", "vit": extractor is not None,
                       "feature_settings": getattr(extractor, "feature_settings", None),
                       "contrast": contrast, "normalize": normalize},
           "inputs": [fingerprint(p) for p in inputs]}
    with ExitStack() as stack:
        stack.enter_context(output_lock([output]))
        readers = [stack.enter_context(open_image(image)) for image, _ in pairs]
        for reader in readers:
            check_pixels(reader.shape, max_pixels, reader.path.name)
        planned = [] if extractor is None else [
            Planned(work_path(output) / f"features_{i}.zarr", feature_store_bytes(
                reader.shape, extractor.patch_size, extractor.embed_dim), f"ViT features of {reader.path.name}")
            for i, reader in enumerate(readers)]
        check_space(planned)
        scribbles = [load_scribbles(labels, reader.shape) for (_, labels), reader in zip(pairs, readers)]
        work = _work_dir(output, run, inputs, echo)
        items = []
        for i, ((image, _), reader, marks) in enumerate(zip(pairs, readers, scribbles)):
            echo(f"{image.name}: {int(marks.counts().sum())} labelled px")
            prepared = seg.prepare(reader, cache_bytes=0)
            with out_of_space(planned):
                _add_patch_grid(prepared, extractor, work, echo, progress, name=f"features_{i}.zarr")
            items.append((prepared, marks))
        echo(f"training on {len(items)} images ...")
        seg.fit_prepared(items)
        echo(describe_classes(seg.label_classes, seg.training["pixels_labelled"]))
        seg.save(output)
        remove_owned(work, inputs)
    echo(f"wrote {output}")
    return seg


def scan_stem(image: Path) -> str:
    """``a.ome.tif`` / ``a.tif`` / ``a.png`` -> ``a``: the name of an image's outputs in a folder."""
    name = image.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return image.stem


def apply_scans(
    images: Sequence[str | os.PathLike],
    model: str | os.PathLike | ModelFile,
    output: str | os.PathLike,
    *,
    ground_truths: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
    echo: Echo = lambda message: None,
    **options: Any,
) -> list[ScanResult]:
    """Segment several images with one model. ``output`` is a file (``.ome.tif``, ``.ome.zarr``) for one
    image, else a folder (existing, or named with a trailing ``/``, for one image) that receives
    ``<stem>.ome.tif`` per image. Resumable per image: an image whose outputs all exist (and have no
    unfinished work folder) is skipped; ``ground_truths`` pairs with ``images``. ``options`` go to
    :func:`apply_scan`."""
    as_folder = len(images) > 1 or str(output).endswith(("/", os.sep)) or Path(output).is_dir()
    images, output = [Path(i) for i in images], Path(output)
    if not images:
        raise DinosawError("no images to segment")
    if ground_truths and len(ground_truths) != len(images):
        raise DinosawError(f"{len(ground_truths)} ground truths for {len(images)} images; pass one per image")
    truths = [Path(t) for t in ground_truths] or [None] * len(images)
    model = model if isinstance(model, ModelFile) else ModelFile.read(model)  # read once for every image
    if output.name.lower().endswith(SUFFIXES) or not as_folder:
        if len(images) > 1:
            raise DinosawError(f"{len(images)} images need an output folder, not the file {output.name}")
        output_paths(output, options.get("probabilities", False))  # a file name we can write, or a clear error
        targets = [output]
    else:
        if output.exists() and not output.is_dir():
            raise DinosawError(f"{output} is a file; several images need an output folder")
        stems = [scan_stem(i) for i in images]
        if len(set(stems)) < len(stems):
            raise DinosawError("two images share a name (" + next(s for s in stems if stems.count(s) > 1)
                               + "); their outputs would collide in one folder")
        output.mkdir(exist_ok=True)
        targets = [output / f"{stem}.ome.tif" for stem in stems]
    results = []
    for n, (image, target, truth) in enumerate(zip(images, targets, truths), start=1):
        paths = output_paths(target, options.get("probabilities", False))
        work = work_path(target)
        if not overwrite and all(p.exists() for p in paths.values()) and not work.exists():
            echo(f"[{n}/{len(images)}] {image.name}: done already ({target.name}), skipped")
            continue
        echo(f"[{n}/{len(images)}] {image.name} -> {target}")
        results.append(apply_scan(image, model, target, ground_truth=truth, overwrite=overwrite, echo=echo,
                                  **options))
    return results
