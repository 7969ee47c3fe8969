"""The ``dinosaw-deploy`` command line: one group; each command lives in its own module and calls the library."""
from __future__ import annotations

import logging
import os
import sys
import warnings

import click

from dinosaw_deploy._version import __version__
from dinosaw_deploy.cli.debias import debias_group
from dinosaw_deploy.cli.export import export_command, info_command
from dinosaw_deploy.cli.features import features_command
from dinosaw_deploy.cli.fit import fit_command
from dinosaw_deploy.cli.probe import probe_command
from dinosaw_deploy.cli.segment import apply_command, segment_command
from dinosaw_deploy.cli.train import train_command
from dinosaw_deploy.errors import DinosawError


def _fail(message: str, code: int = 1, notes: list[str] | None = None) -> None:
    line = " ".join(f"{message}{f' (library warning: {notes[0]})' if notes else ''}".split())
    click.echo(f"Error: {line}", err=True)
    sys.exit(code)


class _Notes(logging.Handler):
    """Collects library log records of level WARNING and above while a command runs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class FriendlyGroup(click.Group):
    """Turns every failure into one clear line and a non-zero exit (``--debug`` shows tracebacks).

    Library warnings (``warnings`` from numpy/imagecodecs/tifffile, WARNING log records) are held
    back while the command runs: on failure the first one joins the error line; on success only
    this package's own log warnings are printed (``warning: ...``); ``--debug`` shows them all.
    """

    def invoke(self, ctx: click.Context):
        if ctx.params.get("debug"):
            return self._invoke(ctx, [])
        notes = _Notes()
        root = logging.getLogger()
        root.addHandler(notes)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = self._invoke(ctx, caught, notes)
            for record in notes.records:
                if record.name.startswith("dinosaw_deploy"):
                    click.echo(f"warning: {record.getMessage()}", err=True)
            return result
        finally:
            root.removeHandler(notes)

    def _invoke(self, ctx: click.Context, caught: list, notes: _Notes | None = None):
        def held() -> list[str]:
            messages = [str(w.message) for w in caught]
            messages += [r.getMessage() for r in (notes.records if notes else [])]
            return [m for m in messages if m.strip()][:1]

        try:
            return super().invoke(ctx)
        except DinosawError as exc:
            _fail(str(exc), notes=held())
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:  # output piped into e.g. `head`: stop quietly, as other tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except click.UsageError as exc:  # a bad option: one line, not usage + hint + error
            where = exc.ctx.command_path if exc.ctx else ctx.command_path
            _fail(f"{exc.format_message()} (see: {where} --help)", 2)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except OSError as exc:  # the environment: read-only folder, full disk, FIFO, /sys...
            if ctx.params.get("debug"):
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(f"{where}{exc.strerror or exc}", notes=held())
        except MemoryError:
            if ctx.params.get("debug"):
                raise
            _fail("out of memory (try a tiled output, smaller tiles or a smaller --batch)")
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)", notes=held())


# Commands that train or run an XGBoost classifier.
_CLASSIFYING_COMMANDS = {"segment", "fit", "apply"}


def _import_xgboost_without_sklearn() -> None:
    """Import xgboost with scikit-learn hidden from it. xgboost imports scikit-learn (0.7 s, a tenth
    of a 4 Mpx `segment`) only to base its estimator wrappers on it, and no command uses those. The
    library imports xgboost as it comes; only the CLI, whose process is its own, does this."""
    if "xgboost" in sys.modules or "sklearn" in sys.modules:
        return
    sys.modules["sklearn"] = None  # `import sklearn` raises ImportError while this is set
    try:
        import xgboost  # noqa: F401
    finally:
        del sys.modules["sklearn"]


@click.group(cls=FriendlyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dinosaw-deploy")
@click.option("--debug", is_flag=True, help="Show full tracebacks and every library warning.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """ALiBi-Dv2 features and scribble segmentation for large micrographs."""
    ctx.obj = {"debug": debug}
    # This process is ours: OpenMP threads that sleep while they wait (unless the user set a policy).
    # Spinning ones make XGBoost several times slower when other processes share the cores. The
    # library leaves the setting to the application that embeds it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if ctx.invoked_subcommand in _CLASSIFYING_COMMANDS:
        _import_xgboost_without_sklearn()


for command in (export_command, info_command, features_command, segment_command, fit_command, apply_command,
                probe_command, train_command, debias_group):
    main.add_command(command)

if __name__ == "__main__":
    main()
