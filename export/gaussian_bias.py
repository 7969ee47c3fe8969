"""LocAtViT's Gaussian attention kernel (Gaussian-augmented attention, arXiv 2603.04892), for our token layout.

Each query patch predicts, from its own (unscaled) query vector, a 2D variance and an amplitude (two
small linear maps shared by the heads); the kernel ``alpha * exp(-(dy^2 / 2 var_y + dx^2 / 2 var_x))``
over the key patches is added to the attention logits, and prefix tokens (CLS, registers) get zeros.
As in the reference (``models/locat.py``, ``GaussianAugment``): the variance is a sigmoid scaled to the
training grid's size squared and shifted so that a zero input gives 1, rescaled by
``min(grid) / min(training grid)`` on other grids; squared distances are clamped at
``-(max(training grid) - 1)^2 / 2``; ``EPS`` (from the training grid) keeps the division finite in fp16.
The kernel depends on the queries, so it is computed in the graph (the host's ``attn_bias`` is zeros).
In eval mode the reference's fast path (pooling queries over ``rate`` x ``rate`` cells) has rate 1 and
is the same computation.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def locat_eps(grid: tuple[int, int]) -> float:
    """The reference's ``get_eps``: the smallest 0.1 * 2^k that keeps the kernel's division inside fp16."""
    eps = 1e-1
    while 0.5 * (max(grid) - 1) ** 2 / eps**2 > 65000 / 2:
        eps *= 2
    return eps


def kernel_geometry(h, w, training_grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """What every block's kernel shares on an (h, w) grid, computed once per forward: (h*w, h*w, 2) minus half the
    squared row and column distances between patches, clamped; and the variance's scale min(grid) / min(training
    grid)."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack((rows.reshape(-1), cols.reshape(-1)), dim=1).to(torch.float32)
    clamp = max(-0.5 * (max(training_grid) - 1) ** 2, -6550.0)
    distances = torch.clamp(-0.5 * (coords[None, :, :] - coords[:, None, :]) ** 2, min=clamp)
    scale = torch.minimum(torch.as_tensor(h), torch.as_tensor(w)).to(torch.float32) / min(training_grid)
    return distances, scale


class GaussianBias(nn.Module):
    """``forward(q (B, heads, T, head_dim), distances, scale) -> (B, heads, T, T)`` float32 logits to add, with
    ``distances`` and ``scale`` from :func:`kernel_geometry`."""

    def __init__(self, head_dim: int, training_grid: tuple[int, int], num_prefix_tokens: int) -> None:
        super().__init__()
        self.log_var = nn.Linear(head_dim, 2)
        self.log_alpha = nn.Linear(head_dim, 1)
        self.num_prefix_tokens = num_prefix_tokens
        self.eps = locat_eps(tuple(training_grid))
        self.coef = float(max(training_grid) ** 2)
        self.shift = math.log(self.coef - 1) if self.coef > 2 else 0.0

    def forward(self, q: torch.Tensor, distances: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        patches = q[:, :, self.num_prefix_tokens :, :].to(self.log_var.weight.dtype)
        var = self.coef * torch.sigmoid(self.log_var(patches).float() - self.shift) * scale  # (B, heads, n, 2)
        alpha = F.softplus(self.log_alpha(patches).float())  # (B, heads, n, 1)
        gaussian = torch.exp((distances[None, None] / (var[:, :, :, None, :] + self.eps)).sum(dim=-1))
        kernel = alpha * gaussian
        p = self.num_prefix_tokens
        return F.pad(kernel, (p, 0, p, 0)) if p else kernel
