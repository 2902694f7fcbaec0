"""Capability ``events`` of the kubernetes backend: watches of our Deployments and Pods.

A window of events (:class:`KubernetesEvents`) is TWO watch requests held open for the window,
``watch=true`` by the manager's label selector with ``timeoutSeconds`` = the window and
``allowWatchBookmarks=true``: one of the Deployments, one of the Pods. Each is read by a thread
of its own into one queue, which the iteration takes from (no polling); :meth:`~KubernetesEvents.
close` from any thread shuts both sockets down at once.

What the watches say, as workload events (named after the Deployment, with its connector id):

* Deployment ``ADDED`` -> ``created``; ``DELETED`` (or no longer carrying our label) ->
  ``removed``; ``spec.replicas`` going to 0 -> ``stopped`` (scaled to 0: by us for a stopped
  connector, or out of band, which the focused reconcile of ``run`` undoes when the connector's
  desired state is started); other replica or spec changes -> ``other``; a status update alone
  is no event.
* Pod: running and ready -> ``started``; its container waiting in ``ErrImagePull`` /
  ``ImagePullBackOff`` (each retry flips between the two: one event) -> ``failed`` (it cannot run;
  the reconcile reports the typed registry error); terminated, or waiting in ``CrashLoopBackOff``
  -> ``died``, once per death. The kubelet restarts such a container itself: the reconcile
  observes it ``restarting`` and acts on nothing, and ``run`` holds back the events of a
  connector that keeps restarting (``composer_core.fleet.events.LoopGuard``) instead of
  observing it on each death. A pod DELETED -> ``other``, not disruptive: its ReplicaSet makes
  another at once (whose events follow), and when the Deployment itself was deleted or scaled to
  0, the Deployment's own event says so.

Resuming without losing a change: the versions (``resourceVersion``) reached, and what was last
seen of each Deployment and Pod, are kept as a :class:`Resume`, which the backend instance keeps
for the next window of the same labels when a window ends normally; the next window watches from
there (two requests, no list). A watch the server ends early (a graceful restart) is reopened
from its last version within the window (a pause between, a bounded number of times). An ERROR
event (``410 Expired``: the version is older than the server's history), a stream that breaks,
or a window opened on a new connection with ``since`` (a watch resumes by version, never by
time) start from a list again; the first two raise RuntimeUnavailable, so that ``run``
reconnects and runs a full pass: whatever happened while nobody watched is reconciled then.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from composer_core.engine.labels import LABEL_CONNECTOR
from composer_core.errors import ComposerError, RuntimeUnavailable
from composer_core.workload import EventKind, WorkloadEvent
from composer_plugins.kubernetes.api import Api, WatchStream
from composer_plugins.kubernetes.objects import PULL_FAILURES

log = logging.getLogger("xtm_composer.kubernetes")

#: the watched resources: (API group, resource)
WATCHED = {"deployments": "apps/v1", "pods": ""}
#: a watch that ends this long before its window does was ended early by the server
EARLY_END_SECONDS = 2.0
#: seconds between a watch the server ended early and its reopening; at most this many per window
REOPEN_PAUSE = 1.0
MAX_REOPENS = 10
#: a bound on the items one window takes (each is a line the server sent)
MAX_ITEMS = 10_000_000
_END, _BROKEN, _CLOSED = "end", "broken", "closed"

#: what a pod's condition (see :func:`pod_condition`) says when it is new
_KIND_OF: dict[str, EventKind] = {"running": "started", "pull-failed": "failed",
                                  "crash-loop": "died", "terminated": "died",
                                  "terminating": "other", "pending": "created"}


def pod_condition(pod: Mapping[str, Any]) -> tuple[str, str, int]:
    """(condition, the kubelet's word, restart count) of a pod's container: ``running``,
    ``pull-failed``, ``crash-loop``, ``terminated``, ``terminating`` or ``pending``."""
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    container: Mapping[str, Any] = statuses[0] if statuses else {}
    state = container.get("state") or {}
    restarts = int(container.get("restartCount") or 0)
    reason = str((state.get("waiting") or {}).get("reason") or "")
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "terminating", "terminating", restarts
    if reason in PULL_FAILURES:
        return "pull-failed", reason, restarts
    if reason == "CrashLoopBackOff":
        return "crash-loop", reason, restarts
    if state.get("terminated") is not None:
        return "terminated", str(state["terminated"].get("reason") or "terminated"), restarts
    if status.get("phase") in ("Failed", "Succeeded"):
        return "terminated", str(status["phase"]), restarts
    if state.get("running") and container.get("ready"):
        return "running", "running", restarts
    return "pending", reason or str(status.get("phase") or "Pending"), restarts


@dataclass(frozen=True)
class _Deployment:
    uid: str
    replicas: int
    generation: int
    selector: Mapping[str, str]

    @classmethod
    def of(cls, dep: Mapping[str, Any]) -> _Deployment:
        meta, spec = dep.get("metadata") or {}, dep.get("spec") or {}
        replicas = spec.get("replicas")
        return cls(uid=str(meta.get("uid") or ""),
                   replicas=1 if replicas is None else int(replicas),  # the API's default
                   generation=int(meta.get("generation") or 0),
                   selector=dict((spec.get("selector") or {}).get("matchLabels") or {}))


@dataclass(frozen=True)
class _Pod:
    condition: str
    restarts: int


def _pod_kind(before: _Pod | None, now: _Pod) -> EventKind | None:
    """What a pod's change says (``None``: nothing worth an event)."""
    if before is None:
        return _KIND_OF[now.condition]
    restarted = now.restarts > before.restarts
    if now.condition == before.condition:
        # the kubelet restarted it between two status updates: a death all the same
        return "died" if restarted and now.condition in ("running", "crash-loop") else None
    if now.condition == "crash-loop" and before.condition == "terminated" and not restarted:
        return "other"  # the back-off after a death already reported
    return "other" if now.condition == "pending" else _KIND_OF[now.condition]


@dataclass
class Resume:
    """Where the next window starts: per watched resource the last ``resourceVersion``, and what
    was last seen of each Deployment (by name) and Pod (by name)."""

    versions: dict[str, str]
    deployments: dict[str, _Deployment] = field(default_factory=dict)
    pods: dict[str, _Pod] = field(default_factory=dict)

    @classmethod
    def listed(cls, api: Api, labels: Mapping[str, str]) -> Resume:
        """From a list of each resource (two requests): the watches start at the lists'
        versions, so that nothing between the list and the watch is missed."""
        deployments, deployments_version = api.list_from(WATCHED["deployments"], "deployments",
                                                         labels)
        pods, pods_version = api.list_from(WATCHED["pods"], "pods", labels)
        resume = cls({"deployments": deployments_version, "pods": pods_version})
        for dep in deployments:
            resume.deployments[str(dep["metadata"]["name"])] = _Deployment.of(dep)
        for pod in pods:
            condition, _, restarts = pod_condition(pod)
            resume.pods[str(pod["metadata"]["name"])] = _Pod(condition, restarts)
        return resume

    def deployment_event(self, kind: str, dep: Mapping[str, Any]) -> WorkloadEvent | None:
        meta = dep.get("metadata") or {}
        name = str(meta.get("name") or "")
        if kind == "DELETED":
            self.deployments.pop(name, None)
            return _event(meta, name, "removed", "deleted")
        now = _Deployment.of(dep)
        before = self.deployments.get(name)
        self.deployments[name] = now
        if before is None or before.uid != now.uid:
            return _event(meta, name, "created", "created")
        if before.replicas > 0 and now.replicas == 0:
            return _event(meta, name, "stopped", "scaled to 0")
        if now.replicas != before.replicas:
            return _event(meta, name, "other", f"scaled to {now.replicas}")
        if now.generation != before.generation:
            return _event(meta, name, "other", "spec changed")
        return None  # a status update

    def pod_event(self, kind: str, pod: Mapping[str, Any]) -> WorkloadEvent | None:
        meta = pod.get("metadata") or {}
        pod_name = str(meta.get("name") or "")
        name, uid = self._owner(meta)
        if kind == "DELETED":
            self.pods.pop(pod_name, None)
            return _event(meta, name, "other", "pod deleted", uid)
        condition, word, restarts = pod_condition(pod)
        now = _Pod(condition, restarts)
        event_kind = _pod_kind(self.pods.get(pod_name), now)
        self.pods[pod_name] = now
        if event_kind is None:
            return None
        return _event(meta, name, event_kind, f"pod {word}", uid)

    def _owner(self, meta: Mapping[str, Any]) -> tuple[str, str]:
        """The name and uid of the Deployment whose selector the pod matches; else the name its
        ReplicaSet gave it (``generateName``: ``DEPLOYMENT-HASH-``)."""
        labels = meta.get("labels") or {}
        for name, dep in self.deployments.items():
            if dep.selector and all(labels.get(k) == v for k, v in dep.selector.items()):
                return name, dep.uid
        generated = str(meta.get("generateName") or "")
        if generated.count("-") >= 2:
            return generated.rstrip("-").rsplit("-", 1)[0], ""
        return str(meta.get("name") or ""), ""


def _event(meta: Mapping[str, Any], name: str, kind: EventKind, action: str,
           uid: str | None = None) -> WorkloadEvent:
    # a watch event carries no time: when it arrived is what there is
    connector = (meta.get("labels") or {}).get(LABEL_CONNECTOR)
    return WorkloadEvent(name=name, connector_id=str(connector) if connector else None,
                         kind=kind, action=action,
                         id=str(meta.get("uid") or "") if uid is None else uid, time=time.time())


class KubernetesEvents:
    """One window of the watches (see the module's docstring): an
    :class:`~composer_core.workload.EventStream`. ``keep(resume)`` is called when it ends
    without a failure (the window's end, or :meth:`close`): where the next window resumes."""

    def __init__(self, api: Api, labels: Mapping[str, str], resume: Resume, *, until: float,
                 keep: Callable[[Resume], None]) -> None:
        self.until = until
        self._api = api
        self._labels = dict(labels)
        self._resume = resume
        self._keep = keep
        self._queue: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._watches: dict[str, WatchStream] = {}
        self._iterated = False

    def __iter__(self) -> Iterator[WorkloadEvent]:
        if self._iterated:
            raise RuntimeError("a window of events is iterated once")
        self._iterated = True
        start = dict(self._resume.versions)
        for resource in WATCHED:
            threading.Thread(target=self._read, args=(resource, start[resource]), daemon=True,
                             name=f"xtm-watch-{resource}").start()
        failed = False
        ended: set[str] = set()
        try:
            for _ in range(MAX_ITEMS):
                # the readers' own read timeout ends a silent watch first: this is a backstop
                wait = max(0.0, self.until - time.time()) + self._api.timeout + 5
                try:
                    resource, kind, obj = self._queue.get(timeout=wait)
                except queue.Empty:
                    failed = True
                    raise RuntimeUnavailable(f"the watches on {self._api.endpoint} did not end "
                                             "with their window") from None
                if self._closed.is_set():
                    return
                if kind == _END:
                    ended.add(resource)
                    if ended == set(WATCHED):
                        return
                    continue
                if kind in (_BROKEN, "ERROR"):
                    failed = True
                    raise obj if kind == _BROKEN else self._error(resource, obj)
                version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                if version:
                    self._resume.versions[resource] = version
                if kind == "BOOKMARK":  # nothing changed up to there
                    continue
                event = (self._resume.deployment_event(kind, obj) if resource == "deployments"
                         else self._resume.pod_event(kind, obj))
                if event is not None:
                    yield event
        finally:
            self.close()
            if not failed:
                self._keep(self._resume)

    def _error(self, resource: str, status: Mapping[str, Any]) -> RuntimeUnavailable:
        code, reason = status.get("code"), status.get("reason") or "Error"
        what = (f"the watch of {resource} on {self._api.endpoint} ended with {code} {reason}: "
                f"{status.get('message') or ''}")
        if code == 410:
            return RuntimeUnavailable(f"{what} (older than the API server keeps): listing again",
                                      hint="nothing is lost: a full pass follows the reconnect")
        return RuntimeUnavailable(what, hint="the API server could not serve the watch")

    def _read(self, resource: str, version: str) -> None:
        """One watch after the other until the window ends: the queue gets its events, then
        ``_END`` (or ``_BROKEN`` with the error)."""
        try:
            for _ in range(MAX_REOPENS + 1):
                remaining = self.until - time.time()
                if self._closed.is_set() or remaining < 1:
                    break
                watch = self._api.open_watch(WATCHED[resource], resource, self._labels, version,
                                             math.ceil(remaining), bookmarks=True)
                with self._lock:
                    self._watches[resource] = watch
                if self._closed.is_set():
                    watch.close()
                    return
                for kind, obj in watch.events():
                    self._queue.put((resource, kind, obj))
                    if kind == "ERROR":
                        return
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if self.until - time.time() <= EARLY_END_SECONDS:
                    break  # ended at its timeout: the window is over
                log.debug("the API server ended the watch of %s early: resuming from %s",
                          resource, version)
                if self._closed.wait(REOPEN_PAUSE):
                    return
            else:
                raise RuntimeUnavailable(f"the API server {self._api.endpoint} ended the watch "
                                         f"of {resource} early {MAX_REOPENS + 1} times in one "
                                         "window")
        except ComposerError as exc:
            self._queue.put((resource, _BROKEN, exc))
            return
        except Exception as exc:  # noqa: BLE001 - a reader thread never dies silently
            self._queue.put((resource, _BROKEN, RuntimeUnavailable(
                f"the watch of {resource} on {self._api.endpoint} failed: "
                f"{type(exc).__name__}")))
            return
        self._queue.put((resource, _END, None))

    def close(self) -> None:
        """End both watches at once, from any thread; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            watches = list(self._watches.values())
        for watch in watches:
            watch.close()
        self._queue.put(("", _CLOSED, None))
