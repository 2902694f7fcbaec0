"""The ``opencti`` source against the fake platform (a stand-in: tests/fakeplatform), without an
engine: settings, the seven operations, registration and pings, the listing and its failures,
the mapping to connectors."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest

from composer_core.errors import SettingsError
from composer_core.fleet.sources import SourceUnavailable
from composer_plugins.opencti.client import PlatformClient, PlatformError
from composer_plugins.opencti.config import read_config
from composer_plugins.opencti.crypto import load_private_key
from composer_plugins.opencti.mapping import container_name, map_listing
from composer_plugins.opencti.source import OpenCTISource, open_opencti_source
from tests.conftest import assert_no_secrets
from tests.fakeplatform import FakePlatform
from tests.opencti_helpers import key_lines, key_pem

pytestmark = pytest.mark.platform_standin


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _source(settings: Any, clock: Clock | None = None) -> OpenCTISource:
    return OpenCTISource(read_config(settings), clock=clock or Clock(), environ={})


# --- settings ----------------------------------------------------------------------------------


def test_the_spec_checks_types_and_bounds_at_every_start(make_settings) -> None:
    with pytest.raises(SettingsError) as err:
        make_settings({"manager.ping_alive_schedule": 300, "opencti.logs_schedule": 0,
                       "opencti.request_timeout": 601, "opencti.with_proxy": "yes",
                       "opencti.token": 12})
    text = str(err.value)
    for words in ("manager.ping_alive_schedule (from command line, checked by plugin 'opencti'): "
                  "must be under 300",
                  "opencti.logs_schedule (from command line, checked by plugin 'opencti'): must be "
                  "greater than 0",
                  "opencti.request_timeout (from command line, checked by plugin 'opencti'): must be "
                  "at most 600",
                  "opencti.with_proxy (from command line, checked by plugin 'opencti'): must be true "
                  "or false",
                  "opencti.token (from command line, checked by plugin 'opencti'): must be a string"):
        assert words in text
    assert "12" not in text.split("opencti.token", 1)[1].splitlines()[0]  # a secret is described, not echoed
    assert err.value.exit_code == 2
    # the file source never needs a token or a key: the defaults are valid
    assert make_settings().get("opencti.url") == "http://host.docker.internal:4000"


def test_what_the_source_needs_is_checked_when_it_opens(make_settings) -> None:
    with pytest.raises(SettingsError) as err:
        read_config(make_settings({"opencti.url": "opencti:8080", "manager.name": "x",
                                   "opencti.enable": False}))
    text = str(err.value)
    for words in ("opencti.url (from command line): must start with http:// or https://",
                  "opencti.token (from defaults of plugin 'opencti')", "is required (or opencti.token_file)",
                  "manager.credentials_key_filepath (from", "is required (or manager.credentials_key)",
                  "manager.name (from command line): must be at least 2 characters",
                  "opencti.enable (from command line): is false"):
        assert words in text
    assert err.value.exit_code == 2


def test_token_file_and_key_file_win_and_are_secrets(make_settings, tmp_path, caplog, run_cli,
                                                     monkeypatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token-1234567\n")
    key_path = tmp_path / "k.pem"
    key_path.write_text(key_pem())
    settings = make_settings({"opencti.token": "inline-token-999", "opencti.token_file": str(token_file),
                              "manager.credentials_key": key_pem(3072),
                              "manager.credentials_key_filepath": str(key_path)})
    with caplog.at_level(logging.DEBUG):
        config = read_config(settings)
    assert config.token == "file-token-1234567" and config.key_pem == key_pem()
    assert "the file wins" in caplog.text
    assert "file-token-1234567" not in repr(config) and "BEGIN" not in repr(config)
    # config show masks the inline secrets; the log scrubs the file's
    monkeypatch.setenv("OPENCTI__TOKEN", "inline-token-999")
    monkeypatch.setenv("MANAGER__CREDENTIALS_KEY", key_pem(3072))
    code, out, err = run_cli(["config", "show", "--json"])
    assert code == 0, err
    shown = json.loads(out)["opencti"]
    assert shown["token"] == "******"
    assert shown["https_proxy_reject_unauthorized"] is True  # a switch, not a secret: shown as it is
    assert_no_secrets(out + err + caplog.text, ["inline-token-999", "file-token-1234567",
                                                *key_lines(key_pem(3072))])


def test_a_proxy_ca_bundle_is_refused_rather_than_silently_dropped(opencti_settings) -> None:
    with pytest.raises(SettingsError, match="opencti.https_proxy_ca is set"):
        open_opencti_source(opencti_settings({"opencti.with_proxy": True,
                                              "opencti.https_proxy_ca": ["/etc/ca.pem"]}), {})


# --- transport and the platform's rules -------------------------------------------------------


def test_bearer_token_required_about_is_public(platform, opencti_settings) -> None:
    wrong = PlatformClient(read_config(opencti_settings({"opencti.token": "not-the-token"})))
    assert wrong.version() == platform.version  # about has no @auth
    with pytest.raises(PlatformError, match="You must be logged in") as err:
        wrong.connectors()
    assert "check opencti.token" in (err.value.hint or "") and err.value.exit_code == 16
    assert platform.calls[-1][2] is False  # the fake saw no known token


def test_one_manager_per_platform_and_its_name_rule(platform, opencti_settings) -> None:
    key = load_private_key(key_pem(), "k")
    first = PlatformClient(read_config(opencti_settings({"manager.id": "first-manager"})))
    assert first.register(key.public_pkcs1) == platform.version
    assert platform.manager is not None and platform.manager["public_key"] == key.public_pkcs1
    assert key.public_pkcs1.startswith("-----BEGIN RSA PUBLIC KEY-----")
    first.register(key.public_pkcs1)  # an upsert: harmless
    assert platform.manager["registrations"] == 2
    second = PlatformClient(read_config(opencti_settings({"manager.id": "second-manager"})))
    with pytest.raises(PlatformError, match="Only one connector manager is supported") as err:
        second.register(key.public_pkcs1)
    assert "use its manager.id" in (err.value.hint or "")
    with pytest.raises(PlatformError, match="does not know manager 'second-manager'"):
        second.ping()


def test_enums_and_datetimes_are_enforced_as_the_schema_says(platform, opencti_settings) -> None:
    client = PlatformClient(read_config(opencti_settings()))
    client.register(load_private_key(key_pem(), "k").public_pkcs1)
    cid = platform.add_connector("misp", "opencti/connector-misp:6.8.1")
    with pytest.raises(PlatformError, match="ConnectorCurrentStatus"):
        client.report_status(cid, "running")
    with pytest.raises(PlatformError, match="DateTime"):
        client.report_health(cid, 0, "yesterday", False)
    client.report_status(cid, "started")
    client.report_health(cid, 2, "2026-12-01T08:00:00.123456Z", False)
    assert platform.get(cid).current == "started" and platform.get(cid).health["restart_count"] == 2


# --- the loop side ------------------------------------------------------------------------------


def test_registers_first_then_pings_and_reregisters_on_version_change(platform, opencti_settings) -> None:
    clock = Clock()
    source = _source(opencti_settings({"manager.ping_alive_schedule": 60}), clock)
    source.desired()
    assert platform.operations() == ["GetVersion", "RegisterConnectorsManager", "GetConnectors"]
    clock.now += 10
    source.desired()
    assert platform.operations()[3:] == ["GetConnectors"]  # no ping before its schedule
    clock.now += 60
    source.desired()
    assert platform.operations()[4:] == ["UpdateConnectorManagerStatus", "GetConnectors"]
    platform.version = "6.9.0"  # the platform was upgraded
    clock.now += 60
    source.desired()
    assert platform.operations()[6:] == ["UpdateConnectorManagerStatus", "RegisterConnectorsManager",
                                         "GetConnectors"]
    assert source.version == "6.9.0" and platform.manager["registrations"] == 2


def test_an_unreachable_platform_is_retried_on_the_ping_schedule(platform, opencti_settings) -> None:
    clock = Clock()
    source = _source(opencti_settings({"manager.ping_alive_schedule": 30}), clock)
    source.desired()
    platform.down()
    clock.now += 30
    with pytest.raises(PlatformError, match="unreachable"):
        source.desired()  # the ping fails: back to GetVersion
    with pytest.raises(PlatformError, match="unreachable"):
        source.desired()  # GetVersion at once, fails
    calls = len(platform.calls)
    with pytest.raises(SourceUnavailable, match="next attempt in 30 s"):
        source.desired()  # no request before the ping schedule
    platform.up()
    clock.now += 30
    source.desired()
    assert platform.operations()[calls:] == ["GetVersion", "RegisterConnectorsManager", "GetConnectors"]


@pytest.mark.parametrize("failure", ["error", "null", "timeout", "partial"])
def test_a_failed_or_partial_listing_is_unavailable(platform, opencti_settings, failure,
                                                    monkeypatch) -> None:
    source = _source(opencti_settings({"opencti.listing_timeout": 0.5}))
    source.desired()
    platform.add_connector("misp", "opencti/connector-misp:6.8.1")
    if failure == "error":
        platform.listing_error = "Managed connector auto-upgrade timed out"
    elif failure == "timeout":
        platform.listing_delay = 1.5
    elif failure == "null":
        monkeypatch.setattr(platform, "_listing", lambda: None)
        platform._wire()
    else:
        original = platform._view
        monkeypatch.setattr(platform, "_view", lambda c: {**original(c), "manager_contract_hash": None})
    with pytest.raises(SourceUnavailable) as err:
        source.desired()
    words = {"error": "auto-upgrade timed out", "null": "no listing (null)",
             "timeout": "did not answer within 0.5 s",
             "partial": "Cannot return null for non-nullable field ManagedConnector.manager_contract_hash"}
    assert words[failure] in err.value.message


def test_the_listing_maps_to_connectors(platform, opencti_settings, caplog) -> None:
    settings = opencti_settings({"opencti.with_proxy": True, "opencti.https_proxy": "http://proxy:3128",
                                 "opencti.https_proxy_reject_unauthorized": False})
    config = read_config(settings)
    key = load_private_key(key_pem(), "k")
    PlatformClient(config).register(key.public_pkcs1)
    a = platform.add_connector("My MISP (prod)", "opencti/connector-misp:6.8.1",
                               {"MISP_URL": "http://misp", "HTTPS_PROXY": "http://platform-proxy:1"},
                               {"MISP_KEY": "misp-key-1234"})
    b = platform.add_connector("my misp prod", "opencti/connector-misp:6.8.1")  # same container name
    c = platform.add_connector("x", "opencti/connector-x:1.0")  # sanitised to 1 character... kept by the fake
    platform.get(c).name = "-"
    d = platform.add_connector("stix", "Bad//Image")
    platform.get(a).requested = "starting"
    with caplog.at_level(logging.INFO):
        mapped = {m.id: m for m in map_listing(PlatformClient(config).connectors(), key, config,
                                               {"HTTP_PROXY": "http://env-proxy:8080", "no_proxy": "localhost"})}
    assert mapped[a].connector is None and mapped[b].connector is None
    assert "container name 'my-misp-prod' is also that of connector" in mapped[a].problem
    assert "fewer than 2 characters" in mapped[c].problem
    assert "manager_contract_image" in mapped[d].problem
    platform.remove_connector(b)
    with caplog.at_level(logging.INFO):
        mapped = {m.id: m for m in map_listing(PlatformClient(config).connectors(), key, config,
                                               {"HTTP_PROXY": "http://env-proxy:8080", "no_proxy": "localhost"})}
    connector = mapped[a].connector
    assert connector is not None and (connector.name, connector.status) == ("my-misp-prod", "started")
    env = dict(connector.env)
    token = platform.get(a).token
    assert env["MISP_KEY"] == "misp-key-1234" and env["OPENCTI_TOKEN"] == token
    assert env["OPENCTI_URL"] == platform.url and env["CONNECTOR_ID"] == a
    assert env["OPENCTI_CONFIG_HASH"] == mapped[a].hash
    assert env["HTTPS_PROXY"] == "http://proxy:3128"  # the composer's own wins over the platform's
    assert env["HTTP_PROXY"] == "http://env-proxy:8080" and env["NO_PROXY"] == "localhost"
    assert env["NODE_TLS_REJECT_UNAUTHORIZED"] == "0"
    assert mapped[a].overridden == ["HTTPS_PROXY"] and mapped[a].decrypted == ["MISP_KEY", "OPENCTI_TOKEN"]
    assert_no_secrets(caplog.text, ["misp-key-1234", token, "http://proxy:3128"])


def test_a_listing_asked_again_decrypts_nothing_again_and_logs_nothing_again(platform, opencti_settings,
                                                                            caplog) -> None:
    """`run` lists every opencti.listing_schedule: a value is decrypted once (an RSA operation),
    an override is logged once, and a value the platform changes is decrypted anew."""
    settings = opencti_settings({"opencti.with_proxy": True, "opencti.https_proxy": "http://proxy:3128"})
    source = _source(settings)
    try:
        source.desired()  # registers: the platform has the public key now
        a = platform.add_connector("misp", "opencti/connector-misp:6.8.1",
                                   {"HTTPS_PROXY": "http://platform-proxy:1"}, {"MISP_KEY": "misp-key-1234"})
        platform.get(a).requested = "starting"
        with caplog.at_level(logging.INFO):
            first = source.desired()
            decrypted = source._decrypter.decryptions
            assert decrypted == 2  # MISP_KEY and the connector's OPENCTI_TOKEN
            assert source.desired() == first and source._decrypter.decryptions == decrypted
        assert caplog.text.count("replace the platform's HTTPS_PROXY") == 1
        b = platform.add_connector("other", "opencti/connector-x:1.0", {}, {"X_KEY": "x-key-5678"})
        (env,) = [dict(c.env) for c in source.desired().connectors if c.id == b] or [{}]
        assert env["X_KEY"] == "x-key-5678" and source._decrypter.decryptions == decrypted + 2
        platform.remove_connector(a)
        source.desired()
        assert len(source._decrypter._plain) == 2  # what the platform no longer lists is dropped
        assert_no_secrets(caplog.text, ["misp-key-1234", "x-key-5678"])
    finally:
        source.close()


def test_run_lists_between_resyncs_and_deploys_a_platform_change_at_once(platform, opencti_settings,
                                                                        plugins) -> None:
    import threading

    from composer_core.fleet.events import Runner
    from composer_core.fleet.lock import PassLock
    from composer_core.testing import InMemoryBackend, wait_for
    from composer_core.workload import has_events

    settings = opencti_settings({"manager.execute_schedule": 60, "opencti.listing_schedule": 0.2,
                                 "manager.id": f"xtm-poll-{id(platform)}"})
    source = open_opencti_source(settings, {})
    backend, stop = InMemoryBackend(), threading.Event()
    runner = Runner(source, lambda: backend, settings, plugins, stop, stop_timeout=1,
                    lock=lambda endpoint: PassLock(str(settings.get("manager.id")), endpoint,
                                                   stop_event=stop))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: runner.passes.get("resync") == 1, 10, "the first pass")
        assert has_events(backend) and not backend.runtime.containers
        a = platform.add_connector("misp", "opencti/connector-misp:6.8.1")
        platform.get(a).requested = "starting"
        wait_for(lambda: [c.status for c in backend.runtime.containers.values()] == ["running"], 10,
                 "the connector started on the platform deployed, long before the 60 s resync")
        # counted when the pass ends, a moment after its work is visible
        wait_for(lambda: runner.passes.get("source") == 1, 10, "the source pass counted")
        assert runner.passes.get("resync") == 1
    finally:
        stop.set()
        thread.join(15)
        source.close()
    assert not thread.is_alive()


def test_requested_statuses_and_names(platform) -> None:
    assert container_name("My MISP (prod)") == "my-misp-prod"
    assert container_name("__ab__") == "ab" and container_name("é") is None
    assert len(container_name("a" * 80) or "") == 63


def test_an_undecryptable_value_holds_the_connector_and_names_the_key(platform, opencti_settings,
                                                                     caplog) -> None:
    source = _source(opencti_settings())
    source.desired()
    cid = platform.add_connector("misp", "opencti/connector-misp:6.8.1", passwords={"MISP_KEY": "k-123456"})
    good = platform.add_connector("other", "opencti/connector-x:6.8.1")
    platform.plant_raw(cid, "MISP_KEY", platform.get(cid).values["MISP_KEY"][0][:-8] + "AAAAAAA=")
    with caplog.at_level(logging.ERROR):
        state = source.desired()
        source.desired()
    assert [c.id for c in state.connectors] == [good]
    assert "MISP_KEY cannot be decrypted" in state.held[cid]
    assert caplog.text.count("is held") == 1  # logged once, not every pass


def test_a_fake_platform_is_a_real_graphql_server(platform, platform_token) -> None:
    """The fake validates what graphql-core validates: unknown fields and missing variables."""
    bad = platform.execute({"query": "query { about { nope } }"}, platform_token)
    assert "Cannot query field 'nope'" in bad["errors"][0]["message"]
    missing = platform.execute({"query": "mutation M($input: CurrentConnectorStatusInput!) "
                                         "{ updateConnectorCurrentStatus(input: $input) { id } }"},
                               platform_token)
    assert "non-null type 'CurrentConnectorStatusInput!' to be provided" in missing["errors"][0]["message"]
    assert isinstance(FakePlatform.__doc__, str) and "STAND-IN" in FakePlatform.__doc__ + __import__(
        "tests.fakeplatform", fromlist=["x"]).__doc__


def test_the_composer_s_own_proxy_follows_with_proxy(platform, opencti_settings, monkeypatch) -> None:
    from tests.engine_helpers import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HTTP_PROXY", dead)
    monkeypatch.setenv("http_proxy", dead)
    # with_proxy false ignores every proxy, the environment's included
    assert PlatformClient(read_config(opencti_settings())).version() == platform.version
    through = PlatformClient(read_config(opencti_settings({"opencti.with_proxy": True})))
    with pytest.raises(PlatformError, match="unreachable"):
        through.version()  # the environment's proxy, which nothing serves
    explicit = PlatformClient(read_config(opencti_settings({"opencti.with_proxy": True,
                                                            "opencti.http_proxy": dead})))
    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.delenv("http_proxy")
    with pytest.raises(PlatformError, match="unreachable"):
        explicit.version()


def test_apply_exits_16_without_touching_the_engine_when_the_platform_is_down(
        platform, opencti_settings, run_cli, monkeypatch, tmp_path, platform_token) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")  # an engine call would exit 5
    monkeypatch.setenv("MANAGER__SOURCE", "opencti")
    monkeypatch.setenv("OPENCTI__URL", platform.url)
    monkeypatch.setenv("OPENCTI__TOKEN", platform_token)
    key = tmp_path / "k.pem"
    key.write_text(key_pem())
    monkeypatch.setenv("MANAGER__CREDENTIALS_KEY_FILEPATH", str(key))
    monkeypatch.setenv("OPENCTI__CONNECT_TIMEOUT", "1")
    platform.down()
    code, out, err = run_cli(["--runtime", "docker", "apply"])
    assert code == 16 and "is unreachable" in err and "nothing is changed" in err
    code, out, err = run_cli(["--runtime", "docker", "opencti", "status", "--json"])
    assert code == 16 and json.loads(out)["reachable"] is False
    monkeypatch.setenv("OPENCTI__ENABLE", "false")
    code, out, err = run_cli(["--runtime", "docker", "apply"])
    assert code == 2 and "opencti.enable" in err
    assert_no_secrets(out + err, [platform_token, *key_lines(key_pem())])


def _tls_files(tmp_path) -> tuple[str, str, str]:
    """A CA and a certificate for 127.0.0.1 it signed: (ca.pem, cert.pem, key.pem)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake platform test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return tuple(str(p) for p in paths)  # type: ignore[return-value]


