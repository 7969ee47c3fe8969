"""The ``dinosaw-deploy`` command line: one group; each command lives in its own module and calls the library."""
from __future__ import annotations

import os
import sys

import click

from dinosaw_deploy._version import __version__
from dinosaw_deploy.cli.export import export_command, info_command
from dinosaw_deploy.cli.features import features_command
from dinosaw_deploy.cli.fit import fit_command
from dinosaw_deploy.cli.probe import probe_command
from dinosaw_deploy.cli.segment import apply_command, segment_command
from dinosaw_deploy.cli.train import train_command
from dinosaw_deploy.errors import DinosawError


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
        except BrokenPipeError:  # output piped into e.g. `head`: stop quietly, as other tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)")


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dinosaw-deploy")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """ALiBi-Dv2 features and scribble segmentation for large micrographs."""
    ctx.obj = {"debug": debug}


for command in (export_command, info_command, features_command, segment_command, fit_command, apply_command,
                probe_command, train_command):
    main.add_command(command)

if __name__ == "__main__":
    main()
