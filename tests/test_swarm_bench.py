"""The bench swarm itself: three real dockerd nodes, and workers that pull only with forwarded credentials.

Raw docker-py calls on purpose (low-level ``APIClient``, as tests/engine_helpers.py does): this checks
the bench, independently of any composer backend. See docs/bench.md, "The swarm".
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bench import Bench, SwarmBench, api_clients, load_bench, require_swarm
from tests.engine_helpers import QUICK_STOP, unique

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench-services"
#: Bounds of every wait below (tasks pull within ~1 s here, get rejected within ~0.6 s).
WAIT_S = 60.0


# ---------------------------------------------------------------- bench.json (no swarm needed)

OLD_BENCH = {
    "dir": "/tmp/x", "docker_host": "unix:///tmp/x/d.sock", "podman_host": "unix:///tmp/x/p.sock",
    "containers_conf": "/tmp/x/c.conf", "registry_private": "127.0.0.1:5000", "registry_open": "127.0.0.1:5001",
    "registry_tls": "127.0.0.1:5443", "registry_ns_tls": "10.231.77.2:5443",
    "registry_ns_insecure": "10.231.77.2:5444", "username": "u", "password": "p", "ca": "/tmp/x/ca.crt",
    "image": "xtm-test/busybox:1.0", "image2": "xtm-test/busybox:2.0",
}
SWARM = {
    "manager_host": "unix:///s/n1/docker.sock",
    "nodes": [
        {"name": f"xtmsw-n{i}", "role": "manager" if i == 1 else "worker", "host": f"unix:///s/n{i}/docker.sock",
         "addr": f"10.240.0.1{i}", "pidfile": f"/s/n{i}/bench.pid"}
        for i in (1, 2, 3)
    ],
    "registry": "10.240.0.2:5650", "username": "su", "password": "sp", "username2": "su2", "password2": "sp2",
    "htpasswd": "/s/htpasswd", "registry_log": "/s/reg/registry.log",
    "image": "xtm-test/busybox:1.0", "image2": "xtm-test/busybox:2.0",
}


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_a_bench_json_from_before_the_swarm_still_loads(tmp_path: Path) -> None:
    bench = load_bench(_write(tmp_path, OLD_BENCH))
    assert isinstance(bench, Bench) and bench.swarm is None
    assert not [k for k in bench.env() if k.startswith("XTM_BENCH_SWARM_")]
    assert load_bench(_write(tmp_path, dict(OLD_BENCH, swarm=None))) == bench  # the swarm is down


def test_the_swarm_section_loads_into_nodes_and_env(tmp_path: Path) -> None:
    bench = load_bench(_write(tmp_path, dict(OLD_BENCH, swarm=SWARM)))
    assert bench is not None and bench.swarm is not None
    swarm = bench.swarm
    assert swarm.manager.name == "xtmsw-n1" and swarm.manager.host == SWARM["manager_host"]
    assert [w.addr for w in swarm.workers] == ["10.240.0.12", "10.240.0.13"]
    assert swarm.ref() == "10.240.0.2:5650/xtm-test/busybox:1.0"
    assert "sp" not in repr(swarm) and "sp2" not in repr(swarm)
    env = bench.env()
    assert env["XTM_BENCH_SWARM_MANAGER_HOST"] == "unix:///s/n1/docker.sock"
    assert env["XTM_BENCH_SWARM_WORKER2_HOST"] == "unix:///s/n3/docker.sock"
    assert env["XTM_BENCH_SWARM_WORKER1_ADDR"] == "10.240.0.12"
    assert env["XTM_BENCH_SWARM_PASSWORD2"] == "sp2" and env["XTM_BENCH_USERNAME"] == "u"


@pytest.mark.parametrize("broken", [
    {"nodes": "n1"},
    {"nodes": [dict(SWARM["nodes"][0], role="worker")] + SWARM["nodes"][1:]},  # no manager
    {"registry": None},
])
def test_a_broken_swarm_section_is_an_error(tmp_path: Path, broken: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="swarm"):
        load_bench(_write(tmp_path, dict(OLD_BENCH, swarm=dict(SWARM, **broken))))


# ---------------------------------------------------------------- the real swarm

@pytest.fixture
def swarm() -> SwarmBench:
    return require_swarm()


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """``api(host)``: a low-level client that knows no credential (an empty DOCKER_CONFIG)."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    with api_clients() as make:
        yield make


@pytest.fixture
def services(swarm: SwarmBench, api: Any) -> Iterator[list[str]]:
    """Names of the services a test creates: every one is removed at teardown."""
    names: list[str] = []
    yield names
    manager = api(swarm.manager_host)
    for name in names:
        try:
            manager.remove_service(name)
        except Exception as exc:  # noqa: BLE001 - gone already is fine; say anything else
            if "not found" not in str(exc):
                raise


