"""The process-wide cache of credential-helper answers.

Why: the Docker CLI and docker-py execute the helper on every lookup; a deploy pass resolving the
same registry for many connectors would start one process per connector, and a locked keychain
would prompt (or stall) as many times. Here an answer is kept per (helper, server URL, PATH) for
``auth.cache_ttl`` seconds, a "not found" or an error for ``auth.cache_miss_ttl``; a credential the
registry rejected is dropped (:meth:`HelperCache.forget`).

Thread-safe, and concurrent lookups of the same key run the helper once: the first caller runs it
under a per-key gate, the others wait on that gate and then read its answer. A hit is one dict
lookup and one clock read, without any lock. The clock is injectable so that tests can expire
entries without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class HelperCache(Generic[T]):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._entries: dict[Hashable, tuple[float, T]] = {}
        self._gates: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> tuple[T, float] | None:
        """The cached answer and its remaining lifetime in seconds, or ``None``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        remaining = entry[0] - self.clock()
        return (entry[1], remaining) if remaining > 0 else None

    def get_or_run(self, key: Hashable, run: Callable[[], T],
                   ttl_of: Callable[[T], float]) -> tuple[T, float | None]:
        """The cached answer (with its remaining lifetime), or ``run()``'s (with ``None``), which
        is then kept for ``ttl_of(answer)`` seconds (0: not kept)."""
        hit = self.get(key)
        if hit is not None:
            return hit
        with self._lock:
            gate = self._gates.setdefault(key, threading.Lock())
        with gate:
            hit = self.get(key)  # another thread may have answered while we waited
            if hit is not None:
                return hit
            answer = run()
            ttl = ttl_of(answer)
            if ttl > 0:
                self._entries[key] = (self.clock() + ttl, answer)
            return answer, None

    def forget(self, match: Callable[[Hashable], bool]) -> int:
        """Drop every entry whose key satisfies ``match``; returns how many were dropped."""
        with self._lock:
            doomed = [key for key in list(self._entries) if match(key)]
            for key in doomed:
                self._entries.pop(key, None)
        return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._gates.clear()

    def __len__(self) -> int:
        return len(self._entries)
