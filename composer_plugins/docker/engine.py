"""The Docker runtime: pull with exactly one credential, and the container operations.

Uses the SDK's low-level :class:`docker.APIClient` (one HTTP call per operation, no implicit
re-inspection). Every SDK or HTTP failure is translated into a
:class:`~composer_core.errors.ComposerError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from typing import Any

import docker
import requests
import urllib3
from docker.errors import APIError, DockerException, NotFound, TLSParameterError

from composer_core import redact
from composer_core.engine.pullerrors import classify_pull_failure, reason_of
from composer_core.engine.tls import TlsDecision
from composer_core.errors import ContainerError, ContainerNotFound, RegistryError, RuntimeUnavailable
from composer_core.images.reference import ImageRef
from composer_core.settings import Settings
from composer_core.types import AnyCredentials, ContainerInfo, ContainerSpec, PullProgress
from composer_plugins.docker.auth import docker_auth_config
from composer_plugins.docker.client import SUPPORTED_SCHEMES, ConfigFreeAPIClient
from composer_plugins.docker.daemon import require_insecure_allowed

DEFAULT_ENDPOINT = "unix:///var/run/docker.sock"
PING_TIMEOUT = 5
CALL_TIMEOUT = 60


#: What an HTTP exchange with the daemon can raise besides the SDK's own errors: requests'
#: (ReadTimeout, ChunkedEncodingError... are not ConnectionErrors) and, on the SDK's streams,
#: which read the raw response, urllib3's (ProtocolError, ReadTimeoutError).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    requests.RequestException, urllib3.exceptions.HTTPError, DockerException)


def _tls_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, as the Docker CLI reads them."""
    if not environ:  # kwargs_from_env would read os.environ instead of "nothing"
        return {}
    try:
        return dict(docker.utils.kwargs_from_env(environment=dict(environ)))
    except TLSParameterError as exc:
        cert_path = environ.get("DOCKER_CERT_PATH") or "~/.docker (DOCKER_CERT_PATH is not set)"
        raise RuntimeUnavailable(
            f"Docker TLS is enabled (DOCKER_TLS_VERIFY / DOCKER_CERT_PATH) but the client "
            f"certificates in DOCKER_CERT_PATH={cert_path} are not usable: "
            f"{redact.scrub(str(exc))}; it must hold ca.pem, cert.pem and key.pem",
            hint="point DOCKER_CERT_PATH at the directory with ca.pem, cert.pem and key.pem, or "
                 "unset DOCKER_TLS_VERIFY and DOCKER_CERT_PATH for a daemon without TLS") from None


def check_endpoint(endpoint: str) -> None:
    """Refuse schemes the runtime does not support, before the SDK tries them.

    ``ssh://`` in particular: docker-py would shell out to ``ssh`` (or use paramiko, with its own
    host key policy) with no bound on how long a connection may take.
    """
    if "://" not in endpoint:  # host:port: the SDK reads it as tcp://
        return
    scheme = endpoint.split("://", 1)[0].lower()
    if scheme in ("ssh", "http+ssh"):
        raise RuntimeUnavailable(
            "ssh:// endpoints are not supported (DOCKER_HOST or opencti.daemon.docker.endpoint): "
            "forward the socket (ssh -L /tmp/docker.sock:/var/run/docker.sock host) and use "
            "unix:///tmp/docker.sock")
    if scheme not in SUPPORTED_SCHEMES:
        raise RuntimeUnavailable(
            f"unsupported Docker endpoint scheme {scheme}:// (DOCKER_HOST or "
            "opencti.daemon.docker.endpoint): use one of "
            + ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES))


def endpoint_settings(settings: Settings, environ: Mapping[str, str]) -> dict[str, Any]:
    """``base_url`` and ``tls`` for the client: the setting, else DOCKER_HOST & co, else default."""
    kwargs = _tls_from_env(environ)
    configured = settings.get("opencti.daemon.docker.endpoint")
    if configured:
        kwargs["base_url"] = str(configured)
    kwargs.setdefault("base_url", DEFAULT_ENDPOINT)
    check_endpoint(str(kwargs["base_url"]))
    return kwargs


