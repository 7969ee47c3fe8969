"""Classical filter bank for trainable segmentation (Trainable Weka Segmentation style).

Channels of a grayscale float image (74 with the default config), in this order:

* for every σ in ``sigmas`` (σ = 0 is the raw image): Gaussian blur, gradient magnitude (Sobel),
  Hessian eigenvalues (larger, smaller), modulus ``sqrt(a² + b² + d²)``, trace, determinant — 7 each;
* difference of Gaussians ``G(σi) - G(σj)`` for every pair σi < σj of the non-zero σ — 10;
* membrane projections: line kernels of ``membrane_length`` px through the centre at
  ``membrane_angles`` angles over 180°, reduced over angle to mean, max, min, sum, std, median — 6;
* structure-tensor eigenvalues (larger, smaller) for every ρ in ``structure_scales``: the tensor of the
  gradient of the σ = 1 blur (central differences), each product smoothed by a Gaussian of σ = ρ — 10;
* local variance ``G(σ)(I²) - G(σ)(I)²`` for every σ in ``variance_sigmas`` — 6.

The last two groups (74 channels in all) are absent from bundles saved before they existed: their
config keys default to empty there, so old models keep their 58 channels.

Gaussians use the exact σ (no ``int(0.4 σ)`` truncation as in ISB's default), kernels cut at
``truncate`` σ like :func:`scipy.ndimage.gaussian_filter`, applied by FFT over a padded tile.
Borders are mirrored (``d c b a | a b c d``). Every output pixel depends only on input pixels
within :attr:`FilterBank.halo`, so a tile computed with that halo equals the whole-image result.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from itertools import combinations
from typing import Annotated, Protocol

import msgspec
import numpy as np
from msgspec import Meta
from msgspec.structs import force_setattr

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.box import Box

MEMBRANE_STATS = ("mean", "max", "min", "sum", "std", "median")
SCALE_FEATURES = ("gaussian", "gradient", "hessian_eig1", "hessian_eig2", "hessian_mod", "hessian_trace",
                  "hessian_det")
DERIVATIVE_MARGIN = 2  # px beyond a blurred tile needed by the Sobel / Hessian differences
STRUCTURE_SIGMA = 1.0  # the blur whose gradient makes the structure tensor
MEMBRANE_ROWS = 32  # rows of line-kernel responses computed and reduced at a time


class GraySource(Protocol):
    """A 2D grayscale image that can be sliced lazily: numpy arrays, zarr arrays, region readers."""

    shape: tuple[int, ...]

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray: ...


MAX_SIGMAS, MAX_SIGMA, MAX_TRUNCATE = 16, 64.0, 8.0
MAX_MEMBRANE_LENGTH, MAX_MEMBRANE_ANGLES = 255, 180
Sigma = Annotated[float, Meta(ge=0, le=MAX_SIGMA)]
PositiveSigma = Annotated[float, Meta(gt=0, le=MAX_SIGMA)]


class FilterBankConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the filter bank computes; stored in model bundles, whose values are bounded by these types."""

    sigmas: Annotated[tuple[Sigma, ...], Meta(min_length=1, max_length=MAX_SIGMAS)] = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
    truncate: Annotated[float, Meta(gt=0, le=MAX_TRUNCATE)] = 4.0
    membrane_length: Annotated[int, Meta(ge=1, le=MAX_MEMBRANE_LENGTH)] = 15
    membrane_angles: Annotated[int, Meta(ge=1, le=MAX_MEMBRANE_ANGLES)] = 30
    # absent in bundles from before these groups existed: empty there, so old models keep their 58 channels
    structure_scales: Annotated[tuple[PositiveSigma, ...], Meta(max_length=MAX_SIGMAS)] = (1.0, 2.0, 4.0, 8.0, 16.0)
    variance_sigmas: Annotated[tuple[PositiveSigma, ...], Meta(max_length=MAX_SIGMAS)] = (
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0)

    def __post_init__(self) -> None:
        sigmas = tuple(float(s) for s in self.sigmas)
        if not sigmas or any(s < 0 for s in sigmas) or len(set(sigmas)) != len(sigmas):
            raise DinosawError(f"filter sigmas must be distinct and >= 0, got {self.sigmas}")
        for name in ("structure_scales", "variance_sigmas"):
            values = tuple(float(v) for v in getattr(self, name))
            if any(v <= 0 for v in values) or len(set(values)) != len(values):
                raise DinosawError(f"filter {name} must be distinct and > 0, got {getattr(self, name)}")
            force_setattr(self, name, tuple(sorted(values)))
        if self.truncate <= 0:
            raise DinosawError(f"filter truncate must be > 0, got {self.truncate}")
        if self.membrane_length < 1 or self.membrane_length % 2 == 0 or self.membrane_angles < 1:
            raise DinosawError("membrane_length must be odd and >= 1, membrane_angles >= 1")
        force_setattr(self, "sigmas", tuple(sorted(sigmas)))


