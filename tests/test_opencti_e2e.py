"""End to end on the real Docker and Podman of the bench, with the fake platform (a stand-in for
OpenCTI, see tests/fakeplatform): `xtm-composer run` with manager.source: opencti, as a process.

register -> connectors added (an encrypted password, the encrypted OPENCTI_TOKEN) and requested
starting -> deployed from the private registry through the credential chain, env decrypted,
`started` reported -> logs and health for every connector -> requested stopping -> stopped and
reported -> configuration edited -> replaced -> removed -> container removed -> platform down for a
while and upgraded -> nothing removed, re-registered -> an undecryptable value -> that connector
untouched and reported by `opencti status`. Every output is scanned for the secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_MANAGER
from tests.conftest import assert_no_secrets
from tests.engine_helpers import raw_client
from tests.opencti_helpers import key_lines

pytestmark = [pytest.mark.integration, pytest.mark.platform_standin]


def _wait_for(what: str, condition: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"not in time: {what}")


def _containers(engine: str, bench: Any, manager: str) -> dict[str, dict[str, Any]]:
    """name -> {id, status, env, labels}, read behind the composer's back."""
    import docker.errors
    import podman.errors

    client = raw_client(engine, bench)
    try:
        found: dict[str, dict[str, Any]] = {}
        if engine == "docker":
            for c in client.containers(all=True, filters={"label": f"{LABEL_MANAGER}={manager}"}):
                try:
                    detail = client.inspect_container(c["Id"])
                except docker.errors.NotFound:
                    continue  # removed between the list and the inspect (a replacement)
                found[detail["Name"].lstrip("/")] = {
                    "id": detail["Id"], "status": detail["State"]["Status"],
                    "env": dict(e.split("=", 1) for e in detail["Config"]["Env"] or []),
                    "labels": detail["Config"]["Labels"] or {}}
        else:
            for c in client.containers.list(all=True, filters={"label": f"{LABEL_MANAGER}={manager}"}):
                try:
                    c.reload()
                except podman.errors.APIError:
                    continue  # removed between the list and the reload (a replacement)
                found[c.name] = {"id": c.id, "status": c.attrs["State"]["Status"],
                                 "env": dict(e.split("=", 1) for e in c.attrs["Config"]["Env"] or []),
                                 "labels": c.attrs["Config"]["Labels"] or {}}
        return found
    finally:
        client.close()


def _ui_request(platform: Any, token: str, cid: str, status: str) -> None:
    """What the platform's UI sends: updateConnectorRequestedStatus, over HTTP."""
    import requests

    query = ("mutation Request($input: RequestConnectorStatusInput!) "
             "{ updateConnectorRequestedStatus(input: $input) { id manager_requested_status } }")
    answer = requests.post(f"{platform.url}/graphql", timeout=10,
                           headers={"Authorization": f"Bearer {token}"},
                           json={"query": query, "variables": {"input": {"id": cid, "status": status}}}).json()
    assert "errors" not in answer, answer


