"""Fixtures and helpers shared by the engine, deploy and CLI tests (real engines of the bench).

Import the fixtures into a test module (``from tests.engine_helpers import engine, manager, ...``).

* ``engine`` is parametrised over ``docker`` and ``podman`` and points ``DOCKER_HOST`` *and*
  ``CONTAINER_HOST`` at the bench (never at the machine's own sockets).
* ``manager`` is a manager.id unique to the test; every container carrying it is removed at
  teardown (on both engines), and only those.
* ``connect_backend`` connects the selected :class:`~composer_core.workload.Backend`; ``connect``
  gives the container-level runtime behind it (docker, podman).
* ``raw`` gives the engine's SDK client, for checks made behind the composer's back.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from composer_core.engine.labels import LABEL_MANAGER
from composer_core.settings import Settings
from composer_core.types import Runtime
from composer_core.workload import Backend

ENGINES = ("docker", "podman")
#: A command that exits at once on SIGTERM (the image's `sleep` as PID 1 ignores it): fast stops.
QUICK_STOP = ("sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait")


def unique(prefix: str = "xtm-test") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def free_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def docker_auth(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()


def write_docker_config(home: Path, data: dict[str, Any]) -> Path:
    path = home / ".docker" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def raw_client(engine: str, bench: Any) -> Any:
    if engine == "docker":
        import docker

        return docker.APIClient(base_url=bench.docker_host, version="auto", timeout=60)
    from podman import PodmanClient

    return PodmanClient(base_url=bench.podman_host, timeout=60)


def _podman_kill_remove(client: Any, name: str) -> None:
    # timeout=0: kill at once, as Docker's force does (Podman would wait the stop timeout first)
    client.api.delete(f"/containers/{name}", params={"force": True, "timeout": 0})


def remove_labelled(engine: str, bench: Any, label: str, value: str) -> list[str]:
    """Force-remove every container with ``label=value`` on ``engine``; return their names."""
    client = raw_client(engine, bench)
    try:
        return remove_labelled_on(engine, client, label, value)
    finally:
        client.close()


def remove_labelled_on(engine: str, client: Any, label: str, value: str) -> list[str]:
    """:func:`remove_labelled` with an open ``client`` (docker-py's APIClient or a
    PodmanClient), four at a time (the benchmarks remove fleets of a thousand)."""
    if engine == "docker":
        found = [(c["Id"], c["Names"][0].lstrip("/"))
                 for c in client.containers(all=True, filters={"label": f"{label}={value}"})]

        def remove(cid: str) -> None:
            client.remove_container(cid, force=True)
    else:
        found = [(c.id, c.name)
                 for c in client.containers.list(all=True, filters={"label": f"{label}={value}"})]

        def remove(cid: str) -> None:
            _podman_kill_remove(client, cid)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(remove, [cid for cid, _ in found]))
    return [name for _, name in found]


def remove_by_name(engine: str, bench: Any, name: str) -> None:
    client = raw_client(engine, bench)
    try:
        if engine == "docker":
            try:
                client.remove_container(name, force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        else:
            _podman_kill_remove(client, name)
    finally:
        client.close()


def create_unmanaged(engine: str, bench: Any, name: str, image: str, *,
                     labels: dict[str, str] | None = None, start: bool = False) -> None:
    """A container xtm-composer did not create (no manager label), made with the raw SDK;
    ``labels`` instead of ``xtm-test=unmanaged``; ``start``: started too. ``image`` (of an
    anonymous bench registry) is pulled first: tests and benchmarks before may have removed it
    (tests/test_bench.py does), and a create does not pull."""
    labels = {"xtm-test": "unmanaged"} if labels is None else labels
    repo, tag = image.rsplit(":", 1) if ":" in image.rsplit("/", 1)[-1] else (image, "latest")
    client = raw_client(engine, bench)
    try:
        if engine == "docker":
            client.pull(repo, tag=tag)
            client.create_container(image, name=name, labels=labels)
            if start:
                client.start(name)
        else:
            client.images.pull(repo, tag=tag, tls_verify=False)  # plain HTTP or the bench's CA
            container = client.containers.create(image, name=name, labels=labels)
            if start:
                container.start()
    finally:
        client.close()


class CountingRuntime:
    """Counts the runtime-method calls made through it (tests/test_fleet.py, bench/apply.py)."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.name = runtime.name
        self.endpoint = runtime.endpoint

    def __getattr__(self, attr: str) -> Any:
        target = getattr(self._runtime, attr)
        if not callable(target):
            return target

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls[attr] += 1
            return target(*args, **kwargs)

        return counted


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, bench: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DOCKER_HOST", bench.docker_host)
    monkeypatch.setenv("CONTAINER_HOST", bench.podman_host)
    return str(request.param)


@pytest.fixture
def manager(engine: str, bench: Any) -> Iterator[str]:
    manager_id = unique("xtm-test-manager")
    yield manager_id
    remove_labelled(engine, bench, LABEL_MANAGER, manager_id)


@pytest.fixture
def engine_settings(make_settings: Callable[..., Settings], engine: str,
                    manager: str) -> Callable[..., Settings]:
    """Settings for this engine and manager, plus dotted overrides."""

    def make(overrides: dict[str, Any] | None = None) -> Settings:
        base: dict[str, Any] = {"manager.id": manager, "opencti.daemon.selector": engine}
        base.update(overrides or {})
        return make_settings(base)

    return make


@pytest.fixture
def connect_backend(plugins: Any) -> Iterator[Callable[[Settings], Backend]]:
    """Connect the backend the settings select; every backend is closed at teardown."""
    from composer_core.engine.select import connect_runtime

    opened: list[Backend] = []

    def open_backend(settings: Settings) -> Backend:
        backend = connect_runtime(settings, plugins)
        opened.append(backend)
        return backend

    yield open_backend
    for backend in opened:
        backend.close()


@pytest.fixture
def connect(connect_backend: Callable[[Settings], Backend]) -> Callable[[Settings], Runtime]:
    """The container-level runtime behind the backend the settings select (docker, podman), for
    tests that drive containers directly; closed with its backend at teardown."""
    from composer_core.engine.container_backend import runtime_of

    def open_runtime(settings: Settings) -> Runtime:
        return runtime_of(connect_backend(settings), "tests")

    return open_runtime
