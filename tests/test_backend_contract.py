"""The backend contract kit (composer_core.testing) on every backend of this distribution.

* docker and podman, on the real bench (integration): the same suite a third-party backend runs.
* swarm, on the bench's real three-node swarm (integration): services pulled by the nodes from the
  swarm's private registry, with the credential the workload carries.
* kubernetes, against tests/k8s_standin.py (a stand-in for the API server, NOT a cluster, marker
  ``k8s_standin``): tests/test_kubernetes_standin.py::TestKubernetesOnTheStandIn, events included.
* InMemoryBackend (unit): the kit's own in-memory backend passes the suite it ships with, so the
  fleet and deploy unit tests that use it stand on a backend that keeps the contract.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from composer_core.testing import BackendContract, ContractEnv, InMemoryBackend
from composer_core.types import Credentials
from composer_core.workload import Backend
from tests.engine_helpers import create_unmanaged, raw_client, remove_by_name, unique

REGISTRY = "registry.example:5000"


@pytest.mark.integration
class TestContainerEngines(BackendContract):
    """docker and podman (the ``engine`` fixture is parametrised over both)."""

    @pytest.fixture
    def backend_factory(self, engine_settings: Callable[..., Any],
                        connect_backend: Callable[[Any], Backend]) -> Callable[[], Backend]:
        return lambda: connect_backend(engine_settings())

    @pytest.fixture
    def contract_env(self, engine: str, bench: Any, manager: str) -> Iterator[ContractEnv]:
        made: list[str] = []

        def make_unmanaged(name: str) -> None:
            made.append(name)
            create_unmanaged(engine, bench, name, bench.ref(bench.registry_open))

        def unmanaged_exists(name: str) -> bool:
            client = raw_client(engine, bench)
            try:
                if engine == "docker":
                    return bool(client.containers(all=True, filters={"name": f"^{name}$"}))
                return bool(client.containers.list(all=True, filters={"name": f"^{name}$"}))
            finally:
                client.close()

        yield ContractEnv(
            manager=manager, image=bench.ref(bench.registry_open),
            auth_image=bench.ref(bench.registry_private),
            auth_credentials=Credentials(registry=bench.registry_private, source="config",
                                         username=bench.username, password=bench.password),
            make_unmanaged=make_unmanaged, unmanaged_exists=unmanaged_exists, timeout=30)
        for name in made:
            remove_by_name(engine, bench, name)


@pytest.mark.integration
class TestSwarm(BackendContract):
    """The swarm backend against the bench's manager node; every image needs the credential."""

    @pytest.fixture
    def swarm(self) -> Any:
        from tests.bench import require_swarm

        return require_swarm()

    @pytest.fixture
    def backend_factory(self, swarm: Any, make_settings: Callable[..., Any]) -> Iterator[Callable[[], Backend]]:
        from composer_plugins.swarm.backend import SwarmBackend

        # tasks on the workers only, as the swarm tests place theirs: the manager's own images are
        # pushed and removed by other tests, which a task running there would hold
        settings = make_settings({"opencti.daemon.swarm.endpoint": swarm.manager_host,
                                  "opencti.daemon.swarm.constraints": ["node.role==worker"]})
        made: list[Backend] = []

        def make() -> Backend:
            if not made:
                made.append(SwarmBackend.connect(settings, environ={}))
            return made[0]

        yield make
        for backend in made:
            backend.close()

    @pytest.fixture
    def contract_env(self, swarm: Any) -> Iterator[ContractEnv]:
        import docker

        manager = unique("xtm-contract-swarm")
        client = docker.APIClient(base_url=swarm.manager_host, version="auto", timeout=60)
        made: list[str] = []

        def make_unmanaged(name: str) -> None:
            made.append(name)
            client.create_service(docker.types.TaskTemplate(
                docker.types.ContainerSpec(swarm.ref(), command=["sleep", "3600"]),
                placement=docker.types.Placement(constraints=["node.role==worker"])), name=name)

        def unmanaged_exists(name: str) -> bool:
            return any(s["Spec"]["Name"] == name for s in client.services(filters={"name": name}))

        credentials = Credentials(registry=swarm.registry, source="config",
                                  username=swarm.username, password=swarm.password)
        yield ContractEnv(
            manager=manager, image=swarm.ref(), credentials=credentials,
            auth_image=swarm.ref(), auth_credentials=credentials,
            make_unmanaged=make_unmanaged, unmanaged_exists=unmanaged_exists, timeout=60)
        for service in client.services(filters={"label": f"opencti-manager={manager}"}):
            client.remove_service(service["ID"])
        for name in made:
            client.remove_service(name)
        client.close()


class TestInMemoryBackend(BackendContract):
    """The kit's in-memory backend, with a registry that requires credentials."""

    @pytest.fixture
    def memory(self) -> InMemoryBackend:
        backend = InMemoryBackend()
        backend.runtime.require_auth(REGISTRY, "alice", "right-password")
        return backend

    @pytest.fixture
    def backend_factory(self, memory: InMemoryBackend) -> Callable[[], Backend]:
        return lambda: memory

    @pytest.fixture
    def contract_env(self, memory: InMemoryBackend) -> ContractEnv:
        return ContractEnv(
            manager=unique("xtm-test-manager"), image="docker.io/library/busybox:1.36",
            auth_image=f"{REGISTRY}/xtm/connector:1",
            auth_credentials=Credentials(registry=REGISTRY, source="config", username="alice",
                                         password="right-password"),
            make_unmanaged=lambda name: memory.add_unmanaged(name) and None,
            unmanaged_exists=lambda name: memory.runtime.inspect(name) is not None, timeout=1)