def test_the_platform_drives_the_fleet_end_to_end(engine, bench, manager, platform, platform_token,
                                                 key_file: Path, run_cli, monkeypatch) -> None:
    env = {"MANAGER__ID": manager, "MANAGER__SOURCE": "opencti", "MANAGER__NAME": "bench composer",
           "MANAGER__EXECUTE_SCHEDULE": "0.5", "MANAGER__PING_ALIVE_SCHEDULE": "1",
           "MANAGER__CREDENTIALS_KEY_FILEPATH": str(key_file),
           "MANAGER__LOGGER__LEVEL": "debug",
           "OPENCTI__URL": platform.url, "OPENCTI__TOKEN": platform_token,
           "OPENCTI__LOGS_SCHEDULE": "1", "OPENCTI__HEALTH_SCHEDULE": "1",
           "OPENCTI__CONNECT_TIMEOUT": "1", "OPENCTI__REQUEST_TIMEOUT": "5",
           "OPENCTI__LISTING_TIMEOUT": "5",
           "OPENCTI__DAEMON__DOCKER__REGISTRY__URL": bench.registry_private,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__USERNAME": bench.username,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__PASSWORD": bench.password}
    password = "misp-pw-" + platform_token[-12:]
    proc = subprocess.Popen([sys.executable, "-m", "composer_core", "--runtime", engine, "run",
                             "--stop-timeout", "1"], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs: list[str] = []
    try:
        # 1. registration comes first
        _wait_for("registration", lambda: platform.manager and platform.manager["id"] == manager)
        assert platform.operations()[:2] == ["GetVersion", "RegisterConnectorsManager"]
        assert platform.manager["name"] == "bench composer"

        # 2. two connectors, requested starting: deployed, env decrypted, started reported
        misp = platform.add_connector("MISP (bench)", bench.image, {"MISP_URL": "http://misp:80"},
                                      {"MISP_PASSWORD": password})
        other = platform.add_connector("other feed", bench.image2, {"FEED": "1"})
        names = {misp: "misp-bench", other: "other-feed"}
        for cid in names:
            _ui_request(platform, platform_token, cid, "starting")
        running = _wait_for("both connectors running", lambda: (
            lambda found: found if all(found.get(n, {}).get("status") == "running"
                                       for n in names.values()) else None)(
            _containers(engine, bench, manager)))
        deployed = running["misp-bench"]
        assert deployed["env"]["MISP_PASSWORD"] == password
        assert deployed["env"]["OPENCTI_TOKEN"] == platform.get(misp).token
        assert deployed["env"]["OPENCTI_URL"] == platform.url
        assert deployed["env"]["MISP_URL"] == "http://misp:80" and deployed["env"]["CONNECTOR_ID"] == misp
        assert deployed["labels"]["opencti-platform"] == "opencti"
        assert deployed["labels"][LABEL_CONNECTOR] == misp
        _wait_for("started reported", lambda: all(platform.get(c).current == "started" for c in names))

        # 3. logs and health for every connector, not only the first, repeatedly
        _wait_for("logs and health for both", lambda: all(
            platform.get(c).log_pushes >= 2 and platform.get(c).health_pushes >= 2 for c in names))
        health = platform.get(other).health
        assert health is not None and health["restart_count"] == 0 and health["is_in_reboot_loop"] is False
        assert platform.get(misp).logs == []  # the bench image prints nothing: an empty tail

        # 4. requested stopping: stopped, reported once
        _ui_request(platform, platform_token, misp, "stopping")
        _wait_for("stopped", lambda: _containers(engine, bench, manager)["misp-bench"]["status"] == "exited")
        _wait_for("stopped reported", lambda: platform.get(misp).current == "stopped")
        time.sleep(1.5)
        reports = platform.get(misp).status_reports
        # on change only (a pass may have seen it created stopped before the request to start)
        assert reports[-2:] == ["started", "stopped"] and len(reports) <= 3
        assert all(a != b for a, b in zip(reports, reports[1:], strict=False))

        # 5. configuration edited: new hash, replaced
        before = _containers(engine, bench, manager)["other-feed"]
        platform.edit_connector(other, {"FEED": "2"})
        replaced = _wait_for("replaced", lambda: (
            lambda c: c if c and c["id"] != before["id"] and c["status"] == "running" else None)(
            _containers(engine, bench, manager).get("other-feed")))
        assert replaced["env"]["FEED"] == "2"
        assert replaced["env"]["OPENCTI_CONFIG_HASH"] != before["env"]["OPENCTI_CONFIG_HASH"]

        # 6. removed from the platform: container removed
        platform.remove_connector(other)
        _wait_for("removed", lambda: set(_containers(engine, bench, manager)) == {"misp-bench"})

        # 7. the platform down for a while (and upgraded meanwhile): nothing removed, recovers
        registrations = platform.manager["registrations"]
        stopped_id = _containers(engine, bench, manager)["misp-bench"]["id"]
        platform.down()
        platform.version = "6.9.0"
        for _ in range(6):
            time.sleep(0.5)
            assert {n: c["id"] for n, c in _containers(engine, bench, manager).items()} == {"misp-bench": stopped_id}
        platform.up()
        _wait_for("registered again", lambda: platform.manager["registrations"] > registrations)
        calls = len(platform.calls)
        _wait_for("pinging again", lambda: "UpdateConnectorManagerStatus" in platform.operations()[calls:], 15)
        registrations = platform.manager["registrations"]
        platform.version = "6.9.1"  # an upgrade seen by a ping: registers again
        _wait_for("re-registered on version change", lambda: platform.manager["registrations"] > registrations, 15)

        # 8. a value that cannot be decrypted: that connector untouched, reported
        stored = platform.get(misp).values["MISP_PASSWORD"][0]
        assert stored is not None
        platform.plant_raw(misp, "MISP_PASSWORD", stored[:-12] + "AAAAAAAAAAA=")
        _ui_request(platform, platform_token, misp, "starting")
        time.sleep(3)  # several passes
        untouched = _containers(engine, bench, manager)["misp-bench"]
        assert (untouched["id"], untouched["status"]) == (stopped_id, "exited")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        code, out, err = run_cli(["--runtime", engine, "opencti", "status", "--json"])
        outputs += [out, err]
        assert code == 0, err
        report = json.loads(out)
        assert report["reachable"] and report["version"] == "6.9.1" and report["manager"]["registered"]
        (entry,) = report["connectors"]
        assert entry["id"] == misp and entry["decryption"] == "failed"
        assert "MISP_PASSWORD cannot be decrypted" in entry["problem"]
        assert entry["resolved_image"] == f"{bench.registry_private}/{bench.image}"
        assert entry["credential_source"] == "config"
        assert any("held" in step for step in entry["next_pass"])
        code, out, err = run_cli(["--runtime", engine, "opencti", "status"])
        outputs += [out, err]
        assert code == 0 and "MISP_PASSWORD cannot be decrypted" in err

        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        outputs += [out, err]
    finally:
        if proc.poll() is None:
            proc.kill()
            outputs += list(proc.communicate())
    log = "\n".join(outputs)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in log
    assert "connector " + misp + " is held" in err and "MISP_PASSWORD cannot be decrypted" in err
    skipped = [line for line in err.splitlines() if "pass skipped, nothing changed" in line]
    assert len([line for line in skipped if " ERROR " in line]) == 1  # the outage is logged once
    assert len(skipped) > 1 and "answers again" in err
    assert "registering again" in err
    assert_no_secrets(log, [platform_token, password, bench.password, platform.get(misp).token,
                            *key_lines(key_file.read_text())])


def test_apply_reports_a_held_connector_and_exits_14(engine, bench, manager, platform, platform_token,
                                                     key_file: Path, run_cli, monkeypatch) -> None:
    """One pass with the platform as the source: the deployable connector is deployed, the one
    whose secret cannot be decrypted is held and reported, and the exit code says so (14), with
    --json as without."""
    for name, value in {"MANAGER__ID": manager, "MANAGER__SOURCE": "opencti",
                        "MANAGER__CREDENTIALS_KEY_FILEPATH": str(key_file),
                        "OPENCTI__URL": platform.url, "OPENCTI__TOKEN": platform_token,
                        "OPENCTI__DAEMON__DOCKER__REGISTRY__URL": bench.registry_private,
                        "OPENCTI__DAEMON__DOCKER__REGISTRY__USERNAME": bench.username,
                        "OPENCTI__DAEMON__DOCKER__REGISTRY__PASSWORD": bench.password}.items():
        monkeypatch.setenv(name, value)
    code, out, err = run_cli(["--runtime", engine, "apply", "--dry-run"])  # registers: nothing listed yet
    assert code == 0, err
    good = platform.add_connector("good one", bench.image)
    bad = platform.add_connector("bad one", bench.image, passwords={"API_KEY": "api-key-0123456789"})
    platform.plant_raw(bad, "API_KEY", "Ag" + "A" * 400 + "==")
    code, out, err = run_cli(["--runtime", engine, "apply", "--json"])
    report = json.loads(out)
    steps = {a["id"]: a for a in report["actions"]}
    assert (steps[good]["action"], steps[good]["result"]) == ("deploy", "ok")
    assert steps[bad]["result"] == "failed" and "API_KEY cannot be decrypted" in steps[bad]["reason"]
    assert code == 14, err
    assert set(_containers(engine, bench, manager)) == {"good-one"}
    assert platform.get(good).current == "stopped"  # requested stopped at creation: created, not started
    assert_no_secrets(out + err, [platform_token, "api-key-0123456789", bench.password,
                                  platform.get(good).token, *key_lines(key_file.read_text())])
