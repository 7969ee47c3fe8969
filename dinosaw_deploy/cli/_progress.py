"""One progress display for the commands that run tiles: a rich bar with an ETA on a terminal, a line
with an ETA now and then in a log."""
from __future__ import annotations

import sys
from time import monotonic

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TileProgress:
    """A ``progress(done, total)`` callback for the library; a new stage starts when ``total`` changes.
    Use as a context manager so the bar is closed on errors too. On a terminal: a bar with elapsed time
    and ETA. Elsewhere (a batch job's log, a pipe): one line every ``log_every`` seconds once a stage has
    run that long, so short runs print nothing and an error stays the one line on stderr. Tiles already
    done when a stage starts (a resumed run) do not count towards the speed behind the ETA."""

    def __init__(self, label: str = "tiles", quiet: bool = False, log_every: float = 60.0) -> None:
        console = Console(stderr=True)
        self._label, self._log_every = label, log_every
        self._log = not quiet and not console.is_terminal
        self._bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             TextColumn("ETA"), TimeRemainingColumn(), console=console,
                             disable=quiet or not console.is_terminal)
        self._task, self._total = None, None
        self._start = self._logged = 0.0
        self._start_done = 0

    def __call__(self, done: int, total: int) -> None:
        now = monotonic()
        if self._task is None or total != self._total:  # the bar appears once the run is set up and checked
            if not self._bar.live.is_started:
                self._bar.start()
            self._task = self._bar.add_task(self._label, total=total, completed=done)
            self._total, self._start_done = total, done
            self._start = self._logged = now
        self._bar.update(self._task, completed=done)
        if self._log:
            self._log_line(done, total, now)

    def _log_line(self, done: int, total: int, now: float) -> None:
        if now - self._logged < self._log_every or done <= self._start_done:
            return
        self._logged = now
        elapsed = now - self._start
        left = (total - done) * elapsed / (done - self._start_done)
        print(f"{self._label} {done}/{total} ({100 * done // max(total, 1)} %), {_duration(elapsed)} elapsed, "
              f"ETA {_duration(left)}", file=sys.stderr, flush=True)

    def __enter__(self) -> TileProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar.live.is_started:
            self._bar.stop()


def _duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``3 h 05 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60:02d} min"
