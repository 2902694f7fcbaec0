"""Connecting to a swarm manager: the endpoint, the config-free client, and the refusal of anything
that is not an active manager (what it is, what to run)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from docker.errors import DockerException

from composer_core import redact
from composer_core.engine.pullerrors import reason_of
from composer_core.errors import ComposerError, RuntimeUnavailable
from composer_plugins.docker.client import ConfigFreeAPIClient
from composer_plugins.docker.engine import DEFAULT_ENDPOINT, TRANSPORT_ERRORS, _tls_from_env, check_endpoint
from composer_plugins.swarm.options import PREFIX

PING_TIMEOUT = 5
CALL_TIMEOUT = 60


def refuse_non_manager(swarm: Mapping[str, Any], endpoint: str) -> None:
    """:class:`RuntimeUnavailable` unless ``docker info``'s ``Swarm`` says this node manages a swarm."""
    state = str(swarm.get("LocalNodeState") or "inactive")
    where = f"the Docker Engine at {endpoint}"
    hint_point = f"or point {PREFIX}.endpoint (or DOCKER_HOST) at a manager node"
    if state == "active" and swarm.get("ControlAvailable"):
        return
    if state == "active":
        managers = ", ".join(str(m.get("Addr")) for m in swarm.get("RemoteManagers") or []
                             if isinstance(m, Mapping)) or "unknown"
        raise RuntimeUnavailable(
            f"{where} is a swarm worker (node {swarm.get('NodeID')}), not a manager: services "
            f"can only be managed through a manager (this swarm's managers: {managers})",
            hint=f"point {PREFIX}.endpoint (or DOCKER_HOST) at a manager, or promote this node on "
                 f"a manager: docker node promote {swarm.get('NodeID')}")
    if state == "inactive":
        raise RuntimeUnavailable(
            f"{where} is not part of a swarm (Swarm.LocalNodeState: inactive)",
            hint=f"run `docker swarm init` on it to make it a manager, {hint_point}; for a single "
                 "Docker host use --runtime docker")
    if state == "locked":
        raise RuntimeUnavailable(f"{where} is a locked swarm manager (autolock)",
                                 hint=f"unlock it: docker swarm unlock, {hint_point}")
    error = redact.scrub(str(swarm.get("Error") or "")) or "no detail"
    raise RuntimeUnavailable(f"{where} is not an active swarm node (Swarm.LocalNodeState: "
                             f"{state}: {error})",
                             hint=f"check `docker info` and `docker node ls` there, {hint_point}")


def open_manager(configured: str | None, environ: Mapping[str, str]) -> tuple[Any, str, dict[str, Any]]:
    """``(client, endpoint, docker info)`` of the manager at ``configured``, else ``DOCKER_HOST``
    (with ``DOCKER_TLS_VERIFY`` / ``DOCKER_CERT_PATH``), else the default socket."""
    kwargs = _tls_from_env(environ)
    if configured:
        kwargs["base_url"] = configured
    kwargs.setdefault("base_url", DEFAULT_ENDPOINT)
    endpoint = str(kwargs["base_url"])
    check_endpoint(endpoint)
    try:
        api = ConfigFreeAPIClient(version="auto", timeout=PING_TIMEOUT, **kwargs)
    except (DockerException, ValueError) as exc:
        raise RuntimeUnavailable(
            f"no Docker Engine answers at {endpoint}: {reason_of(exc)}",
            hint=f"point {PREFIX}.endpoint (or DOCKER_HOST) at a swarm manager") from None
    try:
        info = dict(api.info())
        refuse_non_manager(info.get("Swarm") or {}, endpoint)
    except TRANSPORT_ERRORS as exc:
        api.close()
        raise RuntimeUnavailable(f"the Docker Engine at {endpoint} stopped answering: "
                                 f"{reason_of(exc)}") from None
    except ComposerError:
        api.close()
        raise
    api.timeout = CALL_TIMEOUT
    return api, endpoint, info
