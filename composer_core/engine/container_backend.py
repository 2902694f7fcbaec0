"""``ContainerBackend``: the workload contract over a container-level :class:`Runtime`.

docker and podman keep their container-level :class:`~composer_core.types.Runtime` (pull, create,
start, rename, inspect, list...); their plugins' ``connect(settings)`` returns
``ContainerBackend(runtime)``, which implements :class:`~composer_core.workload.Backend` with the
deploy flow of :mod:`composer_core.engine.deploy`:

* :meth:`~ContainerBackend.observe` is ONE list call. Docker's and Podman's lists carry no restart
  count, so a container the list shows may be restarting (Docker: ``restarting``; Podman: started
  long after it was created, recently) is inspected for it: a steady fleet costs no extra call.
* :meth:`~ContainerBackend.apply` pulls with exactly the workload's one credential (each image once
  between two observations: a pass of twenty connectors of one image pulls it once, and a failed
  pull fails them all without another attempt), creates with the restart policy
  ``unless-stopped`` and a per-call creation label (a failed create removes only its own half-made
  container), or replaces with rollback (the new container runs before the old one stops); a name
  taken by a container of someone else is refused, never touched. Registry errors are explained
  with the workload's credential trace.
* :meth:`~ContainerBackend.set_state`, :meth:`~ContainerBackend.remove` and
  :meth:`~ContainerBackend.logs` act on the container by id.

``runtime`` stays reachable (capability ``pull``): the single-host ``pull`` command and tests use it.

Capability ``events`` when the runtime has an ``events(labels, since, until)`` call (docker and
podman: their ``/events``, filtered by label and type container): :meth:`ContainerBackend.events`
turns the engine's messages into :class:`~composer_core.workload.WorkloadEvent` s
(:class:`ContainerEvents`, which an orchestrator on docker's ``/events`` reuses with a
translation of its own: swarm).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any, Protocol

from composer_core.engine.deploy import ContainerDeployer
from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_MANAGER
from composer_core.errors import ComposerError, RegistryError, RuntimeUnavailable, UsageError
from composer_core.timestamps import seconds_since
from composer_core.types import ContainerInfo, ContainerSpec, PullProgress, Runtime
from composer_core.workload import (
    EVENT_WINDOW,
    Applied,
    Backend,
    EventKind,
    Observed,
    ObservedState,
    Workload,
    WorkloadEvent,
    WorkloadState,
)

#: a container listed this many restarts, or as restarting, is inspected for its restart count
LOOP_RESTARTS = 3
LOOP_UPTIME_SECONDS = 300
#: a container started this long after its creation was started again (by the engine or a user)
RESTARTED_AFTER_SECONDS = 2


def observed_state(status: str) -> ObservedState:
    """A container status (running, restarting, exited, created, paused, dead...) as a state."""
    if status == "running":
        return "started"
    if status == "restarting":
        return "restarting"
    if status == "dead":
        return "failed"
    return "stopped"


def observed_from(info: ContainerInfo) -> Observed:
    """What the contract reports of a container: its status is the ``detail`` (and so the
    ``status`` of ``ps --json``)."""
    return Observed(id=info.id, name=info.name, labels=dict(info.labels),
                    state=observed_state(info.status), image=info.image,
                    restart_count=info.restart_count, started_at=info.started_at,
                    detail=info.status)


def container_of(observed: Observed) -> ContainerInfo:
    """The container an :class:`Observed` of this backend stands for (what the deploy flow needs
    of a current container: id, name, status, labels)."""
    return ContainerInfo(id=observed.id, name=observed.name, image=observed.image,
                         status=observed.status, labels=dict(observed.labels),
                         restart_count=observed.restart_count, started_at=observed.started_at)


def spec_of(workload: Workload) -> ContainerSpec:
    """The container a workload is: its labels as the core made them, restart policy
    ``unless-stopped`` (the engine restarts a connector that exits, unless stopped on purpose)."""
    return ContainerSpec(name=workload.name, image=workload.image.ref.normalized(),
                         env=dict(workload.env), labels=dict(workload.labels),
                         command=workload.command)


def may_be_restarting(info: ContainerInfo) -> bool:
    """Whether the list shows that ``info`` may be restarting in a loop (worth an inspect)."""
    if info.status == "restarting" or info.restart_count > LOOP_RESTARTS:
        return True
    if info.restarted_after is None or info.restarted_after < RESTARTED_AFTER_SECONDS:
        return False
    uptime = seconds_since(info.started_at)
    return uptime is None or uptime < LOOP_UPTIME_SECONDS


#: docker's and podman's container event actions, as event kinds
EVENT_KINDS: dict[str, EventKind] = {
    "die": "died", "died": "died", "oom": "died", "kill": "killed", "stop": "stopped",
    "destroy": "removed", "remove": "removed", "pause": "paused", "start": "started",
    "restart": "started", "create": "created",
}
#: a stream that ends this long before its window does was cut, not ended by the engine
EARLY_END_SECONDS = 2.0


class RawEvents(Protocol):
    """What a runtime's ``events`` call returns: the engine's decoded messages (docker's
    format: ``Type``, ``Action``, ``id``, ``Actor.Attributes``, ``time``), closable from any
    thread."""

    def __iter__(self) -> Iterator[Mapping[str, Any]]: ...
    def close(self) -> None: ...


def event_of(message: Mapping[str, Any]) -> WorkloadEvent | None:
    """A container message of docker's or podman's ``/events`` as a workload event (``None``
    for another type). Its attributes are the container's labels plus ``name`` and ``image``:
    only the name and the connector label are kept."""
    if message.get("Type", "container") != "container":
        return None
    action = str(message.get("Action") or message.get("status") or "")
    found = message.get("Actor")
    actor: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    found = actor.get("Attributes")
    attributes: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    connector = attributes.get(LABEL_CONNECTOR)
    # "exec_start: sh -c ...", "health_status: healthy": the word before the colon
    word = action.split(":", 1)[0].strip()
    return WorkloadEvent(name=str(attributes.get("name") or ""),
                         connector_id=str(connector) if connector else None,
                         kind=EVENT_KINDS.get(word, "other"), action=word,
                         id=str(message.get("id") or actor.get("ID") or ""),
                         time=event_time(message))


def event_time(message: Mapping[str, Any]) -> float:
    """When a message of docker's ``/events`` happened (engine clock, seconds since the epoch)."""
    stamp = message.get("timeNano")
    return int(stamp) / 1e9 if isinstance(stamp, int) else float(message.get("time") or 0)


