"""The engine restarted under ``run`` (issue 14): a real restart, not the relay stand-in of
tests/test_metrics.py. The stream reconnects (the log says so, the reconnect counter moves), a
full pass runs (``passes_total{trigger="reconnect"}``), and nothing changed while the engine was
down is lost; a disruption after the restart is handled on the new stream.

The bench's shared engines are never stopped (other tests use them): each test restarts an engine
of its own.

* Podman: a private ``podman system service`` on a socket of its own, over the bench's storage
  (same ``--root``/``--runroot`` and ``CONTAINERS_CONF`` as ``scripts/bench-services``), killed and
  started again on the same socket; while it is down a managed container is removed with the
  ``podman`` CLI and the connectors file gains a connector.
* Docker: a private ``dockerd`` (its own data root, exec root, pid file and socket under /tmp,
  ``--bridge=none --iptables=false``, vfs, ``--live-restore`` so that its containers outlive the
  restart as in production), the image pulled from the bench's open registry; SIGTERM, wait, start
  again; while it is down the connectors file gains a connector.

Start-up, measured: the private podman service answers in ~0.1 s, the private dockerd in 0.1-0.3 s
(and stops in ~1 s: --live-restore leaves its containers running); each test takes ~6 s.

Everything a fixture starts is stopped and removed at teardown, the test failed or not: containers,
processes (found by their command line naming the private directory), mounts, directories.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from composer_core.engine.labels import LABEL_MANAGER
from composer_core.testing import wait_for
from tests.engine_helpers import free_port, unique
from tests.test_metrics import get, run_process, samples, value

pytestmark = pytest.mark.integration

#: seconds an engine may take to answer after its start (measured: podman 0.1 s, dockerd 0.2 s)
START_BOUND = 30.0
#: seconds `run` may take to notice and repair something (the stream's backoff included)
BOUND = 30.0


def ping(sock: Path, path: str) -> bool:
    """Whether the engine on ``sock`` answers ``GET path`` with ``OK`` (one short request)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(sock))
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: engine\r\n\r\n".encode())
            data = b""
            for _ in range(100):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    return data.startswith(b"HTTP/1.") and data.rstrip().endswith(b"OK")


