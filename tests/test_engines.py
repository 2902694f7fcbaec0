"""The pull matrix on both engines, against the real registries of the bench.

{docker, podman} x {open registry, url only; private + settings credentials; private + config.json
auths; private + OS keychain (docker-credential-pass); private without credentials; wrong
credentials; registry down; self-signed TLS, then insecure: true; plain HTTP where TLS is expected},
plus the proof that an anonymous pull sends no credential at all, on each engine.

Images stay in the engines between tests: a pull of a present image still asks the registry for
the manifest, so authentication and TLS are exercised every time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from composer_core.deploy import Deployer
from composer_core.errors import (
    AuthenticationRequired,
    CredentialsRejected,
    ImageNotFound,
    InsecureRegistryNotAllowed,
    RegistryTLSError,
    RegistryUnreachable,
)
from composer_core.settings import Settings
from tests.conftest import assert_no_secrets
from tests.engine_helpers import (
    docker_auth,
    free_port,
    write_docker_config,
)
from tests.keychain_helpers import PassStore

pytestmark = pytest.mark.integration

Pull = Callable[..., Any]


def only(name: str) -> pytest.MarkDecorator:
    """Run a test on one engine only (the ``engine`` fixture, parametrised indirectly)."""
    return pytest.mark.parametrize("engine", [name], indirect=True)


@pytest.fixture
def pull(engine_settings: Callable[..., Settings], connect: Any, plugins: Any) -> Pull:
    """pull(image, **settings overrides) -> PullResult, through the whole flow."""

    def run(image: str, overrides: dict[str, Any] | None = None) -> Any:
        settings = engine_settings(overrides)
        return Deployer(connect(settings), settings, plugins).pull(image)

    return run


def private(bench: Any, password: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"opencti.daemon.docker.registry": {"url": bench.registry_private,
                                               "username": bench.username,
                                               "password": password or bench.password, **extra}}


# --- credentials ------------------------------------------------------------------------------


def test_open_registry_with_url_only(bench: Any, pull: Pull) -> None:
    # the registry url prefixes the bare image name (XTM Composer's registry block)
    result = pull(bench.image, {"opencti.daemon.docker.registry.url": bench.registry_open})
    assert result.reference == bench.ref(bench.registry_open)
    assert result.resolution.source == "anonymous"
    assert result.image_id


def test_private_registry_with_settings_credentials(bench: Any, pull: Pull) -> None:
    result = pull(bench.image, private(bench))
    assert result.reference == bench.ref(bench.registry_private)
    assert result.resolution.source == "config"
    assert result.resolution.credentials.username == bench.username


def test_private_registry_over_tls_on_loopback(bench: Any, pull: Pull) -> None:
    # Docker skips verification on loopback; Podman does the same by default (loopback_insecure)
    settings = {"opencti.daemon.docker.registry": {"url": bench.registry_tls,
                                                   "username": bench.username,
                                                   "password": bench.password}}
    assert pull(bench.image, settings).resolution.source == "config"


def test_private_registry_with_config_json_auths(bench: Any, pull: Pull, isolated_env: Path) -> None:
    write_docker_config(Path(os.environ["HOME"]), {"auths": {
        bench.registry_private: {"auth": docker_auth(bench.username, bench.password)}}})
    result = pull(bench.ref(bench.registry_private))
    assert result.resolution.source == "docker-config"


def test_private_registry_with_os_keychain(bench: Any, pull: Pull, pass_store: PassStore,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GNUPGHOME", "PASSWORD_STORE_DIR"):
        monkeypatch.setenv(name, pass_store.environ[name])
    pass_store.store(bench.registry_private, bench.username, bench.password)
    write_docker_config(Path(os.environ["HOME"]), {"credsStore": "pass"})
    result = pull(bench.ref(bench.registry_private))
    assert result.resolution.source == "keychain"


def test_private_registry_without_credentials(bench: Any, pull: Pull) -> None:
    with pytest.raises(AuthenticationRequired) as caught:
        pull(bench.ref(bench.registry_private))
    message = str(caught.value)
    assert "authentication required" in message
    assert "anonymous because no credential provider had credentials" in message
    assert "config: not-found" in message and "anonymous: found" in message
    assert f"docker login {bench.registry_private}" in message
    assert caught.value.exit_code == 6


def test_wrong_credentials_name_their_provider(bench: Any, pull: Pull) -> None:
    wrong = "wrong-" + os.urandom(6).hex()
    with pytest.raises(CredentialsRejected) as caught:
        pull(bench.ref(bench.registry_private), private(bench, wrong))
    message = str(caught.value)
    assert "unauthorized" in message
    assert "provider 'config'" in message and "config: found" in message
    assert "docker login" in message
    assert caught.value.exit_code == 7
    assert_no_secrets(message, [wrong, bench.password])


def test_registry_down(bench: Any, pull: Pull) -> None:
    with pytest.raises(RegistryUnreachable) as caught:
        pull(f"127.0.0.1:{free_port()}/{bench.image}")
    assert "connection refused" in str(caught.value)
    assert "check the registry URL" in str(caught.value)
    assert caught.value.exit_code == 8


def test_missing_tag(bench: Any, pull: Pull) -> None:
    with pytest.raises(ImageNotFound) as caught:
        pull(bench.ref(bench.registry_open, "xtm-test/busybox:no-such-tag"))
    assert "manifest unknown" in str(caught.value) and "image resolve" in (caught.value.hint or "")
    assert caught.value.exit_code == 10


# --- TLS --------------------------------------------------------------------------------------


def test_self_signed_tls_fails_with_the_engines_x509_text(bench: Any, pull: Pull) -> None:
    # on a non-loopback address: Docker verifies TLS there
    with pytest.raises(RegistryTLSError) as caught:
        pull(bench.ref(bench.registry_ns_tls))
    message = str(caught.value)
    assert "x509: certificate signed by unknown authority" in message
    assert "trust the registry's CA" in message and "insecure: true" in message
    assert caught.value.exit_code == 9


def test_self_signed_tls_with_insecure_true(engine: str, bench: Any, pull: Pull) -> None:
    registry = bench.registry_ns_tls
    overrides = {"opencti.daemon.docker.registries": [{"url": registry, "insecure": True}]}
    if engine == "podman":
        assert pull(bench.ref(registry), overrides).image_id  # tls_verify=False on that pull
        return
    # Docker: insecure registries are the daemon's setting; this one is not allowed there
    with pytest.raises(InsecureRegistryNotAllowed) as caught:
        pull(bench.ref(registry), overrides)
    message = str(caught.value)
    assert "opencti.daemon.docker.registries[0].insecure: true" in message
    assert f'"insecure-registries": ["{bench.registry_ns_insecure}", "{registry}"]' in message
    assert caught.value.exit_code == 11


def test_insecure_registry_the_daemon_allows(bench: Any, pull: Pull) -> None:
    # registry_ns_insecure is in the bench dockerd's --insecure-registry
    registry = bench.registry_ns_insecure
    overrides = {"opencti.daemon.docker.registry": {"url": registry, "insecure": True}}
    assert pull(bench.image, overrides).reference == bench.ref(registry)


@only("podman")  # Docker always skips TLS verification on loopback: a daemon rule
def test_podman_loopback_parity_can_be_turned_off(bench: Any, pull: Pull) -> None:
    overrides = {"opencti.daemon.podman.loopback_insecure": False}
    with pytest.raises(RegistryTLSError) as caught:
        pull(bench.ref(bench.registry_tls), overrides)
    assert "x509: certificate signed by unknown authority" in str(caught.value)


@only("podman")  # the bench has no plain-HTTP registry off loopback, where Docker would want TLS
def test_plain_http_registry_where_tls_is_expected(bench: Any, pull: Pull) -> None:
    overrides = {"opencti.daemon.podman.loopback_insecure": False}
    with pytest.raises(RegistryTLSError) as caught:
        pull(bench.ref(bench.registry_open), overrides)
    message = str(caught.value)
    assert "http: server gave HTTP response to HTTPS client" in message
    assert "insecure: true" in message


# --- anonymous means no credential at all ------------------------------------------------------


@only("docker")
def test_docker_anonymous_pull_ignores_the_sdks_own_config_json(bench: Any, pull: Pull) -> None:
    """docker-py sends its own config.json's credentials when given no auth: we never let it."""
    write_docker_config(Path(os.environ["HOME"]), {"auths": {
        bench.registry_private: {"auth": docker_auth(bench.username, bench.password)},
        bench.registry_open: {"auth": docker_auth("nobody", "wrong-password")}}})
    chain = {"auth.chain": ["config", "anonymous"]}  # docker-config would find them: left out
    assert pull(bench.ref(bench.registry_open), chain).resolution.source == "anonymous"
    with pytest.raises(AuthenticationRequired):
        pull(bench.ref(bench.registry_private), chain)


