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
from composer_core.types import RuntimeBackend

if TYPE_CHECKING:
    from composer_core.settings import Settings
    from composer_core.workload import Backend


def connect(settings: Settings) -> Backend:
    from composer_plugins.swarm.backend import SwarmBackend

    return SwarmBackend.connect(settings)


@hookimpl
def composer_runtime_backends() -> RuntimeBackend:
    # RuntimeBackend.connect is typed for today's container-level Runtime; it returns a workload
    # Backend for swarm until the engines move to the workload contract (issue 10).
    return RuntimeBackend(name="swarm", connect=connect,  # type: ignore[arg-type]
                          description="Docker Swarm: one service per connector (a manager node)")
