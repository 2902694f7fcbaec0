"""The deploy flow: unit rules first, then idempotence, replacement and cleanup on both engines."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from composer_core import hookimpl
from composer_core.auth.chain import resolve_credentials
from composer_core.engine.deploy import (
    Deployer,
    config_hash,
    container_spec,
    explain_pull_failure,
    parse_env,
    validate_name,
)
from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_HASH, LABEL_MANAGER
from composer_core.errors import (
    AuthenticationRequired,
    ContainerError,
    CredentialsRejected,
    ImageNotFound,
    RegistryTLSError,
    RegistryUnreachable,
    UsageError,
)
from composer_core.images.resolve import resolve_image
from composer_core.settings import Settings
from composer_core.types import Anonymous, CredentialProvider, Credentials, Found
from tests.conftest import assert_no_secrets
from tests.engine_helpers import (
    QUICK_STOP,
    create_unmanaged,
    free_port,
    raw_client,
    remove_by_name,
    unique,
)

# --- rules (no engine) ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ab", "connector-misp", "a.b_c-1", "X9"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "a", "-ab", ".ab", "a b", "a/b", "ab:1", "é1"])
def test_invalid_names_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError) as caught:
        validate_name(name)
    assert caught.value.exit_code == 2


def test_parse_env_keeps_equals_in_values() -> None:
    assert parse_env(["A=1", "URL=http://x/?a=b", "EMPTY="]) == {"A": "1", "URL": "http://x/?a=b",
                                                                "EMPTY": ""}


@pytest.mark.parametrize("pair", ["=value", "NOEQUALS", ""])
def test_parse_env_rejects_bad_pairs_without_echoing_values(pair: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_env([pair])
    assert caught.value.exit_code == 2
    if pair == "=value":
        assert "value" not in caught.value.message


@pytest.mark.parametrize(("pair", "reason"), [
    ("NEW\nLINE=x", "control character"), ("N\0UL=x", "control character"),
    ("TOKEN=nul-secret\0tail", "NUL character (at offset 10 of 15)"),
])
def test_parse_env_refuses_control_characters_and_nul_values_without_echoing_them(
        pair: str, reason: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_env([pair])
    assert caught.value.exit_code == 2 and reason in caught.value.message
    assert "nul-secret" not in str(caught.value) and "tail" not in str(caught.value)


def test_deploy_refuses_a_nul_value_before_any_engine_call(make_settings: Callable[..., Settings],
                                                           plugins: Any) -> None:
    class Untouchable:
        """Any use of the runtime fails the test: validation comes before the engine."""
        name = endpoint = "untouchable"

        def __getattr__(self, attr: str) -> Any:
            raise AssertionError(f"the engine was called ({attr}) before the env was validated")

    deployer = Deployer(Untouchable(), make_settings({}), plugins)  # type: ignore[arg-type]
    with pytest.raises(UsageError) as caught:
        deployer.deploy("alpine:3", "ab", {"API": "nul-secret\0"})
    assert "NUL character" in caught.value.message and "nul-secret" not in str(caught.value)


def test_secret_looking_env_values_are_masked_everywhere() -> None:
    from composer_core import redact
    from composer_core.engine.deploy import validate_env

    validate_env({"OPENCTI_TOKEN": "tok-123456", "MISP_API_KEY": "key-654321", "URL": "http://misp"})
    assert redact.scrub("tok-123456 key-654321 http://misp") == "****** ****** http://misp"


def test_config_hash_is_canonical() -> None:
    one = config_hash("127.0.0.1:5000/a:1", {"A": "1", "B": "2"})
    assert one == config_hash("127.0.0.1:5000/a:1", {"B": "2", "A": "1"})
    assert one != config_hash("127.0.0.1:5000/a:2", {"A": "1", "B": "2"})
    assert one != config_hash("127.0.0.1:5000/a:1", {"A": "1", "B": "3"})
    assert one != config_hash("127.0.0.1:5000/a:1", {"A": "1", "B": "2"}, ["sh"])
    assert len(one) == 64


def _resolution(make_settings: Callable[..., Settings], plugins: Any, overrides: dict[str, Any],
                image: str) -> Any:
    settings = make_settings(overrides)
    return resolve_credentials(resolve_image(image, settings, plugins), settings, plugins)


def test_explained_errors_carry_trace_and_remedy(make_settings: Callable[..., Settings],
                                                 plugins: Any) -> None:
    """The engine text is kept; what was sent and the chain are added (no engine needed)."""
    secret = "s3cret-" + os.urandom(4).hex()
    resolution = _resolution(make_settings, plugins, {"opencti.daemon.docker.registry": {
        "url": "reg.example:5000", "username": "robot", "password": secret}},
        "reg.example:5000/team/app:1")
    rejected = explain_pull_failure(CredentialsRejected("unauthorized: authentication required"),
                                    resolution, "docker")
    text = str(rejected)
    assert isinstance(rejected, CredentialsRejected)
    assert "unauthorized" in text and "provider 'config'" in text and "user 'robot'" in text
    assert "docker said: unauthorized: authentication required" in text
    assert "config: found" in text and "docker login reg.example:5000" in text
    assert_no_secrets(text, [secret])

    anonymous = _resolution(make_settings, plugins, {}, "reg.example:5000/team/app:1")
    required = explain_pull_failure(AuthenticationRequired("no basic auth credentials"),
                                    anonymous, "podman")
    assert "authentication required" in str(required) and "anonymous" in str(required)
    plain = explain_pull_failure(RegistryTLSError("http: server gave HTTP response to HTTPS client"),
                                 anonymous, "podman")
    assert "plain HTTP" in str(plain) and "insecure: true" in (plain.hint or "")
    down = explain_pull_failure(RegistryUnreachable("dial tcp: connect: connection refused"),
                                anonymous, "docker")
    assert "connection refused" in str(down) and "network" in (down.hint or "")


# --- what engines receive: a TLS decision, their own wire form of one credential ---------------


def test_tls_decision_names_the_setting_that_skips_verification(make_settings: Callable[..., Settings]) -> None:
    from composer_core.engine.tls import TlsDecision, tls_decision

    settings = make_settings({"opencti.daemon.docker.registries": [
        {"url": "https://reg.example:5000", "insecure": True}, {"url": "other.example"}]})
    assert tls_decision(settings, "reg.example:5000") == TlsDecision(
        verify=False, setting="opencti.daemon.docker.registries[0].insecure")
    assert tls_decision(settings, "other.example") == TlsDecision(verify=True, setting=None)
    assert tls_decision(make_settings({}), "reg.example:5000") == TlsDecision(True, None)


WIRE_SECRET = "wire-pw-" + os.urandom(4).hex()
WIRE_CASES = [  # (credentials, Docker auth_config, Podman per-registry map)
    (Credentials(registry="reg.example:5000", source="config", username="robot",
                 password=WIRE_SECRET),
     {"serveraddress": "reg.example:5000", "username": "robot", "password": WIRE_SECRET},
     {"reg.example:5000": {"username": "robot", "password": WIRE_SECRET}}),
    (Credentials(registry="docker.io", source="keychain", username="<token>",
                 identity_token="tok-" + WIRE_SECRET),
     {"serveraddress": "docker.io", "identitytoken": "tok-" + WIRE_SECRET},
     {"docker.io": {"identitytoken": "tok-" + WIRE_SECRET}}),
    (Credentials(registry="reg.example", source="config", username="only-user"),
     {"serveraddress": "reg.example", "username": "only-user", "password": ""},
     {"reg.example": {"username": "only-user", "password": ""}}),
    (Anonymous, {}, {}),
]


def _memory_workload(values: dict[str, str], command: tuple[str, ...] | None = None) -> Any:
    from composer_core.auth.chain import Resolution
    from composer_core.engine.tls import TlsDecision
    from composer_core.engine.workloads import workload_of
    from composer_core.images.reference import ImageRef
    from composer_core.types import ResolvedImage

    text = "docker.io/library/busybox:1.36"
    resolved = ResolvedImage(input=text, ref=ImageRef.parse(text))
    spec = container_spec(resolved, "xtm-rollback", values, manager="m", connector_id="c1",
                          command=command)
    return workload_of(resolved, spec, connector_id="c1", state="started",
                       resolution=Resolution(resolved, "docker.io", Anonymous, ()),
                       tls=TlsDecision(verify=True, setting=None))


@pytest.mark.parametrize(("failing", "after"), [
    ("rename", 0),  # the old container cannot step aside
    ("rename", 1),  # it stepped aside, then the new one cannot take the name
    ("start", 0),  # the new one has the name but cannot start
])
def test_a_failed_replacement_rolls_back_to_the_old_container(failing: str, after: int) -> None:
    """The rollback of a replacement, on the in-memory engine (no engine needed): whichever step
    fails, the old container keeps its name and keeps running, and the new one is gone."""
    from composer_core.testing import InMemoryBackend

    backend = InMemoryBackend()
    old = backend.apply(_memory_workload({"A": "1"}), None).observed
    (current,) = backend.observe({LABEL_MANAGER: "m"})
    backend.fail_request(failing, ContainerError(f"{failing} refused by the engine"), after=after)
    backend.reset_counts()
    with pytest.raises(ContainerError, match="refused by the engine"):
        backend.apply(_memory_workload({"A": "2"}), current)
    (left,) = backend.runtime.list({})
    assert (left.id, left.name, left.status) == (old.id, "xtm-rollback", "running")
    assert left.labels[LABEL_HASH] == current.config_hash  # the old config, untouched
    removed = [target for kind, target in backend.runtime.journal if kind == "remove"]
    assert len(removed) == 1 and removed[0] != old.id  # the new container, and only it
    assert ("stop", old.id) not in backend.runtime.journal


def test_a_replacement_runs_the_new_container_before_the_old_one_stops() -> None:
    from composer_core.testing import InMemoryBackend

    backend = InMemoryBackend()
    backend.apply(_memory_workload({"A": "1"}), None)
    (current,) = backend.observe({LABEL_MANAGER: "m"})
    backend.reset_counts()
    applied = backend.apply(_memory_workload({"A": "2"}), current)
    assert applied.action == "replaced" and applied.observed.state == "started"
    (now,) = backend.runtime.list({})
    assert now.name == "xtm-rollback" and now.id != current.id and now.status == "running"
    assert now.labels[LABEL_HASH] == _memory_workload({"A": "2"}).config_hash
    journal = backend.runtime.journal
    assert journal.index(("start", "xtm-rollback")) < journal.index(("stop", current.id))
    # restart policy: the engine restarts a connector that exits, unless stopped on purpose
    assert backend.runtime.containers[now.id].restart_policy == "unless-stopped"


@pytest.mark.parametrize(("credentials", "docker_form", "podman_form"), WIRE_CASES)
def test_each_engine_builds_its_own_wire_form(credentials: Any, docker_form: dict[str, str],
                                              podman_form: dict[str, Any]) -> None:
    import base64
    import json

    from composer_plugins.docker.auth import docker_auth_config
    from composer_plugins.podman.auth import podman_auth_map, registry_auth_header

    assert docker_auth_config(credentials) == docker_form
    assert podman_auth_map(credentials) == podman_form
    header = registry_auth_header(credentials)
    assert json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))) == podman_form


@pytest.mark.parametrize(("text", "kind"), [
    ('Get "http://10.0.0.1:5000/v2/": EOF', RegistryUnreachable),
    ("reading blob sha256:ab: unexpected EOF", RegistryUnreachable),
    ("manifest unknown: thereof", ImageNotFound),  # a word ending in "eof" is not EOF
])
def test_eof_from_the_registry_is_unreachable(text: str, kind: type) -> None:
    from composer_core.engine.pullerrors import classify_pull_failure

    assert type(classify_pull_failure(text, Anonymous)) is kind


# --- the flow on the engines ------------------------------------------------------------------

integration = pytest.mark.integration


@pytest.fixture
def deployer(engine_settings: Callable[..., Settings], connect: Any, plugins: Any,
             bench: Any) -> Callable[..., Deployer]:
    """deployer(**settings overrides): a Deployer on the test's engine, fast stops."""

    def make(overrides: dict[str, Any] | None = None) -> Deployer:
        settings = engine_settings({"opencti.daemon.docker.registry.url": bench.registry_open,
                                    **(overrides or {})})
        return Deployer(connect(settings), settings, plugins, stop_timeout=2)

    return make


