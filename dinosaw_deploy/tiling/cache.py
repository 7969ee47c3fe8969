"""A thread-safe least-recently-used cache of computed arrays, bounded by bytes."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from dinosaw_deploy.errors import DinosawError

DEFAULT_CACHE_BYTES = 1 << 30  # 1 GiB: about a dozen 512² tiles of the default 74 + 9 channels


@dataclass(frozen=True)
class CacheStats:
    """Counters of a :class:`FeatureCache` since it was made (``clear`` keeps them)."""

    hits: int
    misses: int
    evictions: int
    entries: int
    nbytes: int
    max_bytes: int


class FeatureCache:
    """``get(key, compute)`` returns the array cached under ``key`` or computes, keeps and returns it.

    The least recently used entries are dropped once the arrays held exceed ``max_bytes``; an array
    larger than the whole budget is returned but not kept, and ``max_bytes=0`` keeps nothing. Cached
    arrays are read-only, so a caller cannot change what the next caller gets. Two threads asking for
    one missing key may both compute it (the result is the same); the cache itself never blocks on a
    computation.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise DinosawError(f"cache size must be a whole number of bytes >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._nbytes = self._hits = self._misses = self._evictions = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self._hits += 1
                return found
            self._misses += 1
        value = compute()
        value.flags.writeable = False
        with self._lock:
            if value.nbytes > self.max_bytes or key in self._entries:
                return value
            self._entries[key] = value
            self._nbytes += value.nbytes
            while self._nbytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._nbytes -= dropped.nbytes
                self._evictions += 1
        return value

    def peek(self, key: Hashable) -> np.ndarray | None:
        """The array cached under ``key``, or None; neither counted nor made more recent."""
        with self._lock:
            return self._entries.get(key)

    def clear(self) -> None:
        """Drop every entry (the counters stay)."""
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._evictions, len(self._entries), self._nbytes,
                              self.max_bytes)
