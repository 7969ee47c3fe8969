"""TensorRT optimisation profiles for the ALiBi-Dv2 contract.

``pixel_values`` (B, 3, H, W) and ``attn_bias`` (1, heads, T, T) must agree: T = prefix + (H/p)(W/p).
A :class:`TileProfile` covers square tiles from ``min_tile`` to ``max_tile`` pixels (and every
rectangle in between) and batches 1..``max_batch``; TensorRT tunes its kernels for ``opt_tile``
at ``opt_batch``. The same shapes feed the native builder and ONNX Runtime's TensorRT provider.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dinosaw_deploy.engine.contract import INPUT_NAMES
from dinosaw_deploy.errors import DinosawError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TileProfile:
    """Shapes one engine accepts. Tiles are in pixels and multiples of ``patch_size``."""

    opt_tile: int = 518
    min_tile: int = 224
    max_tile: int = 518
    max_batch: int = 64
    opt_batch: int = 64
    patch_size: int = 14
    num_prefix_tokens: int = 5
    bias_heads: int = 1

    def __post_init__(self) -> None:
        p = self.patch_size
        for label, tile in (("--tile", self.opt_tile), ("--min-tile", self.min_tile), ("--max-tile", self.max_tile)):
            if tile < p or tile % p:
                lower, upper = max(p, tile // p * p), (tile // p + 1) * p
                raise DinosawError(f"{label} {tile} is not a multiple of the {p}-px patch (try {lower} or {upper})")
        if not self.min_tile <= self.opt_tile <= self.max_tile:
            raise DinosawError(
                f"tile sizes must satisfy --min-tile <= --tile <= --max-tile, got "
                f"{self.min_tile} <= {self.opt_tile} <= {self.max_tile}"
            )
        if not 1 <= self.opt_batch <= self.max_batch:
            raise DinosawError(
                f"batch sizes must satisfy 1 <= opt <= --max-batch, got {self.opt_batch}, {self.max_batch}"
            )
        if self.bias_heads < 1:
            raise DinosawError("bias_heads must be >= 1")

    def tokens(self, tile_h: int, tile_w: int) -> int:
        """T = prefix tokens + patches of an (tile_h x tile_w)-px input."""
        return self.num_prefix_tokens + (tile_h // self.patch_size) * (tile_w // self.patch_size)

    def shapes(self) -> dict[str, tuple[Shape, Shape, Shape]]:
        """{input name: (min, opt, max)} for ``IOptimizationProfile.set_shape``."""
        sizes = ((1, self.min_tile), (self.opt_batch, self.opt_tile), (self.max_batch, self.max_tile))
        pixels = tuple((b, 3, t, t) for b, t in sizes)
        bias = tuple((1, self.bias_heads, self.tokens(t, t), self.tokens(t, t)) for _, t in sizes)
        return {INPUT_NAMES[0]: pixels, INPUT_NAMES[1]: bias}  # type: ignore[dict-item]

    def check(self, batch: int, height: int, width: int) -> None:
        """Raise a clear :class:`DinosawError` if (B, 3, height, width) is outside the profile."""
        if not 1 <= batch <= self.max_batch:
            raise DinosawError(f"batch {batch} is outside the engine's profile (1..{self.max_batch})")
        if not (self.min_tile <= height <= self.max_tile and self.min_tile <= width <= self.max_tile):
            raise DinosawError(
                f"input of {height}x{width} px is outside the engine's profile "
                f"({self.min_tile}..{self.max_tile} px a side); rebuild the plan with "
                f"--min-tile/--max-tile covering it, or run the .onnx instead"
            )

    def ort_provider_options(self) -> dict[str, str]:
        """``trt_profile_{min,opt,max}_shapes`` for ONNX Runtime's TensorRT execution provider."""
        shapes = self.shapes()
        options = {}
        for index, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")):
            options[key] = ",".join(f"{name}:{'x'.join(map(str, dims[index]))}" for name, dims in shapes.items())
        return options

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shapes": {k: [list(s) for s in v] for k, v in self.shapes().items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TileProfile":
        return cls(**{k: int(data[k]) for k in cls.__dataclass_fields__ if k in data})


def make_profile(
    *,
    tile: int = 518,
    min_tile: int | None = None,
    max_tile: int | None = None,
    max_batch: int = 64,
    manifest: dict[str, Any],
) -> TileProfile:
    """The profile for an artifact: defaults min 224 px (or ``tile`` if smaller), max ``tile``.

    Patch size, prefix tokens and the bias' head dimension (1 for constant slopes, else heads)
    come from the model's manifest so the bias shape matches what the runtime feeds.
    """
    arch = manifest["architecture"]
    constant = manifest["bias"].get("slopes", "constant") == "constant"
    return TileProfile(
        opt_tile=tile,
        min_tile=min(224, tile) if min_tile is None else min_tile,
        max_tile=tile if max_tile is None else max_tile,
        max_batch=max_batch,
        opt_batch=max_batch,
        patch_size=int(arch["patch_size"]),
        num_prefix_tokens=int(arch.get("num_prefix_tokens", 1 + int(arch.get("num_register_tokens", 4)))),
        bias_heads=1 if constant else int(arch["num_heads"]),
    )
