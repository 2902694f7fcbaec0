"""The pull matrix on both engines, against the real registries of the bench.

{docker, podman} x {open registry, url only; private + settings credentials; private + config.json
auths; private + OS keychain (docker-credential-pass); private without credentials; wrong
credentials; registry down; self-signed TLS, then insecure: true; plain HTTP where TLS is expected},
plus the proof that an anonymous pull sends no credential at all, on each engine.

Images stay in the engines between tests: a pull of a present image still asks the registry for
the manifest, so authentication and TLS are exercised every time.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from composer_core.engine.deploy import Deployer
from composer_core.engine.tls import TlsDecision
from composer_core.errors import (
    AuthenticationRequired,
    CredentialsRejected,
    ImageNotFound,
    InsecureRegistryNotAllowed,
    RegistryTLSError,
    RegistryUnreachable,
    RuntimeUnavailable,
)
from composer_core.images.reference import ImageRef
from composer_core.settings import Settings
from composer_core.types import Anonymous, Credentials
from tests.conftest import assert_no_secrets
from tests.engine_helpers import (
    docker_auth,
    free_port,
    write_docker_config,
)
from tests.keychain_helpers import PassStore

pytestmark = pytest.mark.integration

Pull = Callable[..., Any]
VERIFY = TlsDecision(verify=True, setting=None)
NO_VERIFY = TlsDecision(verify=False, setting="opencti.daemon.docker.registry")


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


@pytest.fixture
def hang_up_registry() -> Iterator[str]:
    """A registry that accepts each connection, reads the request and closes without answering:
    what a registry dying mid-pull looks like to the engine (Go's `EOF`)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    done.set()
    thread.join(5)
    server.close()


def test_registry_hanging_up_is_unreachable(bench: Any, pull: Pull, hang_up_registry: str) -> None:
    with pytest.raises(RegistryUnreachable) as caught:
        pull(f"{hang_up_registry}/{bench.image}")
    assert "EOF" in str(caught.value) and f"registry {hang_up_registry} is unreachable" in str(caught.value)
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
        assert pull(bench.ref(registry), overrides).image_id  # TlsDecision(verify=False) on that pull
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


@only("docker")
def test_docker_names_the_deciding_setting_without_reading_settings(bench: Any, engine_settings: Any,
                                                                    connect: Any) -> None:
    """The engine gets the TLS decision, not the settings: the refusal names the decision's key
    although no setting marks the registry insecure."""
    runtime = connect(engine_settings())
    decision = TlsDecision(verify=False, setting="xtm-test.decided.here.insecure")
    with pytest.raises(InsecureRegistryNotAllowed) as caught:
        runtime.pull(ImageRef.parse(bench.ref(bench.registry_ns_tls)), Anonymous, tls=decision)
    assert "(xtm-test.decided.here.insecure: true)" in str(caught.value)


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
    from composer_core.engine.container_backend import runtime_of
    from composer_core.engine.select import connect_runtime

    backend = connect_runtime(settings, plugins)
    try:
        assert backend.endpoint == endpoint
        with pytest.raises(AuthenticationRequired):
            Deployer(runtime_of(backend, "pull"), settings, plugins).pull(reference)
    finally:
        backend.close()


# --- a docker-py that never reads ~/.docker/config.json ----------------------------------------


@only("docker")
def test_docker_runtime_ignores_a_malformed_config_json(bench: Any, pull: Pull,
                                                        engine_settings: Any, connect: Any) -> None:
    """docker-py's APIClient parses config.json at construction and dies on one bad ``auth``
    (binascii: Incorrect padding); the runtime never uses that store, so never reads it."""
    config = write_docker_config(Path(os.environ["HOME"]), {"auths": {
        bench.registry_open: {"auth": "!!notb64"}}})
    try:
        runtime = connect(engine_settings())
        assert runtime.list({"xtm-test": "none"}) == []
        result = pull(bench.image, private(bench))
        assert result.resolution.source == "config" and result.image_id
    finally:
        config.unlink()  # the fixtures' teardown uses docker-py's own APIClient, which reads it


# --- transport failures: a scripted daemon on a unix socket ------------------------------------


HOLD = object()  #: send the response so far, then keep the connection open until the client goes


def _http(status: str, body: bytes = b"", content_type: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _chunked_head() -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class FakeDaemon:
    """An HTTP service on a unix socket answering each request with ``handler(method, path,
    headers)``: bytes to send, then close; or ``(bytes, HOLD)``: send, then wait for the client
    to close its end (recorded in ``client_closed``)."""

    def __init__(self, path: Path, handler: Callable[..., Any]) -> None:
        self.path, self.handler = path, handler
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.client_closed = threading.Event()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, target = lines[0].split(" ")[:2]
                headers = {k.strip().lower(): v.strip()
                           for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
                length = int(headers.get("content-length") or 0)
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                buffer = buffer[length:]
                self.requests.append((method, target, headers))
                reply = self.handler(method, target.split("?", 1)[0], headers)
                hold = isinstance(reply, tuple) and reply[1] is HOLD
                conn.sendall(reply[0] if hold else reply)
                if hold:
                    while conn.recv(65536):
                        pass
                    self.client_closed.set()
                    return
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[Callable[[Callable[..., Any]], FakeDaemon]]:
    started: list[FakeDaemon] = []
    short = Path(tempfile.mkdtemp(prefix="xtm-fd-", dir="/tmp"))  # AF_UNIX paths: < 108 bytes

    def start(handler: Callable[..., Any]) -> FakeDaemon:
        daemon = FakeDaemon(short / f"d{len(started)}.sock", handler)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.close()
    shutil.rmtree(short, ignore_errors=True)


def _answers_ping(path: str) -> bytes | None:
    """The connect-time requests of each engine: Docker's version probe, Podman's ping."""
    if path.endswith("/version"):
        return _http("200 OK", json.dumps({"ApiVersion": "1.41", "Version": "fake"}).encode())
    if path.endswith("/_ping"):
        return _http("200 OK", b"OK", "text/plain")
    return None


def _connect_fake(engine_name: str, url: str, make_settings: Callable[..., Settings]) -> Any:
    settings = make_settings({"manager.id": "xtm-test-fake"})
    if engine_name == "docker":
        from composer_plugins.docker.engine import DockerRuntime

        return DockerRuntime.connect(settings, {"DOCKER_HOST": url})
    from composer_plugins.podman.engine import PodmanRuntime

    return PodmanRuntime.connect(settings, {"CONTAINER_HOST": url})


FAKE_ENGINES = pytest.mark.parametrize("engine_name", ["docker", "podman"])
FAKE_IMAGE = "127.0.0.1:5999/xtm-test/busybox:1.0"


@FAKE_ENGINES
def test_read_timeout_is_a_composer_error(engine_name: str, fake_daemon: Any,
                                          make_settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon that accepts and never answers: requests.ReadTimeout is not a ConnectionError."""
    monkeypatch.setattr(f"composer_plugins.{engine_name}.engine.CALL_TIMEOUT", 0.5)
    daemon = fake_daemon(lambda method, path, headers: _answers_ping(path) or (b"", HOLD))
    runtime = _connect_fake(engine_name, daemon.url, make_settings)
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeUnavailable) as caught:
            runtime.list({"xtm-test": "x"})
        assert time.monotonic() - started < 10
        assert "listing containers" in str(caught.value) and daemon.url in str(caught.value)
    finally:
        runtime.close()


@FAKE_ENGINES
def test_broken_pull_stream_is_a_composer_error(engine_name: str, fake_daemon: Any,
                                                make_settings: Any) -> None:
    """A chunked pull stream cut mid-chunk (ChunkedEncodingError / urllib3 ProtocolError)."""

    def handler(method: str, path: str, headers: dict[str, str]) -> Any:
        if path.endswith(("/images/create", "/images/pull")):
            return _chunked_head() + _chunk(b'{"status": "Pulling"}\n') + b"zz\r\nbroken"
        return _answers_ping(path) or _http("404 Not Found", b'{"message": "no"}')

    daemon = fake_daemon(handler)
    runtime = _connect_fake(engine_name, daemon.url, make_settings)
    try:
        with pytest.raises(RuntimeUnavailable) as caught:
            runtime.pull(ImageRef.parse(FAKE_IMAGE), Anonymous, tls=VERIFY)
        assert "pulling" in str(caught.value) and daemon.url in str(caught.value)
    finally:
        runtime.close()


@FAKE_ENGINES
def test_pull_error_mid_stream_closes_the_response(engine_name: str, fake_daemon: Any,
                                                   make_settings: Any) -> None:
    """An error event while the daemon keeps the stream open: the response must be closed."""

    def handler(method: str, path: str, headers: dict[str, str]) -> Any:
        if path.endswith(("/images/create", "/images/pull")):
            return (_chunked_head() + _chunk(b'{"status": "Pulling"}\n')
                    + _chunk(b'{"error": "manifest unknown: no such tag"}\n'), HOLD)
        return _answers_ping(path) or _http("404 Not Found", b'{"message": "no"}')

    daemon = fake_daemon(handler)
    runtime = _connect_fake(engine_name, daemon.url, make_settings)
    try:
        with pytest.raises(ImageNotFound) as caught:
            runtime.pull(ImageRef.parse(FAKE_IMAGE), Anonymous, tls=VERIFY)
        # still referenced (the traceback holds the frames): only an explicit close frees it
        assert caught.value is not None
        assert daemon.client_closed.wait(5), "the pull left its HTTP response open"
    finally:
        runtime.close()


def test_podman_failed_ping_closes_the_client(fake_daemon: Any, make_settings: Any) -> None:
    def handler(method: str, path: str, headers: dict[str, str]) -> Any:
        return (_http("500 Internal Server Error", b'{"message": "broken"}'), HOLD)

    daemon = fake_daemon(handler)
    with pytest.raises(RuntimeUnavailable) as caught:
        _connect_fake("podman", daemon.url, make_settings)
    assert "answered the ping with HTTP 500" in str(caught.value)
    assert daemon.client_closed.wait(5), "the failed connect left the client open"


# --- endpoints ---------------------------------------------------------------------------------


@FAKE_ENGINES
@pytest.mark.parametrize("url", ["ssh://core@192.0.2.1:22/run/podman/podman.sock",
                                 "http+ssh://core@192.0.2.1/run/podman/podman.sock"])
def test_ssh_endpoints_are_refused_up_front(engine_name: str, url: str, make_settings: Any) -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeUnavailable) as caught:
        _connect_fake(engine_name, url, make_settings)
    assert time.monotonic() - started < 2
    message = str(caught.value)
    assert message.startswith("ssh:// endpoints are not supported")
    assert "forward the socket (ssh -L /tmp/" in message and "use unix:///tmp/" in message


@FAKE_ENGINES
def test_unsupported_endpoint_schemes_are_refused(engine_name: str, make_settings: Any) -> None:
    with pytest.raises(RuntimeUnavailable) as caught:
        _connect_fake(engine_name, "npipe:////./pipe/docker_engine", make_settings)
    assert "npipe://" in str(caught.value) and "unix://" in str(caught.value)


# --- Podman: credentials scoped to their registry ----------------------------------------------


def _decoded_auth(daemon: FakeDaemon) -> Any:
    header = next(h["x-registry-auth"] for m, t, h in daemon.requests if "/images/pull" in t)
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))


def test_podman_sends_credentials_as_a_per_registry_map(fake_daemon: Any,
                                                        make_settings: Any) -> None:
    def handler(method: str, path: str, headers: dict[str, str]) -> Any:
        if path.endswith("/images/pull"):
            return (_chunked_head() + _chunk(b'{"id": "sha256:feed"}\n') + b"0\r\n\r\n")
        return _answers_ping(path) or _http("404 Not Found", b'{"message": "no"}')

    daemon = fake_daemon(handler)
    runtime = _connect_fake("podman", daemon.url, make_settings)
    try:
        secret = "pw-" + os.urandom(4).hex()
        credentials = Credentials(registry="127.0.0.1:5999", source="config", username="user",
                                  password=secret)
        runtime.pull(ImageRef.parse(FAKE_IMAGE), credentials, tls=VERIFY)
        assert _decoded_auth(daemon) == {"127.0.0.1:5999": {"username": "user", "password": secret}}
        token = Credentials(registry="127.0.0.1:5999", source="config", identity_token="tok-1")
        daemon.requests.clear()
        runtime.pull(ImageRef.parse(FAKE_IMAGE), token, tls=VERIFY)
        assert _decoded_auth(daemon) == {"127.0.0.1:5999": {"identitytoken": "tok-1"}}
        daemon.requests.clear()
        runtime.pull(ImageRef.parse(FAKE_IMAGE), Anonymous, tls=VERIFY)
        assert _decoded_auth(daemon) == {}
    finally:
        runtime.close()


@only("podman")
def test_podman_does_not_send_credentials_to_another_registry(bench: Any, engine_settings: Any,
                                                              connect: Any) -> None:
    """Valid credentials, but for another registry: the real service must not use them for the
    private registry (with a single auth config it would send them to every registry)."""
    runtime = connect(engine_settings())
    elsewhere = Credentials(registry=bench.registry_open, source="config",
                            username=bench.username, password=bench.password)
    with pytest.raises((AuthenticationRequired, CredentialsRejected)) as caught:
        runtime.pull(ImageRef.parse(bench.ref(bench.registry_private)), elsewhere,
                     tls=NO_VERIFY)
    assert "authentication required" in str(caught.value)
    scoped = Credentials(registry=bench.registry_private, source="config",
                         username=bench.username, password=bench.password)
    assert runtime.pull(ImageRef.parse(bench.ref(bench.registry_private)), scoped,
                        tls=NO_VERIFY)