def event_bounds(since: float | None, window: float) -> tuple[int, int]:
    """``(start, until)`` of a stream from ``since`` (``None``: now) for ``window`` seconds, in
    the whole seconds docker's ``/events`` takes. Always a start: without one, docker and podman
    replay their whole history."""
    now = time.time()
    return math.floor(now if since is None else since), math.ceil(now + window)


class ContainerEvents:
    """An :class:`~composer_core.workload.EventStream` over a runtime's raw events: ends at its
    window (``until``) or on :meth:`close`; a stream the engine cut before its window raises
    RuntimeUnavailable, as a transport error does. ``translate``: a message as a workload event,
    ``None`` to skip it (:func:`event_of`: a container engine's)."""

    def __init__(self, raw: RawEvents, *, until: float, endpoint: str,
                 clock: Callable[[], float] = time.time,
                 translate: Callable[[Mapping[str, Any]], WorkloadEvent | None] = event_of,
                 ) -> None:
        self.until = until
        self._raw = raw
        self._translate = translate
        self._endpoint = endpoint
        self._clock = clock
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[WorkloadEvent]:
        messages: Iterable[Mapping[str, Any]] = self._raw
        try:
            for message in messages:
                if self._closed.is_set():
                    return
                if isinstance(message, Mapping):
                    event = self._translate(message)
                    if event is not None:
                        yield event
        except RuntimeUnavailable:
            if self._closed.is_set():
                return
            raise
        if not self._closed.is_set() and self._clock() < self.until - EARLY_END_SECONDS:
            raise RuntimeUnavailable(f"the event stream of {self._endpoint} ended before its "
                                     "window: the engine went away or restarted")

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._raw.close()
        except Exception:  # noqa: BLE001 - closing a dead stream is no error
            pass


