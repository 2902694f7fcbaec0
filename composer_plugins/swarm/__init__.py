"""Built-in runtime backend ``swarm``: Docker Swarm, one replicated service per connector.

Endpoint: ``opencti.daemon.swarm.endpoint`` when set, else ``DOCKER_HOST`` (with
``DOCKER_TLS_VERIFY`` / ``DOCKER_CERT_PATH``), else the default socket; it must be a swarm manager.
The nodes pull, with exactly the credential the chain resolved, forwarded by the manager in
``X-Registry-Auth``; the image runs pinned by digest. See ``docs/swarm.md``. The Docker SDK is
imported only when a command connects (``xtm-composer --help`` never loads it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from composer_core import hookimpl
from composer_core.settings import Problems, Settings, SettingsSpec
from composer_core.types import RuntimeBackend

if TYPE_CHECKING:
    from composer_core.workload import Backend


def connect(settings: Settings) -> Backend:
    from composer_plugins.swarm.backend import SwarmBackend

    return SwarmBackend.connect(settings)


def _validate(settings: Settings, problems: Problems) -> None:
    from composer_plugins.swarm.options import OptionError, SwarmOptions

    try:
        SwarmOptions.from_settings(settings)
    except OptionError as exc:
        problems.add(exc.key, exc.problem)


@hookimpl
def composer_settings() -> SettingsSpec:
    return SettingsSpec(
        name="swarm", owns=("opencti.daemon.swarm",), validator=_validate,
        defaults={"opencti": {"daemon": {"swarm": {
            "endpoint": None,         # a manager node; None: DOCKER_HOST, else the default socket
            "network": None,          # host | an overlay network's name | None: the engine's default
            "constraints": [],        # placement constraints, e.g. ["node.role==worker"]
            "resources": {"cpus": None, "memory": None},  # limits: 0.5; bytes or 512m, 1g
            "restart_policy": {"condition": "any", "delay": 5, "max_attempts": 0},
            "wait": 15,               # seconds apply watches a new task until it runs or is rejected
        }}}})


@hookimpl
def composer_runtime_backends() -> RuntimeBackend:
    return RuntimeBackend(name="swarm", connect=connect,
                          description="Docker Swarm: one service per connector (a manager node)")
