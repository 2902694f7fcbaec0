"""Where the Podman API service listens: the setting, ``CONTAINER_HOST``, or the usual sockets.

``DOCKER_HOST`` is deliberately not read: with ``selector: auto`` it would make "podman" another
name for the Docker daemon.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from composer_core.errors import RuntimeUnavailable
from composer_core.settings import Settings

ROOTFUL_SOCKET = "/run/podman/podman.sock"
#: Endpoint schemes the Podman runtime accepts (podman-py's, minus its ssh transports).
SUPPORTED_SCHEMES = ("unix", "http+unix", "tcp", "http")


def candidate_sockets(environ: Mapping[str, str]) -> list[str]:
    """The rootful socket (when running as root), then the rootless one of this user."""
    runtime_dir = environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    rootless = os.path.join(runtime_dir, "podman", "podman.sock")
    return [ROOTFUL_SOCKET, rootless] if os.geteuid() == 0 else [rootless, ROOTFUL_SOCKET]


def check_endpoint(endpoint: str) -> None:
    """Refuse schemes the runtime does not support, before podman-py tries them.

    ``ssh://`` in particular: podman-py's SSH adapter shells out to ``ssh`` with host key checking
    disabled, and a connection that does not come up hangs for minutes.
    """
    scheme = endpoint.split("://", 1)[0].lower() if "://" in endpoint else ""
    if scheme in ("ssh", "http+ssh"):
        raise RuntimeUnavailable(
            "ssh:// endpoints are not supported (CONTAINER_HOST or opencti.daemon.podman.endpoint): "
            "forward the socket (ssh -L /tmp/podman.sock:/run/podman/podman.sock host) and use "
            "unix:///tmp/podman.sock")
    if scheme not in SUPPORTED_SCHEMES:
        shown = f"{scheme}://" if scheme else repr(endpoint)
        raise RuntimeUnavailable(
            f"unsupported Podman endpoint {shown} (CONTAINER_HOST or "
            "opencti.daemon.podman.endpoint): use one of "
            + ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES))


def resolve_endpoint(settings: Settings, environ: Mapping[str, str]) -> str:
    configured = settings.get("opencti.daemon.podman.endpoint") or environ.get("CONTAINER_HOST")
    if configured:
        check_endpoint(str(configured))
        return str(configured)
    candidates = candidate_sockets(environ)
    for path in candidates:
        if os.path.exists(path):
            return f"unix://{path}"
    raise RuntimeUnavailable(
        "no Podman socket found (CONTAINER_HOST is not set; tried "
        + ", ".join(candidates) + ")",
        hint="start the API service (`systemctl enable --now podman.socket`, or "
             "`podman system service --time=0 unix:///run/podman/podman.sock`), or set "
             "CONTAINER_HOST / opencti.daemon.podman.endpoint")