def test_tls_is_verified_against_the_trusted_ca_unless_unsecured(make_settings, tmp_path, platform_token,
                                                                 monkeypatch, capfd) -> None:
    ca, cert, key = _tls_files(tmp_path)
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
    fake = FakePlatform(platform_token, tls=(cert, key)).start()
    try:
        base = {"opencti.url": fake.url, "opencti.token": platform_token}
        with pytest.raises(PlatformError, match="TLS with the platform at https://127.0.0.1") as err:
            PlatformClient(read_config(_with_key(make_settings, tmp_path, base))).version()
        assert "SSL_CERT_FILE" in (err.value.hint or "")
        for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
            monkeypatch.setenv(name, ca)  # honoured although with_proxy ignores the environment
            assert PlatformClient(read_config(_with_key(make_settings, tmp_path, base))).version() == fake.version
            monkeypatch.delenv(name)
        unsecured = {**base, "opencti.unsecured_certificate": True}
        assert PlatformClient(read_config(_with_key(make_settings, tmp_path, unsecured))).version() == fake.version
        assert "InsecureRequestWarning" not in capfd.readouterr().err
    finally:
        fake.down()


def _with_key(make_settings, tmp_path, overrides: dict[str, Any]) -> Any:
    path = tmp_path / "tls-test-key.pem"
    path.write_text(key_pem())
    return make_settings({**overrides, "manager.credentials_key_filepath": str(path)})


