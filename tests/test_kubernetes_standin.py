"""The kubernetes backend against tests/k8s_standin.py, an in-process stand-in for the API server.

The stand-in is NOT Kubernetes: what these tests prove is what the backend sends (paths, verbs,
content types, field manager, bodies: asserted against the API conventions) and how it reacts to
the answers a real API server gives (server-side apply by field manager, 409 on a stale
resourceVersion, 422 on a changed selector, 403 from RBAC), with pod statuses the TEST drives.
They do not prove that a kubelet pulls with our Secret, scheduling, admission or RBAC itself.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_HASH, LABEL_MANAGER
from composer_core.errors import (
    AuthenticationRequired,
    ContainerError,
    ContainerNotFound,
    CredentialsRejected,
    ImageNotFound,
    RuntimeUnavailable,
)
from composer_core.settings import Settings
from composer_core.testing import BackendContract, ContractEnv, contract_workload
from composer_core.types import Anonymous, Credentials
from composer_plugins.kubernetes import connect
from composer_plugins.kubernetes.backend import KubernetesBackend
from composer_plugins.kubernetes.objects import FIELD_MANAGER, registry_key, secret_name
from tests import k8s_standin
from tests.engine_helpers import free_port, unique
from tests.k8s_standin import StandIn

pytestmark = pytest.mark.k8s_standin

NS = "xtm"
REGISTRY = "registry.example:5000"
OTHER_REGISTRY = "other.example:5000"
USER, PASSWORD = "alice", "right-password-ü:1"
# what containerd (the kubelet's runtime) reports for a registry's 401 / a missing tag
ANONYMOUS_401 = (f'failed to pull and unpack image "{REGISTRY}/xtm/connector:1": failed to '
                 f'resolve reference "{REGISTRY}/xtm/connector:1": failed to authorize: failed to '
                 "fetch anonymous token: unexpected status: 401 Unauthorized")
WRONG_401 = (f'failed to pull and unpack image "{REGISTRY}/xtm/connector:1": failed to resolve '
             f'reference "{REGISTRY}/xtm/connector:1": failed to authorize: failed to fetch oauth '
             "token: unexpected status: 401 Unauthorized")
NOT_FOUND = (f'failed to pull and unpack image "{REGISTRY}/xtm/gone:1": failed to resolve '
             f'reference "{REGISTRY}/xtm/gone:1": {REGISTRY}/xtm/gone:1: not found')


def registry_kubelet(pod: dict[str, Any], secrets: Mapping[str, dict[str, Any]]
                     ) -> tuple[dict[str, Any], list[str]]:
    """A kubelet whose REGISTRY accepts only USER / PASSWORD: the stand-in cannot pull, so the
    test decides the pod's status from the pull Secret the pod references, with the message a
    kubelet (containerd) gives for that registry's answer."""
    image = pod["spec"]["containers"][0]["image"]
    if not image.startswith(REGISTRY + "/"):
        return k8s_standin.run_all(pod, secrets)
    sent = None
    for ref in pod["spec"].get("imagePullSecrets") or []:
        secret = secrets.get(ref["name"])
        if secret is not None:
            auths = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))["auths"]
            sent = auths.get(REGISTRY)
    if sent is None:
        return k8s_standin.waiting("ErrImagePull", ANONYMOUS_401), []
    if (sent["username"], sent["password"]) != (USER, PASSWORD):
        return k8s_standin.waiting("ErrImagePull", WRONG_401), []
    return k8s_standin.run_all(pod, secrets)


@pytest.fixture
def standin() -> Iterator[StandIn]:
    server = StandIn(registry_kubelet)
    yield server
    server.close()


@pytest.fixture
def kube_settings(standin: StandIn, tmp_path: Path,
                  make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(standin.kubeconfig(NS)))

    def make(**overrides: Any) -> Settings:
        values = {"opencti.daemon.kubernetes.kubeconfig": str(path),
                  "opencti.daemon.kubernetes.rollout_timeout": 5}
        values.update({f"opencti.daemon.kubernetes.{k}": v for k, v in overrides.items()})
        return make_settings(values)

    return make


@pytest.fixture
def backend(kube_settings: Callable[..., Settings]) -> Iterator[KubernetesBackend]:
    opened = connect(kube_settings())
    yield opened
    opened.close()


def env_of(standin: StandIn) -> ContractEnv:
    def make_unmanaged(name: str) -> None:
        labels = {"app": name}
        standin.create("deployments", NS, {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name,
                                                                        "labels": labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}})

    return ContractEnv(
        manager=unique("xtm-test-manager"), image="docker.io/library/busybox:1.36",
        auth_image=f"{REGISTRY}/xtm/connector:1",
        auth_credentials=Credentials(registry=REGISTRY, source="config", username=USER,
                                     password=PASSWORD),
        make_unmanaged=make_unmanaged,
        unmanaged_exists=lambda name: standin.get("deployments", NS, name) is not None,
        timeout=5)


