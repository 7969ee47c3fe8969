"""``dinosaw-deploy segment`` and ``dinosaw-deploy apply``: scribbles -> model -> pyramidal OME-TIFF.

Both run tile by tile in bounded memory and resume after a kill: the work folder
``<output>.work/`` holds the ViT feature store, the trained model and the finished prediction
tiles (zarr + one marker file per tile); a rerun of the same command continues where it stopped
and gives the same files as an uninterrupted run. It is removed once the outputs are written.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import click
import numpy as np

from .cli_options import backend_option
from .errors import DinosawError

PREVIEW_SIZE = 1024
RUN_FILE = "run.json"


def _outputs(output: Path, probabilities: bool) -> dict[str, Path]:
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


def _fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _work_dir(output: Path, run: dict[str, Any]) -> Path:
    """``<output>.work``, reused only if it was made by this very command on these very inputs."""
    work = output.with_name(output.name + ".work")
    record = json.dumps(run, sort_keys=True)
    if work.is_dir():
        previous = work / RUN_FILE
        if previous.is_file() and previous.read_text() == record:
            click.echo(f"resuming the unfinished run in {work}")
            return work
        click.echo(f"{work} belongs to a different run; starting over")
        shutil.rmtree(work)
    work.mkdir()
    (work / RUN_FILE).write_text(record)
    return work


def _engine(engine: Path | None, no_vit: bool, backend: str, required: bool = False):
    """The FeatureExtractor to use, or None for classical features only."""
    from .cli import DEFAULT_ENGINE
    from .extractor import FeatureExtractor

    if no_vit:
        return None
    if engine is None:
        if not DEFAULT_ENGINE.is_file():
            if required:
                raise DinosawError(f"this model uses ViT features: pass --engine (no engine at {DEFAULT_ENGINE})")
            click.echo(f"notice: no engine at {DEFAULT_ENGINE}, so classical features only. For ViT features, "
                       "run `dinosaw-deploy export` (or pass --engine X.onnx); --no-vit silences this.")
            return None
        engine = DEFAULT_ENGINE
    return FeatureExtractor(engine, backend=backend)


def _patch_grid(reader, extractor, work: Path):
    """The image's stitched ViT features (resumable store in the work folder), or None."""
    if extractor is None:
        return None
    from .feature_store import FeatureStore
    from .pipeline import extract_tiled

    store = work / "features.zarr"
    if not store.is_dir():
        click.echo("computing ViT patch features ...")
        extract_tiled(reader, extractor, store)
    return FeatureStore.open(store)


def _predict(seg, gray, grid, work: Path, *, modal: int, crf: bool, probabilities: bool):
    """Predict every tile not yet done into zarr arrays in ``work``; returns (labels, probabilities|None)."""
    import zarr

    from .segmenter import tile_boxes

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
        click.echo(f"{len(boxes) - len(todo)} of {len(boxes)} tiles already predicted")
    with click.progressbar(length=len(todo), label="predicting tiles", file=None) as bar:
        for (y0, y1, x0, x1), tile_labels, tile_probs in seg.predict_tiles(gray, todo, grid, modal=modal, crf=crf):
            labels[y0:y1, x0:x1] = tile_labels
            if probs is not None:
                probs[:, y0:y1, x0:x1] = np.rint(tile_probs * 255).astype(np.uint8)
            (done / f"{y0}_{x0}").touch()
            bar.update(1)
    return labels, probs


def _preview(path: Path, gray, labels, classes) -> None:
    """Downsampled image with class colours blended in, and a legend below."""
    from PIL import Image, ImageDraw

    from .atomic import atomic_path

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


def _write_outputs(paths: dict[str, Path], seg, gray, reader, labels, probs) -> None:
    from .ome_writer import write_ome_pyramid

    pixel_size = reader.info.pixel_size
    names = [c.name for c in seg.label_classes]
    write_ome_pyramid(paths["labels"], labels, pixel_size=pixel_size, name=paths["labels"].name)
    click.echo(f"wrote {paths['labels']} ({labels.shape[0]}x{labels.shape[1]} uint8 classes 1..{len(names)}, "
               f"pixel size {pixel_size or 'unknown'})")
    if probs is not None:
        write_ome_pyramid(paths["probabilities"], probs, pixel_size=pixel_size, channel_names=names,
                          name=paths["probabilities"].name)
        click.echo(f"wrote {paths['probabilities']} (per-class probability x 255)")
    _preview(paths["preview"], gray, labels, seg.label_classes)
    click.echo(f"wrote {paths['preview']}")


