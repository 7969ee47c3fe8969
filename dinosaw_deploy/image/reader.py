"""Lazy region access to large micrographs: every TIFF flavour via tifffile (+ zarr), PNG/JPEG whole.

Uncompressed contiguous TIFF data (striped, single-strip or tiled-as-strips) is memory-mapped; every
other TIFF is read chunk by chunk (tile or strip) through tifffile's zarr store, so a region costs
only the chunks it touches. Palette images come out as RGB. Vendor SEM metadata (Thermo/FEI,
Zeiss) gives the pixel size and the height of the acquired image above the info bar.
"""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dinosaw_deploy.errors import DinosawError, quiet_logger

# A compressed chunk (strip or tile) is decoded whole on every read that touches it.
MAX_CHUNK_BYTES = 1 << 30
# PNG/JPEG/... cannot be read region by region: they are decoded whole, so their declared size
# (read from the header, before decoding) is capped. Raise it knowingly, or convert to a tiled TIFF.
MAX_DECODE_PIXELS = 1 << 28
# Pixel sizes outside this range (metres) are implausible metadata and treated as unknown.
PLAUSIBLE_PIXEL_SIZE = (1e-12, 1e-2)
log = logging.getLogger(__name__)
_UNITS = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "μm": 1e-6, "nm": 1e-9, "pm": 1e-12}


TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".tf8"}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A whole image as a numpy array: TIFF via tifffile, ``.npy``, else PNG/JPEG/... via imagecodecs."""
    path = Path(path)
    require_file(path, "image")
    suffix = path.suffix.lower()
    if suffix not in TIFF_SUFFIXES:
        declared = image_shape(path)
        if declared is not None and declared[0] * declared[1] > MAX_DECODE_PIXELS and suffix != ".npy":
            raise DinosawError(
                f"{path.name} declares {declared[0]}x{declared[1]} px; {path.suffix} files are decoded whole and "
                f"the limit is {MAX_DECODE_PIXELS} px (dinosaw_deploy.image.reader.MAX_DECODE_PIXELS): convert it "
                "to a tiled TIFF, which is read region by region"
            )
    try:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            image = tifffile.imread(path)
        elif suffix == ".npy":
            image = np.load(path, mmap_mode="r", allow_pickle=False)  # read lazily, region by region
        else:
            import imagecodecs

            image = imagecodecs.imread(str(path))
    except Exception as exc:  # codec errors come in many types; all mean "unreadable"
        raise DinosawError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None
    image = np.asarray(image)
    if image.size == 0:
        raise DinosawError(f"cannot read image {path}: it holds no pixels")
    return image


def require_file(path: Path, what: str) -> None:
    """Refuse a missing path, a folder, a FIFO or a device with one clear line (a FIFO is never opened,
    so it cannot hang the process)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DinosawError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise DinosawError(f"{what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise DinosawError(f"{what} {path} is {kind}; give an image file")


def image_shape(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) an image file declares, read from its header without decoding the pixels
    (TIFF: first page; ``.npy``: the array header; PNG/JPEG/...: Pillow's lazy open); None if unknown."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            with quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagelength), int(page.imagewidth)
        if suffix == ".npy":
            fmt = np.lib.format
            with open(path, "rb") as handle:
                version = fmt.read_magic(handle)
                read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
                if read is None:
                    return None
                shape = read(handle)[0]
            shape = shape[1:] if channels_first(shape) else shape
            return (int(shape[0]), int(shape[1])) if len(shape) >= 2 else None
        width, height = _pillow_size(path)
        return int(height), int(width)
    except Exception:  # unreadable header: the decoder gives the precise error
        return None


def _pillow_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header, as Pillow reads it. Pillow's decompression-bomb guard
    (``Image.MAX_IMAGE_PIXELS``, the host application's setting) is left as it is: when it refuses
    to open the file, its format plugins -- which parse the header without the guard -- are asked
    directly, the way ``Image.open`` asks them, so the caller can apply its own limit."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except Image.DecompressionBombError:
        pass
    Image.init()
    with open(path, "rb") as handle:
        prefix = handle.read(16)
        for factory, accept in (Image.OPEN[name] for name in Image.ID):
            found = not accept or accept(prefix)
            if found and not isinstance(found, str):
                handle.seek(0)
                return factory(handle, str(path)).size
    raise OSError(f"no Pillow plugin reads {path.name}")


def channels_first(shape: tuple[int, ...], channels: tuple[int, ...] = (1, 3, 4)) -> bool:
    """True for a (C, H, W) array: a leading axis of ``channels`` size and a trailing one that is not."""
    return len(shape) == 3 and shape[0] in channels and shape[-1] not in channels


def to_channels_last(image: np.ndarray) -> np.ndarray:
    """(H, W) / (H, W, C) / (C, H, W) -> (H, W, 3), alpha dropped, gray replicated."""
    image = np.asarray(image)
    if channels_first(image.shape):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise DinosawError(
            f"expected a 2D grayscale or 3D RGB(A) image, got an array of shape {image.shape}"
        )
    if image.shape[-1] == 4:
        image = image[..., :3]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image


class RegionSource(Protocol):
    """What the tiled core reads images through: an :class:`ImageReader` or :class:`ArrayRegions`."""

    shape: tuple[int, int]
    dtype: np.dtype

    def read_region(self, y0: int, x0: int, height: int, width: int) -> np.ndarray: ...


class ArrayRegions:
    """An in-memory image ((H, W), (H, W, C) or (C, H, W)) as a :class:`RegionSource`."""

    def __init__(self, image: np.ndarray) -> None:
        image = np.asarray(image)
        if image.size == 0:
            raise DinosawError(f"the image is empty (shape {image.shape})")
        self.array = image if image.ndim == 2 else to_channels_last(image)
        self.shape = self.array.shape[:2]
        self.dtype = self.array.dtype

    def read_region(self, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        return self.array[y0 : y0 + height, x0 : x0 + width]


@dataclass(frozen=True)
class ImageInfo:
    """What the pipeline and every output record about a source image.

    height, width: pixels as read (after the optional info-bar crop).
    pixel_size: (y, x) in metres per pixel at this level, or None when the file does not say.
    vendor: ``fei`` / ``zeiss`` when vendor SEM metadata was found.
    databar_rows: rows cropped off the bottom (the FEI/Zeiss info bar), 0 if none.
    levels: (height, width) of every pyramid level of the selected series.
    """

    path: str
    height: int
    width: int
    channels: int
    dtype: str
    pixel_size: tuple[float, float] | None = None
    vendor: str | None = None
    databar_rows: int = 0
    page: int = 0
    level: int = 0
    levels: tuple[tuple[int, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ImageReader:
    """Region reader for one page/level of an image file; use :func:`open_image`."""

    def __init__(self, path: str | os.PathLike, *, page: int = 0, level: int = 0, crop_databar: bool = False):
        self.path = Path(path)
        require_file(self.path, "image")
        self._tif = None
        self.series_pages = 1
        try:
            self._open(page, level, crop_databar)
        except DinosawError:
            self.close()
            raise

    # -- opening ----------------------------------------------------------------------------
    def _open(self, page: int, level: int, crop_databar: bool) -> None:
        if self.path.suffix.lower() in TIFF_SUFFIXES:
            self._open_tiff(page, level)
        else:
            if page or level:
                raise DinosawError(f"{self.path.name}: --page/--level apply to TIFF files only")
            self._open_whole()
        height = self._full_height
        if crop_databar:
            if self._acquired_height is None:
                raise DinosawError(
                    f"{self.path.name}: --crop-databar needs FEI or Zeiss metadata giving the image height; none found"
                )
            height = min(height, self._acquired_height)
        self.info = ImageInfo(
            path=str(self.path),
            height=height,
            width=self._full_width,
            channels=self._channels,
            dtype=str(self.dtype),
            pixel_size=self._pixel_size,
            vendor=self._vendor,
            databar_rows=self._full_height - height,
            page=page,
            level=level,
            levels=self._levels,
        )
        if height < 1 or self._full_width < 1:
            raise DinosawError(f"{self.path.name}: the image is empty ({height}x{self._full_width} px)")

    def _open_whole(self) -> None:
        data = read_image(self.path)
        if data.ndim not in (2, 3):
            raise DinosawError(f"{self.path.name}: expected a 2D grayscale or 3D colour image, got shape {data.shape}")
        if channels_first(data.shape):
            data = np.moveaxis(data, 0, -1)
        self._data, self._axes, self._colormap = data, "YXS"[: data.ndim], None
        self._finish_layout(data.shape[0], data.shape[1], data.shape[2] if data.ndim == 3 else 1, data.dtype)
        self._pixel_size = self._vendor = self._acquired_height = None
        self._levels = ((data.shape[0], data.shape[1]),)

    def _open_tiff(self, page_index: int, level: int) -> None:
        import tifffile

        try:
            with quiet_logger("tifffile"):
                self._tif = tif = tifffile.TiffFile(self.path)
                if not len(tif.pages) or not tif.series:
                    raise DinosawError(f"cannot read image {self.path}: not a valid TIFF (no readable image in it)")
                page = self._select_page(tif, page_index, level)
                self._axes = page.axes
                self._colormap = page.colormap if page.photometric == 3 else None
                self._data = self._page_data(page)
                vendor, pixel_size, acquired = _vendor_metadata(tif, self._series)
        except DinosawError:
            raise
        except Exception as exc:  # tifffile/zarr/codec errors: the file is corrupt or unsupported
            raise DinosawError(f"cannot read image {self.path}: {type(exc).__name__}: {exc}") from None
        height, width = page.imagelength, page.imagewidth
        samples = page.samplesperpixel if self._colormap is None else 3
        dtype = page.dtype if self._colormap is None else self._colormap.dtype
        self._finish_layout(height, width, samples, dtype)
        scale = self._levels[0][0] / height if level and self._levels else 1.0
        pixel_size = _plausible(pixel_size, self.path)
        self._pixel_size = None if pixel_size is None else (pixel_size[0] * scale, pixel_size[1] * scale)
        self._vendor = vendor
        self._acquired_height = None if acquired is None or level else acquired

    def _select_page(self, tif, page_index: int, level: int):
        """Level 0: ``page_index`` counts every page (IFD) of the file, and the levels are those of the
        series holding that page. Level > 0: pages of the first series' pyramid level."""
        if level == 0:
            if not 0 <= page_index < len(tif.pages):
                raise DinosawError(f"{self.path.name}: page {page_index} does not exist (pages 0..{len(tif.pages) - 1})")
            series = next((s for s in tif.series if any(getattr(p, "index", None) == page_index for p in s.pages)),
                          None)
            page = tif.pages[page_index]
        else:
            series = tif.series[0]
            if not 0 <= level < len(series.levels):
                raise DinosawError(
                    f"{self.path.name}: level {level} does not exist (levels 0..{len(series.levels) - 1})"
                )
            pages = series.levels[level].pages
            if not 0 <= page_index < len(pages):
                raise DinosawError(f"{self.path.name}: page {page_index} does not exist (pages 0..{len(pages) - 1})")
            page = pages[page_index]
        page = page.aspage() if hasattr(page, "aspage") else page
        self._check_page(page)
        if series is None:  # a page outside every series (e.g. a thumbnail): one level, its own size
            self._levels = ((int(page.imagelength), int(page.imagewidth)),)
        else:
            self._levels = tuple((int(lv.shape[lv.axes.index("Y")]), int(lv.shape[lv.axes.index("X")]))
                                 for lv in series.levels if "Y" in lv.axes and "X" in lv.axes)
        self._series = 0 if series is None else tif.series.index(series)
        self.series_pages = 1 if series is None or level else len(series.pages)
        return page

    def _check_page(self, page) -> None:
        if 0 in page.shape:
            raise DinosawError(f"{self.path.name}: the image is empty ({page.shape})")
        extra = [ax for ax, n in zip(page.axes, page.shape) if ax not in "YXS" and n > 1]
        if extra or "Y" not in page.axes or "X" not in page.axes:
            raise DinosawError(f"{self.path.name}: unsupported page layout {page.axes} {page.shape}")
        if page.dtype is None:
            raise DinosawError(f"{self.path.name}: unsupported pixel format ({page.bitspersample}-bit "
                               f"sample format {page.sampleformat})")
        size = self.path.stat().st_size
        ends = np.asarray(page.dataoffsets, np.int64) + np.asarray(page.databytecounts, np.int64)
        if len(ends) == 0 or ends.max() > size:
            raise DinosawError(
                f"cannot read image {self.path}: truncated or corrupt (image data runs past the end of the file)"
            )
        chunk = page.nbytes // max(len(page.dataoffsets), 1)
        if page.compression != 1 and chunk > MAX_CHUNK_BYTES:
            raise DinosawError(
                f"{self.path.name}: compressed chunks of {chunk / 2**30:.1f} GiB cannot be read in bounded "
                "memory; re-save the file tiled (e.g. tifffile.imwrite(..., tile=(512, 512)))"
            )

    def _page_data(self, page):
        if page.is_memmappable:
            dtype = page.dtype.newbyteorder(self._tif.byteorder)
            return np.memmap(self.path, dtype=dtype, mode="r", offset=page.dataoffsets[0], shape=page.shape)
        import zarr

        return zarr.open(page.aszarr(), mode="r")

    def _finish_layout(self, height: int, width: int, samples: int, dtype) -> None:
        if samples not in (1, 3, 4):
            raise DinosawError(f"{self.path.name}: {samples} samples per pixel are not supported (1, 3 or 4)")
        self._full_height, self._full_width, self._channels = int(height), int(width), int(samples)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind not in "biuf":
            raise DinosawError(f"{self.path.name}: {self.dtype} pixels are not supported (integer or real float; "
                               "complex images: save the magnitude or the real part)")

    # -- reading ----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels, after the optional info-bar crop."""
        return self.info.height, self.info.width

    def read_region(self, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        """Pixels [y0:y0+height, x0:x0+width] in the file's dtype: (h, w) gray or (h, w, C) colour."""
        inside = 0 <= y0 and 0 <= x0 and y0 + height <= self.info.height and x0 + width <= self.info.width
        if not inside or height < 1 or width < 1:
            raise DinosawError(
                f"region ({y0}, {x0}, {height}, {width}) is outside the {self.info.height}x{self.info.width} image"
            )
        index = tuple(slice(y0, y0 + height) if ax == "Y" else slice(x0, x0 + width) if ax == "X"
                      else slice(None) if ax == "S" else 0 for ax in self._axes)
        try:
            region = np.asarray(self._data[index])
        except Exception as exc:  # decoding errors surface here for compressed files
            raise DinosawError(
                f"cannot decode image {self.path} at ({y0}, {x0}): {type(exc).__name__}: {exc}"
            ) from None
        kept = [ax for ax in self._axes if ax in "YXS"]
        if "S" in kept:
            region = np.moveaxis(region, kept.index("S"), -1)
            if region.shape[-1] == 1:
                region = region[..., 0]
        if self._colormap is not None:  # palette indices -> RGB (the TIFF colormap is 16-bit)
            region = np.moveaxis(np.take(self._colormap, region, axis=1), 0, -1)
        return np.ascontiguousarray(region)

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def __enter__(self) -> "ImageReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_image(path: str | os.PathLike, *, page: int = 0, level: int = 0, crop_databar: bool = False) -> ImageReader:
    """Open ``path`` for lazy region reads (``level`` 0 = full resolution of a pyramid)."""
    return ImageReader(path, page=page, level=level, crop_databar=crop_databar)


@dataclass(frozen=True)
class PageChoice:
    """Which image of a file to read: the TIFF page (or series), the pyramid level (0 = full resolution),
    and whether to crop an SEM databar."""

    page: int = 0
    level: int = 0
    crop_databar: bool = False

    def open(self, path: str | os.PathLike) -> ImageReader:
        return open_image(path, page=self.page, level=self.level, crop_databar=self.crop_databar)


def _vendor_metadata(tif, series: int = 0) -> tuple[str | None, tuple[float, float] | None, int | None]:
    """(vendor, (y, x) pixel size in metres, acquired image height) from FEI or Zeiss tags."""
    fei = tif.fei_metadata
    if fei:
        scan = fei.get("Scan") or fei.get("EScan") or {}
        size = None
        if _positive(scan.get("PixelWidth")):
            px = float(scan["PixelWidth"])
            size = (float(scan["PixelHeight"]) if _positive(scan.get("PixelHeight")) else px, px)
        acquired = (fei.get("Image") or {}).get("ResolutionY") or scan.get("ResolutionY")
        return "fei", size, int(acquired) if _positive(acquired) else None
    sem = tif.sem_metadata
    if sem:
        size = None
        for key in ("ap_image_pixel_size", "ap_pixel_size"):
            entry = sem.get(key)
            if isinstance(entry, tuple) and len(entry) == 3 and _positive(entry[1]):
                factor = _UNITS.get(str(entry[2]).replace("\xb5", "µ"))
                if factor:
                    size = (entry[1] * factor,) * 2
                    break
        acquired = None
        store = sem.get("dp_image_store")
        if isinstance(store, tuple) and len(store) >= 2 and "*" in str(store[1]):
            try:
                acquired = int(str(store[1]).split("*")[1])
            except ValueError:
                acquired = None
        return "zeiss", size, acquired
    return None, _ome_pixel_size(tif, series), None


def _ome_pixel_size(tif, series: int = 0) -> tuple[float, float] | None:
    """(y, x) metres per pixel from the OME-XML ``Pixels`` of image ``series`` (PhysicalSizeY/X, default
    unit µm), e.g. our own segmentation output; None when absent or malformed."""
    import xml.etree.ElementTree as ET

    if not tif.is_ome or not tif.ome_metadata:
        return None
    try:
        pixels = [e for e in ET.fromstring(tif.ome_metadata).iter() if e.tag.endswith("}Pixels")][series]
        size = []
        for axis in ("Y", "X"):
            value = float(pixels.attrib[f"PhysicalSize{axis}"])
            factor = _UNITS.get(pixels.attrib.get(f"PhysicalSize{axis}Unit", "µm"))
            if not factor or value <= 0:
                return None
            size.append(value * factor)
    except (ET.ParseError, IndexError, KeyError, ValueError):
        return None
    return size[0], size[1]


def _plausible(size: tuple[float, float] | None, path: Path) -> tuple[float, float] | None:
    """The pixel size, or None (with a warning) when it lies outside :data:`PLAUSIBLE_PIXEL_SIZE`."""
    lo, hi = PLAUSIBLE_PIXEL_SIZE
    if size is None or all(lo <= float(v) <= hi for v in size):
        return size
    log.warning("%s: ignoring the implausible pixel size %s m in its metadata (allowed %g..%g m); pixel size "
                "unknown", path.name, tuple(size), lo, hi)
    return None


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
