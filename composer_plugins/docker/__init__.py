"""Built-in runtime backend ``docker``: Docker Engine through the Docker SDK for Python.

Endpoint: ``opencti.daemon.docker.endpoint`` when set, else ``DOCKER_HOST`` (with
``DOCKER_TLS_VERIFY`` / ``DOCKER_CERT_PATH``), else the default socket ``/var/run/docker.sock``.
The engine is driven through
:class:`~composer_core.engine.container_backend.ContainerBackend` (the workload contract over
its container-level :class:`~composer_core.types.Runtime`). The SDK is imported only when a
command connects (``xtm-composer --help`` never loads it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from composer_core import hookimpl
from composer_core.settings import Problems, Settings, SettingsSpec, check_text
from composer_core.types import RuntimeBackend

if TYPE_CHECKING:
    from composer_core.workload import Backend


def connect(settings: Settings) -> Backend:
    """The docker runtime, driven through the core's container adapter (the workload contract)."""
    from composer_core.engine.container_backend import ContainerBackend
    from composer_plugins.docker.engine import DockerRuntime

    return ContainerBackend(DockerRuntime.connect(settings))


ENDPOINT = "opencti.daemon.docker.endpoint"


def _validate(settings: Settings, problems: Problems) -> None:
    check_text(settings, problems, ENDPOINT, what="an endpoint such as unix:///run/docker.sock",
               optional=True)


@hookimpl
def composer_settings() -> SettingsSpec:
    # None: DOCKER_HOST, else the default socket
    return SettingsSpec(name="docker", owns=(ENDPOINT,), validator=_validate,
                        defaults={"opencti": {"daemon": {"docker": {"endpoint": None}}}})


@hookimpl
def composer_runtime_backends() -> RuntimeBackend:
    return RuntimeBackend(name="docker", connect=connect,
                          description="Docker Engine (DOCKER_HOST, Docker SDK for Python)")
