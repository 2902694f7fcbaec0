"""Swarm benchmark: the swarm backend's first apply against a loop of ``docker service create``.

    .venv/bin/python bench/swarm.py [--connectors 20] [--rounds 3] [--parallel 4] [--attached-rounds 1] [--json]

Needs the bench swarm (``scripts/bench-services swarm up``: a manager and two workers, a private
htpasswd registry only the nodes reach). The first apply of ``--connectors`` connectors, timed until
every service has its task running, by:

* ``composer``: :meth:`SwarmBackend.apply` of the workloads (distinct names and env, one image from
  the private registry, the credential from the ``config`` provider through the real chain),
  ``--parallel`` at a time (the fleet's ``manager.max_parallel``, 4 by default), timed from
  ``SwarmBackend.connect``; each ``apply`` returns once its task runs (or is rejected), and one
  ``observe`` at the end checks all of them;
* ``cli loop`` (attached): ``sh -e`` running ``docker service create --with-registry-auth --name ...
  --label ... -e ... IMAGE CMD`` once per connector, as written: the CLI's default waits until the
  service has converged (it then watches the task for 5 s) before the next one. This is the loop the
  target is measured against (``--attached-rounds``, 1 by default: it takes ~6 s a service);
* ``cli loop --detach``: the same with ``--detach``, then ``docker service ls`` polled until every
  service shows ``1/1``: the fastest a CLI loop can be;
* ``floor``: docker-py's ``create_service`` for every service at once (no digest pinning, no
  waiting), then polling: the swarm's own time to start that many tasks, a bound for any client.

Both CLI loops keep the credential in a throwaway ``--config`` and pin ``DOCKER_API_VERSION`` to the
daemon's. Each side of each round runs a fresh image (a layer of its own: no node has it), so every
node that gets a task pulls. Rounds alternate which side goes first; medians count. Target: composer
at most 0.7x the loop's time. Then the **steady state**: the HTTP requests of one ``observe`` of the
connectors, counted on the client's ``requests.Session`` (its ``send``), target at most 2.

Only services labelled with this run's manager id are touched; all are removed at the end, on
failure and on Ctrl-C too. Exit code 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.apply import HttpCounter  # noqa: E402
from composer_core.auth.chain import resolve_credentials  # noqa: E402
from composer_core.engine.deploy import config_hash  # noqa: E402
from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_HASH, LABEL_MANAGER  # noqa: E402
from composer_core.engine.tls import TlsDecision, insecure_key  # noqa: E402
from composer_core.images.resolve import resolve_image  # noqa: E402
from composer_core.pluginmanager import Plugins  # noqa: E402
from composer_core.settings import Settings, load_settings  # noqa: E402
from composer_core.workload import Workload  # noqa: E402
from composer_plugins.swarm.backend import SwarmBackend  # noqa: E402
from tests.bench import START_HINT, SwarmBench, load_bench  # noqa: E402

TARGET_RATIO = 0.70
TARGET_OBSERVE_REQUESTS = 2
COMMAND = ("sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait")  # stops at once on SIGTERM
WAIT_S = 180.0


def build_image(swarm: SwarmBench, manager: Any, label: str) -> str:
    """A fresh image (a layer of its own) pushed to the swarm registry through the manager, which
    then forgets it: every node that gets a task must pull it."""
    repo, tag = swarm.ref().rsplit(":", 1)
    auth = {"username": swarm.username, "password": swarm.password}
    new_tag = f"bench-{label}-{secrets.token_hex(3)}"
    manager.pull(repo, tag=tag, auth_config=auth)
    box = manager.create_container(f"{repo}:{tag}", command=["sh", "-c", f"echo {new_tag} > /bench"],
                                   host_config=manager.create_host_config(network_mode="none"))
    try:
        manager.start(box)
        manager.wait(box, timeout=60)
        manager.commit(box, repository=repo, tag=new_tag)
    finally:
        manager.remove_container(box, force=True)
    out = manager.push(repo, tag=new_tag, auth_config=auth)
    if "errorDetail" in out:
        raise RuntimeError(f"push failed: {out[-300:]}")
    manager.remove_image(f"{repo}:{new_tag}")
    return f"{repo}:{new_tag}"


def remove_services(manager: Any, manager_id: str) -> None:
    for service in manager.services(filters={"label": f"{LABEL_MANAGER}={manager_id}"}):
        manager.remove_service(service["ID"])
    time.sleep(2)  # their containers stop at once (COMMAND traps SIGTERM): the next side starts clean


def make_settings(swarm: SwarmBench) -> Settings:
    return load_settings((), environ={}, overrides={
        "opencti.daemon.swarm.endpoint": swarm.manager_host,
        "opencti.daemon.docker.registry": {"url": swarm.registry, "username": swarm.username,
                                           "password": swarm.password, "insecure": True},
    })


def workloads(settings: Settings, plugins: Plugins, image: str, manager_id: str, count: int) -> list[Workload]:
    resolved = resolve_image(image, settings, plugins)
    resolution = resolve_credentials(resolved, settings, plugins, environ={})  # once per image, as the core
    key = insecure_key(settings, resolution.registry)
    out = []
    for i in range(count):
        name = f"{manager_id}-c{i:02d}"
        env = {"CONNECTOR_ID": name, "OPENCTI_URL": "http://opencti:8080"}
        digest = config_hash(resolved.ref.normalized(), env, COMMAND)
        out.append(Workload(name=name, connector_id=name, image=resolved, resolution=resolution,
                            tls=TlsDecision(verify=key is None, setting=key), env=env,
                            labels={LABEL_MANAGER: manager_id, LABEL_CONNECTOR: name, LABEL_HASH: digest},
                            state="started", config_hash=digest, command=COMMAND))
    return out


def run_composer(swarm: SwarmBench, image: str, manager_id: str, count: int, parallel: int) -> float:
    settings, plugins = make_settings(swarm), Plugins()
    start = time.monotonic()
    backend = SwarmBackend.connect(settings, environ={})
    try:
        todo = workloads(settings, plugins, image, manager_id, count)
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            applied = list(pool.map(lambda w: backend.apply(w, None), todo))
        found = backend.observe({LABEL_MANAGER: manager_id})
        elapsed = time.monotonic() - start
    finally:
        backend.close()
    if [a.action for a in applied] != ["created"] * count or [o.state for o in found] != ["started"] * count:
        raise RuntimeError(f"composer: not every service runs: {[(o.name, o.state, o.detail) for o in found]}")
    return elapsed


def cli_script(swarm: SwarmBench, image: str, manager_id: str, count: int, cli: list[str], *,
               detach: bool = True) -> str:
    def q(text: str) -> str:
        return "'" + text.replace("'", "'\\''") + "'"

    docker = " ".join(q(a) for a in cli)
    lines = ["set -e"]
    for i in range(count):
        name = f"{manager_id}-c{i:02d}"
        lines.append(f"{docker} service create {'--detach ' if detach else ''}--quiet --with-registry-auth --name {name} "
                     f"--label {LABEL_MANAGER}={manager_id} --label {LABEL_CONNECTOR}={name} "
                     f"--container-label {LABEL_MANAGER}={manager_id} -e CONNECTOR_ID={name} "
                     f"-e OPENCTI_URL=http://opencti:8080 {q(image)} {' '.join(q(a) for a in COMMAND)} >/dev/null")
    # until every service shows 1/1 (bounded: WAIT_S / 0.2 s polls)
    lines.append(f"n=0; while [ $n -lt {int(WAIT_S / 0.2)} ]; do "
                 f"r=$({docker} service ls --filter label={LABEL_MANAGER}={manager_id} --format '{{{{.Replicas}}}}' "
                 f"| grep -c '^1/1' || true); [ \"$r\" -eq {count} ] && exit 0; n=$((n+1)); sleep 0.2; done; exit 1")
    return "\n".join(lines) + "\n"


def run_cli(swarm: SwarmBench, image: str, manager_id: str, count: int, cli: list[str], env: dict[str, str],
            *, detach: bool = True) -> float:
    script = cli_script(swarm, image, manager_id, count, cli, detach=detach)
    start = time.monotonic()
    run = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=WAIT_S + 60 * count,
                         check=False)
    elapsed = time.monotonic() - start
    if run.returncode != 0:
        raise RuntimeError(f"cli loop failed ({run.returncode}): {run.stderr[-500:]}")
    return elapsed


def run_floor(swarm: SwarmBench, image: str, manager_id: str, count: int) -> float:
    """The swarm's own bound: every service submitted at once (raw API, no pinning, no waiting), then
    polled until all run. No client that waits less than this can exist."""
    import docker
    import docker.types

    client = docker.APIClient(base_url=swarm.manager_host, version="auto", timeout=120)
    try:
        client.login(swarm.username, swarm.password, registry=swarm.registry)  # untimed: docker-py's header
        start = time.monotonic()
        for i in range(count):
            client.create_service(
                docker.types.TaskTemplate(container_spec=docker.types.ContainerSpec(
                    image=image, command=list(COMMAND), env={"CONNECTOR_ID": f"c{i}"})),
                name=f"{manager_id}-c{i:02d}", labels={LABEL_MANAGER: manager_id})
        ids = [s["ID"] for s in client.services(filters={"label": f"{LABEL_MANAGER}={manager_id}"})]
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            tasks = client.tasks(filters={"service": ids, "desired-state": "running"})
            if len({t["ServiceID"] for t in tasks if t["Status"]["State"] == "running"}) == count:
                return time.monotonic() - start
            time.sleep(0.05)
        raise RuntimeError("floor: not every service runs")
    finally:
        client.close()


def steady_requests(swarm: SwarmBench, manager_id: str, count: int) -> dict[str, Any]:
    backend = SwarmBackend.connect(make_settings(swarm), environ={})
    try:
        counter = HttpCounter(backend.api)
        found = backend.observe({LABEL_MANAGER: manager_id})
        return {"services": len(found), "requests": counter.total, "by_endpoint": dict(counter.requests)}
    finally:
        backend.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connectors", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--attached-rounds", type=int, default=1,
                        help="rounds of the CLI's default (attached) loop, ~6 s a service")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    bench = load_bench()
    if bench is None or bench.swarm is None:
        print(f"the bench swarm is down: {START_HINT} (or scripts/bench-services swarm up)", file=sys.stderr)
        return 2
    swarm = bench.swarm
    import docker

    manager = docker.APIClient(base_url=swarm.manager_host, version="auto", timeout=120)
    version = manager.version()
    config_dir = Path(tempfile.mkdtemp(prefix="xtm-bench-swarm-cli-"))
    auth = base64.b64encode(f"{swarm.username}:{swarm.password}".encode()).decode()
    (config_dir / "config.json").write_text(json.dumps({"auths": {swarm.registry: {"auth": auth}}}))
    cli = ["docker", "--config", str(config_dir), "-H", swarm.manager_host]
    env = {**os.environ, "DOCKER_API_VERSION": str(version.get("ApiVersion"))}
    client_version = subprocess.run([*cli, "--version"], env=env, capture_output=True, text=True,
                                    check=True).stdout.strip()
    manager_id = f"xtm-bench-swarm-{secrets.token_hex(3)}"
    rounds: list[dict[str, float]] = []
    steady: dict[str, Any] = {}
    attached: list[float] = []

    def side(label: str, run: Callable[[str], float]) -> float:
        image = build_image(swarm, manager, label)  # untimed
        try:
            return run(image)
        finally:
            remove_services(manager, manager_id)  # untimed

    try:
        for r in range(args.rounds):
            sides: list[tuple[str, Callable[[str], float]]] = [
                ("composer", lambda img: run_composer(swarm, img, manager_id, args.connectors, args.parallel)),
                ("cli", lambda img: run_cli(swarm, img, manager_id, args.connectors, cli, env)),
                ("floor", lambda img: run_floor(swarm, img, manager_id, args.connectors)),
            ]
            if r % 2:
                sides.reverse()
            times = {name: side(f"{name}{r}", run) for name, run in sides}
            rounds.append(times)
            if not args.json:
                print(f"round {r + 1}: composer {times['composer']:.2f} s, cli loop --detach {times['cli']:.2f} s, "
                      f"floor {times['floor']:.2f} s", file=sys.stderr)
        for r in range(args.attached_rounds):
            attached.append(side(f"attached{r}", lambda img: run_cli(swarm, img, manager_id, args.connectors, cli,
                                                                      env, detach=False)))
            if not args.json:
                print(f"cli loop (attached, the CLI's default) {attached[-1]:.2f} s", file=sys.stderr)
        # the steady state: the connectors deployed once more (untimed), one observe counted
        image = build_image(swarm, manager, "steady")
        run_composer(swarm, image, manager_id, args.connectors, args.parallel)
        steady = steady_requests(swarm, manager_id, args.connectors)
    finally:
        remove_services(manager, manager_id)
        manager.close()
    composer = statistics.median(t["composer"] for t in rounds)
    loop = statistics.median(t["cli"] for t in rounds)
    floor = statistics.median(t["floor"] for t in rounds)
    loop_attached = statistics.median(attached) if attached else None
    ratio_attached = composer / loop_attached if loop_attached else None
    result = {
        "server": f"Docker Engine {version.get('Version')} (API {version.get('ApiVersion')}), 3 nodes",
        "client": client_version, "connectors": args.connectors, "parallel": args.parallel,
        "rounds": rounds, "composer_s": round(composer, 2), "cli_loop_detached_s": round(loop, 2),
        "floor_s": round(floor, 2), "cli_loop_attached_s": round(loop_attached, 2) if loop_attached else None,
        "ratio_vs_attached": round(ratio_attached, 3) if ratio_attached else None,
        "ratio_vs_detached": round(composer / loop, 2), "ratio_vs_floor": round(composer / floor, 2),
        "target_ratio": TARGET_RATIO, "steady_observe": steady,
        "target_observe_requests": TARGET_OBSERVE_REQUESTS,
    }
    ok = (ratio_attached is not None and ratio_attached <= TARGET_RATIO
          and steady.get("requests", 99) <= TARGET_OBSERVE_REQUESTS)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['server']}; {client_version}")
        print(f"first apply of {args.connectors} connectors (median of {args.rounds}): composer {composer:.2f} s "
              f"({args.parallel} at a time)")
        if loop_attached:
            print(f"  cli loop, attached (the CLI's default): {loop_attached:.2f} s, ratio {ratio_attached:.3f} "
                  f"(target <= {TARGET_RATIO})")
        print(f"  cli loop --detach + poll: {loop:.2f} s, ratio {composer / loop:.2f}")
        print(f"  floor (raw API, all at once): {floor:.2f} s, ratio {composer / floor:.2f}")
        print(f"steady observe of {steady.get('services')} services: {steady.get('requests')} HTTP requests "
              f"{steady.get('by_endpoint')} (target <= {TARGET_OBSERVE_REQUESTS})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
