"""The contract test kit: an in-memory backend, and the suite every backend passes.

* :class:`InMemoryBackend`: a faithful :class:`~composer_core.workload.Backend` without an engine.
  It is the core's :class:`~composer_core.engine.container_backend.ContainerBackend` (the very
  deploy flow docker and podman use: one pull per image per pass, creation label, replace with
  rollback) over :class:`InMemoryRuntime`, an engine that holds its containers in a dict. It
  counts the backend calls (``calls``) and the engine requests (``requests``: what would be HTTP
  requests), fails a given call or request with a given :class:`ComposerError` on demand
  (:meth:`InMemoryBackend.fail`, :meth:`InMemoryBackend.fail_request`), simulates registries that
  require credentials (:meth:`InMemoryRuntime.require_auth`) and containers restarting in a loop
  (:meth:`InMemoryBackend.crash_loop`). It has an event stream (capability ``events``: docker's
  messages for every create, start, stop and remove), containers killed, stopped or removed
  behind the manager's back (:meth:`InMemoryBackend.out_of_band`) and streams the engine cuts
  (:meth:`InMemoryRuntime.cut_streams`, an engine restarting). The fleet's decisions and the
  deploy's rollback are unit-tested on it.
* :class:`BackendContract`: the suite any backend runs against its real engine. Subclass it in a
  test module and provide two fixtures: ``backend_factory`` (a callable returning a connected
  backend; the fixture closes what it opened) and ``contract_env`` (a :class:`ContractEnv`: the
  manager id, an image, a registry that requires credentials, how to make a workload the manager
  does not own). :meth:`BackendContract.workload_factory` builds the workloads the tests apply::

      class TestMyBackend(BackendContract):
          @pytest.fixture
          def backend_factory(self):
              opened = []
              yield lambda: opened.append(MyBackend.connect(...)) or opened[-1]
              for backend in opened:
                  backend.close()

          @pytest.fixture
          def contract_env(self):
              yield ContractEnv(manager=unique_id(), image="registry:5000/app:1", ...)
              ...  # remove every workload labelled with that manager

Nothing here imports pytest at module level: the kit ships with the core, pytest comes with the
tests that use it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from composer_core.auth.chain import Outcome, Resolution, Step
from composer_core.engine.container_backend import ContainerBackend
from composer_core.engine.deploy import config_hash
from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_HASH, LABEL_MANAGER
from composer_core.engine.tls import TlsDecision
from composer_core.engine.workloads import is_current
from composer_core.errors import (
    AuthenticationRequired,
    ComposerError,
    ContainerError,
    ContainerNotFound,
    CredentialsRejected,
    ImageNotFound,
    RuntimeUnavailable,
)
from composer_core.images.reference import ImageRef
from composer_core.types import (
    Anonymous,
    AnyCredentials,
    ContainerInfo,
    ContainerSpec,
    Credentials,
    PullProgress,
    ResolvedImage,
)
from composer_core.workload import (
    Applied,
    Backend,
    Observed,
    Workload,
    WorkloadEvent,
    WorkloadState,
    has_events,
)

#: the env variable whose lines a workload of the kit prints when it starts (the in-memory engine
#: runs nothing: a container "prints" this variable's lines when it starts)
OUTPUT_VARIABLE = "XTM_CONTRACT_OUTPUT"
#: a command that prints OUTPUT_VARIABLE, then waits and exits at once on SIGTERM
PRINT_AND_WAIT = ("sh", "-c", f'printf "%s\\n" "${OUTPUT_VARIABLE}"; '
                  "trap 'exit 0' TERM; sleep 3600 & wait")
#: in-memory: a command whose program lives here fails to start, as a missing binary does
BROKEN_PROGRAM_PREFIX = "/no/such/"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- an engine in memory ---------------------------------------------------------------------


@dataclass
class _Container:
    id: str
    name: str
    image: str
    env: dict[str, str]
    labels: dict[str, str]
    command: tuple[str, ...] | None
    restart_policy: str
    status: str = "created"
    restart_count: int = 0
    started_at: str | None = None
    output: list[str] = field(default_factory=list)

    def info(self, *, listed: bool = False) -> ContainerInfo:
        # like Docker's list, the in-memory list carries no restart count: only inspect does
        return ContainerInfo(id=self.id, name=self.name, image=self.image, status=self.status,
                             labels=dict(self.labels),
                             restart_count=0 if listed else self.restart_count,
                             started_at=self.started_at)


class _MemoryEvents:
    """One open event stream of :class:`InMemoryRuntime`: its messages from ``since`` on, until
    ``until``, a :meth:`close`, or :meth:`InMemoryRuntime.cut_streams`."""

    def __init__(self, runtime: InMemoryRuntime, labels: Mapping[str, str], since: float,
                 until: float) -> None:
        self._runtime = runtime
        self._labels = dict(labels)
        self._since = since
        self._until = until
        self._closed = False
        self._cut = False

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        runtime = self._runtime
        index = 0
        with runtime._events_changed:
            # bounded: each wait ends at the window's end at the latest
            for _ in range(1_000_000):
                while index < len(runtime.event_log):
                    message = runtime.event_log[index]
                    index += 1
                    attributes = message["Actor"]["Attributes"]
                    if message["time"] >= self._since and all(
                            attributes.get(k) == v for k, v in self._labels.items()):
                        yield message
                if self._closed:
                    return
                if self._cut:
                    raise RuntimeUnavailable(f"the event stream of {runtime.endpoint} broke: "
                                             "the engine closed it")
                remaining = self._until - time.time()
                if remaining <= 0:
                    return
                runtime._events_changed.wait(min(remaining, 1.0))

    def close(self) -> None:
        with self._runtime._events_changed:
            self._closed = True
            self._runtime._events_changed.notify_all()


class InMemoryRuntime:
    """A container-level :class:`~composer_core.types.Runtime` holding its containers in a dict.

    It behaves as Docker does where the core relies on it: names are unique (a create or rename
    to a taken name fails with "already in use"), a running container is removed only with
    ``force``, ``list`` carries no restart count (``inspect`` does), containers are found by name
    or id. Registries answer as :meth:`require_auth` and :meth:`missing` configure; every other
    image pulls. Every request is counted in ``requests``; :meth:`fail` makes the next ones of a
    kind raise the error given. Thread-safe."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.endpoint = f"memory://{name}"
        self.containers: dict[str, _Container] = {}
        self.images: dict[str, str] = {}
        #: registry -> (username, password) it accepts; absent: anonymous pulls work
        self.auth: dict[str, tuple[str, str]] = {}
        self.absent: set[str] = set()
        #: every pull: (reference, the credentials sent)
        self.pulls: list[tuple[str, AnyCredentials]] = []
        self.requests: Counter[str] = Counter()
        #: every request in order: (kind, the name or id it named)
        self.journal: list[tuple[str, str]] = []
        self._failures: dict[str, list[ComposerError | None]] = {}
        self._lock = threading.RLock()
        #: every container event, in docker's format (``Type``, ``Action``, ``id``, ``Actor``)
        self.event_log: list[dict[str, Any]] = []
        self._events_changed = threading.Condition(self._lock)
        self._streams: list[_MemoryEvents] = []

    # --- configuring it ---------------------------------------------------------------------

    def require_auth(self, registry: str, username: str, password: str) -> None:
        """``registry`` refuses anonymous pulls and accepts only this username and password."""
        self.auth[registry] = (username, password)

    def missing(self, reference: str) -> None:
        """Pulling ``reference`` (normalised) fails: the tag does not exist."""
        self.absent.add(reference)

    def fail(self, request: str, error: ComposerError, times: int = 1, *, after: int = 0) -> None:
        """After ``after`` more requests of kind ``request`` (``pull``, ``create``, ``start``,
        ``stop``, ``remove``, ``rename``, ``inspect``, ``list``, ``logs``) succeeded, the next
        ``times`` raise ``error``."""
        with self._lock:
            self._failures.setdefault(request, []).extend([None] * after + [error] * times)

    def _request(self, kind: str, target: str = "") -> None:
        with self._lock:
            self.requests[kind] += 1
            self.journal.append((kind, target))
            pending = self._failures.get(kind)
            if pending:
                error = pending.pop(0)
                if error is not None:
                    raise error

    def _emit(self, action: str, container: _Container) -> None:
        with self._events_changed:
            now = time.time()
            self.event_log.append({
                "Type": "container", "Action": action, "status": action, "id": container.id,
                "Actor": {"ID": container.id,
                          "Attributes": {**container.labels, "name": container.name,
                                         "image": container.image}},
                "time": int(now), "timeNano": int(now * 1e9)})
            self._events_changed.notify_all()

    def cut_streams(self) -> int:
        """Every open event stream breaks (RuntimeUnavailable), as when the engine restarts;
        how many were open."""
        with self._events_changed:
            open_ = [s for s in self._streams if not s._closed]
            for stream in open_:
                stream._cut = True
            self._streams = []
            self._events_changed.notify_all()
            return len(open_)

    def events(self, labels: Mapping[str, str], since: int | None,
               until: int) -> _MemoryEvents:
        """The event stream (one request ``events``): messages of containers carrying
        ``labels`` from ``since`` on, until ``until`` (seconds since the epoch)."""
        with self._lock:
            self._request("events")
            stream = _MemoryEvents(self, labels, time.time() if since is None else since, until)
            self._streams.append(stream)
            return stream

    def _find(self, name_or_id: str) -> _Container | None:
        found = self.containers.get(name_or_id)
        if found is not None:
            return found
        return next((c for c in self.containers.values() if c.name == name_or_id), None)

    def _get(self, name_or_id: str) -> _Container:
        found = self._find(name_or_id)
        if found is None:
            raise ContainerNotFound(f"no such container: {name_or_id}")
        return found

    # --- the Runtime protocol ---------------------------------------------------------------

    def pull(self, image: ImageRef, credentials: AnyCredentials, *, tls: TlsDecision,
             progress: Callable[[PullProgress], None] | None = None) -> str:
        reference = image.normalized()
        with self._lock:
            self._request("pull", reference)
            self.pulls.append((reference, credentials))
            wanted = self.auth.get(image.registry)
            if wanted is not None and credentials.anonymous:
                raise AuthenticationRequired(f"pull access denied for {reference}: no basic auth "
                                             "credentials")
            if wanted is not None and isinstance(credentials, Credentials) and (
                    credentials.username, credentials.password) != wanted:
                raise CredentialsRejected(f"unauthorized: authentication required ({reference})")
            if reference in self.absent:
                raise ImageNotFound(f"manifest for {reference} not found: manifest unknown")
            image_id = self.images.setdefault(reference, "sha256:" + secrets.token_hex(32))
        if progress is not None:
            progress(PullProgress(layer=None, status=f"Pulled {reference}"))
        return image_id

    def create(self, spec: ContainerSpec) -> ContainerInfo:
        with self._lock:
            self._request("create", spec.name)
            if self._find(spec.name) is not None:
                raise ContainerError(f"the container name {spec.name!r} is already in use")
            if spec.image not in self.images:
                raise ContainerError(f"no such image: {spec.image}")
            container = _Container(id=secrets.token_hex(32), name=spec.name, image=spec.image,
                                   env=dict(spec.env), labels=dict(spec.labels),
                                   command=spec.command, restart_policy=spec.restart_policy)
            self.containers[container.id] = container
            self._emit("create", container)
            return container.info()

    def start(self, name: str) -> None:
        with self._lock:
            self._request("start", name)
            container = self._get(name)
            if container.command and container.command[0].startswith(BROKEN_PROGRAM_PREFIX):
                raise ContainerError(f"starting {name!r} failed: exec {container.command[0]}: "
                                     "no such file or directory")
            if container.status != "running":
                container.status = "running"
                container.started_at = _now()
                text = container.env.get(OUTPUT_VARIABLE)
                if text is not None:
                    container.output.extend(text.splitlines())
                self._emit("start", container)

    def stop(self, name: str, timeout: int = 10) -> None:
        with self._lock:
            self._request("stop", name)
            container = self._get(name)
            if container.status in ("running", "restarting"):
                container.status = "exited"
                self._emit("kill", container)
                self._emit("die", container)
                self._emit("stop", container)

    def remove(self, name: str, *, force: bool = False) -> None:
        with self._lock:
            self._request("remove", name)
            container = self._get(name)
            if container.status in ("running", "restarting") and not force:
                raise ContainerError(f"cannot remove running container {name!r}: stop it first")
            if container.status in ("running", "restarting"):
                self._emit("kill", container)
                self._emit("die", container)
            del self.containers[container.id]
            self._emit("destroy", container)

    def rename(self, name: str, new_name: str) -> None:
        with self._lock:
            self._request("rename", name)
            container = self._get(name)
            if self._find(new_name) is not None:
                raise ContainerError(f"the container name {new_name!r} is already in use")
            container.name = new_name

    def inspect(self, name: str) -> ContainerInfo | None:
        with self._lock:
            self._request("inspect", name)
            found = self._find(name)
            return found.info() if found is not None else None

    def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        with self._lock:
            self._request("list")
            return [c.info(listed=True) for c in self.containers.values()
                    if all(c.labels.get(k) == v for k, v in labels.items())]

    def logs(self, name: str, tail: int | None = None) -> str:
        with self._lock:
            self._request("logs", name)
            lines = self._get(name).output
            shown = lines if tail is None else (lines[-tail:] if tail > 0 else [])
            return "".join(f"{line}\n" for line in shown)

    def close(self) -> None:
        pass