def _engine_message(exc: APIError) -> str:
    return str(exc.explanation or exc)


def _info(data: Mapping[str, Any], fallback_name: str = "") -> ContainerInfo:
    state = data.get("State")
    config = data.get("Config") or {}
    if isinstance(state, Mapping):  # inspect
        status = str(state.get("Status") or "unknown")
        started = state.get("StartedAt")
        name = str(data.get("Name") or fallback_name).lstrip("/")
        labels = config.get("Labels") or {}
        image = str(config.get("Image") or data.get("Image") or "")
    else:  # list
        status = str(state or "unknown")
        started = None
        names = data.get("Names") or [fallback_name]
        name = str(names[0]).lstrip("/")
        labels = data.get("Labels") or {}
        image = str(data.get("Image") or "")
    return ContainerInfo(id=str(data.get("Id") or ""), name=name, image=image, status=status,
                         labels=dict(labels), restart_count=int(data.get("RestartCount") or 0),
                         started_at=started if started and not str(started).startswith("0001")
                         else None)


class DockerEvents:
    """Docker's ``/events`` stream (the SDK's cancellable stream): decoded messages; a transport
    error is RuntimeUnavailable; :meth:`close` (any thread) shuts its socket down."""

    def __init__(self, stream: Any, endpoint: str) -> None:
        self._stream = stream
        self._endpoint = endpoint

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        try:
            yield from self._stream
        except TRANSPORT_ERRORS as exc:
            raise RuntimeUnavailable(f"the event stream of Docker at {self._endpoint} broke: "
                                     f"{reason_of(exc)}") from None

    def close(self) -> None:
        self._stream.close()