class TestKubernetesOnTheStandIn(BackendContract):
    """The workload contract kit. The kit's registry checks (auth required, rejected) run with
    :func:`registry_kubelet`: the test drives the pod to ErrImagePull with the message a kubelet
    gives for that registry's answer, from the pull Secret the backend made."""

    @pytest.fixture
    def backend_factory(self, kube_settings: Callable[..., Settings]
                        ) -> Iterator[Callable[[], KubernetesBackend]]:
        opened: list[KubernetesBackend] = []
        yield lambda: opened.append(connect(kube_settings())) or opened[-1]
        for item in opened:
            item.close()

    @pytest.fixture
    def contract_env(self, standin: StandIn) -> ContractEnv:
        return env_of(standin)


# --- the requests: Kubernetes API conventions ---------------------------------------------------


def test_apply_sends_server_side_apply_requests(standin: StandIn,
                                                backend: KubernetesBackend) -> None:
    env = env_of(standin)
    creds = Credentials(registry=REGISTRY, source="config", username=USER, password=PASSWORD)
    workload = contract_workload(env, "conn-a", image=f"{REGISTRY}/xtm/connector:1",
                                 credentials=creds)
    applied = backend.apply(workload, None)
    assert applied.action == "created" and applied.observed.state == "started"
    secret = secret_name(env.manager, REGISTRY)
    patches = [r for r in standin.requests if r.method == "PATCH"]
    assert [r.path for r in patches] == [f"/api/v1/namespaces/{NS}/secrets/{secret}",
                                         f"/apis/apps/v1/namespaces/{NS}/deployments/conn-a"]
    for request in patches:  # server-side apply: the apply content type, our manager, force
        assert request.content_type == "application/apply-patch+yaml"
        assert request.query == {"fieldManager": FIELD_MANAGER, "force": "true"}
        assert request.authorization == f"Bearer {standin.token}"
    secret_body, dep_body = (r.body for r in patches)
    import kubernetes_validate

    for body in (secret_body, dep_body):  # what went over the wire is a valid object
        kubernetes_validate.validate(body, "1.33.0", strict=True)
    assert (secret_body["apiVersion"], secret_body["kind"]) == ("v1", "Secret")
    assert secret_body["type"] == "kubernetes.io/dockerconfigjson"
    assert (dep_body["apiVersion"], dep_body["kind"]) == ("apps/v1", "Deployment")
    assert dep_body["metadata"] == {"name": "conn-a", "namespace": NS,
                                    "labels": dict(workload.labels),
                                    "annotations": {LABEL_HASH: workload.config_hash}}
    assert "status" not in dep_body and "resourceVersion" not in dep_body["metadata"]
    assert dep_body["spec"]["selector"] == {"matchLabels": {
        LABEL_MANAGER: env.manager, LABEL_CONNECTOR: "conn-a"}}
    assert dep_body["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": secret}]
    # no create, no update: apply is the only write; GETs are by name or by label selector
    assert not [r for r in standin.requests if r.method in ("POST", "PUT")]
    gets = [r for r in standin.requests if r.method == "GET"]
    assert gets[0].path == f"/apis/apps/v1/namespaces/{NS}/deployments/conn-a"
    for request in gets[1:]:
        assert request.path == f"/api/v1/namespaces/{NS}/pods"
        assert request.query["labelSelector"] == (
            f"{LABEL_HASH}={workload.config_hash},{LABEL_CONNECTOR}=conn-a,"
            f"{LABEL_MANAGER}={env.manager}")


def test_observe_is_two_list_requests_by_label(standin: StandIn,
                                               backend: KubernetesBackend) -> None:
    env = env_of(standin)
    backend.apply(contract_workload(env, "conn-a"), None)
    standin.requests.clear()
    (observed,) = backend.observe({LABEL_MANAGER: env.manager})
    assert [(r.method, r.path, r.query) for r in standin.requests] == [
        ("GET", f"/apis/apps/v1/namespaces/{NS}/deployments",
         {"labelSelector": f"{LABEL_MANAGER}={env.manager}"}),
        ("GET", f"/api/v1/namespaces/{NS}/pods",
         {"labelSelector": f"{LABEL_MANAGER}={env.manager}"})]
    assert observed.id == standin.get("deployments", NS, "conn-a")["metadata"]["uid"]
    assert (observed.replicas_wanted, observed.replicas_running) == (1, 1)


