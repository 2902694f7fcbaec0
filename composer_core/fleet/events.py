"""Event-driven ``run``: react to what happens to the connectors as it happens.

``run`` (:class:`Runner`) keeps two things going:

* the **periodic resync**: a full pass of the source (:func:`~composer_core.fleet.sources.
  run_source_pass`) every ``manager.execute_schedule`` seconds, as before;
* an :class:`EventWatcher` on the backend's event stream (capability ``events``,
  :meth:`~composer_core.workload.Backend.events`), on a connection of its own, filtered by this
  manager's label. A disruptive event (a workload died, was killed, stopped, paused or removed out
  of band) puts its connector in the :class:`Inbox`; after :data:`DEBOUNCE_SECONDS` (a burst of
  events: one reconcile) the connector **alone** is reconciled (:class:`FocusedReconciler`:
  one observation, the plan of that connector, toward the desired state of the last full pass).

A change of the desired state runs a full pass at once: a source that is cheap to ask declares
``poll_seconds`` (:class:`~composer_core.fleet.sources.Source`: the connectors file is asked every
second, which costs a ``stat``; the OpenCTI platform every ``opencti.listing_schedule``, one
GetConnectors) and is asked that often between resyncs; any other at each resync. A stream that
breaks is reopened with a backoff (:data:`RECONNECT_BACKOFF`), from the time of its last event,
and a full pass runs after every reconnect; so does a stream that lags (an event older than
:data:`LAG_SECONDS`: once per episode, until an event arrives on time again). A backend without
events is reconciled by passes only, said once in the log.

A connector reconciled on events :data:`LOOP_RECONCILES` times within :data:`LOOP_WINDOW_SECONDS`
(acted on, or observed ``restarting``: the engine restarts it itself) restarts in a loop: it is
not fought, its event reconciles are held back (doubling, at most one schedule) and the resync
still covers it; the log says so once per loop.

In a steady state the engine sees the open stream (one request per
:data:`~composer_core.workload.EVENT_WINDOW`) and the resync pass, nothing else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from composer_core import redact
from composer_core.engine.labels import LABEL_MANAGER, manager_id
from composer_core.errors import ComposerError
from composer_core.fleet.connectors import Connector
from composer_core.fleet.reconcile import Pass, PlannedStep, plan
from composer_core.fleet.sources import (
    DesiredState,
    Observation,
    Source,
    SourceReconciler,
    SourceUnavailable,
    connector_of,
    poll_seconds,
    run_source_pass,
)
from composer_core.metrics import HEALTH_SCHEDULES, Health, Metrics, recording
from composer_core.pluginmanager import Plugins
from composer_core.settings import Settings
from composer_core.workload import DISRUPTIVE_KINDS, Backend, Observed, WorkloadEvent, has_events

log = logging.getLogger("xtm_composer.run")

#: events of one connector within this are one reconcile
DEBOUNCE_SECONDS = 0.2
#: seconds between two attempts to reopen a broken stream: doubling, at most the last
RECONNECT_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
#: an event older than this when received: the stream lags, a full pass follows
LAG_SECONDS = 10.0
#: this many event reconciles of one connector within the window: a restart loop
LOOP_RECONCILES = 3
LOOP_WINDOW_SECONDS = 60.0
#: the first hold-back of a looping connector; it doubles, at most one schedule
LOOP_HOLD_SECONDS = 5.0
#: a bound on the iterations of the loops below (each waits, so this is never reached in practice)
MAX_ITERATIONS = 10_000_000


def _message(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, ComposerError) else f"{type(exc).__name__}: {exc}"
    return redact.scrub(text)


class Inbox:
    """What the watcher hands the run loop: connectors to reconcile (debounced) and requests
    for a full pass. Thread-safe; :meth:`wait` wakes as soon as something is put."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._changed = threading.Condition()
        #: connector id -> when its reconcile is due
        self._due: dict[str, float] = {}
        self._pass: str | None = None
        self.no_events: str | None = None

    def put(self, event: WorkloadEvent) -> bool:
        """Note ``event``; whether it asks for a reconcile (a disruptive event of a connector)."""
        if event.kind not in DISRUPTIVE_KINDS or not event.connector_id:
            return False
        with self._changed:
            self._due.setdefault(event.connector_id, self._clock() + DEBOUNCE_SECONDS)
            self._changed.notify_all()
        return True

    def request_pass(self, trigger: str) -> None:
        with self._changed:
            self._pass = self._pass or trigger
            self._changed.notify_all()

    def stream_unavailable(self, reason: str) -> None:
        with self._changed:
            self.no_events = reason
            self._changed.notify_all()

    def take_pass(self) -> str | None:
        with self._changed:
            trigger, self._pass = self._pass, None
            return trigger

    def take_due(self, not_before: Mapping[str, float]) -> list[str]:
        """The connectors whose reconcile is due (and not held back until later)."""
        with self._changed:
            now = self._clock()
            due = [c for c, at in self._due.items() if at <= now and not_before.get(c, 0) <= now]
            for connector in due:
                del self._due[connector]
            return sorted(due)

    def clear(self) -> None:
        """A full pass covers every pending connector."""
        with self._changed:
            self._due.clear()

    def next_due(self, not_before: Mapping[str, float]) -> float | None:
        with self._changed:
            times = [max(at, not_before.get(c, 0)) for c, at in self._due.items()]
            return min(times) if times else None

    def wait(self, until: float) -> None:
        """Until ``until`` (clock time), or until something is put."""
        with self._changed:
            remaining = until - self._clock()
            if remaining > 0 and self._pass is None:
                self._changed.wait(min(remaining, 60.0))