def test_run_pings_from_its_own_thread_between_passes(platform, opencti_settings) -> None:
    """A long pass (a slow pull) must not let the platform see the manager inactive: in `run`
    the ping has a thread of its own, which also registers again on a version change."""
    import time

    source = open_opencti_source(opencti_settings({"manager.ping_alive_schedule": 0.2}), {})
    try:
        source.desired()  # registers, and starts the pinger
        deadline = time.monotonic() + 20
        while platform.operations().count("UpdateConnectorManagerStatus") < 2:
            assert time.monotonic() < deadline, "no ping without a pass"
            time.sleep(0.05)
        assert platform.operations().count("GetConnectors") == 1  # no pass ran meanwhile
        platform.version = "7.0.0"
        while platform.manager["registrations"] < 2:
            assert time.monotonic() < deadline, "no registration on the version change"
            time.sleep(0.05)
        assert source.version == "7.0.0"
    finally:
        source.close()
    assert source._pinger is not None and not source._pinger.is_alive()


@pytest.mark.parametrize("version", [1, 2])
def test_a_platform_encrypting_with_node_is_decrypted_end_to_end(make_settings, tmp_path, platform_token,
                                                                 version) -> None:
    """The fake platform with Node.js's crypto as its encryption (as the real platform): the
    password field and the token decrypt through the whole source, both versions."""
    from tests.fakeplatform import node_encrypt_value

    fake = FakePlatform(platform_token, encrypt=node_encrypt_value, encryption_version=version).start()
    try:
        source = _source(_with_key(make_settings, tmp_path, {"opencti.url": fake.url,
                                                             "opencti.token": platform_token}))
        source.desired()
        cid = fake.add_connector("misp", "opencti/connector-misp:6.8.1",
                                 passwords={"MISP_KEY": "näive-secret-✓"})
        (connector,) = source.desired().connectors
        assert connector.env["MISP_KEY"] == "näive-secret-✓"
        assert connector.env["OPENCTI_TOKEN"] == fake.get(cid).token
        assert base64.b64decode(fake.get(cid).values["MISP_KEY"][0] or "")[0] == version
    finally:
        fake.down()