def test_fields_another_manager_owns_survive_our_update(standin: StandIn,
                                                        kube_settings: Callable[..., Settings]
                                                        ) -> None:
    """Server-side apply: a user's annotation and node selector stay; a field we stop sending
    (the resources we no longer set) goes."""
    env = env_of(standin)
    first = connect(kube_settings(image_resources={"limits": {"memory": "256Mi"}}))
    workload = contract_workload(env, "conn-a", values={"A": "1"})
    first.apply(workload, None)
    dep = standin.get("deployments", NS, "conn-a")
    standin.requests.clear()
    # a user edits the Deployment (kubectl's merge patch under its own manager)
    from composer_plugins.kubernetes.api import Api

    user = Api(first.api.client, first.api.endpoint, NS)
    user.request("PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/conn-a",
                 query={"fieldManager": "kubectl-edit"},
                 body={"metadata": {"annotations": {"team": "blue"}},
                       "spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}}}}},
                 content_type="application/merge-patch+json")
    first.close()
    second = connect(kube_settings())  # no image_resources any more
    try:
        changed = contract_workload(env, "conn-a", values={"A": "2"})
        applied = second.apply(changed, second.observe({LABEL_MANAGER: env.manager})[0])
        assert applied.action == "updated"
        after = standin.get("deployments", NS, "conn-a")
        assert after["metadata"]["uid"] == dep["metadata"]["uid"]  # updated in place
        assert after["metadata"]["annotations"]["team"] == "blue"
        assert after["metadata"]["annotations"][LABEL_HASH] == changed.config_hash
        pod_spec = after["spec"]["template"]["spec"]
        assert pod_spec["nodeSelector"] == {"disk": "ssd"}
        assert "resources" not in pod_spec["containers"][0]
        assert {"name": "A", "value": "2"} in pod_spec["containers"][0]["env"]
        managers = {(m["manager"], m["operation"]) for m in after["metadata"]["managedFields"]}
        assert managers == {(FIELD_MANAGER, "Apply"), ("kubectl-edit", "Update")}
    finally:
        second.close()


def test_a_changed_selector_recreates_the_deployment(standin: StandIn,
                                                     backend: KubernetesBackend) -> None:
    """An older Deployment of ours (upstream put the config hash in the selector): its selector
    is immutable (422), so it is deleted (uid precondition) and created again."""
    env = env_of(standin)
    workload = contract_workload(env, "conn-a")
    old_labels = {**workload.labels, LABEL_HASH: "old"}
    standin.create("deployments", NS, {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "conn-a", "labels": old_labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": old_labels},
                 "template": {"metadata": {"labels": old_labels},
                              "spec": {"containers": [{"name": "connector",
                                                       "image": "busybox"}]}}}}, "upstream")
    old_uid = standin.get("deployments", NS, "conn-a")["metadata"]["uid"]
    applied = backend.apply(workload, None)
    assert applied.action == "replaced"
    assert "spec.selector is immutable" in applied.detail and "recreated" in applied.detail
    (delete,) = standin.sent("DELETE", "deployments")
    assert delete.path == f"/apis/apps/v1/namespaces/{NS}/deployments/conn-a"
    assert delete.body["preconditions"] == {"uid": old_uid}
    assert delete.body["propagationPolicy"] == "Background"
    now = standin.get("deployments", NS, "conn-a")
    assert now["metadata"]["uid"] != old_uid and applied.observed.id == now["metadata"]["uid"]
    assert now["spec"]["selector"]["matchLabels"] == {LABEL_MANAGER: env.manager,
                                                      LABEL_CONNECTOR: "conn-a"}


def test_set_state_reads_again_after_a_resource_version_conflict(
        standin: StandIn, backend: KubernetesBackend) -> None:
    env = env_of(standin)
    workload = contract_workload(env, "conn-a")
    observed = backend.apply(workload, None).observed
    conflicts = []

    def concurrent_writer(request: k8s_standin.Request) -> None:
        if request.content_type == "application/merge-patch+json" and not conflicts:
            conflicts.append(request)
            standin.touch("deployments", NS, "conn-a")  # someone wrote between our GET and PATCH

    standin.on_request = concurrent_writer
    standin.requests.clear()
    stopped = backend.set_state(observed, "stopped")
    assert stopped.state == "stopped" and stopped.replicas_wanted == 0
    patches = standin.sent("PATCH", "deployments")
    assert len(patches) == 2  # the first got 409 Conflict; read again, patched again
    for patch in patches:
        assert patch.content_type == "application/merge-patch+json"
        assert patch.query == {"fieldManager": FIELD_MANAGER}
        assert set(patch.body) == {"metadata", "spec"} and patch.body["spec"] == {"replicas": 0}
        assert patch.body["metadata"]["resourceVersion"]
    assert patches[0].body["metadata"]["resourceVersion"] != patches[1].body["metadata"][
        "resourceVersion"]
    assert standin.pods_of(NS, "conn-a") == []


