"""FeatureCache: least-recently-used by bytes, counters, read-only entries."""
import threading

import numpy as np
import pytest

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.tiling.cache import FeatureCache


def block(value: float, n: int = 256) -> np.ndarray:
    return np.full(n, value, np.float32)  # 1 KiB at n=256


def test_keeps_the_most_recently_used_within_the_budget():
    cache, computed = FeatureCache(max_bytes=3 * 1024), []

    def get(key):
        return cache.get(key, lambda: computed.append(key) or block(key))

    for key in (1, 2, 3):
        get(key)
    assert get(1)[0] == 1 and computed == [1, 2, 3]  # a hit: 1 is now the most recent
    get(4)  # over budget: 2, the least recently used, goes
    assert computed == [1, 2, 3, 4]
    get(1), get(3), get(4)
    assert computed == [1, 2, 3, 4]
    get(2)
    assert computed == [1, 2, 3, 4, 2]
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.evictions, stats.entries, stats.nbytes) == (4, 5, 2, 3, 3 * 1024)


def test_entries_are_read_only_and_oversized_or_zero_budget_are_not_kept():
    cache = FeatureCache(max_bytes=1024)
    first = cache.get("a", lambda: block(1))
    with pytest.raises(ValueError):
        first[0] = 5
    big = cache.get("big", lambda: block(2, n=1024))
    assert big.shape == (1024,) and cache.stats.entries == 1 and cache.stats.nbytes == 1024
    none = FeatureCache(max_bytes=0)
    none.get("a", lambda: block(1)), none.get("a", lambda: block(1))
    assert (none.stats.misses, none.stats.entries) == (2, 0)
    cache.clear()
    assert cache.stats.entries == 0 and cache.stats.hits == 0 and cache.stats.misses == 2


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1GB"])
def test_a_bad_budget_is_refused(bad):
    with pytest.raises(DinosawError, match="whole number of bytes"):
        FeatureCache(max_bytes=bad)


def test_threads_share_one_cache_without_losing_count():
    cache = FeatureCache(max_bytes=64 * 1024)
    keys = [i % 16 for i in range(400)]

    def work(part):
        for key in part:
            assert cache.get(key, lambda k=key: block(k))[0] == key

    threads = [threading.Thread(target=work, args=(keys[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = cache.stats
    assert stats.hits + stats.misses == 400 and stats.entries == 16 and stats.nbytes == 16 * 1024
