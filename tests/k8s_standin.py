"""A stand-in for the Kubernetes API server, in process: NOT Kubernetes.

No real control plane can run on these machines (docs/kubernetes.md, "What has not been run
against a real cluster"). This is a real HTTP server on 127.0.0.1 that implements, for the
resources and verbs the kubernetes backend uses, the semantics the backend relies on, and nothing
else:

* ``apps/v1`` Deployments and ``v1`` Secrets: GET (one, or a list filtered by ``labelSelector``
  ``k=v,k2=v2``), PATCH with ``application/apply-patch+yaml`` (server-side apply: ``fieldManager``
  required; fields are owned per manager and listed in ``metadata.managedFields``; a field the
  applier owned before and no longer sends is removed unless another manager owns it; a field
  another manager owns with a different value is a 409 Conflict unless ``force=true``, which takes
  it over), PATCH with ``application/merge-patch+json`` (RFC 7386, an ``Update`` by
  ``fieldManager``), DELETE with ``preconditions`` (uid, resourceVersion: 409 when they differ);
* a ``metadata.resourceVersion`` in a patch that is not the stored one: 409 Conflict;
* a Deployment's ``spec.selector`` is immutable (422 Invalid, cause ``spec.selector``) and must
  match its template's labels (422);
* ``v1`` Pods: made by a tiny Deployment controller, synchronously on every Deployment write
  (replicas 0/1; a changed template replaces the pod at once: no ReplicaSet, no rolling update,
  no scheduling; the controller writes the Deployment's ``status`` as a change of its own); their
  status is what the TEST says: a ``kubelet`` callback decides the status of each new pod (and
  its output lines) from the pod and the namespace's Secrets, and :meth:`StandIn.set_pod_status`
  changes it later (pending -> ErrImagePull -> ImagePullBackOff, running, CrashLoopBackOff); the
  status builders below write what a kubelet writes;
* watches (``watch=true``) of Deployments, Pods and Secrets, as the API conventions describe
  them ("Efficient detection of changes"): every write gets the next ``resourceVersion`` and is
  kept in a BOUNDED history (:data:`HISTORY` changes; :meth:`StandIn.compact` drops it all, as an
  etcd compaction does); a watch from a ``resourceVersion`` streams the changes after it, one JSON
  ``{"type", "object"}`` per line in HTTP chunks; without one (or ``0``) it first sends an
  ``ADDED`` for every object that exists; by ``labelSelector`` (``k=v,k2=v2``), an object
  modified into the selector arrives as ``ADDED`` and out of it as ``DELETED``; a
  ``resourceVersion`` older than the history (here also a watcher that fell that far behind: a
real server closes such a watch, and the client's next one is expired) gets one
  ``ERROR`` event carrying the ``410 Expired`` Status ("too old resource version") and the end of
  the stream, as a real API server sends it; ``allowWatchBookmarks=true``: a ``BOOKMARK``
  (``metadata.resourceVersion`` only) every :attr:`StandIn.bookmark_seconds` and just before the
  watch ends at ``timeoutSeconds`` (which it honours; without it, :data:`DEFAULT_WATCH_SECONDS`);
  :meth:`StandIn.end_watches` ends every open watch at once, cleanly (the terminating chunk, as a
  graceful restart does) or cut (the connection dropped mid-stream, as a crash does);
* ``pods/{name}/log`` with ``tailLines`` (and ``container``);
* a bearer token is required (401 without it).

Left out: field selectors, set-based label selectors (``in``, ``!=``, ``exists``),
``sendInitialEvents`` / streaming lists, ``resourceVersionMatch``, a ``resourceVersion`` from
the future (a real server waits, then answers 504), the per-type watch cache (one history serves
every resource here), ReplicaSets, and events of the ``events.k8s.io`` kind.

Every request is recorded (:attr:`StandIn.requests`) so that tests assert what the backend sends:
paths, verbs, content types, ``fieldManager``, ``force``, bodies. What it proves is what we send
and how we react to these answers; not that a kubelet pulls with our Secret, nor scheduling,
admission, defaulting, RBAC, or the timing of a real server's watches (when it sends bookmarks,
how long it keeps its history).
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

Path = tuple[Any, ...]
#: a pod's status and output lines, as the test's kubelet decides them
Kubelet = Callable[[dict[str, Any], Mapping[str, dict[str, Any]]], tuple[dict[str, Any], list[str]]]

_KINDS = {("apps/v1", "deployments"): "Deployment", ("v1", "secrets"): "Secret",
          ("v1", "pods"): "Pod"}
#: how many changes the stand-in keeps for watches (a real API server: about five minutes' worth)
HISTORY = 1000
#: seconds between two BOOKMARK events of a watch that asked for them (a real one: about a minute)
BOOKMARK_SECONDS = 60.0
#: a watch without ``timeoutSeconds`` lasts this long (a real one: 30 to 60 minutes); at most
#: MAX_WATCH_SECONDS either way
DEFAULT_WATCH_SECONDS = 1800.0
MAX_WATCH_SECONDS = 3600.0
#: how long a watch waits for a change before it looks at its deadline, bookmarks and ends again
_WATCH_TICK = 0.25


# --- what a kubelet writes ------------------------------------------------------------------------


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def running(restarts: int = 0) -> dict[str, Any]:
    return {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "connector", "ready": True, "restartCount": restarts,
                                   "state": {"running": {"startedAt": _now()}}}]}


def waiting(reason: str, message: str = "", *, phase: str = "Pending",
            restarts: int = 0, last: dict[str, Any] | None = None) -> dict[str, Any]:
    status = {"name": "connector", "ready": False, "restartCount": restarts,
              "state": {"waiting": {"reason": reason, "message": message}}}
    if last is not None:
        status["lastState"] = {"terminated": last}
    return {"phase": phase, "conditions": [{"type": "Ready", "status": "False",
                                            "reason": "ContainersNotReady"}],
            "containerStatuses": [status]}


def unschedulable(message: str) -> dict[str, Any]:
    return {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                "reason": "Unschedulable", "message": message}]}


def crash_loop(restarts: int, reason: str = "Error", exit_code: int = 1) -> dict[str, Any]:
    return waiting("CrashLoopBackOff", "back-off 5m0s restarting failed container",
                   phase="Running", restarts=restarts,
                   last={"reason": reason, "exitCode": exit_code, "finishedAt": _now()})


def terminated(restarts: int, reason: str = "Error", exit_code: int = 1) -> dict[str, Any]:
    """The container has just exited; the kubelet restarts it (restartPolicy Always), the pod
    stays Running."""
    return {"phase": "Running", "conditions": [{"type": "Ready", "status": "False",
                                                "reason": "ContainersNotReady"}],
            "containerStatuses": [{"name": "connector", "ready": False, "restartCount": restarts,
                                   "state": {"terminated": {"reason": reason,
                                                            "exitCode": exit_code,
                                                            "finishedAt": _now()}}}]}


def run_all(pod: dict[str, Any], secrets_: Mapping[str, dict[str, Any]]) -> tuple[dict[str, Any],
                                                                                   list[str]]:
    """The default kubelet: every pod runs and prints its OUTPUT env variable's lines."""
    env = {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0].get("env") or []}
    return running(), env.get("XTM_CONTRACT_OUTPUT", "").splitlines()


