"""Fleet benchmark: a reconciliation pass of xtm-composer against a shell loop of the engine's CLI.

    .venv/bin/python bench/apply.py [--engine docker|podman|all] [--connectors 20] [--rounds 3]
                                    [--fleet 100] [--passes 5] [--changed 10] [--json]

Needs the test bench (``scripts/bench-services up``). Per engine:

1. **first apply** of ``--connectors`` connectors (the bench image from the *private* registry,
   credentials from the settings, distinct names and env), the image absent from the engine:

   * ``composer``: :meth:`~composer_core.fleet.reconcile.Reconciler.run_pass` in process, timed from the
     plugin manager and ``connect_runtime`` to the end of the pass, through the workload contract
     (one observation, one pull, the applies ``manager.max_parallel`` at a time);
   * ``cli loop``: ``sh -e`` running ``docker pull`` then ``docker run -d --name ... -e ...`` once
     per connector (``podman --remote --url ... pull`` / ``run -d`` for Podman), the credentials
     in a throwaway ``--config`` (``--authfile``), ``DOCKER_API_VERSION`` pinned to the daemon's.

   Before each timed run (untimed): every container of the run removed, and the image reference
   removed from the engine, as on a fresh host. The engine HTTP requests of composer's pass are
   counted too (as in 2.). Rounds alternate which side goes first; the
   median of ``--rounds`` counts. Target: composer at most 0.7x the loop's time.
2. **steady state** over ``--fleet`` connectors (deployed first, untimed): the engine HTTP
   requests of one pass, counted on the runtime's ``requests.Session`` (its ``send``), target
   exactly 1; the runtime-method calls; the median wall time of ``--passes`` passes.
3. **replace** ``--changed`` of the fleet (their env changed): HTTP requests, runtime-method calls
   and wall time of that pass (reported, no target; ``--changed 0`` skips it).

The image is pulled as ``localhost:<port>/...``, the same private registry as the bench's
``127.0.0.1:<port>``, so that removing it never untags the reference other bench users deploy.
Only containers labelled with this run's manager id are touched; all are removed at the end, on
failure and on Ctrl-C too. Exit code 1 when a target is missed on an engine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from composer_core.engine.container_backend import ContainerBackend, runtime_of  # noqa: E402
from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_MANAGER  # noqa: E402
from composer_core.engine.select import connect_runtime  # noqa: E402
from composer_core.fleet.connectors import Connector, parse_connectors  # noqa: E402
from composer_core.fleet.reconcile import Pass, Reconciler  # noqa: E402
from composer_core.pluginmanager import Plugins  # noqa: E402
from composer_core.settings import Settings, load_settings  # noqa: E402
from tests.bench import START_HINT, load_bench  # noqa: E402
from tests.engine_helpers import CountingRuntime, remove_labelled_on  # noqa: E402

TARGET_RATIO = 0.70
TARGET_STEADY_CALLS = 1
ENGINES = ("docker", "podman")
STOP_TIMEOUT = 1  # the bench image's `sleep` ignores SIGTERM: each stop costs the whole timeout


# --- counting -------------------------------------------------------------------------------


class HttpCounter:
    """Counts the real HTTP requests of a ``requests.Session`` (docker-py's ``APIClient`` and
    podman-py's ``APIClient`` both are one) by wrapping its ``send``; thread-safe."""

    _COLLECTIONS = frozenset({"json", "create", "pull", "prune"})

    def __init__(self, session: Any) -> None:
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        original = session.send

        def send(request: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.requests[self.endpoint(request.method, request.url)] += 1
            return original(request, **kwargs)

        session.send = send

    @classmethod
    def endpoint(cls, method: str, url: str) -> str:
        """``GET /containers/json``, ``POST /containers/{id}/start``... (API version dropped)."""
        path = re.sub(r"^/v[0-9.]+(/libpod)?", "", urlsplit(url).path)
        kind, _, rest = path.lstrip("/").partition("/")
        if kind in ("containers", "images") and rest and rest not in cls._COLLECTIONS:
            operation = rest.rsplit("/", 1)[1] if "/" in rest else ""
            # a container name has no "/"; an image reference may: its last part has a ":" or "@"
            if not operation or ":" in operation or "@" in operation or kind == "images" and \
                    operation not in ("json", "history", "tag", "push"):
                operation = ""
            path = f"/{kind}/{{id}}" + (f"/{operation}" if operation else "")
        return f"{method} {path}"

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()


def session_of(runtime: Any) -> Any:
    """The ``requests.Session`` under a connected runtime of the built-in plugins."""
    if runtime.name == "docker":
        return runtime.api  # docker.APIClient (a requests.Session)
    return runtime.client.api  # podman.api.client.APIClient (a requests.Session)


# --- the engine, behind composer's back -------------------------------------------------------


class Engine:
    """The SDK client of one engine (cleanup, image removal, versions) and its CLI command."""

    def __init__(self, name: str, bench: Any, config_dir: Path, registry: str) -> None:
        self.name = name
        self.bench = bench
        self.known_ids: set[str] = set()  # the image ids the reference has been seen with
        self.cli_env = dict(os.environ)
        if name == "docker":
            import docker

            self.docker = docker.APIClient(base_url=bench.docker_host, version="auto", timeout=120)
            version = self.docker.version()
            self.server = f"Docker Engine {version.get('Version')} (API {version.get('ApiVersion')})"
            # a newer CLI than the daemon would negotiate (one more request per command): pin it
            self.cli_env["DOCKER_API_VERSION"] = str(version.get("ApiVersion"))
            auth = base64.b64encode(f"{bench.username}:{bench.password}".encode()).decode()
            (config_dir / "config.json").write_text(json.dumps({"auths": {registry: {"auth": auth}}}))
            self.cli = ["docker", "--config", str(config_dir), "-H", bench.docker_host]
            self.pull_args = ["pull", "-q"]
        else:
            from podman import PodmanClient

            self.podman = PodmanClient(base_url=bench.podman_host, timeout=120)
            self.server = f"Podman {self.podman.version().get('Version')}"
            self.cli_env["CONTAINERS_CONF"] = bench.containers_conf
            authfile = config_dir / "auth.json"
            auth = base64.b64encode(f"{bench.username}:{bench.password}".encode()).decode()
            authfile.write_text(json.dumps({"auths": {registry: {"auth": auth}}}))
            self.cli = ["podman", "--remote", "--url", bench.podman_host]
            self.pull_args = ["pull", "-q", "--tls-verify=false", "--authfile", str(authfile)]
        self.client_version = subprocess.run(
            [*self.cli, "--version"], env=self.cli_env, capture_output=True, text=True,
            check=True).stdout.strip()

    def image_id(self, reference: str) -> str | None:
        if self.name == "docker":
            import docker.errors

            try:
                found = str(self.docker.inspect_image(reference)["Id"])
            except docker.errors.NotFound:
                return None
        else:
            response = self.podman.api.get(f"/images/{reference}/json")
            if response.status_code != 200:
                return None
            found = str(response.json()["Id"])
        self.known_ids.add(found)
        return found

    def remove_image(self, reference: str) -> bool:
        """Remove the reference (never by force); whether the image's layers are still there
        under other references (another registry's tag of the same image)."""
        image_id = self.image_id(reference)
        if image_id is None:
            return any(self.image_id(known) is not None for known in set(self.known_ids))
        if self.name == "docker":
            self.docker.remove_image(reference)
        else:
            response = self.podman.api.delete(f"/images/{reference}")
            if response.status_code >= 400:
                raise RuntimeError(f"podman could not remove {reference}: {response.text}")
        if self.image_id(reference) is not None:
            raise RuntimeError(f"{reference} is still present on {self.name} after its removal")
        return self.image_id(image_id) is not None

    def remove_labelled(self, manager: str) -> int:
        return len(remove_labelled_on(self.name, self.docker if self.name == "docker"
                                      else self.podman, LABEL_MANAGER, manager))

    def loop_script(self, reference: str, connectors: list[Connector], manager: str) -> str:
        """``pull`` once, then one ``run -d`` per connector, as a shell loop would."""
        def command(args: list[str]) -> str:
            return " ".join(shlex.quote(a) for a in args) + " >/dev/null"

        lines = [command([*self.cli, *self.pull_args, reference])]
        for c in connectors:
            env = [arg for key, value in c.env.items() for arg in ("-e", f"{key}={value}")]
            lines.append(command([*self.cli, "run", "-d", "--name", c.name,
                                  "--label", f"{LABEL_MANAGER}={manager}",
                                  "--label", f"{LABEL_CONNECTOR}={c.id}", *env, reference]))
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        (self.docker if self.name == "docker" else self.podman).close()


# --- the measurements -------------------------------------------------------------------------


def make_settings(engine: str, registry: str, bench: Any, manager: str,
                  max_parallel: int | None) -> Settings:
    overrides: dict[str, Any] = {
        "manager.id": manager, "opencti.daemon.selector": engine,
        "opencti.daemon.docker.endpoint": bench.docker_host,
        "opencti.daemon.podman.endpoint": bench.podman_host,
        "opencti.daemon.docker.registry": {"url": registry, "username": bench.username,
                                           "password": bench.password}}
    if max_parallel is not None:
        overrides["manager.max_parallel"] = max_parallel
    return load_settings((), environ={}, cwd=ROOT, overrides=overrides)


def fleet(prefix: str, count: int, image: str, generation: int = 0,
          changed: int = 0) -> list[Connector]:
    """``count`` connectors of ``image``, distinct ids, names and env; the first ``changed`` with
    another env (``generation``)."""
    entries = []
    for i in range(count):
        env = {"OPENCTI_URL": "http://opencti:8080", "OPENCTI_TOKEN": f"token-{prefix}-{i}",
               "CONNECTOR_ID": f"{prefix}-{i}",
               "CONNECTOR_GENERATION": str(generation if i < changed else 0)}
        entries.append({"id": f"{prefix}-{i}", "name": f"{prefix}-{i}", "image": image, "env": env})
    return parse_connectors({"connectors": entries}, "<bench/apply.py>")


def check(result: Pass, expected: int) -> None:
    failed = [f"{s.name}: {s.action}: {s.error.message if s.error else s.result}"
              for s in result.steps if s.result != "ok"]
    if failed or len(result.steps) != expected:
        raise RuntimeError(f"the pass did not succeed ({len(result.steps)} steps, "
                           f"{expected} expected): " + "; ".join(failed[:3]))


@contextmanager
def timer(into: list[float]) -> Iterator[None]:
    started = time.perf_counter()
    yield
    into.append(time.perf_counter() - started)


def run_engine(engine_name: str, bench: Any, args: argparse.Namespace,
               say: Callable[[str], None]) -> dict[str, Any]:
    token = secrets.token_hex(3)
    manager = f"xtm-bench-apply-{token}"
    port = bench.registry_private.rsplit(":", 1)[1]
    registry = f"localhost:{port}"
    image = f"{registry}/{bench.image}"
    settings = make_settings(engine_name, registry, bench, manager, args.max_parallel)
    out: dict[str, Any] = {"engine": engine_name, "manager": manager, "image": image,
                           "max_parallel": int(settings.get("manager.max_parallel", 4))}
    with tempfile.TemporaryDirectory(prefix="xtm-bench-apply-") as tmp:
        engine = Engine(engine_name, bench, Path(tmp), registry)
        image_was_present = engine.image_id(image) is not None
        out.update(server=engine.server, client=engine.client_version)
        try:
            out["first_apply"] = first_apply(engine, settings, manager, image, token, args, say)
            out.update(steady_and_replace(engine, settings, manager, image, token, args, say))
        finally:
            engine.remove_labelled(manager)
            if not image_was_present and engine.image_id(image) is not None:
                engine.remove_image(image)
            engine.close()
    return out


def first_apply(engine: Engine, settings: Settings, manager: str, image: str, token: str,
                args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    times: dict[str, list[float]] = {"composer": [], "loop": []}
    calls: Counter[str] = Counter()
    http_requests: Counter[str] = Counter()
    layers_shared = []

    def composer(round_no: int) -> None:
        connectors = fleet(f"xab-{token}-c{round_no}", args.connectors, image)
        with timer(times["composer"]):
            plugins = Plugins()
            backend = connect_runtime(settings, plugins)
            runtime = CountingRuntime(runtime_of(backend, "bench/apply.py"))
            # the pass's requests (the connect's ping is made already)
            http = HttpCounter(session_of(runtime._runtime))
            result = Reconciler(ContainerBackend(runtime), settings, plugins,
                                stop_timeout=STOP_TIMEOUT).run_pass(connectors)
        backend.close()
        check(result, args.connectors)
        calls.update(runtime.calls)
        http_requests.update(http.requests)

    def loop(round_no: int) -> None:
        connectors = fleet(f"xab-{token}-l{round_no}", args.connectors, image)
        script = engine.loop_script(image, connectors, manager)
        with timer(times["loop"]):
            done = subprocess.run(["sh", "-ec", script], env=engine.cli_env, capture_output=True,
                                  text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the {engine.name} CLI loop failed: {done.stderr.strip()[-500:]}")

    for round_no in range(args.rounds):
        sides = (("composer", composer), ("loop", loop))
        for side, run in sides if round_no % 2 == 0 else sides[::-1]:
            engine.remove_labelled(manager)
            layers_shared.append(engine.remove_image(image))
            run(round_no)
            say(f"{engine.name}: first apply, round {round_no + 1}, {side}: "
                f"{times[side][-1]:.3f} s")
    engine.remove_labelled(manager)
    medians = {side: statistics.median(values) for side, values in times.items()}
    ratio = medians["composer"] / medians["loop"]
    return {"connectors": args.connectors, "rounds": args.rounds,
            "median_seconds": {k: round(v, 3) for k, v in medians.items()},
            "all_seconds": {k: [round(v, 3) for v in values] for k, values in times.items()},
            "ratio": round(ratio, 3), "target": TARGET_RATIO, "pass": ratio <= TARGET_RATIO,
            "runtime_calls_per_pass": {k: v // args.rounds for k, v in sorted(calls.items())},
            "http_requests_per_pass": {k: v // args.rounds for k, v in sorted(http_requests.items())},
            "http_requests_total_per_pass": sum(http_requests.values()) // args.rounds,
            "layers_present_under_other_tags": any(layers_shared)}


def steady_and_replace(engine: Engine, settings: Settings, manager: str, image: str, token: str,
                       args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    prefix = f"xab-{token}-f"
    connectors = fleet(prefix, args.fleet, image)
    plugins = Plugins()
    connected = connect_runtime(settings, plugins)
    runtime = CountingRuntime(runtime_of(connected, "bench/apply.py"))
    # the fleet drives the engine through the workload contract, as `apply` does
    backend = ContainerBackend(runtime)
    http = HttpCounter(session_of(runtime._runtime))
    out: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        check(Reconciler(backend, settings, plugins, stop_timeout=STOP_TIMEOUT)
              .run_pass(connectors), args.fleet)
        say(f"{engine.name}: {args.fleet} connectors deployed in "
            f"{time.perf_counter() - started:.1f} s (untimed setup)")
        times: list[float] = []
        requests_per_pass: list[int] = []
        for _ in range(args.passes):
            http.reset()
            runtime.calls.clear()
            with timer(times):
                result = Reconciler(backend, settings, plugins,
                                    stop_timeout=STOP_TIMEOUT).run_pass(connectors)
            check(result, args.fleet)
            if any(s.action != "nothing" for s in result.steps):
                raise RuntimeError("the steady-state pass planned actions")
            requests_per_pass.append(http.total)
        steady_requests = dict(http.requests)
        out["steady"] = {
            "connectors": args.fleet, "passes": args.passes,
            "http_requests_per_pass": requests_per_pass, "http_requests": steady_requests,
            "runtime_calls": dict(runtime.calls),
            "median_seconds": round(statistics.median(times), 4),
            "all_seconds": [round(t, 4) for t in times],
            "target": TARGET_STEADY_CALLS,
            "pass": all(n == TARGET_STEADY_CALLS for n in requests_per_pass)}
        say(f"{engine.name}: steady pass over {args.fleet}: {requests_per_pass} requests, "
            f"median {statistics.median(times) * 1000:.1f} ms")
        if args.changed:
            changed = fleet(prefix, args.fleet, image, generation=1, changed=args.changed)
            http.reset()
            runtime.calls.clear()
            replace_times: list[float] = []
            with timer(replace_times):
                result = Reconciler(backend, settings, plugins,
                                    stop_timeout=STOP_TIMEOUT).run_pass(changed)
            check(result, args.fleet)
            actions = Counter(s.action for s in result.steps)
            out["replace"] = {
                "changed": args.changed, "connectors": args.fleet, "actions": dict(actions),
                "http_requests_total": http.total, "http_requests": dict(http.requests),
                "runtime_calls": dict(runtime.calls), "seconds": round(replace_times[0], 3),
                "stop_timeout": STOP_TIMEOUT}
            say(f"{engine.name}: replace {args.changed} of {args.fleet}: {http.total} requests, "
                f"{replace_times[0]:.2f} s")
    finally:
        connected.close()
    return out


# --- report -----------------------------------------------------------------------------------


def machine() -> str:
    import docker
    import podman

    return (f"machine: {platform.machine()}, nproc {os.cpu_count()}, Python "
            f"{platform.python_version()}, {platform.system()} {platform.release()}, "
            f"docker-py {docker.__version__}, podman-py {podman.__version__}")


def table(result: dict[str, Any]) -> list[str]:
    first, steady, replace = result["first_apply"], result["steady"], result.get("replace")
    med = first["median_seconds"]
    rows = [("measurement", "composer", "baseline", "ratio", "target", "result"),
            (f"first apply, {first['connectors']} connectors (median of {first['rounds']}), s",
             f"{med['composer']:.3f}", f"{med['loop']:.3f} (CLI loop)", f"{first['ratio']:.2f}x",
             f"<= {TARGET_RATIO:.2f}x", "PASS" if first["pass"] else "MISS"),
            (f"steady pass, {steady['connectors']} connectors: HTTP requests",
             "/".join(map(str, steady["http_requests_per_pass"])), "", "",
             f"= {TARGET_STEADY_CALLS}", "PASS" if steady["pass"] else "MISS"),
            (f"steady pass, {steady['connectors']} connectors (median of {steady['passes']}), ms",
             f"{1000 * steady['median_seconds']:.1f}", "", "", "", "")]
    if replace:
        rows.append((f"replace {replace['changed']} of {replace['connectors']}: HTTP requests / s",
                     f"{replace['http_requests_total']} / {replace['seconds']:.2f}", "", "", "",
                     ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{result['engine']}: {result['server']}; CLI: {result['client']}; "
             f"manager.max_parallel {result['max_parallel']}"]
    for i, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(widths[j]) for j, c in enumerate(row)) + " |")
        if i == 0:
            lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    lines.append(f"  first apply, all rounds (s): composer {first['all_seconds']['composer']}, "
                 f"loop {first['all_seconds']['loop']}; image layers present under other tags: "
                 f"{'yes' if first['layers_present_under_other_tags'] else 'no'}")
    lines.append(f"  first apply, runtime calls per pass: {first['runtime_calls_per_pass']}")
    lines.append(f"  first apply, HTTP requests per pass: {first['http_requests_total_per_pass']} "
                 f"{first['http_requests_per_pass']}")
    lines.append(f"  steady pass: HTTP {steady['http_requests']} (last pass), runtime calls "
                 f"{steady['runtime_calls']} (last pass)")
    if replace:
        lines.append(f"  replace: actions {replace['actions']}, HTTP {replace['http_requests']}, "
                     f"runtime calls {replace['runtime_calls']}")
    return lines


def run_engines(args: argparse.Namespace,
                run: Callable[[str, Any, argparse.Namespace, Callable[[str], None]], dict[str, Any]],
                ) -> list[dict[str, Any]] | int:
    """``run(engine, bench, args, say)`` for each engine of ``args.engine``, progress on stderr:
    the results, or the exit code (2: the bench is down; 130: interrupted, each run cleaning up
    what it created)."""
    bench = load_bench()
    if bench is None:
        print(f"the test bench is not running; {START_HINT}", file=sys.stderr)
        return 2

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        return [run(name, bench, args, say)
                for name in (ENGINES if args.engine == "all" else (args.engine,))]
    except KeyboardInterrupt:
        print("interrupted: this run's containers were removed", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=(*ENGINES, "all"), default="all")
    parser.add_argument("--connectors", type=int, default=20, help="first apply: connectors")
    parser.add_argument("--rounds", type=int, default=3, help="first apply: rounds per side")
    parser.add_argument("--fleet", type=int, default=100, help="steady state: connectors")
    parser.add_argument("--passes", type=int, default=5, help="steady state: timed passes")
    parser.add_argument("--changed", type=int, default=10,
                        help="replace pass: connectors whose env changes (0: skip)")
    parser.add_argument("--max-parallel", type=int, default=None,
                        help="manager.max_parallel (default: the settings' default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run_engines(args, run_engine)
    if isinstance(results, int):
        return results
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(machine())
        print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}\n")
        for result in results:
            print("\n".join(table(result)) + "\n")
    missed = [f"{r['engine']} ({what})" for r in results
              for what, ok in (("first apply ratio", r["first_apply"]["pass"]),
                               ("steady-state requests", r["steady"]["pass"])) if not ok]
    if missed:
        print(f"target missed on: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
