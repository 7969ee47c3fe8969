"""Positional-bias probes (method.md §4, paper Sec. 3.1) and the cyclic-shift equivariance check.

The probe asks how well a linear model predicts a token's position from its feature vector:
per image, sample ``(h·w) // 36`` tokens, fit a StandardScaler and a Ridge(alpha=1) on them,
score R² on *all* tokens; the paper's number averages the x and y ramps and is repeated 6
times per image. Besides x (left-right) and y (up-down) we score a diagonal and a radial ramp,
and one-channel probes that rank the most positional channels.

Features are any (C, h, w) array that can be sliced (numpy, memmap, zarr), so a
stitched gigapixel store is read twice, chunk by chunk, and never held whole. Ramps are functions
of token coordinates: :func:`global_positions` for the paper's probe, or a tile-local map for
stitched features (position inside the engine tile).

The arithmetic is the closed form of scikit-learn's ``StandardScaler`` + ``Ridge(alpha)``
(population std, unit scale for constant channels, intercept fitted); the tests check it
against scikit-learn itself.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dinosaw_deploy.errors import DinosawError

if TYPE_CHECKING:
    from dinosaw_deploy.tiling.grid import TileGrid

RAMPS = ("x", "y", "diagonal", "radial")
RAMP_TITLES = {"x": "left-right", "y": "up-down", "diagonal": "diagonal", "radial": "radial"}
SAMPLE_DIVISOR = 36
REPEATS = 6
ALPHA = 1.0
BLOCK_TOKENS = 16384  # about this many tokens are read at a time from a feature array

# (rows, cols) token coordinates -> (u, v), the x and y position in [0, 1] the ramps are built from.
Positions = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def ramp_targets(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Normalised positions u (x), v (y) in [0, 1] -> targets (n, 4): x, y, diagonal, radial."""
    radial = np.hypot(u - 0.5, v - 0.5) / np.sqrt(0.5)
    return np.stack([u, v, (u + v) / 2, radial], axis=-1).astype(np.float64)