@pytest.fixture
def own_podman_service(bench: Any, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A second Podman API service (own storage) whose user has valid credentials for the
    private registry in its default auth file, where the service looks when no header is sent."""
    auth = tmp_path / "xdg" / "containers" / "auth.json"
    auth.parent.mkdir(parents=True)
    auth.write_text(json.dumps({"auths": {bench.registry_private: {
        "auth": docker_auth(bench.username, bench.password)}}}))
    sock = tmp_path / "podman.sock"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "XDG_RUNTIME_DIR": str(tmp_path / "xdg"), "CONTAINERS_CONF": bench.containers_conf}
    short = Path(tempfile.mkdtemp(prefix="xtm-pd-", dir="/tmp"))  # podman: runroot < 50 chars
    dirs = {name: short / name for name in ("root", "runroot", "tmp")}
    for path in dirs.values():
        path.mkdir()
    process = subprocess.Popen(
        ["podman", "--root", str(dirs["root"]), "--runroot", str(dirs["runroot"]),
         "--storage-driver", "vfs", "--tmpdir", str(dirs["tmp"]), "system", "service",
         "--time=0", f"unix://{sock}"], env=env, stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "podman.log").open("wb"), start_new_session=True)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        else:
            pytest.fail("the test's own Podman service did not start: "
                        + (tmp_path / "podman.log").read_text(errors="replace")[-2000:])
        yield f"unix://{sock}", tmp_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(short, ignore_errors=True)


@only("podman")
def test_podman_anonymous_pull_ignores_the_services_files(bench: Any, plugins: Any,
                                                          own_podman_service: tuple[str, Path],
                                                          engine_settings: Any) -> None:
    """Without an X-Registry-Auth header the Podman service uses its own user's auth files
    (podman-py#553); an anonymous pull sends an explicit empty one."""
    from podman import PodmanClient

    endpoint, _ = own_podman_service
    reference = bench.ref(bench.registry_private)
    with PodmanClient(base_url=endpoint) as client:  # control: the service has credentials
        image = client.images.pull(reference, tls_verify=False)
        assert getattr(image, "id", None)
    settings = engine_settings({"opencti.daemon.podman.endpoint": endpoint})
    from composer_core.runtime import connect_runtime

    runtime = connect_runtime(settings, plugins)
    try:
        assert runtime.endpoint == endpoint
        with pytest.raises(AuthenticationRequired):
            Deployer(runtime, settings, plugins).pull(reference)
    finally:
        runtime.close()
