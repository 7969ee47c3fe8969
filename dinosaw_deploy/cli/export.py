"""``dinosaw-deploy export`` (ONNX + TensorRT plans) and ``dinosaw-deploy info`` (an artifact's manifest)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from dinosaw_deploy.errors import DinosawError


@click.command("export")
@click.option("--checkpoint", default=None, metavar="PATH|hf://OWNER/REPO/FILE",
              help="Weights (.pth) of any family. Default: the released ALiBi-Dv2 from the Hugging Face hub.")
@click.option("--family", type=click.Choice(["auto", "alibi-dv2", "dinov2", "nope", "locat"]), default="auto",
              show_default=True, help="Model family (docs/models.md); auto: read from the checkpoint's tensors "
              "(a NoPE checkpoint looks like an ALiBi-Dv2 one: name it).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Architecture/ALiBi JSON for what tensor shapes cannot tell (num_heads, a locat locat_grid, prr).")
@click.option("--num-heads", type=click.IntRange(min=1), default=None, help="Attention heads (default: dim / 64).")
@click.option("--fp16", is_flag=True, help="Also write a float16-compute ONNX (*.fp16.onnx); where TensorRT is "
              "installed, also build its plan. With --from-onnx on an fp32 ONNX: TensorRT 10's FP16 builder flag.")
@click.option("--int8", is_flag=True, help="Also write an int8 ONNX for CPUs (*.int8.onnx: ONNX Runtime dynamic "
              "quantisation, verified at per-token cosine >= 0.99 vs PyTorch; run it with --backend cpu).")
@click.option("-o", "--out-dir", type=click.Path(file_okay=False), default="engines", show_default=True)
@click.option("--name", default=None, help="Artifact base name [by family: alibi_dv2_vits14, dinov2_vits14, ...].")
@click.option("--tensorrt/--no-tensorrt", "tensorrt", default=None,
              help="Build a TensorRT plan beside the ONNX [default: with --fp16 when TensorRT is installed].")
@click.option("--from-onnx", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Only build a plan from this exported ONNX (no checkpoint, no torch); written beside it.")
@click.option("--tile", type=click.IntRange(min=14), default=518, show_default=True,
              help="Plan: tile side (px) TensorRT tunes for.")
@click.option("--min-tile", type=click.IntRange(min=14), default=None,
              help="Plan: smallest tile side [min(224, --tile)].")
@click.option("--max-tile", type=click.IntRange(min=14), default=None, help="Plan: largest tile side [--tile].")
@click.option("--max-batch", type=click.IntRange(min=1), default=64, show_default=True, help="Plan: largest batch.")
@click.option("--workspace", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Plan: builder workspace limit in GiB [TensorRT's default].")
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="Plan: TensorRT builder optimisation level.")
@click.option("--hardware-compatible", is_flag=True, help="Plan: run on any Ampere or newer GPU (slower).")
@click.option("--version-compatible", is_flag=True, help="Plan: run on later TensorRT versions too (slower).")
@click.option("--overwrite", is_flag=True, help="Replace existing artifacts (ONNX, manifests, plans).")
def export_command(checkpoint, family, config_path, num_heads, fp16, int8, out_dir, name, tensorrt, from_onnx, tile, min_tile,
                   max_tile, max_batch, workspace, opt_level, hardware_compatible, version_compatible, overwrite) -> None:
    """Export a ViT (ALiBi-Dv2, DINOv2, NoPE or LocAt) to ONNX, verified against PyTorch; on a GPU host also
    build TensorRT plans."""
    from dinosaw_deploy.export.tensorrt import PlanOptions, build_plan

    options = PlanOptions(tile=tile, min_tile=min_tile, max_tile=max_tile, max_batch=max_batch,
                          workspace_gib=workspace, opt_level=opt_level, fp16_flag=fp16 and from_onnx is not None,
                          hardware_compatible=hardware_compatible, version_compatible=version_compatible)
    if from_onnx is not None:
        if checkpoint or config_path or num_heads or int8 or tensorrt is False or family != "auto":
            raise DinosawError("--from-onnx only builds a plan: drop --checkpoint/--family/--config/--num-heads/"
                               "--int8/--no-tensorrt")
        build_plan(from_onnx, options, overwrite=overwrite, echo=click.echo)
        return
    try:
        from dinosaw_deploy.export.build import run_export
    except ImportError as exc:
        raise DinosawError(
            f"export needs the build-side extra ({exc.name} is missing): pip install 'dinosaw-deploy[export]'"
        ) from None
    run_export(checkpoint, out_dir=out_dir, name=name, family=None if family == "auto" else family, fp16=fp16, int8=int8, config_path=config_path,
               overrides={"num_heads": num_heads}, echo=click.echo, overwrite=overwrite, tensorrt=tensorrt,
               plan_options=options)


@click.command("info")
@click.argument("artifact", type=click.Path(path_type=Path))
def info_command(artifact: Path) -> None:
    """Check an exported artifact (.onnx, .plan or its .json) as the runtime would, then print its manifest."""
    from dinosaw_deploy.engine.describe import describe_artifact

    click.echo(json.dumps(describe_artifact(artifact), indent=2))
