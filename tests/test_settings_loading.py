"""Settings loading under hostile or careless input: isolation from the process environment, typed
environment values, no directive ever interpreted, bounded and strict YAML, empty sections."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from composer_core.errors import SettingsError, UsageError
from composer_core.fleet.connectors import load_connectors
from composer_core.settings import load_settings

SECRET = "Zq8-very-secret-Pw"
BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join(["*" + chr(97 + i)] * 9) + "]\n"
                  for i in range(8)))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- isolation (issue 9) ------------------------------------------------------------------------

def test_the_process_environment_is_never_read_when_environ_is_given(
        isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hijack = write(tmp_path / "hijack.yaml", "manager: {id: hijacked, hijacked_by_file: 1}\n")
    for name, value in {"DYNACONF_MANAGER__ID": "hijacked", "DYNACONF_MANAGER__HIJACKED_BY_DYNACONF": "1",
                        "XTM_COMPOSER_SETTINGS_MANAGER__HIJACKED_BY_PREFIX": "1",
                        "XTM_COMPOSER_SETTINGS_OPENCTI": '@json {"token": "hijacked"}',
                        "SETTINGS_FILE_FOR_DYNACONF": str(hijack),
                        "INCLUDES_FOR_DYNACONF": str(hijack),
                        "MANAGER__ID": "hijacked", "MANAGER__HIJACKED_BY_ENV": "1",
                        "XTM_COMPOSER_CONFIG": str(hijack)}.items():
        monkeypatch.setenv(name, value)
    s = load_settings(environ={}, cwd=isolated_env)
    assert s.get("manager.id") == "xtm-composer"
    assert "hijack" not in json.dumps(s.as_dict(masked=False))
    assert s.source("manager.id") == "embedded defaults" and not s.unknown


# --- environment values (issue 13 item 1) -------------------------------------------------------

def test_json_lists_and_mappings_from_the_environment(isolated_env: Path) -> None:
    s = load_settings(environ={
        "OPENCTI__DAEMON__DOCKER__REGISTRIES": json.dumps(
            [{"url": "r.example.com:5000", "username": "u", "password": SECRET}]),
        "OPENCTI__DAEMON__DOCKER__MIRRORS": '{"docker.io": "mirror.example.com/hub"}',
        "AUTH__CHAIN": '["config", "anonymous"]'}, cwd=isolated_env)
    assert s.get("opencti.daemon.docker.registries") == [
        {"url": "r.example.com:5000", "username": "u", "password": SECRET}]
    assert s.get("opencti.daemon.docker.mirrors") == {"docker.io": "mirror.example.com/hub"}
    assert s.get("auth.chain") == ["config", "anonymous"]
    assert s.source("opencti.daemon.docker.registries[0].url") == \
        "environment variable OPENCTI__DAEMON__DOCKER__REGISTRIES"


@pytest.mark.parametrize("raw", [
    '[{"url": "r.example.com:5000", "username": "u", "password": "' + SECRET + '"',   # unclosed
    '[{"url": "r.example.com:5000", "username": "u", "password": "' + SECRET + '", "url": "x"}]',
])
def test_a_broken_json_value_is_located_never_echoed(isolated_env: Path, raw: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(environ={"OPENCTI__DAEMON__DOCKER__REGISTRIES": raw}, cwd=isolated_env)
    text = str(err.value) + (err.value.hint or "")
    assert "environment variable OPENCTI__DAEMON__DOCKER__REGISTRIES" in text
    assert "its value is not valid" in text and "at line" in text
    assert SECRET not in text


def test_registries_as_a_string_is_described_not_echoed(run_cli, tmp_path: Path) -> None:
    quoted = json.dumps(json.dumps([{"url": "r.example.com:5000", "username": "u", "password": SECRET}]))
    f = write(tmp_path / "s.yaml", f"opencti: {{daemon: {{docker: {{registries: {quoted}}}}}}}\n")
    for args in (["--config", str(f), "config", "check"],
                 ["--config", str(f), "--log-level", "debug", "config", "check", "--json"]):
        code, out, err = run_cli(args)
        assert code == 2
        assert SECRET not in out + err
        assert "opencti.daemon.docker.registries" in out + err
        assert "not a string (" in out + err and "characters)" in out + err


def test_a_wrong_typed_value_is_described_by_type_and_length(isolated_env: Path) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(environ={"MANAGER__EXECUTE_SCHEDULE": SECRET}, cwd=isolated_env)
    assert f"not a string ({len(SECRET)} characters)" in err.value.message
    assert SECRET not in str(err.value)


# --- directives (issue 13 item 8) --------------------------------------------------------------

DIRECTIVES = ["@int 5", "@json [1, 2]", "@format {env[HOME]}", "@format {this.manager.id}",
              "@jinja {{ this.manager.id }}", "@jinja {{ 1/0 }}", "@bool on", "@del", "@none"]


@pytest.mark.parametrize("value", DIRECTIVES)
def test_no_directive_is_ever_interpreted(isolated_env: Path, tmp_path: Path, value: str, run_cli,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(tmp_path / "d.yaml", json.dumps({"manager": {"name": value},
                                               "opencti": {"daemon": {"docker": {"mirrors": {"docker.io": value}}}},
                                               "images": {"resolvers": [value]}}))
    s = load_settings([str(f)], environ={"MANAGER__ID": value, "AUTH__CHAIN": value}, cwd=isolated_env,
                      validate=False)
    assert s.get("manager.name") == value and s.get("manager.id") == value
    assert s.get("opencti.daemon.docker.mirrors") == {"docker.io": value}
    assert s.get("images.resolvers") == [value] and s.get("auth.chain") == value
    monkeypatch.setenv("MANAGER__NAME", value)
    code, out, err = run_cli(["config", "show"])
    assert code == 0, err
    assert value in out and "_Verbatim" not in out and "object at 0x" not in out


def test_a_directive_in_a_number_key_is_text_and_refused(isolated_env: Path) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(environ={"MANAGER__EXECUTE_SCHEDULE": "@int 5"}, cwd=isolated_env)
    assert "manager.execute_schedule" in err.value.message and "not a string" in err.value.message


# --- empty and misshapen sections (items 7, 13) ------------------------------------------------

@pytest.mark.parametrize("text", ["manager:\n", "manager: {}\n", "manager:\n  # id: commented\n",
                                  "opencti:\n  daemon:\n    docker:\n      registry:\n"])
def test_an_empty_section_changes_nothing(isolated_env: Path, tmp_path: Path, text: str) -> None:
    f = write(tmp_path / "e.yaml", text)
    s = load_settings([str(f)], environ={}, cwd=isolated_env)
    assert s.get("manager.id") == "xtm-composer" and s.get("manager.logger.level") == "info"
    assert s.get("opencti.daemon.docker.registry.insecure") is False


@pytest.mark.parametrize("text, key", [("manager: 5\n", "manager"),
                                       ("manager: {logger: debug}\n", "manager.logger"),
                                       ("opencti: [a, b]\n", "opencti")])
def test_a_section_given_as_a_scalar_must_be_a_mapping(isolated_env: Path, tmp_path: Path, text: str,
                                                       key: str) -> None:
    f = write(tmp_path / "m.yaml", text)
    with pytest.raises(SettingsError) as err:
        load_settings([str(f)], environ={}, cwd=isolated_env)
    assert f"{key} (from file {f}): must be a mapping" in err.value.message
    assert err.value.exit_code == 2


# --- YAML safety (items 5, 10, 12, 13), in both file kinds -------------------------------------

def connectors_error(path: Path) -> str:
    with pytest.raises(UsageError) as err:
        load_connectors(path)
    assert err.value.exit_code == 2
    return err.value.message


def test_an_alias_bomb_is_refused_in_both_file_kinds(isolated_env: Path, tmp_path: Path) -> None:
    f = write(tmp_path / "bomb.yaml", BOMB)
    with pytest.raises(SettingsError) as err:
        load_settings([str(f)], environ={}, cwd=isolated_env)
    assert str(f) in err.value.message and "alias" in err.value.message
    assert "alias" in connectors_error(f) and str(f) in connectors_error(f)


@pytest.mark.parametrize("style", ["block", "flow", "flow-mapping"])
def test_deep_nesting_is_refused_naming_the_file(isolated_env: Path, tmp_path: Path, style: str) -> None:
    if style == "block":  # 1,500 levels: 5,000 would be larger than the 4 MiB bound
        text = "".join("  " * i + f"k{i}:\n" for i in range(1500))
    elif style == "flow":
        text = "manager: " + "[" * 5000 + "]" * 5000 + "\n"
    else:
        text = "manager: " + "{k: " * 5000 + "}" * 5000 + "\n"
    f = write(tmp_path / "deep.yaml", text)
    with pytest.raises(SettingsError) as err:
        load_settings([str(f)], environ={}, cwd=isolated_env)
    assert str(f) in err.value.message and "levels deep" in err.value.message
    assert "levels deep" in connectors_error(f)


def test_deep_nesting_from_the_environment_is_refused(isolated_env: Path) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(environ={"AUTH__CHAIN": "[" * 5000 + "]" * 5000}, cwd=isolated_env)
    assert "AUTH__CHAIN" in err.value.message and "levels deep" in err.value.message


def test_duplicate_keys_are_an_error_naming_the_lines(isolated_env: Path, tmp_path: Path) -> None:
    f = write(tmp_path / "dup.yaml", "opencti:\n  daemon:\n    docker:\n      registry:\n"
              f"        url: r.example.com\n        username: u\n        password: {SECRET}\n"
              "        password: other\n")
    with pytest.raises(SettingsError) as err:
        load_settings([str(f)], environ={}, cwd=isolated_env)
    assert "'password' appears twice" in err.value.message and "line 7 and line 8" in err.value.message
    assert SECRET not in str(err.value)
    c = write(tmp_path / "c.yaml", "connectors:\n  - id: a\n    name: a\n    image: alpine\n    image: busybox\n")
    assert "'image' appears twice" in connectors_error(c) and "line 4 and line 5" in connectors_error(c)


def test_a_raw_nul_is_reported_with_its_position(isolated_env: Path, tmp_path: Path) -> None:
    f = tmp_path / "nul.yaml"
    f.write_bytes(b"manager:\n  id: ab\x00cd\n")
    with pytest.raises(SettingsError) as err:
        load_settings([str(f)], environ={}, cwd=isolated_env)
    assert "line 2, column 9" in err.value.message and "NUL" in err.value.message
    assert "line 2, column 9" in connectors_error(f)


@pytest.mark.parametrize("manager_id", ["ab\x00cd", "ab\ncd", "ab\x1bcd"])
def test_a_control_character_in_manager_id_is_refused(isolated_env: Path, tmp_path: Path,
                                                      manager_id: str) -> None:
    f = write(tmp_path / "id.yaml", json.dumps({"manager": {"id": manager_id}}))
    for kwargs in ({"config_files": [str(f)], "environ": {}}, {"environ": {"MANAGER__ID": manager_id}}):
        with pytest.raises(SettingsError) as err:
            load_settings(cwd=isolated_env, **kwargs)  # type: ignore[arg-type]
        assert "manager.id" in err.value.message and "control character" in err.value.message


# --- special and huge files (items 3, 4) --------------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "huge"])
def test_config_is_a_regular_bounded_file(run_cli, tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        path = tmp_path / "fifo.yaml"
        os.mkfifo(path)
        words = "FIFO"
    elif kind == "dev-zero":
        path, words = Path("/dev/zero"), "character device"
    elif kind == "directory":
        path, words = tmp_path, "directory"
    else:
        path = tmp_path / "huge.yaml"
        path.write_text("manager: {id: x}\n" + "#" * (5 * 1024 * 1024) + "\n")
        words = "larger than 4 MiB"
    code, out, err = run_cli(["--config", str(path), "config", "check"])
    assert code == 2
    assert str(path) in err and words in err and "Traceback" not in err
    if kind != "directory":  # a directory is refused by click's own check of --config
        assert err.startswith(f"error: settings file {path} ")  # said once, naming the file first


# --- bounds (item 10) ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, value, key, words", [
    ("MANAGER__EXECUTE_SCHEDULE", "1e300", "manager.execute_schedule", "at most 86400"),
    ("MANAGER__EXECUTE_SCHEDULE", "86401", "manager.execute_schedule", "at most 86400"),
    ("AUTH__HELPER_TIMEOUT", "1e300", "auth.helper_timeout", "at most 600"),
    ("AUTH__HELPER_TIMEOUT", "601", "auth.helper_timeout", "at most 600"),
    ("AUTH__CACHE_TTL", "1e9", "auth.cache_ttl", "at most 86400"),
    ("MANAGER__MAX_PARALLEL", "100000", "manager.max_parallel", "at most 256"),
])
def test_numbers_have_sane_bounds(isolated_env: Path, name: str, value: str, key: str, words: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(environ={name: value}, cwd=isolated_env)
    assert f"{key} (from environment variable {name}" in err.value.message
    assert words in err.value.message and err.value.exit_code == 2


def test_numbers_at_their_bounds_are_accepted(isolated_env: Path) -> None:
    s = load_settings(environ={"MANAGER__EXECUTE_SCHEDULE": "86400", "AUTH__HELPER_TIMEOUT": "600",
                               "AUTH__CACHE_TTL": "0", "MANAGER__MAX_PARALLEL": "256"}, cwd=isolated_env)
    assert s.get("manager.execute_schedule") == 86400 and s.get("auth.helper_timeout") == 600


# --- unknown keys (item 6) ---------------------------------------------------------------------

def test_unknown_keys_warn_with_the_nearest_known_key(isolated_env: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    f = write(tmp_path / "typo.yaml", "manger: {id: x}\nauth: {helper_timout: 3}\n"
              "opencti: {daemon: {docker: {registri: {url: r.example.com, username: u, password: p}}}}\n")
    with caplog.at_level("WARNING", logger="xtm_composer.settings"):
        s = load_settings([str(f)], environ={"MANAGER__LOGER__LEVEL": "debug"}, cwd=isolated_env)
    suggestions = {u.key: u.suggestion for u in s.unknown}
    assert suggestions == {"manger": "manager", "auth.helper_timout": "auth.helper_timeout",
                           "opencti.daemon.docker.registri": "opencti.daemon.docker.registry",
                           "manager.loger": "manager.logger"}
    assert f"manger (from file {f}): unknown key, ignored; did you mean manager?" in caplog.text
    assert "manager.loger (from environment variable MANAGER__LOGER__LEVEL)" in caplog.text
    assert s.get("manager.id") == "xtm-composer"


def test_config_show_masks_every_secret_looking_key(run_cli, tmp_path: Path) -> None:
    f = write(tmp_path / "s.yaml", "opencti:\n  api_token: tok-111111\n  daemon:\n    docker:\n"
              "      pasword: pw-222222\n      PassWd: pw-333333\n      client_secret: cs-444444\n"
              "      tokens: [tk-555555, tk-666666]\n      password_file: /run/secrets/pw\n")
    for args in (["--config", str(f), "config", "show"], ["--config", str(f), "config", "show", "--json"]):
        code, out, err = run_cli(args)
        assert code == 0, err
        for secret in ("tok-111111", "pw-222222", "pw-333333", "cs-444444", "tk-555555", "tk-666666"):
            assert secret not in out + err
        assert "/run/secrets/pw" in out  # a path to a secret is not the secret


def test_a_key_holding_a_password_is_never_echoed(isolated_env: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    # no space after the colon: `password:...` is a key, the password inside it
    f = write(tmp_path / "k.yaml", "opencti: {daemon: {docker: {registry: {url: r.example.com, username: u, "
              "password:" + SECRET + "}}}}\n")
    with pytest.raises(SettingsError) as err:
        load_settings([str(f)], environ={}, cwd=isolated_env)
    assert f"<a key of {len('password:' + SECRET)} characters>" in err.value.message
    assert SECRET not in str(err.value)
    typo = write(tmp_path / "t.yaml", "manager: {logger: {level: info, level:" + SECRET + "}}\n")
    with caplog.at_level("WARNING", logger="xtm_composer.settings"):
        s = load_settings([str(typo)], environ={}, cwd=isolated_env)
    assert [u.key for u in s.unknown] == [f"manager.logger.<a key of {len('level:' + SECRET)} characters>"]
    assert "unknown key" in caplog.text and SECRET.lower() not in caplog.text.lower()
    dup = write(tmp_path / "dup.yaml", f"manager:\n  '{SECRET}:': 1\n  '{SECRET}:': 2\n")
    with pytest.raises(SettingsError) as err:
        load_settings([str(dup)], environ={}, cwd=isolated_env)
    assert "appears twice" in err.value.message and SECRET not in str(err.value)


def test_a_fifo_as_connectors_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "connectors.yaml"
    os.mkfifo(fifo)
    with pytest.raises(UsageError) as err:
        load_connectors(fifo)
    assert f"connectors file {fifo} is a FIFO" in err.value.message