# --- field ownership ------------------------------------------------------------------------------


def _keyed(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(i, dict) and "name" in i for i in value))


def flatten(obj: Any, prefix: Path = ()) -> dict[Path, Any]:
    """Leaf paths -> values; a list of mappings with a ``name`` is keyed by it (``("k", name)``),
    any other list is atomic."""
    out: dict[Path, Any] = {}
    if isinstance(obj, dict):
        if not obj and prefix:
            out[prefix] = {}
        for key, value in obj.items():
            out.update(flatten(value, (*prefix, key)))
    elif _keyed(obj):
        for item in obj:
            out.update(flatten(item, (*prefix, ("k", item["name"]))))
    else:
        out[prefix] = copy.deepcopy(obj)
    return out


def _child(node: Any, key: Any, create: bool) -> Any:
    if isinstance(key, tuple):
        found = next((i for i in node if i.get("name") == key[1]), None)
        if found is None and create:
            found = {"name": key[1]}
            node.append(found)
        return found
    if key not in node and create:
        node[key] = {}
    return node.get(key)


def set_path(obj: dict[str, Any], path: Path, value: Any) -> None:
    node: Any = obj
    for index, key in enumerate(path[:-1]):
        nxt = path[index + 1]
        if not isinstance(key, tuple) and (key not in node or not isinstance(
                node[key], (dict, list))):
            node[key] = [] if isinstance(nxt, tuple) else {}
        if not isinstance(key, tuple) and isinstance(nxt, tuple) and not isinstance(node[key],
                                                                                    list):
            node[key] = []
        node = _child(node, key, True)
    last = path[-1]
    if isinstance(last, tuple):
        _child(node, last, True)
    else:
        node[last] = copy.deepcopy(value)


def remove_path(obj: dict[str, Any], path: Path) -> None:
    nodes: list[Any] = [obj]
    for key in path[:-1]:
        nxt = _child(nodes[-1], key, False) if isinstance(nodes[-1], (dict, list)) else None
        if nxt is None:
            return
        nodes.append(nxt)
    parent, last = nodes[-1], path[-1]
    if last == "name" and len(path) >= 2 and isinstance(path[-2], tuple):
        nodes[-2].remove(parent)  # the key of a keyed item: the item goes
    elif isinstance(last, tuple):
        found = _child(parent, last, False)
        if found is not None:
            parent.remove(found)
    elif isinstance(parent, dict):
        parent.pop(last, None)
    for depth in range(len(nodes) - 1, 0, -1):  # prune what became empty
        node, key = nodes[depth], path[depth - 1]
        if node in ({}, []):
            holder = nodes[depth - 1]
            if isinstance(key, tuple):
                if node in holder:
                    holder.remove(node)
            elif isinstance(holder, dict):
                holder.pop(key, None)


