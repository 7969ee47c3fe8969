"""The ViT families we export, in PyTorch: DINOv2-style ViTs (registers, LayerScale) that differ only in how
they know where a patch is.

* ``alibi-dv2``: no positional embedding; a 2D ALiBi attention bias passed in by the caller
  (built by :func:`dinosaw_deploy.engine.bias.attention_bias`), optionally scaled per head (``attn.m``).
* ``dinov2``: a learned absolute positional embedding, resized in-graph to each input's grid as timm's
  ``dynamic_img_size`` does (:mod:`.pos_embed`).
* ``nope``: no position information at all.
* ``locat``: LocAtViT's Gaussian attention kernel (:mod:`.gaussian_bias`), computed in-graph from each
  query, optionally on top of a learned positional embedding, and its parameter-free refinement (PRR)
  after the final norm.

Every family takes ``(pixel_values, attn_bias)`` and returns final-normed patch tokens; ``attn_bias`` is
added to the attention logits in all of them (zeros from the host for all but ALiBi), so one runtime
contract feeds them all. Parameter names follow timm's ``VisionTransformer`` so checkpoints load unchanged.
Linear and conv layers run in their weights' dtype while LayerNorm, the softmax and the residual stream
stay float32: casting the weights with :func:`to_mixed_precision` gives the fp16 graph.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gaussian_bias import GaussianBias, kernel_geometry
from .pos_embed import resize_pos_embed

FAMILIES = ("alibi-dv2", "dinov2", "nope", "locat")


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of an exported ViT; the defaults are the released ALiBi-Dv2 ViT-S/14 + 4 registers.

    pos_embed_grid: the (rows, cols) grid of a learned positional embedding (``dinov2``; optional for
        ``locat``), None for none.
    locat_grid: the training grid of a ``locat`` model (sets its Gaussian's scale and clamps).
    prr: LocAtViT's parameter-free self-attention after the final norm.
    """

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    num_register_tokens: int = 4
    patch_size: int = 14
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    in_chans: int = 3
    learned_slopes: bool = False  # per-block ``attn.m`` (heads, 1, 1) multiplies the bias
    family: str = "alibi-dv2"
    layer_scale: bool = True
    pos_embed_grid: tuple[int, int] | None = None
    locat_grid: tuple[int, int] | None = None
    prr: bool = False

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if min(self.embed_dim, self.depth, self.num_heads, self.patch_size) < 1:
            raise ValueError("embed_dim, depth, num_heads and patch_size must be positive")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {self.family!r}")
        for name in ("pos_embed_grid", "locat_grid"):
            grid = getattr(self, name)
            if grid is not None:
                if len(grid) != 2 or min(grid) < 1:
                    raise ValueError(f"{name} must be two positive sizes, got {grid}")
                object.__setattr__(self, name, (int(grid[0]), int(grid[1])))
        wants_pe = {"alibi-dv2": False, "nope": False, "dinov2": True}.get(self.family)
        if wants_pe is not None and (self.pos_embed_grid is not None) != wants_pe:
            raise ValueError(f"a {self.family} model {'needs' if wants_pe else 'has no'} learned positional embedding")
        if (self.family == "locat") != (self.locat_grid is not None):
            raise ValueError("locat_grid is set for (and only for) the locat family")
        if self.learned_slopes and self.family != "alibi-dv2":
            raise ValueError("learned ALiBi slopes belong to the alibi-dv2 family")
        if self.prr and self.family != "locat":
            raise ValueError("PRR belongs to the locat family")

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def to_dict(self) -> dict:
        data = asdict(self)
        for name in ("pos_embed_grid", "locat_grid"):
            data[name] = list(data[name]) if data[name] is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ViTConfig":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (an fp32 island in fp16 graphs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, h, w); an unpadded stride-p conv drops trailing H % p, W % p."""
        return self.proj(x.to(self.proj.weight.dtype))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x.to(self.fc1.weight.dtype))))


class Attention(nn.Module):
    """Multi-head self-attention with an additive bias on the logits (the caller's ``attn_bias``, times the
    learned slopes if any, plus LocAt's Gaussian if the family has one), written out as
    matmul / add / softmax / matmul so that every exporter and runtime sees plain ops."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.num_heads = config.num_heads
        self.head_dim = dim // config.num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.m = nn.Parameter(torch.ones(config.num_heads, 1, 1)) if config.learned_slopes else None
        self.gaug = (GaussianBias(self.head_dim, config.locat_grid, config.num_prefix_tokens)
                     if config.locat_grid is not None else None)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None, geometry: tuple | None = None) -> torch.Tensor:
        """``attn_bias=None`` adds no bias (the DINOv2 teacher in ``export.train``); ``geometry``: the Gaussian
        kernel's :func:`~.gaussian_bias.kernel_geometry` of this grid (locat only)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x.to(self.qkv.weight.dtype))
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if self.gaug is not None:
            logits = logits.float() + self.gaug(q, *geometry)
        if attn_bias is not None:
            bias = attn_bias if self.m is None else self.m * attn_bias
            logits = logits + bias.to(logits.dtype)
        attn = torch.softmax(logits.float(), dim=-1).to(v.dtype)
        out = (attn @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = LayerNorm32(dim, eps=config.norm_eps)
        self.attn = Attention(config)
        self.ls1 = LayerScale(dim) if config.layer_scale else nn.Identity()
        self.norm2 = LayerNorm32(dim, eps=config.norm_eps)
        self.mlp = Mlp(dim, config.mlp_hidden_dim)
        self.ls2 = LayerScale(dim) if config.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None, geometry: tuple | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), attn_bias, geometry)).float()
        return x + self.ls2(self.mlp(self.norm2(x))).float()


