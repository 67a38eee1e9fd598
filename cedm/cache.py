"""The one in-memory cache helper: a small thread-safe least-recently-used map of loaded things (networks,
indexes, probes) that are costly to make and too large to keep all of."""
from __future__ import annotations

import collections
import threading
from typing import Callable, Hashable


class LRU:
    """``get(key, make)``: the kept value of ``key``, else ``make()`` kept as the most recent (the least
    recently used beyond ``size`` are dropped). ``make`` runs under the cache's lock, so concurrent callers
    never make the same thing twice; the lock is re-entrant, so ``make`` may use the cache itself."""

    def __init__(self, size: int):
        if int(size) < 1:
            raise ValueError(f"an LRU cache holds at least 1 item, got {size}")
        self.size = int(size)
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.RLock()

    def get(self, key: Hashable, make: Callable[[], object]):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = make()
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return value

    def keys(self) -> list:
        with self._lock:
            return list(self._items)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
