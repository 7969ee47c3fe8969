"""The segment and apply jobs on files: scribbles -> model -> pyramidal OME-TIFF, resumable.

Both run tile by tile in bounded memory and resume after a kill: the work folder
``<output>.work/`` holds the ViT feature store, the trained model and the finished prediction
tiles (zarr + one marker file per tile); a rerun of the same call continues where it stopped and
gives the same files as an uninterrupted run. It is removed once the outputs are written. The work
folder carries our marker (a folder of that name we did not make is refused, never deleted), and the
outputs are locked for the whole run (:func:`dinosaw_deploy.files.output_lock`): a second run
writing the same output fails at once.

>>> segment_scan("scan.tif", "scribbles.png", "seg.ome.tif", extractor=fx, save_model="seg.dsw")
>>> apply_scan("other.tif", "seg.dsw", "other.ome.tif", extractor=fx)

``echo(message)`` receives progress lines, ``progress(done, total)`` the tile counts of each stage.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import (
    atomic_path,
    check_output,
    file_sha256,
    fingerprint,
    is_owned,
    make_owned_dir,
    output_lock,
    remove_owned,
)
from dinosaw_deploy.image.ome_writer import write_ome_pyramid
from dinosaw_deploy.image.reader import ImageReader, open_image
from dinosaw_deploy.segment.classifier import ClassifierParams
from dinosaw_deploy.segment.contrast import ClaheConfig
from dinosaw_deploy.segment.labels import LabelClass, load_scribbles
from dinosaw_deploy.segment.segmenter import GrayImage, Segmenter
from dinosaw_deploy.tiling.grid import tile_boxes
from dinosaw_deploy.tiling.pipeline import extract_tiled
from dinosaw_deploy.tiling.store import FeatureStore, PatchGrid

PREVIEW_SIZE = 1024
RUN_FILE = "run.json"
Echo = Callable[[str], None]
Progress = Callable[[int, int], None]


@dataclass
class ScanResult:
    """What a segment/apply run wrote."""

    outputs: dict[str, Path]
    classes: list[LabelClass]
    shape: tuple[int, int]
    pixel_size: tuple[float, float] | None
    extra: dict[str, Any] = field(default_factory=dict)


def output_paths(output: str | os.PathLike, probabilities: bool) -> dict[str, Path]:
    """The files a run writes: labels (``X.ome.tif``), preview PNG, optional probabilities."""
    output = Path(output)
    name = output.name
    for suffix in (".ome.tif", ".ome.tiff"):
        if name.lower().endswith(suffix):
            stem = name[: -len(suffix)]
            break
    else:
        raise DinosawError(f"output must end in .ome.tif or .ome.tiff, got {output.name}")
    paths = {"labels": output, "preview": output.with_name(f"{stem}.preview.png")}
    if probabilities:
        paths["probabilities"] = output.with_name(f"{stem}.probabilities.ome.tif")
    return paths


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


def _patch_grid(reader: ImageReader, extractor: FeatureExtractor | None, work: Path, echo: Echo,
                progress: Progress | None) -> PatchGrid | None:
    """The image's stitched ViT features (resumable store in the work folder), or None."""
    if extractor is None:
        return None
    store = work / "features.zarr"
    if not store.is_dir():
        echo("computing ViT patch features ...")
        extract_tiled(reader, extractor, store, progress=progress)
    return FeatureStore.open(store)


def _predict(seg: Segmenter, gray: GrayImage, grid: PatchGrid | None, work: Path, *, modal: int, crf: bool,
             probabilities: bool, echo: Echo, progress: Progress | None):
    """Predict every tile not yet done into zarr arrays in ``work``; returns (labels, probabilities|None)."""
    import zarr

    k = len(seg.label_classes)
    shape, tile = tuple(gray.shape), seg.tile
    chunks = (tile, tile)
    labels = zarr.open_array(work / "labels.zarr", mode="a", shape=shape, chunks=chunks, dtype="uint8", fill_value=0)
    probs = None
    if probabilities:
        probs = zarr.open_array(work / "probabilities.zarr", mode="a", shape=(k, *shape), chunks=(1, *chunks),
                                dtype="uint8", fill_value=0)
    done = work / "done"
    done.mkdir(exist_ok=True)
    boxes = tile_boxes(shape, tile)
    todo = [b for b in boxes if not (done / f"{b[0]}_{b[2]}").exists()]
    if len(todo) < len(boxes):
        echo(f"{len(boxes) - len(todo)} of {len(boxes)} tiles already predicted")
    echo(f"predicting {len(todo)} tiles ...")
    for count, ((y0, y1, x0, x1), tile_labels, tile_probs) in enumerate(
        seg.predict_tiles(gray, todo, grid, modal=modal, crf=crf), start=1
    ):
        labels[y0:y1, x0:x1] = tile_labels
        if probs is not None:
            probs[:, y0:y1, x0:x1] = np.rint(tile_probs * 255).astype(np.uint8)
        (done / f"{y0}_{x0}").touch()
        if progress:
            progress(count, len(todo))
    return labels, probs


