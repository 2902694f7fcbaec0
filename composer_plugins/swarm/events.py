"""The swarm's event stream: what the manager's ``/events`` says of our services and tasks.

A manager's ``/events`` reports cluster events (type ``service``: ``create``, ``update``,
``remove``) beside the events of its own node's containers. A service event names the service
(``Actor.ID``, ``Actor.Attributes.name``) and what an update changed (``replicas.new`` /
``replicas.old``, ``image.new``, ``updatestate.new``...), but carries **no labels**, so the
engine's ``label`` filter would drop every one of them: the stream asks for the types
``service`` and ``container`` only, and :class:`SwarmEvents` keeps the events of our services
(``known``: service id -> name and connector id, learned from a labelled services list when the
backend opens its first stream and from an inspect of every service created afterwards) and of
our tasks' containers (their labels are ours; only tasks on the manager's own node have any).
A scale to 0 of ours costs one inspect too: the backend's own scale after rejected tasks is not
reported as a stop.

Docker's API has no task events: a task failing on another node is seen at the resync (the swarm
replaces it itself, per the service's restart policy).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import replace
from typing import Any

from composer_core.engine.container_backend import event_of, event_time
from composer_core.engine.labels import LABEL_CONNECTOR
from composer_core.workload import EventKind, WorkloadEvent
from composer_plugins.swarm.tasks import LABEL_FAILED

#: the event types the manager is asked for (one request: no label filter, see above)
EVENT_TYPES = ("service", "container")
#: labels the swarm puts on a task's container
TASK_SERVICE_ID = "com.docker.swarm.service.id"
TASK_SERVICE_NAME = "com.docker.swarm.service.name"

#: service id -> (service name, connector id)
Known = MutableMapping[str, tuple[str, str | None]]
#: a service id -> its inspect (``None``: gone)
Inspect = Callable[[str], Mapping[str, Any] | None]


def _attributes(message: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    found = message.get("Actor")
    actor: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    found = actor.get("Attributes")
    return str(actor.get("ID") or message.get("id") or ""), (
        found if isinstance(found, Mapping) else {})


def update_kind(attributes: Mapping[str, Any]) -> EventKind:
    """A service update as a kind: scaled to 0 is ``stopped``, scaled up from 0 ``started``;
    any other update (an image, an env, a rolling update's progress) is ``other``: not
    disruptive, so ``run``'s own updates never make it reconcile."""
    new, old = attributes.get("replicas.new"), attributes.get("replicas.old")
    if new == "0":
        return "stopped"
    if new is not None and old == "0":
        return "started"
    return "other"


class SwarmEvents:
    """Translates the manager's messages into :class:`WorkloadEvent` s of the services carrying
    ``labels`` (a ``ContainerEvents`` translation); ``known`` is kept up to date as services are
    created and removed. One stream at a time reads it."""

    def __init__(self, labels: Mapping[str, str], known: Known, inspect: Inspect) -> None:
        self._labels = dict(labels)
        self._known = known
        self._inspect = inspect

    def _ours(self, labels: Mapping[str, Any]) -> bool:
        return all(labels.get(k) == v for k, v in self._labels.items())

    def __call__(self, message: Mapping[str, Any]) -> WorkloadEvent | None:
        kind = message.get("Type")
        if kind == "service":
            return self._service(message)
        if kind == "container":
            return self._task(message)
        return None

    def _service(self, message: Mapping[str, Any]) -> WorkloadEvent | None:
        service_id, attributes = _attributes(message)
        action = str(message.get("Action") or "")
        if action == "create" and service_id not in self._known:
            self._learn(service_id)
        known = self._known.get(service_id)
        if known is None:
            return None  # not ours (or gone before it could be inspected: the resync covers it)
        name, connector = known
        event_kind: EventKind = "other"
        if action == "create":
            event_kind = "created"
        elif action == "update":
            event_kind = update_kind(attributes)
            if event_kind == "stopped" and self._failed(service_id):
                event_kind = "other"  # our own scale to 0 after rejected tasks (below)
        elif action == "remove":
            event_kind = "removed"
            del self._known[service_id]
        return WorkloadEvent(name=str(attributes.get("name") or name), connector_id=connector,
                             kind=event_kind, action=action, id=service_id,
                             time=event_time(message))

    def _failed(self, service_id: str) -> bool:
        """Whether the service carries ``xtm-composer.swarm.failed``: the backend scaled it to 0
        itself because its tasks were rejected (a pull refused). Reconciling that at once would
        retry, a second later and with the same credential, what just failed: the resync retries
        it (with the credential the chain resolves then), as without events."""
        service = self._inspect(service_id)
        labels = ((service or {}).get("Spec") or {}).get("Labels") or {}
        return bool(labels.get(LABEL_FAILED))

    def _learn(self, service_id: str) -> None:
        service = self._inspect(service_id)
        if service is None:
            return
        spec = service.get("Spec") or {}
        labels = spec.get("Labels") or {}
        if self._ours(labels):
            self._known[service_id] = (str(spec.get("Name") or ""), labels.get(LABEL_CONNECTOR))

    def _task(self, message: Mapping[str, Any]) -> WorkloadEvent | None:
        _, attributes = _attributes(message)
        service_id = attributes.get(TASK_SERVICE_ID)
        if not service_id or not self._ours(attributes):
            return None  # not a task, or not one of ours
        event = event_of(message)
        if event is None:
            return None
        return replace(event, name=str(attributes.get(TASK_SERVICE_NAME) or event.name),
                       id=str(service_id))
