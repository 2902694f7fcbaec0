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


def candidate_sockets(environ: Mapping[str, str]) -> list[str]:
    """The rootful socket (when running as root), then the rootless one of this user."""
    runtime_dir = environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    rootless = os.path.join(runtime_dir, "podman", "podman.sock")
    return [ROOTFUL_SOCKET, rootless] if os.geteuid() == 0 else [rootless, ROOTFUL_SOCKET]


def resolve_endpoint(settings: Settings, environ: Mapping[str, str]) -> str:
    configured = settings.get("opencti.daemon.podman.endpoint") or environ.get("CONTAINER_HOST")
    if configured:
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