def fields_v1(paths: set[Path]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in sorted(paths, key=repr):
        node = tree
        for key in path:
            name = (f"k:{json.dumps({'name': key[1]}, separators=(',', ':'))}"
                    if isinstance(key, tuple) else f"f:{key}")
            node = node.setdefault(name, {})
    return tree


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


_SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
                  "deletionTimestamp")
_IDENTITY = {("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace")}


def _user_fields(obj: Mapping[str, Any]) -> dict[Path, Any]:
    clean = copy.deepcopy(dict(obj))
    for key in _SERVER_FIELDS:
        clean.get("metadata", {}).pop(key, None)
    clean.pop("status", None)
    return {p: v for p, v in flatten(clean).items() if p not in _IDENTITY}


# --- the server -------------------------------------------------------------------------------------


class Refused(Exception):
    def __init__(self, code: int, reason: str, message: str,
                 causes: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.causes = code, reason, message, causes or []

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "message": self.message, "reason": self.reason, "code": self.code}
        if self.causes:
            body["details"] = {"causes": self.causes}
        return body


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    body: Any
    authorization: str | None


@dataclass(frozen=True)
class Change:
    """One write, as watches see it: the object after it (``DELETED``: as it was, with the
    deletion's ``resourceVersion``) and its labels before (``None``: it did not exist)."""

    version: int
    type: str
    group: str
    resource: str
    obj: dict[str, Any]
    labels_before: dict[str, str] | None


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _label_selector(query: Mapping[str, str]) -> dict[str, str]:
    """``labelSelector`` ``k=v,k2=v2`` (equality only; a set-based selector is refused)."""
    text = query.get("labelSelector") or ""
    wanted = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key.endswith("!") or " " in item or value.startswith("="):
            raise Refused(400, "BadRequest", f"the stand-in takes only equality label selectors "
                                             f"(k=v), not {item!r}")
        wanted[key] = value
    return wanted


def _matches(labels: Mapping[str, str] | None, wanted: Mapping[str, str]) -> bool:
    return labels is not None and all(labels.get(k) == v for k, v in wanted.items())


@dataclass
class _Stored:
    obj: dict[str, Any]
    #: (manager, operation) -> the leaf paths it owns
    managers: dict[tuple[str, str], set[Path]] = field(default_factory=dict)