class EventWatcher:
    """Follows a backend's event stream on a connection of its own (``connect``) in a daemon
    thread, and puts what it hears into ``inbox``. Reconnects with a backoff, from the time of its
    last event, and asks for a full pass after each reconnect. :meth:`stop` closes the stream."""

    def __init__(self, connect: Callable[[], Backend], labels: Mapping[str, str], inbox: Inbox,
                 stop: threading.Event, metrics: Metrics | None = None) -> None:
        self._connect = connect
        self._labels = dict(labels)
        self._inbox = inbox
        self._stop = stop
        self._metrics = metrics or Metrics()
        self._stream: Any = None
        self._backend: Backend | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="xtm-events")
        #: streams opened (a test and the benchmark read it)
        self.opened = 0

    def start(self) -> EventWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.close()
        self._thread.join(5)

    def _close_backend(self) -> None:
        if self._backend is not None:
            try:
                self._backend.close()
            except Exception:  # noqa: BLE001 - a dead connection is closed as well as may be
                pass
            self._backend = None

    def _lag(self, event: WorkloadEvent, lagging: bool) -> bool:
        """Whether the stream lags after ``event``. The first late event of an episode (older
        than :data:`LAG_SECONDS`) is logged and asks for a full pass; the late events after it
        are part of the same episode (a burst the engine delivers late, each reconciled on its
        own anyway), until one arrives on time again."""
        age = time.time() - event.time if event.time else 0.0
        if age <= LAG_SECONDS:
            if lagging:
                log.info("event stream caught up")
            return False
        if not lagging:
            log.warning("event stream lags (an event %.0fs old): a full pass follows", age)
            self._inbox.request_pass("reconnect")
        return True

    def _run(self) -> None:
        since: float | None = None
        failures = 0
        lagging = False
        try:
            for _ in range(MAX_ITERATIONS):
                if self._stop.is_set():
                    return
                try:
                    if self._backend is None:
                        self._backend = self._connect()
                    if not has_events(self._backend):
                        self._inbox.stream_unavailable(
                            f"{self._backend.name} at {self._backend.endpoint} has no event "
                            "stream")
                        return
                    stream = self._backend.events(self._labels, since)  # type: ignore[attr-defined]
                    with self._lock:
                        self._stream = stream
                    self.opened += 1
                    if self._stop.is_set():
                        stream.close()
                        return
                    if failures:
                        log.info("event stream of %s reconnected: a full pass follows",
                                 self._backend.endpoint)
                        self._metrics.reconnect()
                        self._inbox.request_pass("reconnect")
                        failures = 0
                    for event in stream:
                        self._metrics.event(event.kind)
                        since = max(since or 0.0, event.time)
                        lagging = self._lag(event, lagging)
                        self._inbox.put(event)
                    since = max(since or 0.0, float(stream.until))
                except Exception as exc:  # noqa: BLE001 - the stream never kills run
                    if self._stop.is_set():
                        return
                    failures += 1
                    log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                            "event stream broken, reconnecting: %s", _message(exc))
                    self._close_backend()
                    self._stop.wait(RECONNECT_BACKOFF[min(failures, len(RECONNECT_BACKOFF)) - 1])
        finally:
            self._close_backend()


class FocusedReconciler(SourceReconciler):
    """A source's reconciler that sees and plans only the connectors of ``focus``: the other
    workloads are neither orphans nor touched, and what earlier passes remember of them stays."""

    def __init__(self, backend: Backend, settings: Settings, plugins: Plugins, source: Source,
                 focus: set[str], **options: Any) -> None:
        super().__init__(backend, settings, plugins, source, **options)
        self.focus = focus

    def observe(self) -> list[Observed]:
        return [c for c in super().observe() if connector_of(c) in self.focus]

    def plan(self, connectors: Sequence[Connector]) -> tuple[list[PlannedStep], list[Observed]]:
        observed = self.observe()
        return plan(connectors, observed, self.settings, self.plugins,
                    self.start_failures), observed


