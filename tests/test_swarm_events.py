"""The swarm's event stream (docs/swarm.md, "Events"): what the manager's messages become, and, on
the bench's real swarm, event-driven `run` bringing back a service removed or scaled to 0 out of
band while a 60 s schedule would not have, ignoring an unmanaged service, and not answering its
own rolling update with reconciles."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_HASH, LABEL_MANAGER
from composer_core.errors import RuntimeUnavailable
from composer_core.settings import Settings
from composer_core.testing import wait_for
from composer_core.workload import WorkloadEvent
from composer_plugins.swarm.backend import SwarmBackend
from composer_plugins.swarm.events import SwarmEvents
from composer_plugins.swarm.tasks import LABEL_FAILED
from tests.bench import SocketRelay, SwarmBench, api_clients, require_swarm
from tests.conftest import assert_no_secrets
from tests.engine_helpers import free_port, unique
from tests.test_metrics import get, metrics_once, run_process, samples, value

OURS = {LABEL_MANAGER: "m1"}
#: seconds a reaction may take on the swarm in a test (2 shared CPUs; the figures are
#: bench/events.py's); well below the 60 s schedule
BOUND = 30.0


# ---------------------------------------------------------------- the messages, as the manager sends them

def service_message(action: str, service_id: str, name: str, **changes: str) -> dict[str, Any]:
    """A service event as Docker 20.10's manager sends it (verified on the bench): the name and
    what changed, no labels."""
    return {"Type": "service", "Action": action, "scope": "swarm", "time": 1_796_126_456,
            "timeNano": 1_796_126_456_500_000_000,
            "Actor": {"ID": service_id, "Attributes": {"name": name, **changes}}}


def task_message(action: str, service_id: str, service: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """A container event of a task on the manager's node: its container's labels are the
    service's ContainerSpec labels plus the swarm's."""
    return {"Type": "container", "Action": action, "id": "c0ffee" * 10, "time": 1_796_126_487,
            "Actor": {"ID": "c0ffee" * 10, "Attributes": {
                **labels, "com.docker.swarm.service.id": service_id,
                "com.docker.swarm.service.name": service, "com.docker.swarm.task.id": "t1",
                "name": f"{service}.1.t1", "image": "reg:5000/xtm/busybox:1@sha256:abc"}}}


class Inspections:
    """The manager's inspect of the services, counting the calls."""

    def __init__(self, services: dict[str, dict[str, Any]]) -> None:
        self.services = services
        self.calls: list[str] = []

    def __call__(self, service_id: str) -> Mapping[str, Any] | None:
        self.calls.append(service_id)
        return self.services.get(service_id)


