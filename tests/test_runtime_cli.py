"""The container commands through the real entry point: pull, deploy, ps, logs, start, stop, rm;
runtime selection; exit codes; and a scan of every output for secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from composer_core.engine.deploy import Deployer
from tests.conftest import assert_no_secrets
from tests.engine_helpers import (
    create_unmanaged,
    remove_by_name,
    unique,
)

Run = Callable[[list[str]], tuple[int, str, str]]
CHATTY = ("sh", "-c", "echo first-line; echo hello-from-xtm; trap 'exit 0' TERM; sleep 3600 & wait")


@pytest.fixture
def cli_env(engine: str, bench: Any, manager: str,
            monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Settings through the environment, as an operator would set them."""
    env = {"MANAGER__ID": manager, "OPENCTI__DAEMON__SELECTOR": engine,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__URL": bench.registry_private,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__USERNAME": bench.username,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__PASSWORD": bench.password}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


# --- no engine needed -------------------------------------------------------------------------


class ReplicatedMemory:
    """An in-memory backend that reports replicas and a node, as an orchestrator does, and has
    no single-host pull: what the commands must handle for swarm."""

    capabilities = frozenset({"replicas"})

    def __init__(self) -> None:
        from composer_core.testing import InMemoryBackend

        self._inner = InMemoryBackend("orchestra")
        self.name, self.endpoint = "orchestra", "memory://orchestra"

    def observe(self, labels: Any) -> Any:
        from dataclasses import replace

        return [replace(o, replicas_wanted=1, replicas_running=1 if o.state == "started" else 0,
                        detail=f"{o.status} on n2")
                for o in self._inner.observe(labels)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture
def memory_backend(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The commands' backend is an in-memory one (no engine), whatever the settings select."""
    from composer_core.engine import select

    monkeypatch.setenv("MANAGER__ID", "m-cli")
    holder: dict[str, Any] = {}

    def connect(settings: Any, plugins: Any, override: str | None = None) -> Any:
        return holder["backend"]

    monkeypatch.setattr(select, "connect_runtime", connect)
    return holder


def test_workload_commands_go_through_the_backend_contract(run_cli: Run, memory_backend: Any) -> None:
    """deploy, ps, logs, stop, start and rm on a backend that is not a container engine: the
    commands need only the contract (and show replicas and the node where the backend has them)."""
    backend = memory_backend["backend"] = ReplicatedMemory()
    code, out, err = run_cli(["deploy", "docker.io/library/busybox:1.36", "--name", "orch-one",
                              "--env", "XTM_CONTRACT_OUTPUT=hello\nworld", "--json"])
    assert code == 0, err
    created = json.loads(out)
    assert (created["action"], created["status"], created["state"]) == ("created", "running", "started")
    assert created["runtime"] == "orchestra" and created["source"] == "anonymous"
    assert set(created) >= {"runtime", "action", "name", "id", "image", "resolved", "status",
                            "config_hash", "source"}
    code, out, _ = run_cli(["deploy", "docker.io/library/busybox:1.36", "--name", "orch-one",
                            "--env", "XTM_CONTRACT_OUTPUT=hello\nworld", "--json"])
    assert json.loads(out)["action"] == "unchanged"
    code, out, _ = run_cli(["ps", "--json"])
    (listed,) = json.loads(out)["containers"]
    assert (listed["name"], listed["status"], listed["state"]) == ("orch-one", "running", "started")
    assert (listed["replicas_wanted"], listed["replicas_running"]) == (1, 1)
    assert listed["detail"] == "running on n2" and listed["error"] is None
    code, out, _ = run_cli(["ps"])
    assert "REPLICAS" in out and "1/1" in out and "running on n2" in out
    code, out, _ = run_cli(["logs", "orch-one", "--tail", "1"])
    assert out.splitlines() == ["world"]
    assert run_cli(["stop", "orch-one"])[0] == 0
    code, out, _ = run_cli(["ps", "--json"])
    assert json.loads(out)["containers"][0]["replicas_running"] == 0
    assert run_cli(["start", "orch-one"])[0] == 0
    code, _, err = run_cli(["rm", "orch-one"])
    assert code == 12 and "stop it first" in err
    assert run_cli(["rm", "--force", "orch-one"])[0] == 0
    assert backend.runtime.containers == {}
    code, _, err = run_cli(["pull", "docker.io/library/busybox:1.36"])
    assert code == 2 and "`pull` needs a single container engine" in err


def test_single_name_commands_refuse_others_workloads_on_any_backend(run_cli: Run,
                                                                     memory_backend: Any) -> None:
    from composer_core.testing import InMemoryBackend

    backend = memory_backend["backend"] = InMemoryBackend()
    backend.add_unmanaged("theirs")
    for command in (["logs"], ["stop"], ["start"], ["rm", "--force"]):
        code, _, err = run_cli([*command, "theirs"])
        assert code == 13 and "not managed by this manager" in err
    code, _, err = run_cli(["deploy", "docker.io/library/busybox:1.36", "--name", "theirs"])
    assert code == 12 and "is not managed by this manager" in err
    assert backend.requests["pull"] == 0  # refused before any pull
    assert [c.name for c in backend.runtime.containers.values()] == ["theirs"]
    code, _, err = run_cli(["logs", "nobody"])
    assert code == 13 and "no container named 'nobody'" in err


@pytest.mark.parametrize("args", [["deploy", "--help"], ["ps", "--help"], ["pull", "--help"]])
def test_container_commands_help_imports_no_engine_sdk(args: list[str], tmp_path: Path) -> None:
    code = ("import sys\nfrom composer_core.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in "
            "('docker', 'podman', 'rich')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout[-300:] + out.stderr[-300:]


@pytest.mark.parametrize("args, fragment", [
    (["deploy", "img:1", "--name", "-bad"], "invalid container name"),
    (["deploy", "img:1", "--name", "ok-name", "--env", "=v"], "invalid --env"),
    (["deploy", "img:1", "--name", "ok-name", "--env", "NOVALUE"], "expected KEY=VALUE"),
    (["logs", "a/b"], "invalid container name"),
    (["stop", "a b"], "invalid container name"),
])
def test_bad_input_exits_2_before_any_engine(run_cli: Run, args: list[str], fragment: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    code, _, err = run_cli(args)
    assert code == 2 and fragment in err


def test_unknown_runtime_names_the_available_ones(run_cli: Run) -> None:
    code, _, err = run_cli(["--runtime", "containerd", "ps"])
    assert code == 2
    assert "containerd" in err and "docker" in err and "podman" in err


def test_nothing_answering_lists_every_endpoint_tried(run_cli: Run, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    monkeypatch.setenv("CONTAINER_HOST", f"unix://{tmp_path}/podman.sock")
    code, out, err = run_cli(["ps", "--json"])
    assert code == 5
    assert f"docker: Docker does not answer at unix://{tmp_path}/docker.sock" in err
    assert f"podman: Podman does not answer at unix://{tmp_path}/podman.sock" in err
    assert json.loads(out)["error"] == "runtime-unavailable"
    assert "Traceback" not in err


@pytest.mark.parametrize("cert_path", ["no-such-dir", None])
def test_docker_tls_without_usable_certificates_is_a_clear_error(
        run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        cert_path: str | None) -> None:
    """DOCKER_TLS_VERIFY=1 with a missing (or unset: ~/.docker) DOCKER_CERT_PATH."""
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2376")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    if cert_path is not None:
        monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path / cert_path))
    code, _, err = run_cli(["--runtime", "docker", "ps"])
    assert code == 5, err
    assert "Traceback" not in err and "internal error" not in err
    assert "DOCKER_CERT_PATH=" in err and "DOCKER_TLS_VERIFY" in err
    assert "ca.pem, cert.pem and key.pem" in err


@pytest.mark.parametrize("runtime, variable", [("docker", "DOCKER_HOST"),
                                               ("podman", "CONTAINER_HOST")])
def test_ssh_endpoints_are_refused_with_the_socket_forwarding_advice(
        run_cli: Run, monkeypatch: pytest.MonkeyPatch, runtime: str, variable: str) -> None:
    monkeypatch.setenv(variable, "ssh://core@192.0.2.1:22/run/podman/podman.sock")
    code, _, err = run_cli(["--runtime", runtime, "ps"])
    assert code == 5, err
    assert "ssh:// endpoints are not supported" in err and "ssh -L /tmp/" in err
    assert "Traceback" not in err


@pytest.mark.integration
def test_docker_commands_survive_a_malformed_config_json(run_cli: Run, bench: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """One bad ``auth`` in ~/.docker/config.json made docker-py's client constructor fail (exit
    70, "Incorrect padding"): the runtime does not read that file at all."""
    config = Path(os.environ["HOME"]) / ".docker" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"auths": {bench.registry_open: {"auth": "!!notb64"}}}))
    monkeypatch.setenv("DOCKER_HOST", bench.docker_host)
    monkeypatch.setenv("MANAGER__ID", unique("xtm-test-manager"))
    code, out, err = run_cli(["--runtime", "docker", "ps", "--json"])
    assert code == 0, err
    assert json.loads(out)["containers"] == []
    code, _, err = run_cli(["--runtime", "docker", "pull", bench.ref(bench.registry_open)])
    assert code == 0, err


# --- runtime selection --------------------------------------------------------------------------

integration = pytest.mark.integration


@integration
def test_auto_prefers_docker_and_says_so(run_cli: Run, bench: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", bench.docker_host)
    monkeypatch.setenv("CONTAINER_HOST", bench.podman_host)
    monkeypatch.setenv("MANAGER__ID", unique("xtm-test-manager"))
    code, out, err = run_cli(["ps", "--json"])
    assert code == 0, err
    assert json.loads(out)["runtime"] == "docker"
    assert f"runtime auto: using docker at {bench.docker_host}" in err


@integration
def test_auto_falls_back_to_podman(run_cli: Run, bench: Any, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    monkeypatch.setenv("CONTAINER_HOST", bench.podman_host)
    monkeypatch.setenv("MANAGER__ID", unique("xtm-test-manager"))
    code, out, err = run_cli(["ps", "--json"])
    assert code == 0, err
    assert json.loads(out) == {"runtime": "podman", "manager": os.environ["MANAGER__ID"],
                               "containers": []}
    assert "runtime auto: using podman" in err


# --- the commands on both engines -----------------------------------------------------------------


@integration
def test_deploy_and_pull_commands(engine: str, bench: Any, run_cli: Run,
                                  cli_env: dict[str, str]) -> None:
    name = unique()
    secret = "env-secret-" + os.urandom(4).hex()
    args = ["--log-level", "debug", "deploy", bench.image, "--name", name, "--env", "A=1",
            "--env", f"OPENCTI_TOKEN={secret}", "--json"]
    outputs: list[str] = []
    code, out, err = run_cli(args)
    outputs += [out, err]
    assert code == 0, err
    created = json.loads(out)
    assert created["runtime"] == engine and created["action"] == "created"
    assert created["resolved"] == bench.ref(bench.registry_private)
    assert created["status"] == "running" and created["source"] == "config"
    assert "Deploying container - Registry: " + bench.registry_private in err
    code, out, err = run_cli(args)
    outputs += [out, err]
    assert json.loads(out)["action"] == "unchanged"
    code, out, err = run_cli(["pull", bench.image])
    outputs += [out, err]
    assert code == 0 and f"pulled {bench.ref(bench.registry_private)} on {engine}" in out
    assert f"(credentials: config (user {bench.username}))" in out
    code, out, err = run_cli(["rm", "--force", name])
    outputs += [out, err]
    assert code == 0
    assert_no_secrets("\n".join(outputs), [bench.password, secret])


@integration
def test_ps_logs_stop_start_rm(engine: str, bench: Any, run_cli: Run, cli_env: dict[str, str],
                               engine_settings: Any, connect: Any, plugins: Any) -> None:
    settings = engine_settings({"opencti.daemon.docker.registry.url": bench.registry_open})
    name = unique()
    Deployer(connect(settings), settings, plugins).deploy(bench.image, name, command=CHATTY)

    code, out, _ = run_cli(["ps", "--json"])
    listed = json.loads(out)
    assert code == 0 and listed["runtime"] == engine
    assert [(c["name"], c["status"]) for c in listed["containers"]] == [(name, "running")]
    code, out, _ = run_cli(["ps"])
    assert out.splitlines()[0].split() == ["NAME", "CONNECTOR", "IMAGE", "STATUS", "CONFIG"]
    assert name in out and "running" in out

    code, out, _ = run_cli(["logs", name, "--tail", "1"])
    assert code == 0 and out.strip() == "hello-from-xtm"
    code, out, _ = run_cli(["logs", name])
    assert out.split() == ["first-line", "hello-from-xtm"]

    code, out, err = run_cli(["stop", name, "--time", "5", "--json"])
    assert code == 0 and json.loads(out) == {"runtime": engine, "name": name, "action": "stopped"}
    code, out, _ = run_cli(["ps", "--json"])
    assert json.loads(out)["containers"][0]["status"] == "exited"
    code, out, _ = run_cli(["start", name])
    assert code == 0 and out.strip() == f"{name}: started"

    code, _, err = run_cli(["rm", name])
    assert code == 12 and "is running" in err and "--force" in err
    code, out, _ = run_cli(["rm", "-f", name])
    assert code == 0 and out.strip() == f"{name}: removed"
    code, out, _ = run_cli(["ps", "--json"])
    assert json.loads(out)["containers"] == []


@integration
@pytest.mark.parametrize("command", [["logs"], ["stop"], ["start"], ["rm", "--force"]])
def test_commands_refuse_containers_of_others(engine: str, bench: Any, run_cli: Run,
                                              cli_env: dict[str, str], command: list[str]) -> None:
    name = unique()
    create_unmanaged(engine, bench, name, bench.ref(bench.registry_open))
    try:
        code, _, err = run_cli([*command, name])
        assert code == 13 and "not managed by this manager" in err
        code, out, _ = run_cli(["ps", "--json"])
        assert name not in out
    finally:
        remove_by_name(engine, bench, name)


@integration
def test_missing_container_exits_13(engine: str, run_cli: Run, cli_env: dict[str, str]) -> None:
    code, _, err = run_cli(["logs", unique()])
    assert code == 13 and "no container named" in err


@integration
def test_registry_errors_exit_codes_and_no_secret_anywhere(engine: str, bench: Any, run_cli: Run,
                                                           cli_env: dict[str, str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "wrong-" + os.urandom(6).hex()
    outputs: list[str] = []
    monkeypatch.setenv("OPENCTI__DAEMON__DOCKER__REGISTRY__PASSWORD", wrong)
    code, out, err = run_cli(["--log-level", "debug", "pull", bench.image, "--json"])
    outputs += [out, err]
    assert code == 7 and json.loads(out)["error"] == "unauthorized"
    assert "unauthorized" in err and "provider 'config'" in err and "Traceback" not in err
    for key in ("USERNAME", "PASSWORD"):
        monkeypatch.delenv(f"OPENCTI__DAEMON__DOCKER__REGISTRY__{key}")
    code, out, err = run_cli(["--log-level", "debug", "deploy", bench.image, "--name", unique()])
    outputs += [out, err]
    assert code == 6 and "authentication required" in err
    assert_no_secrets("\n".join(outputs), [wrong, bench.password])


# --- pull progress ------------------------------------------------------------------------------


def _read_all(fd: int) -> bytes:
    out = b""
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            return out
        if not chunk:
            return out
        out += chunk


@integration
def test_progress_bar_on_a_terminal_only(engine: str, bench: Any, run_cli: Run,
                                         cli_env: dict[str, str]) -> None:
    import pty

    master, slave = pty.openpty()
    try:
        tty = subprocess.run([sys.executable, "-m", "composer_core", "pull", bench.image],
                             stdin=slave, stdout=subprocess.PIPE, stderr=slave, timeout=60,
                             env={**os.environ, "TERM": "xterm"})
        drawn = _read_all(master).decode("utf-8", "replace")
    finally:
        os.close(master)
        os.close(slave)
    assert tty.returncode == 0
    assert f"pulling {bench.ref(bench.registry_private)}" in drawn  # the bar's label
    assert "\x1b[" in drawn  # drawn with terminal control sequences
    for args in (["pull", bench.image], ["pull", bench.image, "--json"]):
        code, out, err = run_cli(args)  # captured: not a terminal
        assert code == 0
        assert "\x1b[" not in out + err and "pulling " not in out + err
