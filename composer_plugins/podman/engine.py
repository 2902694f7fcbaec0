"""The Podman runtime: pull with exactly one credential (or explicitly none), and containers.

Talks to the libpod API through podman-py's :class:`podman.PodmanClient` HTTP client. The pull
goes through the raw endpoint on purpose:

* podman-py sends no ``X-Registry-Auth`` header for an empty auth, and the Podman service then
  uses its *own* user's auth files (podman-py#553). An anonymous pull here sends an explicit empty
  auth map (``{}``), which the service reads as "no credentials" (:mod:`composer_plugins.podman.auth`).
* podman-py has been seen to return an empty image after a failed pull; the stream is read here
  and a pull without an ``error`` and without an image id is a failure too.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from typing import Any

import requests
from podman import PodmanClient

from composer_core import redact
from composer_core.engine.pullerrors import classify_pull_failure, reason_of
from composer_core.engine.tls import TlsDecision, is_loopback_registry
from composer_core.errors import ContainerError, ContainerNotFound, RegistryError, RuntimeUnavailable
from composer_core.images.reference import ImageRef
from composer_core.settings import Settings
from composer_core.timestamps import parse_time
from composer_core.types import AnyCredentials, ContainerInfo, ContainerSpec, PullProgress
from composer_plugins.podman.auth import registry_auth_header
from composer_plugins.podman.endpoint import resolve_endpoint

PING_TIMEOUT = 5
CALL_TIMEOUT = 60


def _error_text(response: Any) -> str:
    try:
        body = response.json()
        return str(body.get("message") or body.get("cause") or body)
    except ValueError:
        return str(response.text or f"HTTP {response.status_code}")


def _ping(client: PodmanClient) -> int:
    """The ping's HTTP status. The response dies here: alive (in a traceback, say) it would keep
    its socket open even after ``client.close()``."""
    with closing(client.api.get("/_ping", timeout=PING_TIMEOUT)) as response:
        return int(response.status_code)


def _demux(payload: bytes) -> bytes:
    """Docker's multiplexed log format: 8-byte headers (stream, size) before each frame."""
    out, index = bytearray(), 0
    while index + 8 <= len(payload):
        _, size = struct.unpack_from(">BxxxL", payload, index)
        out += payload[index + 8: index + 8 + size]
        index += 8 + size
    return bytes(out)


def _status(value: object) -> str:
    status = str(value or "unknown").lower()
    return "created" if status in ("configured", "initialized") else status


def _info(data: Mapping[str, Any], fallback_name: str = "") -> ContainerInfo:
    state = data.get("State")
    if isinstance(state, Mapping):  # inspect
        config = data.get("Config") or {}
        labels = config.get("Labels") or {}
        started = state.get("StartedAt")
        return ContainerInfo(
            id=str(data.get("Id") or ""), name=str(data.get("Name") or fallback_name),
            image=str(data.get("ImageName") or config.get("Image") or ""),
            status=_status(state.get("Status")), labels=dict(labels),
            restart_count=int(data.get("RestartCount") or 0),
            started_at=str(started) if started and not str(started).startswith("0001") else None)
    names = data.get("Names") or [fallback_name]
    # the libpod list gives StartedAt as epoch seconds and Created as an ISO time
    started_epoch, created = data.get("StartedAt"), parse_time(str(data.get("Created") or ""))
    started_iso = restarted_after = None
    if isinstance(started_epoch, int) and started_epoch > 0:
        started = datetime.fromtimestamp(started_epoch, UTC)
        started_iso = started.isoformat()
        if created is not None:
            restarted_after = (started - created).total_seconds()
    return ContainerInfo(id=str(data.get("Id") or ""), name=str(names[0]),
                         image=str(data.get("Image") or ""), status=_status(state),
                         labels=dict(data.get("Labels") or {}), restart_count=0,
                         started_at=started_iso, restarted_after=restarted_after)


