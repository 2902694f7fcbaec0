"""The swarm backend on the bench's real three-node swarm (docs/swarm.md, docs/bench.md "The swarm").

Workloads are built through the real chain (``resolve_image`` + ``resolve_credentials``), so every
credential comes from a provider: the ``config`` settings block, a Docker ``config.json``
(``docker-config``) or the real ``docker-credential-pass`` (``keychain``). Proof that a worker pulled
with the credential the manager forwarded: the image is on that worker's own socket, not on the
manager's, and the registry logged an ``authorized request`` from the worker's address for the
pinned digest after the apply. Each image is built fresh (its own layer, its own digest), so no node
can have it before the test.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from composer_core.auth.chain import resolve_credentials
from composer_core.engine.deploy import config_hash
from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_HASH, LABEL_MANAGER
from composer_core.engine.tls import TlsDecision, insecure_key
from composer_core.errors import (
    AuthenticationRequired,
    ComposerError,
    ContainerError,
    ContainerNotFound,
    CredentialsRejected,
    ImageNotFound,
    RegistryError,
    RuntimeUnavailable,
    SettingsError,
)
from composer_core.fleet.connectors import parse_connectors
from composer_core.fleet.reconcile import ROTATED, Reconciler
from composer_core.images.resolve import resolve_image
from composer_core.pluginmanager import Plugins
from composer_core.settings import Settings
from composer_core.testing import InMemoryBackend
from composer_core.types import Anonymous, Credentials
from composer_core.workload import Applied, Observed, Workload, WorkloadState
from composer_plugins.swarm.backend import SwarmBackend, registry_auth_header
from composer_plugins.swarm.fingerprint import KEY_BYTES, Fingerprints, key_path
from composer_plugins.swarm.manager import refuse_non_manager
from composer_plugins.swarm.options import SwarmOptions
from composer_plugins.swarm.tasks import LABEL_CREDENTIAL_ID, LABEL_FAILED, task_failure
from composer_plugins.swarm.watch import TaskWatcher
from tests.bench import SwarmBench, api_clients, require_swarm
from tests.conftest import assert_no_secrets
from tests.engine_helpers import QUICK_STOP, unique
from tests.keychain_helpers import SYSTEM_PATH, PassStore
from tests.test_swarm_bench import has_image

ROOT = Path(__file__).resolve().parent.parent
#: Bound of every wait below on the real swarm (a node marked down takes ~10-20 s).
WAIT_S = 90.0
LOG_CMD = ("sh", "-c", "trap 'exit 0' TERM; i=0; while [ $i -lt 5 ]; do echo line-$i; i=$((i+1)); done; "
           "sleep 3600 & wait")


# ---------------------------------------------------------------- without the swarm

def test_the_header_is_base64url_of_exactly_the_one_credential() -> None:
    creds = Credentials(registry="reg.example:5000", source="config", username="u>?",
                        password="p~~~>>>???")  # bytes that give '+' and '/' in standard base64
    header = registry_auth_header(creds)["X-Registry-Auth"]
    assert "+" not in header and "/" not in header
    assert json.loads(base64.urlsafe_b64decode(header)) == {
        "serveraddress": "reg.example:5000", "username": "u>?", "password": "p~~~>>>???"}
    assert registry_auth_header(Anonymous) == {}  # anonymous: no header at all


def test_a_node_that_is_not_a_manager_is_refused_saying_what_it_is() -> None:
    with pytest.raises(RuntimeUnavailable, match="not part of a swarm") as inactive:
        refuse_non_manager({"LocalNodeState": "inactive"}, "unix:///x.sock")
    assert "docker swarm init" in (inactive.value.hint or "")
    with pytest.raises(RuntimeUnavailable, match="is a swarm worker") as worker:
        refuse_non_manager({"LocalNodeState": "active", "ControlAvailable": False, "NodeID": "n2",
                            "RemoteManagers": [{"Addr": "10.0.0.1:2377"}]}, "unix:///x.sock")
    assert "10.0.0.1:2377" in worker.value.message and "docker node promote n2" in (worker.value.hint or "")
    with pytest.raises(RuntimeUnavailable, match="locked"):
        refuse_non_manager({"LocalNodeState": "locked"}, "unix:///x.sock")
    refuse_non_manager({"LocalNodeState": "active", "ControlAvailable": True}, "unix:///x.sock")


def test_a_rejected_task_becomes_the_single_host_error() -> None:
    creds = Credentials(registry="r:1", source="config", username="u", password="p")
    assert isinstance(task_failure("No such image: r:1/a:1@sha256:00", Anonymous, pinned=True),
                      AuthenticationRequired)
    assert isinstance(task_failure("No such image: r:1/a:1@sha256:00", creds, pinned=True), CredentialsRejected)
    assert isinstance(task_failure("no basic auth credentials", Anonymous, pinned=True), AuthenticationRequired)
    assert isinstance(task_failure("manifest unknown", creds, pinned=True), ImageNotFound)
    assert task_failure("invalid mount config for type bind", creds, pinned=True) is None


def test_concurrent_watches_share_one_task_request() -> None:
    fetched: list[list[str]] = []

    def fetch(ids: list[str]) -> list[dict[str, Any]]:
        fetched.append(ids)
        return [{"ID": f"t-{i}", "ServiceID": i} for i in ids]

    watcher = TaskWatcher(fetch)
    with watcher.watching("a"), watcher.watching("b"):
        assert watcher.tasks("a", max_age=60) == [{"ID": "t-a", "ServiceID": "a"}]
        assert watcher.tasks("b", max_age=60) == [{"ID": "t-b", "ServiceID": "b"}]  # from the same answer
        assert fetched == [["a", "b"]]
        watcher.tasks("a", max_age=0)  # too old: a new poll, again for both
        assert fetched == [["a", "b"], ["a", "b"]]
    with watcher.watching("c"):
        watcher.tasks("c", max_age=60)  # not covered by the last answer
    assert fetched[-1] == ["c"]


def test_swarm_settings_are_checked(make_settings: Callable[..., Settings]) -> None:
    opts = SwarmOptions.from_settings(make_settings({
        "opencti.daemon.swarm.network": "host", "opencti.daemon.swarm.constraints": ["node.role==worker"],
        "opencti.daemon.swarm.resources.cpus": 0.5, "opencti.daemon.swarm.resources.memory": "512m",
        "opencti.daemon.swarm.restart_policy.condition": "on-failure",
        "opencti.daemon.swarm.restart_policy.delay": 2, "opencti.daemon.swarm.restart_policy.max_attempts": 3}))
    template = opts.task_template({"Image": "x"})
    assert template["Networks"] == [{"Target": "host"}]
    assert template["Placement"] == {"Constraints": ["node.role==worker"]}
    assert template["Resources"] == {"Limits": {"NanoCPUs": 500_000_000, "MemoryBytes": 512 * 1024**2}}
    assert template["RestartPolicy"] == {"Condition": "on-failure", "Delay": 2_000_000_000, "MaxAttempts": 3}
    defaults = SwarmOptions.from_settings(make_settings()).task_template({"Image": "x"})
    assert "Networks" not in defaults and "Resources" not in defaults and "Placement" not in defaults
    assert defaults["RestartPolicy"]["Condition"] == "any"
    for key, value in [("restart_policy.condition", "sometimes"), ("resources.memory", "lots"),
                       ("constraints", "node.role==worker"), ("wait", 3600), ("resources.cpus", -1)]:
        with pytest.raises(SettingsError, match=f"opencti.daemon.swarm.{key}"):
            SwarmOptions.from_settings(make_settings({f"opencti.daemon.swarm.{key}": value}))


def test_the_credential_fingerprint_is_keyed_stable_and_per_credential(tmp_path: Path) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path / "home")}
    path = key_path(environ)
    assert path == tmp_path / "state" / "xtm-composer" / "credential-fingerprint.key"
    assert key_path({"HOME": str(tmp_path / "home")}) == (
        tmp_path / "home" / ".local" / "state" / "xtm-composer" / "credential-fingerprint.key")
    creds = Credentials(registry="reg.example:5000", source="config", username="alice", password="pw-one")
    first = Fingerprints(environ).of(creds)
    assert first is not None and first.startswith("hmac-sha256:")
    key = path.read_bytes()
    assert len(key) == KEY_BYTES and path.stat().st_mode & 0o777 == 0o600  # made on first use, 0600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert Fingerprints(environ).of(creds) == first  # stable: another process reads the same key
    assert Fingerprints(environ).of(Credentials(registry="reg.example:5000", source="keychain",
                                                username="alice", password="pw-one")) == first  # what is sent
    others = [Credentials(registry="reg.example:5000", source="config", username="alice", password="pw-two"),
              Credentials(registry="reg.example:5000", source="config", username="bob", password="pw-one"),
              Credentials(registry="other.example", source="config", username="alice", password="pw-one"),
              Credentials(registry="reg.example:5000", source="config", identity_token="tok")]
    prints = {Fingerprints(environ).of(c) for c in others}
    assert len(prints) == len(others) and first not in prints
    assert Fingerprints(environ).of(Anonymous) is None  # no header, no label
    elsewhere = {"XDG_STATE_HOME": str(tmp_path / "other-machine")}
    assert Fingerprints(elsewhere).of(creds) != first  # keyed: another key, another fingerprint
    for text in (first, repr(Fingerprints(environ))):
        assert_no_secrets(text, ["pw-one", key.hex(), base64.b64encode(key).decode()])


def test_an_unusable_fingerprint_key_is_an_error_naming_the_file(tmp_path: Path) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path)}
    path = key_path(environ)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"short")
    creds = Credentials(registry="r:1", source="config", username="u", password="p")
    with pytest.raises(ComposerError, match="holds 5 bytes, not 32") as caught:
        Fingerprints(environ).of(creds)
    assert str(path) in caught.value.message and "every service is updated once" in (caught.value.hint or "")
    path.unlink()
    path.mkdir()
    with pytest.raises(ComposerError, match="directory"):
        Fingerprints(environ).of(creds)


class StoringBackend(InMemoryBackend):
    """The in-memory backend made to store the credential a workload was applied with, as an orchestrator
    does (and never returns it): it declares ``stored-credentials``."""

    capabilities = InMemoryBackend.capabilities | {"stored-credentials"}

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[str, tuple[str | None, str | None]] = {}
        self.checked: list[str] = []
        self.broken: ComposerError | None = None

    @staticmethod
    def _given(wl: Workload) -> tuple[str | None, str | None]:
        creds = wl.credentials
        return (None, None) if isinstance(creds, type(Anonymous)) else (creds.username, creds.password)

    def credentials_changed(self, wl: Workload, current: Observed) -> bool:
        self.checked.append(current.name)
        if self.broken is not None:
            raise self.broken
        return self.held.get(current.name) != self._given(wl)

    def apply(self, wl: Workload, current: Observed | None, **kwargs: Any) -> Applied:
        rotated = current is not None and self.credentials_changed(wl, current)
        self.held[wl.name] = self._given(wl)
        if rotated and current is not None and current.config_hash == wl.config_hash:
            return Applied("updated", self.set_state(current, wl.state), "credential rotated")
        return super().apply(wl, current, **kwargs)


def test_a_rotated_credential_is_an_update_on_a_backend_storing_it_and_only_there(
    make_settings: Callable[..., Settings], plugins: Plugins, caplog: pytest.LogCaptureFixture,
) -> None:
    registry = "registry.example:5000"

    def settings(password: str) -> Settings:
        return make_settings({"manager.id": "m", "opencti.daemon.docker.registry": {
            "url": registry, "username": "alice", "password": password}})

    fleet = parse_connectors({"connectors": [
        {"id": "run", "image": "xtm/connector:1"}, {"id": "halt", "image": "xtm/connector:1", "status": "stopped"},
        {"id": "public", "image": "docker.io/library/busybox:1.36"}]}, "test")
    backend = StoringBackend()

    def run(password: str, *, dry_run: bool = False) -> dict[str, tuple[str, str]]:
        backend.reset_counts()
        backend.checked.clear()
        result = Reconciler(backend, settings(password), plugins, stop_timeout=1).run_pass(fleet, dry_run=dry_run)
        assert result.failed == []
        assert_no_secrets(json.dumps(result.to_dict()) + caplog.text, ["old-pw-1", "new-pw-2"])
        return {s.id: (s.action, s.reason) for s in result.steps}

    assert {a for a, _ in run("old-pw-1").values()} == {"deploy"}
    steady = run("old-pw-1")
    assert {a for a, _ in steady.values()} == {"nothing"}
    assert sorted(backend.checked) == ["halt", "public", "run"]  # asked, without a request of the engine
    assert dict(backend.calls) == {"observe": 1} and dict(backend.requests) == {"list": 1}

    assert run("new-pw-2", dry_run=True) == {"run": ("replace", ROTATED), "halt": ("replace", ROTATED),
                                             "public": ("nothing", "up to date")}
    assert backend.calls["apply"] == 0 and backend.held["run"] == ("alice", "old-pw-1")  # a dry run changes nothing

    assert run("new-pw-2") == {"run": ("replace", ROTATED), "halt": ("replace", ROTATED),
                               "public": ("nothing", "up to date")}
    assert backend.held["run"] == backend.held["halt"] == ("alice", "new-pw-2")
    states = {c.name: c.status for c in backend.runtime.list({LABEL_MANAGER: "m"})}
    assert states == {"run": "running", "halt": "created", "public": "running"}  # each kept its state
    again = run("new-pw-2")
    assert {a for a, _ in again.values()} == {"nothing"} and dict(backend.requests) == {"list": 1}

    backend.broken = ComposerError("the fingerprint key cannot be read")  # the pass goes on and says so
    broken = Reconciler(backend, settings("new-pw-2"), plugins, stop_timeout=1).run_pass(fleet)
    assert [(s.action, s.result) for s in broken.steps] == [("nothing", "ok")] * 3
    assert "connector run (run): whether its registry credential changed is unknown: the fingerprint key " \
        "cannot be read" in broken.warnings

    plain = InMemoryBackend()  # no stored-credentials: a rotation alone changes nothing, nothing is asked
    Reconciler(plain, settings("old-pw-1"), plugins, stop_timeout=1).run_pass(fleet)
    plain.reset_counts()
    result = Reconciler(plain, settings("new-pw-2"), plugins, stop_timeout=1).run_pass(fleet)
    assert {s.action for s in result.steps} == {"nothing"} and dict(plain.requests) == {"list": 1}


# ---------------------------------------------------------------- helpers on the real swarm

@pytest.fixture
def swarm() -> SwarmBench:
    return require_swarm()


@pytest.fixture
def raw(swarm: SwarmBench) -> Iterator[Callable[[str], Any]]:
    """``raw(host)``: the SDK's low-level client (the test HOME has no config.json: no credential)."""
    with api_clients() as make:
        yield make