class ContainerBackend:
    """:class:`~composer_core.workload.Backend` over one connected container-level ``runtime``.

    ``stop_timeout``: seconds a container may take to stop (a stop, the old container of a
    replacement). Thread-safe: the fleet applies several workloads at once."""

    capabilities: frozenset[str] = frozenset({"pull"})

    def __init__(self, runtime: Runtime, *, stop_timeout: int = 10) -> None:
        self.runtime = runtime
        if callable(getattr(runtime, "events", None)):
            self.capabilities = self.capabilities | {"events"}
        self.name = runtime.name
        self.endpoint = runtime.endpoint
        self.stop_timeout = stop_timeout
        self._lock = threading.Lock()
        self._deployers: dict[str, ContainerDeployer] = {}
        self._failed_pulls: dict[str, ComposerError] = {}

    # --- observe ----------------------------------------------------------------------------

    def observe(self, labels: Mapping[str, str]) -> list[Observed]:
        with self._lock:  # a new observation: the images are pulled again by the next applies
            self._deployers.clear()
            self._failed_pulls.clear()
        found = []
        for info in self.runtime.list(dict(labels)):
            if may_be_restarting(info):
                info = self.runtime.inspect(info.id) or info
            found.append(observed_from(info))
        return found

    # --- apply ------------------------------------------------------------------------------

    def _deployer(self, manager: str) -> ContainerDeployer:
        with self._lock:
            deployer = self._deployers.get(manager)
            if deployer is None:
                deployer = ContainerDeployer(self.runtime, manager, stop_timeout=self.stop_timeout)
                self._deployers[manager] = deployer
            return deployer

    def apply(self, workload: Workload, current: Observed | None, *,
              progress: Callable[[PullProgress], None] | None = None) -> Applied:
        manager = workload.labels.get(LABEL_MANAGER)
        if not manager:
            raise UsageError(f"workload {workload.name!r} has no {LABEL_MANAGER} label",
                             hint="this is a bug of the caller: workloads carry the core's labels")
        if current is not None and current.config_hash == workload.config_hash \
                and current.name == workload.name:
            # the same container: only its state differs
            observed = self.set_state(current, workload.state)
            return Applied("started" if workload.state == "started" else "stopped", observed)
        reference = workload.image.ref.normalized()
        with self._lock:
            failed = self._failed_pulls.get(reference)
        if failed is not None:
            raise failed
        deployer = self._deployer(manager)
        existing = container_of(current) if current is not None else None
        try:
            result = deployer.put(workload.image, spec_of(workload), existing,
                                  start=workload.state == "started",
                                  resolution=workload.resolution, tls=workload.tls,
                                  progress=progress, announce=False)
        except RegistryError as exc:  # only the pull raises these: the image fails everywhere
            with self._lock:
                self._failed_pulls[reference] = exc
            raise
        detail = f"image {result.container.image}" if result.action != "unchanged" else (
            "deployed meanwhile by another pass")
        return Applied(result.action, observed_from(result.container), detail)

    # --- state, removal, logs ---------------------------------------------------------------

    def set_state(self, current: Observed, state: WorkloadState) -> Observed:
        if state == "started":
            self.runtime.start(current.id)
            return replace(current, state="started", detail="running")
        self.runtime.stop(current.id, timeout=self.stop_timeout)
        return replace(current, state="stopped", detail="exited")

    def remove(self, current: Observed) -> None:
        if LABEL_MANAGER not in current.labels:
            raise UsageError(f"{current.name!r} carries no {LABEL_MANAGER} label: it is not "
                             "removed", hint="only workloads this manager observed are removed")
        self.runtime.remove(current.id, force=True)

    def logs(self, current: Observed, tail: int) -> str:
        return self.runtime.logs(current.id, tail=tail)

    def events(self, labels: Mapping[str, str], since: float | None = None,
               window: float = EVENT_WINDOW) -> ContainerEvents:
        """The container events of the workloads carrying ``labels`` (capability ``events``),
        from ``since`` (whole seconds: a replay may repeat the events of its first second) until
        ``window`` seconds from now (``since`` None: from now). ONE request, held open."""
        opener = getattr(self.runtime, "events", None)
        if opener is None:
            raise UsageError(f"{self.name} has no event stream",
                             hint="it is reconciled by passes only")
        start, until = event_bounds(since, window)
        raw = opener(dict(labels), start, until)
        return ContainerEvents(raw, until=until, endpoint=self.endpoint)

    def close(self) -> None:
        self.runtime.close()


def runtime_of(backend: Backend, command: str) -> Runtime:
    """The container-level runtime behind ``backend``, for a single-host command (``pull``);
    a :class:`UsageError` naming the backend where there is none."""
    runtime = getattr(backend, "runtime", None)
    if "pull" not in backend.capabilities or runtime is None:
        raise UsageError(f"`{command}` needs a single container engine; {backend.name} at "
                         f"{backend.endpoint} has none",
                         hint="its nodes pull when a workload is applied: use `deploy` or "
                              "`apply`, or --runtime docker / podman")
    return runtime  # type: ignore[no-any-return]
