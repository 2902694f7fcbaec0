"""Steady-state benchmark of event-driven ``run``: what it asks of the engine between resyncs, what
a resync pass of a large fleet costs, and the resident memory of the ``run`` process over an
hour-equivalent of passes.

    .venv/bin/python bench/steady.py [--engine docker|podman|all] [--quiet 55] [--small 100]
                                     [--fleet 1000] [--running 200] [--passes 360]
                                     [--schedule 0.5] [--skip-quiet] [--skip-fleet] [--json]

Needs the test bench (``scripts/bench-services up``). ``run`` is the real command (``python -m
composer_core --runtime ENGINE run -f FILE``), a process of its own, with /metrics enabled on a
free loopback port; it talks to the engine through a **counting relay** (:class:`CountingRelay`):
a unix socket of this script between ``run`` and the bench engine's socket that counts every HTTP
request ``run`` sends, by method and path, as the engine receives them (both of ``run``'s
connections: the passes' and the event stream's). The image is the bench's, from the open
registry. Per engine:

1. **quiet** (``execute_schedule`` 60 s, ``--small`` connectors started): once the first pass has
   deployed them and the stream is open, the requests during ``--quiet`` seconds between two
   resyncs (the window must fit in the 60 s schedule). Target: 0 besides the open stream (a new
   ``GET /events`` in the window would be a reconnect, and counts). Then the requests of the next
   resync pass (target 1).
2. **fleet** (``--fleet`` definitions, the first ``--running`` started, the rest ``status:
   stopped``: a stopped connector that was never deployed is deployed stopped, created and not
   started, so the engine holds ``--fleet`` containers), ``execute_schedule`` ``--schedule``: after
   the first pass (the deploy, reported) and once a pass plans no action, ``--passes`` resync
   passes (360: an hour at the default 10 s schedule). Per pass: the requests at the engine (target
   1 on a single host), the pass time (``xtm_composer_pass_duration_seconds`` of that one pass), and
   the resident memory of the ``run`` process (``VmRSS`` of /proc, sampled as each pass ends).
   Targets: RSS at most 80 MB, and no growth from pass to pass (the least-squares slope after the
   first 10% of the passes under 1 MB per hour-equivalent).

Only containers labelled with this run's manager id are touched; all are removed at the end, on
failure and on Ctrl-C too (4 at a time, each bounded by the SDK's timeout). Exit code 1 when a
target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import socket
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench.apply import HttpCounter, run_engines  # noqa: E402
from composer_core.engine.labels import LABEL_MANAGER  # noqa: E402
from tests.bench import SocketRelay  # noqa: E402
from tests.engine_helpers import remove_labelled_on  # noqa: E402

ENGINES = ("docker", "podman")
TARGET_QUIET = 0
TARGET_PASS_REQUESTS = 1
TARGET_RSS_MB = 80.0
#: "no growth": the RSS slope after the warm-up, in MB per 360 passes (an hour at 10 s)
TARGET_GROWTH_MB = 1.0
WARMUP_SHARE = 0.1
#: bounds of the waits (seconds)
DEPLOY_BOUND = 900.0
PASS_BOUND = 120.0
POLL = 0.05


# --- counting at the engine -----------------------------------------------------------------


class RequestParser:
    """The HTTP/1.x requests in a client's byte stream, fed in pieces: request line, headers,
    and a body skipped by ``Content-Length`` or chunked encoding. :meth:`feed` returns the
    ``(method, target)`` of every request whose head is complete."""

    MAX_HEAD = 1 << 20

    def __init__(self) -> None:
        self._buffer = b""
        self._body = 0  # bytes of a Content-Length body still to skip
        self._chunked = False

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        self._buffer += data
        found: list[tuple[str, str]] = []
        for _ in range(1_000_000):
            if self._body:
                skipped = min(self._body, len(self._buffer))
                self._buffer = self._buffer[skipped:]
                self._body -= skipped
                if self._body:
                    break
            if self._chunked:
                if not self._skip_chunk():
                    break
                continue
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > self.MAX_HEAD:
                    raise ValueError("an HTTP request head larger than 1 MiB")
                break
            head, self._buffer = self._buffer[:end].decode("latin-1"), self._buffer[end + 4:]
            lines = head.split("\r\n")
            method, target = (lines[0].split(" ") + ["", ""])[:2]
            found.append((method, target))
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines[1:])}
            self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            self._body = 0 if self._chunked else int(headers.get("content-length") or 0)
        return found

    def _skip_chunk(self) -> bool:
        """Skip one chunk (its size line, data and CRLF); False when more bytes are needed."""
        line_end = self._buffer.find(b"\r\n")
        if line_end < 0:
            return False
        size = int(self._buffer[:line_end].split(b";", 1)[0] or b"0", 16)
        if size == 0:  # the last chunk, then trailers (usually none) and an empty line
            rest = line_end + 2
            if self._buffer[rest:rest + 2] == b"\r\n":
                cut = rest + 2
            else:
                found = self._buffer.find(b"\r\n\r\n", rest)
                if found < 0:
                    return False
                cut = found + 4
            self._buffer = self._buffer[cut:]
            self._chunked = False
            return True
        whole = line_end + 2 + size + 2
        if len(self._buffer) < whole:
            return False
        self._buffer = self._buffer[whole:]
        return True


class CountingRelay:
    """A unix socket at ``path`` relaying every connection to the engine's socket ``target``
    and counting the HTTP requests sent through it (``GET /containers/json``...: the endpoints
    of :meth:`bench.apply.HttpCounter.endpoint`), per connection: a connection that sent a
    ``GET /events`` is the event stream's (its connect's ``/_ping`` included), the others are the
    passes'. Thread-safe; :meth:`close` ends it all."""

    def __init__(self, path: Path, target: str) -> None:
        self.path = path
        #: one counter per connection, in the order they were accepted
        self.connections: list[Counter[str]] = []
        self._lock = threading.Lock()
        self._relay = SocketRelay(path, target, watch=self._counting,
                                  max_connections=1_000_000, max_reads=100_000_000).up()

    def _counting(self) -> Callable[[bytes], None]:
        """The feed of one new connection: its requests, counted."""
        parser, counter = RequestParser(), Counter[str]()
        with self._lock:
            self.connections.append(counter)

        def feed(data: bytes) -> None:
            for method, target in parser.feed(data):
                with self._lock:
                    counter[HttpCounter.endpoint(method, target)] += 1

        return feed

    def snapshot(self) -> Counter[str]:
        """Every request so far."""
        passes, stream = self.sides()
        return passes + stream

    def sides(self) -> tuple[Counter[str], Counter[str]]:
        """The requests so far of the passes' connections, and of the event stream's."""
        passes: Counter[str] = Counter()
        stream: Counter[str] = Counter()
        with self._lock:
            for counter in self.connections:
                (stream if counter["GET /events"] else passes).update(counter)
        return passes, stream

    def close(self) -> None:
        self._relay.down()


