"""The one exception type the CLI turns into a clear message and a non-zero exit, and a way to keep
libraries' log chatter out of that one line."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class DinosawError(Exception):
    """A problem the user can fix (bad input, missing artifact, offline download...)."""


@contextmanager
def quiet_logger(name: str | None = None) -> Iterator[None]:
    """Only errors from logger ``name`` (None: the root logger) while the block runs: the library's
    warnings about a damaged file or its advice are replaced by our own clear error or check."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