def refine_prr(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """LocAtViT's PRR: parameter-free self-attention of the tokens with themselves (queries = keys =
    values = the normed tokens, split into heads)."""
    batch, tokens, dim = x.shape
    heads = x.reshape(batch, tokens, num_heads, dim // num_heads).permute(0, 2, 1, 3)
    attn = torch.softmax((heads * (dim // num_heads) ** -0.5) @ heads.transpose(-2, -1), dim=-1)
    return (attn @ heads).permute(0, 2, 1, 3).reshape(batch, tokens, dim)


class ViT(nn.Module):
    """``forward(pixel_values, attn_bias) -> features (B, C, h, w)``: final-normed patch tokens."""

    def __init__(self, config: ViTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ViTConfig()
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_token = nn.Parameter(torch.zeros(1, config.num_register_tokens, dim))
        grid = config.pos_embed_grid
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim)) if grid is not None else None
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = LayerNorm32(dim, eps=config.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random init (for benchmarks and tests); real weights come from a checkpoint. A learned positional
        embedding starts as a smooth 2D sinusoid, so even random models carry position in their features."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.reg_token, std=1e-6)
        if self.pos_embed is not None:
            with torch.no_grad():
                self.pos_embed.copy_(sinusoidal_pos_embed(self.config.pos_embed_grid, self.config.embed_dim))
        for block in self.blocks:
            for scale in (block.ls1, block.ls2):
                if isinstance(scale, LayerScale):
                    nn.init.constant_(scale.gamma, 1e-5)

    def _encode(self, pixel_values: torch.Tensor, attn_bias: torch.Tensor | None) -> tuple[torch.Tensor, int, int]:
        grid = self.patch_embed(pixel_values)
        h, w = grid.shape[-2:]  # traced as shape ops, so exported graphs keep H and W dynamic
        patches = grid.flatten(2).transpose(1, 2).float()
        if self.pos_embed is not None:
            patches = patches + resize_pos_embed(self.pos_embed, self.config.pos_embed_grid, h, w)
        batch = patches.shape[0]
        x = torch.cat(
            [self.cls_token.expand(batch, -1, -1), self.reg_token.expand(batch, -1, -1), patches], dim=1
        )
        locat = self.config.locat_grid
        geometry = kernel_geometry(h, w, locat) if locat is not None else None  # shared by every block
        for block in self.blocks:
            x = block(x, attn_bias, geometry)
        x = self.norm(x)
        if self.config.prr:
            x = refine_prr(x, self.config.num_heads)
        return x, h, w

    def forward_tokens(self, pixel_values: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        """All tokens after the final norm: (B, 5 + h*w, C), order [CLS, REG.., patches]."""
        return self._encode(pixel_values, attn_bias)[0]

    def forward(self, pixel_values: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        tokens, h, w = self._encode(pixel_values, attn_bias)
        patches = tokens[:, self.config.num_prefix_tokens :]
        return patches.transpose(1, 2).reshape(patches.shape[0], self.config.embed_dim, h, w)


def sinusoidal_pos_embed(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """(1, rows*cols, dim) 2D sine-cosine table (MAE's layout: sin/cos of rows, then of columns), amplitude 0.5:
    smooth and strong enough that a randomly initialised model carries position into its features."""
    rows, cols = grid
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / max(quarter, 1))
    ys, xs = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                            indexing="ij")
    parts = [f(t.reshape(-1, 1) * freqs) for t in (ys, xs) for f in (torch.sin, torch.cos)]
    table = torch.cat(parts, dim=1)
    table = torch.cat([table, torch.zeros(rows * cols, dim - table.shape[1], dtype=torch.float64)], dim=1)
    return (0.5 * table).float()[None]


def to_mixed_precision(model: ViT, dtype: torch.dtype = torch.float16) -> ViT:
    """Cast conv/linear weights to ``dtype`` (in place); norms, LayerScale, tokens and the
    residual stream stay float32, and the softmax runs in float32."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.to(dtype)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