class DockerRuntime:
    """A connected Docker Engine."""

    name = "docker"

    def __init__(self, api: docker.APIClient, endpoint: str) -> None:
        self.api = api
        self.endpoint = endpoint
        self._registry_config: Mapping[str, Any] | None = None

    @classmethod
    def connect(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> DockerRuntime:
        kwargs = endpoint_settings(settings, os.environ if environ is None else environ)
        endpoint = str(kwargs["base_url"])
        try:
            # version="auto" asks the daemon for its API version: that request is the ping.
            api = ConfigFreeAPIClient(version="auto", timeout=PING_TIMEOUT, **kwargs)
        except (DockerException, ValueError) as exc:
            raise RuntimeUnavailable(
                f"Docker does not answer at {endpoint}: {reason_of(exc)}",
                hint="start dockerd, or point DOCKER_HOST (or opencti.daemon.docker.endpoint) "
                     "at a running daemon") from None
        api.timeout = CALL_TIMEOUT
        return cls(api, endpoint)

    def close(self) -> None:
        self.api.close()

    @contextmanager
    def _calls(self, what: str, name: str | None = None) -> Iterator[None]:
        try:
            yield
        except NotFound as exc:
            if name is None:
                raise ContainerError(f"{what}: {redact.scrub(_engine_message(exc))}") from None
            raise ContainerNotFound(f"no container named {name!r} on docker") from None
        except APIError as exc:
            raise ContainerError(f"{what} failed on docker: {redact.scrub(_engine_message(exc))}",
                                 ) from None
        except TRANSPORT_ERRORS as exc:
            raise RuntimeUnavailable(f"{what}: Docker at {self.endpoint} stopped answering: "
                                     f"{reason_of(exc)}") from None

    # --- images ---------------------------------------------------------------------------

    def _daemon_registry_config(self) -> Mapping[str, Any]:
        if self._registry_config is None:
            with self._calls("reading the daemon's registry settings"):
                self._registry_config = self.api.info().get("RegistryConfig") or {}
        return self._registry_config

    def pull(self, image: ImageRef, credentials: AnyCredentials, *, tls: TlsDecision,
             progress: Callable[[PullProgress], None] | None = None) -> str:
        reference = image.normalized()
        if not tls.verify:
            # the daemon, not the client, decides whether TLS may be skipped for a registry
            require_insecure_allowed(self._daemon_registry_config(), image.registry,
                                     key=tls.setting or "the settings", endpoint=self.endpoint)
        # An explicit auth, even empty: with None, docker-py would send whatever its own
        # config.json holds for the registry, bypassing the credential chain.
        auth = docker_auth_config(credentials)
        tag = image.digest or image.tag or "latest"
        try:
            # closed on every exit, an error event included: that closes the HTTP response
            with closing(self.api.pull(image.repository, tag=tag, stream=True, decode=True,
                                       auth_config=auth)) as events:
                for event in events:
                    if not isinstance(event, Mapping):
                        continue
                    if event.get("error"):
                        raise classify_pull_failure(str(event["error"]), credentials)
                    if progress is not None and event.get("status"):
                        detail = event.get("progressDetail") or {}
                        progress(PullProgress(layer=event.get("id"), status=str(event["status"]),
                                              current=detail.get("current"),
                                              total=detail.get("total")))
        except APIError as exc:
            raise classify_pull_failure(_engine_message(exc), credentials) from None
        except TRANSPORT_ERRORS as exc:
            raise RuntimeUnavailable(f"pulling {reference}: Docker at {self.endpoint} stopped "
                                     f"answering: {reason_of(exc)}") from None
        # Never assume success from a quiet stream: the image must be there now.
        with self._calls(f"inspecting the pulled image {reference}"):
            try:
                return str(self.api.inspect_image(reference)["Id"])
            except NotFound as exc:
                raise RegistryError(f"Docker reported the pull of {reference} as done, but the "
                                    f"image is not there: {reason_of(exc)}") from None

    # --- containers -----------------------------------------------------------------------

    def create(self, spec: ContainerSpec) -> ContainerInfo:
        with self._calls(f"creating container {spec.name!r}"):
            created = self.api.create_container(
                image=spec.image, name=spec.name, environment=dict(spec.env),
                labels=dict(spec.labels), command=list(spec.command) if spec.command else None,
                host_config=self.api.create_host_config(
                    restart_policy={"Name": spec.restart_policy}))
        return ContainerInfo(id=str(created["Id"]), name=spec.name, image=spec.image,
                             status="created", labels=dict(spec.labels))

    def start(self, name: str) -> None:
        with self._calls(f"starting container {name!r}", name):
            self.api.start(name)

    def stop(self, name: str, timeout: int = 10) -> None:
        with self._calls(f"stopping container {name!r}", name):
            self.api.stop(name, timeout=timeout)

    def remove(self, name: str, *, force: bool = False) -> None:
        with self._calls(f"removing container {name!r}", name):
            self.api.remove_container(name, force=force)

    def rename(self, name: str, new_name: str) -> None:
        with self._calls(f"renaming container {name!r} to {new_name!r}", name):
            self.api.rename(name, new_name)

    def inspect(self, name: str) -> ContainerInfo | None:
        try:
            with self._calls(f"inspecting container {name!r}", name):
                return _info(self.api.inspect_container(name), name)
        except ContainerNotFound:
            return None

    def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        with self._calls("listing containers"):
            found = self.api.containers(all=True, filters=filters)
        return sorted((_info(c) for c in found), key=lambda c: c.name)

    def logs(self, name: str, tail: int | None = None) -> str:
        with self._calls(f"reading the logs of {name!r}", name):
            raw = self.api.logs(name, stdout=True, stderr=True,
                                tail="all" if tail is None else tail)
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


    def events(self, labels: Mapping[str, str], since: int | None, until: int) -> DockerEvents:
        """The container events of containers carrying ``labels``, from ``since`` to ``until``
        (seconds since the epoch): one request, held open; the daemon ends it at ``until``."""
        filters = {"label": [f"{k}={v}" for k, v in labels.items()], "type": ["container"]}
        with self._calls("opening the event stream"):
            stream = self.api.events(since=since, until=until, filters=filters, decode=True)
        return DockerEvents(stream, self.endpoint)
