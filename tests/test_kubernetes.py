"""The kubernetes backend's objects, without any cluster: the OpenAPI schemas kubernetes-validate
ships (strict: an unknown field is an error), kubectl's own pull Secret byte-for-byte, the base
Deployment merge, the names, the settings."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_HASH, LABEL_MANAGER
from composer_core.errors import ContainerError, RegistryError, SettingsError
from composer_core.settings import Settings
from composer_core.testing import ContractEnv, contract_workload
from composer_core.types import Anonymous, Credentials
from composer_plugins.kubernetes import options
from composer_plugins.kubernetes.backend import render
from composer_plugins.kubernetes.objects import (
    Options,
    check_name,
    deep_merge,
    deployment,
    dockerconfigjson,
    mask_secret,
    pull_credentials,
    pull_secret,
    secret_name,
)

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.33.0"
REGISTRY = "registry.example:5000"
KUBECTL = shutil.which("kubectl")


def _env() -> ContractEnv:
    return ContractEnv(manager="xtm-test-manager", image="docker.io/library/busybox:1.36",
                       auth_image=f"{REGISTRY}/xtm/connector:1",
                       auth_credentials=Credentials(registry=REGISTRY, source="config",
                                                    username="u", password="p"),
                       make_unmanaged=lambda name: None, unmanaged_exists=lambda name: False)


def validate(obj: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


BASE = {"metadata": {"labels": {"team": "intel"}},
        "spec": {"revisionHistoryLimit": 2,
                 "template": {"spec": {
                     "serviceAccountName": "connectors", "nodeSelector": {"disk": "ssd"},
                     "containers": [{"name": "connector", "securityContext": {
                         "runAsNonRoot": True}, "image": "ignored"},
                                    {"name": "sidecar", "image": "busybox:1.36"}],
                     "imagePullSecrets": [{"name": "corp-pull"}]}}}}


@pytest.mark.parametrize("base", [{}, BASE], ids=["plain", "base_deployment"])
@pytest.mark.parametrize("state", ["started", "stopped"])
def test_every_object_is_valid_against_the_openapi_schema(base: dict[str, Any],
                                                          state: str) -> None:
    creds = Credentials(registry=REGISTRY, source="config", username="alice", password="pw")
    env = _env()
    workloads = [contract_workload(env, "conn-a", image=f"{REGISTRY}/xtm/connector:1",
                                   credentials=creds, state=state),  # type: ignore[arg-type]
                 contract_workload(env, "conn-b", credentials=Anonymous)]
    opts = Options(namespace="xtm", image_pull_policy="Always",
                   image_resources={"limits": {"memory": "512Mi", "cpu": "500m"}},
                   base_deployment=base)
    objects = render(workloads, env.manager, opts)
    assert [o["kind"] for o in objects] == ["Secret", "Deployment", "Deployment"]
    for obj in objects:
        validate(obj)
        validate(mask_secret(obj))
    dep = objects[1]
    assert dep["spec"]["replicas"] == (1 if state == "started" else 0)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["imagePullPolicy"] == "Always" and container["args"][0] == "sh"
    assert container["resources"] == {"limits": {"memory": "512Mi", "cpu": "500m"}}


def test_a_broken_object_is_refused_by_the_schema() -> None:
    """The schema check can fail: an unknown field and a wrong type are errors."""
    import kubernetes_validate

    dep = deployment(contract_workload(_env(), "conn-a"), Options(namespace="xtm"), None)
    dep["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(dep)
    dep["spec"]["replicas"] = 1
    dep["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(dep)


def test_the_rbac_manifest_is_valid() -> None:
    for obj in yaml.safe_load_all((ROOT / "examples" / "kubernetes-rbac.yaml").read_text()):
        validate(obj)


def test_the_base_deployment_is_merged_under_ours() -> None:
    workload = contract_workload(_env(), "conn-a")
    dep = deployment(workload, Options(namespace="xtm", base_deployment=BASE), "ours-pull")
    assert dep["metadata"]["labels"] == {"team": "intel", **workload.labels}
    assert dep["spec"]["revisionHistoryLimit"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "connectors" and pod["nodeSelector"] == {"disk": "ssd"}
    connector, sidecar = pod["containers"]
    assert connector["image"] == workload.image.ref.normalized()  # ours wins
    assert connector["securityContext"] == {"runAsNonRoot": True}  # the base's stays
    assert sidecar == {"name": "sidecar", "image": "busybox:1.36"}
    assert pod["imagePullSecrets"] == [{"name": "ours-pull"}, {"name": "corp-pull"}]
    assert dep["spec"]["selector"]["matchLabels"] == {LABEL_MANAGER: "xtm-test-manager",
                                                      LABEL_CONNECTOR: "conn-a"}
    assert dep["metadata"]["annotations"] == {LABEL_HASH: workload.config_hash}
    assert BASE["spec"]["template"]["spec"]["containers"][0]["image"] == "ignored"  # not mutated


def test_deep_merge_of_plain_values_and_lists() -> None:
    assert deep_merge({"a": 1, "b": {"c": 2}}, {"b": {"d": 3}}) == {"a": 1, "b": {"c": 2, "d": 3}}
    assert deep_merge({"args": ["x", "y"]}, {"args": ["z"]}) == {"args": ["z"]}


def test_pull_secret_names_are_deterministic_and_distinct() -> None:
    name = secret_name("m1", "registry.example:5000")
    assert name == secret_name("m1", "registry.example:5000")
    assert name.startswith("xtm-pull-registry-example-5000-") and len(name) <= 63
    assert name != secret_name("m2", "registry.example:5000")
    assert secret_name("m1", "a:5000") != secret_name("m1", "a-5000")
    validate(pull_secret(Credentials(registry="x" * 200 + ".io", source="config", username="u",
                                     password="p"), "m1", "xtm"))


@pytest.mark.parametrize("name", ["Conn_A", "-a", "a" * 64, "a b"])
def test_a_name_kubernetes_refuses_is_refused_first(name: str) -> None:
    with pytest.raises(ContainerError) as caught:
        check_name(name)
    assert name in caught.value.message


def test_an_identity_token_cannot_become_a_pull_secret() -> None:
    token = Credentials(registry=REGISTRY, source="keychain", identity_token="tok-secret")
    with pytest.raises(RegistryError) as caught:
        pull_credentials(token)
    assert "identity token" in caught.value.message and "tok-secret" not in str(caught.value)
    assert pull_credentials(Anonymous) is None


CREDENTIALS = [("registry.example:5000", "alice", "s3cret"),
               ("registry.example:5000", "ünïcödé", "pässwörd:with:colons"),
               ("10.240.0.2:5650", "bob", 'p:a"s<s>w&o\\r\u2028d\u00e9'),
               ("https://index.docker.io/v1/", "user@example.com", "tab\tnew\nline\x01"),
               ("ghcr.io", "x", "\u65e5\u672c:\U0001f600")]


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
@pytest.mark.parametrize(("server", "username", "password"), CREDENTIALS)
def test_dockerconfigjson_is_byte_for_byte_kubectls(server: str, username: str,
                                                    password: str) -> None:
    assert KUBECTL is not None
    out = subprocess.run([KUBECTL, "create", "secret", "docker-registry", "s",
                          f"--docker-server={server}", f"--docker-username={username}",
                          f"--docker-password={password}", "--dry-run=client", "-o", "json"],
                         capture_output=True, check=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}).stdout
    kubectl = json.loads(out)
    assert kubectl["type"] == "kubernetes.io/dockerconfigjson"
    theirs = kubectl["data"][".dockerconfigjson"]
    ours = base64.b64encode(dockerconfigjson(server, username, password)).decode()
    assert base64.b64decode(ours) == base64.b64decode(theirs)
    assert ours == theirs


def test_kubectl_is_there_in_ci() -> None:
    """The byte-for-byte test must not silently skip where the bench runs."""
    if os.environ.get("CI"):
        assert KUBECTL is not None, "kubectl is required by test_dockerconfigjson_*"


def test_pull_secret_holds_only_its_registry(make_settings: Callable[..., Settings]) -> None:
    creds = Credentials(registry="docker.io", source="docker-config", username="u",
                        password="p&<w>")
    secret = pull_secret(creds, "m1", "xtm")
    decoded = base64.b64decode(secret["data"][".dockerconfigjson"])
    assert decoded == (b'{"auths":{"https://index.docker.io/v1/":{"username":"u","password":'
                       b'"p\\u0026\\u003cw\\u003e","auth":"dTpwJjx3Pg=="}}}')
    assert mask_secret(secret)["data"] == {".dockerconfigjson": "***"}
    assert secret["data"][".dockerconfigjson"] != "***"  # the mask is a copy


def test_settings_are_validated(make_settings: Callable[..., Settings]) -> None:
    for key, value, words in (
            ("image_pull_policy", "Sometimes", "Always, IfNotPresent, Never"),
            ("namespace", "Not_A_Namespace", "namespace name"),
            ("image_resources", "512Mi", "mapping"),
            ("base_deployment", "- a list", "base Deployment"),
            ("base_deployment_json", "{not json", "base Deployment"),
            ("rollout_timeout", -1, "at least 0"),
            ("request_timeout", 0, "greater than 0")):
        with pytest.raises(SettingsError) as caught:
            make_settings({f"opencti.daemon.kubernetes.{key}": value})
        assert f"opencti.daemon.kubernetes.{key}" in caught.value.message
        assert words in caught.value.message


def test_base_deployment_as_yaml_text_or_json(make_settings: Callable[..., Settings]) -> None:
    as_yaml = make_settings({"opencti.daemon.kubernetes.base_deployment":
                             "spec:\n  revisionHistoryLimit: 3\n"})
    as_json = make_settings({"opencti.daemon.kubernetes.base_deployment_json":
                             '{"spec": {"revisionHistoryLimit": 3}}'})
    for settings in (as_yaml, as_json):
        assert options(settings, "xtm").base_deployment == {"spec": {"revisionHistoryLimit": 3}}


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["config", "check"],
                                  ["apply", "--help"]])
def test_light_commands_do_not_import_the_kubernetes_client(args: list[str],
                                                            tmp_path: Path) -> None:
    code = ("import sys\nfrom composer_core.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in "
            "('kubernetes', 'kubernetes_validate', 'urllib3')))")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "OPENCTI__DAEMON__SELECTOR": "kubernetes"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60, env=env)
    assert "HEAVY []" in out.stdout, out.stdout[-300:] + out.stderr[-300:]