def spec(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {"ID": "?", "Spec": {"Name": name, "Labels": dict(labels)}}


def test_service_events_of_our_services_only_learned_by_one_inspect_per_create() -> None:
    inspect = Inspections({"s-new": spec("new", {**OURS, LABEL_CONNECTOR: "c-new"}),
                           "s-alien": spec("alien", {LABEL_CONNECTOR: "c-new"}),
                           "s-old": spec("old", {**OURS, LABEL_CONNECTOR: "c-old"})})
    known: dict[str, tuple[str, str | None]] = {"s-old": ("old", "c-old")}
    translate = SwarmEvents(OURS, known, inspect)
    kinds = [(e.name, e.connector_id, e.kind, e.action) if e else None for e in map(translate, [
        service_message("update", "s-old", "old", **{"replicas.new": "0", "replicas.old": "1"}),
        service_message("update", "s-old", "old", **{"replicas.new": "1", "replicas.old": "0"}),
        service_message("update", "s-old", "old", **{"image.new": "b", "image.old": "a"}),
        service_message("update", "s-old", "old", **{"updatestate.new": "updating"}),
        service_message("create", "s-new", "new"),
        service_message("update", "s-new", "new"),
        # not ours: its labels (read by the inspect) lack the manager's, though it names a connector
        service_message("create", "s-alien", "alien"),
        service_message("update", "s-alien", "alien", **{"replicas.new": "0", "replicas.old": "1"}),
        service_message("remove", "s-alien", "alien"),
        # created and gone before the inspect: unknown, the resync covers it
        service_message("create", "s-gone", "gone"),
        service_message("remove", "s-old", "old"),
        service_message("remove", "s-old", "old"),  # reported once: forgotten after its removal
        {"Type": "network", "Action": "create", "Actor": {"ID": "n1", "Attributes": {}}},
    ])]
    assert kinds == [
        ("old", "c-old", "stopped", "update"), ("old", "c-old", "started", "update"),
        ("old", "c-old", "other", "update"), ("old", "c-old", "other", "update"),
        ("new", "c-new", "created", "create"), ("new", "c-new", "other", "update"),
        None, None, None, None,
        ("old", "c-old", "removed", "remove"), None, None]
    # one per create of an unknown id, one per scale to 0 of ours
    assert inspect.calls == ["s-old", "s-new", "s-alien", "s-gone"]
    assert known == {"s-new": ("new", "c-new")}
    event = translate(service_message("update", "s-new", "new", **{"replicas.new": "0"}))
    assert event is not None and event.id == "s-new" and event.time == 1_796_126_456.5
    assert event.kind == "stopped"


def test_the_backends_own_scale_to_0_after_rejected_tasks_is_not_a_stop() -> None:
    failed = spec("f", {**OURS, LABEL_CONNECTOR: "c-f", LABEL_FAILED: "No such image: reg/x@sha256:1"})
    translate = SwarmEvents(OURS, {"s-f": ("f", "c-f")}, Inspections({"s-f": failed}))
    event = translate(service_message("update", "s-f", "f", **{"replicas.new": "0", "replicas.old": "1"}))
    assert event is not None and (event.kind, event.connector_id) == ("other", "c-f")
    gone = SwarmEvents(OURS, {"s-g": ("g", "c-g")}, Inspections({}))  # removed meanwhile: a stop
    event = gone(service_message("update", "s-g", "g", **{"replicas.new": "0", "replicas.old": "1"}))
    assert event is not None and event.kind == "stopped"


def test_container_events_of_our_tasks_on_the_manager_name_their_service() -> None:
    inspect = Inspections({})
    translate = SwarmEvents(OURS, {}, inspect)
    ours = {**OURS, LABEL_CONNECTOR: "c1", LABEL_HASH: "h"}
    died = translate(task_message("die", "s1", "conn-1", ours))
    assert died is not None
    assert (died.name, died.connector_id, died.kind, died.action, died.id) == (
        "conn-1", "c1", "died", "die", "s1")
    assert translate(task_message("kill", "s1", "conn-1", ours)).kind == "killed"  # type: ignore[union-attr]
    assert translate(task_message("die", "s2", "alien", {LABEL_CONNECTOR: "c1"})) is None
    plain = task_message("die", "s1", "conn-1", ours)
    del plain["Actor"]["Attributes"]["com.docker.swarm.service.id"]
    assert translate(plain) is None  # a plain container with our labels is no service's task
    assert inspect.calls == []


# ---------------------------------------------------------------- the real swarm

@pytest.fixture
def swarm() -> SwarmBench:
    return require_swarm()


@pytest.fixture
def raw(swarm: SwarmBench) -> Iterator[Any]:
    """The manager's low-level client; every service of the test (by the names it made) is
    removed at teardown."""
    with api_clients() as make:
        client = make(swarm.manager_host)
        client.made = []
        yield client
        for name in client.made:
            if client.services(filters={"name": name}):
                client.remove_service(name)


def services_of(raw: Any, owner: str) -> dict[str, dict[str, Any]]:
    """name -> id, replicas wanted, tasks running, update state, env: the owner's services, read
    behind the composer's back."""
    found = raw.services(filters={"label": f"{LABEL_MANAGER}={owner}"})
    tasks = raw.tasks(filters={"service": [s["ID"] for s in found]}) if found else []
    out = {}
    for service in found:
        running = [t for t in tasks if t["ServiceID"] == service["ID"]
                   and t["Status"]["State"] == "running" and t["DesiredState"] == "running"]
        out[service["Spec"]["Name"]] = {
            "id": service["ID"], "replicas": service["Spec"]["Mode"]["Replicated"]["Replicas"],
            "running": len(running), "update": (service.get("UpdateStatus") or {}).get("State"),
            "env": service["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env") or []}
    return out


def scale(raw: Any, name: str, replicas: int) -> None:
    """`docker service scale NAME=replicas`: the spec as it is, another replica count."""
    service = raw.inspect_service(name)
    body = dict(service["Spec"])
    body["Mode"] = {"Replicated": {"Replicas": replicas}}
    raw._result(raw._post_json(raw._url("/services/{0}/update", service["ID"]), data=body,
                               params={"version": service["Version"]["Index"]}), json=True)


def back(raw: Any, owner: str, name: str, old_id: str | None = None) -> Callable[[], bool]:
    def check() -> bool:
        now = services_of(raw, owner).get(name)
        return bool(now and now["replicas"] == 1 and now["running"] == 1
                    and (old_id is None or now["id"] != old_id))
    return check


def connectors(path: Path, ids: list[str], image: str, token: str, changed: str = "") -> None:
    path.write_text(yaml.safe_dump({"connectors": [
        {"id": i, "name": i, "image": image,
         "env": {"OPENCTI_TOKEN": token, "GENERATION": changed if i == ids[-1] else ""}}
        for i in ids]}))


@pytest.mark.integration
def test_run_on_swarm_brings_back_a_service_removed_or_scaled_to_0_on_its_events(
        swarm: SwarmBench, raw: Any, tmp_path: Path) -> None:
    import docker.types

    owner = unique("xtm-swarm-ev")
    ids = [unique("xtm-swev-rm"), unique("xtm-swev-scale"), unique("xtm-swev-upd")]
    stranger = unique("xtm-swev-stranger")
    raw.made.extend([*ids, stranger])
    path = tmp_path / "connectors.yaml"
    token = "tok-" + swarm.password[:8]
    connectors(path, ids, swarm.ref(), token)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MANAGER__ID": owner, "MANAGER__EXECUTE_SCHEDULE": "60",
           "MANAGER__METRICS__ENABLE": "true", "MANAGER__METRICS__PORT": str(port),
           "OPENCTI__DAEMON__SWARM__ENDPOINT": swarm.manager_host,
           # tasks on the workers, as every swarm test places its own
           "OPENCTI__DAEMON__SWARM__CONSTRAINTS": '["node.role==worker"]',
           "OPENCTI__DAEMON__DOCKER__REGISTRY__URL": swarm.registry,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__INSECURE": "true",
           "OPENCTI__DAEMON__DOCKER__REGISTRY__USERNAME": swarm.username,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__PASSWORD": swarm.password}
    with run_process("swarm", path, env) as (_proc, outputs):
        wait_for(lambda: all(back(raw, owner, i)() for i in ids), 90, "the fleet deployed")
        wait_for(lambda: get(base + "/healthz")[0] == 200, 30, "healthz")
        time.sleep(1)  # the stream is open (it opens with the first pass)
        before = samples(get(base + "/metrics")[1])
        assert value(before, "xtm_composer_actions_total", action="deploy", result="ok") == 3

        # a service not ours (no manager label, though it names a connector of ours): created
        # and scaled to 0 (removed below); its events never reach run, nothing is done to it
        raw.create_service(docker.types.TaskTemplate(
            docker.types.ContainerSpec("busybox-never-pulled:1", command=["true"]),
            placement=docker.types.Placement(constraints=["node.role==worker"])), name=stranger,
            labels={LABEL_CONNECTOR: ids[0]})
        scale(raw, stranger, 0)
        version = raw.inspect_service(stranger)["Version"]["Index"]

        old = services_of(raw, owner)
        raw.remove_service(ids[0])  # docker service rm
        wait_for(back(raw, owner, ids[0], old[ids[0]]["id"]), BOUND, f"{ids[0]} back after rm")
        scale(raw, ids[1], 0)  # docker service scale NAME=0
        wait_for(back(raw, owner, ids[1]), BOUND, f"{ids[1]} back after scale 0")
        assert services_of(raw, owner)[ids[1]]["id"] == old[ids[1]]["id"]  # scaled, not recreated

        # the scale-0 pass's start is the last action recorded
        after = metrics_once(base, "xtm_composer_actions_total", 1, action="start", result="ok")
        # well within the 60 s schedule: on their events, not by the resync
        assert value(after, "xtm_composer_passes_total", trigger="resync", result="ok") == 1
        assert value(after, "xtm_composer_actions_total", action="deploy", result="ok") == 4
        assert value(after, "xtm_composer_actions_total", action="start", result="ok") == 1
        # the stranger's scale to 0 and removal are not among the events, nor reconciled
        assert value(after, "xtm_composer_events_total", kind="removed") == 1
        assert value(after, "xtm_composer_events_total", kind="stopped") == 1
        assert value(after, "xtm_composer_passes_total", trigger="event", result="ok") == 2
        left = raw.inspect_service(stranger)  # the events after its own were handled: untouched
        assert left["Version"]["Index"] == version and left["Spec"]["Labels"] == {
            LABEL_CONNECTOR: ids[0]} and left["Spec"]["Mode"]["Replicated"]["Replicas"] == 0
        raw.remove_service(stranger)  # its removal: not among the events counted below either

        # our own rolling update (the file changed): no reconcile answers its events
        connectors(path, ids, swarm.ref(), token, changed="2")
        wait_for(lambda: "GENERATION=2" in services_of(raw, owner)[ids[2]]["env"]
                 and services_of(raw, owner)[ids[2]]["update"] == "completed"
                 and back(raw, owner, ids[2])(), 90, f"{ids[2]} updated")
        # the update's events (updating, then completed) were received
        wait_for(lambda: value(samples(get(base + "/metrics")[1]), "xtm_composer_events_total",
                               kind="other") >= value(after, "xtm_composer_events_total",
                                                      kind="other") + 2, BOUND,
                 "the update's events streamed")
        done = metrics_once(base, "xtm_composer_actions_total", 1, action="replace", result="ok")
        assert value(done, "xtm_composer_passes_total", trigger="source", result="ok") == 1
        assert value(done, "xtm_composer_actions_total", action="replace", result="ok") == 1
        assert value(done, "xtm_composer_passes_total", trigger="event", result="ok") == 2
        assert value(done, "xtm_composer_events_total", kind="removed") == 1
        assert services_of(raw, owner)[ids[2]]["id"] == old[ids[2]]["id"]  # in place
    logged = "\n".join(outputs)
    assert "has no event stream" not in logged
    assert stranger not in logged and f"event pass ({ids[2]})" not in logged
    assert_no_secrets(logged, [swarm.password, token])


@pytest.mark.integration
def test_a_stream_is_one_request_per_window_and_breaks_when_the_manager_goes_away(
        swarm: SwarmBench, tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    # The shared manager is never stopped: the backend talks to it through a relay socket, and
    # the relay closing (its socket and every connection) stands in for the manager going away.
    link = tmp_path / "manager.sock"
    relay = SocketRelay(link, swarm.manager_host.removeprefix("unix://"))
    relay.up()
    try:
        backend = SwarmBackend.connect(make_settings(
            {"opencti.daemon.swarm.endpoint": f"unix://{link}"}), environ={})
        requests: list[str] = []
        send = backend.api.send

        def counting(request: Any, **kwargs: Any) -> Any:
            requests.append(f"{request.method} " + re.sub(r"^/v[0-9.]+", "",
                                                          request.path_url.split("?")[0]))
            return send(request, **kwargs)

        backend.api.send = counting
        labels = {LABEL_MANAGER: unique("xtm-swev-window")}
        first = backend.events(labels, window=1)
        assert list(first) == []  # nothing of ours happened: it ends at its window, no error
        second = backend.events(labels, since=first.until)
        # the first stream of a connection lists our services once; the next is the stream alone
        assert requests == ["GET /services", "GET /events", "GET /events"]

        seen: list[WorkloadEvent] = []
        broken: list[BaseException] = []

        def read() -> None:
            try:
                seen.extend(second)
            except BaseException as exc:  # noqa: BLE001 - the test reads what it raised
                broken.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        relay.down()
        reader.join(15)
        assert not reader.is_alive(), "the stream did not end when the manager went away"
        assert len(broken) == 1 and isinstance(broken[0], RuntimeUnavailable), broken
        assert f"unix://{link}" in broken[0].message
        with pytest.raises(RuntimeUnavailable, match="stopped answering"):
            backend.events(labels, since=second.until)
        backend.close()
    finally:
        relay.down()


@pytest.mark.integration
def test_a_task_killed_on_the_managers_node_is_seen_at_once_as_its_service(
        swarm: SwarmBench, tmp_path: Path, make_settings: Callable[..., Settings],
        plugins: Any) -> None:
    from tests.test_swarm import fresh_image, swarm_settings, workload

    owner = unique("xtm-swev-task")
    with api_clients() as make:
        manager = make(swarm.manager_host)
        # an image of its own (a digest no other test uses), so that the task holding it on the
        # manager never stands in the way of another test removing the bench's images there
        image = fresh_image(swarm, make)
        settings = swarm_settings(make_settings, swarm, password=swarm.password,
                                  constraints=["node.role==manager"])
        backend = SwarmBackend.connect(settings, environ={})
        seen: list[WorkloadEvent] = []
        stream = backend.events({LABEL_MANAGER: owner})
        reader = threading.Thread(target=lambda: seen.extend(stream), daemon=True)
        reader.start()
        pinned = ""
        try:
            name = unique("xtm-swev-task")
            applied = backend.apply(workload(settings, plugins, image, name, owner), None)
            pinned = applied.observed.image
            wait_for(lambda: any(e.name == name and e.kind == "started" and e.action == "start"
                                 for e in seen), BOUND, "its task's container started")
            (container,) = manager.containers(filters={
                "label": f"com.docker.swarm.service.id={applied.observed.id}"})
            manager.kill(container["Id"])  # docker kill, on the manager's node
            wait_for(lambda: any(e.name == name and e.kind in ("killed", "died") for e in seen),
                     BOUND, "the kill of its task streamed")
            ours = [e for e in seen if e.name == name]
            assert {(e.connector_id, e.id) for e in ours} == {(name, applied.observed.id)}
            backend.remove(applied.observed)
        finally:
            stream.close()
            reader.join(10)
            backend.close()
            for service in manager.services(filters={"label": f"{LABEL_MANAGER}={owner}"}):
                manager.remove_service(service["ID"])
            # its containers go with the service; then the image it held
            wait_for(lambda: not manager.containers(all=True, filters={
                "label": f"{LABEL_MANAGER}={owner}"}), BOUND, "its task's containers removed")
            if pinned:
                manager.remove_image(pinned, force=True)
