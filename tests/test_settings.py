"""Settings layering, provenance, validation errors and masking."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from composer_core import logs
from composer_core.cli import cli
from composer_core.errors import SettingsError
from composer_core.settings import load_settings, validate_settings

SECRET = "s3cr3t-Pa55word-xyz"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_embedded_defaults_alone(make_settings) -> None:
    s = make_settings()
    assert s.get("manager.logger.level") == "info"
    assert s.get("opencti.daemon.selector") == "auto"
    assert s.get("auth.chain") == ["config", "docker-config", "keychain", "containers-auth", "anonymous"]
    assert s.get("opencti.daemon.docker.registry.url") is None
    assert s.source("manager.logger.level") == "embedded defaults"


def test_layers_in_order_later_wins(isolated_env: Path, tmp_path: Path) -> None:
    write(isolated_env / "config/default.yaml", "manager: {id: from-default, name: dflt}\n"
          "opencti: {daemon: {selector: podman}}\n")
    write(isolated_env / "config/staging.yaml", "manager: {id: from-staging}\n")
    write(isolated_env / "config/production.yaml", "manager: {id: from-production}\n")
    one = write(tmp_path / "one.yaml", "manager: {logger: {level: warning}}\nauth: {chain: [config, anonymous]}\n")
    two = write(tmp_path / "two.yaml", "manager: {logger: {format: json}}\n")
    environ = {"COMPOSER_ENV": "staging", "MANAGER__LOGGER__LEVEL": "debug",
               "OPENCTI__DAEMON__DOCKER__REGISTRY__URL": "https://registry.company.com:5000/",
               "PATH": "/usr/bin", "HOME": "/nowhere"}
    s = load_settings([str(one), str(two)], environ=environ, cwd=isolated_env,
                      overrides={"opencti.daemon.selector": "docker"})
    assert s.get("manager.id") == "from-staging"           # COMPOSER_ENV picks the file
    assert s.get("manager.name") == "dflt"                  # mappings merge key by key
    assert s.get("manager.logger.level") == "debug"        # environment beats files
    assert s.get("manager.logger.format") == "json"
    assert s.get("auth.chain") == ["config", "anonymous"]  # lists replace, never append
    assert s.get("opencti.daemon.selector") == "docker"    # command line beats everything
    assert s.get("manager.execute_schedule") == 10         # untouched defaults stay
    assert s.source("manager.id") == "config/staging.yaml"
    assert s.source("manager.logger.format") == f"file {two}"
    assert s.source("manager.logger.level") == "environment variable MANAGER__LOGGER__LEVEL"
    assert s.source("opencti.daemon.selector") == "command line"
    assert "path" not in s.as_dict() and "home" not in s.as_dict()


def test_default_environment_is_production(isolated_env: Path) -> None:
    write(isolated_env / "config/production.yaml", "manager: {id: prod}\n")
    assert load_settings(environ={}, cwd=isolated_env).get("manager.id") == "prod"


def test_xtm_composer_config_variable_when_no_config_flag(isolated_env: Path, tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "manager: {id: a}\n")
    b = write(tmp_path / "b.yaml", "manager: {id: b}\n")
    environ = {"XTM_COMPOSER_CONFIG": f"{a},{b}"}
    assert load_settings(environ=environ, cwd=isolated_env).get("manager.id") == "b"
    assert load_settings([str(a)], environ=environ, cwd=isolated_env).get("manager.id") == "a"


def test_environment_values_are_typed(isolated_env: Path) -> None:
    s = load_settings(environ={"MANAGER__EXECUTE_SCHEDULE": "30", "AUTH__STRICT_HELPERS": "true",
                               "AUTH__CHAIN": "config,anonymous",
                               "OPENCTI__DAEMON__DOCKER__REGISTRY__INSECURE": "true"},
                      cwd=isolated_env)
    assert s.get("manager.execute_schedule") == 30
    assert s.get("auth.strict_helpers") is True
    assert s.get("opencti.daemon.docker.registry.insecure") is True
    from composer_core.settings import name_list
    assert name_list(s, "auth.chain") == ["config", "anonymous"]


@pytest.mark.parametrize("environ, key, words", [
    ({"OPENCTI__DAEMON__DOCKER__REGISTRY__URL": "localhost:5000",
      "OPENCTI__DAEMON__DOCKER__REGISTRY__USERNAME": "bob"},
     "opencti.daemon.docker.registry.username", "username is set but password"),
    ({"OPENCTI__DAEMON__DOCKER__REGISTRY__URL": "localhost:5000",
      "OPENCTI__DAEMON__DOCKER__REGISTRY__PASSWORD": SECRET},
     "opencti.daemon.docker.registry.password", "password is set but username"),
    ({"OPENCTI__DAEMON__DOCKER__REGISTRY__URL": "https://reg.example.com/v2/team"},
     "opencti.daemon.docker.registry.url", "path"),
    ({"OPENCTI__DAEMON__DOCKER__REGISTRY__USERNAME": "bob",
      "OPENCTI__DAEMON__DOCKER__REGISTRY__PASSWORD": SECRET},
     "opencti.daemon.docker.registry.username", "no registry to belong to"),
    ({"MANAGER__EXECUTE_SCHEDULE": "soon"}, "manager.execute_schedule", "must be a positive number"),
    ({"MANAGER__EXECUTE_SCHEDULE": "0"}, "manager.execute_schedule", "greater than 0"),
    ({"MANAGER__LOGGER__LEVEL": "loud"}, "manager.logger.level", "unknown level"),
    ({"MANAGER__LOGGER__FORMAT": "xml"}, "manager.logger.format", "unknown format"),
    ({"AUTH__STRICT_HELPERS": "maybe"}, "auth.strict_helpers", "true or false"),
    ({"AUTH__CHAIN": "config,config"}, "auth.chain", "more than once"),
    ({"AUTH__CHAIN": "[]"}, "auth.chain", "at least one provider"),
    ({"MANAGER__MAX_PARALLEL": "0"}, "manager.max_parallel", "at least 1"),
    ({"MANAGER__METRICS__ENABLE": "sometimes"}, "manager.metrics.enable", "true or false"),
    ({"MANAGER__METRICS__PORT": "70000"}, "manager.metrics.port", "at most 65535"),
    ({"MANAGER__METRICS__PORT": "http"}, "manager.metrics.port", "a port number"),
    ({"MANAGER__METRICS__HOST": "a\nb"}, "manager.metrics.host", "control character"),
])
def test_each_validation_error_names_key_and_origin(isolated_env: Path, environ, key, words) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(environ=environ, cwd=isolated_env)
    message = err.value.message
    assert key in message and words in message
    assert "environment variable" in message
    if SECRET in environ.values():
        assert SECRET not in str(err.value)
    assert err.value.exit_code == 2


def test_unknown_selector_against_installed_runtimes(isolated_env: Path) -> None:
    settings = load_settings(environ={"OPENCTI__DAEMON__SELECTOR": "kubernetes"}, cwd=isolated_env)
    with pytest.raises(SettingsError) as err:
        validate_settings(settings, runtimes=["docker", "podman"])
    assert ("opencti.daemon.selector (from environment variable OPENCTI__DAEMON__SELECTOR): unknown "
            "selector 'kubernetes'; use one of auto, docker, podman") in err.value.message


def test_unknown_selector_fails_at_connect_and_config_check(run_cli, monkeypatch) -> None:
    monkeypatch.setenv("OPENCTI__DAEMON__SELECTOR", "nomad")
    for args in (["config", "check"], ["ps"]):
        code, _, err = run_cli(args)
        assert code == 2, err
        assert "nomad" in err and "docker" in err and "podman" in err and "kubernetes" in err
        assert "Traceback" not in err


def test_list_form_registries_are_validated(isolated_env: Path, tmp_path: Path) -> None:
    f = write(tmp_path / "r.yaml", "opencti: {daemon: {docker: {registries: "
              "[{url: 'a.example.com', username: u, password: p}, {username: x}, {url: 'b.io', insecure: 'yes'}]}}}\n")
    with pytest.raises(SettingsError) as err:
        load_settings([str(f)], environ={}, cwd=isolated_env)
    assert "opencti.daemon.docker.registries[1].url (from file" in err.value.message
    assert "registries[2].insecure" in err.value.message


def test_unknown_chain_names_against_installed_providers(make_settings) -> None:
    s = make_settings({"auth.chain": ["config", "vualt", "anonymous"]})
    with pytest.raises(SettingsError, match=r"unknown credential providers 'vualt'; available: anonymous, config"):
        validate_settings(s, providers=["config", "anonymous"], resolvers=[], runtimes=["docker"])


@pytest.mark.parametrize("content, words", [
    ("manager: [unclosed\n", "not valid YAML at line"),
    ("- just\n- a list\n", "must hold a mapping"),
])
def test_broken_files(isolated_env: Path, tmp_path: Path, content: str, words: str) -> None:
    f = write(tmp_path / "bad.yaml", content)
    with pytest.raises(SettingsError, match=words):
        load_settings([str(f)], environ={}, cwd=isolated_env)


def test_missing_file(isolated_env: Path) -> None:
    with pytest.raises(SettingsError, match="settings file: cannot read .*nope.yaml: No such file"):
        load_settings(["nope.yaml"], environ={}, cwd=isolated_env)


def test_config_show_masks_every_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(tmp_path / "c.yaml", "opencti:\n  token: opencti-token-123456\n  daemon:\n    docker:\n"
              f"      registry: {{url: localhost:5000, username: bob, password: {SECRET}}}\n"
              "      registries: [{url: b.example.com, username: eve, password: other-secret-999}]\n")
    runner = CliRunner()
    for args in (["--config", str(f), "config", "show"], ["--config", str(f), "config", "show", "--json"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        for secret in (SECRET, "other-secret-999", "opencti-token-123456"):
            assert secret not in result.output
        assert "******" in result.output and "bob" in result.output
    data = json.loads(runner.invoke(cli, ["--config", str(f), "config", "show", "--json"]).stdout)
    assert data["opencti"]["daemon"]["docker"]["registry"]["password"] == "******"
    assert data["opencti"]["daemon"]["docker"]["registries"][0]["password"] == "******"


def test_config_check_exit_codes(tmp_path: Path, run_cli) -> None:
    code, out, _ = run_cli(["config", "check"])
    assert code == 0 and "valid" in out
    bad = write(tmp_path / "bad.yaml", "auth: {chain: [config, vualt]}\n")
    code, out, err = run_cli(["--config", str(bad), "config", "check"])
    assert code == 2
    assert "auth.chain (from file" in err and "'vualt'" in err and "available: anonymous" in err
    code, out, err = run_cli(["--config", str(bad), "config", "check", "--json"])
    assert code == 2 and json.loads(out)["error"] == "settings"


def test_cli_reports_settings_errors_without_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MANAGER__LOGGER__LEVEL": "loud",
           "OPENCTI__DAEMON__DOCKER__REGISTRY__URL": "localhost:5000",
           "OPENCTI__DAEMON__DOCKER__REGISTRY__PASSWORD": SECRET}
    out = subprocess.run([sys.executable, "-m", "composer_core", "config", "check"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "manager.logger.level (from environment variable MANAGER__LOGGER__LEVEL)" in out.stderr
    assert "password is set but username is not" in out.stderr
    assert "Traceback" not in out.stderr and SECRET not in out.stderr + out.stdout


def test_log_lines_never_carry_a_secret(make_settings, capsys: pytest.CaptureFixture[str]) -> None:
    make_settings({"opencti.daemon.docker.registry": {"url": "localhost:5000", "username": "bob",
                                                      "password": SECRET}})
    for fmt in ("text", "json"):
        logs.configure("debug", fmt)
        logging.getLogger("xtm_composer.test").debug("sending %s to the registry", SECRET)
        logging.getLogger("xtm_composer.test").info("a line with no secret")
    err = capsys.readouterr().err
    assert SECRET not in err
    assert err.count("******") == 2
    json_line = [line for line in err.splitlines() if line.startswith("{")][0]
    assert json.loads(json_line)["level"] == "debug"
    logs.configure("info", "text")


def test_config_show_masks_secrets_not_the_auth_section(run_cli) -> None:
    code, out, _ = run_cli(["config", "show", "--json"])
    assert code == 0
    auth = json.loads(out)["auth"]
    assert auth["chain"][0] == "config" and auth["helper_timeout"] == 10


@pytest.mark.parametrize("raw", ["12345678", '"quoted"', "0x1F", "true", "@int 5x"])
def test_string_settings_from_the_environment_are_taken_as_written(isolated_env: Path, raw: str) -> None:
    s = load_settings(environ={"OPENCTI__DAEMON__DOCKER__REGISTRY__URL": "localhost:5000",
                               "OPENCTI__DAEMON__DOCKER__REGISTRY__USERNAME": "007",
                               "OPENCTI__DAEMON__DOCKER__REGISTRY__PASSWORD": raw}, cwd=isolated_env)
    assert s.get("opencti.daemon.docker.registry.password") == raw
    assert s.get("opencti.daemon.docker.registry.username") == "007"


def test_an_unparsable_environment_value_is_named_not_echoed(isolated_env: Path) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(environ={"MANAGER__EXECUTE_SCHEDULE": "@int s3cr3t-x"}, cwd=isolated_env)
    assert "environment variable MANAGER__EXECUTE_SCHEDULE" in err.value.message
    assert "s3cr3t-x" not in str(err.value)


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_numbers_are_refused(isolated_env: Path, value: str) -> None:
    for key in ("MANAGER__EXECUTE_SCHEDULE", "AUTH__HELPER_TIMEOUT", "AUTH__CACHE_TTL"):
        with pytest.raises(SettingsError, match="finite"):
            load_settings(environ={key: value}, cwd=isolated_env)


def test_a_url_with_user_info_is_never_echoed(isolated_env: Path) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(environ={"OPENCTI__DAEMON__DOCKER__REGISTRY__URL": "https://robot:S3cretPass@reg.io"},
                      cwd=isolated_env)
    assert "user info" in err.value.message and "***@reg.io" in err.value.message
    assert "S3cretPass" not in str(err.value)


def test_invalid_mirror_rules_are_settings_errors(isolated_env: Path, tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", "opencti: {daemon: {docker: {mirrors: {'https://': m.io/x, 'ok.io': ''}}}}\n")
    with pytest.raises(SettingsError) as err:
        load_settings([str(f)], environ={}, cwd=isolated_env)
    assert "mirrors.https://" in err.value.message and "invalid rule" in err.value.message
    assert "mirrors.ok.io" in err.value.message


def test_config_check_accepts_a_disabled_provider_in_the_chain(run_cli, monkeypatch) -> None:
    monkeypatch.setenv("XTM_COMPOSER_DISABLE_PLUGINS", "keychain")
    code, out, err = run_cli(["config", "check"])
    assert code == 0, err


@pytest.mark.parametrize("secret", ['pa"ss1234', "pässword1", "back\\slash9", "tab\tsecret"])
def test_json_log_lines_mask_secrets_that_json_would_escape(make_settings, capsys, secret: str) -> None:
    make_settings({"opencti.daemon.docker.registry": {"url": "localhost:5000", "username": "bob",
                                                      "password": secret}})
    logs.configure("debug", "json")
    try:
        logging.getLogger("xtm_composer.test").debug("sending %s", secret)
    finally:
        logs.configure("info", "text")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert json.loads(line)["message"] == "sending ******"
    assert json.dumps(secret)[1:-1] not in line and secret not in line


@pytest.mark.parametrize("password", ["@int 5x", "@format {this.manager.id}", "@jinja {{ 1 }}", "@json [1]"])
def test_values_are_never_dynaconf_directives(isolated_env: Path, tmp_path: Path, password: str) -> None:
    import yaml

    registry = {"url": "localhost:5000", "username": "bob", "password": password}
    f = write(tmp_path / "p.yaml", yaml.safe_dump({"opencti": {"daemon": {"docker": {"registry": registry}}}}))
    s = load_settings([str(f)], environ={}, cwd=isolated_env)
    assert s.get("opencti.daemon.docker.registry.password") == password


def test_config_check_knows_the_runtime_backends_of_auto_order(run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCTI__DAEMON__AUTO_ORDER", "nope,docker")
    code, _, err = run_cli(["config", "check"])
    assert code == 2
    assert "opencti.daemon.auto_order (from environment variable OPENCTI__DAEMON__AUTO_ORDER): " \
           "unknown runtime backends 'nope'" in err
    # a disabled backend is skipped when auto runs: naming it is no error
    monkeypatch.setenv("OPENCTI__DAEMON__AUTO_ORDER", "podman,docker")
    monkeypatch.setenv("XTM_COMPOSER_DISABLE_PLUGINS", "podman")
    code, out, err = run_cli(["config", "check"])
    assert (code, out.strip()) == (0, "settings are valid"), err