@pytest.fixture
def mgr(swarm: SwarmBench, raw: Callable[[str], Any]) -> Iterator[str]:
    """A manager.id of this test's own: every service carrying it is removed at teardown."""
    manager_id = unique("xtm-swarm-test")
    yield manager_id
    client = raw(swarm.manager_host)
    for service in client.services(filters={"label": f"{LABEL_MANAGER}={manager_id}"}):
        client.remove_service(service["ID"])


def fresh_image(swarm: SwarmBench, raw: Callable[[str], Any], *, tag: str | None = None,
                command: tuple[str, ...] | None = None) -> str:
    """A new image in the swarm registry, with a layer of its own (so a digest no node has),
    built and pushed through the manager, which then forgets it. ``tag``: pushed under that tag (a
    tag moved to new bits); ``command``: the image's own command (a connector of the file has none)."""
    import docker.errors

    manager = raw(swarm.manager_host)
    repo, tag_base = swarm.ref().rsplit(":", 1)
    auth = {"username": swarm.username, "password": swarm.password}
    new_tag = tag or unique("fresh")
    manager.pull(repo, tag=tag_base, auth_config=auth)
    box = manager.create_container(f"{repo}:{tag_base}", command=["sh", "-c", f"echo {unique('bits')} > /xtm-fresh"],
                                   host_config=manager.create_host_config(network_mode="none"))
    try:
        manager.start(box)
        assert manager.wait(box, timeout=60)["StatusCode"] == 0
        changes = [f"CMD {json.dumps(list(command))}"] if command else None
        manager.commit(box, repository=repo, tag=new_tag, changes=changes)
    finally:
        manager.remove_container(box, force=True)
    out = manager.push(repo, tag=new_tag, auth_config=auth)
    assert "errorDetail" not in out, out
    manager.remove_image(f"{repo}:{new_tag}")
    try:
        manager.remove_image(f"{repo}:{tag_base}")
    except docker.errors.ImageNotFound:  # removed meanwhile by a test running at the same time
        pass
    return f"{repo}:{new_tag}"


