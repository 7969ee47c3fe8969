"""Click options shared by the commands that run an engine."""
from __future__ import annotations

import click

from .backends import BACKENDS

backend_option = click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="Inference backend (auto: TensorRT plan, else ONNX Runtime TensorRT > CUDA > CPU, whichever exist).",
)
