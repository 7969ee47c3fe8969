"""Scribble label images -> sparse labelled pixels with classes 1..K.

Accepted files (PNG, TIFF, anything :func:`dinosaw_deploy.image.reader.open_image` reads), 0 = unlabelled:

* grayscale integers: classes ``1..K`` or spread grey levels (85/170/255, 127/254, ...): the sorted
  distinct non-zero values become classes 1..K; (1, H, W) files are fine;
* colour (RGB/RGBA): every distinct colour is a class (sorted by colour value); black and fully
  transparent pixels are unlabelled.

Only the labelled pixels are kept (coordinates + class), read in row strips, so a gigapixel
scribble TIFF never sits in memory whole.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec
import numpy as np
from msgspec import Meta

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import atomic_path
from dinosaw_deploy.image.reader import channels_first, open_image
from dinosaw_deploy.schema import Name, to_builtins

MAX_CLASSES = 255
STRIP_ROWS = 1024
# Display colours for classes 1..K (cycled); class names default to "class k".
PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
)


Byte = Annotated[int, Meta(ge=0, le=255)]


class LabelClass(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One class: its index 1..K, display name and colour, and the value it had in the label file."""

    index: Annotated[int, Meta(ge=1, le=MAX_CLASSES)]
    name: Name
    colour: tuple[Byte, Byte, Byte]
    source_value: Annotated[tuple[Annotated[int, Meta(ge=0, le=2**63 - 1)], ...], Meta(min_length=1, max_length=4)]

    def to_dict(self) -> dict:
        return to_builtins(self)


@dataclass
class Scribbles:
    """Labelled pixels of an (H, W) image: coordinates and classes 1..K (uint8)."""

    shape: tuple[int, int]
    ys: np.ndarray
    xs: np.ndarray
    classes: np.ndarray
    label_classes: list[LabelClass]

    @property
    def num_classes(self) -> int:
        return len(self.label_classes)

    def counts(self) -> np.ndarray:
        """Labelled pixels per class (index 0 = class 1)."""
        return np.bincount(self.classes, minlength=self.num_classes + 1)[1:]

    def describe(self) -> str:
        """One line per class: source value -> class, pixel count."""
        return describe_classes(self.label_classes, self.counts())

    def subsample(self, max_per_class: int, seed: int = 0) -> Scribbles:
        """At most ``max_per_class`` random pixels of each class (all of a smaller class)."""
        return subsample_many([self], max_per_class, seed)[0]

    def to_image(self) -> np.ndarray:
        """The dense (H, W) uint8 class image (0 = unlabelled); for small images and tests."""
        dense = np.zeros(self.shape, np.uint8)
        dense[self.ys, self.xs] = self.classes
        return dense


def describe_classes(classes: Sequence[LabelClass], counts: Sequence[int]) -> str:
    """One line per class: its label value in the file -> class index and name, pixel count."""
    lines = []
    for cls, count in zip(classes, counts):
        value = cls.source_value[0] if len(cls.source_value) == 1 else "rgb" + str(cls.source_value)
        lines.append(f"label value {value} -> class {cls.index} ({cls.name}): {count} px")
    return "\n".join(lines)


def subsample_many(scribbles: Sequence[Scribbles], max_per_class: int, seed: int = 0) -> list[Scribbles]:
    """At most ``max_per_class`` random pixels of each class over all images together (all of a
    smaller class); the scribbles must share their classes (:func:`unify_classes`)."""
    rng = np.random.default_rng(seed)
    classes = np.concatenate([s.classes for s in scribbles])
    keep = []
    for k in range(1, scribbles[0].num_classes + 1):
        idx = np.flatnonzero(classes == k)
        keep.append(idx if len(idx) <= max_per_class else rng.choice(idx, max_per_class, replace=False))
    order = np.sort(np.concatenate(keep))
    bounds = np.cumsum([0] + [len(s.classes) for s in scribbles])
    out = []
    for s, start, stop in zip(scribbles, bounds[:-1], bounds[1:]):
        mine = order[(order >= start) & (order < stop)] - start
        out.append(Scribbles(s.shape, s.ys[mine], s.xs[mine], s.classes[mine], s.label_classes))
    return out


