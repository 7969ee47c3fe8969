"""Ordered parallel map with bounded look-ahead: the executor of per-tile work on one machine."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def map_ordered(fn: Callable[[T], Any], items: Iterable[T], threads: int) -> Iterator[Any]:
    """``map(fn, items)`` on ``threads`` threads, in order, at most ``threads + 1`` results pending."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