def container_env(engine: str, bench: Any, name: str) -> list[str]:
    client = raw_client(engine, bench)
    try:
        if engine == "docker":
            return list(client.inspect_container(name)["Config"]["Env"])
        return list(client.containers.get(name).attrs["Config"]["Env"])
    finally:
        client.close()


@integration
def test_deploy_creates_and_starts_with_labels(engine: str, bench: Any, manager: str,
                                               deployer: Callable[..., Deployer],
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="xtm_composer")
    name = unique()
    secret = "env-secret-" + os.urandom(4).hex()
    result = deployer().deploy(bench.image, name, {"OPENCTI_TOKEN": secret, "A": "1"},
                               connector_id="misp-1", command=QUICK_STOP)
    assert result.action == "created"
    info = result.container
    assert info.name == name and info.status == "running"
    assert info.labels[LABEL_MANAGER] == manager
    assert info.labels[LABEL_CONNECTOR] == "misp-1"
    assert info.labels[LABEL_HASH] == result.config_hash == config_hash(
        bench.ref(bench.registry_open), {"OPENCTI_TOKEN": secret, "A": "1"}, QUICK_STOP)
    assert f"OPENCTI_TOKEN={secret}" in container_env(engine, bench, name)
    assert (f"Deploying container - Registry: {bench.registry_open}, Original image: {bench.image}, "
            f"Pulling: {bench.ref(bench.registry_open)}") in caplog.text
    assert "Pull credentials - Source: anonymous" in caplog.text
    assert "env keys: A, OPENCTI_TOKEN" in caplog.text
    assert_no_secrets(caplog.text, [secret])


