"""ScanJob: one image becoming label files, resumable, in bounded memory.

The job owns the image's reader, the output targets and their lock, and the work folder
(:class:`WorkFolder`); it checks every input and the free space before any expensive work, prepares
the image for a model (its ViT feature store computed once, on an executor if given), predicts every
tile into a :class:`ZarrMerger` and writes the outputs. Leaving its ``with`` block normally removes the
work folder; an error keeps it, so the same call resumes.

>>> with ScanJob(image, output, command, inputs=[labels], predict=PredictOptions(), run=RunOptions()) as job:
...     prepared = job.prepare(segmenter)
...     result = job.predict(prepared)
"""
from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import check_output, output_lock
from dinosaw_deploy.image.box import Box
from dinosaw_deploy.image.ome_writer import write_ome_pyramid
from dinosaw_deploy.image.ome_zarr import build_levels, create_ome_zarr, publish
from dinosaw_deploy.image.reader import ImageReader, open_image, require_file
from dinosaw_deploy.preflight import Planned, check_pixels, check_space, feature_store_bytes, label_bytes, out_of_space
from dinosaw_deploy.segment.label_preview import write_label_preview
from dinosaw_deploy.segment.labels import LabelClass, Scribbles
from dinosaw_deploy.segment.merger import ZarrMerger
from dinosaw_deploy.segment.metrics import scan_quality
from dinosaw_deploy.segment.options import Echo, Executor, PredictOptions, Progress, RunOptions
from dinosaw_deploy.segment.prepared import PreparedImage
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.segment.work import WorkFolder
from dinosaw_deploy.tiling.grid import tile_boxes
from dinosaw_deploy.tiling.pipeline import extract_tiled
from dinosaw_deploy.tiling.store import FeatureStore

SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.zarr")
SHIFT_WARNING = 0.10  # intensity shift (earth mover's distance over [0, 1]) above which apply warns


@dataclass
class ScanResult:
    """What a segment/apply run wrote."""

    outputs: dict[str, Path]
    classes: list[LabelClass]
    shape: tuple[int, int]
    pixel_size: tuple[float, float] | None
    extra: dict[str, Any] = field(default_factory=dict)


def ome_suffix(name: str) -> str | None:
    """The output suffix of :data:`SUFFIXES` that ``name`` ends with (any case), or None."""
    lowered = name.lower()
    return next((suffix for suffix in SUFFIXES if lowered.endswith(suffix)), None)


def output_paths(output: str | os.PathLike, probabilities: bool) -> dict[str, Path]:
    """The files a run writes: labels (``X.ome.tif`` or ``X.ome.zarr``), preview PNG, optional probabilities."""
    output = Path(output)
    suffix = ome_suffix(output.name)
    if suffix is None:
        raise DinosawError(f"output must end in .ome.tif, .ome.tiff or .ome.zarr, got {output.name}")
    stem = output.name[: -len(suffix)]
    paths = {"labels": output, "preview": output.with_name(f"{stem}.preview.png")}
    if probabilities:
        kind = ".ome.zarr" if suffix == ".ome.zarr" else ".ome.tif"
        paths["probabilities"] = output.with_name(f"{stem}.probabilities{kind}")
    return paths


def require_inputs(paths: list[Path]) -> None:
    """Refuse a missing input (or a folder, FIFO, device) with one line, before any work."""
    for path in paths:
        require_file(path, "input")


def add_patch_grid(prepared: PreparedImage, extractor: FeatureExtractor | None, store: Path, echo: Echo,
                   progress: Progress | None, executor: Executor | None = None) -> None:
    """Give ``prepared`` its stitched ViT features from the resumable ``store`` (computed under the
    image's intensity range if absent); nothing for a classical model."""
    if extractor is None:
        return
    if not store.is_dir():
        echo("computing ViT patch features ...")
        reader, range_ = prepared.source, prepared.intensity_range
        if executor is not None:
            executor.extract(reader, extractor, store, range_, progress)
        else:
            extract_tiled(reader, extractor, store, intensity_range=range_, progress=progress)
    prepared.set_grid(FeatureStore.open(store))


def _tile_name(box: Box) -> str:
    return f"{box[0]}_{box[2]}"