def unify_classes(scribbles: Sequence[Scribbles]) -> list[Scribbles]:
    """The scribbles of several images with one class list: the sorted union of their label values
    (an image may lack some classes). Grey-level and colour label files cannot be mixed."""
    if len({len(c.source_value) for s in scribbles for c in s.label_classes}) > 1:
        raise DinosawError("the label files mix grey-level and colour labels; use one convention for all images")
    values = sorted({c.source_value for s in scribbles for c in s.label_classes})
    if len(values) > MAX_CLASSES:
        raise DinosawError(f"{len(values)} distinct label values over all images; at most {MAX_CLASSES} classes")
    merged = [LabelClass(i, f"class {i}", PALETTE[(i - 1) % len(PALETTE)], v) for i, v in enumerate(values, start=1)]
    out = []
    for s in scribbles:
        remap = np.zeros(s.num_classes + 1, np.uint8)
        remap[1:] = [values.index(c.source_value) + 1 for c in s.label_classes]
        out.append(Scribbles(s.shape, s.ys, s.xs, remap[s.classes], merged))
    return out


def scribbles_from_array(labels: np.ndarray, shape: tuple[int, int] | None = None) -> Scribbles:
    """Scribbles from an in-memory label image ((H, W), (1, H, W) or (H, W, 3|4))."""
    labels = _squeeze(np.asarray(labels), "label array")
    return _build([(0, labels)], labels.shape[:2], shape, "label array")