def global_positions(h: int, w: int) -> Positions:
    """The paper's ramps: x = linspace(0, 1, w), y = linspace(0, 1, h) over the whole grid."""

    def positions(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return cols / max(w - 1, 1), rows / max(h - 1, 1)

    return positions


def tile_local_positions(grid: TileGrid) -> Positions:
    """Ramps inside the engine tile, for features stitched on a :class:`~dinosaw_deploy.tiling.grid.TileGrid`:
    a token's position within the tile that owns it (the ownership cuts; with a blending window,
    the tile that weighs most), 0 at the tile's first patch, 1 at its last."""

    def axis(p: np.ndarray, origins, cuts, size: int) -> np.ndarray:
        owner = np.searchsorted(np.asarray(cuts, dtype=np.float64), p, side="right")
        return (p - np.asarray(origins, dtype=np.float64)[owner]) / max(size - 1, 1)

    def positions(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (
            axis(cols, grid.origins_x, grid.cuts_x, grid.tile_w),
            axis(rows, grid.origins_y, grid.cuts_y, grid.tile_h),
        )

    return positions


@dataclass
class ProbeResult:
    """One feature map probed ``repeats`` times.

    r2: (repeats, 4) R² of the all-channel probe per ramp (order :data:`RAMPS`).
    channel_r2: (repeats, C, 4) R² of each one-channel probe.
    weights, offsets: (repeats, C, 4) and (repeats, 4), each repeat's fitted scaler + ridge folded
        into one affine map of the raw features (prediction = x @ weights + offsets).
    sample_size: tokens each repeat was fitted on.
    """

    r2: np.ndarray
    channel_r2: np.ndarray
    weights: np.ndarray
    offsets: np.ndarray
    sample_size: int

    @property
    def xy(self) -> np.ndarray:
        """The paper's number per repeat: mean of the x and y R²."""
        return self.r2[:, :2].mean(axis=1)

    @property
    def channel_xy(self) -> np.ndarray:
        """(repeats, C) one-channel R², mean of x and y."""
        return self.channel_r2[..., :2].mean(axis=-1)


def _check_features(features) -> tuple[int, int, int]:
    shape = tuple(getattr(features, "shape", ()))
    if len(shape) != 3:
        raise DinosawError(f"features must be (C, h, w), got shape {shape}")
    channels, h, w = (int(s) for s in shape)
    if channels < 1 or h < 2 or w < 2:
        raise DinosawError(f"features of shape {shape} are too small to probe (need C >= 1, h, w >= 2)")
    if h * w // SAMPLE_DIVISOR < 2:
        raise DinosawError(
            f"a {h}x{w} grid has too few tokens to probe: the probe samples (h*w)//{SAMPLE_DIVISOR} tokens "
            f"and needs at least 2 (e.g. a 126x126 px image)"
        )
    return channels, h, w


def _block_shape(features, h: int, w: int, block_tokens: int) -> tuple[int, int]:
    """Rows x columns read at a time: whole chunks of a chunked store (zarr), row bands otherwise."""
    chunks = getattr(features, "chunks", None)
    if chunks is None or len(chunks) != 3:
        return min(h, max(1, block_tokens // w)), w
    ch, cw = int(chunks[1]), int(chunks[2])
    m = max(1, int(np.sqrt(block_tokens / (ch * cw))))
    return min(h, ch * m), min(w, cw * m)


def _blocks(features, h: int, w: int, block_tokens: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first row, first column, float64 (C, rows, cols)) blocks covering the map, all finite."""
    bh, bw = _block_shape(features, h, w, block_tokens)
    for r0 in range(0, h, bh):
        for c0 in range(0, w, bw):
            block = np.asarray(features[:, r0 : r0 + bh, c0 : c0 + bw], dtype=np.float64)
            if not np.isfinite(block).all():
                raise DinosawError(f"features contain NaN or infinite values (near token row {r0}, column {c0})")
            yield r0, c0, block


def _targets(positions: Positions, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    u, v = positions(rows.astype(np.float64), cols.astype(np.float64))
    return ramp_targets(np.asarray(u, np.float64), np.asarray(v, np.float64))


def _gather(features, h: int, w: int, flat: np.ndarray, block_tokens: int) -> np.ndarray:
    """Feature vectors (n, C) at the flat (row-major) token indices ``flat``, read block by block."""
    bh, bw = _block_shape(features, h, w, block_tokens)
    blocks_per_row = -(-w // bw)
    rows, cols = np.divmod(flat, w)
    key = (rows // bh) * blocks_per_row + cols // bw
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    out = np.empty((len(flat), int(features.shape[0])), dtype=np.float32)  # features are float32 or less
    for r0, c0, block in _blocks(features, h, w, block_tokens):
        k = (r0 // bh) * blocks_per_row + c0 // bw
        lo, hi = np.searchsorted(key_sorted, [k, k + 1])
        idx = order[lo:hi]
        out[idx] = block[:, rows[idx] - r0, cols[idx] - c0].T
    return out


def fit_probes(
    sample: np.ndarray, targets: np.ndarray, alpha: float = ALPHA
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """StandardScaler + Ridge(alpha) on ``sample`` (n, C) -> ``targets`` (n, k), as affine maps of
    the raw features: the all-channel probe (weights (C, k), offset (k,)) and the C one-channel
    probes (weights (C, k), offsets (C, k))."""
    mean = sample.mean(axis=0)
    scale = sample.std(axis=0)
    scale[scale == 0] = 1.0
    z = (sample - mean) / scale
    zc = z - z.mean(axis=0)  # ~0 after scaling; kept so the formula is Ridge's own
    tc = targets - targets.mean(axis=0)
    cross = zc.T @ tc
    beta = np.linalg.solve(zc.T @ zc + alpha * np.eye(z.shape[1]), cross)
    intercept = targets.mean(axis=0) - z.mean(axis=0) @ beta
    beta_ch = cross / ((zc**2).sum(axis=0) + alpha)[:, None]
    intercept_ch = targets.mean(axis=0)[None, :] - z.mean(axis=0)[:, None] * beta_ch
    # fold the scaler in: prediction = ((x - mean) / scale) @ beta + intercept
    weights = beta / scale[:, None]
    weights_ch = beta_ch / scale[:, None]
    return (
        weights,
        intercept - (mean / scale) @ beta,
        weights_ch,
        intercept_ch - (mean / scale)[:, None] * beta_ch,
    )


def probe_features(
    features: Any,
    *,
    rng: np.random.Generator,
    repeats: int = REPEATS,
    alpha: float = ALPHA,
    positions: Positions | None = None,
    max_sample: int | None = None,
    block_tokens: int = BLOCK_TOKENS,
) -> ProbeResult:
    """Probe one (C, h, w) feature map ``repeats`` times (method.md §4).

    ``positions`` maps token coordinates to the [0, 1] positions the ramps are built from
    (default: the paper's global ramps). ``max_sample`` caps the fit sample for huge stitched
    maps (the paper's ``(h·w) // 36`` otherwise).
    """
    channels, h, w = _check_features(features)
    positions = positions or global_positions(h, w)
    n_tokens = h * w
    n_sample = n_tokens // SAMPLE_DIVISOR
    if max_sample is not None:
        n_sample = max(2, min(n_sample, int(max_sample)))
    picks = [np.sort(rng.choice(n_tokens, size=n_sample, replace=False)) for _ in range(repeats)]
    union, inverse = np.unique(np.concatenate(picks), return_inverse=True)
    gathered = _gather(features, h, w, union, block_tokens)

    k = len(RAMPS)
    weights = np.empty((repeats, channels, k))
    offsets = np.empty((repeats, k))
    weights_ch = np.empty((repeats, channels, k))
    offsets_ch = np.empty((repeats, channels, k))
    for r in range(repeats):
        members = inverse[r * n_sample : (r + 1) * n_sample]
        weights[r], offsets[r], weights_ch[r], offsets_ch[r] = fit_probes(
            gathered[members].astype(np.float64), _targets(positions, *np.divmod(picks[r], w)), alpha
        )

    # One streaming pass over all tokens: the all-channel residuals directly, the one-channel
    # residuals from sufficient statistics (sum x, sum x², sum x·t, sum t, sum t²).
    stacked = weights.transpose(1, 0, 2).reshape(channels, repeats * k)
    ss_res = np.zeros(repeats * k)
    sx = np.zeros(channels)
    sxx = np.zeros(channels)
    sxt = np.zeros((channels, k))
    st = np.zeros(k)
    stt = np.zeros(k)
    for r0, c0, block in _blocks(features, h, w, block_tokens):
        rows, cols = np.mgrid[r0 : r0 + block.shape[1], c0 : c0 + block.shape[2]]
        t = _targets(positions, rows.ravel(), cols.ravel())
        tokens = block.reshape(channels, -1).T
        pred = tokens @ stacked + offsets.reshape(-1)
        ss_res += ((np.tile(t, repeats) - pred) ** 2).sum(axis=0)
        sx += tokens.sum(axis=0)
        sxx += (tokens**2).sum(axis=0)
        sxt += tokens.T @ t
        st += t.sum(axis=0)
        stt += (t**2).sum(axis=0)
    ss_tot = stt - st**2 / n_tokens
    if np.any(ss_tot <= 0):
        raise DinosawError("a ramp is constant over this grid; cannot score R²")
    a, d = weights_ch, offsets_ch  # prediction of channel c for ramp j: a x + d
    ss_res_ch = (
        stt - 2 * d * st - 2 * a * sxt[None] + d**2 * n_tokens + 2 * a * d * sx[None, :, None]
        + a**2 * sxx[None, :, None]
    )
    return ProbeResult(
        r2=1.0 - ss_res.reshape(repeats, k) / ss_tot,
        channel_r2=1.0 - np.maximum(ss_res_ch, 0.0) / ss_tot,
        weights=weights,
        offsets=offsets,
        sample_size=n_sample,
    )


def predict_ramps(features: np.ndarray, result: ProbeResult, repeat: int = 0) -> np.ndarray:
    """The fitted probe of ``repeat`` applied to a (C, h, w) map -> predicted ramps (4, h, w)."""
    c, h, w = features.shape
    flat = np.asarray(features, dtype=np.float64).reshape(c, -1).T
    return (flat @ result.weights[repeat] + result.offsets[repeat]).T.reshape(len(RAMPS), h, w)


def mean_std(values: np.ndarray) -> dict[str, float]:
    """{"mean", "std"} over all entries (images × repeats); std is the population std."""
    values = np.asarray(values, dtype=np.float64).ravel()
    return {"mean": float(values.mean()), "std": float(values.std())}


def summarize(results: Sequence[ProbeResult], top: int = 8) -> dict:
    """Mean ± std over images × repeats for every ramp and the x/y average, plus the channel ranking."""
    if not results:
        raise DinosawError("nothing to summarise: no feature maps were probed")
    if len({r.channel_r2.shape[1] for r in results}) != 1:
        raise DinosawError("all feature maps must have the same number of channels")
    r2 = np.concatenate([r.r2 for r in results])
    channel = np.concatenate([r.channel_xy for r in results]).mean(axis=0)
    channel_ramps = np.concatenate([r.channel_r2 for r in results]).mean(axis=0)
    order = np.argsort(-channel, kind="stable")
    return {
        "r2_xy": mean_std(np.concatenate([r.xy for r in results])),
        "r2": {name: mean_std(r2[:, j]) for j, name in enumerate(RAMPS)},
        "per_image_xy": [mean_std(r.xy) for r in results],
        "sample_size": [r.sample_size for r in results],
        "channels": {
            "r2_xy": [float(v) for v in channel],
            "r2": {name: [float(v) for v in channel_ramps[:, j]] for j, name in enumerate(RAMPS)},
            "ranking": [int(c) for c in order],
            "top": [{"channel": int(c), "r2_xy": float(channel[c])} for c in order[:top]],
        },
    }