def delta(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in sorted(after) if after[k] != before[k]}


# --- the run process and its metrics --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_fleet(path: Path, prefix: str, count: int, running: int, image: str) -> None:
    path.write_text(yaml.safe_dump({"connectors": [
        {"id": f"{prefix}-{i}", "name": f"{prefix}-{i}", "image": image,
         "status": "started" if i < running else "stopped",
         "env": {"OPENCTI_URL": "http://opencti:8080", "CONNECTOR_ID": f"{prefix}-{i}"}}
        for i in range(count)]}))


class RunProcess:
    """``run`` as a process of its own on ``host``; :meth:`metrics` parses its /metrics."""

    def __init__(self, engine: str, path: Path, host: str, manager: str, schedule: float,
                 log: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "MANAGER__ID": manager, "MANAGER__EXECUTE_SCHEDULE": str(schedule),
               "MANAGER__METRICS__ENABLE": "true", "MANAGER__METRICS__PORT": str(self.port),
               "DOCKER_HOST": host, "CONTAINER_HOST": host}
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "composer_core", "--runtime", engine, "run", "-f",
                 str(path), "--stop-timeout", "1"], env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, cwd=path.parent)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        import urllib.error
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",  # noqa: S310
                                        timeout=5) as response:
                text = response.read().decode()
        except (urllib.error.URLError, OSError):
            return {}
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"run exited with {self.proc.returncode}: {tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def metric(parsed: dict[Any, float], name: str, **labels: str) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


