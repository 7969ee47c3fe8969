"""Defaults and click options shared by the commands that run an engine."""
from __future__ import annotations

from pathlib import Path

import click

from dinosaw_deploy.engine.backends import BACKENDS

DEFAULT_ENGINE = Path("engines") / "alibi_dv2_vits14.onnx"

backend_option = click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="Inference backend (auto: TensorRT plan, else ONNX Runtime TensorRT > CUDA > CPU, whichever exist).",
)
