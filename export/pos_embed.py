"""A learned absolute position embedding resized to any patch grid, as timm's ``dynamic_img_size`` does.

timm resizes DINOv2's (g x g) table with ``F.interpolate(mode="bicubic", antialias=True,
align_corners=False)``, which no ONNX exporter supports. The same resampling is written here as two
matrices built from the grid size with plain tensor ops (PyTorch's antialiased bicubic: Keys' cubic
with a = -0.5, the kernel widened by the scale when shrinking, each row's weights normalised), so an
exported graph resizes in-graph for whatever tile size it is fed: ``A_h @ P @ A_w^T``.
"""
from __future__ import annotations

import torch

CUBIC_A = -0.5  # Keys' coefficient of PyTorch's antialiased bicubic (the plain one uses -0.75)


def _cubic(x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    near = ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1
    far = ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resample_matrix(size_out: torch.Tensor | int, size_in: int) -> torch.Tensor:
    """(size_out, size_in) float32 weights of an antialiased bicubic resize along one axis.

    ``size_out`` may be a traced shape value: the matrix is then built in the exported graph.
    """
    size_out = torch.as_tensor(size_out)
    out_index = torch.arange(size_out).to(torch.float32)[:, None]
    in_index = torch.arange(size_in).to(torch.float32)[None, :]
    scale = torch.tensor(float(size_in)) / size_out.to(torch.float32)
    shrinking = scale >= 1
    support = torch.where(shrinking, 2 * scale, torch.tensor(2.0))
    inv_scale = torch.where(shrinking, 1 / scale, torch.tensor(1.0))
    center = scale * (out_index + 0.5)
    first = torch.clamp(torch.floor(center - support + 0.5), min=0)
    last = torch.clamp(torch.floor(center + support + 0.5), max=float(size_in))
    inside = (in_index >= first) & (in_index < last)
    weights = torch.where(inside, _cubic((in_index - center + 0.5) * inv_scale), torch.zeros_like(center))
    total = weights.sum(dim=1, keepdim=True)
    return weights / torch.where(total == 0, torch.ones_like(total), total)


def resize_pos_embed(pos_embed: torch.Tensor, grid_size: tuple[int, int], h, w) -> torch.Tensor:
    """Patch-only ``pos_embed`` (1, gh*gw, C) on ``grid_size`` -> (1, h*w, C) float32 for an (h, w) grid."""
    gh, gw = grid_size
    table = pos_embed.float().reshape(gh, gw, -1).permute(2, 0, 1)  # (C, gh, gw)
    resized = resample_matrix(h, gh) @ table @ resample_matrix(w, gw).transpose(0, 1)
    return resized.flatten(1).transpose(0, 1)[None]
