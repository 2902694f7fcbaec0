"""The few Kubernetes API calls the backend makes, over the official client's HTTP layer.

The official ``kubernetes`` client (imported here only, when a command connects) loads the
kubeconfig or the in-cluster service account and sends the requests (its auth, TLS, proxies);
the bodies and answers stay plain JSON dicts. Every failure becomes a typed
:class:`~composer_core.errors.ComposerError`: the API server unreachable ->
:class:`RuntimeUnavailable`; 403 -> :class:`ContainerError` naming the RBAC verb and resource
missing; 404 -> :class:`ContainerNotFound`; 409 / 422 and any other refusal -> :class:`ApiError`
(a :class:`ContainerError` that keeps the HTTP status and the Status reason).
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import threading
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from composer_core import redact
from composer_core.engine.pullerrors import reason_of
from composer_core.errors import ContainerError, ContainerNotFound, RuntimeUnavailable
from composer_core.files import LIMIT_AUTH_FILE, LIMIT_SECRET_FILE, FileReadError, read_text
from composer_plugins.kubernetes.objects import FIELD_MANAGER

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
#: where a pod's service account is mounted (token, ca.crt, namespace)
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: the RBAC verb of each HTTP method (a list is a GET on a collection)
_VERBS = {"GET": "get", "POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


class ApiError(ContainerError):
    """The API server refused a request (``status``: its HTTP status, ``reason``: the Status
    reason, such as ``Conflict``, ``Invalid``, ``AlreadyExists``)."""

    def __init__(self, message: str, *, status: int, reason: str, causes: list[str],
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.reason = reason
        self.causes = causes


def selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _resource_of(path: str) -> str:
    parts = [p for p in path.split("?")[0].split("/") if p]
    if "namespaces" in parts:
        rest = parts[parts.index("namespaces") + 2:]
        return "/".join([rest[0], *rest[2:]]) if rest else "namespaces"
    return parts[-1] if parts else path


class Api:
    """A connected API client: ``request(method, path, ...)`` -> the decoded JSON answer."""

    def __init__(self, client: Any, endpoint: str, namespace: str, *,
                 timeout: float = 30.0) -> None:
        self.client = client
        self.endpoint = endpoint
        self.namespace = namespace
        self.timeout = timeout

    @classmethod
    def connect(cls, *, kubeconfig: str | None, context: str | None, namespace: str | None,
                timeout: float = 30.0, environ: Mapping[str, str] | None = None) -> Api:
        """From ``kubeconfig`` (else ``KUBECONFIG``, else ``~/.kube/config`` when it exists),
        else the in-cluster service account; ``namespace`` else the context's (``default``), or
        in-cluster the pod's own."""
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config
        from kubernetes.config.config_exception import ConfigException

        env = os.environ if environ is None else environ
        configuration = k8s_client.Configuration()
        path = kubeconfig or (env.get("KUBECONFIG") or "").split(os.pathsep)[0] or None
        if path is None and Path("~/.kube/config").expanduser().is_file():
            path = str(Path("~/.kube/config").expanduser())
        try:
            if path is not None:
                # bounded, regular files only (a FIFO or a huge file never reaches the client)
                read_text(path, limit=LIMIT_AUTH_FILE, what="kubeconfig")
                k8s_config.load_kube_config(config_file=path, context=context,
                                            client_configuration=configuration,
                                            persist_config=False)
                contexts, active = k8s_config.list_kube_config_contexts(config_file=path)
                chosen = next((c for c in contexts if c["name"] == context), active) \
                    if context else active
                default_ns = (chosen or {}).get("context", {}).get("namespace") or "default"
                where = f"kubeconfig {path}" + (f" context {context}" if context else "")
            elif env.get("KUBERNETES_SERVICE_HOST"):
                from kubernetes.config.incluster_config import InClusterConfigLoader

                account = Path(SERVICE_ACCOUNT_DIR)
                InClusterConfigLoader(token_filename=str(account / "token"),
                                      cert_filename=str(account / "ca.crt"),
                                      environ=env).load_and_set(configuration)
                default_ns = read_text(account / "namespace", limit=LIMIT_SECRET_FILE,
                                       what="the service account's namespace").strip()
                where = "in-cluster service account"
            else:
                raise RuntimeUnavailable(
                    "no Kubernetes cluster configured: no kubeconfig (KUBECONFIG, ~/.kube/config) "
                    "and not running in a cluster",
                    hint="set KUBECONFIG or opencti.daemon.kubernetes.kubeconfig, or run "
                         "xtm-composer in a pod with a service account")
        except (ConfigException, OSError, ValueError, TypeError, KeyError, FileReadError) as exc:
            raise RuntimeUnavailable(f"the Kubernetes configuration cannot be loaded "
                                     f"({path or 'in-cluster'}): {redact.scrub(str(exc))}",
                                     hint="check the kubeconfig file and the context name") from None
        api = k8s_client.ApiClient(configuration)
        endpoint = f"{configuration.host} ({where})"
        return cls(api, endpoint, namespace or default_ns, timeout=timeout)

    def ns_path(self, group: str, resource: str, name: str | None = None,
                sub: str | None = None) -> str:
        base = "/api/v1" if group == "" else f"/apis/{group}"
        path = f"{base}/namespaces/{quote(self.namespace, safe='')}/{resource}"
        if name is not None:
            path += f"/{quote(name, safe='')}"
        if sub is not None:
            path += f"/{sub}"
        return path

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                body: Any = None, content_type: str | None = None, raw: bool = False) -> Any:
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json" if not raw else "text/plain, */*"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        query_params = [(k, v) for k, v in (query or {}).items() if v is not None]
        try:
            params = self.client.param_serialize(
                method=method, resource_path=path, query_params=query_params,
                header_params=headers, body=body, auth_settings=["BearerToken"])
            response = self.client.call_api(*params, _request_timeout=self.timeout)
            data = response.read()
        except ApiException as exc:
            if exc.status:
                return self._refused(method, path, exc.status, exc.body)
            raise self._unavailable(exc) from None
        except Exception as exc:  # noqa: BLE001 - urllib3/socket errors: the server does not answer
            raise self._unavailable(exc) from None
        if not 200 <= response.status <= 299:
            return self._refused(method, path, response.status, data)
        if raw:
            return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
        try:
            return json.loads(data) if data else {}
        except ValueError:
            raise ContainerError(f"the Kubernetes API server {self.endpoint} answered {method} "
                                 f"{path} with something that is not JSON",
                                 hint="check that the kubeconfig's server is a Kubernetes API "
                                      "server") from None

    def _unavailable(self, exc: BaseException) -> RuntimeUnavailable:
        return RuntimeUnavailable(f"the Kubernetes API server {self.endpoint} does not answer: "
                                  f"{reason_of(exc)}",
                                  hint="check the kubeconfig's server and the network to it")

    def _refused(self, method: str, path: str, status: int, body: Any,
                 verb: str | None = None) -> Any:
        try:
            answer = json.loads(body) if body else {}
        except (TypeError, ValueError):
            answer = {}
        answer = answer if isinstance(answer, dict) else {}
        message = redact.scrub(str(answer.get("message") or f"HTTP {status}"))
        reason = str(answer.get("reason") or "")
        causes = [redact.scrub(str(c.get("field", "")) + ": " + str(c.get("message", "")))
                  for c in (answer.get("details") or {}).get("causes") or []
                  if isinstance(c, dict)]
        resource = _resource_of(path)
        verb = verb or ("list" if method == "GET" and path.rstrip("/").endswith(
            ("/deployments", "/pods", "/secrets")) else _VERBS.get(method, method.lower()))
        if status == 401:
            raise RuntimeUnavailable(
                f"the Kubernetes API server {self.endpoint} refused our credentials (HTTP 401): "
                f"{message}", hint="refresh the kubeconfig's credentials (token, certificate) "
                                   "or the service account token")
        if status == 403:
            raise ContainerError(
                f"Kubernetes refused to {verb} {resource} in namespace {self.namespace!r} "
                f"(HTTP {status}): {message}",
                hint=f"grant the verb {verb!r} on {resource!r} to xtm-composer's account "
                     "(examples/kubernetes-rbac.yaml lists what it needs)")
        if status == 404:
            raise ContainerNotFound(f"{resource} not found in namespace {self.namespace!r}: "
                                    f"{message}")
        raise ApiError(f"Kubernetes refused to {verb} {resource} (HTTP {status} {reason}): "
                       f"{message}", status=status, reason=reason, causes=causes)

    # --- the verbs the backend uses ---------------------------------------------------------

    def apply(self, group: str, resource: str, name: str, body: Mapping[str, Any]) -> Any:
        """Server-side apply under our field manager, taking over conflicting fields."""
        return self.request("PATCH", self.ns_path(group, resource, name),
                            query={"fieldManager": FIELD_MANAGER, "force": "true"},
                            body=dict(body), content_type=APPLY_PATCH)

    def merge_patch(self, group: str, resource: str, name: str, body: Mapping[str, Any]) -> Any:
        return self.request("PATCH", self.ns_path(group, resource, name),
                            query={"fieldManager": FIELD_MANAGER}, body=dict(body),
                            content_type=MERGE_PATCH)

    def get(self, group: str, resource: str, name: str) -> Any:
        return self.request("GET", self.ns_path(group, resource, name))

    def list(self, group: str, resource: str, labels: Mapping[str, str]) -> list[Any]:
        answer = self.request("GET", self.ns_path(group, resource),
                              query={"labelSelector": selector(labels) or None})
        return list(answer.get("items") or [])

    def list_from(self, group: str, resource: str,
                  labels: Mapping[str, str]) -> tuple[builtins.list[Any], str]:
        """The list, and its resourceVersion (where a watch starts)."""
        answer = self.request("GET", self.ns_path(group, resource),
                              query={"labelSelector": selector(labels) or None})
        return list(answer.get("items") or []), str(
            (answer.get("metadata") or {}).get("resourceVersion") or "")

    def open_watch(self, group: str, resource: str, labels: Mapping[str, str], version: str,
                   seconds: int, *, bookmarks: bool = False) -> WatchStream:
        """A watch by label selector from ``version`` (a list's or an event's resourceVersion),
        which the server ends after ``seconds`` (the read timeout is a little longer);
        ``bookmarks``: ask for BOOKMARK events (``allowWatchBookmarks``). The request is sent
        now: RuntimeUnavailable when the server does not answer, a typed error when it refuses."""
        from kubernetes.client.exceptions import ApiException

        query = [("labelSelector", selector(labels)), ("watch", "true"),
                 ("resourceVersion", version), ("timeoutSeconds", str(max(1, seconds))),
                 ("allowWatchBookmarks", "true" if bookmarks else "false")]
        path = self.ns_path(group, resource)
        try:
            params = self.client.param_serialize(
                method="GET", resource_path=path, query_params=query,
                header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
            response = self.client.call_api(*params, _request_timeout=(
                self.timeout, max(1, seconds) + self.timeout))
        except ApiException as exc:
            if exc.status:
                self._refused("GET", path, exc.status, exc.body, "watch")
            raise self._unavailable(exc) from None
        except Exception as exc:  # noqa: BLE001 - urllib3/socket errors
            raise self._unavailable(exc) from None
        if not 200 <= response.status <= 299:
            self._refused("GET", path, response.status, response.read(), "watch")
        return WatchStream(response.response, f"the watch of {resource} on {self.endpoint}")

    def watch(self, group: str, resource: str, labels: Mapping[str, str], version: str,
              seconds: int) -> Generator[tuple[str, Any], None, None]:
        """(event type, object) of :meth:`open_watch`; a stream that breaks just ends (the
        caller, a rollout, lists again)."""
        stream = self.open_watch(group, resource, labels, version, seconds)
        try:
            yield from stream.events()
        except RuntimeUnavailable:
            return
        finally:
            stream.close()

    def delete(self, group: str, resource: str, name: str, *, uid: str | None = None) -> Any:
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions",
                                "propagationPolicy": "Background"}
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        return self.request("DELETE", self.ns_path(group, resource, name), body=body)

    def log(self, pod: str, tail: int) -> str:
        return str(self.request("GET", self.ns_path("", "pods", pod, "log"),
                                query={"container": "connector", "tailLines": str(tail)},
                                raw=True))

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing never fails a command
            pass


class WatchStream:
    """One open watch: its events from :meth:`events`; :meth:`close` from any thread ends it at
    once (the socket is shut down, so a read blocked on it returns)."""

    def __init__(self, response: Any, what: str) -> None:
        self._response = response
        self._what = what
        self._closed = False
        self._reading = False  # a thread is in events(): it closes the connection as it leaves
        self._lock = threading.Lock()

    def events(self) -> Iterator[tuple[str, Any]]:
        """(type, object) per line: ``ADDED``, ``MODIFIED``, ``DELETED``, ``BOOKMARK``,
        ``ERROR`` (the object is a Status). Ends when the server ends the watch (its timeout)
        or on :meth:`close`; raises RuntimeUnavailable when the stream breaks (the connection
        dropped, a torn line)."""
        with self._lock:
            if self._closed:  # closed before it was read: nobody else closes the connection
                self._response.close()
                return
            self._reading = True
        buffer = b""
        try:
            for chunk in self._response.stream(4096, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        event = json.loads(line)
                        if not isinstance(event, dict):
                            raise ValueError("a watch event is an object")
                        yield str(event.get("type")), event.get("object") or {}
        except GeneratorExit:
            raise
        except Exception as exc:  # noqa: BLE001 - urllib3/socket/JSON errors: the stream broke
            if self._closed:
                return
            raise RuntimeUnavailable(f"{self._what} broke: {reason_of(exc)}",
                                     hint="the API server went away or restarted") from None
        finally:
            # a watch left before its end cannot go back to the pool with unread data
            with self._lock:
                self._closed, self._reading = True, False
            self._response.close()

    def close(self) -> None:
        """End the stream from any thread; idempotent. A thread reading it is woken (the socket's
        read side is shut down) and closes the connection as it leaves :meth:`events`; a stream
        nobody reads is closed here, so the server sees the client go at once either way."""
        with self._lock:
            if self._closed and not self._reading:
                return
            self._closed = True
            reading = self._reading
        if not reading:
            self._response.close()
            return
        shutdown = getattr(self._response, "shutdown", None)  # urllib3 >= 2.3
        try:
            if shutdown is not None:
                shutdown()
            else:
                sock = getattr(getattr(self._response, "connection", None), "sock", None)
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
        except (OSError, ValueError):  # already closed, or read to its end
            pass


class OfflineApi(Api):
    """No cluster at all (``apply --offline``): the backend renders its objects, and any request
    is a :class:`RuntimeUnavailable` (a bug, never a silent call)."""

    def __init__(self, namespace: str) -> None:
        super().__init__(None, "offline (no cluster)", namespace)

    def request(self, method: str, path: str, **_: Any) -> Any:
        raise RuntimeUnavailable(f"offline: no Kubernetes API server is contacted ({method} "
                                 f"{path} was not sent)")

    def close(self) -> None:
        pass
