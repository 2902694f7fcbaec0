"""Built-in runtime backend ``podman``: the Podman API service through podman-py.

Endpoint: ``opencti.daemon.podman.endpoint`` when set, else ``CONTAINER_HOST``, else the rootful
socket ``/run/podman/podman.sock`` (as root) or the rootless one
``$XDG_RUNTIME_DIR/podman/podman.sock``. Like Docker, registries on loopback are pulled without TLS
verification unless ``opencti.daemon.podman.loopback_insecure`` is false.
The engine is driven through :class:`~composer_core.engine.container_backend.ContainerBackend`
(the workload contract over its container-level runtime). podman-py is imported only when a
command connects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from composer_core import hookimpl
from composer_core.settings import Problems, Settings, SettingsSpec, check_bool, check_text
from composer_core.types import RuntimeBackend

if TYPE_CHECKING:
    from composer_core.workload import Backend


def connect(settings: Settings) -> Backend:
    """The podman runtime, driven through the core's container adapter (the workload contract)."""
    from composer_core.engine.container_backend import ContainerBackend
    from composer_plugins.podman.engine import PodmanRuntime

    return ContainerBackend(PodmanRuntime.connect(settings))


def _validate(settings: Settings, problems: Problems) -> None:
    check_text(settings, problems, "opencti.daemon.podman.endpoint",
               what="an endpoint such as unix:///run/podman/podman.sock", optional=True)
    check_bool(settings, problems, "opencti.daemon.podman.loopback_insecure")


@hookimpl
def composer_settings() -> SettingsSpec:
    return SettingsSpec(
        name="podman", owns=("opencti.daemon.podman",), validator=_validate,
        defaults={"opencti": {"daemon": {"podman": {
            "endpoint": None,           # None: CONTAINER_HOST, else the rootful/rootless socket
            "loopback_insecure": True,  # like Docker: no TLS verification on 127.0.0.0/8 and ::1
        }}}})


@hookimpl
def composer_runtime_backends() -> RuntimeBackend:
    return RuntimeBackend(name="podman", connect=connect,
                          description="Podman API service (CONTAINER_HOST, podman-py)")