def resyncs(parsed: dict[Any, float]) -> int:
    return int(metric(parsed, "xtm_composer_passes_total", trigger="resync", result="ok"))


def all_passes(parsed: dict[Any, float]) -> int:
    return int(sum(v for (name, labels), v in parsed.items()
                   if name == "xtm_composer_passes_total" and ("result", "ok") in labels))


def until(check: Callable[[], Any], bound: float, what: str, run: RunProcess) -> Any:
    deadline = time.monotonic() + bound
    for _ in range(int(bound / POLL) + 1):
        found = check()
        if found:
            return found
        run.alive()
        if time.monotonic() > deadline:
            break
        time.sleep(POLL)
    raise RuntimeError(f"{what}: not so after {bound:g}s (log: {run.log})")


# --- the engine, behind composer's back -----------------------------------------------------


class Engine:
    """The bench engine's SDK client: counts, cleanup."""

    def __init__(self, name: str, bench: Any) -> None:
        self.name = name
        self.socket = (bench.docker_host if name == "docker" else bench.podman_host)
        if name == "docker":
            import docker

            self.client: Any = docker.APIClient(base_url=self.socket, version="auto", timeout=120)
            self.server = f"Docker Engine {self.client.version().get('Version')}"
        else:
            from podman import PodmanClient

            self.client = PodmanClient(base_url=self.socket, timeout=120)
            self.server = f"Podman {self.client.version().get('Version')}"

    def states(self, manager: str) -> Counter[str]:
        label = f"{LABEL_MANAGER}={manager}"
        if self.name == "docker":
            return Counter(c["State"] for c in
                           self.client.containers(all=True, filters={"label": label}))
        return Counter(str(c.attrs.get("State")) for c in
                       self.client.containers.list(all=True, filters={"label": label}))

    def remove_labelled(self, manager: str) -> int:
        return len(remove_labelled_on(self.name, self.client, LABEL_MANAGER, manager))

    def close(self) -> None:
        self.client.close()


# --- the measurements -----------------------------------------------------------------------


@contextmanager
def running(engine: Engine, tmp: Path, name: str, count: int, started: int, schedule: float,
            image: str, say: Callable[[str], None]) -> Iterator[tuple[RunProcess, CountingRelay]]:
    """``run`` over a fleet of its own behind a counting relay, its fleet deployed; everything
    removed when the block ends."""
    manager = f"xtm-bench-steady-{secrets.token_hex(4)}"
    path = tmp / f"{name}.yaml"
    write_fleet(path, manager, count, started, image)
    relay = CountingRelay(tmp / f"{name}.sock", engine.socket.removeprefix("unix://"))
    run = RunProcess(engine.name, path, f"unix://{relay.path}", manager, schedule,
                     tmp / f"{name}.log")
    try:
        began = time.monotonic()
        until(lambda: resyncs(run.metrics()) >= 1, DEPLOY_BOUND, "the first pass", run)
        states = engine.states(manager)
        if states.get("running", 0) != started or sum(states.values()) != count:
            raise RuntimeError(f"the first pass left {dict(states)}, not {started} running of "
                               f"{count} (log: {run.log})")
        say(f"{engine.name}: {count} connectors ({started} running) deployed in "
            f"{time.monotonic() - began:.1f} s")
        yield run, relay
    finally:
        run.stop()
        relay.close()
        removed = engine.remove_labelled(manager)
        say(f"{engine.name}: {removed} containers removed")