def load_scribbles(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> Scribbles:
    """Scribbles from a label file, checked against the image ``shape`` (H, W) if given."""

    path = Path(path)
    with open_image(path) as reader:
        if reader.series_pages > 1:
            raise DinosawError(f"{path}: labels hold a stack of {reader.series_pages} planes; give one (H, W) "
                               "label image")
        height, width = reader.shape
        strips = ((y, reader.read_region(y, 0, min(STRIP_ROWS, height - y), width))
                  for y in range(0, height, STRIP_ROWS))
        return _build(strips, (height, width), shape, str(path))


def save_scribbles(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write an (H, W) uint8 label image (0 = unlabelled) as PNG or TIFF, the files
    :func:`load_scribbles` reads; written under a temporary name, then renamed."""
    import imagecodecs
    import tifffile

    path, labels = Path(path), np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise DinosawError(f"scribbles must be an (H, W) uint8 array, got {labels.dtype} {labels.shape}")
    suffix = path.suffix.lower()
    if suffix not in (".png", ".tif", ".tiff"):
        raise DinosawError(f"scribbles are saved as .png, .tif or .tiff, not {path.name}")
    if not path.parent.is_dir():
        raise DinosawError(f"output directory {path.parent} does not exist")
    with atomic_path(path) as tmp:
        if suffix == ".png":
            tmp.write_bytes(imagecodecs.png_encode(labels))
        else:
            tifffile.imwrite(tmp, labels, compression="zlib", tile=(512, 512) if min(labels.shape) >= 512 else None)
    return path


def _squeeze(labels: np.ndarray, source: str) -> np.ndarray:
    if labels.ndim == 3 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim == 3 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if channels_first(labels.shape, (3, 4)):
        labels = np.moveaxis(labels, 0, -1)
    if labels.ndim not in (2, 3) or (labels.ndim == 3 and labels.shape[-1] not in (3, 4)):
        raise DinosawError(f"{source}: labels must be (H, W), (1, H, W) or RGB(A), got shape {labels.shape}")
    return labels


def _keys(strip: np.ndarray, source: str) -> np.ndarray:
    """Per-pixel key (0 = unlabelled): the grey value (in the strip's own type), or the packed colour (uint64)."""
    if np.issubdtype(strip.dtype, np.floating):
        if not np.all(np.isfinite(strip)) or np.any(strip != np.round(strip)):
            raise DinosawError(f"{source}: label values must be whole numbers (got fractional values)")
    elif not (np.issubdtype(strip.dtype, np.integer) or strip.dtype == np.bool_):
        raise DinosawError(f"{source}: unsupported label pixel type {strip.dtype}")
    if strip.dtype.kind in "if" and np.any(strip < 0):  # signed integers and floats
        raise DinosawError(f"{source}: label values must be >= 0")
    if strip.ndim == 2:
        return strip
    if strip.max(initial=0) > 0xFFFF:
        raise DinosawError(f"{source}: colour labels must be 8- or 16-bit")
    rgb = strip[..., :3].astype(np.uint64)
    keys = (rgb[..., 0] << np.uint64(32)) | (rgb[..., 1] << np.uint64(16)) | rgb[..., 2]
    if strip.shape[-1] == 4:
        keys[strip[..., 3] == 0] = 0
    return keys


def _build(strips, label_shape: tuple[int, int], shape: tuple[int, int] | None, source: str) -> Scribbles:
    if shape is not None and tuple(label_shape) != tuple(shape[:2]):
        raise DinosawError(
            f"{source}: labels are {label_shape[0]}x{label_shape[1]} px but the image is {shape[0]}x{shape[1]} px"
        )
    ys, xs, keys, colour = [], [], [], False
    for y0, strip in strips:
        strip = _squeeze(np.asarray(strip), source)
        colour = strip.ndim == 3
        k = _keys(strip, source)
        marked = np.flatnonzero(k.any(axis=1))  # scribbles are sparse: look for them in the rows that hold some
        rows, cols = np.nonzero(k[marked])
        rows = marked[rows]
        ys.append((rows + y0).astype(np.int32))
        xs.append(cols.astype(np.int32))
        keys.append(k[rows, cols].astype(np.uint64))
    keys_all = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    if keys_all.size == 0:
        raise DinosawError(f"{source}: no labelled pixels (every value is 0 = unlabelled)")
    values, classes = np.unique(keys_all, return_inverse=True)
    if len(values) == 1:
        raise DinosawError(f"{source}: only one class is labelled; scribble at least two classes")
    if len(values) > MAX_CLASSES:
        raise DinosawError(f"{source}: {len(values)} distinct label values; at most {MAX_CLASSES} classes")
    label_classes = []
    for i, value in enumerate(values.tolist(), start=1):
        source_value = ((value >> 32) & 0xFFFF, (value >> 16) & 0xFFFF, value & 0xFFFF) if colour else (value,)
        label_classes.append(LabelClass(i, f"class {i}", PALETTE[(i - 1) % len(PALETTE)], source_value))
    return Scribbles(
        shape=tuple(label_shape),
        ys=np.concatenate(ys),
        xs=np.concatenate(xs),
        classes=(classes + 1).astype(np.uint8),
        label_classes=label_classes,
    )


def ground_truth_strips(path: str | os.PathLike, classes: Sequence[LabelClass], shape: tuple[int, int]
                        ) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, class indices (rows, W) uint8) of a dense ground-truth label file, strip by strip:
    each value maps to the class whose label value it is (same conventions as the scribbles), 0 to
    0 = not scored. A value that is no class's is an error."""
    lookup = {}
    for c in classes:
        value = c.source_value
        key = value[0] if len(value) == 1 else (value[0] << 32) | (value[1] << 16) | value[2]
        lookup[key] = c.index
    keys = np.array(sorted(lookup), dtype=np.uint64)
    index = np.array([lookup[int(k)] for k in keys], dtype=np.uint8)
    with open_image(path) as reader:
        if tuple(reader.shape) != tuple(shape):
            raise DinosawError(f"{path}: ground truth is {reader.shape[0]}x{reader.shape[1]} px but the image is "
                               f"{shape[0]}x{shape[1]} px")
        height, width = reader.shape
        for y in range(0, height, STRIP_ROWS):
            strip = _keys(_squeeze(np.asarray(reader.read_region(y, 0, min(STRIP_ROWS, height - y), width)),
                                   str(path)), str(path))
            pos = np.minimum(np.searchsorted(keys, strip), len(keys) - 1)
            known = keys[pos] == strip
            unknown = ~known & (strip != 0)
            if unknown.any():
                raise DinosawError(f"{path}: ground-truth value {int(strip[unknown][0])} is none of the model's "
                                   f"classes ({', '.join(str(c.source_value[0] if len(c.source_value) == 1 else c.source_value) for c in classes)})")
            yield y, np.where(known, index[pos], 0).astype(np.uint8)