@integration
def test_redeploy_is_idempotent_and_starts_a_stopped_container(
        engine: str, bench: Any, manager: str, deployer: Callable[..., Deployer]) -> None:
    name = unique()
    first = deployer().deploy(bench.image, name, {"A": "1"}, command=QUICK_STOP)
    again = deployer().deploy(bench.image, name, {"A": "1"}, command=QUICK_STOP)
    assert again.action == "unchanged" and again.container.id == first.container.id
    assert again.pull is None  # nothing pulled, nothing asked of the credential chain
    d = deployer()
    d.runtime.stop(name, timeout=2)
    restarted = d.deploy(bench.image, name, {"A": "1"}, command=QUICK_STOP)
    assert restarted.action == "started" and restarted.container.id == first.container.id
    assert restarted.container.status == "running"


@integration
def test_changed_config_replaces_the_container(engine: str, bench: Any, manager: str,
                                               deployer: Callable[..., Deployer]) -> None:
    name = unique()
    d = deployer()
    first = d.deploy(bench.image, name, {"A": "1"}, command=QUICK_STOP)
    second = d.deploy(bench.image2, name, {"A": "2"}, command=QUICK_STOP)
    assert second.action == "replaced"
    assert second.container.id != first.container.id
    assert second.container.status == "running"
    assert second.container.image == bench.ref(bench.registry_open, bench.image2)
    assert d.runtime.inspect(first.container.id) is None
    assert [c.name for c in d.runtime.list({LABEL_MANAGER: manager})] == [name]
    assert "A=2" in container_env(engine, bench, name)