def focused_pass(backend: Backend, settings: Settings, plugins: Plugins, source: Source,
                 state: DesiredState, focus: set[str], **options: Any) -> Pass:
    """One pass of the connectors ``focus`` toward ``state`` (the desired state of the last full
    pass): one observation, their actions only. The source hears nothing of it (its next full
    pass reports everything)."""
    focused = DesiredState([c for c in state.connectors if c.id in focus],
                           {c: r for c, r in state.held.items() if c in focus},
                           {c: n for c, n in state.names.items() if c in focus})
    return FocusedReconciler(backend, settings, plugins, source, focus,
                             **options).run_desired(focused)


@dataclass
class LoopGuard:
    """Which connectors restart in a loop, from the times of their event reconciles."""

    schedule: float
    clock: Callable[[], float] = time.monotonic
    reconciles: dict[str, deque[float]] = field(default_factory=dict)
    #: connector id -> no event reconcile before this (clock time)
    held_until: dict[str, float] = field(default_factory=dict)
    holds: dict[str, float] = field(default_factory=dict)

    def reconciled(self, connector: str) -> float | None:
        """Note an event reconcile of ``connector``; the hold-back (seconds) when it loops."""
        now = self.clock()
        times = self.reconciles.setdefault(connector, deque(maxlen=LOOP_RECONCILES))
        times.append(now)
        if len(times) < LOOP_RECONCILES or now - times[0] > LOOP_WINDOW_SECONDS:
            if self.holds.get(connector) and now - times[0] > LOOP_WINDOW_SECONDS:
                del self.holds[connector]  # calm again
            return None
        hold = min(self.holds.get(connector, LOOP_HOLD_SECONDS / 2) * 2,
                   max(self.schedule, LOOP_HOLD_SECONDS))
        self.holds[connector] = hold
        self.held_until[connector] = now + hold
        return hold


def describe_pass(result: Pass) -> str:
    changed = [s for s in result.steps if s.action != "nothing"]
    return f"{len(changed)} actions, {len(result.failed)} failed"


