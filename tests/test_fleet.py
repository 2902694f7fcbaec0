"""Connector fleets: the connectors file, the plan, `apply` and the `run` loop, on both engines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from composer_core.engine.container_backend import ContainerBackend, observed_from
from composer_core.engine.deploy import container_spec
from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_HASH, LABEL_MANAGER
from composer_core.fleet.connectors import InvalidConnectorsFile, load_connectors, parse_connectors
from composer_core.fleet.reconcile import Reconciler, plan
from composer_core.images.resolve import resolve_image
from composer_core.timestamps import seconds_since
from composer_core.types import ContainerInfo
from composer_core.workload import Observed
from tests.conftest import assert_no_secrets
from tests.engine_helpers import (
    CountingRuntime,
    create_unmanaged,
    free_port,
    remove_by_name,
    unique,
)

WRITES = {"create", "start", "stop", "remove", "rename", "pull"}


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pass locks of this module's tests under a directory of their own, not the machine's."""
    path = tmp_path_factory.mktemp("xdg-runtime")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    return path


# --- the file (no engine) --------------------------------------------------------------------


def test_file_problems_are_all_listed(tmp_path: Path) -> None:
    data = {"connectors": [
        {"id": "a1", "image": "x:1"},
        {"id": "a1", "image": "Bad//ref"},
        {"id": "b1", "name": "a1", "image": "y", "env": {"K": [1], "TOKEN": None}, "status": "on",
         "extra": 1},
        {"image": "z"},
        "not a mapping",
    ]}
    with pytest.raises(InvalidConnectorsFile) as err:
        parse_connectors(data, "f.yaml")
    text = err.value.message
    for expected in ("connectors[1] (id a1).id: 'a1' is also the id of connectors[0] (id a1)",
                     "connectors[1] (id a1).image: invalid reference format",
                     "connectors[2] (id b1): unknown keys extra",
                     "connectors[2] (id b1).name: 'a1' is also the name of connectors[0]",
                     "connectors[2] (id b1).env.K: must be a string",
                     "connectors[2] (id b1).env.TOKEN: must be a string",
                     "connectors[2] (id b1).status: must be started or stopped, not 'on'",
                     "connectors[3].id: required",
                     "connectors[4]: must be a mapping"):
        assert expected in text
    assert err.value.exit_code == 2