@integration
def test_failed_start_of_a_fresh_container_leaves_nothing(
        engine: str, bench: Any, manager: str, deployer: Callable[..., Deployer]) -> None:
    d = deployer()
    name = unique()
    with pytest.raises(ContainerError) as caught:
        d.deploy(bench.image, name, command=("/no/such/binary",))
    assert "starting container" in caught.value.message
    assert d.runtime.inspect(name) is None
    assert d.runtime.list({LABEL_MANAGER: manager}) == []


class FailingCreate:
    """The real runtime, except that ``create`` fails *after* the engine made the container.

    A stand-in: no real engine can be made to fail this way on demand."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    def create(self, spec: Any) -> Any:
        self._runtime.create(spec)
        raise ContainerError(f"creating container {spec.name!r} failed (injected)")


@integration
def test_failed_create_leaves_no_half_made_container(
        engine: str, bench: Any, manager: str, deployer: Callable[..., Deployer]) -> None:
    d = deployer()
    name = unique()
    d.runtime = FailingCreate(d.runtime)  # type: ignore[assignment]
    with pytest.raises(ContainerError):
        d.deploy(bench.image, name, command=QUICK_STOP)
    assert d.runtime.list({LABEL_MANAGER: manager}) == []


@integration
def test_failed_replacement_keeps_the_old_container_running(
        engine: str, bench: Any, manager: str, deployer: Callable[..., Deployer]) -> None:
    d = deployer()
    name = unique()
    old = d.deploy(bench.image, name, {"A": "1"}, command=QUICK_STOP).container
    # the new container is created, then fails to start: the old one comes back
    with pytest.raises(ContainerError):
        d.deploy(bench.image, name, {"A": "2"}, command=("/no/such/binary",))
    after = d.runtime.list({LABEL_MANAGER: manager})
    assert [(c.id, c.name, c.status) for c in after] == [(old.id, name, "running")]
    # the pull fails: nothing is touched at all
    with pytest.raises(RegistryUnreachable):
        d.deploy(f"127.0.0.1:{free_port()}/{bench.image}", name, command=QUICK_STOP)
    assert [(c.id, c.status) for c in d.runtime.list({LABEL_MANAGER: manager})] == [
        (old.id, "running")]


@integration
def test_a_create_that_loses_a_race_never_removes_the_winners_container(
        engine: str, bench: Any, manager: str, deployer: Callable[..., Deployer],
        make_settings: Callable[..., Settings], plugins: Any) -> None:
    """Two passes planned `deploy` for one connector from the same (empty) list: the first
    creates, the second's create meets a 409. It must neither remove the first one's container
    (the half-made cleanup once removed any container with our labels under the name) nor fail."""
    winner, loser = deployer(), deployer()
    name = unique()
    resolved = resolve_image(bench.image, winner.settings, plugins)
    spec = container_spec(resolved, name, {"A": "1"}, manager=manager, connector_id="c1",
                          command=QUICK_STOP)
    first = winner.put(resolved, spec, None)
    second = loser.put(resolved, spec, None)  # its plan did not see the first one's container
    assert (first.action, second.action) == ("created", "unchanged")
    assert second.container.id == first.container.id
    survivors = loser.runtime.list({LABEL_MANAGER: manager})
    assert [(c.id, c.name, c.status) for c in survivors] == [(first.container.id, name, "running")]


class Recording:
    """The real runtime, recording each write and, when the new container starts, whether the
    old one is still running at that moment."""

    def __init__(self, runtime: Any, old_id: str) -> None:
        self._runtime = runtime
        self.old_id = old_id
        self.calls: list[str] = []
        self.old_status_at_new_start: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    def create(self, spec: Any) -> Any:
        self.calls.append("create")
        return self._runtime.create(spec)

    def rename(self, name: str, new_name: str) -> None:
        self.calls.append("rename old" if name == self.old_id else "rename new")
        self._runtime.rename(name, new_name)

    def start(self, name: str) -> None:
        old = self._runtime.inspect(self.old_id)
        self.old_status_at_new_start = old.status if old else "gone"
        self.calls.append("start new")
        self._runtime.start(name)

    def stop(self, name: str, timeout: int = 10) -> None:
        self.calls.append("stop old" if name == self.old_id else f"stop {name}")
        self._runtime.stop(name, timeout=timeout)

    def remove(self, name: str, *, force: bool = False) -> None:
        self.calls.append("remove old" if name == self.old_id else f"remove {name}")
        self._runtime.remove(name, force=force)


@integration
def test_a_replacement_starts_the_new_container_before_stopping_the_old(
        engine: str, bench: Any, manager: str, deployer: Callable[..., Deployer]) -> None:
    d = deployer()
    name = unique()
    old = d.deploy(bench.image, name, {"A": "1"}, command=QUICK_STOP).container
    recording = Recording(d.runtime, old.id)
    d.runtime = recording  # type: ignore[assignment]
    new = d.deploy(bench.image, name, {"A": "2"}, command=QUICK_STOP)
    assert new.action == "replaced" and new.container.status == "running"
    assert recording.calls == ["create", "rename old", "rename new", "start new", "stop old",
                               "remove old"]
    assert recording.old_status_at_new_start == "running"  # no moment without a connector
    assert [c.id for c in d.runtime.list({LABEL_MANAGER: manager})] == [new.container.id]


class FailingRename:
    """The real runtime, except that giving the new container its final name fails (stand-in)."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    def rename(self, name: str, new_name: str) -> None:
        if "-xtm-new-" in name:
            raise ContainerError(f"renaming container {name!r} failed (injected)")
        self._runtime.rename(name, new_name)


