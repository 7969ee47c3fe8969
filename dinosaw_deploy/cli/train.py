"""``dinosaw-deploy train``: distil an ALiBi-Dv2 student from a DINOv2 teacher (needs the export extra)."""
from __future__ import annotations

import os
from pathlib import Path

import click

from dinosaw_deploy.errors import DinosawError

MAX_WORKERS = 4 * (os.cpu_count() or 1)


@click.command("train")
@click.option("--teacher", required=True, metavar="PATH|hf://OWNER/REPO/FILE",
              help="DINOv2 weights with their learned positional embedding (timm key layout, .pth).")
@click.option("--images", required=True, type=click.Path(path_type=Path),
              help="Folder of training images (PNG/JPEG/TIFF, searched recursively).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Student checkpoint (.pth, released layout); OUTPUT.state and OUTPUT.log.jsonl go beside it.")
@click.option("--init", default=None, metavar="PATH|hf://OWNER/REPO/FILE",
              help="Start the student from these ALiBi-Dv2 weights (default: the teacher's, minus pos_embed).")
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Stage config JSON (default: the paper's 224 px then 518 px; see docs/training.md).")
@click.option("--num-heads", type=click.IntRange(min=1), default=None, help="Attention heads (default: dim / 64).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N (bf16 autocast on GPU).")
@click.option("--targets-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Precompute the teacher's targets once per stage into DIR and reuse them (default: on the fly).")
@click.option("--workers", type=click.IntRange(0, MAX_WORKERS), default=2, show_default=True,
              help=f"Image-loading processes (at most 4 per CPU core: {MAX_WORKERS}).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Stop after N optimizer steps (checkpointed); continue later with --resume.")
@click.option("--resume", is_flag=True, help="Continue the run recorded in OUTPUT.state.")
@click.option("--overwrite", is_flag=True, help="Start again over an existing OUTPUT.")
def train_command(teacher, images, output, init, recipe, num_heads, device, targets_dir, workers, max_steps,
                  resume, overwrite) -> None:
    """Finetune ALiBi-Dv2 by distilling a DINOv2 teacher on an image folder."""
    try:
        from dinosaw_deploy.export.train import train
    except ImportError as exc:
        raise DinosawError(
            f"train needs the build-side extra ({exc.name} is missing): pip install 'dinosaw-deploy[export]'"
        ) from None
    result = train(teacher, images, output, init=init, recipe=recipe, num_heads=num_heads, device=device,
                   targets_dir=targets_dir, workers=workers, max_steps=max_steps, resume=resume,
                   overwrite=overwrite, echo=click.echo)
    state = "finished" if result.finished else "stopped early (continue with --resume)"
    heads = f" --num-heads {num_heads}" if num_heads else ""
    click.echo(f"wrote {result.output} after {result.steps} steps, {state}; "
               f"export it with: dinosaw-deploy export --checkpoint {result.output}{heads}")