def _run(image: Path, output: Path, inputs: list[Path], options: dict[str, Any], overwrite: bool,
         get_segmenter, train, extractor, probabilities: bool, modal: int, crf: bool,
         extra_outputs: list[Path]) -> Path:
    """Shared body of segment/apply: returns the work folder (removed by the caller when done).
    ``get_segmenter(work)`` gives a trained or untrained model; an untrained one goes to ``train``."""
    from .cli import check_output
    from .reader import open_image

    paths = _outputs(output, probabilities)
    for path in [*paths.values(), *extra_outputs]:
        check_output(path, inputs, overwrite)
    run = {"command": options, "inputs": [_fingerprint(p) for p in inputs if p.is_file()]}
    with open_image(image) as reader:
        work = _work_dir(output, run)
        seg = get_segmenter(work)
        gray = seg.gray_image(reader)
        grid = _patch_grid(reader, extractor, work)
        if seg.booster is None:
            train(seg, reader, gray, grid, work)
        labels, probs = _predict(seg, gray, grid, work, modal=modal, crf=crf, probabilities=probabilities)
        _write_outputs(paths, seg, gray, reader, labels, probs)
    return work


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--labels", "labels_path", type=click.Path(path_type=Path), required=True,
              help="Scribbles: PNG/TIFF, 0 = unlabelled; classes 1..K, grey levels, or colours.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Label image (.ome.tif).")
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="Exported ALiBi-Dv2 (.onnx) for ViT features [engines/alibi_dv2_vits14.onnx if present].")
@click.option("--no-vit", is_flag=True, help="Classical features only.")
@click.option("--save-model", type=click.Path(path_type=Path), default=None, help="Also save the model (.dsw).")
@click.option("--probabilities", is_flag=True, help="Also write per-class probabilities (*.probabilities.ome.tif).")
@click.option("--modal", type=click.IntRange(min=0), default=0, help="Majority filter radius in px (0 = off).")
@click.option("--crf", is_flag=True, help="Dense-CRF post-processing per tile (needs the 'crf' extra).")
@click.option("--contrast", type=click.Choice(["none", "clahe"]), default="none", show_default=True,
              help="Contrast equalisation before the filter bank (CLAHE evens out uneven illumination).")
@click.option("--rounds", type=click.IntRange(min=1), default=100, show_default=True, help="XGBoost rounds.")
@click.option("--max-depth", type=click.IntRange(min=1), default=8, show_default=True, help="XGBoost tree depth.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="XGBoost training device.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads [all cores].")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@backend_option
def segment_command(image: Path, labels_path: Path, output: Path, engine: Path | None, no_vit: bool,
                    save_model: Path | None, probabilities: bool, modal: int, crf: bool, contrast: str, rounds: int,
                    max_depth: int, device: str, threads: int | None, overwrite: bool, backend: str) -> None:
    """Train on the scribbled pixels of IMAGE and segment all of it into a pyramidal OME-TIFF."""
    from .contrast import ClaheConfig
    from .labels import load_scribbles
    from .segmenter import ClassifierParams, Segmenter

    if engine is not None and no_vit:
        raise DinosawError("--engine and --no-vit contradict each other; pass one")
    if save_model is not None and save_model.suffix != ".dsw":
        raise DinosawError(f"--save-model must end in .dsw, got {save_model.name}")
    for path in (image, labels_path):  # before the engine, whose notice would bury this error
        if not path.is_file():
            raise DinosawError(f"not found: {path}")
    extractor = _engine(engine, no_vit, backend)
    inputs = [image, labels_path] + ([extractor.model_path] if extractor is not None else [])
    options = {"name": "segment", "vit": extractor is not None, "rounds": rounds, "max_depth": max_depth,
               "contrast": contrast, "modal": modal, "crf": crf, "probabilities": probabilities}

    def get_segmenter(work: Path) -> Segmenter:
        if (work / "model.dsw").is_file():
            return Segmenter.load(work / "model.dsw", extractor, threads=threads)
        return Segmenter(extractor=extractor, classifier=ClassifierParams(rounds=rounds, max_depth=max_depth),
                         contrast=ClaheConfig() if contrast == "clahe" else None, threads=threads, device=device)

    def train(seg: Segmenter, reader, gray, grid, work: Path) -> None:
        scribbles = load_scribbles(labels_path, reader.shape)
        click.echo(scribbles.describe())
        click.echo(f"training on {int(scribbles.counts().sum())} labelled px "
                   f"({seg.bank.num_channels + (seg.n_components if extractor else 0)} features) ...")
        seg.fit_source(gray, scribbles, grid)
        seg.save(work / "model.dsw")

    work = _run(image, output, inputs, options, overwrite, get_segmenter, train, extractor, probabilities, modal,
                crf, [save_model] if save_model else [])
    if save_model is not None:
        from .atomic import atomic_path

        with atomic_path(save_model) as tmp:
            shutil.copyfile(work / "model.dsw", tmp)
        click.echo(f"wrote {save_model}")
    shutil.rmtree(work)


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--model", "model_path", type=click.Path(path_type=Path), required=True, help="Trained model (.dsw).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Label image (.ome.tif).")
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="The engine the model was trained with (ViT models) [engines/alibi_dv2_vits14.onnx].")
@click.option("--probabilities", is_flag=True, help="Also write per-class probabilities (*.probabilities.ome.tif).")
@click.option("--modal", type=click.IntRange(min=0), default=0, help="Majority filter radius in px (0 = off).")
@click.option("--crf", is_flag=True, help="Dense-CRF post-processing per tile (needs the 'crf' extra).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads [all cores].")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@backend_option
def apply_command(image: Path, model_path: Path, output: Path, engine: Path | None, probabilities: bool,
                  modal: int, crf: bool, threads: int | None, overwrite: bool, backend: str) -> None:
    """Segment IMAGE with a model saved by `segment --save-model`."""
    from .bundle import load_bundle
    from .segmenter import Segmenter

    uses_vit = load_bundle(model_path).config.get("vit") is not None
    extractor = _engine(engine, no_vit=not uses_vit, backend=backend, required=True)
    inputs = [image, model_path] + ([extractor.model_path] if extractor is not None else [])
    for path in inputs:
        if not path.is_file():
            raise DinosawError(f"not found: {path}")
    seg = Segmenter.load(model_path, extractor, threads=threads)
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    options = {"name": "apply", "model_sha256": digest, "modal": modal, "crf": crf, "probabilities": probabilities}
    work = _run(image, output, inputs, options, overwrite, lambda _: seg, None, extractor, probabilities, modal, crf,
                [])
    shutil.rmtree(work)