def quiet(engine: Engine, tmp: Path, args: argparse.Namespace, image: str,
          say: Callable[[str], None]) -> dict[str, Any]:
    with running(engine, tmp, "quiet", args.small, args.small, 60, image, say) as (run, relay):
        first_pass_done = time.monotonic()
        until(lambda: relay.snapshot()["GET /events"] >= 1, 30, "the event stream", run)
        time.sleep(1)
        before = relay.snapshot()
        started = time.monotonic()
        time.sleep(args.quiet)
        window = time.monotonic() - started
        in_window = delta(relay.snapshot(), before)
        if resyncs(run.metrics()) != 1:
            raise RuntimeError("a resync ran inside the window: shorten --quiet")
        before = relay.snapshot()
        until(lambda: resyncs(run.metrics()) >= 2, 60 + PASS_BOUND, "the second resync", run)
        time.sleep(0.5)
        at_resync = delta(relay.snapshot(), before)
        since_first = time.monotonic() - first_pass_done
    total = sum(in_window.values())
    return {"connectors": args.small, "schedule": 60, "window_seconds": round(window, 1),
            "requests": in_window, "total": total,
            "per_minute": round(total * 60 / window, 2), "target": TARGET_QUIET,
            "pass": total == TARGET_QUIET, "resync_requests": at_resync,
            "resync_total": sum(at_resync.values()),
            "resync_pass": sum(at_resync.values()) == TARGET_PASS_REQUESTS,
            "second_resync_after_seconds": round(since_first, 1)}