class StandIn:
    """The stand-in API server (see the module's docstring). ``url``: where it listens;
    ``token``: the bearer token it wants; ``kubelet``: decides each new pod's status."""

    def __init__(self, kubelet: Kubelet = run_all, *, history: int = HISTORY) -> None:
        self.token = secrets.token_hex(16)
        self.kubelet = kubelet
        self.requests: list[Request] = []
        self.store: dict[tuple[str, str, str, str], _Stored] = {}
        self.logs: dict[str, list[str]] = {}
        #: (method, resource) answered 403 Forbidden, as RBAC answers a verb not granted
        self.forbidden: set[tuple[str, str]] = set()
        #: called with each request before it is served (a test makes a concurrent change there)
        self.on_request: Callable[[Request], None] | None = None
        self._version = 100
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        #: the last changes, for watches (bounded: older ones are compacted away)
        self.history: deque[Change] = deque(maxlen=max(1, history))
        #: the newest resourceVersion no longer in :attr:`history` (a watch from before: 410)
        self.compacted = 0
        self.bookmark_seconds = BOOKMARK_SECONDS
        #: watches open now, and how each ended so far (``timeout``, ``expired``, ``ended``,
        #: ``cut``, ``gone``: the client left)
        self.watching = 0
        self.watch_ends: list[str] = []
        self._watch_epoch = 0
        self._cut = False
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and chunked watch streams

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                standin._handle(self)

            do_GET = do_PATCH = do_DELETE = do_POST = do_PUT = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.end_watches(clean=False)
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, namespace: str | None = "xtm") -> dict[str, Any]:
        context: dict[str, Any] = {"cluster": "standin", "user": "xtm"}
        if namespace:
            context["namespace"] = namespace
        return {"apiVersion": "v1", "kind": "Config", "current-context": "standin",
                "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                "users": [{"name": "xtm", "user": {"token": self.token}}],
                "contexts": [{"name": "standin", "context": context}]}

    # --- what the test drives and reads ---------------------------------------------------

    def objects(self, resource: str, namespace: str) -> list[dict[str, Any]]:
        with self._lock:
            return [copy.deepcopy(s.obj) for (_, r, ns, _), s in sorted(self.store.items())
                    if r == resource and ns == namespace]

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.store.get((_group(resource), resource, namespace, name))
        return copy.deepcopy(found.obj) if found else None

    def pods_of(self, namespace: str, deployment: str) -> list[dict[str, Any]]:
        return [p for p in self.objects("pods", namespace)
                if p["metadata"].get("labels", {}).get("xtm-standin/deployment") == deployment]

    def set_pod_status(self, namespace: str, pod: str, status: dict[str, Any]) -> None:
        """What a kubelet reports next for ``pod`` (the test drives it)."""
        with self._lock:
            stored = self.store[("v1", "pods", namespace, pod)]
            stored.obj["status"] = copy.deepcopy(status)
            self._bump(stored.obj)
            self._record("MODIFIED", "pods", stored.obj, _labels(stored.obj))
            owner = stored.obj["metadata"]["labels"]["xtm-standin/deployment"]
            dep = self.store.get(("apps/v1", "deployments", namespace, owner))
            if dep is not None:
                self._deployment_status(dep.obj)

    def touch(self, resource: str, namespace: str, name: str) -> None:
        """Another writer changed the object (its resourceVersion moves on)."""
        with self._lock:
            obj = self.store[(_group(resource), resource, namespace, name)].obj
            self._bump(obj)
            self._record("MODIFIED", resource, obj, _labels(obj))

    def compact(self) -> None:
        """Forget every change so far, as an etcd compaction does: a watch from an older
        ``resourceVersion`` gets 410 Expired."""
        with self._lock:
            self.compacted = self._version
            self.history.clear()

    def end_watches(self, *, clean: bool = True) -> None:
        """End every open watch now: ``clean``, with the stream's terminating chunk (a graceful
        restart of the API server); else cut mid-stream (the server went away)."""
        with self._lock:
            self._watch_epoch += 1
            self._cut = not clean
            self._changed.notify_all()

    def scale(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        """``kubectl scale`` behind the backend's back (a merge patch of another manager)."""
        with self._lock:
            existing = self._stored("apps/v1", "deployments", namespace, name)
            patch = {"spec": {"replicas": replicas}}
            return self._write("deployments", namespace, name, None, patch,
                               lambda cur: merge_patch(cur, patch), "kubectl", "Update",
                               force=True, existing=existing)

    def delete(self, resource: str, namespace: str, name: str) -> None:
        """``kubectl delete`` behind the backend's back."""
        with self._lock:
            self._delete(_group(resource), resource, namespace, name, {})

    def create(self, resource: str, namespace: str, obj: dict[str, Any],
               manager: str = "kubectl-create") -> dict[str, Any]:
        """Create an object behind the backend's back (someone else's, or an old version)."""
        with self._lock:
            return self._write(resource, namespace, obj["metadata"]["name"], None, obj,
                               lambda cur: copy.deepcopy(obj), manager, "Update", force=True)

    def sent(self, method: str, resource: str) -> list[Request]:
        """The requests of ``method`` on ``resource`` (``deployments``, ``secrets``, ``pods``,
        ``log``): its collection, one object, or that subresource."""
        def names(request: Request) -> bool:
            parts = request.path.strip("/").split("/")
            if resource == "log":
                return parts[-1] == "log"
            return resource in parts and parts.index(resource) >= len(parts) - 2
        return [r for r in self.requests if r.method == method and names(r)]

    # --- HTTP ------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        content_type = handler.headers.get("Content-Type")
        body: Any = None
        if raw:
            body = yaml.safe_load(raw) if content_type == "application/apply-patch+yaml" \
                else json.loads(raw)
        request = Request(handler.command, split.path, query, content_type, body,
                          handler.headers.get("Authorization"))
        with self._lock:
            self.requests.append(request)
        try:
            if request.authorization != f"Bearer {self.token}":
                raise Refused(401, "Unauthorized", "Unauthorized")
            if self.on_request is not None:
                self.on_request(request)
            if request.method == "GET" and request.query.get("watch") in ("true", "1"):
                self._watch(handler, request)
                return
            code, answer = self._route(request)
        except Refused as refused:
            code, answer = refused.code, refused.status()
        data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "text/plain" if isinstance(answer, str)
                            else "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def _parts(path: str) -> tuple[str, list[str]]:
        """(group, what follows ``/api/v1`` or ``/apis/apps/v1``) of a namespaced resource's
        path (``namespaces``, NS, resource[, name[, subresource]]); 404 otherwise."""
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "v1"]:
            group, rest = "v1", parts[2:]
        elif parts[:3] == ["apis", "apps", "v1"]:
            group, rest = "apps/v1", parts[3:]
        else:
            raise Refused(404, "NotFound", f"the server could not find {path}")
        if len(rest) < 3 or rest[0] != "namespaces" or (group, rest[2]) not in _KINDS:
            raise Refused(404, "NotFound", f"the server could not find {path}")
        return group, rest

    def _collection(self, path: str) -> tuple[str, str, str]:
        """(group, resource, namespace) of a namespaced collection path; 404 otherwise."""
        group, rest = self._parts(path)
        if len(rest) != 3:
            raise Refused(405, "MethodNotAllowed", "the stand-in watches collections only")
        return group, rest[2], rest[1]

    @staticmethod
    def _seen_as(change: Change, wanted: Mapping[str, str]) -> str | None:
        """How a watch by ``wanted`` sees ``change``: its type, ADDED / DELETED when the object
        moved into / out of the selector, ``None`` when it never matched."""
        now = _matches(_labels(change.obj), wanted)
        before = _matches(change.labels_before, wanted)
        if change.type == "MODIFIED":
            return ("MODIFIED" if before else "ADDED") if now else ("DELETED" if before else None)
        return change.type if now else None

    def _watch(self, handler: BaseHTTPRequestHandler, request: Request) -> None:
        """A watch of one namespaced collection (see the module's docstring): chunked JSON
        lines until ``timeoutSeconds``, :meth:`end_watches`, or a 410 Expired ERROR event."""
        group, resource, namespace = self._collection(request.path)
        wanted = _label_selector(request.query)
        raw = request.query.get("resourceVersion") or ""
        seconds = request.query.get("timeoutSeconds")
        try:
            timeout = min(float(seconds) if seconds else DEFAULT_WATCH_SECONDS,
                          MAX_WATCH_SECONDS)
            since = int(raw) if raw else 0
        except ValueError:
            raise Refused(400, "BadRequest", f"invalid resourceVersion {raw!r} or timeoutSeconds "
                                             f"{seconds!r}") from None
        bookmarks = request.query.get("allowWatchBookmarks") == "true"
        kind = _KINDS[(group, resource)]
        with self._lock:
            initial: list[dict[str, Any]] = []
            if since == 0:  # no resourceVersion (or 0): the objects as they are, then changes
                initial = [{"type": "ADDED", "object": copy.deepcopy(o)}
                           for o in self._matching(group, resource, namespace, wanted)]
                since = self._version
            epoch = self._watch_epoch
            self.watching += 1
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        try:
            self._stream_changes(handler, group, resource, namespace, wanted, since, initial,
                                 deadline=time.monotonic() + timeout, bookmarks=bookmarks,
                                 kind=kind, epoch=epoch)
        finally:
            with self._lock:
                self.watching -= 1

    def _stream_changes(self, handler: BaseHTTPRequestHandler, group: str, resource: str,
                        namespace: str, wanted: Mapping[str, str], since: int,
                        pending: list[dict[str, Any]], *, deadline: float, bookmarks: bool,
                        kind: str, epoch: int) -> str:
        """Write the watch's events; how it ended, which is in :attr:`watch_ends` before the
        client can see the end (the terminating chunk, the connection closed)."""
        def ended(how: str) -> str:
            self.watch_ends.append(how)
            return how

        def chunk(event: Mapping[str, Any]) -> None:
            data = json.dumps(event).encode() + b"\n"
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        def bookmark(version: int) -> dict[str, Any]:
            return {"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": group,
                                                   "metadata": {"resourceVersion": str(version)}}}

        next_bookmark = time.monotonic() + self.bookmark_seconds
        end = ""
        # bounded in count as in time: each turn waits a tick unless a change woke it
        for _ in range(int(MAX_WATCH_SECONDS / _WATCH_TICK) * 100):
            if _client_left(handler):  # as a real server ends the watch of a closed connection
                handler.close_connection = True
                return ended("gone")
            with self._lock:
                if since < self.compacted:  # asked from too long ago, or fell that far behind
                    pending.append({"type": "ERROR", "object": {
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "reason": "Expired", "code": 410,
                        "message": f"too old resource version: {since} ({self.compacted + 1})"}})
                    end = "expired"
                else:
                    for change in self.history:
                        seen = self._seen_as(change, wanted) if change.version > since and (
                            change.group, change.resource) == (group, resource) and change.obj[
                            "metadata"].get("namespace") == namespace else None
                        if seen is not None:
                            pending.append({"type": seen, "object": copy.deepcopy(change.obj)})
                    since = max(since, self._version)
                now = time.monotonic()
                if not end and self._watch_epoch != epoch:
                    end = "cut" if self._cut else "ended"
                elif not end and now >= deadline:
                    end = "timeout"
                if bookmarks and end in ("", "timeout") and (end or now >= next_bookmark):
                    pending.append(bookmark(since))  # a timeout is preceded by one
                    next_bookmark = now + self.bookmark_seconds
                if not pending and not end:
                    wake = min(deadline, next_bookmark) if bookmarks else deadline
                    self._changed.wait(max(0.0, min(wake - now, _WATCH_TICK)))
                    continue
            told = False
            try:
                if end == "cut":
                    handler.close_connection = True
                    return ended(end)  # no terminating chunk: the client sees the stream break
                for event in pending:
                    chunk(event)
                pending = []
                if end:
                    told = bool(ended(end))
                    handler.wfile.write(b"0\r\n\r\n")
                handler.wfile.flush()
            except OSError:  # the client went away
                handler.close_connection = True
                return end if told else ended("gone")
            if end:
                return end
        return ended("timeout")  # pragma: no cover - the deadline comes first

    def _route(self, request: Request) -> tuple[int, Any]:
        group, rest = self._parts(request.path)
        namespace, resource = rest[1], rest[2]
        name = rest[3] if len(rest) > 3 else None
        sub = rest[4] if len(rest) > 4 else None
        verb = {"GET": "list" if name is None else "get", "PATCH": "patch",
                "DELETE": "delete"}.get(request.method, request.method.lower())
        if (request.method, resource if sub is None else f"{resource}/{sub}") in self.forbidden:
            raise Refused(403, "Forbidden", f'{resource} is forbidden: User "system:serviceaccount:'
                          f'{namespace}:xtm-composer" cannot {verb} resource "{resource}" in API '
                          f'group "{group.rpartition("/")[0]}" in the namespace "{namespace}"')
        with self._lock:
            if name is None and request.method == "GET":
                return 200, self._list(group, resource, namespace, request.query)
            if name is None:
                raise Refused(405, "MethodNotAllowed", f"{request.method} on a collection is "
                                                       "not implemented by the stand-in")
            if sub == "log" and resource == "pods" and request.method == "GET":
                return 200, self._log(namespace, name, request.query)
            if sub is not None:
                raise Refused(404, "NotFound", f"no subresource {sub}")
            if request.method == "GET":
                return 200, copy.deepcopy(self._stored(group, resource, namespace, name).obj)
            if request.method == "PATCH" and resource != "pods":
                return 200, self._patch(group, resource, namespace, name, request)
            if request.method == "DELETE" and resource != "pods":
                return 200, self._delete(group, resource, namespace, name, request.body or {})
        raise Refused(405, "MethodNotAllowed", f"{request.method} {resource} is not implemented "
                                               "by the stand-in")

    def _matching(self, group: str, resource: str, namespace: str,
                  wanted: Mapping[str, str]) -> list[dict[str, Any]]:
        return [s.obj for (g, r, ns, _), s in sorted(self.store.items())
                if (g, r, ns) == (group, resource, namespace) and _matches(_labels(s.obj), wanted)]

    def _stored(self, group: str, resource: str, namespace: str, name: str) -> _Stored:
        found = self.store.get((group, resource, namespace, name))
        if found is None:
            raise Refused(404, "NotFound", f'{resource} "{name}" not found')
        return found

    def _list(self, group: str, resource: str, namespace: str,
              query: Mapping[str, str]) -> dict[str, Any]:
        items = self._matching(group, resource, namespace, _label_selector(query))
        return {"kind": _KINDS[(group, resource)] + "List", "apiVersion": group,
                "metadata": {"resourceVersion": str(self._version)},
                "items": copy.deepcopy(items)}

    def _log(self, namespace: str, name: str, query: Mapping[str, str]) -> str:
        self._stored("v1", "pods", namespace, name)
        lines = self.logs.get(name, [])
        if "tailLines" in query:
            count = int(query["tailLines"])
            lines = lines[-count:] if count > 0 else []
        return "".join(f"{line}\n" for line in lines)

    def _patch(self, group: str, resource: str, namespace: str, name: str,
               request: Request) -> dict[str, Any]:
        body = request.body
        if not isinstance(body, dict):
            raise Refused(400, "BadRequest", "the patch must be an object")
        manager = request.query.get("fieldManager")
        if request.content_type == "application/apply-patch+yaml":
            if not manager:
                raise Refused(400, "BadRequest", "PATCH, fieldManager is required for apply "
                                                 "requests")
            if body.get("kind") != _KINDS[(group, resource)] or body.get(
                    "apiVersion") != group:
                raise Refused(400, "BadRequest", "apiVersion and kind must match the path")
            if body.get("metadata", {}).get("name") != name:
                raise Refused(400, "BadRequest", "metadata.name must match the path")
            return self._write(resource, namespace, name, body.get("metadata", {}).get(
                "resourceVersion"), body, None, manager, "Apply",
                force=request.query.get("force") == "true")
        if request.content_type == "application/merge-patch+json":
            existing = self._stored(group, resource, namespace, name)
            return self._write(resource, namespace, name, body.get("metadata", {}).get(
                "resourceVersion"), body, lambda cur: merge_patch(cur, body),
                manager or "unknown", "Update", force=True, existing=existing)
        raise Refused(415, "UnsupportedMediaType",
                      f"the stand-in does not take {request.content_type} patches")

    def _write(self, resource: str, namespace: str, name: str, version: str | None,
               config: dict[str, Any], update: Callable[[dict[str, Any]], dict[str, Any]] | None,
               manager: str, operation: str, *, force: bool,
               existing: _Stored | None = None) -> dict[str, Any]:
        group = _group(resource)
        key = (group, resource, namespace, name)
        stored = existing or self.store.get(key)
        current = copy.deepcopy(stored.obj) if stored else None
        if version is not None and (current is None
                                    or current["metadata"]["resourceVersion"] != version):
            raise Refused(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}"'
                          ": the object has been modified; please apply your changes to the "
                          "latest version and try again")
        managers = copy.deepcopy(stored.managers) if stored else {}
        me = (manager, operation)
        if update is not None:  # an Update: what changed becomes this manager's
            new = update(current or {})
            before = _user_fields(current or {})
            changed = {p for p, v in _user_fields(new).items() if before.get(p) != v}
            for other in managers:
                if other != me:
                    managers[other] -= changed
            managers[me] = managers.get(me, set()) | changed
        else:  # server-side apply
            wanted = _user_fields(config)
            now = _user_fields(current or {})
            others = {p: m for m, paths in managers.items() if m != me for p in paths}
            conflicts = sorted((p for p in wanted if p in others and now.get(p) != wanted[p]),
                               key=repr)
            if conflicts and not force:
                raise Refused(409, "Conflict", f"Apply failed with {len(conflicts)} conflicts",
                              [{"type": "FieldManagerConflict", "field": _dotted(p),
                                "message": f'conflict with "{others[p][0]}"'}
                               for p in conflicts])
            for other in managers:  # forced: the conflicting fields move to the applier;
                if other != me:       # a field applied with the same value is shared
                    managers[other] -= set(conflicts)
            still_owned = {p for m, paths in managers.items() if m != me for p in paths}
            new = copy.deepcopy(current) if current else {
                "apiVersion": config["apiVersion"], "kind": config["kind"],
                "metadata": {"name": name, "namespace": namespace}}
            for path in sorted(managers.get(me, set()) - set(wanted) - still_owned,
                               key=lambda p: -len(p)):
                remove_path(new, path)
            for path, value in wanted.items():
                set_path(new, path, value)
            managers[me] = set(wanted)
        managers = {m: p for m, p in managers.items() if p}
        new.setdefault("metadata", {}).update(name=name, namespace=namespace)
        if resource == "deployments":
            self._validate_deployment(current, new)
        meta = new["metadata"]
        meta["uid"] = current["metadata"]["uid"] if current else secrets.token_hex(16)
        meta["creationTimestamp"] = current["metadata"]["creationTimestamp"] if current else _now()
        spec_changed = current is None or current.get("spec") != new.get("spec")
        generation = (current or {}).get("metadata", {}).get("generation", 0)
        if resource == "deployments":
            meta["generation"] = generation + 1 if spec_changed else generation
        meta["managedFields"] = [{"manager": m, "operation": op, "apiVersion": group,
                                  "time": _now(), "fieldsType": "FieldsV1",
                                  "fieldsV1": fields_v1(paths)}
                                 for (m, op), paths in sorted(managers.items())]
        if current is not None and new == current:
            return copy.deepcopy(stored.obj)  # type: ignore[union-attr]
        self._bump(new)
        self.store[key] = _Stored(new, managers)
        self._record("ADDED" if current is None else "MODIFIED", resource, new,
                     None if current is None else _labels(current))
        if resource == "deployments":
            self._reconcile(new)
        return copy.deepcopy(self.store[key].obj)

    @staticmethod
    def _validate_deployment(current: dict[str, Any] | None, new: dict[str, Any]) -> None:
        spec = new.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if current is not None and (current.get("spec") or {}).get("selector") != spec.get(
                "selector"):
            raise Refused(422, "Invalid", f'Deployment.apps "{new["metadata"]["name"]}" is '
                          "invalid: spec.selector: Invalid value: field is immutable",
                          [{"reason": "FieldValueInvalid", "field": "spec.selector",
                            "message": "Invalid value: field is immutable"}])
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            raise Refused(422, "Invalid", "spec.template.metadata.labels: Invalid value: "
                          "`selector` does not match template `labels`",
                          [{"reason": "FieldValueInvalid",
                            "field": "spec.template.metadata.labels",
                            "message": "`selector` does not match template `labels`"}])
        if not ((spec.get("template") or {}).get("spec") or {}).get("containers"):
            raise Refused(422, "Invalid", "spec.template.spec.containers: Required value",
                          [{"reason": "FieldValueRequired",
                            "field": "spec.template.spec.containers", "message": "Required"}])

    def _delete(self, group: str, resource: str, namespace: str, name: str,
                options: Mapping[str, Any]) -> dict[str, Any]:
        stored = self._stored(group, resource, namespace, name)
        pre = options.get("preconditions") or {}
        meta = stored.obj["metadata"]
        if pre.get("uid") not in (None, meta["uid"]) or pre.get("resourceVersion") not in (
                None, meta["resourceVersion"]):
            raise Refused(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}"'
                          ": Precondition failed")
        del self.store[(group, resource, namespace, name)]
        self._deleted(resource, stored.obj)
        if resource == "deployments":
            for pod in self.pods_of(namespace, name):
                self._remove_pod(namespace, pod["metadata"]["name"])
        return {"kind": "Status", "apiVersion": "v1", "status": "Success"}

    # --- the controller ----------------------------------------------------------------------

    def _bump(self, obj: dict[str, Any]) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)

    def _record(self, kind: str, resource: str, obj: Mapping[str, Any],
                labels_before: dict[str, str] | None) -> None:
        """A change for the watches; the oldest one kept goes when the history is full."""
        if len(self.history) == self.history.maxlen:
            self.compacted = self.history[0].version
        self.history.append(Change(int(obj["metadata"]["resourceVersion"]), kind,
                                   _group(resource), resource, copy.deepcopy(dict(obj)),
                                   labels_before))
        self._changed.notify_all()

    def _deleted(self, resource: str, obj: Mapping[str, Any]) -> None:
        """A deletion is a write of its own: the object as it was, with a new resourceVersion."""
        gone = copy.deepcopy(dict(obj))
        self._bump(gone)
        self._record("DELETED", resource, gone, _labels(gone))

    def _remove_pod(self, namespace: str, name: str) -> None:
        found = self.store.pop(("v1", "pods", namespace, name), None)
        self.logs.pop(name, None)
        if found is not None:
            self._deleted("pods", found.obj)

    def _reconcile(self, dep: dict[str, Any]) -> None:
        meta, spec = dep["metadata"], dep["spec"]
        namespace = meta["namespace"]
        template = spec["template"]
        template_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()
                                       ).hexdigest()[:10]
        wanted = int(spec.get("replicas", 1))
        pods = self.pods_of(namespace, meta["name"])
        for pod in pods:
            if wanted == 0 or pod["metadata"]["labels"].get("pod-template-hash") != template_hash:
                self._remove_pod(namespace, pod["metadata"]["name"])
        current = [p for p in self.pods_of(namespace, meta["name"])]
        for _ in range(wanted - len(current)):
            pod_name = f"{meta['name']}-{template_hash}-{secrets.token_hex(3)}"
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": pod_name, "namespace": namespace,
                                "generateName": f"{meta['name']}-{template_hash}-",
                                "uid": secrets.token_hex(16),
                                "creationTimestamp": _now(),
                                "labels": {**(template.get("metadata") or {}).get("labels", {}),
                                           "pod-template-hash": template_hash,
                                           "xtm-standin/deployment": meta["name"]},
                                "annotations": dict((template.get("metadata") or {}).get(
                                    "annotations") or {}),
                                "ownerReferences": [{"apiVersion": "apps/v1",
                                                     "kind": "Deployment", "name": meta["name"],
                                                     "uid": meta["uid"], "controller": True}]},
                   "spec": {**copy.deepcopy(template["spec"]), "nodeName": "standin-node"}}
            secrets_ = {s["metadata"]["name"]: s for s in self.objects("secrets", namespace)}
            status, lines = self.kubelet(copy.deepcopy(pod), secrets_)
            pod["status"] = status
            self.logs[pod_name] = list(lines)
            self._bump(pod)
            self.store[("v1", "pods", namespace, pod_name)] = _Stored(pod)
            self._record("ADDED", "pods", pod, None)
        self._deployment_status(dep)

    def _deployment_status(self, dep: dict[str, Any]) -> None:
        pods = self.pods_of(dep["metadata"]["namespace"], dep["metadata"]["name"])
        ready = sum(1 for p in pods if any(s.get("ready") for s in
                                           p.get("status", {}).get("containerStatuses") or []))
        status = {"observedGeneration": dep["metadata"].get("generation", 1),
                  "replicas": len(pods), "readyReplicas": ready, "updatedReplicas": len(pods)}
        if dep.get("status") != status:  # the controller's status update: a write of its own
            dep["status"] = status
            self._bump(dep)
            self._record("MODIFIED", "deployments", dep, _labels(dep))


def _client_left(handler: BaseHTTPRequestHandler) -> bool:
    """Whether the client closed its end (a watch's client sends nothing after its request)."""
    try:
        readable, _, _ = select.select([handler.connection], [], [], 0)
        return bool(readable) and handler.connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _group(resource: str) -> str:
    return "apps/v1" if resource == "deployments" else "v1"


def _dotted(path: Path) -> str:
    return ".".join(f"[name={p[1]}]" if isinstance(p, tuple) else str(p) for p in path)


def serve(kubelet: Kubelet = run_all) -> Iterator[StandIn]:
    standin = StandIn(kubelet)
    try:
        yield standin
    finally:
        standin.close()
