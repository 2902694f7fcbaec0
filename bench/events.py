"""Event benchmark: how fast event-driven ``run`` brings back a connector disrupted out of band,
and what it asks of the engine in a steady state.

    .venv/bin/python bench/events.py [--engine docker|podman|swarm|all] [--trials 20]
                                     [--quiet 20] [--swarm-trials 5] [--json]

Needs the test bench (``scripts/bench-services up``). Per engine, ``run``'s loop
(:class:`~composer_core.fleet.events.Runner`) runs in process with ``execute_schedule`` 60 s over
``3 x --trials`` connectors (the bench image from the open registry), deployed by its first pass:

1. **reaction**: for each of ``rm -f``, ``kill`` and ``stop`` (the engine's API, as its CLI
   calls it; ``stop`` with a 1 s timeout), ``--trials`` trials, each on its own connector (the
   restart-loop guard never holds one back: ``3 x --trials`` connectors in all): the time from the call's return to the connector's
   container running again (polled behind composer's back every 10 ms). Targets: median <= 1 s,
   worst <= 2 s;
2. **steady state**: the HTTP requests composer makes during ``--quiet`` seconds without any
   event between two resyncs (counted on both of its connections' sessions, the event stream's
   included; its one open request is made before the window). Target: 0.

On the bench swarm (``--engine swarm``, or ``all`` when the swarm is up), the same over
``2 x --swarm-trials`` services (tasks on the workers, the swarm registry's image with its
credential): **reaction** to ``docker service rm`` and ``docker service scale NAME=0`` (the
manager's API, as the CLI calls it), from the call's return to the service's task running again
(services and tasks polled every 50 ms behind composer's back), and the **steady state**
(counted on every connection's session). Few trials: the swarm is slow on 2 CPUs.

Only workloads labelled with this run's manager id are touched; all are removed at the end.
Exit code 1 when a target is missed on an engine.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.apply import HttpCounter, fleet, session_of  # noqa: E402
from composer_core.engine.container_backend import runtime_of  # noqa: E402
from composer_core.engine.labels import LABEL_MANAGER  # noqa: E402
from composer_core.engine.select import connect_runtime  # noqa: E402
from composer_core.fleet.events import Runner  # noqa: E402
from composer_core.fleet.lock import PassLock  # noqa: E402
from composer_core.fleet.sources import DesiredState, Observation  # noqa: E402
from composer_core.pluginmanager import Plugins  # noqa: E402
from composer_core.settings import load_settings  # noqa: E402
from tests.bench import require_bench, require_swarm  # noqa: E402
from tests.engine_helpers import raw_client, remove_labelled  # noqa: E402

KINDS = ("rm -f", "kill", "stop")
SWARM_KINDS = ("service rm", "scale 0")


class BenchSource:
    name = "bench"
    platform: str | None = None

    def __init__(self, connectors: Any) -> None:
        self.connectors = connectors

    def describe(self) -> str:
        return f"{len(self.connectors)} connectors of bench/events.py"

    def desired(self) -> DesiredState:
        return DesiredState(self.connectors)

    def observe(self, observation: Observation) -> None:
        """Nothing to report."""

    def close(self) -> None:
        """Nothing to release."""


def running(client: Any, engine: str, name: str) -> bool:
    try:
        if engine == "docker":
            return bool(client.inspect_container(name)["State"]["Running"])
        response = client.api.get(f"/containers/{name}/json")
        return response.status_code == 200 and bool(response.json()["State"]["Running"])
    except Exception:  # noqa: BLE001 - not there (yet)
        return False


def disrupt(client: Any, engine: str, kind: str, name: str) -> None:
    if engine == "docker":
        {"rm -f": lambda: client.remove_container(name, force=True),
         "kill": lambda: client.kill(name),
         "stop": lambda: client.stop(name, timeout=1)}[kind]()
        return
    if kind == "rm -f":
        client.api.delete(f"/containers/{name}", params={"force": True, "timeout": 0})
    else:
        client.api.post(f"/containers/{name}/{kind}",
                        params={} if kind == "kill" else {"timeout": 1})


@dataclass
class Target:
    """What a measurement needs of one engine: how to look at a connector and disrupt it behind
    composer's back (``client``), how often to poll, the session of a backend connection, and
    how to clean up."""

    name: str
    kinds: tuple[str, ...]
    trials: int
    running: Callable[[str], bool]
    disrupt: Callable[[str, str], None]
    session: Callable[[Any], Any]
    cleanup: Callable[[], Any]
    poll: float = 0.01


def measure(target: Target, settings: Any, connectors: list[Any],
            args: argparse.Namespace) -> dict[str, Any]:
    """``run``'s loop in process over ``connectors``: the steady state, then the reaction to
    each kind of disruption (``target.trials`` connectors per kind)."""
    plugins = Plugins()
    manager = str(settings.get("manager.id"))
    counters: list[HttpCounter] = []

    def connect() -> Any:
        backend = connect_runtime(settings, plugins)
        counters.append(HttpCounter(target.session(backend)))
        return backend

    stop = threading.Event()
    runner = Runner(BenchSource(connectors), connect, settings, plugins, stop,
                    lock=lambda endpoint: PassLock(manager, endpoint, stop_event=stop),
                    stop_timeout=1)
    thread = threading.Thread(target=runner.run, daemon=True)
    result: dict[str, Any] = {"engine": target.name, "trials": target.trials}
    try:
        thread.start()
        for _ in range(1200):
            if all(target.running(c.name) for c in connectors) and \
                    runner.watcher is not None and runner.watcher.opened:
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"{target.name}: the fleet did not come up")
        time.sleep(1)
        for counter in counters:
            counter.reset()
        time.sleep(args.quiet)
        result["steady_requests"] = sum(c.total for c in counters)
        result["steady_seconds"] = args.quiet
        for index, kind in enumerate(target.kinds):
            times = []
            for connector in connectors[index * target.trials:(index + 1) * target.trials]:
                target.disrupt(kind, connector.name)
                start = time.monotonic()
                for _ in range(int(30 / target.poll)):  # 30 s at most
                    if target.running(connector.name):
                        break
                    time.sleep(target.poll)
                times.append(time.monotonic() - start)
            result[kind] = {"median": round(statistics.median(times), 3),
                            "worst": round(max(times), 3)}
        result["passes"] = dict(runner.passes)
    finally:
        stop.set()
        thread.join(30)
        target.cleanup()
    result["ok"] = result.get("steady_requests") == 0 and all(
        result[k]["median"] <= 1 and result[k]["worst"] <= 2 for k in target.kinds)
    return result


def run_engine(engine: str, bench: Any, args: argparse.Namespace) -> dict[str, Any]:
    manager = f"xtm-bench-events-{secrets.token_hex(4)}"
    settings = load_settings((), environ={}, cwd=ROOT, overrides={
        "manager.id": manager, "opencti.daemon.selector": engine,
        "manager.execute_schedule": 60,
        "opencti.daemon.docker.endpoint": bench.docker_host,
        "opencti.daemon.podman.endpoint": bench.podman_host})
    connectors = fleet(manager, 3 * args.trials, f"{bench.registry_open}/{bench.image}")
    client = raw_client(engine, bench)

    def cleanup() -> None:
        client.close()
        remove_labelled(engine, bench, LABEL_MANAGER, manager)

    return measure(Target(
        engine, KINDS, args.trials, running=lambda name: running(client, engine, name),
        disrupt=lambda kind, name: disrupt(client, engine, kind, name),
        session=lambda backend: session_of(runtime_of(backend, "bench")), cleanup=cleanup),
        settings, connectors, args)


def swarm_running(client: Any, name: str) -> bool:
    """The service ``name`` wants 1 replica and its task runs (two requests, as `ps` would)."""
    try:
        found = [s for s in client.services(filters={"name": name}) if s["Spec"]["Name"] == name]
        if not found or found[0]["Spec"]["Mode"]["Replicated"]["Replicas"] != 1:
            return False
        return any(t["Status"]["State"] == "running" and t["DesiredState"] == "running"
                   for t in client.tasks(filters={"service": found[0]["ID"]}))
    except Exception:  # noqa: BLE001 - not there (yet)
        return False


def swarm_disrupt(client: Any, kind: str, name: str) -> None:
    if kind == "service rm":
        client.remove_service(name)
        return
    service = client.inspect_service(name)  # scale NAME=0: the spec as it is, 0 replicas
    spec = dict(service["Spec"])
    spec["Mode"] = {"Replicated": {"Replicas": 0}}
    client._result(client._post_json(client._url("/services/{0}/update", service["ID"]),
                                     data=spec, params={"version": service["Version"]["Index"]}),
                   json=True)


def run_swarm(swarm: Any, args: argparse.Namespace) -> dict[str, Any]:
    import docker

    manager = f"xtm-bench-events-{secrets.token_hex(4)}"
    settings = load_settings((), environ={}, cwd=ROOT, overrides={
        "manager.id": manager, "opencti.daemon.selector": "swarm",
        "manager.execute_schedule": 60,
        "opencti.daemon.swarm.endpoint": swarm.manager_host,
        "opencti.daemon.swarm.constraints": ["node.role==worker"],
        "opencti.daemon.docker.registry": {"url": swarm.registry, "insecure": True,
                                           "username": swarm.username,
                                           "password": swarm.password}})
    connectors = fleet(manager, len(SWARM_KINDS) * args.swarm_trials, swarm.ref())
    client = docker.APIClient(base_url=swarm.manager_host, version="auto", timeout=60)

    def cleanup() -> None:
        for service in client.services(filters={"label": f"{LABEL_MANAGER}={manager}"}):
            client.remove_service(service["ID"])
        client.close()

    return measure(Target(
        "swarm", SWARM_KINDS, args.swarm_trials, running=lambda name: swarm_running(client, name),
        disrupt=lambda kind, name: swarm_disrupt(client, kind, name),
        session=lambda backend: backend.api, cleanup=cleanup, poll=0.05),
        settings, connectors, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--engine", choices=("docker", "podman", "swarm", "all"), default="all")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--quiet", type=float, default=20.0)
    parser.add_argument("--swarm-trials", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    bench = require_bench()
    engines = ("docker", "podman") if args.engine == "all" else (args.engine,)
    results = [run_engine(engine, bench, args) for engine in engines if engine != "swarm"]
    if args.engine == "swarm" or args.engine == "all" and bench.swarm is not None:
        results.append(run_swarm(require_swarm(), args))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            kinds = SWARM_KINDS if r["engine"] == "swarm" else KINDS
            print(f"{r['engine']}: steady state {r['steady_requests']} requests in "
                  f"{r['steady_seconds']:g}s; " + "; ".join(
                      f"{k}: median {r[k]['median']:.3f}s, worst {r[k]['worst']:.3f}s"
                      for k in kinds) + f"; passes {r['passes']}"
                  + ("" if r["ok"] else "  (TARGET MISSED)"))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
