"""One progress display for the commands that run tiles: a rich bar on stderr, one per stage."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TileProgress:
    """A ``progress(done, total)`` callback for the library; a new bar starts when ``total`` changes.
    Use as a context manager so the bar is closed on errors too. Shown only on a terminal: logs and
    pipes get no bar (and an error stays the one line on stderr)."""

    def __init__(self, label: str = "tiles", quiet: bool = False) -> None:
        console = Console(stderr=True)
        self._bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             TextColumn("ETA"), TimeRemainingColumn(), console=console,
                             disable=quiet or not console.is_terminal)
        self._task, self._total = None, None

    def __call__(self, done: int, total: int) -> None:
        if self._task is None or total != self._total:  # the bar appears once the run is set up and checked
            if not self._bar.live.is_started:
                self._bar.start()
            self._task, self._total = self._bar.add_task("tiles", total=total), total
        self._bar.update(self._task, completed=done)

    def __enter__(self) -> TileProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar.live.is_started:
            self._bar.stop()
