"""``xtm-composer --runtime kubernetes run`` on its watches, against tests/k8s_standin.py: an
in-process stand-in for the API server, NOT a cluster (what it proves: how `run` reacts to the
watch events a server following the API conventions sends, never a real server's timing).

`run` is the real command in a subprocess with a 60 s schedule: a Deployment deleted and one
scaled to 0 behind its back are back on their events, long before the next resync; a pod
crash-looping is reported restarting and neither acted on nor observed on its every death; an
unlabelled Deployment's events never reach it; a watch that expires (410) reconnects and runs a
full pass, which repairs what no watch saw."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_MANAGER
from composer_core.testing import wait_for
from tests import k8s_standin
from tests.conftest import assert_no_secrets
from tests.engine_helpers import free_port, unique
from tests.k8s_standin import StandIn
from tests.test_kubernetes_watch import deployment
from tests.test_metrics import get, run_process, samples, value

pytestmark = pytest.mark.k8s_standin

NS = "xtm"
BOUND = 10.0  # seconds a reaction may take here; the schedule is 60


def running(standin: StandIn, name: str, uid: str | None = None) -> bool:
    """The Deployment exists (with another uid than ``uid``), wants a replica, and its pod
    runs."""
    dep = standin.get("deployments", NS, name)
    if dep is None or dep["metadata"]["uid"] == uid or dep["spec"].get("replicas") != 1:
        return False
    pods = standin.pods_of(NS, name)
    return len(pods) == 1 and pods[0]["status"]["phase"] == "Running" and not any(
        "waiting" in s["state"] for s in pods[0]["status"]["containerStatuses"])


def test_run_follows_the_watches_of_its_deployments_and_pods(tmp_path: Path) -> None:
    standin = StandIn()
    manager = unique("xtm-k8s-run")
    gone, scaled, crash = "k8s-gone", "k8s-scaled", "k8s-crash"
    path = tmp_path / "connectors.yaml"
    path.write_text(yaml.safe_dump({"connectors": [
        {"id": i, "name": i, "image": "docker.io/library/busybox:1.36"}
        for i in (gone, scaled, crash)]}))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(standin.kubeconfig(NS)))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "MANAGER__ID": manager,
           "MANAGER__EXECUTE_SCHEDULE": "60", "MANAGER__METRICS__ENABLE": "true",
           "MANAGER__METRICS__PORT": str(port)}

    def metrics() -> dict[Any, float]:
        return samples(get(base + "/metrics")[1])

    def passes(trigger: str) -> float:
        return value(metrics(), "xtm_composer_passes_total", trigger=trigger, result="ok")

    try:
        with run_process("kubernetes", path, env) as (_proc, outputs):
            wait_for(lambda: all(running(standin, n) for n in (gone, scaled, crash)), 30,
                     "the fleet deployed")
            wait_for(lambda: standin.watching == 2, BOUND, "run watching")
            wait_for(lambda: passes("resync") == 1, BOUND, "the first pass over")
            crash_dep = standin.get("deployments", NS, crash)
            (crash_pod,) = standin.pods_of(NS, crash)

            # not ours, though it names a connector of ours: the selector keeps it out
            standin.create("deployments", NS, deployment("k8s-stranger", {LABEL_CONNECTOR: gone}))
            standin.delete("deployments", NS, "k8s-stranger")

            uid = standin.get("deployments", NS, gone)["metadata"]["uid"]
            standin.delete("deployments", NS, gone)  # kubectl delete
            wait_for(lambda: running(standin, gone, uid), BOUND, f"{gone} back")
            standin.scale(NS, scaled, 0)  # kubectl scale --replicas 0
            wait_for(lambda: running(standin, scaled), BOUND, f"{scaled} back")
            wait_for(lambda: passes("event") == 2, BOUND, "two event passes")
            events = passes("event")  # one each: the stranger's events caused none

            # the kubelet restarts the container of crash in a loop: each death is an event
            # whose reconcile observes it `restarting` and acts on nothing; the third within
            # a minute holds its events back
            name = crash_pod["metadata"]["name"]
            for restarts in (1, 2, 3):  # just exited (the first restart is at once), then
                # in back-off
                standin.set_pod_status(NS, name, k8s_standin.terminated(restarts) if restarts == 1
                                       else k8s_standin.crash_loop(restarts))
                wait_for(lambda n=restarts: passes("event") == events + n, BOUND,
                         f"death {restarts} reconciled")
                standin.set_pod_status(NS, name, k8s_standin.running(restarts))
            wait_for(lambda: value(metrics(), "xtm_composer_restart_backoffs_total") == 1,
                     BOUND, "the restart loop held back")
            standin.set_pod_status(NS, name, k8s_standin.crash_loop(4))  # the fourth waits
            wait_for(lambda: value(metrics(), "xtm_composer_events_total", kind="died") >= 4,
                     BOUND, "the fourth death streamed")
            time.sleep(1.0)  # more than the debounce, less than the 5 s hold-back
            assert passes("event") == events + 3
            after = standin.get("deployments", NS, crash)
            assert after["metadata"]["generation"] == crash_dep["metadata"]["generation"]
            assert [p["metadata"]["name"] for p in standin.pods_of(NS, crash)] == [name]

            # the history is compacted past where the watches stand, and the server ends them:
            # reopened from there, they get 410 Expired; run reconnects and runs a full pass,
            # which brings back what was deleted while nobody watched (just before the first
            # watch reopens)
            uid = standin.get("deployments", NS, gone)["metadata"]["uid"]

            def delete_unwatched(request: k8s_standin.Request) -> None:
                if request.query.get("watch") == "true":
                    standin.on_request = None
                    standin.delete("deployments", NS, gone)

            standin.create("deployments", NS, deployment("k8s-noise", {"team": "x"}))
            standin.compact()
            standin.on_request = delete_unwatched
            standin.end_watches(clean=True)
            wait_for(lambda: passes("reconnect") == 1, BOUND, "a full pass after the reconnect")
            wait_for(lambda: running(standin, gone, uid), BOUND, f"{gone} back after the 410")
            assert "expired" in standin.watch_ends
            wait_for(lambda: standin.watching == 2, BOUND, "run watching again")
            final = metrics()
            outputs.append(get(base + "/metrics")[1])
            assert value(final, "xtm_composer_passes_total", trigger="resync", result="ok") == 1
            assert value(final, "xtm_composer_event_stream_reconnects_total") == 1
            assert value(final, "xtm_composer_actions_total", action="start", result="ok") == 1
            assert value(final, "xtm_composer_actions_total", action="deploy", result="ok") == 5
        text = "\n".join(outputs)
        assert f"connector {crash} is restarting" in text
        assert "410 Expired" in text and "reconnected: a full pass follows" in text
        assert "k8s-stranger" not in text
        assert_no_secrets(text, [standin.token])
    finally:
        standin.close()


def test_the_manager_label_selects_the_watches(tmp_path: Path) -> None:
    """What the command sends: both watches by this manager's label only."""
    standin = StandIn()
    manager = unique("xtm-k8s-sel")
    path = tmp_path / "connectors.yaml"
    path.write_text(yaml.safe_dump({"connectors": []}))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(standin.kubeconfig(NS)))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "MANAGER__ID": manager,
           "MANAGER__EXECUTE_SCHEDULE": "60"}
    try:
        with run_process("kubernetes", path, env):
            wait_for(lambda: standin.watching == 2, BOUND, "run watching")
        watches = [r for r in standin.requests if r.query.get("watch") == "true"]
        assert {r.query["labelSelector"] for r in watches} == {f"{LABEL_MANAGER}={manager}"}
        assert {int(r.query["timeoutSeconds"]) for r in watches} == {300}
    finally:
        standin.close()