def fresh_tag(swarm: SwarmBench, api: Any) -> str:
    """Push the test image under a new tag (through the manager, which then forgets it): no node has it."""
    manager = api(swarm.manager_host)
    repo, tag = swarm.ref().rsplit(":", 1)
    new_tag = unique("swarm")
    auth = {"username": swarm.username, "password": swarm.password}
    manager.pull(repo, tag=tag, auth_config=auth)
    manager.tag(f"{repo}:{tag}", repo, new_tag)
    out = manager.push(repo, tag=new_tag, auth_config=auth)
    assert "errorDetail" not in out, out
    manager.remove_image(f"{repo}:{new_tag}")
    manager.remove_image(f"{repo}:{tag}")
    return f"{repo}:{new_tag}"


def has_image(client: Any, ref: str) -> bool:
    import docker.errors

    try:
        client.inspect_image(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def global_worker_service(manager: Any, name: str, ref: str) -> None:
    """One task per worker (global mode, node.role==worker): each worker must pull on its own."""
    import docker.types

    manager.create_service(
        docker.types.TaskTemplate(
            container_spec=docker.types.ContainerSpec(image=ref, command=list(QUICK_STOP)),
            placement=docker.types.Placement(constraints=["node.role==worker"]),
        ),
        name=name, mode=docker.types.ServiceMode("global"), labels={"xtm-bench-test": "swarm"},
    )


def wait_tasks(manager: Any, name: str, done: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT_S
    while True:
        tasks = manager.tasks(filters={"service": name})
        if done(tasks) or time.monotonic() > deadline:
            return tasks
        time.sleep(0.2)


def states(tasks: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(t.get("NodeID", ""), t["Status"]["State"], t["Status"].get("Err", "")) for t in tasks]


@pytest.mark.integration
def test_three_nodes_ready_one_manager_two_workers(swarm: SwarmBench, api: Any) -> None:
    nodes = api(swarm.manager_host).nodes()
    seen = sorted((n["Description"]["Hostname"], n["Spec"]["Role"], n["Status"]["State"], n["Status"]["Addr"])
                  for n in nodes)
    assert seen == sorted((n.name, n.role, "ready", n.addr) for n in swarm.nodes)
    assert len(swarm.workers) == 2
    for node in swarm.nodes:  # each node's own API: in the swarm, with its own address and hostname
        info = api(node.host).info()
        assert info["Name"] == node.name
        assert info["Swarm"]["LocalNodeState"] == "active" and info["Swarm"]["NodeAddr"] == node.addr
        assert info["Swarm"]["ControlAvailable"] is (node.role == "manager")


@pytest.mark.integration
def test_workers_hold_no_credentials_and_the_registry_wants_them(swarm: SwarmBench, api: Any) -> None:
    import docker.errors

    repo, tag = swarm.ref().rsplit(":", 1)
    for worker in swarm.workers:
        client = api(worker.host)
        with pytest.raises(docker.errors.APIError, match="no basic auth credentials"):
            client.pull(repo, tag=tag)
        bench = load_bench()  # the main bench's credential is not the swarm registry's
        assert bench is not None
        with pytest.raises(docker.errors.APIError, match="unauthorized|authentication required"):
            client.pull(repo, tag=tag, auth_config={"username": bench.username, "password": bench.password})
        assert not has_image(client, swarm.ref())


@pytest.mark.integration
def test_a_service_created_with_registry_auth_is_pulled_by_each_worker(
    swarm: SwarmBench, api: Any, services: list[str]
) -> None:
    ref = fresh_tag(swarm, api)
    assert not [n.name for n in swarm.nodes if has_image(api(n.host), ref)]
    manager = api(swarm.manager_host)
    # docker-py sends X-Registry-Auth on create_service for the registries it has logged in to
    manager.login(swarm.username, swarm.password, registry=swarm.registry)
    name = unique("xtm-bench-swarm")
    services.append(name)
    global_worker_service(manager, name, ref)

    tasks = wait_tasks(manager, name, lambda ts: len([t for t in ts if t["Status"]["State"] == "running"]) == 2)
    running = [t for t in tasks if t["Status"]["State"] == "running"]
    assert len(running) == 2, states(tasks)
    worker_ids = {n["ID"]: n["Description"]["Hostname"] for n in manager.nodes(filters={"role": "worker"})}
    assert {t["NodeID"] for t in running} == set(worker_ids), states(tasks)

    log = Path(swarm.registry_log).read_text(encoding="utf-8", errors="replace")
    manifest = f'uri="/v2/{ref.split("/", 1)[1].replace(":", "/manifests/")}"'
    for worker in swarm.workers:
        assert has_image(api(worker.host), ref), worker.name
        pulls = [line for line in log.splitlines()
                 if 'msg="authorized request"' in line and f'remoteaddr="{worker.addr}:' in line
                 and (manifest in line or manifest.replace('"', "") + " " in line)]
        assert pulls, f"no authorised manifest request from {worker.name} ({worker.addr}) for {ref}"
    assert not has_image(manager, ref)  # the manager forwarded the credential, it did not pull for them


@pytest.mark.integration
def test_a_service_created_without_credentials_is_rejected(
    swarm: SwarmBench, api: Any, services: list[str]
) -> None:
    ref = fresh_tag(swarm, api)
    manager = api(swarm.manager_host)  # no login: no X-Registry-Auth
    name = unique("xtm-bench-swarm")
    services.append(name)
    global_worker_service(manager, name, ref)

    tasks = wait_tasks(manager, name, lambda ts: len({t["NodeID"] for t in ts if t["Status"]["State"] == "rejected"}) == 2)
    rejected = [t for t in tasks if t["Status"]["State"] == "rejected"]
    assert len({t["NodeID"] for t in rejected}) == 2, states(tasks)
    for task in rejected:
        assert re.search(r"No such image|no basic auth credentials", task["Status"]["Err"]), task["Status"]
    assert not [t for t in tasks if t["Status"]["State"] == "running"]
    for worker in swarm.workers:
        assert not has_image(api(worker.host), ref), worker.name


@pytest.mark.integration
def test_the_registry_rereads_its_htpasswd_file(swarm: SwarmBench, api: Any) -> None:
    """What a rotation test relies on: a user written to the file is valid at once, and gone once removed."""
    import docker.errors

    htpasswd = Path(swarm.htpasswd)
    original = htpasswd.read_text(encoding="utf-8")
    user, password = unique("rotated"), unique("pw")
    line = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True, text=True, check=True).stdout
    manager = api(swarm.manager_host)  # /auth: the manager asks the registry

    def replace(text: str) -> None:
        tmp = htpasswd.with_name(htpasswd.name + ".test")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(htpasswd)

    try:
        replace(original.rstrip("\n") + "\n" + line.strip() + "\n")
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                manager.login(user, password, registry=swarm.registry, reauth=True)
                break
            except docker.errors.APIError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        replace(original)
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            manager.login(user, password, registry=swarm.registry, reauth=True)
        except docker.errors.APIError as exc:
            assert "unauthorized" in str(exc) or "401" in str(exc), exc
            break
        assert time.monotonic() < deadline, "the removed user still logs in"
        time.sleep(0.5)


def bench_services(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False,
                          env=None if env is None else {**os.environ, **env})


@pytest.mark.integration
def test_swarm_status_names_every_part(swarm: SwarmBench) -> None:
    run = bench_services("swarm", "status")
    assert run.returncode == 0, run.stdout + run.stderr
    lines = {line.split()[0]: line for line in run.stdout.splitlines()}
    assert lines["swarm-registry"].split()[1:3] == ["up", f"http://{swarm.registry}"]
    for i, node in enumerate(swarm.nodes, start=1):
        words = lines[f"swarm-n{i}"].split()
        assert words[1:5] == ["up", node.role, "Ready", node.addr] and words[5] == node.host
    assert lines["swarm-images"].split()[1] == "up" and swarm.registry in lines["swarm-images"]
    assert swarm.password not in run.stdout + run.stderr and swarm.password2 not in run.stdout + run.stderr


@pytest.mark.integration
def test_env_prints_the_swarm_like_bench_json(swarm: SwarmBench) -> None:
    run = bench_services("env")
    assert run.returncode == 0, run.stderr
    printed = dict(re.findall(r"^export (XTM_BENCH_SWARM_\w+)=(\S*)$", run.stdout, re.M))
    assert printed == swarm.env()


@pytest.mark.integration
def test_swarm_up_twice_changes_nothing(swarm: SwarmBench, api: Any) -> None:
    before = {n.name: (Path(n.pidfile).read_text().strip(), api(n.host).info()["Swarm"]["NodeID"])
              for n in swarm.nodes}
    cluster = api(swarm.manager_host).inspect_swarm()["ID"]
    run = bench_services("swarm", "up")
    assert run.returncode == 0, run.stderr
    assert "swarm already up" in run.stderr
    assert {n.name: (Path(n.pidfile).read_text().strip(), api(n.host).info()["Swarm"]["NodeID"])
            for n in swarm.nodes} == before
    assert api(swarm.manager_host).inspect_swarm()["ID"] == cluster


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.integration
def test_another_bench_directory_cannot_take_or_remove_the_swarm(swarm: SwarmBench, tmp_path: Path) -> None:
    other = tmp_path / "other-bench"
    try:
        for command in ("up", "down"):
            run = bench_services("swarm", command, env={"XTM_BENCH_DIR": str(other)})
            assert run.returncode != 0, (command, run.stderr)
            assert "not by this bench" in run.stderr, run.stderr
            assert not _processes_mentioning(f"{other}/"), command
    finally:
        for pid in _processes_mentioning(f"{other}/"):  # only if the guard failed
            os.kill(pid, 9)
    status = bench_services("swarm", "status")
    assert status.returncode == 0, status.stdout
