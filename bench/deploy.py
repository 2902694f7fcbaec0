"""Deploy benchmark: xtm-composer's deploy flow against raw SDK calls, on each engine.

    .venv/bin/python bench/deploy.py [--engines docker,podman] [--containers 20] [--rounds 5] [--json]

Needs the test bench (``scripts/bench-services up``). Per engine and per round, it deploys
``--containers`` containers of the bench image from the *private* registry (settings credentials)
three ways, in an order that rotates every round, timing only the deploys:

* ``raw``: the SDK's own create + start calls (docker-py ``APIClient.create_container`` +
  ``start``; podman-py ``containers.create`` + ``Container.start``), the image already present;
* ``composer``: one :class:`~composer_core.engine.deploy.Deployer` for the batch, as a pass of the manager
  deploys its connectors: image resolution, credential chain, one pull (a real registry round
  trip), then for each container an inspect (idempotence), create, start and a final inspect;
* ``composer-pull-each``: a new Deployer per container, so every deploy also resolves the
  credentials and pulls again (what twenty separate ``xtm-composer deploy`` calls do, minus the
  process start).

The overhead reported is ``median(composer) / median(raw) - 1``; the target is under 10 %.
Containers are removed between batches (untimed); only containers labelled with this run's
manager id are touched. Exit code 1 when ``composer`` misses the target on an engine.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from composer_core.engine.container_backend import runtime_of  # noqa: E402
from composer_core.engine.deploy import Deployer  # noqa: E402
from composer_core.engine.labels import LABEL_MANAGER  # noqa: E402
from composer_core.engine.select import connect_runtime  # noqa: E402
from composer_core.pluginmanager import Plugins  # noqa: E402
from composer_core.settings import Settings, load_settings  # noqa: E402
from tests.bench import START_HINT, load_bench  # noqa: E402

TARGET = 0.10
MODES = ("raw", "composer", "composer-pull-each")


def _settings(bench: Any, engine: str, manager: str) -> Settings:
    return load_settings((), environ={}, cwd=ROOT, overrides={
        "manager.id": manager, "opencti.daemon.selector": engine,
        "opencti.daemon.docker.registry": {"url": bench.registry_private,
                                           "username": bench.username,
                                           "password": bench.password}})


class Engine:
    """Raw SDK calls on one engine, and the cleanup of this run's containers."""

    def __init__(self, name: str, bench: Any) -> None:
        self.name = name
        if name == "docker":
            import docker

            self.docker = docker.APIClient(base_url=bench.docker_host, version="auto", timeout=120)
        else:
            from podman import PodmanClient

            self.podman = PodmanClient(base_url=bench.podman_host, timeout=120)

    def create_and_start(self, image: str, name: str, labels: dict[str, str]) -> None:
        env = {"OPENCTI_URL": "http://opencti:8080", "CONNECTOR_ID": name}
        if self.name == "docker":
            created = self.docker.create_container(image, name=name, environment=env, labels=labels)
            self.docker.start(created["Id"])
        else:
            self.podman.containers.create(image, name=name, environment=env, labels=labels).start()

    def remove_labelled(self, manager: str) -> None:
        label = f"{LABEL_MANAGER}={manager}"
        if self.name == "docker":
            for c in self.docker.containers(all=True, filters={"label": label}):
                self.docker.remove_container(c["Id"], force=True)
        else:
            for c in self.podman.containers.list(all=True, filters={"label": label}):
                self.podman.api.delete(f"/containers/{c.id}", params={"force": True, "timeout": 0})

    def close(self) -> None:
        (self.docker if self.name == "docker" else self.podman).close()


def run_engine(engine_name: str, bench: Any, count: int, rounds: int) -> dict[str, Any]:
    manager = f"xtm-bench-{secrets.token_hex(3)}"
    settings = _settings(bench, engine_name, manager)
    plugins = Plugins()
    backend = connect_runtime(settings, plugins)
    runtime = runtime_of(backend, "bench/deploy.py")  # the container-level flow it measures
    engine = Engine(engine_name, bench)
    image = bench.ref(bench.registry_private)
    env = {"OPENCTI_URL": "http://opencti:8080"}
    timings: dict[str, list[float]] = {mode: [] for mode in MODES}

    def batch(mode: str, round_no: int) -> float:
        names = [f"{manager}-{mode}-{round_no}-{i}" for i in range(count)]
        deployer = Deployer(runtime, settings, plugins)
        deploy_one: Callable[[str], Any]
        if mode == "raw":
            def deploy_one(name: str) -> Any:
                return engine.create_and_start(image, name, {LABEL_MANAGER: manager})
        elif mode == "composer":
            def deploy_one(name: str) -> Any:
                return deployer.deploy(bench.image, name, {**env, "CONNECTOR_ID": name})
        else:
            def deploy_one(name: str) -> Any:
                return Deployer(runtime, settings, plugins).deploy(bench.image, name,
                                                                   {**env, "CONNECTOR_ID": name})
        start = time.perf_counter()
        for name in names:
            deploy_one(name)
        elapsed = time.perf_counter() - start
        engine.remove_labelled(manager)
        return elapsed

    try:
        Deployer(runtime, settings, plugins).pull(bench.image)  # warm-up: image present
        batch("raw", -1)  # warm-up: engine caches, connection pools
        for round_no in range(rounds):
            order = MODES[round_no % len(MODES):] + MODES[:round_no % len(MODES)]
            for mode in order:
                timings[mode].append(batch(mode, round_no))
    finally:
        engine.remove_labelled(manager)
        engine.close()
        backend.close()
    medians = {mode: statistics.median(values) for mode, values in timings.items()}
    raw = medians["raw"]
    return {
        "engine": engine_name, "containers": count, "rounds": rounds,
        "median_seconds": {m: round(v, 4) for m, v in medians.items()},
        "per_container_ms": {m: round(1000 * v / count, 1) for m, v in medians.items()},
        "overhead": {m: round(v / raw - 1, 4) for m, v in medians.items() if m != "raw"},
        "all_seconds": {m: [round(v, 4) for v in values] for m, values in timings.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="docker,podman")
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    bench = load_bench()
    if bench is None:
        print(f"the test bench is not running; {START_HINT}", file=sys.stderr)
        return 2
    os.environ["DOCKER_HOST"] = bench.docker_host
    os.environ["CONTAINER_HOST"] = bench.podman_host
    results = [run_engine(e.strip(), bench, args.containers, args.rounds)
               for e in args.engines.split(",") if e.strip()]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'engine':<8} {'mode':<20} {'median s':>9} {'ms/container':>13} {'overhead':>9}")
        for r in results:
            for mode in MODES:
                over = r["overhead"].get(mode)
                shown = "" if over is None else f"{100 * over:+.1f}%"
                print(f"{r['engine']:<8} {mode:<20} {r['median_seconds'][mode]:>9.3f} "
                      f"{r['per_container_ms'][mode]:>13.1f} {shown:>9}")
    missed = [r["engine"] for r in results if r["overhead"]["composer"] >= TARGET]
    if missed:
        print(f"composer overhead over {TARGET:.0%} on: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
