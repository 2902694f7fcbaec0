"""The credential chain end to end: precedence, order, ``auth explain``, and the secrets scan.

Every source is real: settings files, config.json, auth.json in throwaway folders, credential
helpers as executables on the request's PATH, the real plugin manager and the real ``auth.chain``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from composer_core import logs
from composer_core.auth.chain import resolve_credentials
from composer_core.cli import cli
from composer_core.errors import CredentialsError, SettingsError
from composer_core.images.resolve import resolve_image
from composer_plugins.docker.auth import docker_auth_config
from tests.conftest import assert_no_secrets
from tests.keychain_helpers import (
    BAD_ENTRY_SECRET,
    CONFIG_PASSWORD,
    DOCKER_PASSWORD,
    DOCKER_TOKEN,
    ENV_PASSWORD,
    HELPERS,
    PASS_SECRET,
    PASS_TOKEN,
    PODMAN_PASSWORD,
    SECRETS,
    PassStore,
    b64,
    calls,
    counting_helper,
    hanging_helper,
    helper_env,
    write_helper,
    write_json,
)

REG = "reg.example.com:5000"
IMAGE = f"{REG}/team/app:1"
CHAIN = ["config", "docker-config", "keychain", "containers-auth", "anonymous"]


@dataclass
class Sources:
    """One registry configured in every source; each test removes what it wants to."""

    home: Path
    bin_dir: Path
    docker_config: Path
    auth_file: Path
    environ: dict[str, str]
    config_registry: dict[str, str]

    def settings_overrides(self, with_config: bool = True) -> dict:
        return {"opencti.daemon.docker.registry": self.config_registry} if with_config else {}


@pytest.fixture
def sources(tmp_path: Path) -> Sources:
    home = tmp_path / "chain-home"
    bin_dir = tmp_path / "chain-bin"
    counting_helper(bin_dir)
    write_helper(bin_dir, "std-notfound", HELPERS["std-notfound"])
    docker_config = write_json(home / ".docker/config.json", {
        "auths": {REG: {"auth": b64(f"docker-user:{DOCKER_PASSWORD}")}},
        "credHelpers": {REG: "count"},
    })
    auth_file = write_json(tmp_path / "auth.json", {"auths": {
        f"{REG}/team": {"auth": b64(f"podman-user:{PODMAN_PASSWORD}")}}})
    environ = helper_env(home, bin_dir, REGISTRY_AUTH_FILE=str(auth_file))
    return Sources(home, bin_dir, docker_config, auth_file, environ,
                   {"url": f"https://{REG}", "username": "config-user", "password": CONFIG_PASSWORD})


def resolve(plugins, make_settings, sources: Sources, image: str = IMAGE, **overrides):
    settings = make_settings(overrides)
    return resolve_credentials(resolve_image(image, settings, plugins), settings, plugins,
                               environ=sources.environ)


def test_precedence_along_the_default_chain(plugins, make_settings, sources: Sources) -> None:
    assert make_settings().get("auth.chain") == CHAIN  # the real default setting
    first = resolve(plugins, make_settings, sources, **sources.settings_overrides())
    assert (first.source, first.credentials.username) == ("config", "config-user")
    assert [(s.provider, s.outcome) for s in first.steps] == [
        ("config", "found"), ("docker-config", "skipped"), ("keychain", "skipped"),
        ("containers-auth", "skipped"), ("anonymous", "skipped")]
    assert first.steps[1].detail == "not asked: config already answered"

    second = resolve(plugins, make_settings, sources)
    assert (second.source, second.credentials.username) == ("docker-config", "docker-user")
    assert second.steps[0].outcome == "not-found"

    write_json(sources.docker_config, {"auths": {REG: {}}, "credHelpers": {REG: "count"}})
    third = resolve(plugins, make_settings, sources)
    assert (third.source, third.credentials.username) == ("keychain", "helper-user")
    assert "{} marker" in third.steps[1].detail

    write_json(sources.docker_config, {"auths": {REG: {}}, "credHelpers": {REG: "std-notfound"}})
    fourth = resolve(plugins, make_settings, sources)
    assert (fourth.source, fourth.credentials.username) == ("containers-auth", "podman-user")
    assert fourth.credentials.key == f"{REG}/team"
    assert [s.outcome for s in fourth.steps] == ["not-found", "not-found", "not-found", "found", "skipped"]

    fifth = resolve(plugins, make_settings, sources, image=f"{REG}/other/app")  # outside the scope
    assert fifth.source == "anonymous" and docker_auth_config(fifth.credentials) == {}
    assert "'reg.example.com:5000/team' cover other paths only" in fifth.steps[3].detail


def test_reordered_chain(plugins, make_settings, sources: Sources) -> None:
    reordered = ["containers-auth", "keychain", "docker-config", "config", "anonymous"]
    result = resolve(plugins, make_settings, sources, **sources.settings_overrides(),
                     **{"auth.chain": reordered})
    assert result.source == "containers-auth"
    assert [s.provider for s in result.steps] == reordered
    result = resolve(plugins, make_settings, sources, **{"auth.chain": ["keychain", "config", "anonymous"]})
    assert result.source == "keychain"
    assert [s.provider for s in result.steps] == ["keychain", "config", "anonymous"]


def test_unknown_provider_name_fails_loudly(plugins, make_settings, sources: Sources) -> None:
    with pytest.raises(SettingsError) as raised:
        resolve(plugins, make_settings, sources, **{"auth.chain": ["config", "dokcer-config", "anonymous"]})
    text = str(raised.value)
    assert "names unknown credential providers 'dokcer-config'" in text
    assert "available credential providers: anonymous, config, containers-auth, docker-config, keychain" \
        in text


def test_no_anonymous_lists_every_step(plugins, make_settings, sources: Sources) -> None:
    with pytest.raises(CredentialsError) as raised:
        resolve(plugins, make_settings, sources, image="quay.io/nobody/app",
                **{"auth.chain": ["docker-config", "keychain", "containers-auth"]})
    text = str(raised.value)
    assert "no credentials for quay.io" in text
    assert f"docker-config: not-found - no entry for quay.io/nobody/app in {sources.docker_config}" in text
    assert "keychain: not-found" in text and "containers-auth: not-found" in text


def test_a_failing_source_is_skipped_and_recorded(plugins, make_settings, sources: Sources) -> None:
    sources.docker_config.write_text("{broken")
    result = resolve(plugins, make_settings, sources)
    assert result.source == "containers-auth"
    assert [s.outcome for s in result.steps[:3]] == ["not-found", "error", "error"]
    assert "is not valid JSON" in result.steps[1].detail


def test_docker_auth_config_wins_over_the_helper_as_in_the_docker_cli(
        plugins, make_settings, sources: Sources) -> None:
    """config.json names a helper for the registry; DOCKER_AUTH_CONFIG holds it too: the Docker CLI
    answers from the variable without running the helper, and so does the default chain."""
    write_json(sources.docker_config, {"auths": {REG: {}}, "credHelpers": {REG: "count"}})
    sources.environ["DOCKER_AUTH_CONFIG"] = json.dumps(
        {"auths": {REG: {"auth": b64(f"env-user:{ENV_PASSWORD}")}}})
    result = resolve(plugins, make_settings, sources)
    assert (result.source, result.credentials.username) == ("docker-config", "env-user")
    assert result.to_dict()["key"] == f"DOCKER_AUTH_CONFIG[{REG}]"
    assert [s.outcome for s in result.steps[1:3]] == ["found", "skipped"]
    assert calls(sources.bin_dir) == []  # the helper never ran


# --- auth explain ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def reset_cli_logging() -> Iterator[None]:
    """The CLI attaches a handler to the stream of its invocation; drop it afterwards."""
    yield
    logger = logging.getLogger(logs.LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, "_xtm_composer_handler", False):
            logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def use_environment(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)


def test_auth_explain_json(monkeypatch: pytest.MonkeyPatch, sources: Sources) -> None:
    write_json(sources.docker_config, {"auths": {REG: {}}, "credHelpers": {REG: "count"}})
    use_environment(monkeypatch, sources.environ)
    result = CliRunner().invoke(cli, ["auth", "explain", IMAGE, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {k: data[k] for k in ("image", "resolved", "registry", "source", "username",
                                 "identity_token")} == {
        "image": IMAGE, "resolved": IMAGE, "registry": REG, "source": "keychain",
        "username": "helper-user", "identity_token": False}
    assert data["key"] == f"credHelpers[{REG}] -> docker-credential-count"
    assert data["file"] == str(sources.docker_config)
    assert [(s["provider"], s["outcome"]) for s in data["steps"]] == [
        ("config", "not-found"), ("docker-config", "not-found"), ("keychain", "found"),
        ("containers-auth", "skipped"), ("anonymous", "skipped")]
    assert set(data["steps"][0]) == {"provider", "outcome", "detail"}
    assert "helper ran" in data["steps"][2]["detail"]
    again = json.loads(CliRunner().invoke(cli, ["auth", "explain", IMAGE, "--json"]).stdout)
    assert "from cache" in again["steps"][2]["detail"]  # process-wide cache


def test_auth_explain_text_and_identity_token(monkeypatch: pytest.MonkeyPatch, sources: Sources) -> None:
    write_json(sources.docker_config, {"auths": {REG: {"identitytoken": DOCKER_TOKEN}}})
    use_environment(monkeypatch, sources.environ)
    result = CliRunner().invoke(cli, ["auth", "explain", IMAGE])
    assert result.exit_code == 0, result.output
    assert "source:    docker-config (identity token)" in result.stdout
    assert f"+ docker-config    found     key '{REG}' in {sources.docker_config}" in result.stdout
    assert "- config           not-found" in result.stdout
    assert DOCKER_TOKEN not in result.output


def test_auth_explain_shows_docker_auth_config_as_its_own_source(
        monkeypatch: pytest.MonkeyPatch, sources: Sources) -> None:
    use_environment(monkeypatch, sources.environ)
    monkeypatch.setenv("DOCKER_AUTH_CONFIG", json.dumps(
        {"auths": {f"https://{REG}/v1/": {"auth": b64(f"env-user:{ENV_PASSWORD}")}}}))
    result = CliRunner().invoke(cli, ["auth", "explain", IMAGE, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["source"], data["username"], data["key"], data["file"]) == (
        "docker-config", "env-user", f"DOCKER_AUTH_CONFIG[https://{REG}/v1/]", None)
    assert "in DOCKER_AUTH_CONFIG (the environment" in data["steps"][1]["detail"]
    text = CliRunner().invoke(cli, ["auth", "explain", IMAGE]).stdout
    assert f"+ docker-config    found     key 'https://{REG}/v1/' in DOCKER_AUTH_CONFIG" in text
    assert_no_secrets(result.output + text, SECRETS)


def test_auth_explain_unknown_provider(run_cli, monkeypatch: pytest.MonkeyPatch, sources: Sources) -> None:
    use_environment(monkeypatch, sources.environ)
    monkeypatch.setenv("AUTH__CHAIN", "config,vualt,anonymous")
    code, out, err = run_cli(["auth", "explain", IMAGE])
    assert code == 2
    assert "'vualt'" in err and "available credential providers: anonymous, config" in err


# --- no secret anywhere, at debug level -----------------------------------------------------------

SCAN_HOSTS = {
    # host: what answers it
    "cfg.example.com": "config",
    "dcfg.example.com": "docker-config (auth)",
    "tok.example.com": "docker-config (identity token)",
    "bad.example.com": "docker-config bad entries, then anonymous",
    "helper.example.com": "keychain (count)",
    "tokhelper.example.com": "keychain (token)",
    "garbage.example.com": "keychain garbage",
    "odd.example.com": "keychain non-standard not found",
    "fails.example.com": "keychain exit 1",
    "hang.example.com": "keychain hang",
    "desktop.example.com": "keychain missing helper",
    "quay.io": "containers-auth",
    "env.example.com": "docker-config (DOCKER_AUTH_CONFIG)",
}


def scan_environment(tmp_path: Path) -> tuple[dict[str, str], Path]:
    home = tmp_path / "scan-home"
    bin_dir = tmp_path / "scan-bin"
    counting_helper(bin_dir)
    hanging_helper(bin_dir)
    for name in ("token", "garbage", "odd-notfound", "fails"):
        write_helper(bin_dir, name, HELPERS[name])
    write_json(home / ".docker/config.json", {
        "auths": {
            "dcfg.example.com": {"auth": b64(f"docker-user:{DOCKER_PASSWORD}")},
            "https://tok.example.com/v1/": {"auth": b64("docker-user:"), "identitytoken": DOCKER_TOKEN},
            "bad.example.com": {"auth": BAD_ENTRY_SECRET},
            "https://bad.example.com": {"auth": b64(BAD_ENTRY_SECRET)},
            "bad.example.com/x": {"username": BAD_ENTRY_SECRET},
            "BAD.example.com": {"password": BAD_ENTRY_SECRET},
        },
        "credHelpers": {"helper.example.com": "count", "tokhelper.example.com": "token",
                        "garbage.example.com": "garbage", "odd.example.com": "odd-notfound",
                        "fails.example.com": "fails", "hang.example.com": "hang",
                        "desktop.example.com": "desktop"},
    })
    auth_file = write_json(tmp_path / "scan-auth.json", {"auths": {
        "quay.io/team": {"auth": b64(f"podman-user:{PODMAN_PASSWORD}")},
        "quay.io/broken": {"auth": b64(BAD_ENTRY_SECRET) + "$"}}})
    settings_file = tmp_path / "scan-settings.yaml"
    settings_file.write_text(
        "opencti: {daemon: {docker: {registries: [{url: cfg.example.com, username: config-user, "
        f"password: {CONFIG_PASSWORD}}}]}}}}}}\nauth: {{helper_timeout: 0.5}}\n")
    env_auths = json.dumps({"auths": {"env.example.com": {"auth": b64(f"env-user:{ENV_PASSWORD}")},
                                      "envbad.example.com": {"password": BAD_ENTRY_SECRET}}})
    return helper_env(home, bin_dir, REGISTRY_AUTH_FILE=str(auth_file),
                      DOCKER_AUTH_CONFIG=env_auths), settings_file


def test_no_secret_in_any_output_at_debug_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture, run_cli) -> None:
    caplog.set_level(logging.DEBUG, logger=logs.LOGGER)
    environ, settings_file = scan_environment(tmp_path)
    use_environment(monkeypatch, environ)
    captured: list[str] = []
    keychain_outcomes: dict[str, str] = {}
    runner = CliRunner()
    for host in SCAN_HOSTS:
        image = f"{host}/team/app:1"
        for extra in ([], ["--json"]):
            args = ["--config", str(settings_file), "--log-level", "debug", "auth", "explain", image, *extra]
            result = runner.invoke(cli, args)
            assert result.exit_code == 0, (host, result.output)
            captured += [result.output, result.stdout, result.stderr]
        # the same through the real entry point, its stderr logger and its error printer
        code, out, err = run_cli(["--config", str(settings_file), "--log-level", "debug", "auth",
                                  "explain", image, "--json"])
        assert code == 0, err
        captured += [out, err]
        steps = {s["provider"]: s for s in json.loads(out)["steps"]}
        keychain_outcomes[host] = steps.get("keychain", {}).get("outcome", "(not asked)")
    # the keychain step of each host: skipped where an earlier provider answered, found where a
    # helper holds the host, an error for every broken helper, not-found where nothing matches
    assert keychain_outcomes == {
        "cfg.example.com": "skipped", "dcfg.example.com": "skipped", "tok.example.com": "skipped",
        "env.example.com": "skipped", "bad.example.com": "not-found", "quay.io": "not-found",
        "helper.example.com": "found", "tokhelper.example.com": "found",
        "garbage.example.com": "error", "odd.example.com": "error", "fails.example.com": "error",
        "hang.example.com": "error", "desktop.example.com": "error"}
    by_source = {host: json.loads(runner.invoke(cli, ["--config", str(settings_file), "auth", "explain",
                                                      f"{host}/team/app", "--json"]).stdout)["source"]
                 for host in SCAN_HOSTS}
    assert by_source == {
        "cfg.example.com": "config", "dcfg.example.com": "docker-config",
        "tok.example.com": "docker-config", "bad.example.com": "anonymous",
        "helper.example.com": "keychain", "tokhelper.example.com": "keychain",
        "garbage.example.com": "anonymous", "odd.example.com": "anonymous",
        "fails.example.com": "anonymous", "hang.example.com": "anonymous",
        "desktop.example.com": "anonymous", "quay.io": "containers-auth",
        "env.example.com": "docker-config"}
    # the error paths: strict helpers, and a chain without anonymous
    for env_name, value, host in (("AUTH__STRICT_HELPERS", "true", "garbage.example.com"),
                                  ("AUTH__CHAIN", "docker-config,keychain,containers-auth",
                                   "bad.example.com")):
        monkeypatch.setenv(env_name, value)
        for extra in ([], ["--json"]):
            code, out, err = run_cli(["--config", str(settings_file), "--log-level", "debug", "auth",
                                      "explain", f"{host}/team/app", *extra])
            assert code == 4, err
            captured += [out, err]
        monkeypatch.delenv(env_name)
    captured.append(caplog.text)
    captured += [record.getMessage() for record in caplog.records]
    everything = "\n".join(captured)
    assert "credential provider 'keychain' failed for garbage.example.com" in everything
    assert "running " in everything  # the debug lines were captured
    assert_no_secrets(everything, SECRETS)


@pytest.mark.integration
def test_no_secret_from_the_real_keychain_at_debug_level(pass_store: PassStore, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=logs.LOGGER)
    pass_store.store("scan.example.com", "scan-user", PASS_SECRET)
    pass_store.store("https://index.docker.io/v1/", "<token>", PASS_TOKEN)
    home = tmp_path / "pass-home"
    write_json(home / ".docker/config.json", {"auths": {"https://index.docker.io/v1/": {}},
                                              "credsStore": "pass"})
    use_environment(monkeypatch, {**pass_store.environ, "HOME": str(home)})
    captured = []
    sources = {}
    for image in ("scan.example.com/team/app:1", "alpine:3", "unknown.example.com/x"):
        for extra in ([], ["--json"]):
            result = CliRunner().invoke(cli, ["--log-level", "debug", "auth", "explain", image, *extra])
            assert result.exit_code == 0, result.output
            captured += [result.output, result.stdout, result.stderr]
            if extra:
                data = json.loads(result.stdout)
                sources[image] = (data["source"], data["username"], data["identity_token"])
    assert sources == {"scan.example.com/team/app:1": ("keychain", "scan-user", False),
                       "alpine:3": ("keychain", None, True),
                       "unknown.example.com/x": ("anonymous", None, False)}
    captured += [caplog.text, *(record.getMessage() for record in caplog.records)]
    assert_no_secrets("\n".join(captured), SECRETS)