class Runner:
    """The ``run`` loop: full passes on the schedule and on desired-state changes, focused passes
    on events. ``connect``: a new backend connection (the loop's, and the watcher's own);
    ``lock``: a context manager factory of the pass lock for an endpoint (its value has
    ``start_failures``). Ends when ``stop`` is set: the current actions finish first."""

    def __init__(self, source: Source, connect: Callable[[], Backend], settings: Settings,
                 plugins: Plugins, stop: threading.Event, *, lock: Callable[[str], Any],
                 stop_timeout: int = 10, metrics: Metrics | None = None,
                 health: Health | None = None, events: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.connect = connect
        self.settings = settings
        self.plugins = plugins
        self.stop = stop
        self.lock = lock
        self.stop_timeout = stop_timeout
        self.schedule = float(settings.get("manager.execute_schedule"))
        self.metrics = metrics or Metrics()
        self.health = health or Health(HEALTH_SCHEDULES * self.schedule, clock)
        self.use_events = events
        self.clock = clock
        self.inbox = Inbox(clock)
        self.guard = LoopGuard(self.schedule, clock)
        self.watcher: EventWatcher | None = None
        self.backend: Backend | None = None
        self.state: DesiredState | None = None
        self._outage: str | None = None
        self._said_no_events = False
        #: passes run, by trigger (tests and the benchmark read it)
        self.passes: dict[str, int] = {}

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        # the chain, the credential helpers and the platform client count through the
        # process-wide recorder: this run's metrics, while it runs
        with recording(self.metrics):
            self._run()

    def _run(self) -> None:
        poll = poll_seconds(self.source, self.schedule)
        next_resync = self.clock()
        next_poll = self.clock() + (poll or 0)
        if self.use_events:
            labels = {LABEL_MANAGER: manager_id(self.settings)}
            self.watcher = EventWatcher(self.connect, labels, self.inbox, self.stop,
                                        self.metrics).start()
        try:
            for _ in range(MAX_ITERATIONS):
                if self.stop.is_set():
                    break
                self._say_no_events()
                now = self.clock()
                trigger = self.inbox.take_pass()
                state: DesiredState | None = None
                if trigger is None and now >= next_resync:
                    trigger = "resync"
                elif trigger is None and poll is not None and now >= next_poll:
                    next_poll = now + poll
                    state = self._desired()
                    if state is not None and self.state is not None and state != self.state:
                        trigger = "source"
                if trigger is not None:
                    self.full_pass(trigger, state)
                    next_resync = self.clock() + self.schedule
                    continue
                due = self.inbox.take_due(self.guard.held_until)
                if due:
                    self.event_pass(due)
                    continue
                wake = min(next_resync, next_poll if poll is not None else next_resync)
                pending = self.inbox.next_due(self.guard.held_until)
                if pending is not None:
                    wake = min(wake, pending)
                self.inbox.wait(wake)
        finally:
            if self.watcher is not None:
                self.watcher.stop()
            self._drop_backend()

    def _say_no_events(self) -> None:
        if self.inbox.no_events and not self._said_no_events:
            log.warning("%s: reconciling by passes only, every %gs", self.inbox.no_events,
                        self.schedule)
            self._said_no_events = True

    def _desired(self) -> DesiredState | None:
        try:
            state = self.source.desired()
        except SourceUnavailable as exc:
            # logged once per outage, not every pass
            log.log(logging.ERROR if self._outage is None else logging.DEBUG,
                    "pass skipped, nothing changed: %s", redact.scrub(exc.message))
            self._outage = exc.message
            self.health.failed(redact.scrub(exc.message))
            return None
        if self._outage is not None:
            log.info("%s answers again", self.source.describe())
            self._outage = None
        return state

    def _drop_backend(self) -> None:
        if self.backend is not None:
            try:
                self.backend.close()
            except Exception:  # noqa: BLE001
                pass
            self.backend = None

    def _pass(self, trigger: str, body: Callable[[Backend, Any], Pass]) -> Pass | None:
        """Run ``body(backend, lock)`` under the pass lock, recording it; None when it failed."""
        started = self.clock()
        try:
            if self.backend is None:
                self.backend = self.connect()
            with self.lock(self.backend.endpoint) as lock:
                result = body(self.backend, lock)
        except Exception as exc:  # noqa: BLE001 - run never dies of an outage or a plugin bug
            if self.stop.is_set():
                return None
            message = _message(exc)
            log.error("pass failed, retrying in %gs: %s", self.schedule, message)
            self.metrics.pass_failed(trigger, self.clock() - started)
            self.health.failed(message)
            self._drop_backend()
            return None
        self.passes[trigger] = self.passes.get(trigger, 0) + 1
        self.metrics.pass_done(trigger, result, self.clock() - started)
        self.health.succeeded()
        return result

    def full_pass(self, trigger: str, state: DesiredState | None = None) -> Pass | None:
        """A pass of the whole source; every pending event is covered by it."""
        if state is None:
            state = self._desired()
            if state is None:
                self.metrics.pass_failed(trigger, 0.0)
                return None
        self.inbox.clear()
        listening = _Listening(self.source)

        def body(backend: Backend, lock: Any) -> Pass:
            return run_source_pass(backend, self.settings, self.plugins, listening,  # type: ignore[arg-type]
                                   state=state, stop_event=self.stop,
                                   stop_timeout=self.stop_timeout,
                                   start_failures=lock.start_failures)

        result = self._pass(trigger, body)
        if result is not None:
            self.state = state
            log.info("pass done (%s): %s", trigger, describe_pass(result))
            if listening.containers is not None:
                self.metrics.connectors({c.id: c.status for c in state.connectors},
                                        listening.containers)
        return result

    def event_pass(self, connectors: list[str]) -> Pass | None:
        """A pass of ``connectors`` alone, toward the desired state of the last full pass."""
        state = self.state
        if state is None:  # no full pass yet: the next one covers them
            return None
        focus = set(connectors)

        def body(backend: Backend, lock: Any) -> Pass:
            return focused_pass(backend, self.settings, self.plugins, self.source, state, focus,
                                stop_event=self.stop, stop_timeout=self.stop_timeout,
                                start_failures=lock.start_failures)

        result = self._pass("event", body)
        if result is None:
            return None
        acted = {s.id for s in result.steps if s.action != "nothing"}
        # one the engine restarts itself (a pod in CrashLoopBackOff, docker's restart policy)
        # needs no action, but its every death is an event: it counts toward the loop as well
        restarting = {s.id for s in result.steps
                      if s.container is not None and s.container.state == "restarting"}
        for connector in sorted(acted | restarting):
            hold = self.guard.reconciled(connector)
            if hold is not None:
                self.metrics.backoff()
                log.warning("connector %s is restarting: %d reconciles on events within %gs; "
                            "not fighting it, its events wait %gs (the resync still covers it)",
                            connector, LOOP_RECONCILES, LOOP_WINDOW_SECONDS, hold)
        if acted:
            log.info("event pass (%s): %s", ", ".join(connectors), describe_pass(result))
        return result


class _Listening:
    """The source, and what the last pass observed of its workloads (for the metrics)."""

    def __init__(self, source: Source) -> None:
        self._source = source
        self.containers: list[Observed] | None = None

    def observe(self, observation: Observation) -> None:
        self.containers = list(observation.containers)
        self._source.observe(observation)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._source, attr)