@integration
def test_rollback_after_a_failed_rename(engine: str, bench: Any, manager: str,
                                        deployer: Callable[..., Deployer]) -> None:
    d = deployer()
    name = unique()
    old = d.deploy(bench.image, name, {"A": "1"}, command=QUICK_STOP).container
    d.runtime = FailingRename(d.runtime)  # type: ignore[assignment]
    with pytest.raises(ContainerError):
        d.deploy(bench.image, name, {"A": "2"}, command=QUICK_STOP)
    after = d.runtime.list({LABEL_MANAGER: manager})
    assert [(c.id, c.name, c.status) for c in after] == [(old.id, name, "running")]


@integration
def test_a_container_of_someone_else_is_left_alone(engine: str, bench: Any, manager: str,
                                                   deployer: Callable[..., Deployer]) -> None:
    name = unique()
    create_unmanaged(engine, bench, name, bench.ref(bench.registry_open))
    try:
        d = deployer()
        with pytest.raises(ContainerError) as caught:
            d.deploy(bench.image, name)
        assert "not managed by this manager" in caught.value.message
        assert d.runtime.inspect(name) is not None
    finally:
        remove_by_name(engine, bench, name)


@pytest.fixture
def forgetting_provider(plugins: Any, bench: Any) -> Iterator[list[Credentials]]:
    """A credential provider with a cache: supplies wrong credentials and records forget()."""
    forgotten: list[Credentials] = []

    class Plugin:
        @hookimpl
        def composer_credential_providers(self) -> CredentialProvider:
            def lookup(request: Any) -> Found:
                creds = Credentials(registry=request.registry, source="cached-test",
                                    username=bench.username, password="stale-" + "x" * 8,
                                    key=request.registry)
                return Found(creds, "from the test cache")

            return CredentialProvider(name="cached-test", lookup=lookup, forget=forgotten.append)

    plugins.register(Plugin(), name="cached-test")
    yield forgotten
    plugins.unregister("cached-test")


@integration
def test_rejected_credentials_are_forgotten_by_their_provider(
        engine: str, bench: Any, manager: str, deployer: Callable[..., Deployer],
        forgetting_provider: list[Credentials]) -> None:
    d = deployer({"auth.chain": ["cached-test", "anonymous"]})
    with pytest.raises(CredentialsRejected) as caught:
        d.pull(bench.ref(bench.registry_private))
    assert "provider 'cached-test'" in str(caught.value)
    assert [c.source for c in forgetting_provider] == ["cached-test"]