def swarm_settings(make_settings: Callable[..., Settings], swarm: SwarmBench, *, chain: list[str] | None = None,
                   password: str | None = None, username: str | None = None, manager: str | None = None,
                   **swarm_opts: Any) -> Settings:
    overrides: dict[str, Any] = {"opencti.daemon.swarm.endpoint": swarm.manager_host,
                                 "opencti.daemon.swarm.constraints": ["node.role==worker"]}
    if manager is not None:
        overrides["manager.id"] = manager
    overrides.update({f"opencti.daemon.swarm.{k}": v for k, v in swarm_opts.items()})
    registry: dict[str, Any] = {"url": swarm.registry, "insecure": True}
    if password is not None:
        registry.update(username=username or swarm.username, password=password)
    overrides["opencti.daemon.docker.registry"] = registry
    if chain is not None:
        overrides["auth.chain"] = chain
    return make_settings(overrides)


def workload(settings: Settings, plugins: Plugins, image: str, name: str, manager_id: str, *,
             env: dict[str, str] | None = None, state: WorkloadState = "started",
             environ: dict[str, str] | None = None, command: tuple[str, ...] = QUICK_STOP) -> Workload:
    """A Workload as the core builds it: resolved image, the chain's one credential, the core's labels."""
    resolved = resolve_image(image, settings, plugins)
    resolution = resolve_credentials(resolved, settings, plugins, environ=environ or {})
    env = env or {"CONNECTOR_NAME": name}
    digest = config_hash(resolved.ref.normalized(), env, command)
    key = insecure_key(settings, resolution.registry)
    return Workload(name=name, connector_id=name, image=resolved, resolution=resolution,
                    tls=TlsDecision(verify=key is None, setting=key), env=env,
                    labels={LABEL_MANAGER: manager_id, LABEL_CONNECTOR: name, LABEL_HASH: digest},
                    state=state, config_hash=digest, command=command)


@pytest.fixture
def open_backend(mgr: str) -> Iterator[Callable[[Settings], SwarmBackend]]:
    backends: list[SwarmBackend] = []

    def make(settings: Settings) -> SwarmBackend:
        backends.append(SwarmBackend.connect(settings, environ={}))
        return backends[-1]

    yield make
    for backend in backends:
        backend.close()