def test_remove_deletes_only_the_observed_deployment(standin: StandIn,
                                                     backend: KubernetesBackend) -> None:
    env = env_of(standin)
    workload = contract_workload(env, "conn-a")
    observed = backend.apply(workload, None).observed
    backend.remove(observed)
    standin.requests.clear()
    again = backend.apply(workload, None).observed  # a newer Deployment of the same name
    with pytest.raises(ContainerNotFound):
        backend.remove(observed)  # the uid precondition: 409, the observed one is gone
    assert standin.get("deployments", NS, "conn-a")["metadata"]["uid"] == again.id


# --- state from the pod --------------------------------------------------------------------------


def test_state_comes_from_the_pod_as_the_test_drives_it(standin: StandIn,
                                                        kube_settings: Callable[..., Settings]
                                                        ) -> None:
    standin.kubelet = lambda pod, secrets: (k8s_standin.waiting("ContainerCreating"), [])
    backend = connect(kube_settings(rollout_timeout=0))
    env = env_of(standin)
    workload = contract_workload(env, "conn-a", credentials=Anonymous)
    applied = backend.apply(workload, None)
    assert applied.observed.state == "pending" and "ContainerCreating" in applied.observed.detail
    (pod,) = standin.pods_of(NS, "conn-a")
    name = pod["metadata"]["name"]

    def seen() -> Any:
        (observed,) = backend.observe({LABEL_MANAGER: env.manager})
        return observed

    try:
        standin.set_pod_status(NS, name, k8s_standin.unschedulable("0/3 nodes are available"))
        assert seen().state == "pending" and seen().detail == (
            "Unschedulable (0/3 nodes are available)")
        for reason in ("ErrImagePull", "ImagePullBackOff"):
            standin.set_pod_status(NS, name, k8s_standin.waiting(reason, ANONYMOUS_401))
            observed = seen()
            assert observed.state == "failed" and observed.status == reason
            assert observed.detail == f"{reason} ({ANONYMOUS_401})"
            assert isinstance(observed.error, AuthenticationRequired)
            # the same explanation as a failed pull on a single host, with the credential trace
            assert "credential chain" in observed.error.message
            assert "no credentials given by the contract test" in observed.error.message
        standin.set_pod_status(NS, name, k8s_standin.running())
        assert seen().state == "started" and seen().replicas_running == 1
        standin.set_pod_status(NS, name, k8s_standin.crash_loop(7, "OOMKilled", 137))
        observed = seen()
        assert observed.state == "restarting" and observed.restart_count == 7
        assert observed.detail == ("CrashLoopBackOff (restarted 7 times, last exit OOMKilled, "
                                   "code 137)")
        assert (observed.replicas_wanted, observed.replicas_running) == (1, 0)
        # between two back-offs: it has just exited, the kubelet restarts it
        standin.set_pod_status(NS, name, k8s_standin.terminated(8, "Error", 2))
        observed = seen()
        assert observed.state == "restarting" and observed.restart_count == 8
        assert observed.detail == "Terminated (Error, code 2, restarted 8 times)"
    finally:
        backend.close()


def test_a_missing_tag_is_image_not_found(standin: StandIn, backend: KubernetesBackend) -> None:
    standin.kubelet = lambda pod, secrets: (k8s_standin.waiting("ErrImagePull", NOT_FOUND), [])
    workload = contract_workload(env_of(standin), "conn-a", image=f"{REGISTRY}/xtm/gone:1")
    with pytest.raises(ImageNotFound) as caught:
        backend.apply(workload, None)
    assert caught.value.exit_code == 10 and f"{REGISTRY}/xtm/gone:1" in caught.value.message


def test_a_rejected_credential_names_its_provider_and_leaks_nothing(
        standin: StandIn, backend: KubernetesBackend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = Credentials(registry=REGISTRY, source="keychain", username=USER,
                        password="wrong-secret-pw")
    workload = contract_workload(env_of(standin), "conn-a", image=f"{REGISTRY}/xtm/connector:1",
                                 credentials=wrong)
    with pytest.raises(CredentialsRejected) as caught:
        backend.apply(workload, None)
    text = "\n".join([caught.value.message, caught.value.hint or "", caplog.text,
                      repr(backend.observe({})), json.dumps([o.to_dict() for o in
                                                             backend.observe({})])])
    assert "provider 'keychain'" in caught.value.message
    assert "wrong-secret-pw" not in text


# --- pull secrets, one per registry --------------------------------------------------------------


def _decoded(secret: Mapping[str, Any]) -> Any:
    return json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))