def gaussian_radius(sigma: float, truncate: float) -> int:
    """Kernel radius, as :func:`scipy.ndimage.gaussian_filter` chooses it."""
    return int(truncate * sigma + 0.5)


def _gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    radius = gaussian_radius(sigma, truncate)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


@lru_cache(maxsize=32)  # 4 tile shapes x 7 σ (and ρ); each entry is ~2.4 MB for a 512-px tile
def _transfer(sigma: float, truncate: float, shape: tuple[int, int]) -> np.ndarray:
    """rfft2 of the separable truncated Gaussian, centred at (0, 0), for circular convolution."""
    import scipy.fft

    kernel = _gaussian_kernel(sigma, truncate)
    radius = len(kernel) // 2

    def wrapped(n: int) -> np.ndarray:
        line = np.zeros(n)
        line[: radius + 1] = kernel[radius:]
        if radius:
            line[-radius:] = kernel[:radius]
        return line

    ky = scipy.fft.fft(wrapped(shape[0]))
    kx = scipy.fft.rfft(wrapped(shape[1]))
    return np.outer(ky, kx).astype(np.complex64)


@lru_cache(maxsize=8)
def membrane_taps(length: int, angles: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """(dy, dx) of each of the ``length`` samples of a centred line, per angle (k · 180° / angles).

    Each line is sampled at unit steps and rounded to the nearest pixel, so every angle has the same
    total weight (a pixel hit twice counts twice)."""
    half = length // 2
    steps = np.arange(-half, half + 1)
    taps = []
    for k in range(angles):
        theta = np.pi * k / angles
        dy = np.rint(steps * np.cos(theta)).astype(int)
        dx = np.rint(steps * np.sin(theta)).astype(int)
        taps.append(tuple(zip(dy.tolist(), dx.tolist())))
    return tuple(taps)


def mirror_indices(start: int, stop: int, size: int) -> np.ndarray:
    """Indices ``start..stop-1`` folded into ``[0, size)`` by symmetric reflection (any distance)."""
    idx = np.mod(np.arange(start, stop), 2 * size)
    return np.where(idx >= size, 2 * size - 1 - idx, idx)


def padded_region(source: GraySource, box: Box, halo: int) -> np.ndarray:
    """``source[y0-halo:y1+halo, x0-halo:x1+halo]`` as float32, mirrored where it leaves the image."""
    y0, y1, x0, x1 = box
    height, width = source.shape[:2]
    rows = mirror_indices(y0 - halo, y1 + halo, height)
    cols = mirror_indices(x0 - halo, x1 + halo, width)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    block = np.asarray(source[r0:r1, c0:c1], dtype=np.float32)
    if (r0, r1 - r0, c0, c1 - c0) == (y0 - halo, len(rows), x0 - halo, len(cols)):
        return np.ascontiguousarray(block)
    return block[np.ix_(rows - r0, cols - c0)]


class FilterBank:
    """Computes the classical feature stack; see the module docstring for the channels.

    >>> bank = FilterBank()
    >>> feats = bank(gray)                      # (74, H, W) float32, whole image
    >>> tile = bank.region(gray, (0, 512, 0, 512))  # same values as feats[:, :512, :512]
    """

    def __init__(self, config: FilterBankConfig | None = None) -> None:
        self.config = config or FilterBankConfig()
        cfg = self.config
        self.blur_sigmas = tuple(s for s in cfg.sigmas if s > 0)
        largest = max((gaussian_radius(s, cfg.truncate) for s in self.blur_sigmas + cfg.variance_sigmas), default=0)
        structure = 0
        if cfg.structure_scales:  # smoothing radius + 1 px central difference + the gradient's blur
            structure = (gaussian_radius(max(cfg.structure_scales), cfg.truncate) + 1
                         + gaussian_radius(STRUCTURE_SIGMA, cfg.truncate))
        self.halo = max(largest + DERIVATIVE_MARGIN, cfg.membrane_length // 2, structure)
        blurs = max((gaussian_radius(s, cfg.truncate) for s in self.blur_sigmas), default=0) + DERIVATIVE_MARGIN
        # the margin the blurs and the structure tensor need: their FFTs run on a tile padded by this much only,
        # and only a local variance of a larger σ on the whole padded tile (with the default bank: 650² vs 772²)
        self.near_halo = min(self.halo, max(blurs, structure))
        self.names = tuple(
            [f"{feature}_s{sigma:g}" for sigma in cfg.sigmas for feature in SCALE_FEATURES]
            + [f"dog_s{a:g}_s{b:g}" for a, b in combinations(self.blur_sigmas, 2)]
            + [f"membrane_{stat}" for stat in MEMBRANE_STATS]
            + [f"structure_{e}_r{rho:g}" for rho in cfg.structure_scales for e in ("l1", "l2")]
            + [f"variance_s{sigma:g}" for sigma in cfg.variance_sigmas]
        )

    @property
    def num_channels(self) -> int:
        return len(self.names)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Features of a whole 2D grayscale image: (C, H, W) float32."""
        image = np.asarray(image)
        if image.ndim != 2:
            raise DinosawError(f"the filter bank needs a 2D grayscale image, got shape {image.shape}")
        return self.region(image, (0, image.shape[0], 0, image.shape[1]))

    def region(self, source: GraySource, box: Box) -> np.ndarray:
        """Features of ``box`` = (y0, y1, x0, x1) of ``source``: (C, y1-y0, x1-x0) float32."""
        return self.compute(padded_region(source, box, self.halo))

    def compute(self, padded: np.ndarray) -> np.ndarray:
        """Features of the interior of a tile padded by :attr:`halo` on every side."""

        padded = np.ascontiguousarray(padded, dtype=np.float32)
        halo, cfg = self.halo, self.config
        h, w = padded.shape[0] - 2 * halo, padded.shape[1] - 2 * halo
        if h < 1 or w < 1:
            raise DinosawError(f"tile {padded.shape} is smaller than twice the halo ({halo} px)")
        out = np.empty((self.num_channels, h, w), dtype=np.float32)
        m, near = DERIVATIVE_MARGIN, self.near_halo
        crops = _Crops(padded, halo, h, w)
        blurred: dict[float, np.ndarray] = {}
        for i, sigma in enumerate(cfg.sigmas):
            if sigma == 0:
                smooth = padded[halo - m : halo + h + m, halo - m : halo + w + m]
            else:
                smooth = crops.blur(near, sigma, cfg.truncate, m)
                blurred[sigma] = out[i * 7]
            _scale_features(smooth, out[i * 7 : i * 7 + 7])
        channel = 7 * len(cfg.sigmas)
        for a, b in combinations(self.blur_sigmas, 2):
            np.subtract(blurred[a], blurred[b], out=out[channel])
            channel += 1
        r = cfg.membrane_length // 2
        raw = padded[halo - r : halo + h + r, halo - r : halo + w + r]
        _membrane(raw, membrane_taps(cfg.membrane_length, cfg.membrane_angles), out[channel : channel + 6])
        channel += len(MEMBRANE_STATS)
        if cfg.structure_scales:
            self._structure(crops, near, out[channel : channel + 2 * len(cfg.structure_scales)])
            channel += 2 * len(cfg.structure_scales)
        for sigma in cfg.variance_sigmas:
            margin = near if gaussian_radius(sigma, cfg.truncate) <= near else halo
            mean = blurred.get(sigma)
            if mean is None:
                mean = crops.blur(margin, sigma, cfg.truncate)
            square = crops.blur(margin, sigma, cfg.truncate, squares=True)
            np.maximum(square - mean * mean, 0, out=out[channel])
            channel += 1
        return out

    def _structure(self, crops: _Crops, margin: int, out: np.ndarray) -> None:
        """Structure-tensor eigenvalues (larger, smaller) per ρ into ``out`` (2 per ρ, interior only), on the
        tile padded by ``margin``."""
        import scipy.fft

        cfg = self.config
        h, w = out.shape[1:]
        spectrum, fast, shape = crops.spectrum(margin)
        smooth = scipy.fft.irfft2(spectrum * _transfer(STRUCTURE_SIGMA, cfg.truncate, fast), s=fast)
        smooth = smooth[: shape[0], : shape[1]]
        gy = (smooth[2:, 1:-1] - smooth[:-2, 1:-1]) / 2  # padded pixel (i+1, j+1) at (i, j)
        gx = (smooth[1:-1, 2:] - smooth[1:-1, :-2]) / 2
        products = [scipy.fft.rfft2(p, s=fast) for p in (gy * gy, gy * gx, gx * gx)]
        interior = (slice(margin - 1, margin - 1 + h), slice(margin - 1, margin - 1 + w))
        for i, rho in enumerate(cfg.structure_scales):
            transfer = _transfer(rho, cfg.truncate, fast)
            a, b, d = (scipy.fft.irfft2(p * transfer, s=fast)[interior] for p in products)
            trace, root = a + d, np.sqrt((a - d) ** 2 + 4 * b * b)
            np.multiply(trace + root, 0.5, out=out[2 * i])
            np.multiply(trace - root, 0.5, out=out[2 * i + 1])


class _Crops:
    """The spectra of a padded tile cropped to smaller margins, each computed once per tile."""

    def __init__(self, padded: np.ndarray, halo: int, h: int, w: int) -> None:
        self.padded, self.halo, self.h, self.w = padded, halo, h, w
        self._spectra: dict[tuple[int, bool], tuple[np.ndarray, tuple[int, int], tuple[int, int]]] = {}

    def spectrum(self, margin: int, squares: bool = False) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """(rfft2 at a fast size, that size, the crop's shape) of the tile padded by ``margin`` (of its
        squared values with ``squares``)."""
        import scipy.fft

        key = (margin, squares)
        if key not in self._spectra:
            cut = self.halo - margin
            crop = self.padded[cut : cut + self.h + 2 * margin, cut : cut + self.w + 2 * margin]
            fast = (scipy.fft.next_fast_len(crop.shape[0]), scipy.fft.next_fast_len(crop.shape[1], real=True))
            self._spectra[key] = (scipy.fft.rfft2(crop * crop if squares else crop, s=fast), fast, crop.shape)
        return self._spectra[key]

    def blur(self, margin: int, sigma: float, truncate: float, keep: int = 0, squares: bool = False) -> np.ndarray:
        """The Gaussian blur of the tile (of its squares) on the interior plus ``keep`` px, computed on the
        tile padded by ``margin`` (>= the kernel radius + ``keep``)."""
        import scipy.fft

        spectrum, fast, _ = self.spectrum(margin, squares)
        blurred = scipy.fft.irfft2(spectrum * _transfer(sigma, truncate, fast), s=fast)
        return blurred[margin - keep : margin + self.h + keep, margin - keep : margin + self.w + keep]


def _scale_features(smooth: np.ndarray, out: np.ndarray) -> None:
    """The 7 per-σ channels of the blurred tile ``smooth`` (interior + 2 px margin) into ``out``.

    Written with ``out=`` buffers (10-18 % faster than the plain expressions, with the same operations
    in the same order, so the same bits)."""
    s = smooth
    h, w = s.shape[0] - 4, s.shape[1] - 4
    out[0] = s[2:-2, 2:-2]
    # Sobel: central difference along one axis, (d[-1] + 2 d[0] + d[1]) / 8 along the other
    sy = np.subtract(s[3:-1], s[1:-3])
    sx = np.subtract(s[:, 3:-1], s[:, 1:-3])
    gy, gx = np.multiply(sy[:, 2:-2], 2), np.multiply(sx[2:-2], 2)
    for g, lo, hi in ((gy, sy[:, 1:-3], sy[:, 3:-1]), (gx, sx[1:-3], sx[3:-1])):
        np.add(lo, g, out=g)
        np.add(g, hi, out=g)
        np.divide(g, 8, out=g)
        np.multiply(g, g, out=g)
    np.sqrt(np.add(gy, gx, out=gy), out=out[1])
    # Hessian from central differences of central differences (numpy.gradient in the interior)
    cy = np.divide(np.subtract(s[2:], s[:-2]), 2)  # rows 1..h+2 of s
    cx = np.divide(np.subtract(s[:, 2:], s[:, :-2]), 2)
    a = np.divide(np.subtract(cy[2:, 2:-2], cy[:-2, 2:-2]), 2)  # d²/dy²
    d = np.divide(np.subtract(cx[2:-2, 2:], cx[2:-2, :-2]), 2)  # d²/dx²
    b = np.divide(np.subtract(cy[1 : h + 1, 3 : w + 3], cy[1 : h + 1, 1 : w + 1]), 2)  # d²/dydx
    trace = np.add(a, d, out=out[5])
    bb = np.multiply(b, b)
    root = np.subtract(a, d)
    np.multiply(root, root, out=root)
    squares = np.multiply(bb, 4)  # 4 * b * b, exactly
    np.sqrt(np.add(root, squares, out=root), out=root)
    np.multiply(np.add(trace, root, out=out[2]), 0.5, out=out[2])
    np.multiply(np.subtract(trace, root, out=out[3]), 0.5, out=out[3])
    np.add(np.multiply(a, a, out=squares), bb, out=squares)
    np.sqrt(np.add(squares, np.multiply(d, d, out=root), out=squares), out=out[4])
    np.subtract(np.multiply(a, d, out=out[6]), bb, out=out[6])


def _membrane(raw: np.ndarray, taps: Sequence[Sequence[tuple[int, int]]], out: np.ndarray) -> None:
    """Line-kernel responses per angle, reduced over angle into ``out`` (6, h, w).

    The tile is flattened so that every shifted view is one contiguous slice (rows carry ``2r``
    junk columns that are dropped at the end); the responses of :data:`MEMBRANE_ROWS` rows at a time stay
    in the CPU cache while they are reduced (twice as fast as all rows at once, and 1/16 of the memory)."""
    r = (raw.shape[0] - out.shape[1]) // 2
    h, w = out.shape[1:]
    stride = w + 2 * r
    flat = np.zeros(raw.size + 2 * r, dtype=np.float32)
    flat[: raw.size] = raw.ravel()
    count, half = len(taps), len(taps) // 2
    offsets = [[(r + dy) * stride + r + dx for dy, dx in angle] for angle in taps]
    responses = np.empty((count, MEMBRANE_ROWS * stride), dtype=np.float32)
    scratch = np.empty(MEMBRANE_ROWS * stride, dtype=np.float32)
    stats = np.empty((len(MEMBRANE_STATS), h * stride), dtype=np.float32)
    for y in range(0, h, MEMBRANE_ROWS):
        n, base = min(MEMBRANE_ROWS, h - y) * stride, y * stride
        block = responses[:, :n]
        for row, angle in zip(block, offsets):
            np.copyto(row, flat[base + angle[0] : base + angle[0] + n])
            for off in angle[1:]:
                np.add(row, flat[base + off : base + off + n], out=row)
        mean, high, low, total, std, median = (s[base : base + n] for s in stats)
        np.sum(block, axis=0, out=total)
        np.divide(total, count, out=mean)
        np.max(block, axis=0, out=high)
        np.min(block, axis=0, out=low)
        std[:] = 0
        part = scratch[:n]
        for row in block:
            np.subtract(row, mean, out=part)
            np.multiply(part, part, out=part)
            np.add(std, part, out=std)
        np.sqrt(std / count, out=std)
        ordered = np.ascontiguousarray(block.T)  # median: sort each pixel's responses
        ordered.sort(axis=1)
        median[:] = ordered[:, half] if count % 2 else (ordered[:, half - 1] + ordered[:, half]) / 2
    out[:] = stats.reshape(len(MEMBRANE_STATS), h, stride)[:, :, :w]
