"""Event-driven ``run`` on the kit's in-memory backend: reconcile a connector alone on its events,
debounced, not fighting a restart loop, reconnecting a broken stream with a full pass, falling
back to passes without events, and a pass at once when the desired state changes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_MANAGER
from composer_core.errors import RuntimeUnavailable
from composer_core.fleet.events import EventWatcher, Inbox, Runner
from composer_core.fleet.lock import PassLock
from composer_core.settings import Settings
from composer_core.testing import InMemoryBackend, wait_for
from composer_core.workload import WorkloadEvent
from composer_plugins.file_source import FileSource
from tests.engine_helpers import unique

IMAGE = "docker.io/library/busybox:1.36"
BOUND = 10.0  # seconds a reaction may take in a test (the speed figure is bench/events.py's)


def fleet(path: Path, ids: list[str], status: str = "started") -> None:
    path.write_text(yaml.safe_dump({"connectors": [
        {"id": i, "name": i, "image": IMAGE, "status": status} for i in ids]}))


class Harness:
    """A Runner in a thread over an in-memory backend and a connectors file."""

    def __init__(self, backend: InMemoryBackend, settings: Settings, plugins: Any,
                 path: Path, **options: Any) -> None:
        self.backend = backend
        self.stop = threading.Event()
        manager = str(settings.get("manager.id"))
        self.runner = Runner(FileSource(str(path)), lambda: backend, settings, plugins, self.stop,
                             lock=lambda endpoint: PassLock(manager, endpoint,
                                                            stop_event=self.stop),
                             stop_timeout=1, **options)
        self.thread = threading.Thread(target=self.runner.run, daemon=True)

    def ours(self) -> dict[str, str]:
        """The manager's containers and their status (read without an engine request)."""
        manager = str(self.runner.settings.get("manager.id"))
        with self.backend.runtime._lock:
            return {c.name: c.status for c in self.backend.runtime.containers.values()
                    if c.labels.get(LABEL_MANAGER) == manager}

    def passes(self, trigger: str) -> int:
        return self.runner.passes.get(trigger, 0)


