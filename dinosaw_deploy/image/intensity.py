"""One global intensity mapping per image, fitted once from a sample and applied to every tile.

Per-tile scaling would give each tile its own contrast and make tile borders visible, so the range
(lo, hi) mapped to [0, 1] is fixed before tiling:

* ``intensity_range=(lo, hi)`` given: used as is.
* ``percentiles=(p_lo, p_hi)`` given: those percentiles of the sample (a contrast stretch).
* otherwise the whole-image rules of :mod:`dinosaw_deploy.engine.preprocess`, made global: integers use
  their dtype's range, floats already inside [0, 1] keep it, other floats use the sample's min/max.
  An image that fits in one sample therefore gets exactly the features of the whole-image path.

The sample is the whole image up to :data:`WHOLE_IMAGE_PIXELS`, else :data:`WINDOWS` random windows of
:data:`WINDOW` px (seeded, so reruns and resumed runs fit the same range). ``reader`` is an
:class:`~dinosaw_deploy.image.reader.RegionSource` or anything with ``shape``, ``dtype`` and ``read_region``.
"""
from __future__ import annotations

import numpy as np

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.reader import RegionSource

WHOLE_IMAGE_PIXELS = 16 * 2**20
WINDOWS = 64
WINDOW = 256


def sample_pixels(reader: RegionSource, *, seed: int = 0) -> np.ndarray:
    """A deterministic pixel sample (1D, the file's dtype): the whole image or random windows."""
    height, width = reader.shape
    if height * width <= WHOLE_IMAGE_PIXELS:
        return reader.read_region(0, 0, height, width).ravel()
    rng = np.random.default_rng(seed)
    wy, wx = min(WINDOW, height), min(WINDOW, width)
    ys = rng.integers(0, height - wy + 1, WINDOWS)
    xs = rng.integers(0, width - wx + 1, WINDOWS)
    return np.concatenate([reader.read_region(int(y), int(x), wy, wx).ravel() for y, x in zip(ys, xs)])


def fit_intensity_range(
    reader: RegionSource,
    *,
    intensity_range: tuple[float, float] | None = None,
    percentiles: tuple[float, float] | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """The (lo, hi) that every tile maps to [0, 1] (see the module docstring for the rules)."""
    if intensity_range is not None:
        return check_range(intensity_range)
    if percentiles is None and (reader.dtype == np.bool_ or np.issubdtype(reader.dtype, np.integer)):
        return dtype_range(reader.dtype)
    return range_of_values(sample_pixels(reader, seed=seed), percentiles)


def check_range(intensity_range: tuple[float, float]) -> tuple[float, float]:
    """(lo, hi) as floats if usable: finite float32 values with hi - lo a normal positive float32
    (a subnormal or zero width would divide by zero); else a DinosawError saying what is allowed."""
    try:
        lo, hi = map(float, intensity_range)
    except (TypeError, ValueError):
        raise DinosawError(f"intensity range must be two numbers, got {intensity_range!r}") from None
    limit = float(np.finfo(np.float32).max)
    if not (np.isfinite(lo) and np.isfinite(hi) and abs(lo) <= limit and abs(hi) <= limit):
        raise DinosawError(f"intensity range must be finite numbers within +-{limit:.3g}, got ({lo}, {hi})")
    if not hi - lo >= float(np.finfo(np.float32).tiny):
        raise DinosawError(f"intensity range must have hi > lo by at least {np.finfo(np.float32).tiny:.3g} "
                           f"(a normal float), got ({lo}, {hi})")
    return lo, hi


def check_pixels(image: np.ndarray) -> None:
    """Refuse complex, non-numeric, NaN or infinite pixels (floats are checked value by value)."""
    if np.iscomplexobj(image) or not (image.dtype == np.bool_ or np.issubdtype(image.dtype, np.number)):
        raise DinosawError(f"unsupported pixel type {image.dtype} (use integer or real floating-point pixels)")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise DinosawError("the image contains NaN or infinite values")


def dtype_range(dtype: np.dtype) -> tuple[float, float]:
    """The range an integer (or bool) dtype maps to [0, 1]: [0, max] unsigned, [min, max] signed."""
    if dtype == np.bool_:
        return 0.0, 1.0
    info = np.iinfo(dtype)
    return (float(info.min), float(info.max)) if info.min < 0 else (0.0, float(info.max))


def range_of_values(values: np.ndarray, percentiles: tuple[float, float] | None = None) -> tuple[float, float]:
    """The range fitted to pixel values: their percentiles, else [0, 1] when they lie inside it,
    else their min/max; a flat sample maps its value to 0 with unit scale."""
    check_pixels(values)
    if values.size == 0:
        raise DinosawError("the image is empty")
    values = values.astype(np.float64, copy=False)
    if percentiles is not None:
        p_lo, p_hi = map(float, percentiles)
        if not 0.0 <= p_lo < p_hi <= 100.0:
            raise DinosawError(f"percentiles must satisfy 0 <= LO < HI <= 100, got ({p_lo}, {p_hi})")
        lo, hi = (float(v) for v in np.percentile(values, (p_lo, p_hi)))
    else:
        lo, hi = float(values.min()), float(values.max())
        if lo >= 0.0 and hi <= 1.0:
            return 0.0, 1.0
    if not hi - lo >= float(np.finfo(np.float32).tiny):  # flat (to float32 precision)
        return lo, lo + 1.0
    return lo, hi


def scale_intensity(image: np.ndarray, intensity_range: tuple[float, float] | None = None) -> np.ndarray:
    """Map intensities to float32 [0, 1]: ``intensity_range`` (lo, hi) linearly, clipped; None =
    the image's own range by the rules above (the whole image is the sample). Every pixel is checked:
    NaN, infinite or complex pixels anywhere in ``image`` (e.g. one tile of a scan) are refused."""
    image = np.asarray(image)
    if image.size == 0:
        raise DinosawError("the image is empty")
    check_pixels(image)
    if intensity_range is None:
        if image.dtype == np.bool_ or np.issubdtype(image.dtype, np.integer):
            intensity_range = dtype_range(image.dtype)
        else:
            intensity_range = range_of_values(image)
    lo, hi = check_range(intensity_range)
    return np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