def test_status_without_an_engine_still_shows_the_platform_side(platform, run_cli, monkeypatch, tmp_path,
                                                                platform_token, make_settings) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    key = tmp_path / "k.pem"
    key.write_text(key_pem())
    for name, value in {"OPENCTI__URL": platform.url, "OPENCTI__TOKEN": platform_token,
                        "MANAGER__CREDENTIALS_KEY_FILEPATH": str(key),
                        "MANAGER__ID": "status-manager"}.items():
        monkeypatch.setenv(name, value)
    code, out, err = run_cli(["--runtime", "docker", "opencti", "status", "--json"])
    report = json.loads(out)
    assert code == 0 and report["manager"]["registered"] is False and report["connectors"] == []
    assert any("does not know manager 'status-manager'" in e for e in report["errors"])
    assert platform.manager is None  # status never registers
    client = PlatformClient(read_config(_with_key(make_settings, tmp_path, {
        "opencti.url": platform.url, "opencti.token": platform_token, "manager.id": "status-manager"})))
    client.register(load_private_key(key_pem(), "k").public_pkcs1)
    cid = platform.add_connector("feed", "opencti/connector-feed:6.8.1", passwords={"FEED_KEY": "feed-key-12345"})
    code, out, err = run_cli(["--runtime", "docker", "opencti", "status"])
    assert code == 0, err
    assert "reachable, OpenCTI 6.8.1" in out and "registered, active" in out
    assert cid in out and "docker.io/opencti/connector-feed:6.8.1" in out and "anonymous" in out
    assert "unknown: the engine" in out and "ok" in out
    assert_no_secrets(out + err, [platform_token, "feed-key-12345", platform.get(cid).token,
                                  *key_lines(key_pem())])
