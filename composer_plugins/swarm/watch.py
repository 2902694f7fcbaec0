"""Watching new tasks for several applies at once, with one request per poll for all of them.

A pass applies connectors ``manager.max_parallel`` at a time, and each apply watches its service's
new task for a few seconds. Polled separately, N applies would send N ``GET /tasks`` per poll to the
manager; :class:`TaskWatcher` sends one, filtered on every service being watched, and shares the
answer between the threads waiting on it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Fetch = Callable[[list[str]], list[dict[str, Any]]]


class TaskWatcher:
    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._lock = threading.Lock()
        self._watched: Counter[str] = Counter()
        self._fetched_at = 0.0
        self._fresh: frozenset[str] = frozenset()
        self._tasks: dict[str, list[dict[str, Any]]] = {}

    @contextmanager
    def watching(self, service_id: str) -> Iterator[None]:
        with self._lock:
            self._watched[service_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._watched[service_id] -= 1
                if self._watched[service_id] <= 0:
                    del self._watched[service_id]

    def tasks(self, service_id: str, max_age: float) -> list[dict[str, Any]]:
        """The tasks of ``service_id`` (being watched), at most ``max_age`` seconds old: the answer
        of the last poll if it is recent enough and covered this service, else a new poll of every
        watched service (one request)."""
        with self._lock:
            now = time.monotonic()
            if service_id not in self._fresh or now - self._fetched_at >= max_age:
                ids = sorted(set(self._watched) | {service_id})
                grouped: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
                for task in self._fetch(ids):
                    grouped.setdefault(str(task.get("ServiceID")), []).append(task)
                self._tasks, self._fresh, self._fetched_at = grouped, frozenset(ids), now
            return list(self._tasks.get(service_id, []))
