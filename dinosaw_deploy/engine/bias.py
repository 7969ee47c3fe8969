"""The ``attn_bias`` input of every engine: the 2D ALiBi bias, or zeros for the families that know position
another way (a learned embedding, LocAt's in-graph Gaussian, or not at all).

Engines never compute ALiBi distances: the host builds the bias for an (h, w) patch grid here and
feeds it to the graph's ``attn_bias`` input. The export side imports this module for tracing and
verification.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

import msgspec
import numpy as np
from msgspec import Meta

from dinosaw_deploy.schema import convert, to_builtins

SlopeType = Literal["constant", "geometric"]
Metric = Literal["euclidean", "manhattan"]
BiasKind = Literal["alibi", "none"]
BIAS_KINDS = ("alibi", "none")
MAX_PREFIX_TOKENS = 1024


class BiasConfig(msgspec.Struct, frozen=True):
    """How the ALiBi bias is built. Defaults are those of the released ALiBi-Dv2.

    kind: ``alibi``, or ``none`` (zeros: the engine's family has no host-side bias).
    slopes: ``constant`` (m = 1 for every head, one (T, T) matrix broadcast over heads)
        or ``geometric`` (the paper's "fixed" ablation, m_i = 2^(-8 (i+1) / heads)).
    wrap: toroidal distance (``min(|d|, n - |d|)`` per axis).
    metric: ``euclidean`` or ``manhattan`` distance on the patch grid.
    normalize: divide by the grid's largest distance, so the bias lies in [-1, 0].
    num_prefix_tokens: CLS + registers, whose rows and columns are zero.
    """

    slopes: SlopeType = "constant"
    wrap: bool = True
    metric: Metric = "euclidean"
    normalize: bool = True
    num_prefix_tokens: Annotated[int, Meta(ge=0, le=MAX_PREFIX_TOKENS)] = 5
    kind: BiasKind = "alibi"

    def __post_init__(self) -> None:
        if self.kind not in BIAS_KINDS:
            raise ValueError(f"kind must be one of {', '.join(BIAS_KINDS)}, not {self.kind!r}")
        if self.slopes not in ("constant", "geometric"):
            raise ValueError(f"slopes must be 'constant' or 'geometric', not {self.slopes!r}")
        if self.metric not in ("euclidean", "manhattan"):
            raise ValueError(f"metric must be 'euclidean' or 'manhattan', not {self.metric!r}")
        if self.num_prefix_tokens < 0:
            raise ValueError("num_prefix_tokens must be >= 0")

    def to_dict(self) -> dict:
        return to_builtins(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "bias") -> BiasConfig:
        """The config a manifest's ``bias`` record describes (other keys in it are ignored); a bad value is
        one :class:`SchemaError` naming it."""
        return convert(data, cls, source)


def head_slopes(num_heads: int, slopes: SlopeType = "constant") -> np.ndarray:
    """Per-head slopes m, shape (num_heads,), as in the reference ``get_alibi_slope``."""
    if slopes == "constant":
        return np.ones(num_heads, dtype=np.float64)
    if slopes == "geometric":
        base = 2.0 ** (8.0 / num_heads)
        return base ** -np.arange(1, num_heads + 1, dtype=np.float64)
    raise ValueError(f"unknown slope type {slopes!r}")


def distance_matrix(
    h: int,
    w: int,
    *,
    wrap: bool = True,
    metric: Metric = "euclidean",
    normalize: bool = True,
    num_prefix_tokens: int = 5,
) -> np.ndarray:
    """Negated (normalised) patch distances, zero-padded for prefix tokens: (T, T) float64.

    T = num_prefix_tokens + h * w; patches are ordered row-major.
    """
    if h < 1 or w < 1:
        raise ValueError(f"grid must be at least 1x1, got {h}x{w}")
    ys, xs = np.divmod(np.arange(h * w), w)
    dy = np.abs(ys[:, None] - ys[None, :]).astype(np.float64)
    dx = np.abs(xs[:, None] - xs[None, :]).astype(np.float64)
    if wrap:
        dy = np.minimum(dy, h - dy)
        dx = np.minimum(dx, w - dx)
    dist = np.sqrt(dy**2 + dx**2) if metric == "euclidean" else dy + dx
    if normalize and dist.max() > 0:  # a 1x1 grid has no distances to normalise
        dist /= dist.max()
    out = np.zeros((num_prefix_tokens + h * w,) * 2, dtype=np.float64)
    out[num_prefix_tokens:, num_prefix_tokens:] = -dist
    return out


def distance_jitter(h: int, w: int, num_prefix_tokens: int, sigma: float, seed: int) -> np.ndarray:
    """(T, T) float64 N(0, ``sigma``) noise for the distances between patches: symmetric, one seeded draw per grid
    size, zero in the prefix rows and columns."""
    t = h * w
    noise = np.random.default_rng((int(seed), int(h), int(w))).standard_normal((t, t)) * float(sigma)
    jitter = np.zeros((num_prefix_tokens + t,) * 2)
    # symmetrised: still N(0, sigma) off the diagonal
    jitter[num_prefix_tokens:, num_prefix_tokens:] = (noise + noise.T) / np.sqrt(2.0)
    return jitter


@lru_cache(maxsize=32)
def _cached_bias(h: int, w: int, num_heads: int, config: BiasConfig, jitter: float, seed: int) -> np.ndarray:
    if config.kind == "none":
        bias = np.zeros((1, 1) + (config.num_prefix_tokens + h * w,) * 2, dtype=np.float32)
        bias.flags.writeable = False
        return bias
    dist = distance_matrix(
        h,
        w,
        wrap=config.wrap,
        metric=config.metric,
        normalize=config.normalize,
        num_prefix_tokens=config.num_prefix_tokens,
    )
    if jitter:
        dist = dist + distance_jitter(h, w, config.num_prefix_tokens, jitter, seed)
    if config.slopes == "constant":
        bias = dist[None, None]
    else:
        bias = head_slopes(num_heads, config.slopes)[None, :, None, None] * dist[None, None]
    bias = np.ascontiguousarray(bias, dtype=np.float32)
    bias.flags.writeable = False
    return bias


def attention_bias(h: int, w: int, num_heads: int = 6, config: BiasConfig | None = None, *,
                   jitter: float = 0.0, seed: int = 0) -> np.ndarray:
    """The ``attn_bias`` input for an (h, w) grid: float32 (1, 1 or num_heads, T, T), read-only.

    Constant slopes give one matrix broadcast over heads (1, 1, T, T); geometric slopes give
    one per head; ``kind="none"`` gives zeros (1, 1, T, T). Results are cached per grid, so repeated tiles of
    one size cost nothing.

    ``jitter`` > 0 adds :func:`distance_jitter` noise to the ALiBi distances (paper S4). The paper jitters the
    distance matrix in every layer; the engine contract takes one bias for all blocks, so this is a single draw
    shared by the layers: one per grid size and ``seed``, the same for every tile, so tiled and cached features
    stay exact and runs repeatable.
    """
    return _cached_bias(int(h), int(w), int(num_heads), config or BiasConfig(), float(jitter), int(seed))