def count_requests(backend: SwarmBackend) -> list[str]:
    """Every HTTP request the backend's client sends from now on (``METHOD /path``), appended to the list."""
    requests: list[str] = []
    send = backend.api.send

    def counting(request: Any, **kwargs: Any) -> Any:
        requests.append(f"{request.method} {request.path_url.split('?')[0]}")
        return send(request, **kwargs)

    backend.api.send = counting  # every HTTP request of the client goes through Session.send
    return requests


def log_size(swarm: SwarmBench) -> int:
    return Path(swarm.registry_log).stat().st_size


def authorized_pulls(swarm: SwarmBench, since: int, addr: str, digest: str) -> list[str]:
    """Registry log lines written after ``since``: authorised manifest requests from ``addr`` for ``digest``."""
    with open(swarm.registry_log, "rb") as log:
        log.seek(since)
        text = log.read().decode("utf-8", "replace")
    return [line for line in text.splitlines()
            if 'msg="authorized request"' in line and f'remoteaddr="{addr}:' in line
            and f"/manifests/{digest}" in line]


def running_nodes(raw_manager: Any, service_id: str) -> set[str]:
    names = {n["ID"]: n["Description"]["Hostname"] for n in raw_manager.nodes()}
    return {names[t["NodeID"]] for t in raw_manager.tasks(filters={"service": service_id})
            if t["Status"]["State"] == "running" and t["DesiredState"] == "running"}


def wait_observed(backend: SwarmBackend, manager_id: str, done: Callable[[Observed], bool]) -> Observed:
    deadline = time.monotonic() + WAIT_S
    while True:
        found = backend.observe({LABEL_MANAGER: manager_id})
        if found and done(found[0]) or time.monotonic() > deadline:
            assert found, "the service is gone"
            return found[0]
        time.sleep(0.5)


def prove_a_worker_pulled(swarm: SwarmBench, raw: Callable[[str], Any], service_id: str, image: str,
                          since: int) -> str:
    """The worker running the task has the image and asked the registry for it, authorised; the manager
    has not pulled it. Returns that worker's name."""
    manager = raw(swarm.manager_host)
    nodes = running_nodes(manager, service_id)
    assert len(nodes) == 1, nodes
    (node_name,) = nodes
    worker = next(w for w in swarm.workers if w.name == node_name)
    assert has_image(raw(worker.host), image), f"{worker.name} does not have {image}"
    assert not has_image(manager, image), "the manager pulled the image itself"
    digest = image.rsplit("@", 1)[1]
    assert authorized_pulls(swarm, since, worker.addr, digest), \
        f"no authorised manifest request from {worker.name} ({worker.addr}) for {digest}"
    return worker.name


def replace_file(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o644)
    tmp.replace(path)


@pytest.fixture
def temp_user(swarm: SwarmBench) -> Iterator[Callable[[str, str], None]]:
    """``set_user(name, password)``: add or change a user of the swarm registry's htpasswd (reread by
    the registry when it changes); the test's users are removed at teardown."""
    htpasswd = Path(swarm.htpasswd)
    added: set[str] = set()

    def without(text: str, names: set[str]) -> str:
        return "".join(line + "\n" for line in text.splitlines() if line and line.split(":", 1)[0] not in names)

    def set_user(name: str, password: str | None) -> None:
        kept = without(htpasswd.read_text(encoding="utf-8"), {name})
        if password is not None:
            line = subprocess.run(["htpasswd", "-Bbn", name, password], capture_output=True, text=True,
                                  check=True).stdout.strip()
            kept += line + "\n"
            added.add(name)
        replace_file(htpasswd, kept)
        time.sleep(1.5)  # the registry rereads the file when it changes (within a second here)

    yield set_user
    if added:
        replace_file(htpasswd, without(htpasswd.read_text(encoding="utf-8"), added))


def stopped_then_revoked(swarm: SwarmBench, raw: Callable[[str], Any], mgr: str,
                         open_backend: Callable[..., SwarmBackend], make_settings: Callable[..., Settings],
                         plugins: Plugins, temp_user: Callable[..., None]) -> tuple[SwarmBackend, Workload, Any, str]:
    """A stopped service of a fresh image, created with a user of its own, whose credential then stops
    working: (backend, workload, applied, password)."""
    user, password = unique("swuser"), unique("swpass")
    temp_user(user, password)
    settings = swarm_settings(make_settings, swarm, password=password, username=user)
    wl = workload(settings, plugins, fresh_image(swarm, raw), unique("xtm-sw"), mgr, state="stopped")
    backend = open_backend(settings)
    created = backend.apply(wl, None)
    assert created.observed.state == "stopped" and created.observed.replicas_wanted == 0
    temp_user(user, None)  # the credential the service holds no longer works
    return backend, wl, created, password


# ---------------------------------------------------------------- the real swarm

PROVIDERS = ("config", "docker-config", "keychain")


