"""Ordered parallel map with bounded look-ahead (the executor of per-tile work on one machine), and a call
run on a thread of its own."""
from __future__ import annotations

import threading
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


def in_own_thread(fn: Callable[[], T]) -> T:
    """``fn()`` run on a new thread that ends with it (its exception re-raised here).

    For multi-threaded OpenMP work (XGBoost training): libgomp keeps a team of threads per calling thread
    for that thread's life, and once a process holds more OpenMP threads than cores (a GUI whose worker
    threads each trained once, or a library user's thread beside them) every team stops spinning at its
    barriers and sleeps instead, 1.5x slower on 2 cores. A team made on a thread that then ends is freed."""
    result: list = []

    def run() -> None:
        try:
            result.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
            result.append((False, exc))

    thread = threading.Thread(target=run, name="dinosaw-openmp")
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value
