"""The engine contract: what every exported engine (any family) takes and gives, shared by the runtime and the build side."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dinosaw_deploy.errors import DinosawError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A whole-image pass attends over all tokens at once (memory ~ tokens^2): beyond this, tile.
MAX_WHOLE_IMAGE_TOKENS = 128 * 128

INPUT_NAMES = ("pixel_values", "attn_bias")
OUTPUT_NAME = "features"


def check_io_names(inputs: Sequence[str], outputs: Sequence[str], source: str | Path) -> None:
    """Refuse a graph or plan whose tensors are not ``(pixel_values, attn_bias) -> features``."""
    if tuple(inputs) != INPUT_NAMES or tuple(outputs) != (OUTPUT_NAME,):
        raise DinosawError(
            f"{source}: not a dinosaw-deploy engine (inputs {tuple(inputs)}, outputs {tuple(outputs)}; "
            f"expected {INPUT_NAMES} -> ({OUTPUT_NAME!r},))"
        )