@pytest.fixture
def harness(make_settings: Callable[..., Settings], plugins: Any,
            tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(ids: list[str], *, backend: InMemoryBackend | None = None, schedule: float = 60,
             **options: Any) -> Harness:
        path = tmp_path / "connectors.yaml"
        fleet(path, ids)
        settings = make_settings({"manager.id": unique("xtm-events"),
                                  "manager.execute_schedule": schedule})
        h = Harness(backend or InMemoryBackend(), settings, plugins, path, **options)
        h.path = path  # type: ignore[attr-defined]
        made.append(h)
        h.thread.start()
        return h

    yield make
    for h in made:
        h.stop.set()
        h.thread.join(15)
        assert not h.thread.is_alive()


@pytest.mark.parametrize("how", ["kill", "stop", "remove"])
def test_a_connector_disrupted_out_of_band_is_back_on_its_event(harness, how: str) -> None:
    h = harness(["ev-a", "ev-b"])
    wait_for(lambda: h.ours() == {"ev-a": "running", "ev-b": "running"}, BOUND, "deployed")
    wait_for(lambda: h.runner.watcher is not None and h.runner.watcher.opened, BOUND, "stream")
    other = {c.name: c.id for c in h.backend.runtime.containers.values()}["ev-b"]
    h.backend.reset_counts()
    h.backend.out_of_band(how, "ev-a")
    wait_for(lambda: h.ours().get("ev-a") == "running", BOUND, f"ev-a back after {how}")
    wait_for(lambda: h.passes("event") == 1, BOUND, "one event pass")
    # the burst (kill, die, stop / destroy) was one reconcile, of ev-a alone: one observation,
    # ev-b untouched, and no full pass (the schedule is 60 s)
    assert h.passes("resync") == 1 and h.passes("source") == 0
    assert h.backend.requests["list"] == 1
    assert not [target for kind, target in h.backend.runtime.journal
                if target in ("ev-b", other)]
    assert {c.name: c.id for c in h.backend.runtime.containers.values()}["ev-b"] == other


def test_steady_state_costs_nothing_but_the_stream(harness) -> None:
    h = harness(["ev-s"])
    wait_for(lambda: h.ours() == {"ev-s": "running"}, BOUND, "deployed")
    wait_for(lambda: h.runner.watcher is not None and h.runner.watcher.opened, BOUND, "stream")
    h.backend.reset_counts()
    h.stop.wait(2.5)  # more than the source polls and the debounce, less than the schedule
    assert dict(h.backend.requests) == {}


def test_an_unmanaged_workload_is_ignored(harness) -> None:
    h = harness(["ev-u"])
    wait_for(lambda: h.ours() == {"ev-u": "running"}, BOUND, "deployed")
    wait_for(lambda: h.runner.watcher is not None and h.runner.watcher.opened, BOUND, "stream")
    # not ours, though it names a connector of the file
    h.backend.add_unmanaged("stranger", labels={LABEL_CONNECTOR: "ev-u"})
    h.backend.out_of_band("remove", "stranger")
    h.backend.out_of_band("kill", "ev-u")  # events are in order: once this one is handled...
    wait_for(lambda: h.ours().get("ev-u") == "running", BOUND, "ev-u back")
    wait_for(lambda: h.passes("event") >= 1, BOUND, "event pass")
    assert h.passes("event") == 1  # ...the stranger's caused none


def test_a_restart_loop_is_not_fought(harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "xtm_composer")
    h = harness(["ev-loop"])
    wait_for(lambda: h.ours() == {"ev-loop": "running"}, BOUND, "deployed")
    wait_for(lambda: h.runner.watcher is not None and h.runner.watcher.opened, BOUND, "stream")
    for n in range(1, 4):
        h.backend.out_of_band("kill", "ev-loop")
        wait_for(lambda n=n: h.ours().get("ev-loop") == "running" and h.passes("event") == n,
                 BOUND, f"restart {n}")
    # the loop guard notes a reconcile (and says so) after its pass is counted
    wait_for(lambda: "connector ev-loop is restarting" in caplog.text, BOUND, "held back")
    held = h.runner.guard.held_until["ev-loop"]
    h.backend.out_of_band("kill", "ev-loop")  # the fourth death waits for its hold-back
    h.stop.wait(1.0)
    assert h.ours()["ev-loop"] == "exited" and h.passes("event") == 3
    assert held > h.runner.clock()


def test_a_broken_stream_reconnects_and_runs_a_full_pass(harness) -> None:
    # stands in for an engine restarted under `run`: the in-memory engine cuts its streams
    h = harness(["ev-r"])
    wait_for(lambda: h.ours() == {"ev-r": "running"}, BOUND, "deployed")
    wait_for(lambda: h.runner.watcher is not None and h.runner.watcher.opened, BOUND, "stream")
    h.backend.fail_request("events", RuntimeUnavailable("the engine is restarting"), times=2)
    assert h.backend.runtime.cut_streams() == 1
    h.backend.out_of_band("remove", "ev-r")  # while the stream is down: not lost
    wait_for(lambda: h.passes("reconnect") == 1, BOUND, "a pass after the reconnect")
    wait_for(lambda: h.ours().get("ev-r") == "running", BOUND, "ev-r back")
    assert h.runner.watcher is not None and h.runner.watcher.opened == 2


class NoEvents(InMemoryBackend):
    capabilities = frozenset({"pull"})


def test_without_events_it_falls_back_to_passes_and_says_so_once(
        harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "xtm_composer")
    backend = NoEvents()
    backend.capabilities = frozenset({"pull"})
    h = harness(["ev-n"], backend=backend, schedule=0.3)
    wait_for(lambda: h.passes("resync") >= 4, BOUND, "passes")
    assert caplog.text.count("reconciling by passes only") == 1
    assert backend.requests["events"] == 0


def test_a_changed_file_runs_a_pass_at_once(harness) -> None:
    h = harness(["ev-f"])
    wait_for(lambda: h.ours() == {"ev-f": "running"}, BOUND, "deployed")
    fleet(h.path, ["ev-f", "ev-g"])  # type: ignore[attr-defined]
    wait_for(lambda: h.ours() == {"ev-f": "running", "ev-g": "running"}, BOUND, "ev-g deployed")
    # a pass is counted when it ends, a moment after its work is visible on the engine
    wait_for(lambda: h.passes("source") == 1, BOUND, "the source pass counted")
    assert h.passes("resync") == 1


def test_the_inbox_debounces_and_ignores_what_is_not_disruptive() -> None:
    now = [100.0]
    inbox = Inbox(lambda: now[0])
    assert not inbox.put(WorkloadEvent("x", "c1", "started"))
    assert not inbox.put(WorkloadEvent("x", None, "removed"))  # no connector: not ours
    for kind in ("killed", "died", "removed"):
        assert inbox.put(WorkloadEvent("x", "c1", kind))
    assert inbox.take_due({}) == []  # within the debounce
    now[0] += 1
    assert inbox.take_due({"c1": 200.0}) == []  # held back
    assert inbox.take_due({}) == ["c1"] and inbox.take_due({}) == []


class _LateStream:
    """An event stream delivering a burst late (its events minutes old), then on time again."""

    def __init__(self, events: list[WorkloadEvent]) -> None:
        self.events, self.until = events, time.time() + 300

    def __iter__(self):
        yield from self.events

    def close(self) -> None:
        pass


def test_a_lagging_stream_asks_one_pass_per_episode_not_one_per_late_event(caplog) -> None:
    now = time.time()
    late = [WorkloadEvent(f"c{i}", f"c{i}", "died", time=now - 31) for i in range(7)]
    on_time = [WorkloadEvent("d", "d", "died", time=now)]
    again = [WorkloadEvent("e", "e", "died", time=now - 40)]
    streams = [_LateStream(late + on_time + again)]

    class Backend:
        name, endpoint, capabilities = "late", "test", frozenset({"events"})

        def events(self, labels, since=None, window=300.0):
            if not streams:
                stop.wait(10)
                raise RuntimeUnavailable("the test's stream is over")
            return streams.pop()

        def close(self) -> None:
            pass

    inbox, stop = Inbox(), threading.Event()
    requested: list[str] = []
    real = inbox.request_pass
    inbox.request_pass = lambda trigger: (requested.append(trigger), real(trigger))  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO):
        watcher = EventWatcher(Backend, {LABEL_MANAGER: "m"}, inbox, stop).start()
        wait_for(lambda: len(inbox._due) == 9, BOUND, "every event in the inbox")
        stop.set()
        watcher.stop()
    # two episodes (seven late events, then one more after an event on time): two passes, two lines
    assert requested == ["reconnect", "reconnect"]
    assert caplog.text.count("event stream lags") == 2 and caplog.text.count("caught up") == 1