class InMemoryBackend(ContainerBackend):
    """The core's container backend over an :class:`InMemoryRuntime` (``runtime``).

    ``calls`` counts the :class:`~composer_core.workload.Backend` calls, ``requests`` the engine
    requests they made. :meth:`fail` makes a backend call raise; :meth:`fail_request` an engine
    request (the rollback of a replacement is tested that way)."""

    runtime: InMemoryRuntime

    def __init__(self, name: str = "memory", *, stop_timeout: int = 10) -> None:
        super().__init__(InMemoryRuntime(name), stop_timeout=stop_timeout)
        self.calls: Counter[str] = Counter()
        self._failures: dict[str, list[ComposerError]] = {}
        self._calls_lock = threading.Lock()

    @property
    def requests(self) -> Counter[str]:
        return self.runtime.requests

    def fail(self, call: str, error: ComposerError, times: int = 1) -> None:
        """The next ``times`` calls of ``call`` (``observe``, ``apply``, ``set_state``, ``remove``,
        ``logs``) raise ``error`` before doing anything."""
        with self._calls_lock:
            self._failures.setdefault(call, []).extend([error] * times)

    def fail_request(self, request: str, error: ComposerError, times: int = 1, *,
                     after: int = 0) -> None:
        """After ``after`` more engine requests of kind ``request``, the next ``times`` raise
        ``error`` (:meth:`InMemoryRuntime.fail`)."""
        self.runtime.fail(request, error, times, after=after)

    def reset_counts(self) -> None:
        self.calls.clear()
        self.runtime.requests.clear()
        self.runtime.journal.clear()

    def _call(self, call: str) -> None:
        with self._calls_lock:
            self.calls[call] += 1
            pending = self._failures.get(call)
            if pending:
                raise pending.pop(0)

    def observe(self, labels: Mapping[str, str]) -> list[Observed]:
        self._call("observe")
        return super().observe(labels)

    def apply(self, workload: Workload, current: Observed | None, *,
              progress: Callable[[PullProgress], None] | None = None) -> Applied:
        self._call("apply")
        return super().apply(workload, current, progress=progress)

    def set_state(self, current: Observed, state: WorkloadState) -> Observed:
        self._call("set_state")
        return super().set_state(current, state)

    def remove(self, current: Observed) -> None:
        self._call("remove")
        super().remove(current)

    def logs(self, current: Observed, tail: int) -> str:
        self._call("logs")
        return super().logs(current, tail)

    # --- simulations ------------------------------------------------------------------------

    def add_unmanaged(self, name: str, image: str = "docker.io/library/busybox:latest",
                      labels: Mapping[str, str] | None = None) -> str:
        """A running container this manager did not create (no manager label); its id."""
        runtime = self.runtime
        with runtime._lock:
            runtime.images.setdefault(image, "sha256:" + secrets.token_hex(32))
            container = _Container(id=secrets.token_hex(32), name=name, image=image, env={},
                                   labels=dict(labels or {}), command=None, restart_policy="no",
                                   status="running", started_at=_now())
            runtime.containers[container.id] = container
            return container.id

    def out_of_band(self, how: str, name: str) -> None:
        """What an operator does behind the manager's back (no request of ours is counted):
        ``kill`` (the container exits, as ``docker kill`` with a policy that does not restart
        it), ``stop`` or ``remove`` (``docker rm -f``); the engine's events are emitted."""
        runtime = self.runtime
        with runtime._lock:
            container = runtime._get(name)
            running = container.status in ("running", "restarting")
            if running:
                container.status = "exited"
                runtime._emit("kill", container)
                runtime._emit("die", container)
            if how == "stop" and running:
                runtime._emit("stop", container)
            elif how == "remove":
                del runtime.containers[container.id]
                runtime._emit("destroy", container)
            elif how not in ("kill", "stop"):
                raise ValueError(f"unknown out-of-band action {how!r}")

    def crash_loop(self, name: str, restarts: int) -> None:
        """The engine restarts ``name`` in a loop: ``restarts`` restarts, the last one now."""
        runtime = self.runtime
        with runtime._lock:
            container = runtime._get(name)
            container.status = "restarting"
            container.restart_count = restarts
            container.started_at = _now()


