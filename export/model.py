"""ALiBi-Dv2 in PyTorch: a DINOv2 ViT with registers, no positional embedding, and an
attention bias passed in by the caller (built by :func:`dinosaw_deploy.engine.bias.attention_bias`).

Parameter names follow timm's ``VisionTransformer`` so released checkpoints load unchanged.
Linear and conv layers run in their weights' dtype while LayerNorm, the softmax and the residual
stream stay float32: casting the weights with :func:`to_mixed_precision` gives the fp16 graph.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class AlibiDv2Config:
    """Architecture of an ALiBi-Dv2 ViT; the defaults are the released ViT-S/14 + 4 registers."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    num_register_tokens: int = 4
    patch_size: int = 14
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    in_chans: int = 3
    learned_slopes: bool = False  # per-block ``attn.m`` (heads, 1, 1) multiplies the bias

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if min(self.embed_dim, self.depth, self.num_heads, self.patch_size) < 1:
            raise ValueError("embed_dim, depth, num_heads and patch_size must be positive")

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AlibiDv2Config":
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


class AlibiAttention(nn.Module):
    """Multi-head self-attention with an additive bias on the logits, written out as
    matmul / add / softmax / matmul so that every exporter and runtime sees plain ops."""

    def __init__(self, dim: int, num_heads: int, learned_slopes: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.m = nn.Parameter(torch.ones(num_heads, 1, 1)) if learned_slopes else None

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        """``attn_bias=None`` adds no bias (the learned-position DINOv2 teacher in ``export.train``)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x.to(self.qkv.weight.dtype))
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if attn_bias is not None:
            bias = attn_bias if self.m is None else self.m * attn_bias
            logits = logits + bias.to(logits.dtype)
        attn = torch.softmax(logits.float(), dim=-1).to(v.dtype)
        out = (attn @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, config: AlibiDv2Config) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = LayerNorm32(dim, eps=config.norm_eps)
        self.attn = AlibiAttention(dim, config.num_heads, config.learned_slopes)
        self.ls1 = LayerScale(dim)
        self.norm2 = LayerNorm32(dim, eps=config.norm_eps)
        self.mlp = Mlp(dim, config.mlp_hidden_dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), attn_bias))
        return x + self.ls2(self.mlp(self.norm2(x)))


class AlibiDv2(nn.Module):
    """``forward(pixel_values, attn_bias) -> features (B, C, h, w)``: final-normed patch tokens."""

    def __init__(self, config: AlibiDv2Config | None = None) -> None:
        super().__init__()
        self.config = config = config or AlibiDv2Config()
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_token = nn.Parameter(torch.zeros(1, config.num_register_tokens, dim))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = LayerNorm32(dim, eps=config.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random init (for benchmarks and tests); real weights come from a checkpoint."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.reg_token, std=1e-6)
        for block in self.blocks:
            nn.init.constant_(block.ls1.gamma, 1e-5)
            nn.init.constant_(block.ls2.gamma, 1e-5)

    def _encode(self, pixel_values: torch.Tensor, attn_bias: torch.Tensor | None) -> tuple[torch.Tensor, int, int]:
        grid = self.patch_embed(pixel_values)
        h, w = grid.shape[-2:]  # traced as shape ops, so exported graphs keep H and W dynamic
        patches = grid.flatten(2).transpose(1, 2).float()
        batch = patches.shape[0]
        x = torch.cat(
            [self.cls_token.expand(batch, -1, -1), self.reg_token.expand(batch, -1, -1), patches], dim=1
        )
        for block in self.blocks:
            x = block(x, attn_bias)
        return self.norm(x), h, w

    def forward_tokens(self, pixel_values: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        """All tokens after the final norm: (B, 5 + h*w, C), order [CLS, REG.., patches]."""
        return self._encode(pixel_values, attn_bias)[0]

    def forward(self, pixel_values: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        tokens, h, w = self._encode(pixel_values, attn_bias)
        patches = tokens[:, self.config.num_prefix_tokens :]
        return patches.transpose(1, 2).reshape(patches.shape[0], self.config.embed_dim, h, w)


def to_mixed_precision(model: AlibiDv2, dtype: torch.dtype = torch.float16) -> AlibiDv2:
    """Cast conv/linear weights to ``dtype`` (in place); norms, LayerScale, tokens and the
    residual stream stay float32, and the softmax runs in float32."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.to(dtype)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