def _shutdown(response: Any) -> None:
    """Shut the socket of a streamed response down, so that a read blocked on it in another
    thread returns at once (closing the response alone does not wake it)."""
    fp = getattr(getattr(getattr(response, "raw", None), "_fp", None), "fp", None)
    raw = getattr(fp, "raw", None)
    sock = getattr(raw, "_sock", None) or getattr(raw, "sock", None) or getattr(fp, "_sock", None)
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    response.close()


class PodmanEvents:
    """Podman's ``/events`` stream: decoded messages (docker's format); a transport error is
    RuntimeUnavailable; :meth:`close` (any thread) shuts its socket down."""

    def __init__(self, response: Any, endpoint: str) -> None:
        self._response = response
        self._endpoint = endpoint
        self._closed = False

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        try:
            for line in self._response.iter_lines():
                if not line:
                    continue
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, Mapping):
                    yield message
        except (requests.RequestException, OSError, ValueError) as exc:
            if self._closed:
                return
            raise RuntimeUnavailable(f"the event stream of Podman at {self._endpoint} broke: "
                                     f"{reason_of(exc)}") from None
        finally:
            self._response.close()

    def close(self) -> None:
        self._closed = True
        _shutdown(self._response)


class PodmanRuntime:
    """A connected Podman API service."""

    name = "podman"

    def __init__(self, client: PodmanClient, endpoint: str, settings: Settings) -> None:
        self.client = client
        self.endpoint = endpoint
        self.loopback_insecure = settings.get("opencti.daemon.podman.loopback_insecure") is True

    @classmethod
    def connect(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> PodmanRuntime:
        endpoint = resolve_endpoint(settings, os.environ if environ is None else environ)
        try:
            client = PodmanClient(base_url=endpoint, timeout=CALL_TIMEOUT)
        except (ValueError, OSError) as exc:
            raise RuntimeUnavailable(f"Podman endpoint {endpoint} is not usable: {exc}") from None
        try:
            status = _ping(client)
        except requests.RequestException as exc:
            client.close()
            raise RuntimeUnavailable(
                f"Podman does not answer at {endpoint}: {reason_of(exc)}",
                hint="start the API service (`podman system service --time=0`), or point "
                     "CONTAINER_HOST (or opencti.daemon.podman.endpoint) at it") from None
        if status != 200:
            client.close()
            raise RuntimeUnavailable(f"Podman at {endpoint} answered the ping with HTTP {status}")
        return cls(client, endpoint, settings)

    def close(self) -> None:
        self.client.close()

    @contextmanager
    def _connection(self, what: str) -> Iterator[None]:
        try:
            yield
        except requests.RequestException as exc:
            raise RuntimeUnavailable(f"{what}: Podman at {self.endpoint} stopped answering: "
                                     f"{reason_of(exc)}") from None

    def _call(self, method: str, path: str, what: str, name: str | None = None,
              **kwargs: Any) -> Any:
        with self._connection(what):
            response = getattr(self.client.api, method)(path, **kwargs)
        if response.status_code == 404 and name is not None:
            raise ContainerNotFound(f"no container named {name!r} on podman")
        if response.status_code >= 400:
            raise ContainerError(f"{what} failed on podman: {redact.scrub(_error_text(response))}")
        return response

    # --- images ---------------------------------------------------------------------------

    def pull(self, image: ImageRef, credentials: AnyCredentials, *, tls: TlsDecision,
             progress: Callable[[PullProgress], None] | None = None) -> str:
        reference = image.normalized()
        # Parity with Docker, which never verifies TLS for registries on loopback.
        verify = tls.verify and not (self.loopback_insecure and is_loopback_registry(image.registry))
        params = {"reference": reference, "tlsVerify": verify, "policy": "always"}
        headers = {"X-Registry-Auth": registry_auth_header(credentials)}
        image_id: str | None = None
        with self._connection(f"pulling {reference}"):
            # the streamed response is closed on every exit, errors included
            with closing(self.client.api.post("/images/pull", params=params, headers=headers,
                                              stream=True)) as response:
                if response.status_code >= 400:
                    raise classify_pull_failure(_error_text(response), credentials)
                for line in response.iter_lines():
                    if not line:
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if event.get("error"):
                        raise classify_pull_failure(str(event["error"]), credentials)
                    if event.get("id"):
                        image_id = str(event["id"])
                    elif progress is not None and event.get("stream"):
                        progress(PullProgress(layer=None, status=str(event["stream"]).strip()))
        if not image_id:
            raise RegistryError(f"Podman ended the pull of {reference} without an error and without "
                                "an image: treating it as failed")
        return image_id

    # --- containers -----------------------------------------------------------------------

    def create(self, spec: ContainerSpec) -> ContainerInfo:
        body: dict[str, Any] = {"name": spec.name, "image": spec.image, "env": dict(spec.env),
                                "labels": dict(spec.labels), "restart_policy": spec.restart_policy}
        if spec.command:
            body["command"] = list(spec.command)
        response = self._call("post", "/containers/create", f"creating container {spec.name!r}",
                              data=json.dumps(body), headers={"Content-Type": "application/json"})
        return ContainerInfo(id=str(response.json()["Id"]), name=spec.name, image=spec.image,
                             status="created", labels=dict(spec.labels))

    def start(self, name: str) -> None:
        self._call("post", f"/containers/{name}/start", f"starting container {name!r}", name)

    def stop(self, name: str, timeout: int = 10) -> None:
        self._call("post", f"/containers/{name}/stop", f"stopping container {name!r}", name,
                   params={"timeout": timeout}, timeout=CALL_TIMEOUT + timeout)

    def remove(self, name: str, *, force: bool = False) -> None:
        # force means kill, as in Docker (Podman would first wait the stop timeout)
        params = {"force": True, "timeout": 0} if force else {"force": False}
        response = self._call("delete", f"/containers/{name}", f"removing container {name!r}",
                              name, params=params)
        if response.status_code == 200:
            try:
                reports = response.json()
            except ValueError:
                reports = []
            errors = [r.get("Err") for r in reports or [] if isinstance(r, Mapping) and r.get("Err")]
            if errors:
                raise ContainerError(f"removing container {name!r} failed on podman: "
                                     f"{redact.scrub(str(errors[0]))}")

    def rename(self, name: str, new_name: str) -> None:
        self._call("post", f"/containers/{name}/rename",
                   f"renaming container {name!r} to {new_name!r}", name, params={"name": new_name})

    def inspect(self, name: str) -> ContainerInfo | None:
        try:
            response = self._call("get", f"/containers/{name}/json",
                                  f"inspecting container {name!r}", name)
        except ContainerNotFound:
            return None
        return _info(response.json(), name)

    def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        response = self._call("get", "/containers/json", "listing containers",
                              params={"all": True, "filters": filters})
        return sorted((_info(c) for c in response.json() or []), key=lambda c: c.name)

    def logs(self, name: str, tail: int | None = None) -> str:
        params: dict[str, Any] = {"stdout": True, "stderr": True}
        if tail is not None:
            params["tail"] = tail
        response = self._call("get", f"/containers/{name}/logs", f"reading the logs of {name!r}",
                              name, params=params)
        return _demux(response.content).decode("utf-8", "replace")

    def events(self, labels: Mapping[str, str], since: int | None, until: int) -> PodmanEvents:
        """The container events of containers carrying ``labels``, from ``since`` to ``until``
        (seconds since the epoch): one request, held open; the service ends it at ``until``
        (reads wait that long at most, and a little more)."""
        filters = {"label": [f"{k}={v}" for k, v in labels.items()], "type": ["container"]}
        params: dict[str, Any] = {"stream": "true", "filters": json.dumps(filters),
                                  "until": str(until)}
        if since is not None:
            params["since"] = str(since)
        read = max(until - datetime.now(UTC).timestamp(), 0) + CALL_TIMEOUT
        response = self._call("get", "/events", "opening the event stream", params=params,
                              stream=True, timeout=(PING_TIMEOUT, read))
        return PodmanEvents(response, self.endpoint)