# --- the contract suite --------------------------------------------------------------------------


@dataclass
class ContractEnv:
    """What :class:`BackendContract` needs of the engine under test.

    ``manager``: a manager id unique to the test (the fixture removes its workloads afterwards).
    ``image``: an image every node pulls with ``credentials`` (Anonymous: anonymously).
    ``auth_image``: an image on a registry that requires credentials, and ``auth_credentials``
    valid ones for it (the suite sends none, then a wrong password under their ``source``).
    ``make_unmanaged(name)``: create a workload named ``name`` without our labels (behind the
    backend's back);
    ``unmanaged_exists(name)``: whether it is still there. ``tls``: the TLS decision of the pulls.
    ``timeout``: how long to wait for an engine that converges (an orchestrator) in seconds.
    """

    manager: str
    image: str
    auth_image: str
    auth_credentials: Credentials
    make_unmanaged: Callable[[str], None]
    unmanaged_exists: Callable[[str], bool]
    credentials: AnyCredentials = Anonymous
    tls: TlsDecision = field(default_factory=lambda: TlsDecision(verify=True, setting=None))
    timeout: float = 60.0


def contract_workload(env: ContractEnv, name: str, *, values: Mapping[str, str] | None = None,
                      state: WorkloadState = "started", image: str | None = None,
                      credentials: AnyCredentials | None = None) -> Workload:
    """A workload of ``env.manager``: ``image`` (default ``env.image``) sent with ``credentials``
    (default ``env.credentials``), env ``values`` plus the kit's output lines, the kit's command
    (print the output, then wait). The labels and hash are the core's."""
    text = image or env.image
    ref = ImageRef.parse(text)
    resolved = ResolvedImage(input=text, ref=ref)
    creds = env.credentials if credentials is None else credentials
    outcome: Outcome = "found" if not creds.anonymous else "not-found"
    steps = (Step(provider=creds.source, outcome=outcome,
                  detail="given by the contract test" if not creds.anonymous
                  else "no credentials given by the contract test"),)
    resolution = Resolution(image=resolved, registry=ref.registry, credentials=creds, steps=steps)
    variables = dict(values or {})
    variables.setdefault(OUTPUT_VARIABLE, "\n".join(f"{name} line {i}" for i in range(1, 6)))
    digest = config_hash(ref.normalized(), variables, PRINT_AND_WAIT)
    labels = {LABEL_MANAGER: env.manager, LABEL_CONNECTOR: name, LABEL_HASH: digest}
    return Workload(name=name, connector_id=name, image=resolved, resolution=resolution,
                    tls=env.tls, env=variables, labels=labels, state=state, config_hash=digest,
                    command=PRINT_AND_WAIT)


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """``check()`` until it returns something truthy, at most ``timeout`` seconds (bounded)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.2) + 2):
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    raise AssertionError(f"{what}: not so after {timeout:g}s")


class BackendContract:
    """The contract every backend passes on its real engine. Subclass it and provide the
    fixtures ``backend_factory`` (callable -> connected backend) and ``contract_env``
    (:class:`ContractEnv`); see the module's docstring."""

    @staticmethod
    def workload_factory(env: ContractEnv, name: str | None = None, **options: Any) -> Workload:
        """A workload of the kit (:func:`contract_workload`); a fresh name by default."""
        return contract_workload(env, name or f"xtm-contract-{secrets.token_hex(4)}", **options)

    @staticmethod
    def _ours(backend: Backend, env: ContractEnv) -> list[Observed]:
        return backend.observe({LABEL_MANAGER: env.manager})

    def _created(self, backend: Backend, env: ContractEnv,
                 **options: Any) -> tuple[Workload, Observed]:
        workload = self.workload_factory(env, **options)
        return workload, backend.apply(workload, None).observed

    def _one(self, backend: Backend, env: ContractEnv, workload: Workload) -> Observed:
        (observed,) = [o for o in self._ours(backend, env) if o.name == workload.name]
        return observed

    def test_observe_is_empty_for_a_new_manager(self, backend_factory: Callable[[], Backend],
                                                contract_env: ContractEnv) -> None:
        assert self._ours(backend_factory(), contract_env) == []

    def test_apply_creates_a_started_workload(self, backend_factory: Callable[[], Backend],
                                              contract_env: ContractEnv) -> None:
        backend = backend_factory()
        workload = self.workload_factory(contract_env)
        applied = backend.apply(workload, None)
        assert applied.action == "created"
        assert applied.observed.name == workload.name and applied.observed.id

        def started() -> Observed | None:
            found = self._one(backend, contract_env, workload)
            return found if found.state == "started" else None

        observed = wait_for(started, contract_env.timeout, f"{workload.name} started")
        assert dict(observed.labels).items() >= dict(workload.labels).items()
        assert observed.config_hash == workload.config_hash
        assert observed.connector_id == workload.connector_id

    def test_the_same_workload_again_needs_nothing(self, backend_factory: Callable[[], Backend],
                                                   contract_env: ContractEnv) -> None:
        backend = backend_factory()
        workload, _ = self._created(backend, contract_env)
        again = self.workload_factory(contract_env, workload.name)
        observed = wait_for(lambda: (o := self._one(backend, contract_env, workload)).state
                            == "started" and o, contract_env.timeout, f"{workload.name} started")
        # what the core decides on: the labels (with the hash) it would apply are all observed,
        # and the state is the one asked: it plans nothing
        assert again.config_hash == workload.config_hash
        assert is_current(observed, again.labels) and observed.state == again.state

    def test_set_state_stops_and_starts(self, backend_factory: Callable[[], Backend],
                                        contract_env: ContractEnv) -> None:
        backend = backend_factory()
        workload, observed = self._created(backend, contract_env)
        stopped = backend.set_state(observed, "stopped")
        assert stopped.id == observed.id
        wait_for(lambda: self._one(backend, contract_env, workload).state == "stopped",
                 contract_env.timeout, f"{workload.name} stopped")
        backend.set_state(self._one(backend, contract_env, workload), "started")
        after = wait_for(lambda: (o := self._one(backend, contract_env, workload)).state
                         == "started" and o, contract_env.timeout, f"{workload.name} started")
        assert after.config_hash == workload.config_hash

    def test_a_changed_env_replaces_or_updates_it(self, backend_factory: Callable[[], Backend],
                                                  contract_env: ContractEnv) -> None:
        backend = backend_factory()
        workload, observed = self._created(backend, contract_env, values={"A": "1"})
        changed = self.workload_factory(contract_env, workload.name, values={"A": "2"})
        assert changed.config_hash != workload.config_hash
        applied = backend.apply(changed, self._one(backend, contract_env, workload))
        assert applied.action in ("replaced", "updated")
        now = self._one(backend, contract_env, workload)
        assert now.config_hash == changed.config_hash
        assert len([o for o in self._ours(backend, contract_env)
                    if o.connector_id == workload.connector_id]) == 1

    def test_logs_give_the_tail(self, backend_factory: Callable[[], Backend],
                                contract_env: ContractEnv) -> None:
        backend = backend_factory()
        workload, _ = self._created(backend, contract_env)
        last = f"{workload.name} line 5"
        text = wait_for(lambda: (t := backend.logs(self._one(backend, contract_env, workload),
                                                   2)) and last in t and t,
                        contract_env.timeout, f"logs of {workload.name}")
        # an orchestrator may say where each line comes from ("node-2 | ..."): the line ends so
        lines = text.splitlines()[-2:]
        assert len(lines) == 2, text
        assert lines[0].endswith(f"{workload.name} line 4") and lines[1].endswith(last), text
        assert f"{workload.name} line 1" not in text

    def test_remove_removes_it(self, backend_factory: Callable[[], Backend],
                               contract_env: ContractEnv) -> None:
        backend = backend_factory()
        workload, _ = self._created(backend, contract_env)
        backend.remove(self._one(backend, contract_env, workload))
        wait_for(lambda: not [o for o in self._ours(backend, contract_env)
                              if o.name == workload.name],
                 contract_env.timeout, f"{workload.name} removed")

    def test_an_unmanaged_workload_is_untouched(self, backend_factory: Callable[[], Backend],
                                                contract_env: ContractEnv) -> None:
        import pytest

        backend = backend_factory()
        name = f"xtm-contract-unmanaged-{secrets.token_hex(4)}"
        contract_env.make_unmanaged(name)
        assert name not in [o.name for o in self._ours(backend, contract_env)]
        with pytest.raises(ContainerError) as caught:  # its name is taken: refused, not replaced
            backend.apply(self.workload_factory(contract_env, name), None)
        assert name in caught.value.message
        for observed in self._ours(backend, contract_env):
            backend.remove(observed)
        assert contract_env.unmanaged_exists(name)

    def test_anonymous_against_an_auth_registry_is_authentication_required(
            self, backend_factory: Callable[[], Backend], contract_env: ContractEnv) -> None:
        import pytest

        backend = backend_factory()
        workload = self.workload_factory(contract_env, image=contract_env.auth_image,
                                         credentials=Anonymous)
        with pytest.raises(AuthenticationRequired) as caught:
            backend.apply(workload, None)
        assert caught.value.exit_code == 6 and "credential chain" in caught.value.message

    def test_a_wrong_credential_is_rejected_naming_its_provider(
            self, backend_factory: Callable[[], Backend], contract_env: ContractEnv) -> None:
        import pytest

        backend = backend_factory()
        wrong_password = "wrong-" + secrets.token_hex(6)
        wrong = replace(contract_env.auth_credentials, password=wrong_password)
        workload = self.workload_factory(contract_env, image=contract_env.auth_image,
                                         credentials=wrong)
        with pytest.raises(CredentialsRejected) as caught:
            backend.apply(workload, None)
        error = caught.value
        assert error.exit_code == 7
        assert f"provider {wrong.source!r}" in error.message
        assert wrong_password not in error.message and wrong_password not in (error.hint or "")

    def test_events_report_what_happens_to_managed_workloads(
            self, backend_factory: Callable[[], Backend], contract_env: ContractEnv) -> None:
        """Capability ``events``: a declaring backend streams the events of its managed
        workloads (never an unmanaged one's): its creation, a stop and a start (``set_state``),
        its removal; its stream closes from another thread at once; a backend without the
        capability does not offer the call under it. (A stop is seen as the engine says it: a
        container ``stopped``, ``killed`` or ``died``; a service scaled to 0 ``stopped``.)"""
        backend = backend_factory()
        if "events" not in backend.capabilities:
            assert not has_events(backend)
            return
        assert has_events(backend)
        stream = backend.events({LABEL_MANAGER: contract_env.manager})  # type: ignore[attr-defined]
        seen: list[WorkloadEvent] = []
        reader = threading.Thread(target=lambda: seen.extend(stream), daemon=True)
        reader.start()
        try:
            unmanaged = f"xtm-contract-unmanaged-{secrets.token_hex(4)}"
            contract_env.make_unmanaged(unmanaged)
            workload, _ = self._created(backend, contract_env)
            # a stop and a start: an orchestrator creates a workload with its replicas in one
            # event, a container engine creates then starts it (two)
            backend.set_state(self._one(backend, contract_env, workload), "stopped")
            backend.set_state(self._one(backend, contract_env, workload), "started")
            backend.remove(self._one(backend, contract_env, workload))
            wait_for(lambda: any(e.name == workload.name and e.kind == "removed" for e in seen),
                     contract_env.timeout, f"the removal of {workload.name} streamed")
        finally:
            stream.close()
            reader.join(10)
        assert not reader.is_alive(), "the event stream did not end on close()"
        ours = [e for e in seen if e.name == workload.name]
        assert {e.connector_id for e in ours} == {workload.connector_id}
        kinds = {e.kind for e in ours}
        assert {"created", "started", "removed"} <= kinds, kinds
        assert kinds & {"stopped", "killed", "died"}, kinds
        assert unmanaged not in {e.name for e in seen}