class ScanJob:
    """One image (``image``) segmented into ``output`` (.ome.tif or .ome.zarr) and its companions
    (:func:`output_paths`). ``command`` identifies the job for resuming; ``inputs`` are the other files it
    reads (scribbles, model, engine), ``ground_truth`` a dense label file to score against, ``extra_outputs``
    further files the caller writes under the same lock; ``classes`` sizes the probability output."""

    def __init__(self, image: Path, output: Path, command: dict[str, Any], *, inputs: list[Path],
                 predict: PredictOptions, run: RunOptions, extractor: FeatureExtractor | None = None,
                 ground_truth: Path | None = None, extra_outputs: list[Path] | None = None,
                 classes: int = 2) -> None:
        self.image, self.output, self.command = image, output, command
        self.inputs = [image, *inputs, *([ground_truth] if ground_truth is not None else [])]
        self.predict_options, self.run, self.extractor = predict, run, extractor
        self.ground_truth, self.classes = ground_truth, classes
        self.paths = output_paths(output, predict.probabilities)
        self.extra_outputs = list(extra_outputs or [])
        self.work = WorkFolder.of(output)
        self._stack = ExitStack()
        self.reader: ImageReader

    def __enter__(self) -> ScanJob:
        with ExitStack() as stack:
            stack.enter_context(output_lock([*self.paths.values(), *self.extra_outputs]))
            require_inputs(self.inputs)
            for path in [*self.paths.values(), *self.extra_outputs]:
                check_output(path, self.inputs, self.run.overwrite)
            check_output(self.work.path, self.inputs, overwrite=True)
            self.reader = stack.enter_context(open_image(self.image))
            stack.enter_context(out_of_space(self._preflight()))
            self._check_ground_truth()
            self._stack = stack.pop_all()
        return self

    def __exit__(self, kind, value, traceback) -> bool:
        if kind is None:  # done: the work folder goes first, still under the lock
            self._stack.callback(self.work.remove, self.inputs)
        return self._stack.__exit__(kind, value, traceback)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.reader.shape)

    def _preflight(self) -> list[Planned]:
        """Refuse, from the header alone, an image above the pixel cap or outputs that cannot fit on their
        disks; returns what was planned."""
        reader = self.reader
        check_pixels(reader.shape, self.run.max_pixels, reader.path.name)
        planned = [Planned(self.paths["labels"], label_bytes(reader.shape), "labels")]
        if "probabilities" in self.paths:
            planned.append(Planned(self.paths["probabilities"], label_bytes(reader.shape, self.classes),
                                   "probabilities"))
        if self.extractor is not None:
            planned.append(Planned(self.work.features(), feature_store_bytes(
                reader.shape, self.extractor.patch_size, self.extractor.embed_dim), "ViT feature store"))
        check_space(planned)
        return planned

    def _check_ground_truth(self) -> None:
        if self.ground_truth is None:
            return
        with open_image(self.ground_truth) as truth:
            if tuple(truth.shape) != self.shape:
                raise DinosawError(f"{self.ground_truth}: ground truth is {truth.shape[0]}x{truth.shape[1]} px "
                                   f"but the image is {self.shape[0]}x{self.shape[1]} px")

    def start(self) -> None:
        """Claim the work folder (resuming it if it is this job's); call once the inputs are checked."""
        self.work.claim(self.command, self.inputs, self.run.echo)

    def trained_model(self, extractor: FeatureExtractor | None) -> Segmenter | None:
        """The model an earlier run of this job trained and kept, if any."""
        if self.work.model.is_file():
            return Segmenter.load(self.work.model, extractor, threads=self.run.threads)
        return None

    def prepare(self, seg: Segmenter) -> PreparedImage:
        """The image prepared for ``seg`` (each tile computed once, no cache) with its ViT feature store."""
        prepared = seg.prepare(self.reader, cache_bytes=0)
        add_patch_grid(prepared, seg.extractor, self.work.features(), self.run.echo, self.run.progress,
                       self.run.executor)
        return prepared

    def exposure_check(self, prepared: PreparedImage) -> float | None:
        """The image's intensity shift from the training images (:meth:`Segmenter.intensity_shift`); one
        warning line when it exceeds :data:`SHIFT_WARNING`."""
        seg = prepared.segmenter
        shift = seg.intensity_shift(prepared)
        if shift is not None and shift > SHIFT_WARNING:
            hint = ("; a model trained with --normalize percentile adapts to each scan" if seg.normalize == "dtype"
                    else "")
            self.run.echo(f"warning: {self.image.name} does not look like the training images (intensity shift "
                          f"{shift:.3f} of the range, above {SHIFT_WARNING}): expect poorer labels{hint}")
        return shift

    def predict(self, prepared: PreparedImage, scribbles: Scribbles | None = None,
                extra: dict[str, Any] | None = None) -> ScanResult:
        """Predict every tile not yet done, score against the ground truth, write the outputs (the preview
        shows ``scribbles`` if given)."""
        seg, echo, options = prepared.segmenter, self.run.echo, self.predict_options
        merger = self._merger(seg)
        if self.run.executor is not None:
            self.run.executor.predict(prepared, merger, options, echo=echo, progress=self.run.progress)
        else:
            self._predict_here(prepared, merger)
        # scored before an OME-Zarr target moves
        quality = scan_quality(merger.finalize()[0], seg.label_classes, self.ground_truth, echo)
        self._write_outputs(seg, prepared, merger, scribbles)
        return ScanResult(self.paths, list(seg.label_classes), self.shape, self.reader.info.pixel_size,
                          {**quality, **(extra or {})})

    def _predict_here(self, prepared: PreparedImage, merger: ZarrMerger) -> None:
        echo, progress, options = self.run.echo, self.run.progress, self.predict_options
        boxes = tile_boxes(prepared.shape, prepared.segmenter.tile)
        todo = [b for b in boxes if not merger.done(_tile_name(b))]
        if len(todo) < len(boxes):
            echo(f"{len(boxes) - len(todo)} of {len(boxes)} tiles already predicted")
        echo(f"predicting {len(todo)} tiles ...")
        tiles = prepared.tiles(todo, modal=options.modal, crf=options.crf, exact=options.exact,
                               probabilities=merger.stores_probabilities)
        for count, (box, tile_labels, tile_probs) in enumerate(tiles, start=1):
            merger.aggregate(box, tile_labels, tile_probs)
            merger.mark(_tile_name(box))
            if progress:
                progress(count, len(todo))

    def _merger(self, seg: Segmenter) -> ZarrMerger:
        """The merger of the level-0 zarr arrays in the work folder (created on the first run): OME-Zarr
        groups for ``.ome.zarr`` outputs (finished in place), plain arrays converted to OME-TIFF."""
        import zarr

        k, tile, pixel_size = len(seg.label_classes), seg.tile, self.reader.info.pixel_size
        shapes = {"labels": self.shape, "probabilities": (k, *self.shape)}
        targets, created = {}, False
        for key in ("labels", "probabilities"):
            if key not in self.paths:
                continue
            ome_zarr = self.paths[key].name.lower().endswith(".ome.zarr")
            target = self.work.array(key, ome_zarr)
            if ome_zarr:
                if not target.is_dir():
                    names = [c.name for c in seg.label_classes] if key == "probabilities" else None
                    fresh = create_ome_zarr(self.work.path / f"{key}.new", shapes[key], chunk=tile,
                                            pixel_size=pixel_size, channel_names=names, name=self.paths[key].name)
                    os.replace(fresh, target)
                    created = True
                targets[key] = target / "0"
            else:
                lead = (1,) if key == "probabilities" else ()
                zarr.open_array(target, mode="a", shape=shapes[key], chunks=(*lead, tile, tile), dtype="uint8",
                                fill_value=0)
                targets[key] = target
        if created:  # markers of tiles written into an earlier copy (published, then the job was cut) are void
            shutil.rmtree(self.work.done, ignore_errors=True)
        return ZarrMerger.at(targets, self.work.done)

    def _write_outputs(self, seg: Segmenter, prepared: PreparedImage, merger: ZarrMerger,
                       scribbles: Scribbles | None) -> None:
        """The finished outputs from ``merger``'s arrays: OME-TIFF pyramids written, OME-Zarr groups finished."""
        labels, probs = merger.finalize()
        targets = {k: Path(v) for k, v in merger.targets.items()}
        pixel_size, echo, paths = self.reader.info.pixel_size, self.run.echo, self.paths
        names = [c.name for c in seg.label_classes]
        if probs is not None:
            _write(paths["probabilities"], probs, targets["probabilities"], pixel_size, names)
            echo(f"wrote {paths['probabilities']} (per-class probability x 255)")
        write_label_preview(paths["preview"], prepared.gray, labels, seg.label_classes, scribbles)
        _write(paths["labels"], labels, targets["labels"], pixel_size, None)
        echo(f"wrote {paths['labels']} ({labels.shape[0]}x{labels.shape[1]} uint8 classes 1..{len(names)}, "
             f"pixel size {pixel_size or 'unknown'})")
        echo(f"wrote {paths['preview']}")


def _write(path: Path, array, target: Path, pixel_size, names: list[str] | None) -> None:
    """Finish an OME-Zarr target in place (pyramid levels, then rename) or convert it to OME-TIFF."""
    if path.name.lower().endswith(".ome.zarr"):
        build_levels(target.parent)
        publish(target.parent, path)
    else:
        write_ome_pyramid(path, array, pixel_size=pixel_size, channel_names=names, name=path.name)
