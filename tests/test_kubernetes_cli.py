"""``xtm-composer --runtime kubernetes apply -f FILE --dry-run -o yaml`` / ``--offline`` /
``--show-secrets``: the objects for review, masked unless asked, valid against the OpenAPI
schema; the online form runs against tests/k8s_standin.py (not a cluster) and writes nothing."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from composer_plugins.kubernetes.objects import dockerconfigjson, secret_name
from tests.conftest import assert_no_secrets
from tests.k8s_standin import StandIn

REGISTRY = "registry.example:5000"
PASSWORD = "cli-secret-pässword:1"
FILE = """connectors:
  - id: misp-1
    name: connector-misp
    image: registry.example:5000/xtm/misp:1.0
    env: {OPENCTI_URL: "http://opencti:8080"}
  - id: cve-1
    name: connector-cve
    image: docker.io/library/busybox:1.36
    status: stopped
"""

RunCli = Callable[[list[str]], tuple[int, str, str]]


@pytest.fixture
def connectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("OPENCTI__DAEMON__DOCKER__REGISTRIES",
                       json.dumps([{"url": REGISTRY, "username": "alice", "password": PASSWORD}]))
    path = tmp_path / "connectors.yaml"
    path.write_text(FILE)
    return str(path)


def _objects(out: str) -> list[dict[str, Any]]:
    import kubernetes_validate

    objects = [o for o in yaml.safe_load_all(out) if o is not None]
    for obj in objects:
        kubernetes_validate.validate(obj, "1.33.0", strict=True)
    return objects


def test_offline_renders_without_a_cluster_with_secrets_masked(run_cli: RunCli,
                                                               connectors: str) -> None:
    code, out, err = run_cli(["--runtime", "kubernetes", "apply", "-f", connectors,
                              "--offline"])
    assert code == 0, err
    secret, misp, cve = _objects(out)
    assert secret["kind"] == "Secret" and secret["data"] == {".dockerconfigjson": "***"}
    assert secret["metadata"]["name"] == secret_name("xtm-composer", REGISTRY)
    assert {o["metadata"]["namespace"] for o in (secret, misp, cve)} == {"default"}
    assert misp["spec"]["template"]["spec"]["imagePullSecrets"] == [
        {"name": secret["metadata"]["name"]}]
    assert "imagePullSecrets" not in cve["spec"]["template"]["spec"]  # docker.io: anonymous
    assert (misp["spec"]["replicas"], cve["spec"]["replicas"]) == (1, 0)
    assert_no_secrets(out + err, [PASSWORD, base64.b64encode(
        dockerconfigjson(REGISTRY, "alice", PASSWORD)).decode()])


def test_offline_show_secrets_prints_the_secret_data(run_cli: RunCli, connectors: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCTI__DAEMON__KUBERNETES__NAMESPACE", "intel")
    code, out, err = run_cli(["--runtime", "kubernetes", "apply", "-f", connectors,
                              "--offline", "--show-secrets"])
    assert code == 0, err
    secret = _objects(out)[0]
    assert secret["metadata"]["namespace"] == "intel"
    assert base64.b64decode(secret["data"][".dockerconfigjson"]) == dockerconfigjson(
        REGISTRY, "alice", PASSWORD)


@pytest.mark.parametrize(("args", "words"), [
    (["--runtime", "kubernetes", "apply", "--dry-run", "--show-secrets"], "needs --offline"),
    (["--runtime", "kubernetes", "apply", "-o", "yaml"], "needs --dry-run"),
    (["--runtime", "docker", "apply", "--offline"], "cannot render its objects"),
])
def test_review_flags_are_refused_where_they_make_no_sense(run_cli: RunCli, connectors: str,
                                                           args: list[str], words: str) -> None:
    code, out, err = run_cli([*args, "-f", connectors])
    assert code == 2 and words in err and out == ""
    assert "Traceback" not in err


@pytest.mark.k8s_standin
def test_dry_run_yaml_against_the_standin_prints_the_same_objects_and_writes_nothing(
        run_cli: RunCli, connectors: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    standin = StandIn()
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(standin.kubeconfig("xtm")))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        code, out, err = run_cli(["--runtime", "kubernetes", "apply", "-f", connectors,
                                  "--dry-run", "-o", "yaml"])
        assert code == 0, err
        monkeypatch.setenv("OPENCTI__DAEMON__KUBERNETES__NAMESPACE", "xtm")
        offline_code, offline_out, _ = run_cli(["--runtime", "kubernetes", "apply", "-f",
                                                connectors, "--offline"])
        assert offline_code == 0 and _objects(out) == _objects(offline_out)
        assert [r for r in standin.requests if r.method != "GET"] == []
        assert standin.objects("deployments", "xtm") == []
        assert_no_secrets(out + err, [PASSWORD])
    finally:
        standin.close()


@pytest.mark.k8s_standin
def test_single_name_commands_on_the_standin(run_cli: RunCli, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy, ps, logs, stop, start, rm as on the other backends (the stand-in's kubelet runs
    every pod and gives it the kit's output lines)."""
    standin = StandIn()
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(standin.kubeconfig("xtm")))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.setenv("OPENCTI__DAEMON__SELECTOR", "kubernetes")
        code, out, err = run_cli(["deploy", "docker.io/library/busybox:1.36", "--name", "conn-a",
                                  "--env", "XTM_CONTRACT_OUTPUT=one\ntwo\nthree"])
        assert code == 0, err
        code, out, err = run_cli(["ps", "--json"])
        assert code == 0, err
        (row,) = json.loads(out)["containers"]
        assert (row["name"], row["state"], row["status"]) == ("conn-a", "started", "running")
        assert (row["replicas_wanted"], row["replicas_running"]) == (1, 1)
        code, out, err = run_cli(["logs", "conn-a", "--tail", "2"])
        assert (code, out) == (0, "two\nthree\n"), err
        code, out, err = run_cli(["rm", "conn-a"])
        assert code == 12 and "stop it first" in err  # running: refused without --force
        assert run_cli(["stop", "conn-a"])[0] == 0
        assert standin.get("deployments", "xtm", "conn-a")["spec"]["replicas"] == 0
        code, out, _ = run_cli(["ps"])
        assert "stopped (scaled to 0)" in out and "0/0" in out
        assert run_cli(["start", "conn-a"])[0] == 0
        assert standin.get("deployments", "xtm", "conn-a")["spec"]["replicas"] == 1
        assert run_cli(["rm", "--force", "conn-a"])[0] == 0
        assert standin.get("deployments", "xtm", "conn-a") is None
        code, _, err = run_cli(["logs", "conn-a"])
        assert code == 13 and "Traceback" not in err
    finally:
        standin.close()
