"""The ``dinosaw-deploy`` command line."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from . import __version__
from .atomic import atomic_path
from .errors import DinosawError

DEFAULT_ENGINE = Path("engines") / "alibi_dv2_vits14.onnx"


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


class FriendlyGroup(click.Group):
    """Turns every failure into one clear line and a non-zero exit (``--debug`` shows tracebacks)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DinosawError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)")


def check_output(output: Path, inputs: list[Path], overwrite: bool) -> None:
    """Refuse to overwrite an input, or an existing output without ``--overwrite``."""
    if any(output.resolve() == p.resolve() for p in inputs if p.exists()):
        raise DinosawError(f"output {output} is one of the inputs; choose another name")
    if output.exists() and not overwrite:
        raise DinosawError(f"{output} exists; pass --overwrite to replace it")
    if not output.parent.is_dir():
        raise DinosawError(f"output directory {output.parent} does not exist")


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dinosaw-deploy")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """ALiBi-Dv2 features and scribble segmentation for large micrographs."""
    ctx.obj = {"debug": debug}


@main.command()
@click.option("--checkpoint", default=None, metavar="PATH|hf://OWNER/REPO/FILE",
              help="Weights (.pth). Default: the released ALiBi-Dv2 from the Hugging Face hub.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Architecture/ALiBi JSON for what tensor shapes cannot tell (e.g. num_heads).")
@click.option("--num-heads", type=click.IntRange(min=1), default=None, help="Attention heads (default: dim / 64).")
@click.option("--fp16", is_flag=True, help="Also write a float16-compute ONNX (*.fp16.onnx).")
@click.option("-o", "--out-dir", type=click.Path(file_okay=False), default="engines", show_default=True)
@click.option("--name", default="alibi_dv2_vits14", show_default=True, help="Artifact base name.")
def export(checkpoint, config_path, num_heads, fp16, out_dir, name) -> None:
    """Export ALiBi-Dv2 to ONNX, verified against PyTorch."""
    try:
        from .export.build import run_export
    except ImportError as exc:
        raise DinosawError(
            f"export needs the build-side extra ({exc.name} is missing): pip install 'dinosaw-deploy[export]'"
        ) from None
    result = run_export(
        checkpoint,
        out_dir=out_dir,
        name=name,
        fp16=fp16,
        config_path=config_path,
        overrides={"num_heads": num_heads},
        echo=click.echo,
    )
    if fp16:
        fp16_path = next(p for p in result.artifacts if p.name.endswith(".fp16.onnx"))
        click.echo(
            f"TensorRT is not used by this command yet: on a GPU host, build a plan from {fp16_path} "
            f"(e.g. trtexec --onnx={fp16_path} --saveEngine={fp16_path.with_suffix('.plan')}) "
            "or run it with ONNX Runtime's CUDA/TensorRT providers."
        )


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output .npy (C, h, w).")
@click.option("--engine", type=click.Path(path_type=Path), default=DEFAULT_ENGINE, show_default=True)
@click.option("--intensity-range", nargs=2, type=float, default=None, metavar="LO HI",
              help="Map [LO, HI] to [0, 1] instead of the per-dtype default.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def features(image: Path, output: Path, engine: Path, intensity_range, overwrite: bool) -> None:
    """Patch features of IMAGE in one pass (whole image), saved as float32 (C, h, w)."""
    from .extractor import FeatureExtractor
    from .imageio import read_image

    if output.suffix != ".npy":
        raise DinosawError(f"output must end in .npy, got {output.name}")
    check_output(output, [image, engine], overwrite)
    pixels = read_image(image)
    extractor = FeatureExtractor(engine, intensity_range=tuple(intensity_range) if intensity_range else None)
    feats = extractor(pixels)
    with atomic_path(output) as tmp:
        np.save(tmp, feats)
    click.echo(f"wrote {output}: features {feats.shape} float32 from {image.name} {pixels.shape}")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
def info(artifact: Path) -> None:
    """Print the manifest of an exported artifact (.onnx, .plan or its .json)."""
    from .manifest import METADATA_KEY, parse_manifest, read_manifest, sidecar_path

    if not artifact.exists():
        raise DinosawError(f"not found: {artifact}")
    if artifact.suffix == ".json" or sidecar_path(artifact).is_file():
        record = read_manifest(artifact)
    elif artifact.suffix == ".onnx":
        import onnxruntime as ort

        try:
            meta = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"]).get_modelmeta()
        except Exception as exc:
            raise DinosawError(f"{artifact}: not a loadable ONNX model ({exc})") from None
        if METADATA_KEY not in meta.custom_metadata_map:
            raise DinosawError(f"{artifact}: not exported by dinosaw-deploy (no manifest)")
        record = parse_manifest(meta.custom_metadata_map[METADATA_KEY], str(artifact))
    else:
        raise DinosawError(f"{artifact}: no manifest beside it ({sidecar_path(artifact).name})")
    click.echo(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
