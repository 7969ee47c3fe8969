"""The distillation teacher: DINOv2 with its learned positional embedding, and the student made from it.

The teacher reuses :class:`~dinosaw_deploy.export.model.AlibiDv2`'s blocks with no attention bias
and a patch embedding that adds the learned ``pos_embed``. Checkpoints use timm's DINOv2-reg4 layout
(``no_embed_class``): ``pos_embed`` (1, N, C) covers the N = g*g patches of the 518 px grid only, the
class token already holds its own positional term and the registers get none. Meta's original DINOv2
checkpoints are converted as timm does: the first row of their (1, 1 + N, C) ``pos_embed`` is folded
into ``cls_token``, ``register_tokens`` becomes ``reg_token`` and the unused ``mask_token`` is dropped.
Like timm's ``dynamic_img_size``, the patch part is resized bicubically (antialiased) to each input's grid.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dinosaw_deploy.errors import DinosawError

from ..checkpoint import infer_config, normalize_state_dict, read_checkpoint_file, resolve_checkpoint
from ..model import AlibiDv2, AlibiDv2Config, PatchEmbed

POS_KEY = "patch_embed.pos_embed"
META_RENAMES = {"register_tokens": "reg_token"}  # Meta's DINOv2 names -> timm's
META_UNUSED = {"mask_token"}


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch-only ``pos_embed`` (1, g*g, C) -> (1, C, h, w), bicubic + antialias like timm."""
    side = math.isqrt(pos_embed.shape[1])
    square = pos_embed.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    if tuple(grid) == (side, side):
        return square
    return F.interpolate(square, size=tuple(grid), mode="bicubic", antialias=True, align_corners=False)


class PositionalPatchEmbed(PatchEmbed):
    """Patch embedding followed by the learned absolute positional embedding (float32 out)."""

    def __init__(self, config: AlibiDv2Config, num_positions: int) -> None:
        super().__init__(config.patch_size, config.in_chans, config.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, config.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = super().forward(x)
        return grid.float() + resize_pos_embed(self.pos_embed, tuple(grid.shape[-2:]))


class DinoV2Teacher(AlibiDv2):
    """DINOv2 (learned positions, no ALiBi): call it as ``teacher(pixel_values, None)``."""

    def __init__(self, config: AlibiDv2Config, num_positions: int) -> None:
        super().__init__(config)
        self.patch_embed = PositionalPatchEmbed(config, num_positions)


def split_pos_embed(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(state without ``pos_embed``, the patch-only ``pos_embed``), folding a class-token row into
    ``cls_token``; refuses a missing or all-zero positional embedding."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    keys = [k for k in state if k.rsplit(".", 1)[-1] == "pos_embed"]
    if len(keys) != 1:
        raise DinosawError(
            "the teacher needs exactly one learned positional embedding (pos_embed); "
            f"found {len(keys)}: is this a DINOv2 checkpoint in timm's key layout?"
        )
    pos_embed = state[keys[0]]
    if not isinstance(pos_embed, torch.Tensor) or pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        shape = tuple(getattr(pos_embed, "shape", ()))
        raise DinosawError(f"teacher pos_embed must be a (1, N, C) tensor, got shape {shape}")
    if not torch.count_nonzero(pos_embed):
        raise DinosawError(
            "the teacher's pos_embed is all zeros: that is an ALiBi-Dv2 checkpoint, not a DINOv2 teacher"
        )
    rest = normalize_state_dict({k: v for k, v in state.items() if k != keys[0]})
    rest = {META_RENAMES.get(k, k): v for k, v in rest.items() if k not in META_UNUSED}
    length = pos_embed.shape[1]
    if math.isqrt(length) ** 2 == length:  # timm layout: patches only
        return rest, pos_embed
    if math.isqrt(length - 1) ** 2 == length - 1 and "cls_token" in rest:  # Meta's layout: [cls, patches]
        rest["cls_token"] = rest["cls_token"] + pos_embed[:, :1]
        return rest, pos_embed[:, 1:]
    raise DinosawError(
        f"teacher pos_embed has {length} positions: not a square patch grid (with or without a class token)"
    )


def load_teacher(spec: str | os.PathLike, num_heads: int | None = None) -> DinoV2Teacher:
    """Read a DINOv2 checkpoint (local path or ``hf://OWNER/REPO/FILE``) into a frozen teacher."""
    path: Path = resolve_checkpoint(spec)
    raw = read_checkpoint_file(path)
    if not isinstance(raw, dict):
        raise DinosawError(f"teacher checkpoint {path} is not a state dict")
    state, pos_embed = split_pos_embed(raw)
    config = infer_config(state, {"num_heads": num_heads})
    if pos_embed.shape[-1] != config.embed_dim:
        raise DinosawError(f"teacher pos_embed has {pos_embed.shape[-1]} channels, the model {config.embed_dim}")
    teacher = DinoV2Teacher(config, pos_embed.shape[1])
    try:
        teacher.load_state_dict({**state, POS_KEY: pos_embed}, strict=True)
    except RuntimeError as exc:  # missing/unexpected keys or shape mismatches
        raise DinosawError(f"teacher checkpoint {path.name} does not fit DINOv2 {config.to_dict()}: {exc}") from None
    return teacher.eval().requires_grad_(False)


def student_from_teacher(teacher: DinoV2Teacher) -> AlibiDv2:
    """An ALiBi-Dv2 with all of the teacher's weights except the positional embedding."""
    student = AlibiDv2(teacher.config)
    student.load_state_dict({k: v for k, v in teacher.state_dict().items() if k != POS_KEY}, strict=True)
    return student
