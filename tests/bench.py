"""Access to the local test bench started by ``scripts/bench-services up`` (see docs/bench.md).

``up`` writes ``$XTM_BENCH_DIR/bench.json`` (default ``/tmp/xtm-bench``) once everything
answers, and ``down`` removes it, so a missing file means "bench not running".
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_DIR = "/tmp/xtm-bench"
START_HINT = "start it with: sudo scripts/bench-services up"


@dataclass(frozen=True)
class SwarmNode:
    """One dockerd of the bench swarm, in its own network namespace (its ``name`` is also its hostname)."""

    name: str  # xtmsw-n1 (the manager), xtmsw-n2, xtmsw-n3 (workers)
    role: str  # "manager" or "worker"
    host: str  # unix:///.../swarm/nN/docker.sock: this node's own Engine API
    addr: str  # its address inside the swarm's namespaces (10.240.0.x), as the registry's log shows it
    pidfile: str  # the dockerd's pid: a test may stop a node; `scripts/bench-services swarm up` brings it back


@dataclass(frozen=True)
class SwarmBench:
    """The three-node Docker Swarm of ``scripts/bench-services swarm up`` (see docs/bench.md, "The swarm").

    The registry is reachable from the nodes only (not from the root namespace): push and inspect
    through the manager's API. Its two htpasswd users are the swarm's own: the main bench's
    credentials are refused there, and the workers hold none.
    """

    manager_host: str  # DOCKER_HOST of the manager
    nodes: tuple[SwarmNode, ...]
    registry: str  # host:port, htpasswd auth, plain HTTP (in every node's --insecure-registry)
    username: str
    password: str = field(repr=False)
    username2: str  # a second valid user, e.g. to rotate credentials
    password2: str = field(repr=False)
    htpasswd: str  # the registry's users (bcrypt): the registry rereads it when it changes, e.g. to rotate
    registry_log: str  # the registry's log: `msg="authorized request" ... http.request.remoteaddr="ADDR:port"`
    image: str  # repository:tag in `registry`, e.g. xtm-test/busybox:1.0 (no node has it at start)
    image2: str

    @property
    def manager(self) -> SwarmNode:
        return next(n for n in self.nodes if n.role == "manager")

    @property
    def workers(self) -> tuple[SwarmNode, ...]:
        return tuple(n for n in self.nodes if n.role == "worker")

    def ref(self, image: str | None = None) -> str:
        """Full reference in the swarm registry, e.g. ``10.240.0.2:5650/xtm-test/busybox:1.0``."""
        return f"{self.registry}/{image or self.image}"

    def env(self) -> dict[str, str]:
        """The ``XTM_BENCH_SWARM_*`` variables, as printed by ``scripts/bench-services env``."""
        out = {"XTM_BENCH_SWARM_MANAGER_HOST": self.manager.host, "XTM_BENCH_SWARM_MANAGER_ADDR": self.manager.addr}
        for i, worker in enumerate(self.workers, start=1):
            out[f"XTM_BENCH_SWARM_WORKER{i}_HOST"] = worker.host
            out[f"XTM_BENCH_SWARM_WORKER{i}_ADDR"] = worker.addr
        for name in ("registry", "username", "password", "username2", "password2", "htpasswd", "registry_log", "image",
                     "image2"):
            out[f"XTM_BENCH_SWARM_{name.upper()}"] = getattr(self, name)
        return out

    @classmethod
    def from_json(cls, data: object, where: object) -> SwarmBench:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: 'swarm' is not an object; re-run scripts/bench-services up")
        node_names = [f.name for f in fields(SwarmNode)]
        raw_nodes = data.get("nodes")
        if not isinstance(raw_nodes, list) or not all(
            isinstance(n, dict) and all(isinstance(n.get(k), str) for k in node_names) for n in raw_nodes
        ):
            raise ValueError(f"{where}: 'swarm.nodes' is not a list of nodes; re-run scripts/bench-services up")
        nodes = tuple(SwarmNode(**{k: n[k] for k in node_names}) for n in raw_nodes)
        if [n.role for n in nodes].count("manager") != 1:
            raise ValueError(f"{where}: 'swarm.nodes' must hold exactly one manager")
        names = [f.name for f in fields(cls) if f.name != "nodes"]
        missing = [n for n in names if not isinstance(data.get(n), str)]
        if missing:
            raise ValueError(f"{where}: swarm: missing or non-string keys {missing}; re-run scripts/bench-services up")
        return cls(nodes=nodes, **{n: data[n] for n in names})


@dataclass(frozen=True)
class Bench:
    """Mirror of ``scripts/bench-services env`` (each field is ``XTM_BENCH_<FIELD>``)."""

    dir: str
    docker_host: str  # unix:///.../docker.sock
    podman_host: str  # unix:///.../podman.sock
    containers_conf: str  # CONTAINERS_CONF for any local podman CLI call
    registry_private: str  # host:port, htpasswd auth, plain HTTP
    registry_open: str  # host:port, no auth, plain HTTP
    registry_tls: str  # host:port, htpasswd auth, HTTPS signed by `ca`
    registry_ns_tls: str  # netns host:port, no auth, HTTPS: Docker verifies it (x509 error)
    registry_ns_insecure: str  # netns host:port, no auth, HTTPS: in dockerd's --insecure-registry
    username: str
    password: str = field(repr=False)
    ca: str  # PEM of the CA that signed the registries' certificate
    image: str  # repository:tag (no registry part), e.g. xtm-test/busybox:1.0
    image2: str  # same repository, another image (different content and label)
    # the three-node swarm; None when it is down, or in a bench.json written before it existed
    swarm: SwarmBench | None = None

    def ref(self, registry: str, image: str | None = None) -> str:
        """Full reference, e.g. ``bench.ref(bench.registry_private)`` -> ``127.0.0.1:5000/xtm-test/busybox:1.0``."""
        return f"{registry}/{image or self.image}"

    def env(self) -> dict[str, str]:
        """The ``XTM_BENCH_*`` variables, as printed by ``scripts/bench-services env``."""
        out = {f"XTM_BENCH_{f.name.upper()}": getattr(self, f.name) for f in fields(self) if f.name != "swarm"}
        if self.swarm is not None:
            out.update(self.swarm.env())
        return out


def bench_dir() -> Path:
    return Path(os.environ.get("XTM_BENCH_DIR") or DEFAULT_DIR)


def bench_json_path() -> Path:
    return bench_dir() / "bench.json"


def load_bench(path: str | os.PathLike[str] | None = None) -> Bench | None:
    """Read bench.json; None when it does not exist (bench not up).

    A file that exists but is unreadable or incomplete raises: that is a broken bench, not a missing one.
    """
    p = Path(path) if path is not None else bench_json_path()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    names = [f.name for f in fields(Bench) if f.name != "swarm"]
    missing = [n for n in names if not isinstance(data.get(n), str)]
    if missing:
        raise ValueError(f"{p}: missing or non-string keys {missing}; re-run scripts/bench-services up")
    swarm = None if data.get("swarm") is None else SwarmBench.from_json(data["swarm"], p)
    return Bench(swarm=swarm, **{n: data[n] for n in names})


def require_bench() -> Bench:
    """The bench, or skip the test (``pytest.fail`` instead when ``CI=true``: CI must run these tests)."""
    bench = load_bench()
    if bench is not None:
        return bench
    import pytest

    msg = f"test bench not running ({bench_json_path()} not found); {START_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def require_swarm() -> SwarmBench:
    """The bench swarm, like :func:`require_bench` (a failure under ``CI=true``, else a skip)."""
    bench = require_bench()
    if bench.swarm is not None:
        return bench.swarm
    import pytest

    msg = f"the bench swarm is down ({bench_json_path()} has no swarm); start it with: sudo scripts/bench-services swarm up"
    if os.environ.get("CI") == "true":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@contextmanager
def api_clients() -> Iterator[Callable[[str], Any]]:
    """``make(host)``: docker-py's low-level client for a bench socket (the swarm's nodes); every
    client made is closed on exit. It sends no credential unless a test gives one."""
    import docker

    clients: list[Any] = []

    def make(host: str) -> Any:
        clients.append(docker.APIClient(base_url=host, version="auto", timeout=60))
        return clients[-1]

    try:
        yield make
    finally:
        for client in clients:
            client.close()


#: what a relay feeds the bytes a client sends to the engine, one per connection (raising
#: ValueError ends that connection)
Feed = Callable[[bytes], None]


class SocketRelay:
    """A unix socket at ``path`` relaying every connection to the unix socket ``target`` (a bench
    engine's). :meth:`up` opens it; :meth:`down` closes it and every connection through it (to
    ``run``, the engine went away), and it may be opened again. ``watch``, when given, is called
    for each connection and returns the :data:`Feed` of what the client sends (the steady-state
    benchmark counts the HTTP requests with it). ``max_connections`` / ``max_reads``: the bounds
    of the accept loop and of each connection's reads."""

    def __init__(self, path: Path, target: str, *, watch: Callable[[], Feed] | None = None,
                 max_connections: int = 10_000, max_reads: int = 10_000_000) -> None:
        self.path = path
        self.target = target
        self._watch = watch
        self._max_connections = max_connections
        self._max_reads = max_reads
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None

    def up(self) -> SocketRelay:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True, name="relay").start()
        return self

    def _accept(self, server: socket.socket) -> None:
        for _ in range(self._max_connections):
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            feed = self._watch() if self._watch is not None else None
            threading.Thread(target=self._pipe, args=(client, upstream, feed), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, feed: Feed | None) -> None:
        for _ in range(self._max_reads):
            try:
                data = a.recv(65536)
                if not data:
                    break
                if feed is not None:
                    feed(data)
                b.sendall(data)
            except (OSError, ValueError):
                break
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.path.unlink(missing_ok=True)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
