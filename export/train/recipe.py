"""The training recipe: a small JSON file of stages (``default.json`` is the paper's)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from dinosaw_deploy.errors import DinosawError

DEFAULT_RECIPE = Path(__file__).with_name("default.json")


@dataclass(frozen=True)
class Stage:
    """One pass over the images at one size: resize the short side to ``image_size``, centre-crop a square."""

    name: str
    image_size: int
    batch_size: int
    epochs: int
    lr: float


@dataclass(frozen=True)
class Recipe:
    stages: tuple[Stage, ...]
    zero_channels: tuple[int, ...] = (47, 113, 117, 359)
    weight_decay: float = 0.01
    seed: int = 0
    log_every: int = 20  # optimizer steps between log lines
    save_every: int = 500  # optimizer steps between checkpoints (and at every epoch end)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _checked(cls: type, data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise DinosawError(f"{where} must be a JSON object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DinosawError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return data


def recipe_from_dict(data: Any, where: str = "recipe") -> Recipe:
    """Validate and build a :class:`Recipe`; every mistake is a :class:`DinosawError`."""
    data = dict(_checked(Recipe, data, where))
    raw_stages = data.pop("stages", None)
    if not isinstance(raw_stages, list) or not raw_stages:
        raise DinosawError(f"{where}: 'stages' must be a non-empty list")
    stages = []
    for i, raw in enumerate(raw_stages):
        raw = _checked(Stage, raw, f"{where} stage {i + 1}")
        try:
            stage = Stage(**{"name": f"stage{i + 1}", **raw})
        except TypeError as exc:
            raise DinosawError(f"{where} stage {i + 1}: {exc}") from None
        for key in ("image_size", "batch_size", "epochs"):
            value = getattr(stage, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DinosawError(f"{where} stage {i + 1}: {key} must be a positive integer, got {value!r}")
        if not isinstance(stage.lr, (int, float)) or not stage.lr > 0:
            raise DinosawError(f"{where} stage {i + 1}: lr must be a positive number, got {stage.lr!r}")
        stages.append(stage)
    channels = data.pop("zero_channels", list(Recipe.zero_channels))
    if not isinstance(channels, list) or not all(isinstance(c, int) and c >= 0 for c in channels):
        raise DinosawError(f"{where}: zero_channels must be a list of non-negative integers")
    recipe = Recipe(stages=tuple(stages), zero_channels=tuple(channels), **data)
    for key in ("log_every", "save_every"):
        if not isinstance(getattr(recipe, key), int) or getattr(recipe, key) < 1:
            raise DinosawError(f"{where}: {key} must be a positive integer")
    if not isinstance(recipe.seed, int) or isinstance(recipe.seed, bool):
        raise DinosawError(f"{where}: seed must be an integer")
    if not isinstance(recipe.weight_decay, (int, float)) or recipe.weight_decay < 0:
        raise DinosawError(f"{where}: weight_decay must be >= 0")
    return recipe


def load_recipe(path: str | os.PathLike | None = None) -> Recipe:
    """Read a recipe JSON file (default: the paper's two stages)."""
    path = Path(path) if path is not None else DEFAULT_RECIPE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DinosawError(f"cannot read recipe {path}: {exc}") from None
    return recipe_from_dict(data, where=f"recipe {path.name}")