def test_one_pull_secret_per_registry_rotated_and_collected(standin: StandIn,
                                                            backend: KubernetesBackend) -> None:
    env = env_of(standin)
    one = Credentials(registry=REGISTRY, source="config", username=USER, password=PASSWORD)
    two = Credentials(registry=OTHER_REGISTRY, source="docker-config", username="bob",
                      password="bob-pw")
    standin.create("secrets", NS, {"apiVersion": "v1", "kind": "Secret",
                                   "metadata": {"name": "someone-elses"}, "data": {}})
    a = contract_workload(env, "conn-a", image=f"{REGISTRY}/xtm/connector:1", credentials=one)
    b = contract_workload(env, "conn-b", image=f"{REGISTRY}/xtm/other:2", credentials=one)
    c = contract_workload(env, "conn-c", image=f"{OTHER_REGISTRY}/x/y:1", credentials=two)
    d = contract_workload(env, "conn-d", credentials=Anonymous)
    for workload in (a, b, c, d):
        backend.apply(workload, None)
    first, second = secret_name(env.manager, REGISTRY), secret_name(env.manager, OTHER_REGISTRY)
    ours = {s["metadata"]["name"]: s for s in standin.objects("secrets", NS)}
    assert set(ours) == {first, second, "someone-elses"}
    assert _decoded(ours[first]) == {"auths": {REGISTRY: {
        "username": USER, "password": PASSWORD,
        "auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}
    assert list(_decoded(ours[second])["auths"]) == [OTHER_REGISTRY]
    assert ours[first]["metadata"]["labels"][LABEL_MANAGER] == env.manager

    def pull_secrets(name: str) -> Any:
        return standin.get("deployments", NS, name)["spec"]["template"]["spec"].get(
            "imagePullSecrets")

    assert pull_secrets("conn-a") == pull_secrets("conn-b") == [{"name": first}]
    assert pull_secrets("conn-c") == [{"name": second}]
    assert pull_secrets("conn-d") is None  # anonymous: no Secret, no reference
    # rotation: the chain now resolves another password; the next pass re-applies the Secret
    rotated = Credentials(registry=REGISTRY, source="config", username=USER, password="new-pw")
    a2 = contract_workload(env, "conn-a", image=f"{REGISTRY}/xtm/connector:1",
                           credentials=rotated)
    assert first in backend.sync_pull_secrets([a2, c, d], env.manager)
    secret = standin.get("secrets", NS, first)
    assert _decoded(secret)["auths"][REGISTRY]["password"] == "new-pw"
    # the registry's last Deployment goes: its Secret goes with it; someone else's stays
    observed = {o.name: o for o in backend.observe({LABEL_MANAGER: env.manager})}
    backend.remove(observed["conn-c"])
    assert standin.get("secrets", NS, second) is None
    assert standin.get("secrets", NS, first) is not None
    assert standin.get("secrets", NS, "someone-elses") is not None
    # the Deployment moves to an anonymous registry: the first Secret is no longer used
    backend.remove(observed["conn-b"])
    backend.apply(contract_workload(env, "conn-a", credentials=Anonymous), observed["conn-a"])
    assert standin.get("secrets", NS, first) is None


# --- logs, errors ----------------------------------------------------------------------------------


def test_logs_ask_for_the_tail_only(standin: StandIn, backend: KubernetesBackend) -> None:
    env = env_of(standin)
    observed = backend.apply(contract_workload(env, "conn-a"), None).observed
    standin.requests.clear()
    assert backend.logs(observed, 2) == "conn-a line 4\nconn-a line 5\n"
    (request,) = standin.sent("GET", "log")
    (pod,) = standin.pods_of(NS, "conn-a")
    assert request.path == f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}/log"
    assert request.query == {"container": "connector", "tailLines": "2"}


def test_rbac_refusal_names_the_verb_and_resource(standin: StandIn,
                                                  backend: KubernetesBackend) -> None:
    standin.forbidden.add(("GET", "pods"))
    with pytest.raises(ContainerError) as caught:
        backend.observe({LABEL_MANAGER: "m"})
    assert "refused to list pods" in caught.value.message and "HTTP 403" in caught.value.message
    assert "examples/kubernetes-rbac.yaml" in (caught.value.hint or "")


def test_an_api_server_that_does_not_answer_is_runtime_unavailable(
        tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    backend = connect(make_settings({"opencti.daemon.kubernetes.kubeconfig": str(path),
                                     "opencti.daemon.kubernetes.request_timeout": 2}))
    try:
        assert backend.api.namespace == "default"  # the context names none
        with pytest.raises(RuntimeUnavailable) as caught:
            backend.observe({})
        assert caught.value.exit_code == 5
    finally:
        backend.close()


def test_namespace_comes_from_the_context_or_the_setting(
        standin: StandIn, kube_settings: Callable[..., Settings]) -> None:
    for settings, wanted in ((kube_settings(), NS), (kube_settings(namespace="team-b"), "team-b")):
        backend = connect(settings)
        try:
            assert backend.api.namespace == wanted and wanted in backend.endpoint
            backend.observe({})
            assert standin.requests[-1].path == f"/api/v1/namespaces/{wanted}/pods"
        finally:
            backend.close()


def test_the_registry_key_of_docker_hub() -> None:
    assert registry_key("docker.io") == "https://index.docker.io/v1/"
    assert registry_key(REGISTRY) == REGISTRY


def _rbac_rules() -> dict[str, set[str]]:
    manifest = Path(__file__).resolve().parent.parent / "examples" / "kubernetes-rbac.yaml"
    (role,) = [o for o in yaml.safe_load_all(manifest.read_text()) if o["kind"] == "Role"]
    return {resource: set(rule["verbs"]) for rule in role["rules"]
            for resource in rule["resources"]}


def _verb(request: k8s_standin.Request) -> tuple[str, str]:
    parts = request.path.strip("/").split("/")
    rest = parts[parts.index("namespaces") + 2:]
    resource = rest[0] + ("/" + rest[2] if len(rest) > 2 else "")
    if request.method == "GET" and request.query.get("watch") == "true":
        return resource, "watch"
    if request.method == "GET":
        return resource, "get" if len(rest) > 1 else "list"
    return resource, {"PATCH": "patch", "DELETE": "delete"}[request.method]


def test_the_rbac_manifest_grants_exactly_the_verbs_sent(standin: StandIn,
                                                         backend: KubernetesBackend) -> None:
    """Every request of every operation, mapped to its RBAC (resource, verb): the manifest grants
    these and no other, plus `create` where a server-side apply may create the object."""
    env = env_of(standin)
    creds = Credentials(registry=REGISTRY, source="config", username=USER, password=PASSWORD)
    workload = contract_workload(env, "conn-a", image=f"{REGISTRY}/xtm/connector:1",
                                 credentials=creds)
    observed = backend.apply(workload, None).observed
    pending = (k8s_standin.waiting("ContainerCreating"), [])
    standin.kubelet = lambda pod, secrets: pending  # the next pod stays pending: a watch
    backend.rollout_timeout = 1
    backend.apply(contract_workload(env, "conn-a", credentials=Anonymous), observed)
    (observed,) = backend.observe({LABEL_MANAGER: env.manager})
    list(backend.events({LABEL_MANAGER: env.manager}, None, 2))  # `run`: a window of watches
    backend.logs(observed, 3)
    backend.set_state(observed, "stopped")
    backend.remove(observed)
    sent: dict[str, set[str]] = {}
    for request in standin.requests:
        resource, verb = _verb(request)
        sent.setdefault(resource, set()).add(verb)
    applied = {_verb(r)[0] for r in standin.requests
               if r.content_type == "application/apply-patch+yaml"}
    assert applied == {"deployments", "secrets"}
    rules = _rbac_rules()
    assert rules == {resource: verbs | ({"create"} if resource in applied else set())
                     for resource, verbs in sent.items()}


def test_a_fleet_pass_rotates_the_pull_secret_and_a_steady_pass_writes_nothing(
        standin: StandIn, tmp_path: Path, make_settings: Callable[..., Settings],
        plugins: Any) -> None:
    from composer_core.fleet.connectors import Connector
    from composer_core.fleet.reconcile import Reconciler

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(standin.kubeconfig(NS)))
    manager = unique("xtm-test-manager")

    def settings(password: str) -> Settings:
        return make_settings({"manager.id": manager,
                              "opencti.daemon.kubernetes.kubeconfig": str(kubeconfig),
                              "opencti.daemon.kubernetes.rollout_timeout": 5,
                              "opencti.daemon.docker.registries": [
                                  {"url": REGISTRY, "username": USER, "password": password}]})

    connectors = [Connector(id="c1", name="conn-a", image=f"{REGISTRY}/xtm/connector:1"),
                  Connector(id="c2", name="conn-b", image="docker.io/library/busybox:1.36")]
    backend = connect(settings(PASSWORD))
    try:
        first = Reconciler(backend, settings(PASSWORD), plugins).run_pass(connectors)
        assert not first.failed and [s.action for s in first.steps] == ["deploy", "deploy"]
        name = secret_name(manager, REGISTRY)
        assert _decoded(standin.get("secrets", NS, name))["auths"][REGISTRY]["password"] == (
            PASSWORD)
        standin.requests.clear()
        steady = Reconciler(backend, settings(PASSWORD), plugins).run_pass(connectors)
        assert [s.action for s in steady.steps] == ["nothing", "nothing"]
        assert [r.method for r in standin.requests] == ["GET", "GET"]  # the observation only
        # the registry's password changes in the settings: the next pass updates the Secret
        # (one apply of that Secret), and the Deployments are left as they are
        rotated = "rotated-" + PASSWORD
        standin.requests.clear()
        Reconciler(backend, settings(rotated), plugins).run_pass(connectors)
        writes = [r for r in standin.requests if r.method != "GET"]
        assert [(r.method, r.path) for r in writes] == [
            ("PATCH", f"/api/v1/namespaces/{NS}/secrets/{name}")]
        assert _decoded(standin.get("secrets", NS, name))["auths"][REGISTRY]["password"] == (
            rotated)
        assert writes[0].content_type == "application/apply-patch+yaml"
        # a refused refresh is a warning of the pass, which goes on
        standin.forbidden.add(("PATCH", "secrets"))
        refused = Reconciler(backend, settings("again-" + PASSWORD), plugins).run_pass(
            connectors)
        assert not refused.failed and [s.action for s in refused.steps] == ["nothing", "nothing"]
        (warning,) = [w for w in refused.warnings if "pull secrets not refreshed" in w]
        assert "refused to patch secrets" in warning and PASSWORD not in warning
    finally:
        backend.close()


def test_a_refused_token_or_a_non_json_answer_is_a_typed_error(
        standin: StandIn, backend: KubernetesBackend) -> None:
    token = standin.token
    standin.token = "another-token"  # our token expired
    with pytest.raises(RuntimeUnavailable) as caught:
        backend.observe({})
    assert "HTTP 401" in caught.value.message and token not in str(caught.value)
    standin.token = token
    observed = backend.apply(contract_workload(env_of(standin), "conn-a"), None).observed
    (pod,) = standin.pods_of(NS, observed.name)
    # a log is text: read as JSON (what an API server that is not one would answer), it is a
    # typed error, not a ValueError
    with pytest.raises(ContainerError) as error:
        backend.api.request("GET", f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}/log")
    assert "not JSON" in error.value.message


@pytest.mark.parametrize("outcome", ["running", "pull-error"])
def test_apply_watches_the_pod_until_it_runs_or_cannot_pull(standin: StandIn,
                                                            backend: KubernetesBackend,
                                                            outcome: str) -> None:
    """The pod is pending when the apply lists it; the test drives it (ErrImagePull, or
    running) once the backend watches: the apply returns or raises on that event."""
    import threading

    standin.kubelet = lambda pod, secrets: (k8s_standin.waiting("ContainerCreating"), [])
    watches: list[k8s_standin.Request] = []

    def kubelet_later(request: k8s_standin.Request) -> None:
        if request.query.get("watch") != "true" or watches:
            return
        watches.append(request)
        (pod,) = standin.pods_of(NS, "conn-a")
        status = (k8s_standin.running() if outcome == "running"
                  else k8s_standin.waiting("ErrImagePull", ANONYMOUS_401))
        threading.Timer(0.05, standin.set_pod_status,
                        (NS, pod["metadata"]["name"], status)).start()

    standin.on_request = kubelet_later
    workload = contract_workload(env_of(standin), "conn-a", credentials=Anonymous)
    if outcome == "running":
        applied = backend.apply(workload, None)
        assert applied.observed.state == "started"
    else:
        with pytest.raises(AuthenticationRequired):
            backend.apply(workload, None)
    (watch,) = watches
    (listed,) = [r for r in standin.requests if r.method == "GET" and r.path == watch.path
                 and "watch" not in r.query]
    assert watch.path == f"/api/v1/namespaces/{NS}/pods"
    assert watch.query["labelSelector"] == listed.query["labelSelector"]
    assert LABEL_HASH in watch.query["labelSelector"]  # the pods of this template only
    assert int(watch.query["resourceVersion"]) > 0 and 0 < int(watch.query["timeoutSeconds"]) <= 5


def test_in_cluster_uses_the_service_account_and_the_pods_namespace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, standin: StandIn) -> None:
    """No kubeconfig, KUBERNETES_SERVICE_HOST set: the mounted service account (token, CA,
    namespace). In-cluster is always HTTPS; the stand-in speaks HTTP, so the request itself fails
    here, as a typed RuntimeUnavailable."""
    from composer_plugins.kubernetes import api

    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(standin.token)
    (account / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nnot checked here\n")
    (account / "namespace").write_text("pod-ns\n")
    monkeypatch.setattr(api, "SERVICE_ACCOUNT_DIR", str(account))
    port = standin.url.rsplit(":", 1)[1]
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
    connected = api.Api.connect(kubeconfig=None, context=None, namespace=None, environ=environ,
                                timeout=5)
    try:
        assert connected.namespace == "pod-ns"
        assert connected.endpoint == f"https://127.0.0.1:{port} (in-cluster service account)"
        with pytest.raises(RuntimeUnavailable):
            connected.request("GET", connected.ns_path("", "pods"))
    finally:
        connected.close()
    named = api.Api.connect(kubeconfig=None, context=None, namespace="intel", environ=environ)
    assert named.namespace == "intel"
    named.close()
    with pytest.raises(RuntimeUnavailable) as nothing:
        api.Api.connect(kubeconfig=None, context=None, namespace=None, environ={})
    assert "no Kubernetes cluster configured" in nothing.value.message


def test_a_kubeconfig_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    import os

    from composer_plugins.kubernetes import api

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path, tmp_path / "missing"):
        with pytest.raises(RuntimeUnavailable) as caught:
            api.Api.connect(kubeconfig=str(path), context=None, namespace=None, environ={})
        assert "cannot be loaded" in caught.value.message


def test_the_standin_applies_as_an_api_server_does(standin: StandIn,
                                                   backend: KubernetesBackend) -> None:
    """The stand-in's own server-side apply semantics that the backend relies on: without force,
    a field another manager owns with another value is a 409 naming the field; the same value is
    shared; with force the field moves."""
    from composer_plugins.kubernetes.api import APPLY_PATCH, ApiError

    env = env_of(standin)
    backend.apply(contract_workload(env, "conn-a"), None)
    path = f"/apis/apps/v1/namespaces/{NS}/deployments/conn-a"

    def apply_as(manager: str, replicas: int, force: bool) -> Any:
        body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "conn-a"},
                "spec": {"replicas": replicas}}
        return backend.api.request("PATCH", path, body=body, content_type=APPLY_PATCH,
                                   query={"fieldManager": manager,
                                          "force": "true" if force else None})

    with pytest.raises(ApiError) as conflict:
        apply_as("hpa", 3, force=False)
    assert conflict.value.status == 409 and conflict.value.causes == [
        'spec.replicas: conflict with "xtm-composer"']
    shared = apply_as("hpa", 1, force=False)
    owners = {m["manager"] for m in shared["metadata"]["managedFields"]
              if "f:replicas" in m["fieldsV1"].get("f:spec", {})}
    assert owners == {"xtm-composer", "hpa"}
    moved = apply_as("hpa", 3, force=True)
    owners = {m["manager"] for m in moved["metadata"]["managedFields"]
              if "f:replicas" in m["fieldsV1"].get("f:spec", {})}
    assert owners == {"hpa"} and moved["spec"]["replicas"] == 3
    with pytest.raises(ApiError) as missing:
        backend.api.request("PATCH", path, body={"kind": "Deployment"}, content_type=APPLY_PATCH)
    assert missing.value.status == 400  # apply without fieldManager


