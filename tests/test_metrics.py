"""Metrics and health of ``run``: the verdict of /healthz, /metrics in the Prometheus format,
counters moving as actions happen, no secret; on the real engines, event-driven `run` brings a
killed, removed or stopped connector back while a 60 s schedule would not have."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_MANAGER
from composer_core.errors import RuntimeUnavailable
from composer_core.fleet.reconcile import Pass, PlannedStep
from composer_core.metrics import Health, MetricsServer, PrometheusMetrics
from composer_core.testing import InMemoryBackend, wait_for
from tests.bench import SocketRelay
from tests.conftest import assert_no_secrets
from tests.engine_helpers import (  # noqa: F401 - fixtures
    create_unmanaged,
    engine,
    free_port,
    manager,
    raw_client,
    remove_by_name,
    unique,
)
from tests.test_events import BOUND, harness  # noqa: F401 - fixture

pytest_integration = pytest.mark.integration


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError:  # not listening yet
        return 0, ""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics parsed by prometheus_client's own parser: (name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(parsed: dict[Any, float], name: str, **labels: str) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


def metrics_once(base: str, name: str, least: float, **labels: str) -> dict[Any, float]:
    """/metrics parsed, once ``name{labels}`` is at least ``least``. A pass records what it did
    when it ends, a moment after its work is visible on the engine: read right after that, the
    counters can still be behind (they were, on a loaded machine)."""
    def reached() -> dict[Any, float] | None:
        parsed = samples(get(base + "/metrics")[1])
        return parsed if value(parsed, name, **labels) >= least else None
    found: dict[Any, float] = wait_for(reached, BOUND, f"{name}{labels} at {least:g}")
    return found


def deploys(parsed: dict[Any, float]) -> float:
    """Deploy actions of any result."""
    return sum(v for (name, labels), v in parsed.items()
               if name == "xtm_composer_actions_total" and ("action", "deploy") in labels)


def test_health_is_ok_while_passes_are_recent_and_503_with_a_reason_after() -> None:
    now = [0.0]
    health = Health(30, lambda: now[0])
    assert health.verdict() == (200, {"status": "starting", "age_seconds": 0.0})
    now[0] = 31
    status, body = health.verdict()
    assert status == 503 and "no successful pass in the 31s" in body["reason"]
    health.succeeded()
    assert health.verdict()[0] == 200
    health.failed("Docker does not answer")
    now[0] = 62
    status, body = health.verdict()
    assert status == 503 and body["reason"].endswith(": Docker does not answer")


def test_a_scrape_sees_a_pass_recorded_whole_or_not_at_all() -> None:
    """A pass's counters (passes, duration, actions) are recorded together: a scrape between
    them would show a pass without its actions, or the other way round."""
    metrics = PrometheusMetrics()
    done = Pass(steps=[PlannedStep("c1", "c1", "deploy", "new", result="ok"),
                       PlannedStep("c2", "c2", "start", "stopped", result="failed")],
                runtime="memory")
    enough = threading.Event()

    def record() -> None:
        for _ in range(1_000_000):  # bounded; the scrapes below end it long before
            if enough.is_set():
                return
            metrics.pass_done("event", done, 0.01)

    recorder = threading.Thread(target=record, daemon=True)
    recorder.start()
    seen = set()
    try:
        for _ in range(200):
            parsed = samples(metrics.text().decode())
            counts = (value(parsed, "xtm_composer_passes_total", trigger="event", result="ok"),
                      value(parsed, "xtm_composer_pass_duration_seconds_count", trigger="event"),
                      value(parsed, "xtm_composer_actions_total", action="deploy", result="ok"),
                      value(parsed, "xtm_composer_actions_total", action="start",
                            result="failed"))
            assert len(set(counts)) == 1, counts
            seen.add(counts[0])
    finally:
        enough.set()
        recorder.join(30)
    assert len(seen) > 1  # scrapes did fall between passes


def test_metrics_and_healthz_over_http_follow_the_passes(harness) -> None:  # noqa: F811
    secret = "s3cr3t-" + unique("v")
    metrics = PrometheusMetrics()
    backend = InMemoryBackend()
    h = harness(["m-a", "m-b"], backend=backend, schedule=0.5, metrics=metrics)
    server = MetricsServer("127.0.0.1", 0, metrics, h.runner.health).start()
    base = f"http://{server.address}"
    try:
        wait_for(lambda: h.ours() == {"m-a": "running", "m-b": "running"}, BOUND, "deployed")
        wait_for(lambda: h.runner.watcher is not None and h.runner.watcher.opened, BOUND, "stream")
        # the connector gauges are the last a full pass records
        parsed = metrics_once(base, "xtm_composer_connectors_desired", 2, state="started")
        assert value(parsed, "xtm_composer_actions_total", action="deploy", result="ok") == 2
        assert value(parsed, "xtm_composer_connectors_desired", state="started") == 2
        assert get(base + "/metrics")[0] == 200 and get(base + "/healthz")[0] == 200
        backend.out_of_band("remove", "m-a")
        wait_for(lambda: value(samples(get(base + "/metrics")[1]), "xtm_composer_actions_total",
                               action="deploy", result="ok") == 3, BOUND, "the redeploy counted")
        parsed = samples(get(base + "/metrics")[1])
        assert value(parsed, "xtm_composer_passes_total", trigger="event", result="ok") == 1
        assert value(parsed, "xtm_composer_events_total", kind="removed") >= 1
        # the engine stays down past 3 x 0.5 s: 503 with a one-line reason; back: 200
        backend.fail("observe", RuntimeUnavailable(f"Docker does not answer ({secret})"),
                     times=1000)
        wait_for(lambda: get(base + "/healthz")[0] == 503, BOUND, "unhealthy")
        status, body = get(base + "/healthz")
        assert body.count("\n") == 1 and "Docker does not answer" in json.loads(body)["reason"]
        backend._failures.clear()
        wait_for(lambda: get(base + "/healthz")[0] == 200, BOUND, "healthy again")
        failed = value(samples(get(base + "/metrics")[1]), "xtm_composer_passes_total",
                       trigger="resync", result="failed")
        assert failed >= 1
        assert get(base + "/nothing")[0] == 404
        assert_no_secrets(get(base + "/metrics")[1], [secret])
    finally:
        server.close()


# --- the real engines ------------------------------------------------------------------------


def _disrupt(which: str, bench: Any, how: str, name: str) -> None:
    client = raw_client(which, bench)
    try:
        if how == "remove":
            remove_by_name(which, bench, name)
        elif which == "docker":
            client.kill(name) if how == "kill" else client.stop(name, timeout=1)
        else:
            verb = "kill" if how == "kill" else "stop"
            params = {} if how == "kill" else {"timeout": 1}
            client.api.post(f"/containers/{name}/{verb}", params=params)
    finally:
        client.close()


def _states(which: str, bench: Any, owner: str) -> dict[str, tuple[str, str]]:
    """name -> (status, id) of the owner's containers, read behind the composer's back."""
    client = raw_client(which, bench)
    try:
        if which == "docker":
            found = client.containers(all=True, filters={"label": f"{LABEL_MANAGER}={owner}"})
            return {c["Names"][0].lstrip("/"): (c["State"], c["Id"]) for c in found}
        return {c.name: (str(c.attrs.get("State")), c.id) for c in client.containers.list(
            all=True, filters={"label": f"{LABEL_MANAGER}={owner}"})}
    finally:
        client.close()


def _unmanaged_burst(which: str, bench: Any, name: str, connector: str) -> None:
    """A container not ours (no owner label, though it names a connector of ours) created,
    started and removed."""
    create_unmanaged(which, bench, name, f"{bench.registry_open}/{bench.image}",
                     labels={LABEL_CONNECTOR: connector}, start=True)
    remove_by_name(which, bench, name)


@contextmanager
def run_process(which: str, path: Path | None, env: dict[str, str]) -> Iterator[
        tuple[subprocess.Popen[str], list[str]]]:
    """`run -f path` on engine ``which`` (``--stop-timeout 1``; no path: the source of
    manager.source); SIGTERM when the block ends, its stdout and stderr appended to the list; it
    exits 0 without a traceback."""
    source = ["-f", str(path)] if path is not None else []
    proc = subprocess.Popen([sys.executable, "-m", "composer_core", "--runtime", which, "run",
                             *source, "--stop-timeout", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs: list[str] = []
    failed = True
    try:
        yield proc, outputs
        proc.send_signal(signal.SIGTERM)
        outputs += list(proc.communicate(timeout=60))
        failed = False
    finally:
        if proc.poll() is None:
            proc.kill()
            outputs += list(proc.communicate())
        if failed and outputs:  # shown with the failure: what `run` was doing
            print(f"--- run's log, the block having failed ---\n{outputs[-1][-8000:]}",
                  file=sys.stderr)
    assert proc.returncode == 0, outputs[-1][-3000:]
    assert "Traceback" not in "\n".join(outputs)


@pytest_integration
def test_run_brings_back_what_is_killed_removed_or_stopped_on_events(  # noqa: F811
        engine, bench, manager, tmp_path: Path) -> None:  # noqa: F811
    ids = [unique("xtm-ev-kill"), unique("xtm-ev-rm"), unique("xtm-ev-stop")]
    path = tmp_path / "connectors.yaml"
    token = "tok-" + bench.password[:8]
    path.write_text(yaml.safe_dump({"connectors": [
        {"id": i, "name": i, "image": bench.image, "env": {"OPENCTI_TOKEN": token}}
        for i in ids]}))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MANAGER__ID": manager, "MANAGER__EXECUTE_SCHEDULE": "60",
           "MANAGER__METRICS__ENABLE": "true", "MANAGER__METRICS__PORT": str(port),
           "OPENCTI__DAEMON__DOCKER__REGISTRY__URL": bench.registry_private,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__USERNAME": bench.username,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__PASSWORD": bench.password}
    with run_process(engine, path, env) as (_proc, outputs):
        running = lambda: all(s == "running" for s, _ in  # noqa: E731
                              _states(engine, bench, manager).values()) and len(
            _states(engine, bench, manager)) == 3
        wait_for(running, 60, "the fleet deployed")
        wait_for(lambda: get(base + "/healthz")[0] == 200, 30, "healthz")
        time.sleep(1)  # the stream is open (it opens with the first pass)
        before = samples(get(base + "/metrics")[1])
        assert value(before, "xtm_composer_actions_total", action="deploy", result="ok") == 3
        _unmanaged_burst(engine, bench, unique("xtm-ev-stranger"), ids[0])
        old = _states(engine, bench, manager)
        for how, name in zip(("kill", "remove", "stop"), ids, strict=True):
            _disrupt(engine, bench, how, name)
            # well within the 60 s schedule: on its event
            wait_for(lambda n=name: _states(engine, bench, manager).get(n, ("",))[0]
                     == "running", BOUND, f"{name} back after {how}")
        now = _states(engine, bench, manager)
        assert now[ids[1]][1] != old[ids[1]][1]  # the removed one was deployed again
        after = metrics_once(base, "xtm_composer_actions_total", 4, action="deploy", result="ok")
        outputs.append(get(base + "/metrics")[1])  # scanned for secrets below
        assert value(after, "xtm_composer_passes_total", trigger="resync", result="ok") == 1
        assert value(after, "xtm_composer_passes_total", trigger="event", result="ok") >= 1
        assert value(after, "xtm_composer_actions_total", action="deploy", result="ok") == 4
        # the stranger's create is not among the events: only our deploys' are. On a loaded
        # machine a deploy may fail after its create and be tried again, so: one created per
        # deploy attempt at most (the stranger's would be one more), and at least the redeploy's
        created = (value(after, "xtm_composer_events_total", kind="created")
                   - value(before, "xtm_composer_events_total", kind="created"))
        attempts = deploys(after) - deploys(before)
        assert 1 <= created <= attempts, (created, attempts)
    assert_no_secrets("\n".join(outputs), [bench.password, token])


@pytest_integration
def test_healthz_flips_when_the_engine_stays_down_and_back(engine, bench, manager,  # noqa: F811
                                                          tmp_path: Path) -> None:  # noqa: F811
    # The shared bench engine is never stopped: `run` talks to it through a relay socket, and
    # the relay closing (its socket and every connection) stands in for the engine going down.
    real = (bench.docker_host if engine == "docker" else bench.podman_host).removeprefix("unix://")
    link = tmp_path / "engine.sock"
    relay = SocketRelay(link, real)
    path = tmp_path / "connectors.yaml"
    path.write_text(yaml.safe_dump({"connectors": [
        {"id": "h1", "name": unique("xtm-ev-health"), "image": f"{bench.registry_open}/{bench.image}"}]}))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MANAGER__ID": manager, "MANAGER__EXECUTE_SCHEDULE": "0.5",
           "MANAGER__METRICS__ENABLE": "true", "MANAGER__METRICS__PORT": str(port),
           "DOCKER_HOST": f"unix://{link}", "CONTAINER_HOST": f"unix://{link}"}
    with run_process(engine, path, env):
        try:
            wait_for(lambda: get(base + "/healthz")[0] == 503, 30, "unhealthy: no engine")
            status, body = get(base + "/healthz")
            assert "no successful pass" in json.loads(body)["reason"]
            relay.up()
            wait_for(lambda: get(base + "/healthz")[0] == 200, 30, "healthy: the engine is back")
            relay.down()
            wait_for(lambda: get(base + "/healthz")[0] == 503, 30, "unhealthy again")
            assert "the last successful pass was" in json.loads(get(base + "/healthz")[1])["reason"]
            relay.up()
            wait_for(lambda: get(base + "/healthz")[0] == 200, 30, "healthy again")
        finally:
            relay.down()


def test_metrics_are_off_by_default_and_a_taken_port_is_a_usage_error(
        make_settings, isolated_env: Path) -> None:
    from composer_core.errors import UsageError
    from composer_core.metrics import open_metrics

    settings = make_settings()
    assert (settings.get("manager.metrics.enable"), settings.get("manager.metrics.host"),
            settings.get("manager.metrics.port")) == (False, "127.0.0.1", 14270)
    metrics, server = open_metrics(settings, Health(30))
    assert server is None and not isinstance(metrics, PrometheusMetrics)
    taken = MetricsServer("127.0.0.1", 0, PrometheusMetrics(), Health(30)).start()
    try:
        port = int(taken.address.rsplit(":", 1)[1])
        with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{port}"):
            open_metrics(make_settings({"manager.metrics.enable": True,
                                        "manager.metrics.port": port}), Health(30))
    finally:
        taken.close()