def slope(values: list[float]) -> float:
    """The least-squares slope of ``values`` against their index (per step)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, statistics.fmean(values)
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    return num / sum((i - mean_x) ** 2 for i in range(n))


def fleet(engine: Engine, tmp: Path, args: argparse.Namespace, image: str,
          say: Callable[[str], None]) -> dict[str, Any]:
    with running(engine, tmp, "fleet", args.fleet, args.running, args.schedule, image,
                 say) as (run, relay):
        parsed = run.metrics()
        deploy_seconds = metric(parsed, "xtm_composer_pass_duration_seconds_sum",
                                trigger="resync")
        deploy_actions = {a: int(metric(parsed, "xtm_composer_actions_total", action=a,
                                        result="ok")) for a in ("deploy", "start", "stop")}

        def actions() -> float:
            return sum(v for (name, _), v in run.metrics().items()
                       if name == "xtm_composer_actions_total")

        # steady: a pass with no action (the one after the deploy)
        settled = actions()
        until(lambda: resyncs(run.metrics()) >= 3, PASS_BOUND, "two passes after the deploy",
              run)
        if actions() != settled:
            raise RuntimeError(f"passes after the deploy still act (log: {run.log})")
        rss: list[float] = []
        seconds: list[float] = []
        # per step (from the end of one resync to the end of the next), on the passes'
        # connections, and the passes of every trigger that ended in the step
        requests: list[int] = []
        ran: list[int] = []
        endpoints: Counter[str] = Counter()
        parsed = run.metrics()
        count, total = resyncs(parsed), metric(parsed, "xtm_composer_pass_duration_seconds_sum",
                                               trigger="resync")
        all_before, passes_before = all_passes(parsed), parsed
        seen, stream_seen = relay.sides()
        log_from = run.log.stat().st_size
        began = time.monotonic()
        deadline = began + args.passes * (args.schedule + 5) + PASS_BOUND
        for _ in range(int((deadline - began) / POLL) + 1):
            if len(rss) >= args.passes or time.monotonic() > deadline:
                break
            run.alive()
            parsed = run.metrics()
            now = resyncs(parsed)
            if now > count:
                # sampled as the pass ends, before the next one (the schedule is the gap)
                rss.append(round(run.rss_mb(), 2))
                snap = relay.sides()[0]
                step = delta(snap, seen)
                seen = snap
                endpoints.update(step)
                # the passes that ran in the step, of every trigger (a reconnect's too)
                ran.append(all_passes(parsed) - all_before)
                all_before = all_passes(parsed)
                requests.append(sum(step.values()))
                new_total = metric(parsed, "xtm_composer_pass_duration_seconds_sum",
                                   trigger="resync")
                if now == count + 1:
                    seconds.append(new_total - total)
                count, total = now, new_total
            time.sleep(POLL)
        loop_seconds = time.monotonic() - began
        stream = delta(relay.sides()[1], stream_seen)
        parsed = run.metrics()
        by_trigger = {t: int(metric(parsed, "xtm_composer_passes_total", trigger=t,
                                    result="ok") - metric(passes_before,
                                                          "xtm_composer_passes_total",
                                                          trigger=t, result="ok"))
                      for t in ("resync", "event", "source", "reconnect")}
        reconnects = int(metric(parsed, "xtm_composer_event_stream_reconnects_total")
                         - metric(passes_before, "xtm_composer_event_stream_reconnects_total"))
        with run.log.open("rb") as log:
            log.seek(log_from)
            lines = log.read().decode(errors="replace").splitlines()
        warnings = Counter(line.split(" ", 2)[-1] for line in lines
                           if " WARNING " in line or " ERROR " in line)
        if len(rss) < args.passes:
            raise RuntimeError(f"only {len(rss)} of {args.passes} passes in "
                               f"{loop_seconds:.0f}s (log: {run.log})")
        if actions() != settled:
            raise RuntimeError(f"passes of the steady loop acted (log: {run.log})")
    warm = rss[int(len(rss) * WARMUP_SHARE):]
    growth = slope(warm) * 360
    return {
        "definitions": args.fleet, "running": args.running, "schedule": args.schedule,
        "deploy_seconds": round(deploy_seconds, 1), "deploy_actions": deploy_actions,
        "passes": len(rss), "loop_seconds": round(loop_seconds, 1),
        # a pass's requests are made at its start, its count moves at its end: a pass of
        # another trigger may fall in the step before its count does; the total is exact
        "requests_per_pass": {"total": sum(requests), "passes": sum(ran),
                              "mean": round(sum(requests) / max(sum(ran), 1), 3),
                              "steps_exactly_1": sum(1 for r, n in zip(requests, ran,
                                                                       strict=True)
                                                     if r == n == 1),
                              "steps": len(requests)},
        "endpoints": dict(endpoints), "passes_by_trigger": by_trigger,
        "stream_requests": stream, "reconnects": reconnects, "warnings": dict(warnings),
        "requests_by_step": requests, "passes_by_step": ran,
        "requests_pass": sum(requests) == TARGET_PASS_REQUESTS * sum(ran),
        "pass_seconds": {"median": round(statistics.median(seconds), 4),
                         "p95": round(sorted(seconds)[int(len(seconds) * 0.95)], 4),
                         "max": round(max(seconds), 4), "of": len(seconds)},
        "rss_mb": {"first": rss[0], "last": rss[-1], "max": max(rss), "min": min(rss),
                   "slope_mb_per_360_passes": round(growth, 3)},
        "rss_pass": max(rss) <= TARGET_RSS_MB and growth < TARGET_GROWTH_MB,
        "rss_samples": rss}


def run_engine(name: str, bench: Any, args: argparse.Namespace,
               say: Callable[[str], None]) -> dict[str, Any]:
    engine = Engine(name, bench)
    image = f"{bench.registry_open}/{bench.image}"
    out: dict[str, Any] = {"engine": name, "server": engine.server, "image": image}
    try:
        with tempfile.TemporaryDirectory(prefix="xtm-steady-", dir="/tmp") as tmp:
            if not args.skip_quiet:
                out["quiet"] = quiet(engine, Path(tmp), args, image, say)
                say(f"{name}: quiet: {out['quiet']['total']} requests in "
                    f"{out['quiet']['window_seconds']} s; resync {out['quiet']['resync_total']}")
            if not args.skip_fleet:
                out["fleet"] = fleet(engine, Path(tmp), args, image, say)
    finally:
        engine.close()
    return out


# --- report ---------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(result: dict[str, Any]) -> list[str]:
    rows = [("measurement", "figure", "target", "result")]
    q, f = result.get("quiet"), result.get("fleet")
    if q:
        rows += [
            (f"quiet, {q['connectors']} connectors: requests in {q['window_seconds']:g} s "
             "between resyncs", f"{q['total']} ({q['per_minute']:g}/min) {q['requests'] or ''}",
             "0 besides the stream", verdict(q["pass"])),
            (f"quiet, {q['connectors']} connectors: requests of the next resync",
             f"{q['resync_total']} {q['resync_requests']}", "1", verdict(q["resync_pass"]))]
    if f:
        rq, ps, rss = f["requests_per_pass"], f["pass_seconds"], f["rss_mb"]
        label = f"fleet {f['definitions']} ({f['running']} running)"
        rows += [
            (f"{label}: first pass (deploy)",
             f"{f['deploy_seconds']:g} s {f['deploy_actions']}", "", ""),
            (f"{label}: requests per resync pass ({f['passes']} passes)",
             f"{rq['total']} in {rq['passes']} passes: {rq['mean']:g} per pass "
             f"({rq['steps_exactly_1']} of {rq['steps']} steps exactly 1) {f['endpoints']}", "1",
             verdict(f["requests_pass"])),
            (f"{label}: the event stream meanwhile",
             f"{sum(f['stream_requests'].values())} {f['stream_requests']}, "
             f"{f['reconnects']} reconnects; passes {f['passes_by_trigger']}", "", ""),
            (f"{label}: resync pass time", f"median {1000 * ps['median']:.1f} ms, p95 "
             f"{1000 * ps['p95']:.1f} ms, max {1000 * ps['max']:.1f} ms", "", ""),
            (f"{label}: RSS of run over {f['passes']} passes",
             f"first {rss['first']:.1f}, last {rss['last']:.1f}, max {rss['max']:.1f} MB; "
             f"slope {rss['slope_mb_per_360_passes']:+.2f} MB/360 passes",
             f"<= {TARGET_RSS_MB:g} MB, no growth", verdict(f["rss_pass"]))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{result['engine']}: {result['server']}, image {result['image']}"]
    for i, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(widths[j]) for j, c in enumerate(row)) + " |")
        if i == 0:
            lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    return lines


def missed(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in results:
        checks = [("quiet", "pass"), ("quiet", "resync_pass"), ("fleet", "requests_pass"),
                  ("fleet", "rss_pass")]
        out += [f"{r['engine']} ({part} {key})" for part, key in checks
                if part in r and not r[part][key]]
    return out


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"machine: {platform.machine()}, nproc {os.cpu_count()}, Python "
            f"{platform.python_version()}, {platform.system()} {platform.release()}; load "
            f"average at the end {load}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=(*ENGINES, "all"), default="all")
    parser.add_argument("--quiet", type=float, default=55.0,
                        help="seconds of the quiet window (within the 60 s schedule)")
    parser.add_argument("--small", type=int, default=100, help="connectors of the quiet case")
    parser.add_argument("--fleet", type=int, default=1000, help="definitions of the fleet")
    parser.add_argument("--running", type=int, default=200, help="of them started")
    parser.add_argument("--passes", type=int, default=360, help="resync passes measured")
    parser.add_argument("--schedule", type=float, default=0.5,
                        help="execute_schedule of the fleet case, seconds")
    parser.add_argument("--skip-quiet", action="store_true")
    parser.add_argument("--skip-fleet", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 0 < args.quiet < 58:
        parser.error("--quiet must be within the 60 s schedule (0 < quiet < 58)")
    results = run_engines(args, run_engine)
    if isinstance(results, int):
        return results
    if args.json:  # the JSON on stdout, the tables on stderr
        print(json.dumps(results, indent=2))
        print("\n\n".join("\n".join(table(r)) for r in results), file=sys.stderr)
    else:
        print(machine())
        print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}\n")
        for result in results:
            print("\n".join(table(result)) + "\n")
    failed = missed(results)
    if failed:
        print(f"target missed on: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
