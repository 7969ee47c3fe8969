"""The distillation teacher: DINOv2 with its learned positional embedding, and the student made from it.

The teacher is the export side's ``dinov2`` family (:class:`~dinosaw_deploy.export.model.ViT` with a learned
``pos_embed``, resized like timm's ``dynamic_img_size`` to each input's grid), called with no attention bias;
checkpoints in timm's or Meta's layout load as :func:`~dinosaw_deploy.export.checkpoint.read_state` reads
them. The student is the same ViT with the positional embedding removed (the ALiBi-Dv2 family).
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from dinosaw_deploy.errors import DinosawError

from ..checkpoint import infer_config, read_checkpoint_file, read_state, resolve_checkpoint
from ..model import ViT

DinoV2Teacher = ViT  # a ViT of the dinov2 family, called as ``teacher(pixel_values, None)``

def load_teacher(spec: str | os.PathLike, num_heads: int | None = None) -> ViT:
    """Read a DINOv2 checkpoint (local path or ``hf://OWNER/REPO/FILE``) into a frozen teacher."""
    path: Path = resolve_checkpoint(spec)
    if not isinstance(read_checkpoint_file(path), dict):
        raise DinosawError(f"teacher checkpoint {path} is not a state dict")
    try:
        state, family, grid = read_state(path, "dinov2")
    except DinosawError as exc:
        raise DinosawError(f"the teacher must be a DINOv2 with a learned positional embedding: {exc}") from None
    config = infer_config(state, {"num_heads": num_heads}, family=family, pos_embed_grid=grid)
    teacher = ViT(config)
    try:
        teacher.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # missing/unexpected keys or shape mismatches
        raise DinosawError(f"teacher checkpoint {path.name} does not fit DINOv2 {config.to_dict()}: {exc}") from None
    return teacher.eval().requires_grad_(False)

def student_from_teacher(teacher: ViT) -> ViT:
    """An ALiBi-Dv2 with all of the teacher's weights except the positional embedding."""
    student = ViT(replace(teacher.config, family="alibi-dv2", pos_embed_grid=None))
    student.load_state_dict({k: v for k, v in teacher.state_dict().items() if k != "pos_embed"}, strict=True)
    return student
