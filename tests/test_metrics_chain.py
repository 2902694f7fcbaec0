"""The metrics of what the credential chain, the credential helpers and the platform client do:
the process-wide recorder (a no-op until ``run`` installs its metrics), its closed vocabularies
and thread safety; the chain, the keychain and the OpenCTI client counting exactly what they did;
on the real bench, `run`'s /metrics (parsed by prometheus_client's own parser) counting the
config, keychain (the real ``docker-credential-pass``) and anonymous providers, helper executions
and cache hits, and platform calls against the stand-in platform, a failed one included; nothing
of a secret, a username or an image reference in /metrics."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from composer_core import metrics as metrics_module
from composer_core.auth.chain import resolve_credentials
from composer_core.errors import CredentialsError
from composer_core.images.resolve import resolve_image
from composer_core.metrics import (
    CREDENTIAL_OUTCOMES,
    HELPER_RESULTS,
    MAX_NAMES,
    PLATFORM_RESULTS,
    Metrics,
    PrometheusMetrics,
    declare_platform_operations,
    recorder,
    recording,
)
from composer_core.pluginmanager import Plugins
from composer_core.testing import wait_for
from tests.conftest import assert_no_secrets, only_ours
from tests.engine_helpers import free_port, remove_by_name, unique
from tests.keychain_helpers import (
    GARBAGE_SECRET,
    HELPER_SECRET,
    HELPERS,
    SECRETS,
    PassStore,
    calls,
    counting_helper,
    hanging_helper,
    helper_env,
    request,
    write_helper,
    write_json,
)
from tests.test_metrics import get, run_process, samples, value

CHAIN = ["config", "docker-config", "keychain", "containers-auth", "anonymous"]
CREDS = "xtm_composer_credential_resolutions_total"
RUNS = "xtm_composer_credential_helper_executions_total"
HITS = "xtm_composer_credential_helper_cache_hits_total"
CALLS = "xtm_composer_platform_calls_total"


def parsed(metrics: PrometheusMetrics) -> dict[Any, float]:
    return samples(metrics.text().decode())


def credential_counts(text: str) -> dict[tuple[str, str], float]:
    """(provider, outcome) -> count, the non-zero ones."""
    return {(dict(labels)["provider"], dict(labels)["outcome"]): count
            for (name, labels), count in samples(text).items() if name == CREDS and count}


# --- the recorder ------------------------------------------------------------------------------


def test_the_recorder_records_nothing_until_run_installs_one_and_is_restored_after() -> None:
    default = recorder()
    assert type(default) is Metrics  # the no-op: a plugin may call it from any command
    default.credential_resolved("config", "found")  # records nothing, raises nothing
    outer, inner = PrometheusMetrics(), PrometheusMetrics()
    with recording(outer):
        assert recorder() is outer
        with recording(inner):
            recorder().helper_cache_hit("pass")
        recorder().helper_cache_hit("pass")
    assert recorder() is default
    assert value(parsed(outer), HITS, helper="pass") == 1
    assert value(parsed(inner), HITS, helper="pass") == 1


def test_declared_platform_operations_show_zero_before_their_first_call() -> None:
    metrics = PrometheusMetrics()
    declare_platform_operations("testplatform", ("ListThings", "PushThing"))
    try:
        with recording(metrics):  # declared before: pre-initialised when installed
            declare_platform_operations("otherplatform", ("Ping",))  # while installed: at once
            found = parsed(metrics)
            for platform, operation in (("testplatform", "ListThings"),
                                        ("testplatform", "PushThing"), ("otherplatform", "Ping")):
                for result in PLATFORM_RESULTS:
                    key = (CALLS, tuple(sorted({"platform": platform, "operation": operation,
                                                "result": result}.items())))
                    assert found[key] == 0
            recorder().platform_call("testplatform", "PushThing", "timeout")
        assert value(parsed(metrics), CALLS, platform="testplatform", operation="PushThing",
                     result="timeout") == 1
    finally:
        with metrics_module._declared_lock:
            metrics_module._declared.pop("testplatform")
            metrics_module._declared.pop("otherplatform")


def test_labels_come_from_closed_vocabularies(caplog: pytest.LogCaptureFixture) -> None:
    secret = "user:" + unique("s3cr3t") + "@registry.example.com/app:1"
    metrics = PrometheusMetrics(providers=CHAIN)
    found = parsed(metrics)
    # the providers of auth.chain: every outcome at 0 from the start
    for provider in CHAIN:
        for outcome in CREDENTIAL_OUTCOMES:
            assert found[(CREDS, (("outcome", outcome), ("provider", provider)))] == 0
    metrics.credential_resolved("config", "found")
    metrics.credential_resolved("config", secret)  # not an outcome
    metrics.credential_resolved(secret, "found")  # not a name
    metrics.helper_ran("pass", "found")
    metrics.helper_ran("pass", "Username xtm Secret " + secret)
    metrics.platform_call("opencti", secret, "ok")
    metrics.platform_call("opencti", "GetConnectors", secret)
    for i in range(MAX_NAMES + 5):  # a plugin minting names without bound
        metrics.helper_cache_hit(f"helper{i}")
    text = metrics.text().decode()
    found = samples(text)
    assert value(found, CREDS, provider="config", outcome="found") == 1
    assert value(found, CREDS, provider="config", outcome="other") == 1
    assert value(found, CREDS, provider="other", outcome="found") == 1
    assert value(found, RUNS, helper="pass", result="found") == 1
    assert value(found, RUNS, helper="pass", result="other") == 1
    # a helper first seen: every result and its cache hits at 0
    assert all((RUNS, (("helper", "helper3"), ("result", r))) in found for r in HELPER_RESULTS)
    assert value(found, CALLS, platform="opencti", operation="other", result="ok") == 1
    assert value(found, CALLS, platform="opencti", operation="GetConnectors", result="other") == 1
    helpers = {dict(labels)["helper"] for (name, labels) in found if name == HITS}
    # "pass" was the first helper name: 64 names in all, the rest counted as other
    assert len(helpers - {"other"}) == MAX_NAMES and "helper0" in helpers
    assert value(found, HITS, helper="other") == 6
    assert_no_secrets(text + caplog.text, [secret, secret.split("@")[0][5:]])
    assert "outside its vocabulary" in caplog.text


def test_the_recorder_counts_exactly_from_many_threads() -> None:
    metrics = PrometheusMetrics()
    threads, rounds = 8, 500
    start = threading.Barrier(threads)

    def work(n: int) -> None:
        start.wait()
        for _ in range(rounds):
            metrics.credential_resolved("keychain", "found")
            metrics.helper_ran(f"h{n % 2}", "found")  # first sight of a helper, raced
            metrics.helper_cache_hit("pass")
            metrics.platform_call("opencti", "GetConnectors", "ok")

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    found = parsed(metrics)
    total = threads * rounds
    assert value(found, CREDS, provider="keychain", outcome="found") == total
    assert value(found, RUNS, helper="h0", result="found") + value(
        found, RUNS, helper="h1", result="found") == total
    assert value(found, HITS, helper="pass") == total
    assert value(found, CALLS, platform="opencti", operation="GetConnectors", result="ok") == total


# --- the chain and the keychain ----------------------------------------------------------------

REG = "reg.example.com:5000"


def test_the_chain_counts_each_provider_it_walks(tmp_path: Path, make_settings) -> None:
    home, bin_dir = tmp_path / "home-m", tmp_path / "bin-m"
    write_helper(bin_dir, "fails", HELPERS["fails"])
    write_json(home / ".docker/config.json", {"credHelpers": {"broken.example.com": "fails"}})
    environ = helper_env(home, bin_dir)
    plugins = Plugins(disabled=["containers-auth"], entry_point_filter=only_ours)
    config = {"url": f"https://{REG}", "username": "config-user", "password": HELPER_SECRET}
    settings = make_settings({"opencti.daemon.docker.registry": config})
    metrics = PrometheusMetrics(providers=CHAIN)

    def resolve(image: str, the_settings: Any = settings) -> str:
        return resolve_credentials(resolve_image(image, the_settings, plugins), the_settings,
                                   plugins, environ=environ).source

    with recording(metrics):
        assert resolve(f"{REG}/team/app:1") == "config"
        assert resolve("open.example.com/app:1") == "anonymous"
        assert resolve("broken.example.com/app:1") == "anonymous"  # the helper failed: soft
        strict = make_settings({"opencti.daemon.docker.registry": config,
                                "auth.strict_helpers": True})
        with pytest.raises(CredentialsError):
            resolve("broken.example.com/app:1", strict)
    assert resolve(f"{REG}/team/app:1") == "config"  # after run: not counted
    text = metrics.text().decode()
    assert credential_counts(text) == {
        ("config", "found"): 1, ("config", "not_found"): 3,
        ("docker-config", "skipped"): 1, ("docker-config", "not_found"): 3,
        ("keychain", "skipped"): 1, ("keychain", "not_found"): 1, ("keychain", "error"): 2,
        # disabled: unavailable each time it is walked; the fatal error stopped the last walk
        ("containers-auth", "skipped"): 1, ("containers-auth", "unavailable"): 2,
        ("anonymous", "skipped"): 1, ("anonymous", "found"): 2,
    }
    # the helper ran twice (the cache keeps an error for cache_miss_ttl: the second is a hit)
    found = samples(text)
    assert value(found, RUNS, helper="fails", result="error") == 1
    assert value(found, HITS, helper="fails") == 1
    assert_no_secrets(text, [HELPER_SECRET, GARBAGE_SECRET, "config-user"])


def test_the_keychain_counts_executions_and_cache_hits(tmp_path: Path, make_settings) -> None:
    from composer_plugins.keychain import lookup

    home, bin_dir = tmp_path / "home-k", tmp_path / "bin-k"
    counting_helper(bin_dir)
    hanging_helper(bin_dir)
    write_helper(bin_dir, "std-notfound", HELPERS["std-notfound"])
    write_json(home / ".docker/config.json", {"credHelpers": {
        REG: "count", "hang.example.com": "hang", "none.example.com": "std-notfound",
        "missing.example.com": "absent"}})
    environ = helper_env(home, bin_dir)
    settings = make_settings({"auth.helper_timeout": 0.5, "auth.cache_miss_ttl": 0})
    metrics = PrometheusMetrics()
    with recording(metrics):
        for image in (f"{REG}/a:1", f"{REG}/b:1", f"{REG}/c:1", "hang.example.com/a:1",
                      "none.example.com/a:1", "none.example.com/b:1", "missing.example.com/a"):
            lookup(request(image, settings, environ))
    found = parsed(metrics)
    # what the helpers themselves say they did: the counting helper ran once, for three lookups
    assert len(calls(bin_dir)) == 1
    assert value(found, RUNS, helper="count", result="found") == 1
    assert value(found, HITS, helper="count") == 2
    assert value(found, RUNS, helper="hang", result="timeout") == 1
    # cache_miss_ttl 0: a "not found" is never kept, so both lookups ran the helper
    assert value(found, RUNS, helper="std-notfound", result="not_found") == 2
    assert value(found, HITS, helper="std-notfound") == 0
    # a helper missing from PATH was not executed: nothing of it
    assert not any(dict(labels).get("helper") == "absent" for (_, labels) in found)
    assert_no_secrets(metrics.text().decode(), SECRETS + ["helper-user"])


# --- the platform client, against the stand-in ------------------------------------------------


@pytest.mark.platform_standin
def test_the_platform_client_counts_each_operation_and_why_it_failed(
        opencti_settings, platform, platform_token: str) -> None:
    from composer_plugins.opencti.client import OPERATIONS, PlatformClient, PlatformError
    from composer_plugins.opencti.config import read_config
    from composer_plugins.opencti.crypto import load_private_key

    config = read_config(opencti_settings())
    key = load_private_key(config.key_pem, config.key_origin)
    metrics = PrometheusMetrics()
    with recording(metrics):
        before = parsed(metrics)
        client = PlatformClient(config)
        try:
            with pytest.raises(PlatformError):
                client.ping()  # not registered yet: the platform knows no such manager
            client.version()
            client.register(key.public_pkcs1)
            client.ping()
            assert client.connectors() == []
            platform.listing_error = "listing failed"
            with pytest.raises(PlatformError):
                client.connectors()
            platform.listing_error = None
            with pytest.raises(PlatformError):
                client.report_status("no-such-connector", "started")
            platform.down()
            with pytest.raises(PlatformError):
                client.connectors()
        finally:
            client.close()
            platform.up()
    for operation in OPERATIONS:  # every operation shows at 0 before its first call
        assert (CALLS, (("operation", operation), ("platform", "opencti"), ("result", "ok"))) \
            in before
    text = metrics.text().decode()
    counts = {(dict(labels)["operation"], dict(labels)["result"]): n
              for (name, labels), n in samples(text).items() if name == CALLS and n}
    assert counts == {
        ("UpdateConnectorManagerStatus", "no_data"): 1, ("UpdateConnectorManagerStatus", "ok"): 1,
        ("GetVersion", "ok"): 1, ("RegisterConnectorsManager", "ok"): 1,
        ("GetConnectors", "ok"): 1, ("GetConnectors", "graphql_error"): 1,
        ("UpdateConnectorCurrentStatus", "graphql_error"): 1,
        ("GetConnectors", "unreachable"): 1,
    }
    # the platform saw each call that reached it: as many as counted, besides the unreachable one
    assert len(platform.operations()) == sum(counts.values()) - 1
    assert_no_secrets(text, [platform_token, config.manager_id])


# --- `run` on the real bench -------------------------------------------------------------------


@pytest.mark.integration
def test_run_counts_credential_resolutions_and_helpers_on_the_bench(
        engine: str, bench: Any, manager: str, pass_store: PassStore, tmp_path: Path) -> None:
    home = tmp_path / "run-home"
    # the TLS registry's credential is in the OS keychain (the real docker-credential-pass)
    write_json(home / ".docker/config.json", {"credHelpers": {bench.registry_tls: "pass"}})
    pass_store.store(bench.registry_tls, bench.username, bench.password)
    ids = {"config": unique("xtm-mc-cfg"), "anonymous": unique("xtm-mc-anon"),
           "keychain": unique("xtm-mc-kc"), "keychain2": unique("xtm-mc-kc2")}
    images = {"config": bench.image,  # the configured registry: the config provider
              "anonymous": f"{bench.registry_open}/{bench.image}",
              "keychain": f"{bench.registry_tls}/{bench.image}",
              "keychain2": f"{bench.registry_tls}/{bench.image2}"}
    token = "tok-" + unique("t")
    path = tmp_path / "connectors.yaml"
    path.write_text(yaml.safe_dump({"connectors": [
        {"id": ids[k], "name": ids[k], "image": images[k], "env": {"OPENCTI_TOKEN": token}}
        for k in ids]}))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, **pass_store.environ, "HOME": str(home), "PATH": os.environ["PATH"],
           "MANAGER__ID": manager, "MANAGER__EXECUTE_SCHEDULE": "60",
           "MANAGER__METRICS__ENABLE": "true", "MANAGER__METRICS__PORT": str(port),
           "OPENCTI__DAEMON__DOCKER__REGISTRY__URL": bench.registry_private,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__USERNAME": bench.username,
           "OPENCTI__DAEMON__DOCKER__REGISTRY__PASSWORD": bench.password}
    texts: list[str] = []
    with run_process(engine, path, env) as (_proc, outputs):
        # the counters of every provider of auth.chain exist from the start
        wait_for(lambda: get(base + "/metrics")[0] == 200, 30, "metrics served")
        start = samples(get(base + "/metrics")[1])
        assert all((CREDS, (("outcome", o), ("provider", p))) in start
                   for p in CHAIN for o in CREDENTIAL_OUTCOMES)
        wait_for(lambda: value(samples(get(base + "/metrics")[1]),
                               "xtm_composer_passes_total", trigger="resync",
                               result="ok") == 1, 120, "the first pass")
        text = get(base + "/metrics")[1]
        texts.append(text)
        first = samples(text)
        assert value(first, "xtm_composer_actions_total", action="deploy", result="ok") == 4
        # one resolution per image: each counts once for each of the five providers
        assert credential_counts(text) == {
            ("config", "found"): 1, ("config", "not_found"): 3,
            ("docker-config", "skipped"): 1, ("docker-config", "not_found"): 3,
            ("keychain", "skipped"): 1, ("keychain", "not_found"): 1,
            ("keychain", "found"): 2,
            ("containers-auth", "skipped"): 3, ("containers-auth", "not_found"): 1,
            ("anonymous", "skipped"): 3, ("anonymous", "found"): 1,
        }
        assert value(first, CREDS, provider="keychain", outcome="error") == 0  # shown, at 0
        # two images of the keychain's registry: pass ran once, its answer was reused once
        assert value(first, RUNS, helper="pass", result="found") == 1
        assert value(first, HITS, helper="pass") == 1
        time.sleep(1)  # the event stream is open (it opens beside the first pass)
        # a keychain connector removed out of band: redeployed on its event, from the cache
        remove_by_name(engine, bench, ids["keychain"])
        wait_for(lambda: value(samples(get(base + "/metrics")[1]), "xtm_composer_actions_total",
                               action="deploy", result="ok") == 5, 30, "the redeploy")
        text = get(base + "/metrics")[1]
        texts.append(text)
        after = samples(text)
        assert value(after, CREDS, provider="keychain", outcome="found") == 3
        assert value(after, RUNS, helper="pass", result="found") == 1
        assert value(after, HITS, helper="pass") == 2
    texts += outputs
    # nothing of a secret, the registry user, the helper's answer, an image reference
    assert_no_secrets("\n".join(texts[:2]), [bench.password, bench.username, token, "ServerURL",
                                             bench.registry_private, bench.registry_open,
                                             bench.registry_tls, "busybox", ids["keychain"]])
    assert_no_secrets("\n".join(texts), [bench.password, token])


@pytest.mark.integration
@pytest.mark.platform_standin
def test_run_counts_platform_calls_against_the_stand_in(
        bench, platform, platform_token: str, key_file: Path, tmp_path: Path) -> None:
    manager_id = unique("xtm-test-manager")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DOCKER_HOST": bench.docker_host,
           "MANAGER__ID": manager_id, "MANAGER__SOURCE": "opencti", "MANAGER__NAME": "metrics bench",
           "MANAGER__EXECUTE_SCHEDULE": "0.5", "MANAGER__PING_ALIVE_SCHEDULE": "1",
           "MANAGER__CREDENTIALS_KEY_FILEPATH": str(key_file),
           "MANAGER__METRICS__ENABLE": "true", "MANAGER__METRICS__PORT": str(port),
           "OPENCTI__URL": platform.url, "OPENCTI__TOKEN": platform_token,
           "OPENCTI__CONNECT_TIMEOUT": "1", "OPENCTI__REQUEST_TIMEOUT": "5",
           "OPENCTI__LISTING_TIMEOUT": "5"}

    def calls_of(operation: str, result: str) -> float:
        return value(samples(get(base + "/metrics")[1]), CALLS, platform="opencti",
                     operation=operation, result=result)

    texts: list[str] = []
    with run_process("docker", None, env) as (_proc, outputs):
        wait_for(lambda: calls_of("GetConnectors", "ok") >= 2, 60, "listings")
        first = samples(get(base + "/metrics")[1])
        assert value(first, CALLS, platform="opencti", operation="GetVersion", result="ok") == 1
        assert value(first, CALLS, platform="opencti", operation="RegisterConnectorsManager",
                     result="ok") == 1
        # declared, never called yet: shown at 0
        assert (CALLS, (("operation", "UpdateConnectorHealth"), ("platform", "opencti"),
                        ("result", "ok"))) in first
        platform.listing_error = "the listing failed"
        wait_for(lambda: calls_of("GetConnectors", "graphql_error") >= 1, 30, "a failed listing")
        platform.listing_error = None
        platform.down()
        wait_for(lambda: calls_of("UpdateConnectorManagerStatus", "unreachable") >= 1, 30,
                 "a failed ping")
        platform.up()
        # back: the manager registers again (a failed ping goes back to GetVersion)
        wait_for(lambda: calls_of("GetVersion", "ok") >= 2, 30, "registered again")
        text = get(base + "/metrics")[1]
        texts.append(text)
        last = samples(text)
        assert value(last, "xtm_composer_passes_total", trigger="resync", result="failed") >= 1
        ok = value(last, CALLS, platform="opencti", operation="GetConnectors", result="ok")
        assert ok >= 2 and ok <= platform.operations().count("GetConnectors")
    texts += outputs
    assert_no_secrets(texts[0], [platform_token, manager_id, "metrics bench"])
    assert_no_secrets("\n".join(texts), [platform_token])