def pids_naming(text: str) -> list[int]:
    """The processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def end(proc: subprocess.Popen[bytes] | None, timeout: float = 20) -> None:
    """SIGTERM ``proc`` and wait for it; SIGKILL when it does not end in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class PrivateEngine:
    """An engine process of a test's own on ``sock``: :meth:`start`, :meth:`stop` (SIGTERM, wait),
    :meth:`restart`-able on the same socket; :meth:`close` stops it and removes what it left."""

    ping_path = "/_ping"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "engine.sock"
        self.log = root / "engine.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts: list[float] = []  # seconds each start took to answer

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> None:
        self.sock.unlink(missing_ok=True)
        started = time.monotonic()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), env=self.env(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True)
        deadline = started + START_BOUND
        for _ in range(int(START_BOUND / 0.05) + 1):
            if ping(self.sock, self.ping_path):
                self.starts.append(round(time.monotonic() - started, 3))
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-2000:]
        raise AssertionError(f"{self.command()[0]} did not answer on {self.sock}: {tail}")

    def stop(self) -> None:
        end(self.proc)
        self.proc = None

    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and ping(self.sock, self.ping_path)

    def close(self) -> None:
        self.stop()
        for pid in pids_naming(str(self.root)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True,
                                text=True, check=False).stdout.split()
        for mount in sorted((m for m in mounts if m.startswith(f"{self.root}/")), reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


class PrivatePodman(PrivateEngine):
    """``podman system service --time=0`` over the bench's storage, as bench-services starts it."""

    ping_path = "/v4.0.0/libpod/_ping"

    def __init__(self, root: Path, bench: Any) -> None:
        super().__init__(root)
        self.bench = bench
        storage = Path(bench.dir) / "podman"
        self.globals = ["--root", str(storage / "storage"), "--runroot", str(storage / "run")]

    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": self.bench.containers_conf}

    def command(self) -> list[str]:
        return ["podman", *self.globals, "system", "service", "--time=0", self.host]

    def cli(self, *args: str) -> str:
        """The ``podman`` CLI on the bench's storage (no service involved)."""
        done = subprocess.run(["podman", *self.globals, *args], env=self.env(),
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    def remove_labelled(self, manager: str) -> None:
        ids = self.cli("ps", "-aq", "--filter", f"label={LABEL_MANAGER}={manager}").split()
        if ids:
            self.cli("rm", "-f", "-t", "0", *ids)


class PrivateDocker(PrivateEngine):
    """A dockerd of its own under ``root`` (flags as bench-services' dockerd, plus
    ``--live-restore``): nothing of it is shared with the bench's daemon but the machine."""

    def command(self) -> list[str]:
        r = self.root
        # a containerd namespace is words joined by single [._-]: mkdtemp's name may hold "__"
        tag = "".join(ch for ch in r.name if ch.isalnum())
        return ["dockerd", "--config-file", str(r / "daemon.json"), "-H", self.host,
                "--data-root", str(r / "data"), "--exec-root", str(r / "exec"),
                "--pidfile", str(r / "dockerd.pid"), "--iptables=false", "--ip6tables=false",
                "--bridge=none", "--storage-driver=vfs", "--live-restore",
                "--shutdown-timeout", "5", "--containerd-namespace", tag,
                "--containerd-plugins-namespace", f"{tag}-plugins"]

    def start(self) -> None:
        (self.root / "daemon.json").write_text("{}\n")  # never /etc/docker/daemon.json
        (self.root / "dockerd.pid").unlink(missing_ok=True)  # a stale one makes dockerd refuse
        super().start()

    def api(self) -> Any:
        import docker

        return docker.APIClient(base_url=self.host, version="auto", timeout=60)

    def remove_all(self) -> None:
        client = self.api()
        try:
            for c in client.containers(all=True):
                client.remove_container(c["Id"], force=True)
        finally:
            client.close()

    def close(self) -> None:
        # its containers outlive it (--live-restore): removed through it first
        try:
            if not self.up():
                self.stop()
                self.start()
            self.remove_all()
        except Exception:  # noqa: BLE001 - what is left is killed below
            pass
        super().close()


def private_root() -> Path:
    # a short path: a unix socket's path is at most 107 bytes
    return Path(tempfile.mkdtemp(prefix="xtm-rs-", dir="/tmp"))


@pytest.fixture
def private_podman(bench: Any) -> Iterator[PrivatePodman]:
    engine = PrivatePodman(private_root(), bench)
    try:
        engine.start()
        yield engine
    finally:
        engine.close()


@pytest.fixture
def private_docker(bench: Any) -> Iterator[PrivateDocker]:
    engine = PrivateDocker(private_root())
    try:
        engine.start()
        yield engine
    finally:
        engine.close()


# --- the test ------------------------------------------------------------------------------


def write_fleet(path: Path, ids: list[str], image: str) -> None:
    path.write_text(yaml.safe_dump({"connectors": [
        {"id": i, "name": i, "image": image} for i in ids]}))


def states(engine: str, host: str, manager: str) -> dict[str, tuple[str, str]]:
    """name -> (status, id) of the manager's containers on ``host``, behind composer's back."""
    label = f"{LABEL_MANAGER}={manager}"
    if engine == "docker":
        import docker

        client = docker.APIClient(base_url=host, version="auto", timeout=30)
        try:
            return {c["Names"][0].lstrip("/"): (c["State"], c["Id"])
                    for c in client.containers(all=True, filters={"label": label})}
        finally:
            client.close()
    from podman import PodmanClient

    with PodmanClient(base_url=host, timeout=30) as podman:
        return {c.name: (str(c.attrs.get("State")), c.id)
                for c in podman.containers.list(all=True, filters={"label": label})}


def remove(engine: str, host: str, name: str) -> None:
    """``docker rm -f`` / ``podman rm -f`` of ``name`` through the engine's API."""
    if engine == "docker":
        import docker

        client = docker.APIClient(base_url=host, version="auto", timeout=30)
        try:
            client.remove_container(name, force=True)
        finally:
            client.close()
        return
    from podman import PodmanClient

    with PodmanClient(base_url=host, timeout=30) as podman:
        podman.api.delete(f"/containers/{name}", params={"force": True, "timeout": 0})


def metric(base: str, name: str, **labels: str) -> float:
    return value(samples(get(base + "/metrics")[1]), name, **labels)


def restart_under_run(which: str, engine: PrivateEngine, bench: Any, tmp_path: Path,
                      while_down: Any) -> tuple[dict[str, Any], list[str]]:
    """``run`` (schedule 60 s) on ``engine``: deploy two connectors, restart the engine (calling
    ``while_down(manager, path, ids, image)`` while it is down), check the reconnect and that
    everything is restored, then remove one on the new stream. Returns the figures and the
    output of ``run``."""
    manager = unique("xtm-test-manager")
    image = f"{bench.registry_open}/{bench.image}"
    ids = [unique("xtm-rs-a"), unique("xtm-rs-b"), unique("xtm-rs-new")]
    path = tmp_path / "connectors.yaml"
    write_fleet(path, ids[:2], image)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MANAGER__ID": manager, "MANAGER__EXECUTE_SCHEDULE": "60",
           "MANAGER__METRICS__ENABLE": "true", "MANAGER__METRICS__PORT": str(port),
           "DOCKER_HOST": engine.host, "CONTAINER_HOST": engine.host}
    ours = lambda: states(which, engine.host, manager)  # noqa: E731
    running = lambda names: lambda: all(  # noqa: E731
        ours().get(n, ("",))[0] == "running" for n in names)
    figures: dict[str, Any] = {"ids": ids}
    try:
        with run_process(which, path, env) as (_proc, outputs):
            wait_for(running(ids[:2]), 60, "the fleet deployed")
            wait_for(lambda: metric(base, "xtm_composer_passes_total", trigger="resync",
                                    result="ok") >= 1, BOUND, "the first pass counted")
            time.sleep(1)  # the stream opens with the first pass
            before = ours()
            assert metric(base, "xtm_composer_event_stream_reconnects_total") == 0
            down_at = time.monotonic()
            engine.stop()
            while_down(manager, path, ids, image)
            engine.start()
            figures["down_seconds"] = round(time.monotonic() - down_at, 2)
            wait_for(lambda: metric(base, "xtm_composer_event_stream_reconnects_total") >= 1,
                     BOUND, "the stream reconnected")
            wait_for(lambda: metric(base, "xtm_composer_passes_total", trigger="reconnect",
                                    result="ok") >= 1, BOUND, "a full pass after the reconnect")
            wait_for(running(ids), BOUND, "everything restored after the restart")
            after = ours()
            assert set(after) == set(ids)
            figures["replaced"] = sorted(n for n in ids[:2] if after[n][1] != before[n][1])
            # the new stream works: a removal after the restart arrives on it and is repaired
            # well within the 60 s schedule. Mostly by an event pass; but a full pass still
            # pending from the restart (the file's change seen while the engine was down) covers
            # the event when it comes first, so the test does not insist on the event pass.
            removals = metric(base, "xtm_composer_events_total", kind="removed")
            remove(which, engine.host, ids[0])
            wait_for(lambda: ours().get(ids[0], ("", after[ids[0]][1]))[1] != after[ids[0]][1]
                     and running([ids[0]])(), BOUND, f"{ids[0]} back after rm -f")
            wait_for(lambda: metric(base, "xtm_composer_events_total", kind="removed")
                     > removals, BOUND, "the removal received on the new stream")
            assert metric(base, "xtm_composer_passes_total", trigger="resync", result="ok") == 1
        log = "\n".join(outputs)
        assert "event stream broken, reconnecting" in log
        assert "reconnected: a full pass follows" in log
        assert "pass done (reconnect)" in log
    finally:
        if which == "podman":
            assert isinstance(engine, PrivatePodman)
            engine.remove_labelled(manager)
    return figures, outputs


def test_run_survives_a_restart_of_podman(private_podman: PrivatePodman, bench: Any,
                                          tmp_path: Path) -> None:
    def while_down(manager: str, path: Path, ids: list[str], image: str) -> None:
        # behind the service's back (the CLI on the same storage): nobody tells `run`
        private_podman.cli("rm", "-f", "-t", "0", ids[1])
        write_fleet(path, ids, image)

    figures, _ = restart_under_run("podman", private_podman, bench, tmp_path, while_down)
    # the one removed while the service was down was deployed again, the other untouched
    assert figures["replaced"] == [figures["ids"][1]]


def test_run_survives_a_restart_of_docker(private_docker: PrivateDocker, bench: Any,
                                          tmp_path: Path) -> None:
    def while_down(manager: str, path: Path, ids: list[str], image: str) -> None:
        write_fleet(path, ids, image)

    figures, _ = restart_under_run("docker", private_docker, bench, tmp_path, while_down)
    # --live-restore: the containers outlived the daemon's restart, untouched
    assert figures["replaced"] == []
