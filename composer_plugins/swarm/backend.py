"""The swarm backend: a connector is a replicated service (1 replica started, 0 stopped).

Every call goes to a manager node through the SDK's low-level client (the config-free one of the
docker plugin: the Docker CLI's ``config.json`` is never read). Credentials travel in the one way a
swarm has: ``X-Registry-Auth`` (base64url JSON, docker-py's ``encode_header``) on
``POST /services/create`` and on ``POST /services/{id}/update`` when the spec changes; the manager
stores it in the service and forwards it to the node of each task, which pulls with it. Scaling
(``set_state``) sends no header, so the service keeps the credential it holds. Exactly
``workload.credentials`` is sent, and nothing when it is anonymous. The swarm never returns the
stored credential, so the service carries a keyed fingerprint of the one sent
(:mod:`.fingerprint`): capability ``stored-credentials``, :meth:`SwarmBackend.credentials_changed`
tells the core a rotated credential must be sent, and ``apply`` sends it (a ``service update``).

The image is pinned: ``GET /distribution/{image}/json`` with the same credential gives the digest,
and the service runs ``repo:tag@sha256:...``, so every node runs the same bits. A first deploy or
an update is watched for a few seconds (``opencti.daemon.swarm.wait``), until its task runs or is
rejected: a task rejected because its node could not pull becomes the same typed error as a pull
on one host (6/7/10), explained with the workload's credential trace.

Capability ``events``: :meth:`SwarmBackend.events` follows the manager's ``/events`` (service
events, and the manager's own containers of our tasks: :mod:`.events`), one request per window;
the first stream of a connection also lists our services once, to know their ids.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from docker.auth import encode_header
from docker.errors import APIError, NotFound

from composer_core import redact
from composer_core.auth.chain import Resolution
from composer_core.engine.container_backend import ContainerEvents, event_bounds
from composer_core.engine.deploy import explain_pull_failure
from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_HASH, LABEL_MANAGER
from composer_core.engine.pullerrors import classify_pull_failure, reason_of
from composer_core.errors import (
    ComposerError,
    ContainerError,
    ContainerNotFound,
    CredentialsRejected,
    RegistryError,
    RuntimeUnavailable,
    UsageError,
)
from composer_core.settings import Settings
from composer_core.types import AnyCredentials, PullProgress
from composer_core.workload import EVENT_WINDOW, Applied, Observed, Workload, WorkloadState
from composer_plugins.docker.daemon import require_insecure_allowed
from composer_plugins.docker.engine import TRANSPORT_ERRORS, DockerEvents
from composer_plugins.swarm.events import EVENT_TYPES, Known, SwarmEvents
from composer_plugins.swarm.fingerprint import Fingerprints
from composer_plugins.swarm.manager import open_manager
from composer_plugins.swarm.options import SwarmOptions
from composer_plugins.swarm.tasks import (
    LABEL_CREDENTIAL_ID,
    LABEL_CREDENTIALS,
    LABEL_FAILED,
    is_rejected,
    is_running,
    newest_first,
    observed,
    stored_failure,
    task_failure,
    task_hash,
)
from composer_plugins.swarm.watch import TaskWatcher

#: Polling a new task: a task here runs ~0.3 s after its service is created, so poll often at
#: first (each poll is one small request), then back off.
POLL_FAST_S, POLL_SLOW_S, FAST_FOR_S = 0.05, 0.25, 2.0
#: How long a digest resolved for an image (with one credential) is reused: a pass deploying twenty
#: connectors of one image asks the registry once; a tag moved later is seen within this time.
DIGEST_TTL_S = 60.0
#: At most this many log lines are read per requested line (tails of every task of the service).
LOG_LINES_PER_TAIL = 20
#: Task states of a container that started (then exited): not a pull failure.
RAN = ("failed", "complete", "shutdown")


def _engine_text(exc: APIError) -> str:
    return redact.scrub(str(exc.explanation or exc))


def registry_auth_header(credentials: AnyCredentials) -> dict[str, str]:
    """``X-Registry-Auth`` for exactly this credential (base64url JSON, as the Engine decodes it),
    or no header at all when it is anonymous."""
    from composer_plugins.docker.auth import docker_auth_config

    auth = docker_auth_config(credentials)
    if not auth:  # anonymous: no header at all, so the nodes pull anonymously
        return {}
    return {"X-Registry-Auth": encode_header(auth).decode("ascii")}


def _pull_failed(current: Observed) -> bool:
    """Scaled to 0 by us after rejected tasks, or its newest task rejected for a pull: ``apply``
    then sends the credential again (a scale would keep the one that failed)."""
    return bool(current.labels.get(LABEL_FAILED)) or (current.state == "failed"
                                                      and current.error is not None)


def _with_line(exc: ComposerError, line: str) -> ComposerError:
    return type(exc)(f"{exc.message}\n  {line}", hint=exc.hint)


class SwarmBackend:
    """A connected swarm manager, holding one service per connector."""

    name = "swarm"
    capabilities = frozenset({"replicas", "digest-pinning", "stored-credentials", "events"})

    def __init__(self, api: Any, endpoint: str, settings: Settings, options: SwarmOptions,
                 info: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
        self.api = api
        self.endpoint = endpoint
        self.settings = settings
        self.options = options
        self._registry_config: Mapping[str, Any] = info.get("RegistryConfig") or {}
        self._nodes: dict[str, str] = {}
        self._digests: dict[tuple[str, AnyCredentials], tuple[float, str]] = {}
        self._watcher = TaskWatcher(self._watched_tasks)
        self.fingerprints = Fingerprints(os.environ if environ is None else environ)
        #: service id -> the fingerprint label it carried when last read (kept out of Observed)
        self._held: dict[str, str | None] = {}
        #: the services an event stream reports (service id -> name, connector id), and the
        #: labels they were listed by: kept from one stream to the next
        self._streamed: Known = {}
        self._streamed_labels: dict[str, str] | None = None

    @classmethod
    def connect(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> SwarmBackend:
        options = SwarmOptions.from_settings(settings)
        environ = os.environ if environ is None else environ
        api, endpoint, info = open_manager(options.endpoint, environ)
        backend = cls(api, endpoint, settings, options, info, environ)
        try:
            backend._refresh_nodes()
        except ComposerError:
            api.close()
            raise
        return backend

    def close(self) -> None:
        self.api.close()

    # --- HTTP -------------------------------------------------------------------------------

    @contextmanager
    def _calls(self, what: str, service: str | None = None) -> Iterator[None]:
        try:
            yield
        except NotFound as exc:
            if service is None:
                raise ContainerError(f"{what}: {_engine_text(exc)}") from None
            raise ContainerNotFound(f"no service {service!r} on the swarm at {self.endpoint}",
                                    hint="`xtm-composer ps` lists the services of this manager"
                                    ) from None
        except APIError as exc:
            raise ContainerError(f"{what} failed on the swarm: {_engine_text(exc)}") from None
        except TRANSPORT_ERRORS as exc:
            raise RuntimeUnavailable(f"{what}: the swarm manager at {self.endpoint} stopped "
                                     f"answering: {reason_of(exc)}") from None

    def _get(self, path: str, *args: str, params: Mapping[str, Any] | None = None,
             headers: Mapping[str, str] | None = None) -> Any:
        response = self.api._get(self.api._url(path, *args), params=params,
                                 headers=dict(headers or {}))
        return self.api._result(response, json=True)

    def _post(self, path: str, *args: str, body: Mapping[str, Any],
              params: Mapping[str, Any] | None = None,
              headers: Mapping[str, str] | None = None) -> Any:
        response = self.api._post_json(self.api._url(path, *args), data=dict(body), params=params,
                                       headers=dict(headers or {}))
        return self.api._result(response, json=True)

    def _services(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        return list(self._get("/services", params={"filters": filters}))

    def _tasks(self, service_ids: list[str]) -> list[dict[str, Any]]:
        if not service_ids:
            return []
        return list(self._get("/tasks", params={"filters": json.dumps({"service": service_ids})}))

    def _inspect(self, service_id: str) -> dict[str, Any]:
        with self._calls(f"inspecting service {service_id}", service_id):
            return dict(self._get("/services/{0}", service_id))

    def _refresh_nodes(self) -> None:
        with self._calls("listing the swarm's nodes"):
            nodes = self._get("/nodes")
        self._nodes = {str(n.get("ID")): str((n.get("Description") or {}).get("Hostname")
                                             or str(n.get("ID"))[:12]) for n in nodes}

    def _node_name(self, node_id: str | None) -> str:
        if not node_id:
            return "no node yet"
        return self._nodes.get(node_id, node_id[:12])

    # --- observing --------------------------------------------------------------------------

    def observe(self, labels: Mapping[str, str]) -> list[Observed]:
        """Our services (one request) and their tasks (a second one); a node seen for the first
        time costs one more request (``/nodes``), once."""
        with self._calls("listing services"):
            services = self._services(labels)
            tasks = self._tasks([str(s["ID"]) for s in services])
        if any(t.get("NodeID") and t["NodeID"] not in self._nodes for t in tasks):
            self._refresh_nodes()
        by_service: dict[str, list[dict[str, Any]]] = {}
        for task in tasks:
            by_service.setdefault(str(task.get("ServiceID")), []).append(task)
        found = [self._observed(s, by_service.get(str(s["ID"]), [])) for s in services]
        return sorted(found, key=lambda o: o.name)

    def _observe_one(self, service_id: str) -> Observed:
        service = self._inspect(service_id)
        with self._calls(f"listing the tasks of service {service_id}"):
            tasks = self._tasks([service_id])
        return self._observed(service, tasks)

    def _observed(self, service: Mapping[str, Any], tasks: list[dict[str, Any]]) -> Observed:
        labels = (service.get("Spec") or {}).get("Labels") or {}
        self._held[str(service.get("ID"))] = labels.get(LABEL_CREDENTIAL_ID)
        return observed(service, tasks, self._node_name)

    def credentials_changed(self, workload: Workload, current: Observed) -> bool:
        """The credential ``workload`` would send differs from the one the service was given:
        the fingerprint of ``workload.credentials`` against the service's label (as ``observe``
        read it). No request. A service without the label (made before it existed, or given no
        credential) and a credential to send: changed; anonymous and no label: not changed."""
        held = self._held.get(current.id, current.labels.get(LABEL_CREDENTIAL_ID))
        return self.fingerprints.of(workload.credentials) != held

    # --- digest pinning ---------------------------------------------------------------------

    def _pin(self, workload: Workload) -> tuple[str, str]:
        """``(reference to run, digest)``: the tag resolved on the manager with exactly the
        workload's credential."""
        ref = workload.image.ref
        name = ref.normalized() if ref.digest else f"{ref.repository}:{ref.tag or 'latest'}"
        key = (name, workload.credentials)
        cached = self._digests.get(key)
        if cached is not None and time.monotonic() - cached[0] < DIGEST_TTL_S:
            digest = cached[1]
        else:
            try:
                answer = self._get("/distribution/{0}/json", name,
                                   headers=registry_auth_header(workload.credentials))
            except APIError as exc:
                self._registry_failure(classify_pull_failure(_engine_text(exc),
                                                             workload.credentials), workload)
            except TRANSPORT_ERRORS as exc:
                raise RuntimeUnavailable(f"resolving {name}: the swarm manager at {self.endpoint} "
                                         f"stopped answering: {reason_of(exc)}") from None
            descriptor = answer.get("Descriptor") or {}
            digest = str(descriptor.get("digest") or descriptor.get("Digest") or "")
            if not digest.startswith("sha256:"):
                raise ContainerError(f"the swarm manager resolved {name} to no digest: "
                                     f"{redact.scrub(json.dumps(answer)[:200])}")
            self._digests[key] = (time.monotonic(), digest)
        if ref.digest and ref.digest != digest:
            raise ContainerError(f"{name} resolves to {digest} on its registry, not to the digest "
                                 "the image names")
        pinned = name if ref.digest else f"{name}@{digest}"
        return pinned, digest

    def _registry_failure(self, exc: RegistryError, workload: Workload,
                          line: str | None = None) -> None:
        if isinstance(exc, CredentialsRejected):
            self._forget(workload.resolution)
        explained: ComposerError = explain_pull_failure(exc, workload.resolution, "swarm")
        if line:
            explained = _with_line(explained, line)
        raise explained from None

    def _forget(self, resolution: Resolution) -> None:
        self._digests = {k: v for k, v in self._digests.items() if k[1] != resolution.credentials}

    # --- the spec ---------------------------------------------------------------------------

    def _spec(self, workload: Workload, image: str, replicas: int) -> dict[str, Any]:
        labels = dict(workload.labels)
        labels.setdefault(LABEL_HASH, workload.config_hash)
        container: dict[str, Any] = {"Image": image, "Labels": dict(labels),
                                     "Env": [f"{k}={v}" for k, v in workload.env.items()]}
        if workload.command:
            container["Args"] = list(workload.command)
        service_labels = {**labels, LABEL_CREDENTIALS: workload.credentials.source
                          if not workload.credentials.anonymous else "anonymous"}
        fingerprint = self.fingerprints.of(workload.credentials)
        if fingerprint is not None:  # exactly the credential this create / update sends
            service_labels[LABEL_CREDENTIAL_ID] = fingerprint
        rollout = {"Parallelism": 1, "FailureAction": "rollback", "Order": "stop-first",
                   "Monitor": 5_000_000_000, "MaxFailureRatio": 0}
        return {"Name": workload.name, "Labels": service_labels,
                "TaskTemplate": self.options.task_template(container),
                "Mode": {"Replicated": {"Replicas": replicas}},
                "UpdateConfig": rollout,
                "RollbackConfig": {**rollout, "FailureAction": "pause"}}

    # --- applying ---------------------------------------------------------------------------

    def apply(self, workload: Workload, current: Observed | None, *,
              progress: Callable[[PullProgress], None] | None = None) -> Applied:
        replicas = 1 if workload.state == "started" else 0
        rotated = current is not None and self.credentials_changed(workload, current)
        if (current is not None and current.config_hash == workload.config_hash
                and not _pull_failed(current) and not rotated):
            if (current.replicas_wanted or 0) == replicas:
                return Applied("unchanged", current, "same config hash and state")
            observed = self.set_state(current, workload.state)
            return Applied("started" if replicas else "stopped", observed,
                           f"scaled to {replicas} (the service keeps its credential)")
        if not workload.tls.verify:
            require_insecure_allowed(self._registry_config, workload.image.ref.registry,
                                     key=workload.tls.setting or "the settings",
                                     endpoint=self.endpoint)
        image, digest = self._pin(workload)
        spec = self._spec(workload, image, replicas)
        headers = registry_auth_header(workload.credentials)
        if current is None:
            return self._create(workload, spec, headers, digest)
        why = "; the registry credential changed (rotated)" if rotated else ""
        return self._update(workload, current, spec, headers, digest, why)

    def _create(self, workload: Workload, spec: dict[str, Any], headers: Mapping[str, str],
                digest: str) -> Applied:
        try:
            created = self._post("/services/create", body=spec, headers=headers)
        except APIError as exc:
            if exc.status_code == 409:
                raise self._name_taken(workload.name) from None
            raise ContainerError(f"creating service {workload.name!r} failed on the swarm: "
                                 f"{_engine_text(exc)}") from None
        except TRANSPORT_ERRORS as exc:
            raise RuntimeUnavailable(f"creating service {workload.name!r}: the swarm manager at "
                                     f"{self.endpoint} stopped answering: {reason_of(exc)}"
                                     ) from None
        service_id = str(created["ID"])
        if workload.state == "started":
            self._watch(workload, service_id, set(), first=True)
        return Applied("created", self._observe_one(service_id), f"pinned {digest}")

    def _name_taken(self, name: str) -> ComposerError:
        try:
            existing = self._inspect(name)
        except ContainerNotFound:
            return ContainerError(f"creating service {name!r}: the swarm says the name is taken")
        owner = ((existing.get("Spec") or {}).get("Labels") or {}).get(LABEL_MANAGER)
        whose = f"manager {owner!r}" if owner else "no xtm-composer manager"
        return ContainerError(
            f"a service named {name!r} exists on the swarm and belongs to {whose}: it is left "
            "alone", hint="rename the connector, or remove that service yourself")

    def _update(self, workload: Workload, current: Observed, spec: dict[str, Any],
                headers: Mapping[str, str], digest: str, why: str = "") -> Applied:
        service = self._owned(current)
        version = int((service.get("Version") or {}).get("Index") or 0)
        known = self._task_ids(current.id)
        with self._calls(f"updating service {current.name!r}", current.id):
            self._post("/services/{0}/update", current.id, body=spec,
                       params={"version": version}, headers=headers)
        if workload.state == "started":
            self._watch(workload, current.id, known, first=False)
        observed = self._observe_one(current.id)
        after = int((self._inspect(current.id).get("Version") or {}).get("Index") or 0)
        return Applied("updated", observed,
                       f"rolling update, version {version} -> {after}; pinned {digest}{why}")

    def _owned(self, current: Observed) -> dict[str, Any]:
        """The service behind ``current``, if it carries the same manager label (else not ours)."""
        service = self._inspect(current.id)
        manager = current.labels.get(LABEL_MANAGER)
        labels = (service.get("Spec") or {}).get("Labels") or {}
        if not manager or labels.get(LABEL_MANAGER) != manager:
            raise ContainerNotFound(
                f"service {current.name!r} ({current.id}) is not managed by this manager "
                f"({LABEL_MANAGER}={manager}): it is left alone")
        return service

    def _task_ids(self, service_id: str) -> set[str]:
        with self._calls(f"listing the tasks of service {service_id}", service_id):
            return {str(t.get("ID")) for t in self._tasks([service_id])}

    def _wait_for_task(self, service_id: str, known: set[str],
                       config_hash: str | None) -> Mapping[str, Any] | None:
        """Wait (at most ``options.wait`` s) until a new task (not in ``known``; of ``config_hash``
        when given) runs or is rejected. Returns the rejected task, or ``None`` (running, or still
        being scheduled or pulled at the deadline: ``observe`` then reports it as pending)."""
        start = time.monotonic()
        deadline = start + self.options.wait
        with self._watcher.watching(service_id):
            while True:
                now = time.monotonic()
                poll = POLL_FAST_S if now - start < FAST_FOR_S else POLL_SLOW_S
                tasks = [t for t in self._watcher.tasks(service_id, max_age=poll)
                         if str(t.get("ID")) not in known
                         and (config_hash is None or task_hash(t) == config_hash)]
                if any(is_running(t) or (t.get("Status") or {}).get("State") in RAN
                       for t in tasks):
                    return None  # it started (a connector that exits is observe's to report)
                rejected = next((t for t in newest_first(tasks) if is_rejected(t)), None)
                if rejected is not None or time.monotonic() >= deadline:
                    return rejected
                time.sleep(poll)

    def _watched_tasks(self, service_ids: list[str]) -> list[dict[str, Any]]:
        with self._calls("watching the tasks of services " + ", ".join(service_ids)):
            return self._tasks(service_ids)

    def _watch(self, workload: Workload, service_id: str, known: set[str], *, first: bool) -> None:
        """A rejection of the new task for a pull becomes the typed error; a first deploy that
        fails is scaled to 0."""
        rejected = self._wait_for_task(service_id, known, workload.config_hash)
        if rejected is not None:
            self._rejected(workload, service_id, rejected, first=first)

    def _rejected(self, workload: Workload, service_id: str, task: Mapping[str, Any], *,
                  first: bool) -> None:
        status = task.get("Status") or {}
        err = redact.scrub(str(status.get("Err") or status.get("Message") or "rejected"))
        where = self._node_name(task.get("NodeID"))
        if task.get("NodeID") and task["NodeID"] not in self._nodes:
            self._refresh_nodes()
            where = self._node_name(task.get("NodeID"))
        typed = task_failure(err, workload.credentials, pinned=True)
        if first:
            self._scale(service_id, 0, failed=err)
            line = ("the service was scaled to 0 so that the swarm stops retrying; "
                    "`xtm-composer apply` retries with the credential the chain resolves then")
        else:
            line = ("the swarm rolls the service back to its previous spec "
                    "(UpdateConfig.FailureAction: rollback)")
        if typed is None:
            raise ContainerError(f"service {workload.name!r}: its task was rejected on {where}: "
                                 f"{err}\n  {line}")
        self._registry_failure(typed, workload, f"task rejected on {where}; {line}")

    def _scale(self, service_id: str, replicas: int, *, failed: str | None = None) -> None:
        """Scale without a credential header: the service keeps the one it holds."""
        service = self._inspect(service_id)
        spec = dict(service.get("Spec") or {})
        spec["Mode"] = {"Replicated": {"Replicas": replicas}}
        labels = dict(spec.get("Labels") or {})
        labels.pop(LABEL_FAILED, None)
        if failed:
            labels[LABEL_FAILED] = failed[:200]
        spec["Labels"] = labels
        version = int((service.get("Version") or {}).get("Index") or 0)
        with self._calls(f"scaling service {spec.get('Name')!r} to {replicas}", service_id):
            self._post("/services/{0}/update", service_id, body=spec, params={"version": version})

    # --- events -----------------------------------------------------------------------------

    def events(self, labels: Mapping[str, str], since: float | None = None,
               window: float = EVENT_WINDOW) -> ContainerEvents:
        """The events of the services carrying ``labels`` (capability ``events``), from ``since``
        (whole seconds; ``None``: from now) until ``window`` seconds from now: ONE request held
        open (``GET /events``, types service and container), plus, on the first stream of this
        connection (or for other labels), one list of the services carrying ``labels``, to know
        their ids (docs/swarm.md, "Events")."""
        wanted = dict(labels)
        start, until = event_bounds(since, window)
        if self._streamed_labels != wanted:
            with self._calls("listing services"):
                listed = self._services(wanted)
            self._streamed.clear()
            for service in listed:
                spec = service.get("Spec") or {}
                self._streamed[str(service["ID"])] = (str(spec.get("Name") or ""),
                                                     (spec.get("Labels") or {}).get(LABEL_CONNECTOR))
            self._streamed_labels = wanted
        with self._calls("opening the event stream"):
            raw = self.api.events(since=start, until=until, decode=True,
                                  filters={"type": list(EVENT_TYPES)})
        return ContainerEvents(DockerEvents(raw, self.endpoint), until=until,
                               endpoint=self.endpoint,
                               translate=SwarmEvents(wanted, self._streamed, self._inspected))

    def _inspected(self, service_id: str) -> Mapping[str, Any] | None:
        """A service just created, as an event names it; ``None`` when it is gone already."""
        try:
            return self._inspect(service_id)
        except ContainerNotFound:
            return None

    # --- start, stop, remove, logs ----------------------------------------------------------

    def set_state(self, current: Observed, state: WorkloadState) -> Observed:
        if state not in ("started", "stopped"):
            raise UsageError(f"unknown state {state!r}: started or stopped")
        self._owned(current)
        known = self._task_ids(current.id) if state == "started" else set()
        self._scale(current.id, 1 if state == "started" else 0)
        if state == "started":
            rejected = self._wait_for_task(current.id, known, None)
            if rejected is not None:
                self._start_rejected(current, rejected)
        return self._observe_one(current.id)

    def _start_rejected(self, current: Observed, task: Mapping[str, Any]) -> None:
        status = task.get("Status") or {}
        err = redact.scrub(str(status.get("Err") or status.get("Message") or "rejected"))
        where = self._node_name(task.get("NodeID"))
        self._scale(current.id, 0, failed=err)
        line = f"task rejected on {where}; the service was scaled to 0 so that the swarm stops retrying"
        typed = stored_failure(current.labels, err)
        if typed is None:
            raise ContainerError(f"starting service {current.name!r}: {err}\n  {line}")
        raise _with_line(typed, line)

    def remove(self, current: Observed) -> None:
        self._owned(current)
        with self._calls(f"removing service {current.name!r}", current.id):
            response = self.api._delete(self.api._url("/services/{0}", current.id))
            self.api._raise_for_status(response)

    def logs(self, current: Observed, tail: int) -> str:
        if isinstance(tail, bool) or not isinstance(tail, int) or tail < 1:
            raise UsageError(f"tail must be a positive number of lines, not {tail!r}")
        self._owned(current)
        lines: list[tuple[str, str]] = []
        limit = tail * LOG_LINES_PER_TAIL
        with self._calls(f"reading the logs of service {current.name!r}", current.id):
            stream = self.api.service_logs(current.id, details=True, stdout=True, stderr=True,
                                           timestamps=True, tail=tail, is_tty=False)
            try:
                for chunk in stream:
                    for raw in chunk.decode("utf-8", "replace").splitlines():
                        lines.append(self._log_line(raw))
                    if len(lines) >= limit:
                        break
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
        lines.sort(key=lambda pair: pair[0])
        return "".join(f"{text}\n" for _, text in lines[-tail:])

    def _log_line(self, raw: str) -> tuple[str, str]:
        """``TIMESTAMP key=value,... MESSAGE`` -> (timestamp, ``node | MESSAGE``)."""
        stamp, _, rest = raw.partition(" ")
        details, sep, message = rest.partition(" ")
        attrs = dict(item.split("=", 1) for item in details.split(",") if "=" in item)
        if not sep or "com.docker.swarm.node.id" not in attrs:
            return stamp, rest
        return stamp, f"{self._node_name(attrs['com.docker.swarm.node.id'])} | {message}"
