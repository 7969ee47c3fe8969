"""One global intensity mapping per image, fitted once from a sample and applied to every tile.

Per-tile scaling would give each tile its own contrast and make tile borders visible, so the range
(lo, hi) mapped to [0, 1] is fixed before tiling:

* ``intensity_range=(lo, hi)`` given: used as is.
* ``percentiles=(p_lo, p_hi)`` given: those percentiles of the sample (a contrast stretch).
* otherwise the rule ``normalize`` names (:data:`NORMALIZATIONS`):

  - ``dtype`` (the default): the whole-image rules of :mod:`dinosaw_deploy.engine.preprocess`, made
    global: integers use their dtype's range, floats already inside [0, 1] keep it, other floats use
    the sample's min/max. An image that fits in one sample gets exactly the whole-image path's features.
  - ``minmax``: the sample's min/max (a per-image stretch).
  - ``percentile``: its :data:`ROBUST_PERCENTILES` percentiles (a stretch robust to hot pixels).
  - ``zscore``: mean +- :data:`ZSCORE_STDS` standard deviations (mean -> 0.5, one std -> 1 / (2 * 3)).

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
NORMALIZATIONS = ("dtype", "minmax", "percentile", "zscore")
DEFAULT_NORMALIZE = "percentile"  # new models (a bundle without the setting keeps "dtype")
ROBUST_PERCENTILES = (0.5, 99.5)
ZSCORE_STDS = 3.0
HISTOGRAM_BINS = 64


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
    normalize: str = "dtype",
    seed: int = 0,
) -> tuple[float, float]:
    """The (lo, hi) that every tile maps to [0, 1] (see the module docstring for the rules)."""
    check_normalize(normalize)
    if intensity_range is not None:
        return check_range(intensity_range)
    if percentiles is None and normalize == "dtype" and (reader.dtype == np.bool_
                                                         or np.issubdtype(reader.dtype, np.integer)):
        return dtype_range(reader.dtype)
    values = sample_pixels(reader, seed=seed)
    if percentiles is None and normalize in ("minmax", "percentile", "zscore"):
        return normalized_range(values, normalize)
    return range_of_values(values, percentiles)


def check_normalize(normalize: str) -> str:
    """``normalize`` if it names a rule of :data:`NORMALIZATIONS`, else a DinosawError listing them."""
    if normalize not in NORMALIZATIONS:
        raise DinosawError(f"unknown intensity normalisation {normalize!r} (use {', '.join(NORMALIZATIONS)})")
    return normalize


def normalized_range(values: np.ndarray, normalize: str) -> tuple[float, float]:
    """The (lo, hi) of pixel ``values`` under the per-image rule ``normalize`` (minmax, percentile, zscore)."""
    if normalize == "percentile":
        return range_of_values(values, ROBUST_PERCENTILES)
    values = _checked(values).astype(np.float64, copy=False)
    if normalize == "zscore":
        mean, std = float(values.mean()), float(values.std())
        return _unflat(mean - ZSCORE_STDS * std, mean + ZSCORE_STDS * std)
    return _unflat(float(values.min()), float(values.max()))


def _checked(values: np.ndarray) -> np.ndarray:
    """``values`` if there are any and every one is a finite real number, else a DinosawError."""
    check_pixels(values)
    if values.size == 0:
        raise DinosawError("the image is empty")
    return values


def _unflat(lo: float, hi: float) -> tuple[float, float]:
    """(lo, hi), or (lo, lo + 1) for a flat sample (to float32 precision): its value maps to 0."""
    if not hi - lo >= float(np.finfo(np.float32).tiny):
        return lo, lo + 1.0
    return lo, hi


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
    _checked(values)
    if percentiles is not None:
        p_lo, p_hi = map(float, percentiles)
        if not 0.0 <= p_lo < p_hi <= 100.0:
            raise DinosawError(f"percentiles must satisfy 0 <= LO < HI <= 100, got ({p_lo}, {p_hi})")
        return _unflat(*percentiles_of(values, (p_lo, p_hi)))
    values = values.astype(np.float64, copy=False)
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    return _unflat(lo, hi)


def percentiles_of(values: np.ndarray, percentiles: tuple[float, ...]) -> tuple[float, ...]:
    """``np.percentile(values, percentiles)`` (linear interpolation), from a histogram for 8- and
    16-bit integers (a live frame's range in milliseconds instead of a sort)."""
    values = values.ravel()
    if values.dtype.kind not in "biu" or values.dtype.itemsize > 2:
        return tuple(float(v) for v in np.percentile(values.astype(np.float64, copy=False), percentiles))
    offset = 0 if values.dtype.kind in "bu" else -int(np.iinfo(values.dtype).min)
    cumulative = np.cumsum(np.bincount(values.astype(np.int64) + offset if offset else values))
    out = []
    for q in percentiles:
        rank = q / 100.0 * (values.size - 1)  # the k-th smallest value, as np.percentile's "linear"
        below, above = (int(np.searchsorted(cumulative, k, side="right")) - offset
                        for k in (np.floor(rank), np.ceil(rank)))
        out.append(below + (above - below) * (rank - np.floor(rank)))
    return tuple(float(v) for v in out)


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


def intensity_histogram(reader: RegionSource, intensity_range: tuple[float, float], *, seed: int = 0) -> np.ndarray:
    """(:data:`HISTOGRAM_BINS`,) float64 fractions of the pixel sample (:func:`sample_pixels`) over [0, 1]
    after mapping it with ``intensity_range``: what an image looks like to a model."""
    scaled = scale_intensity(sample_pixels(reader, seed=seed), intensity_range)
    counts = np.bincount(np.minimum((scaled * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1),
                         minlength=HISTOGRAM_BINS)
    return counts / max(int(counts.sum()), 1)


def histogram_shift(a: np.ndarray, b: np.ndarray) -> float:
    """Earth mover's distance between two histograms over [0, 1] (:func:`intensity_histogram`): how far,
    as a fraction of the range, the intensities must move on average to turn one into the other."""
    a, b = (np.asarray(h, np.float64) / max(float(np.sum(h)), 1e-12) for h in (a, b))
    return float(np.abs(np.cumsum(a) - np.cumsum(b)).sum() / len(a))