@pytest.mark.integration
@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_providers_credential_reaches_the_worker_that_pulls(
    provider: str, swarm: SwarmBench, raw: Callable[[str], Any], mgr: str, open_backend: Callable[..., SwarmBackend],
    make_settings: Callable[..., Settings], plugins: Plugins, pass_store: PassStore, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    image = fresh_image(swarm, raw)
    assert not [n.name for n in swarm.nodes if has_image(raw(n.host), image)]
    home = tmp_path / "home"
    environ: dict[str, str] = {"HOME": str(home)}
    if provider == "config":
        settings = swarm_settings(make_settings, swarm, password=swarm.password)
    else:
        settings = swarm_settings(make_settings, swarm)
        docker_dir = home / ".docker"
        docker_dir.mkdir(parents=True, exist_ok=True)
        if provider == "docker-config":
            auth = base64.b64encode(f"{swarm.username}:{swarm.password}".encode()).decode()
            (docker_dir / "config.json").write_text(json.dumps({"auths": {swarm.registry: {"auth": auth}}}))
        else:
            pass_store.store(swarm.registry, swarm.username, swarm.password)
            (docker_dir / "config.json").write_text(json.dumps({"credHelpers": {swarm.registry: "pass"}}))
            environ = {**pass_store.environ, "HOME": str(home), "PATH": SYSTEM_PATH}
    name = unique("xtm-sw")
    wl = workload(settings, plugins, image, name, mgr, environ=environ)
    assert wl.resolution.source == provider
    backend = open_backend(settings)
    since = log_size(swarm)

    applied = backend.apply(wl, None)

    assert applied.action == "created"
    observed = applied.observed
    assert observed.state == "started" and observed.replicas_wanted == 1 and observed.replicas_running == 1
    assert observed.image.startswith(image + "@sha256:")  # tag and digest
    assert observed.labels[LABEL_HASH] == wl.config_hash and observed.connector_id == name
    worker = prove_a_worker_pulled(swarm, raw, observed.id, observed.image, since)
    assert observed.detail == f"1/1 running on {worker}"
    containers = raw(next(w.host for w in swarm.workers if w.name == worker)).containers(
        filters={"label": f"{LABEL_MANAGER}={mgr}"})
    assert len(containers) == 1 and containers[0]["Labels"][LABEL_HASH] == wl.config_hash  # on the task too
    text = repr(applied) + json.dumps(observed.to_dict()) + caplog.text
    assert_no_secrets(text, [swarm.password, base64.b64encode(f"{swarm.username}:{swarm.password}".encode()).decode()])
    if provider == "keychain":
        pass_store.erase(swarm.registry)


@pytest.mark.integration
def test_no_credential_is_authentication_required_with_the_trace(
    swarm: SwarmBench, raw: Callable[[str], Any], mgr: str, open_backend: Callable[..., SwarmBackend],
    make_settings: Callable[..., Settings], plugins: Plugins,
) -> None:
    settings = swarm_settings(make_settings, swarm)  # the default chain: nothing has a credential
    wl = workload(settings, plugins, fresh_image(swarm, raw), unique("xtm-sw"), mgr)
    assert wl.credentials.anonymous
    with pytest.raises(AuthenticationRequired) as caught:
        open_backend(settings).apply(wl, None)
    assert caught.value.exit_code == 6
    message = caught.value.message
    assert "credentials sent: no credentials (anonymous pull)" in message
    assert "config: not-found" in message and "docker-config: not-found" in message  # the trace
    assert not raw(swarm.manager_host).services(filters={"label": f"{LABEL_MANAGER}={mgr}"})


@pytest.mark.integration
def test_a_wrong_password_is_rejected_naming_the_provider(
    swarm: SwarmBench, raw: Callable[[str], Any], mgr: str, open_backend: Callable[..., SwarmBackend],
    make_settings: Callable[..., Settings], plugins: Plugins,
) -> None:
    wrong = unique("wrong-pw")
    settings = swarm_settings(make_settings, swarm, password=wrong)
    wl = workload(settings, plugins, fresh_image(swarm, raw), unique("xtm-sw"), mgr)
    with pytest.raises(CredentialsRejected) as caught:
        open_backend(settings).apply(wl, None)
    assert caught.value.exit_code == 7
    assert f"user {swarm.username!r} from provider 'config'" in caught.value.message
    assert "provider 'config'" in (caught.value.hint or "")
    assert_no_secrets(str(caught.value), [wrong])
    assert not raw(swarm.manager_host).services(filters={"label": f"{LABEL_MANAGER}={mgr}"})


@pytest.mark.integration
def test_a_missing_tag_is_image_not_found(
    swarm: SwarmBench, raw: Callable[[str], Any], mgr: str, open_backend: Callable[..., SwarmBackend],
    make_settings: Callable[..., Settings], plugins: Plugins,
) -> None:
    settings = swarm_settings(make_settings, swarm, password=swarm.password)
    missing = f"{swarm.ref().rsplit(':', 1)[0]}:{unique('no-such-tag')}"
    with pytest.raises(ImageNotFound) as caught:
        open_backend(settings).apply(workload(settings, plugins, missing, unique("xtm-sw"), mgr), None)
    assert caught.value.exit_code == 10


@pytest.mark.integration
def test_a_start_rejected_for_its_stored_credential_is_found_scaled_to_0_then_fixed_by_apply(
    swarm: SwarmBench, raw: Callable[[str], Any], mgr: str, open_backend: Callable[..., SwarmBackend],
    make_settings: Callable[..., Settings], plugins: Plugins, temp_user: Callable[..., None],
) -> None:
    """The task path: the manager resolved the digest, then the credential stopped working before a node
    pulled. The rejected task is found within the bounded wait, not retried forever."""
    backend, wl, created, password = stopped_then_revoked(swarm, raw, mgr, open_backend, make_settings, plugins,
                                                          temp_user)

    with pytest.raises(CredentialsRejected) as caught:
        backend.set_state(created.observed, "started")
    assert "scaled to 0" in caught.value.message and "No such image" in caught.value.message
    (failed,) = backend.observe({LABEL_MANAGER: mgr})
    assert failed.state == "failed" and failed.replicas_wanted == 0 and failed.labels.get(LABEL_FAILED)
    assert isinstance(failed.error, CredentialsRejected) and "provider 'config'" in failed.error.message
    assert_no_secrets(str(caught.value) + failed.detail + json.dumps(failed.to_dict()), [password])

    good = swarm_settings(make_settings, swarm, password=swarm.password)  # the operator fixes it
    fixed = backend.apply(workload(good, plugins, wl.image.input, wl.name, mgr), failed)
    assert fixed.action == "updated" and fixed.observed.id == failed.id
    assert fixed.observed.state == "started" and LABEL_FAILED not in fixed.observed.labels


@pytest.mark.integration
def test_stop_start_scale_0_and_1(
    swarm: SwarmBench, raw: Callable[[str], Any], mgr: str, open_backend: Callable[..., SwarmBackend],
    make_settings: Callable[..., Settings], plugins: Plugins,
) -> None:
    settings = swarm_settings(make_settings, swarm, password=swarm.password)
    backend = open_backend(settings)
    stopped = backend.apply(workload(settings, plugins, swarm.ref(), unique("xtm-sw"), mgr, state="stopped"), None)
    assert (stopped.action, stopped.observed.state, stopped.observed.replicas_wanted) == ("created", "stopped", 0)
    assert not running_nodes(raw(swarm.manager_host), stopped.observed.id)
    started = backend.set_state(stopped.observed, "started")
    assert started.state == "started" and started.replicas_running == 1
    again = backend.set_state(started, "stopped")
    assert again.state == "stopped" and again.replicas_wanted == 0


@pytest.mark.integration
def test_an_env_change_is_a_rolling_update_keeping_id_and_digest_and_apply_twice_writes_nothing(
    swarm: SwarmBench, raw: Callable[[str], Any], mgr: str, open_backend: Callable[..., SwarmBackend],
    make_settings: Callable[..., Settings], plugins: Plugins,
) -> None:
    settings = swarm_settings(make_settings, swarm, password=swarm.password)
    backend = open_backend(settings)
    name = unique("xtm-sw")
    first = backend.apply(workload(settings, plugins, swarm.ref(), name, mgr, env={"LEVEL": "1"}), None)
    manager = raw(swarm.manager_host)
    before = manager.inspect_service(first.observed.id)

    changed = workload(settings, plugins, swarm.ref(), name, mgr, env={"LEVEL": "2"})
    updated = backend.apply(changed, first.observed)

    assert updated.action == "updated" and updated.observed.id == first.observed.id
    after = manager.inspect_service(first.observed.id)
    assert after["ID"] == before["ID"] and after["Version"]["Index"] > before["Version"]["Index"]
    assert f"version {before['Version']['Index']} -> " in updated.detail
    assert after["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["LEVEL=2"]
    assert after["Spec"]["UpdateConfig"]["FailureAction"] == "rollback"
    assert updated.observed.image == first.observed.image  # the same digest
    assert updated.observed.config_hash == changed.config_hash and updated.observed.state == "started"

    second = backend.apply(changed, updated.observed)  # the same again: no write
    assert second.action == "unchanged"
    assert manager.inspect_service(first.observed.id)["Version"] == after["Version"]


@pytest.mark.integration
def test_a_rotated_password_goes_with_the_next_update_and_new_tasks_pull_with_it(
    swarm: SwarmBench, raw: Callable[[str], Any], mgr: str, open_backend: Callable[..., SwarmBackend],
    make_settings: Callable[..., Settings], plugins: Plugins, temp_user: Callable[..., None],
) -> None:
    user, old, new = unique("rotuser"), unique("old-pw"), unique("new-pw")
    temp_user(user, old)
    name = unique("xtm-sw")
    old_settings = swarm_settings(make_settings, swarm, password=old, username=user)
    backend = open_backend(old_settings)
    first = backend.apply(workload(old_settings, plugins, fresh_image(swarm, raw), name, mgr), None)
    assert first.observed.state == "started"

    temp_user(user, new)  # rotated at the registry: the old password is refused from now on
    new_settings = swarm_settings(make_settings, swarm, password=new, username=user)
    image = fresh_image(swarm, raw)  # an image no node has: a new task must pull
    since = log_size(swarm)
    updated = backend.apply(workload(new_settings, plugins, image, name, mgr), first.observed)

    assert updated.action == "updated" and updated.observed.id == first.observed.id
    assert updated.observed.state == "started" and updated.observed.image.startswith(image + "@sha256:")
    prove_a_worker_pulled(swarm, raw, updated.observed.id, updated.observed.image, since)


@pytest.mark.integration
def test_a_password_rotated_alone_reaches_the_service_on_the_next_pass_and_new_tasks_pull_with_it(
    swarm: SwarmBench, raw: Callable[[str], Any], mgr: str, open_backend: Callable[..., SwarmBackend],
    make_settings: Callable[..., Settings], plugins: Plugins, temp_user: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Same image and env: the config hash does not change, only the password (at the registry and in the
    settings). The tag is then moved to bits no node has, so the update's new task must pull."""
    user, old, new = unique("rotuser"), unique("old-pw"), unique("new-pw")
    temp_user(user, old)
    image = fresh_image(swarm, raw, command=QUICK_STOP)
    name = unique("xtm-sw")
    fleet = parse_connectors({"connectors": [{"id": name, "name": name, "image": image,
                                              "env": {"LEVEL": "1"}}]}, "test")
    old_settings = swarm_settings(make_settings, swarm, password=old, username=user, manager=mgr)
    backend = open_backend(old_settings)
    manager = raw(swarm.manager_host)
    outputs: list[str] = []

    def run_pass(settings: Settings) -> Any:
        result = Reconciler(backend, settings, plugins, stop_timeout=1).run_pass(fleet)
        assert result.failed == [], [s.to_dict() for s in result.failed]
        outputs.append(json.dumps(result.to_dict()))
        return result

    (deployed,) = run_pass(old_settings).steps
    assert deployed.action == "deploy"
    (service,) = manager.services(filters={"label": f"{LABEL_MANAGER}={mgr}"})
    held = service["Spec"]["Labels"][LABEL_CREDENTIAL_ID]
    requests = count_requests(backend)
    (steady,) = run_pass(old_settings).steps  # the same credential: nothing to do, in two requests
    assert steady.action == "nothing" and [r.split("/")[-1] for r in requests] == ["services", "tasks"], requests
    before_tasks = {t["ID"] for t in manager.tasks(filters={"service": service["ID"]})}

    temp_user(user, new)  # rotated at the registry: the old password is refused from now on
    moved = fresh_image(swarm, raw, tag=image.rsplit(":", 1)[1], command=QUICK_STOP)  # the same tag, new bits
    assert moved == image
    new_settings = swarm_settings(make_settings, swarm, password=new, username=user, manager=mgr)
    since = log_size(swarm)
    requests.clear()
    (rotated,) = run_pass(new_settings).steps

    assert (rotated.action, rotated.reason, rotated.result) == ("replace", ROTATED, "ok")
    after = manager.inspect_service(service["ID"])  # the same service, a newer version
    assert after["ID"] == service["ID"] and after["Version"]["Index"] > service["Version"]["Index"]
    assert after["Spec"]["Labels"][LABEL_CREDENTIAL_ID] not in (held, None)
    assert after["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["LEVEL=1"]
    (seen,) = backend.observe({LABEL_MANAGER: mgr})
    assert seen.state == "started" and seen.image.startswith(image + "@sha256:")
    assert seen.image != service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]  # the moved tag's bits
    assert {t["ID"] for t in manager.tasks(filters={"service": seen.id}) if t["Status"]["State"] == "running"
            } - before_tasks  # a new task runs
    prove_a_worker_pulled(swarm, raw, seen.id, seen.image, since)  # it pulled, with the new password

    requests.clear()
    (second,) = run_pass(new_settings).steps  # the next pass: nothing to write
    assert second.action == "nothing" and [r.split("/")[-1] for r in requests] == ["services", "tasks"], requests
    assert manager.inspect_service(service["ID"])["Version"] == after["Version"]
    key = backend.fingerprints.path.read_bytes()
    labels = [held, after["Spec"]["Labels"][LABEL_CREDENTIAL_ID]]
    assert_no_secrets("\n".join(outputs) + json.dumps(seen.to_dict()) + caplog.text,
                      [old, new, key.hex(), base64.b64encode(key).decode(), *labels])


@pytest.mark.integration
def test_a_stopped_worker_gets_its_task_rescheduled_and_observe_says_where(
    swarm: SwarmBench, raw: Callable[[str], Any], mgr: str, open_backend: Callable[..., SwarmBackend],
    make_settings: Callable[..., Settings], plugins: Plugins,
) -> None:
    settings = swarm_settings(make_settings, swarm, password=swarm.password)
    backend = open_backend(settings)
    applied = backend.apply(workload(settings, plugins, swarm.ref(), unique("xtm-sw"), mgr), None)
    (first_node,) = running_nodes(raw(swarm.manager_host), applied.observed.id)
    worker = next(w for w in swarm.workers if w.name == first_node)
    other = next(w for w in swarm.workers if w.name != first_node)
    pid = int(Path(worker.pidfile).read_text().strip())
    os.kill(pid, signal.SIGTERM)
    try:
        moved = wait_observed(backend, mgr, lambda o: o.state == "started" and o.detail.endswith(other.name))
        assert moved.detail == f"1/1 running on {other.name}", moved
        assert moved.id == applied.observed.id
        assert running_nodes(raw(swarm.manager_host), moved.id) == {other.name}
    finally:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.2)
        run = subprocess.run([str(ROOT / "scripts" / "bench-services"), "swarm", "up"], capture_output=True,
                             text=True, timeout=180, check=False)
        assert run.returncode == 0, run.stderr


@pytest.mark.integration
def test_remove_logs_and_an_unmanaged_service_left_alone(
    swarm: SwarmBench, raw: Callable[[str], Any], mgr: str, open_backend: Callable[..., SwarmBackend],
    make_settings: Callable[..., Settings], plugins: Plugins,
) -> None:
    import docker.errors
    import docker.types

    settings = swarm_settings(make_settings, swarm, password=swarm.password)
    backend = open_backend(settings)
    manager = raw(swarm.manager_host)
    unmanaged = unique("xtm-sw-unmanaged")
    manager.create_service(docker.types.TaskTemplate(container_spec=docker.types.ContainerSpec(
        image="busybox-never-pulled:1", command=["true"])), name=unmanaged,
        mode=docker.types.ServiceMode("replicated", replicas=0), labels={"xtm-test": "unmanaged"})
    try:
        name = unique("xtm-sw")
        applied = backend.apply(workload(settings, plugins, swarm.ref(), name, mgr, command=LOG_CMD), None)
        assert [o.name for o in backend.observe({LABEL_MANAGER: mgr})] == [name]  # not the unmanaged one

        deadline = time.monotonic() + WAIT_S
        while "line-4" not in backend.logs(applied.observed, 2) and time.monotonic() < deadline:
            time.sleep(0.3)
        node = next(iter(running_nodes(manager, applied.observed.id)))
        assert backend.logs(applied.observed, 2) == f"{node} | line-3\n{node} | line-4\n"  # the tail only

        # a name taken by a service this manager does not manage: refused, untouched
        with pytest.raises(ContainerError, match="belongs to no xtm-composer manager"):
            backend.apply(workload(settings, plugins, swarm.ref(), unmanaged, mgr), None)
        alien = Observed(id=manager.inspect_service(unmanaged)["ID"], name=unmanaged,
                         labels={LABEL_MANAGER: mgr}, state="stopped", image="")
        with pytest.raises(ContainerNotFound, match="not managed by this manager"):
            backend.remove(alien)
        with pytest.raises(ContainerNotFound):
            backend.set_state(alien, "started")

        backend.remove(applied.observed)
        with pytest.raises(docker.errors.NotFound):
            manager.inspect_service(applied.observed.id)
        assert backend.observe({LABEL_MANAGER: mgr}) == []
        spec = manager.inspect_service(unmanaged)["Spec"]
        assert spec["Mode"]["Replicated"]["Replicas"] == 0 and spec["Labels"] == {"xtm-test": "unmanaged"}
    finally:
        manager.remove_service(unmanaged)


@pytest.mark.integration
def test_observe_costs_at_most_two_requests(
    swarm: SwarmBench, mgr: str, open_backend: Callable[..., SwarmBackend],
    make_settings: Callable[..., Settings], plugins: Plugins,
) -> None:
    settings = swarm_settings(make_settings, swarm, password=swarm.password)
    backend = open_backend(settings)
    requests = count_requests(backend)
    assert backend.observe({LABEL_MANAGER: mgr}) == []
    assert len(requests) == 1  # no service: no task query
    for _ in range(2):
        backend.apply(workload(settings, plugins, swarm.ref(), unique("xtm-sw"), mgr), None)
    requests.clear()
    found = backend.observe({LABEL_MANAGER: mgr})
    assert [o.state for o in found] == ["started", "started"]
    assert [r.split("/")[-1] for r in requests] == ["services", "tasks"], requests


@pytest.mark.integration
def test_only_a_manager_is_accepted(
    swarm: SwarmBench, bench: Any, make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(RuntimeUnavailable, match="is a swarm worker") as worker:
        SwarmBackend.connect(make_settings({"opencti.daemon.swarm.endpoint": swarm.workers[0].host}), environ={})
    assert swarm.manager.addr in worker.value.message and "docker node promote" in (worker.value.hint or "")
    # DOCKER_HOST when the setting is unset: the main bench's engine, in no swarm
    with pytest.raises(RuntimeUnavailable, match="not part of a swarm") as single:
        SwarmBackend.connect(make_settings(), environ={"DOCKER_HOST": bench.docker_host})
    assert "docker swarm init" in (single.value.hint or "") and bench.docker_host in single.value.message
    assert isinstance(single.value, ComposerError) and single.value.exit_code == 5
    assert not isinstance(single.value, RegistryError)


@pytest.mark.integration
def test_the_swarm_options_reach_the_service_and_its_task(
    swarm: SwarmBench, raw: Callable[[str], Any], mgr: str, open_backend: Callable[..., SwarmBackend],
    make_settings: Callable[..., Settings], plugins: Plugins,
) -> None:
    settings = swarm_settings(make_settings, swarm, password=swarm.password, network="host",
                              resources={"cpus": 0.5, "memory": "64m"},
                              restart_policy={"condition": "on-failure", "delay": 1, "max_attempts": 3})
    applied = open_backend(settings).apply(workload(settings, plugins, swarm.ref(), unique("xtm-sw"), mgr), None)
    assert applied.observed.state == "started"
    manager = raw(swarm.manager_host)
    template = manager.inspect_service(applied.observed.id)["Spec"]["TaskTemplate"]
    assert template["Resources"]["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 64 * 1024**2}
    assert template["RestartPolicy"] == {"Condition": "on-failure", "Delay": 1_000_000_000, "MaxAttempts": 3}
    assert template["Placement"]["Constraints"] == ["node.role==worker"]
    (node,) = running_nodes(manager, applied.observed.id)
    worker = raw(next(w.host for w in swarm.workers if w.name == node))
    (container,) = worker.containers(filters={"label": f"{LABEL_MANAGER}={mgr}"})
    host_config = worker.inspect_container(container["Id"])["HostConfig"]
    assert host_config["NetworkMode"] == "host"  # the node's network: egress included
    assert host_config["Memory"] == 64 * 1024**2 and host_config["NanoCpus"] == 500_000_000


@pytest.mark.integration
def test_a_first_deploy_whose_tasks_are_rejected_is_scaled_to_0_with_the_trace(
    swarm: SwarmBench, raw: Callable[[str], Any], mgr: str, open_backend: Callable[..., SwarmBackend],
    make_settings: Callable[..., Settings], plugins: Plugins, temp_user: Callable[..., None],
) -> None:
    """The create path: the digest was resolved (and reused within the pass, as for many connectors of
    one image) while the credential worked; it stops working before the node pulls."""
    user, password = unique("swuser"), unique("swpass")
    temp_user(user, password)
    settings = swarm_settings(make_settings, swarm, password=password, username=user)
    image = fresh_image(swarm, raw)
    backend = open_backend(settings)
    backend.apply(workload(settings, plugins, image, unique("xtm-sw"), mgr, state="stopped"), None)
    temp_user(user, None)
    name = unique("xtm-sw")

    with pytest.raises(CredentialsRejected) as caught:
        backend.apply(workload(settings, plugins, image, name, mgr), None)

    message = caught.value.message
    assert caught.value.exit_code == 7 and "No such image" in message and "task rejected on xtmsw-n" in message
    assert "scaled to 0" in message and f"user {user!r} from provider 'config'" in message
    assert "config: found" in message  # the chain's trace
    (service,) = raw(swarm.manager_host).services(filters={"name": name})
    assert service["Spec"]["Mode"]["Replicated"]["Replicas"] == 0  # not left retrying forever
    (seen,) = [o for o in backend.observe({LABEL_MANAGER: mgr}) if o.name == name]
    assert seen.state == "failed" and isinstance(seen.error, CredentialsRejected)
    assert_no_secrets(str(caught.value) + json.dumps(seen.to_dict()), [password])


@pytest.mark.integration
def test_rejected_tasks_of_a_running_service_are_retried_with_the_new_credential_by_apply(
    swarm: SwarmBench, raw: Callable[[str], Any], mgr: str, open_backend: Callable[..., SwarmBackend],
    make_settings: Callable[..., Settings], plugins: Plugins, temp_user: Callable[..., None],
) -> None:
    """The same config hash (a credential is not part of it): apply sends the header again, new tasks pull with it."""
    backend, wl, created, _ = stopped_then_revoked(swarm, raw, mgr, open_backend, make_settings, plugins, temp_user)
    manager = raw(swarm.manager_host)  # scaled behind composer's back: the tasks pull with the dead credential
    service = manager.inspect_service(created.observed.id)
    spec = service["Spec"]
    manager.update_service(service["ID"], version=service["Version"]["Index"], task_template=spec["TaskTemplate"],
                           name=spec["Name"], labels=spec["Labels"], mode={"Replicated": {"Replicas": 1}},
                           update_config=spec.get("UpdateConfig"), fetch_current_spec=False)
    failed = wait_observed(backend, mgr, lambda o: o.state == "failed")
    assert isinstance(failed.error, CredentialsRejected), failed
    assert "task rejected on xtmsw-n" in failed.detail and LABEL_FAILED not in failed.labels

    good = swarm_settings(make_settings, swarm, password=swarm.password)
    again = workload(good, plugins, wl.image.input, wl.name, mgr)
    assert again.config_hash == failed.config_hash
    fixed = backend.apply(again, failed)
    assert fixed.action == "updated" and fixed.observed.state == "started", fixed


@pytest.mark.integration
def test_a_connector_that_exits_is_failed_but_apply_of_the_same_config_writes_nothing(
    swarm: SwarmBench, raw: Callable[[str], Any], mgr: str, open_backend: Callable[..., SwarmBackend],
    make_settings: Callable[..., Settings], plugins: Plugins,
) -> None:
    """A crash is not a pull failure: no credential to resend, nothing to update every pass."""
    settings = swarm_settings(make_settings, swarm, password=swarm.password, restart_policy={"condition": "none"})
    backend = open_backend(settings)
    wl = workload(settings, plugins, swarm.ref(), unique("xtm-sw"), mgr, command=("sh", "-c", "exit 3"))
    created = backend.apply(wl, None)
    crashed = wait_observed(backend, mgr, lambda o: o.state == "failed")
    assert crashed.error is None and "task failed on xtmsw-n" in crashed.detail, crashed
    assert "non-zero exit (3)" in crashed.detail and crashed.restart_count == 1
    version = raw(swarm.manager_host).inspect_service(created.observed.id)["Version"]
    assert backend.apply(wl, crashed).action == "unchanged"
    assert raw(swarm.manager_host).inspect_service(created.observed.id)["Version"] == version


def test_deploy_of_one_name_sends_a_rotated_credential_on_a_backend_storing_it(
    make_settings: Callable[..., Settings], plugins: Plugins,
) -> None:
    """`xtm-composer deploy NAME` takes the same decision as a pass: same config, new password ->
    the backend is asked to apply it, not answered "unchanged"."""
    from composer_core.engine.workloads import build_workload, deploy_named
    from composer_core.images.resolve import resolve_image

    backend = StoringBackend()

    def deploy(password: str) -> str:
        settings = make_settings({"manager.id": "m", "opencti.daemon.docker.registry": {
            "url": "registry.example:5000", "username": "alice", "password": password}})
        resolved = resolve_image("xtm/connector:1", settings, plugins)
        workload = build_workload(resolved, "one", {}, manager="m", connector_id="one",
                                  state="started", settings=settings, plugins=plugins, environ={})
        action, _ = deploy_named(backend, workload, plugins)
        return action

    assert deploy("old-pw-1") == "created"
    assert deploy("old-pw-1") == "unchanged"
    assert deploy("new-pw-2") == "updated" and backend.held["one"] == ("alice", "new-pw-2")
    assert deploy("new-pw-2") == "unchanged"
