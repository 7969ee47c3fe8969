"""Deterministic weights and inputs shared by the golden writer (run with timm) and the tests (run without)."""
from __future__ import annotations

import numpy as np

DINOV2_SIZES = ((518, 518), (364, 518))
LOCAT_SIZES = ((112, 112), (84, 126))
SEED = 2026


def pixel_values(h: int, w: int) -> np.ndarray:
    """A normalised (1, 3, h, w) float32 input, the same for every numpy version's PCG64 stream."""
    return np.random.default_rng((SEED, h, w)).standard_normal((1, 3, h, w)).astype(np.float32)


def timm_dinov2_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Random weights for a timm DINOv2 state dict of these shapes, scaled so every block changes the tokens:
    linear/conv weights N(0, 1/fan_in), biases N(0, 0.02), norms 1 + N(0, 0.1), LayerScale U(0.1, 0.5),
    a smooth sinusoidal positional embedding plus noise (so that resizing it matters), tokens N(0, 0.3)."""
    rng = np.random.default_rng(SEED)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name == "pos_embed":
            n, dim = shape[1], shape[2]
            side = int(round(n**0.5))
            ys, xs = np.meshgrid(np.linspace(0, 4, side), np.linspace(0, 4, side), indexing="ij")
            freq = rng.uniform(0.2, 1.5, size=(2, dim))
            phase = rng.uniform(0, 2 * np.pi, size=dim)
            table = np.sin(ys.reshape(-1, 1) * freq[0] + xs.reshape(-1, 1) * freq[1] + phase)
            value = table[None] + 0.05 * rng.standard_normal(shape)
        elif name.endswith(("cls_token", "reg_token")):
            value = 0.3 * rng.standard_normal(shape)
        elif name.endswith("gamma"):
            value = rng.uniform(0.1, 0.5, size=shape)
        elif name.split(".")[-2:-1] and name.split(".")[-2].startswith("norm"):
            value = (1.0 if name.endswith("weight") else 0.0) + 0.1 * rng.standard_normal(shape)
        elif name.endswith("bias"):
            value = 0.02 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            value = rng.standard_normal(shape) / np.sqrt(fan_in)
        out[name] = value.astype(np.float32)
    return out