def _preview(path: Path, gray: GrayImage, labels, classes: list[LabelClass]) -> None:
    """Downsampled image with class colours blended in, and a legend below."""
    from PIL import Image, ImageDraw

    height, width = gray.shape
    f = max(1, -(-max(height, width) // PREVIEW_SIZE))
    small = np.asarray(labels[::f, ::f])
    image = np.zeros(small.shape, np.float32)
    step = 2048 - 2048 % f
    for y in range(0, height, step):
        for x in range(0, width, step):
            block = gray[y : min(y + step, height), x : min(x + step, width)][::f, ::f]
            image[y // f : y // f + block.shape[0], x // f : x // f + block.shape[1]] = block
    palette = np.zeros((256, 3), np.float32)
    for c in classes:
        palette[c.index] = c.colour
    rgb = 0.55 * (image[..., None] * 255) + 0.45 * palette[small]
    rows = 18 * len(classes) + 8
    canvas = Image.new("RGB", (max(small.shape[1], 200), small.shape[0] + rows), "white")
    canvas.paste(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, c in enumerate(classes):
        top = small.shape[0] + 4 + 18 * i
        draw.rectangle((4, top, 18, top + 14), fill=tuple(c.colour), outline="black")
        draw.text((24, top + 1), f"{c.index}: {c.name}", fill="black")
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def _write_outputs(paths: dict[str, Path], seg: Segmenter, gray: GrayImage, reader: ImageReader, labels, probs,
                   echo: Echo) -> None:
    pixel_size = reader.info.pixel_size
    names = [c.name for c in seg.label_classes]
    write_ome_pyramid(paths["labels"], labels, pixel_size=pixel_size, name=paths["labels"].name)
    echo(f"wrote {paths['labels']} ({labels.shape[0]}x{labels.shape[1]} uint8 classes 1..{len(names)}, "
         f"pixel size {pixel_size or 'unknown'})")
    if probs is not None:
        write_ome_pyramid(paths["probabilities"], probs, pixel_size=pixel_size, channel_names=names,
                          name=paths["probabilities"].name)
        echo(f"wrote {paths['probabilities']} (per-class probability x 255)")
    _preview(paths["preview"], gray, labels, seg.label_classes)
    echo(f"wrote {paths['preview']}")


def _run(image: Path, output: Path, inputs: list[Path], options: dict[str, Any], *, overwrite: bool,
         probabilities: bool, modal: int, crf: bool, extra_outputs: list[Path],
         get_segmenter: Callable[[Path], Segmenter], train: Callable[..., None] | None,
         extractor: FeatureExtractor | None, echo: Echo, progress: Progress | None,
         check: Callable[[ImageReader], Any] | None = None) -> tuple[Path, ScanResult]:
    """Shared body of segment/apply: returns the work folder (removed by the caller when done).
    ``check(reader)`` validates inputs against the image before any expensive work."""
    for path in inputs:
        if not path.is_file():
            raise DinosawError(f"not found: {path}")
    paths = output_paths(output, probabilities)
    for path in [*paths.values(), *extra_outputs]:
        check_output(path, inputs, overwrite)
    check_output(work_path(output), inputs, overwrite=True)
    run = {"command": options, "inputs": [fingerprint(p) for p in inputs]}
    with open_image(image) as reader:
        checked = check(reader) if check is not None else None
        work = _work_dir(output, run, inputs, echo)
        seg = get_segmenter(work)
        gray = seg.gray_image(reader)
        grid = _patch_grid(reader, extractor, work, echo, progress)
        if seg.booster is None:
            train(seg, gray, grid, work, checked)
        labels, probs = _predict(seg, gray, grid, work, modal=modal, crf=crf, probabilities=probabilities,
                                 echo=echo, progress=progress)
        _write_outputs(paths, seg, gray, reader, labels, probs, echo)
        result = ScanResult(paths, list(seg.label_classes), tuple(reader.shape), reader.info.pixel_size)
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
    classifier: ClassifierParams | None = None,
    device: str = "auto",
    threads: int | None = None,
    overwrite: bool = False,
    echo: Echo = lambda message: None,
    progress: Progress | None = None,
) -> ScanResult:
    """Train on the scribbled pixels of ``image`` and segment all of it into ``output`` (.ome.tif)."""
    image, labels, output = Path(image), Path(labels), Path(output)
    save_model = None if save_model is None else Path(save_model)
    if save_model is not None and save_model.suffix != ".dsw":
        raise DinosawError(f"--save-model must end in .dsw, got {save_model.name}")
    if contrast not in ("none", "clahe"):
        raise DinosawError(f"contrast must be none or clahe, not {contrast!r}")
    classifier = classifier or ClassifierParams()
    inputs = [image, labels] + ([Path(extractor.model_path)] if extractor is not None else [])
    options = {"name": "segment", "vit": extractor is not None, "rounds": classifier.rounds,
               "max_depth": classifier.max_depth, "contrast": contrast, "modal": modal, "crf": crf,
               "probabilities": probabilities}

    def get_segmenter(work: Path) -> Segmenter:
        if (work / "model.dsw").is_file():
            return Segmenter.load(work / "model.dsw", extractor, threads=threads)
        return Segmenter(extractor=extractor, classifier=classifier,
                         contrast=ClaheConfig() if contrast == "clahe" else None, threads=threads, device=device)

    def train(seg: Segmenter, gray: GrayImage, grid: PatchGrid | None, work: Path, scribbles) -> None:
        echo(scribbles.describe())
        echo(f"training on {int(scribbles.counts().sum())} labelled px "
             f"({seg.bank.num_channels + (seg.n_components if extractor else 0)} features) ...")
        seg.fit_source(gray, scribbles, grid)
        seg.save(work / "model.dsw")

    extra = [save_model] if save_model else []
    with output_lock([*output_paths(output, probabilities).values(), *extra]):
        work, result = _run(image, output, inputs, options, overwrite=overwrite, probabilities=probabilities,
                            modal=modal, crf=crf, extra_outputs=extra, get_segmenter=get_segmenter, train=train,
                            extractor=extractor, echo=echo, progress=progress,
                            check=lambda reader: load_scribbles(labels, reader.shape))
        if save_model is not None:
            with atomic_path(save_model) as tmp:
                shutil.copyfile(work / "model.dsw", tmp)
            result.outputs["model"] = save_model
            echo(f"wrote {save_model}")
        remove_owned(work, inputs)
    return result


def apply_scan(
    image: str | os.PathLike,
    model: str | os.PathLike,
    output: str | os.PathLike,
    *,
    extractor: FeatureExtractor | None = None,
    probabilities: bool = False,
    modal: int = 0,
    crf: bool = False,
    threads: int | None = None,
    overwrite: bool = False,
    echo: Echo = lambda message: None,
    progress: Progress | None = None,
) -> ScanResult:
    """Segment ``image`` with a model saved by :func:`segment_scan` (``save_model``) or :meth:`Segmenter.save`."""
    image, model, output = Path(image), Path(model), Path(output)
    inputs = [image, model] + ([Path(extractor.model_path)] if extractor is not None else [])
    for path in inputs:
        if not path.is_file():
            raise DinosawError(f"not found: {path}")
    seg = Segmenter.load(model, extractor, threads=threads)
    options = {"name": "apply", "model_sha256": file_sha256(model), "modal": modal, "crf": crf,
               "probabilities": probabilities}
    with output_lock(output_paths(output, probabilities).values()):
        work, result = _run(image, output, inputs, options, overwrite=overwrite, probabilities=probabilities,
                            modal=modal, crf=crf, extra_outputs=[], get_segmenter=lambda _: seg, train=None,
                            extractor=seg.extractor, echo=echo, progress=progress)
        remove_owned(work, inputs)
    return result