def test_defaults_and_typed_env(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("connectors:\n  - {id: misp-1, image: 'connector-misp:5.0.0', env: {N: 1, B: true}}\n"
                    "  - {id: x, image: alpine}\n")
    first, second = load_connectors(path)
    assert (first.name, first.status, dict(first.env)) == ("misp-1", "started", {"N": "1", "B": "true"})
    assert second.name == "connector-x"  # a one-letter id is no valid container name


@pytest.mark.parametrize("content, words", [
    ("connectors: [unclosed\n", "not valid YAML at line"),
    ("- a\n", "a mapping with a list `connectors:`"),
])
def test_broken_files(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(InvalidConnectorsFile, match=words):
        load_connectors(path)


def _info(name: str, cid: str | None, status: str, digest: str = "old", manager_id: str = "m") -> Observed:
    """A container as the docker / podman backend reports it to the plan."""
    labels = {LABEL_MANAGER: manager_id, LABEL_HASH: digest}
    if cid:
        labels[LABEL_CONNECTOR] = cid
    return observed_from(ContainerInfo(id=f"id-{name}", name=name, image="x", status=status,
                                       labels=labels))


def test_plan_covers_every_action(make_settings, plugins) -> None:
    from composer_core.engine.deploy import config_hash

    settings = make_settings({"manager.id": "m"})
    connectors = parse_connectors({"connectors": [
        {"id": "new", "image": "alpine:3"},
        {"id": "same", "image": "alpine:3", "env": {"A": "1"}},
        {"id": "changed", "image": "alpine:3"},
        {"id": "to-start", "image": "alpine:3"},
        {"id": "to-stop", "image": "alpine:3", "status": "stopped"},
        {"id": "renamed", "name": "renamed-now", "image": "alpine:3"},
    ]}, "f")
    h = config_hash("docker.io/library/alpine:3", {})
    containers = [
        _info("same", "same", "running", config_hash("docker.io/library/alpine:3", {"A": "1"})),
        _info("changed", "changed", "running", "stale-hash"),
        _info("to-start", "to-start", "exited", h),
        _info("to-stop", "to-stop", "running", h),
        _info("renamed", "renamed", "running", h),
        _info("gone", "gone", "running", h),
        _info("changed-xtm-old-1234", "changed", "exited", h),
    ]
    steps = {(s.id, s.name): (s.action, s.reason) for s in plan(connectors, containers, settings, plugins)}
    assert steps[("new", "new")][0] == "deploy"
    assert steps[("same", "same")] == ("nothing", "up to date")
    assert steps[("changed", "changed")][0] == "replace"
    assert steps[("changed", "changed-xtm-old-1234")][0] == "remove"
    assert steps[("to-start", "to-start")][0] == "start"
    assert steps[("to-stop", "to-stop")][0] == "stop"
    assert steps[("renamed", "renamed-now")][0] == "deploy"
    assert steps[("renamed", "renamed")][0] == "remove"
    assert steps[("gone", "gone")] == ("remove", "its connector is not in the file")
    assert len(steps) == 9


def test_seconds_since_engine_timestamps() -> None:
    assert seconds_since(None) is None and seconds_since("nonsense") is None
    assert -1 < seconds_since(time.strftime("%Y-%m-%dT%H:%M:%S.123456789Z", time.gmtime())) < 5
    assert 3500 < seconds_since(time.strftime("%Y-%m-%dT%H:%M:%S.5+00:00", time.gmtime(time.time() - 3600))) < 3700


# --- the decisions, on the in-memory backend (no engine) ------------------------------------------

MEMORY_IMAGES = ("docker.io/library/busybox:1.36", "docker.io/library/busybox:1.37")


def _memory_fleet(ids: list[str], **overrides: dict[str, Any]) -> list[Any]:
    return parse_connectors({"connectors": [
        dict({"id": cid, "name": cid, "image": MEMORY_IMAGES[i % 3 == 2],
              "env": {"CONNECTOR_ID": cid}},
             **overrides.get(cid, {})) for i, cid in enumerate(ids)]}, "test")


def _memory_pass(backend: Any, settings: Any, plugins: Any, connectors: list[Any], *,
                 dry_run: bool = False, **options: Any) -> Any:
    backend.reset_counts()
    return Reconciler(backend, settings, plugins, stop_timeout=1, **options).run_pass(
        connectors, dry_run=dry_run)


def _memory_states(backend: Any, manager_id: str = "m") -> dict[str, tuple[str, str]]:
    return {c.name: (c.status, c.id) for c in backend.runtime.list({LABEL_MANAGER: manager_id})}


def test_memory_first_pass_then_steady_then_targeted_changes(make_settings, plugins) -> None:
    from composer_core.testing import InMemoryBackend

    settings, backend = make_settings({"manager.id": "m"}), InMemoryBackend()
    a, b, c = ids = ["aa", "bb", "cc"]
    first = _memory_pass(backend, settings, plugins, _memory_fleet(ids, cc={"status": "stopped"}))
    assert [(s.id, s.action, s.result) for s in first.steps] == [
        (a, "deploy", "ok"), (b, "deploy", "ok"), (c, "deploy", "ok")]
    assert backend.calls["observe"] == 1 and backend.calls["apply"] == 3
    assert backend.requests["pull"] == 2  # two distinct images for three connectors
    assert backend.requests["inspect"] == 0  # the observation told everything
    states = _memory_states(backend)
    assert states[a][0] == states[b][0] == "running" and states[c][0] == "created"

    second = _memory_pass(backend, settings, plugins, _memory_fleet(ids, cc={"status": "stopped"}))
    assert {s.action for s in second.steps} == {"nothing"}
    assert dict(backend.calls) == {"observe": 1} and dict(backend.requests) == {"list": 1}

    changed = _memory_fleet(ids, bb={"env": {"CONNECTOR_ID": b, "NEW": "1"}}, cc={"status": "stopped"})
    third = _memory_pass(backend, settings, plugins, changed)
    assert {s.id: s.action for s in third.steps} == {a: "nothing", b: "replace", c: "nothing"}
    after = _memory_states(backend)
    assert after[a] == states[a] and after[c] == states[c]
    assert after[b][1] != states[b][1] and after[b][0] == "running"
    assert backend.requests["pull"] == 1

    flipped = _memory_fleet(ids, aa={"status": "stopped"}, bb={"env": {"CONNECTOR_ID": b, "NEW": "1"}})
    fourth = _memory_pass(backend, settings, plugins, flipped)
    assert {s.id: s.action for s in fourth.steps} == {a: "stop", b: "nothing", c: "start"}
    now = _memory_states(backend)
    assert now[a] == ("exited", states[a][1]) and now[c] == ("running", states[c][1])


def test_memory_orphans_and_stale_removed_unmanaged_untouched(make_settings, plugins) -> None:
    from composer_core.testing import InMemoryBackend

    settings, backend = make_settings({"manager.id": "m"}), InMemoryBackend()
    stranger = backend.add_unmanaged("stranger")
    other_manager = backend.add_unmanaged("other", labels={LABEL_MANAGER: "someone-else",
                                                           LABEL_CONNECTOR: "x"})
    _memory_pass(backend, settings, plugins, _memory_fleet(["aa", "bb", "cc"]))
    result = _memory_pass(backend, settings, plugins,
                          _memory_fleet(["aa", "bb"], bb={"name": "bb-renamed"}))
    actions = sorted((s.name, s.action, s.result) for s in result.steps)
    assert actions == [("aa", "nothing", "ok"), ("bb", "remove", "ok"),
                       ("bb-renamed", "deploy", "ok"), ("cc", "remove", "ok")]
    assert set(_memory_states(backend)) == {"aa", "bb-renamed"}
    assert {stranger, other_manager} <= set(backend.runtime.containers)  # never touched


def test_memory_a_failed_pull_fails_its_connectors_once_the_others_converge(make_settings,
                                                                           plugins) -> None:
    from composer_core.testing import InMemoryBackend

    settings, backend = make_settings({"manager.id": "m"}), InMemoryBackend()
    missing = "docker.io/library/busybox:no-such-tag"
    backend.runtime.missing(missing)
    connectors = _memory_fleet(["aa", "bb", "cc"], aa={"image": missing}, bb={"image": missing})
    result = _memory_pass(backend, settings, plugins, connectors)
    by_id = {s.id: s for s in result.steps}
    assert by_id["cc"].result == "ok"
    for cid in ("aa", "bb"):
        error = by_id[cid].error
        assert by_id[cid].result == "failed" and error is not None and error.exit_code == 10
        assert "credential chain" in error.message  # explained with the trace
    # the missing image was asked for once: its second connector failed with the same error
    assert [ref for ref, _ in backend.runtime.pulls].count(missing) == 1
    assert set(_memory_states(backend)) == {"cc"}


def test_memory_a_backend_failure_is_one_failed_step(make_settings, plugins) -> None:
    from composer_core.errors import ContainerError
    from composer_core.testing import InMemoryBackend

    settings, backend = make_settings({"manager.id": "m"}), InMemoryBackend()
    backend.fail("apply", ContainerError("the engine refused"))
    result = _memory_pass(backend, settings, plugins, _memory_fleet(["aa", "bb"]))
    assert sorted(s.result for s in result.steps) == ["failed", "ok"]
    (failed,) = result.failed
    assert failed.error is not None and failed.error.message == "the engine refused"


def test_memory_a_workload_failing_to_start_is_recreated_on_the_third_pass(make_settings,
                                                                          plugins) -> None:
    from dataclasses import replace as with_fields

    from composer_core.testing import InMemoryBackend

    settings, backend = make_settings({"manager.id": "m"}), InMemoryBackend()
    (connector,) = _memory_fleet(["aa"])
    resolved = resolve_image(connector.image, settings, plugins)
    spec = container_spec(resolved, connector.name, connector.env, manager="m",
                          connector_id=connector.id)
    backend.runtime.images[spec.image] = "sha256:0"
    wedged = backend.runtime.create(with_fields(spec, command=("/no/such/binary",)))
    failures: dict[str, int] = {}
    for attempt in (1, 2):
        (step,) = _memory_pass(backend, settings, plugins, [connector],
                               start_failures=failures).steps
        assert (step.action, step.result) == ("start", "failed")
        assert step.to_dict()["failed_starts"] == attempt and failures == {wedged.id: attempt}
    assert "the next pass recreates it" in step.reason
    (step,) = _memory_pass(backend, settings, plugins, [connector], start_failures=failures).steps
    assert (step.action, step.result) == ("recreate", "ok")
    ((status, new_id),) = _memory_states(backend).values()
    assert new_id != wedged.id and status == "running" and failures == {}


def test_memory_restart_loops_are_reported_with_one_inspect_each(make_settings, plugins) -> None:
    from composer_core.testing import InMemoryBackend

    settings, backend = make_settings({"manager.id": "m"}), InMemoryBackend()
    _memory_pass(backend, settings, plugins, _memory_fleet(["aa", "bb", "cc"]))
    backend.crash_loop("bb", restarts=5)
    result = _memory_pass(backend, settings, plugins, [], dry_run=True)
    assert result.warnings == ["connector bb (bb) is restarting in a loop: 5 restarts"]
    # the list call carries no restart count: only the container it shows restarting is inspected
    assert dict(backend.requests) == {"list": 1, "inspect": 1}
    backend.crash_loop("bb", restarts=2)  # restarting, but not (yet) a loop
    assert _memory_pass(backend, settings, plugins, [], dry_run=True).warnings == []


def test_memory_each_pull_sends_exactly_the_chains_one_credential(make_settings, plugins) -> None:
    from composer_core.testing import InMemoryBackend

    registry = "registry.example:5000"
    settings = make_settings({"manager.id": "m", "opencti.daemon.docker.registry": {
        "url": registry, "username": "alice", "password": "s3cret-pw"}})
    backend = InMemoryBackend()
    backend.runtime.require_auth(registry, "alice", "s3cret-pw")
    connectors = parse_connectors({"connectors": [
        {"id": "private", "image": "xtm/connector:1"},
        {"id": "public", "image": "docker.io/library/busybox:1.36"}]}, "test")
    result = _memory_pass(backend, settings, plugins, connectors)
    assert result.failed == []
    sent = {ref: creds for ref, creds in backend.runtime.pulls}
    private = sent[f"{registry}/xtm/connector:1"]
    assert (private.source, private.username, private.registry) == ("config", "alice", registry)
    assert sent["docker.io/library/busybox:1.36"].anonymous  # never another registry's credential


def test_memory_failures_a_backend_observed_are_warnings(make_settings, plugins) -> None:
    """An orchestrator reports a task rejected for auth in Observed.error: the pass says so."""
    from dataclasses import replace as with_fields

    from composer_core.errors import AuthenticationRequired
    from composer_core.testing import InMemoryBackend

    settings, backend = make_settings({"manager.id": "m"}), InMemoryBackend()
    _memory_pass(backend, settings, plugins, _memory_fleet(["aa", "bb"]))
    observed = backend.observe({LABEL_MANAGER: "m"})
    rejected = AuthenticationRequired("authentication required: task rejected\n  trace...")
    backend.observe = lambda labels: [with_fields(o, error=rejected) if o.name == "bb" else o
                                      for o in observed]
    result = _memory_pass(backend, settings, plugins, _memory_fleet(["aa", "bb"]), dry_run=True)
    assert result.warnings == ["connector bb (bb) failed on the backend (exit code 6): "
                               "authentication required: task rejected"]


def test_memory_apply_command_drives_any_backend(run_cli, monkeypatch, tmp_path: Path) -> None:
    """`apply` needs only the backend contract: on the in-memory backend, a first apply deploys,
    the second is one observation and no write."""
    from composer_core.engine import select
    from composer_core.testing import InMemoryBackend

    backend = InMemoryBackend()
    monkeypatch.setattr(select, "connect_runtime", lambda *args, **kwargs: backend)
    monkeypatch.setenv("MANAGER__ID", "m-apply")
    path = tmp_path / "connectors.yaml"
    path.write_text(yaml.safe_dump({"connectors": [
        {"id": "aa", "image": MEMORY_IMAGES[0]}, {"id": "bb", "image": MEMORY_IMAGES[1],
                                                  "status": "stopped"}]}))
    code, out, err = run_cli(["apply", "-f", str(path), "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["runtime"] == "memory"
    assert [(a["id"], a["action"], a["result"]) for a in result["actions"]] == [
        ("aa", "deploy", "ok"), ("bb", "deploy", "ok")]
    backend.reset_counts()
    code, out, _ = run_cli(["apply", "-f", str(path), "--json"])
    assert {a["action"] for a in json.loads(out)["actions"]} == {"nothing"}
    assert dict(backend.calls) == {"observe": 1} and dict(backend.requests) == {"list": 1}


# --- on the engines ----------------------------------------------------------------------------

pytest_integration = pytest.mark.integration


def _fleet(bench: Any, ids: list[str], **overrides: dict[str, Any]) -> dict[str, Any]:
    images = [bench.image, bench.image, bench.image2]
    return {"connectors": [dict({"id": cid, "name": cid, "image": images[i % 3],
                                 "env": {"CONNECTOR_ID": cid, "OPENCTI_TOKEN": "tok-" + bench.password[:8]}},
                                **overrides.get(cid, {}))
                           for i, cid in enumerate(ids)]}


@pytest.fixture
def fleet_settings(engine_settings, bench):
    return engine_settings({"opencti.daemon.docker.registry": {
        "url": bench.registry_private, "username": bench.username, "password": bench.password}})


@pytest.fixture
def ids(engine: str, bench: Any) -> list[str]:
    names = [unique("xtm-fleet") for _ in range(3)]
    yield names
    for name in names:
        remove_by_name(engine, bench, name)


def _pass(runtime: Any, settings: Any, plugins: Any, data: dict[str, Any]) -> tuple[Any, CountingRuntime]:
    counting = CountingRuntime(runtime)
    connectors = parse_connectors(data, "test")
    result = Reconciler(ContainerBackend(counting), settings, plugins,
                        stop_timeout=1).run_pass(connectors)
    return result, counting


def _states(runtime: Any, manager_id: str) -> dict[str, tuple[str, str]]:
    return {c.name: (c.status, c.id) for c in runtime.list({LABEL_MANAGER: manager_id})}


@pytest_integration
def test_first_apply_then_idempotent_then_targeted_changes(engine, bench, manager, fleet_settings, plugins,
                                                           connect, ids, caplog) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="xtm_composer")
    settings = fleet_settings
    runtime = connect(settings)
    a, b, c = ids
    data = _fleet(bench, ids, **{c: {"status": "stopped"}})
    first, counted = _pass(runtime, settings, plugins, data)
    # the seed's troubleshooting line, once per deployment (not per pull), as a single deploy logs it
    for image in (bench.image, bench.image, bench.image2):
        line = (f"Deploying container - Registry: {bench.registry_private}, Original image: {image}, "
                f"Pulling: {bench.registry_private}/{image}")
        assert line in caplog.text
    assert caplog.text.count("Deploying container - Registry:") == 3
    assert "Pulling image - " not in caplog.text
    assert counted.calls["inspect"] == 0  # the list call told everything: no inspect per deploy
    assert [(s.id, s.action, s.result) for s in first.steps] == [(a, "deploy", "ok"), (b, "deploy", "ok"),
                                                                 (c, "deploy", "ok")]
    assert counted.calls["pull"] == 2  # two distinct images for three connectors: each pulled once
    states = _states(runtime, manager)
    assert states[a][0] == "running" and states[b][0] == "running"
    assert states[c][0] == "created"  # status stopped: created, never started

    second, counted = _pass(runtime, settings, plugins, data)
    assert {s.action for s in second.steps} == {"nothing"}
    assert dict(counted.calls) == {"list": 1}  # steady state: one list call, no write

    data["connectors"][1]["env"]["NEW"] = "1"  # only b changes
    third, counted = _pass(runtime, settings, plugins, data)
    assert {s.id: s.action for s in third.steps} == {a: "nothing", b: "replace", c: "nothing"}
    after = _states(runtime, manager)
    assert after[a][1] == states[a][1] and after[c][1] == states[c][1]
    assert after[b][1] != states[b][1] and after[b][0] == "running"
    assert counted.calls["pull"] == 1

    data["connectors"][0]["status"] = "stopped"
    data["connectors"][2]["status"] = "started"
    fourth, _ = _pass(runtime, settings, plugins, data)
    assert {s.id: s.action for s in fourth.steps} == {a: "stop", b: "nothing", c: "start"}
    flipped = _states(runtime, manager)
    assert flipped[a][0] == "exited" and flipped[c][0] == "running"
    assert flipped[a][1] == states[a][1]  # same containers, only their state changed


@pytest_integration
def test_orphans_removed_unmanaged_left_alone(engine, bench, manager, fleet_settings, plugins, connect,
                                              ids) -> None:
    settings = fleet_settings
    runtime = connect(settings)
    stranger = unique("xtm-unmanaged")
    create_unmanaged(engine, bench, stranger, f"{bench.registry_open}/{bench.image}")
    try:
        _pass(runtime, settings, plugins, _fleet(bench, ids))
        result, _ = _pass(runtime, settings, plugins, _fleet(bench, ids[:1]))
        removed = sorted(s.name for s in result.steps if s.action == "remove")
        assert removed == sorted(ids[1:]) and all(s.result == "ok" for s in result.steps)
        assert set(_states(runtime, manager)) == {ids[0]}
        assert runtime.inspect(stranger) is not None  # not ours: never touched
    finally:
        remove_by_name(engine, bench, stranger)


@pytest_integration
def test_registry_outage_fails_one_connector_the_others_converge(engine, bench, manager, fleet_settings,
                                                                 plugins, connect, ids) -> None:
    settings = fleet_settings
    runtime = connect(settings)
    down = f"127.0.0.1:{free_port()}/xtm-test/busybox:1.0"
    data = _fleet(bench, ids, **{ids[1]: {"image": down}})
    result, _ = _pass(runtime, settings, plugins, data)
    by_id = {s.id: s for s in result.steps}
    assert by_id[ids[0]].result == "ok" and by_id[ids[2]].result == "ok"
    assert by_id[ids[1]].result == "failed"
    assert by_id[ids[1]].error is not None and by_id[ids[1]].error.exit_code == 8  # unreachable
    assert set(_states(runtime, manager)) == {ids[0], ids[2]}


@pytest_integration
def test_apply_command(engine, bench, manager, ids, run_cli, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MANAGER__ID", manager)
    monkeypatch.setenv("OPENCTI__DAEMON__DOCKER__REGISTRY__URL", bench.registry_private)
    monkeypatch.setenv("OPENCTI__DAEMON__DOCKER__REGISTRY__USERNAME", bench.username)
    monkeypatch.setenv("OPENCTI__DAEMON__DOCKER__REGISTRY__PASSWORD", bench.password)
    path = tmp_path / "connectors.yaml"
    path.write_text(yaml.safe_dump(_fleet(bench, ids)))
    code, out, err = run_cli(["--runtime", engine, "apply", "-f", str(path), "--dry-run", "--json"])
    assert code == 0, err
    assert [a["result"] for a in json.loads(out)["actions"]] == ["planned"] * 3
    assert _names(engine, bench, manager) == set()  # a dry run changes nothing

    code, out, err = run_cli(["--runtime", engine, "apply", "-f", str(path), "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["runtime"] == engine
    assert [(a["id"], a["action"], a["result"]) for a in report["actions"]] == [(i, "deploy", "ok") for i in ids]

    broken = _fleet(bench, ids, **{ids[2]: {"image": f"127.0.0.1:{free_port()}/x:1"}})
    path.write_text(yaml.safe_dump(broken))
    code, out, err = run_cli(["--runtime", engine, "apply", "-f", str(path)])
    assert code == 14
    assert "1 of 3 actions failed" in err and "connection refused" in err
    assert "is unreachable" in out  # the table names the failure, stderr has its full text
    assert_no_secrets(out + err, [bench.password, "tok-" + bench.password[:8]])


def _names(engine: str, bench: Any, manager_id: str) -> set[str]:
    from tests.engine_helpers import raw_client

    client = raw_client(engine, bench)
    try:
        if engine == "docker":
            found = client.containers(all=True, filters={"label": f"{LABEL_MANAGER}={manager_id}"})
            return {c["Names"][0].lstrip("/") for c in found}
        return {c.name for c in client.containers.list(all=True, filters={"label": f"{LABEL_MANAGER}={manager_id}"})}
    finally:
        client.close()


@pytest.mark.parametrize("content", ["connectors: [{id: a1}]\n", "connectors:\n - {id: a1, image: 'UP//x'}\n"])
def test_invalid_file_changes_nothing_and_calls_no_engine(run_cli, monkeypatch, tmp_path: Path,
                                                          content: str) -> None:
    # an endpoint where nothing listens: had the command contacted an engine, it would exit 5
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    path = tmp_path / "c.yaml"
    path.write_text(content)
    code, _, err = run_cli(["--runtime", "docker", "apply", "-f", str(path)])
    assert code == 2
    assert "invalid connectors file" in err and "nothing was changed" in err


def test_bad_env_names_and_nul_values_are_refused_by_the_file_as_a_whole(
        run_cli, monkeypatch, tmp_path: Path) -> None:
    """The same rule as the deploy's, before any engine call, and the value never echoed."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    secret = "nul-secret-" + os.urandom(4).hex()
    path = tmp_path / "c.yaml"
    path.write_text("connectors:\n"
                    "  - id: a1\n    image: alpine:3\n    env:\n"
                    '      "NEW\\nLINE": x\n      "EQ=UALS": x\n      "N\\0UL": x\n'
                    f'      TOKEN: "{secret}\\0tail"\n'
                    "  - {id: b1, image: alpine:3, env: {OK: fine}}\n")
    code, out, err = run_cli(["--runtime", "docker", "apply", "-f", str(path), "--json"])
    assert code == 2, err
    for expected in ("connectors[0] (id a1).env: invalid variable name 'NEW\\nLINE': it must not "
                     "contain a control character",
                     "connectors[0] (id a1).env: invalid variable name 'EQ=UALS': it must not contain '='",
                     "connectors[0] (id a1).env: invalid variable name 'N\\x00UL': it must not contain "
                     "a control character",
                     "connectors[0] (id a1).env.TOKEN: the value holds a NUL character (at offset 19 of 24)",
                     "4 problems"):
        assert expected in err
    assert_no_secrets(out + err, [secret])


@pytest_integration
def test_run_loop_follows_the_file_and_stops_cleanly_on_sigterm(engine, bench, manager, ids,
                                                                tmp_path: Path) -> None:
    path = tmp_path / "connectors.yaml"
    path.write_text(yaml.safe_dump(_fleet(bench, ids[:1])))
    env = {**os.environ, "MANAGER__ID": manager, "MANAGER__EXECUTE_SCHEDULE": "0.5",
           "OPENCTI__DAEMON__DOCKER__REGISTRY__URL": bench.registry_private,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__USERNAME": bench.username,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__PASSWORD": bench.password}
    proc = subprocess.Popen([sys.executable, "-m", "composer_core", "--runtime", engine, "run", "-f",
                             str(path), "--stop-timeout", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _names(engine, bench, manager) == {ids[0]})
        path.write_text(yaml.safe_dump(_fleet(bench, ids[:2])))  # a connector is added
        _wait_for(lambda: _names(engine, bench, manager) == set(ids[:2]))
        path.write_text("connectors: [broken\n")  # an invalid edit keeps the last good version
        time.sleep(1.5)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert "received SIGTERM" in err and "run: stopped" in err
    assert "is invalid, keeping the previous version" in err
    assert "Traceback" not in err
    assert _names(engine, bench, manager) == set(ids[:2])
    assert_no_secrets(out + err, [bench.password, "tok-" + bench.password[:8]])


def _wait_for(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


@pytest_integration
def test_a_connector_restarting_in_a_loop_is_reported(engine, bench, manager, engine_settings, plugins,
                                                      connect) -> None:
    from composer_core.engine.deploy import Deployer

    settings = engine_settings()
    runtime = connect(settings)
    looping, healthy = unique("xtm-loop"), unique("xtm-healthy")
    deployer = Deployer(runtime, settings, plugins)
    image = f"{bench.registry_open}/{bench.image}"
    try:
        deployer.deploy(image, healthy, {}, connector_id="healthy-1")
        deployer.deploy(image, looping, {}, connector_id="loop-1", command=("false",))  # exits at once
        warnings: list[str] = []
        deadline = time.monotonic() + 20
        while not warnings and time.monotonic() < deadline:
            time.sleep(0.5)
            warnings = Reconciler(ContainerBackend(runtime), settings, plugins).run_pass(
                [], dry_run=True).warnings
        assert len(warnings) == 1, warnings
        assert f"connector loop-1 ({looping}) is restarting in a loop" in warnings[0]
    finally:
        remove_by_name(engine, bench, looping)
        remove_by_name(engine, bench, healthy)


@pytest_integration
def test_a_new_id_under_the_same_name_removes_then_deploys(engine, bench, manager, fleet_settings, plugins,
                                                           connect, ids) -> None:
    settings = fleet_settings
    runtime = connect(settings)
    data = _fleet(bench, ids[:1])
    _pass(runtime, settings, plugins, data)
    data["connectors"][0]["id"] = ids[0] + "-v2"  # same container name, another connector id
    result, _ = _pass(runtime, settings, plugins, data)
    assert sorted((s.action, s.result) for s in result.steps) == [("deploy", "ok"), ("remove", "ok")]
    (only,) = runtime.list({LABEL_MANAGER: manager})
    assert only.name == ids[0] and only.labels[LABEL_CONNECTOR] == ids[0] + "-v2"
    assert only.status == "running"


# --- concurrent passes, wedged containers, the lock, the pause -----------------------------------


@pytest_integration
def test_two_apply_processes_at_once_leave_one_container_per_connector(engine, bench, manager, ids,
                                                                      tmp_path: Path) -> None:
    path = tmp_path / "connectors.yaml"
    path.write_text(yaml.safe_dump(_fleet(bench, ids)))
    env = {**os.environ, "MANAGER__ID": manager,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__URL": bench.registry_private,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__USERNAME": bench.username,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__PASSWORD": bench.password}
    command = [sys.executable, "-m", "composer_core", "--runtime", engine, "apply", "-f", str(path),
               "--json", "--stop-timeout", "1"]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    actions = sorted(a["action"] for out, _ in outputs for a in json.loads(out)["actions"])
    assert actions == ["deploy"] * 3 + ["nothing"] * 3  # one deployed, the other found it done
    containers = _listed(engine, bench, manager)
    assert sorted(c[1] for c in containers) == sorted(ids)  # exactly one per connector
    assert {c[0] for c in containers} == set(ids)
    assert_no_secrets("".join(out + err for out, err in outputs), [bench.password])


def _listed(engine: str, bench: Any, manager_id: str) -> list[tuple[str, str]]:
    """(name, connector id) of every container of ``manager_id``, behind the composer's back."""
    from tests.engine_helpers import raw_client

    client = raw_client(engine, bench)
    try:
        if engine == "docker":
            found = client.containers(all=True, filters={"label": f"{LABEL_MANAGER}={manager_id}"})
            return [(c["Names"][0].lstrip("/"), c["Labels"][LABEL_CONNECTOR]) for c in found]
        return [(c.name, c.labels[LABEL_CONNECTOR])
                for c in client.containers.list(all=True, filters={"label": f"{LABEL_MANAGER}={manager_id}"})]
    finally:
        client.close()


@pytest_integration
def test_concurrent_passes_without_the_lock_still_converge(engine, bench, manager, fleet_settings,
                                                           plugins, connect, ids) -> None:
    """The lock is a courtesy: two passes racing on the same plan (no lock at all) neither delete
    each other's containers nor fail, and leave exactly one container per connector."""
    import threading

    settings = fleet_settings
    connectors = parse_connectors(_fleet(bench, ids), "test")
    reconcilers = [Reconciler(ContainerBackend(connect(settings)), settings, plugins,
                              stop_timeout=1) for _ in range(2)]
    planned = [r.plan(connectors)[0] for r in reconcilers]  # both plan from the same empty list
    assert [{s.action for s in p} for p in planned] == [{"deploy"}, {"deploy"}]
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def run(i: int) -> None:
        barrier.wait(10)
        results[i] = reconcilers[i].run_pass(connectors)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for result in results:
        assert result is not None and result.failed == [], [s.error for s in result.failed]
    assert sorted(c[1] for c in _listed(engine, bench, manager)) == sorted(ids)


@pytest_integration
def test_a_container_failing_to_start_on_consecutive_passes_is_recreated(
        engine, bench, manager, fleet_settings, plugins, connect, ids) -> None:
    from composer_core.engine.deploy import container_spec
    from composer_core.images.resolve import resolve_image

    settings = fleet_settings
    runtime = connect(settings)
    data = _fleet(bench, ids[:1])
    (connector,) = parse_connectors(data, "test")
    # a container with the connector's exact spec (same config hash) that cannot start: what a
    # crash mid-replace leaves on Podman (wedged in Initialized), made here with a missing binary
    resolved = resolve_image(connector.image, settings, plugins)
    spec = container_spec(resolved, connector.name, connector.env, manager=manager,
                          connector_id=connector.id)
    from dataclasses import replace as with_fields

    from composer_core.engine.deploy import Deployer

    Deployer(runtime, settings, plugins).pull(resolved)
    wedged = runtime.create(with_fields(spec, command=("/no/such/binary",)))
    failures: dict[str, int] = {}
    for attempt in (1, 2):
        result = Reconciler(ContainerBackend(runtime), settings, plugins,
                            start_failures=failures).run_pass([connector])
        (step,) = result.steps
        assert (step.action, step.result) == ("start", "failed")
        assert step.to_dict()["failed_starts"] == attempt and failures == {wedged.id: attempt}
    assert "the next pass recreates it" in step.reason
    result = Reconciler(ContainerBackend(runtime), settings, plugins,
                            start_failures=failures).run_pass([connector])
    (step,) = result.steps
    assert (step.action, step.result) == ("recreate", "ok")
    assert step.to_dict()["reason"].startswith("it failed to start on 2 consecutive passes")
    (now,) = runtime.list({LABEL_MANAGER: manager})
    assert now.id != wedged.id and now.name == connector.name and now.status == "running"
    assert failures == {}


def test_pass_lock_serialises_and_says_who_waits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from composer_core.fleet.lock import PassLock, PassLockError

    caplog.set_level(logging.INFO, logger="xtm_composer")
    with PassLock("m1", "unix:///e.sock", directory=tmp_path) as held:
        held.start_failures["abc"] = 2
        with pytest.raises(PassLockError) as caught:
            with PassLock("m1", "unix:///e.sock", directory=tmp_path, wait_seconds=0.5):
                pass
        message = str(caught.value)
        assert "another pass of manager 'm1' on unix:///e.sock" in message
        assert f"pid {os.getpid()}" in message and "this pass did nothing" in message
        assert "waiting for it to finish" in caplog.text
        # another manager, or the same manager on another engine: no wait
        with PassLock("m2", "unix:///e.sock", directory=tmp_path, wait_seconds=0):
            pass
        with PassLock("m1", "unix:///other.sock", directory=tmp_path, wait_seconds=0):
            pass
    with PassLock("m1", "unix:///e.sock", directory=tmp_path, wait_seconds=0) as again:
        assert again.start_failures == {"abc": 2}  # what the previous pass counted


def test_pass_lock_is_released_when_its_process_dies(tmp_path: Path) -> None:
    from composer_core.fleet.lock import PassLock

    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from composer_core.fleet.lock import PassLock\n"
         f"lock = PassLock('m1', 'e', directory=Path({str(tmp_path)!r})).__enter__()\n"
         "print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        holder.kill()  # kill -9: no cleanup code runs
        holder.wait(10)
        with PassLock("m1", "e", directory=tmp_path, wait_seconds=5):
            pass
    finally:
        if holder.poll() is None:
            holder.kill()


def test_pause_survives_a_huge_schedule_and_stops_at_once() -> None:
    import threading

    from composer_core.cli.fleet_cmd import pause

    stop = threading.Event()
    with pytest.raises(OverflowError):  # what `run` did with execute_schedule: 1e300
        stop.wait(1e300)
    threading.Timer(0.2, stop.set).start()
    pause(stop, 1e300)  # returns once stop is set, no OverflowError
    assert stop.is_set()
    pause(stop, float("nan"))
    pause(threading.Event(), -5)  # a negative pause is none


@pytest_integration
def test_apply_says_it_waits_for_the_pass_holding_the_lock(engine, bench, manager, ids,
                                                          runtime_dir: Path, tmp_path: Path) -> None:
    from composer_core.fleet.lock import PassLock

    endpoint = bench.docker_host if engine == "docker" else bench.podman_host
    path = tmp_path / "connectors.yaml"
    path.write_text(yaml.safe_dump(_fleet(bench, ids[:1])))
    env = {**os.environ, "MANAGER__ID": manager,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__URL": bench.registry_private,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__USERNAME": bench.username,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__PASSWORD": bench.password}
    with PassLock(manager, endpoint, directory=runtime_dir / "xtm-composer"):  # a `run` mid-pass
        proc = subprocess.Popen([sys.executable, "-m", "composer_core", "--runtime", engine, "apply",
                                 "-f", str(path)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        import threading

        watchdog = threading.Timer(60, proc.kill)  # never hang the suite if the message is missing
        watchdog.start()
        try:
            waiting = ""
            for _ in range(20):  # bounded: the message comes before the pass does anything
                waiting = proc.stderr.readline()
                if not waiting or "waiting" in waiting:
                    break
        finally:
            watchdog.cancel()
        assert f"another pass of manager {manager} on {endpoint} is running (pid {os.getpid()})" \
            in waiting and "waiting for it to finish" in waiting
        assert _listed(engine, bench, manager) == []  # it waits: nothing done yet
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert [c[0] for c in _listed(engine, bench, manager)] == ids[:1]


def test_a_failed_pull_is_known_to_the_deployments_waiting_on_it(make_settings, plugins) -> None:
    """Two deployments of one image at once: the second waits on the first one's pull and, when
    it failed, fails with its error instead of pulling again (the failure is recorded before the
    pull's lock is released)."""
    import time

    from composer_core.errors import ImageNotFound
    from composer_core.testing import InMemoryBackend, InMemoryRuntime

    class SlowMissing(InMemoryRuntime):
        def pull(self, image, credentials, *, tls, progress=None):  # type: ignore[no-untyped-def]
            time.sleep(0.3)  # the second deployment is waiting on the pull's lock meanwhile
            return super().pull(image, credentials, tls=tls, progress=progress)

    settings, backend = make_settings({"manager.id": "m"}), InMemoryBackend()
    backend.runtime.__class__ = SlowMissing  # the same runtime, its pull slowed down
    missing = "docker.io/library/busybox:no-such-tag"
    backend.runtime.missing(missing)
    connectors = _memory_fleet(["aa", "bb"], aa={"image": missing}, bb={"image": missing})
    result = _memory_pass(backend, settings, plugins, connectors)
    assert [s.result for s in result.steps] == ["failed", "failed"]
    assert all(isinstance(s.error, ImageNotFound) for s in result.steps)
    assert [ref for ref, _ in backend.runtime.pulls].count(missing) == 1