def test_a_parallel_removal_never_collects_a_secret_an_apply_is_about_to_use(
        standin: StandIn, backend: KubernetesBackend) -> None:
    """The fleet applies in parallel: B (the last Deployment using the registry's Secret) is
    removed while A, new, is applied between its Secret and its Deployment. The removal's
    collection waits for A's Deployment, so the Secret stays."""
    import threading

    env = env_of(standin)
    creds = Credentials(registry=REGISTRY, source="config", username=USER, password=PASSWORD)
    b = contract_workload(env, "conn-b", image=f"{REGISTRY}/xtm/connector:1", credentials=creds)
    observed_b = backend.apply(b, None).observed
    removal: list[threading.Thread] = []

    def remove_b_meanwhile(request: k8s_standin.Request) -> None:
        if request.method == "PATCH" and request.path.endswith("/deployments/conn-a") \
                and not removal:
            removal.append(threading.Thread(target=backend.remove, args=(observed_b,)))
            removal[0].start()
            removal[0].join(1.0)  # without the writers' lock it collects here, before A exists

    standin.on_request = remove_b_meanwhile
    a = contract_workload(env, "conn-a", image=f"{REGISTRY}/xtm/connector:2", credentials=creds)
    backend.apply(a, None)
    removal[0].join(10)
    assert not removal[0].is_alive()
    assert standin.get("deployments", NS, "conn-b") is None
    assert standin.get("secrets", NS, secret_name(env.manager, REGISTRY)) is not None
