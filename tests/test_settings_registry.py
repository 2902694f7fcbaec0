"""The registry block parsed once: the config provider, registry-prefix, the TLS policy and
validation all read the same typed value; XTM Composer master's block carries over."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from composer_core.engine.tls import TlsDecision, insecure_key, tls_decision
from composer_core.errors import SettingsError
from composer_core.images.reference import ImageRef
from composer_core.settings import load_settings
from composer_core.settings.registry import registry_settings
from composer_core.types import CredentialRequest, Failed, Found
from composer_plugins import config_auth, registry_prefix

SECRET = "Reg-Pa55-secret-77"
MASTER_ENV = {"OPENCTI__DAEMON__REGISTRY__SERVER": "https://registry.company.com:5000/",
              "OPENCTI__DAEMON__REGISTRY__USERNAME": "robot",
              "OPENCTI__DAEMON__REGISTRY__PASSWORD": SECRET,
              "OPENCTI__DAEMON__REGISTRY__EMAIL": "robot@company.com"}


def ask(settings, image: str = "registry.company.com:5000/team/app:1"):
    ref = ImageRef.parse(image)
    return config_auth.lookup(CredentialRequest(image=ref, registry=ref.registry, settings=settings,
                                                environ={}))


def test_xtm_composer_master_block_carries_over(isolated_env: Path) -> None:
    s = load_settings(environ=MASTER_ENV, cwd=isolated_env)
    found = ask(s)
    assert isinstance(found, Found)
    assert (found.credentials.username, found.credentials.password) == ("robot", SECRET)
    assert found.credentials.key == "opencti.daemon.registry"
    rewrite = registry_prefix.prefix_registry("connector-misp:5.0.0", s)
    assert rewrite is not None and rewrite.image == "registry.company.com:5000/connector-misp:5.0.0"
    assert "opencti.daemon.registry.server" in rewrite.detail


def test_both_blocks_saying_the_same_are_one_registry(isolated_env: Path) -> None:
    environ = {**MASTER_ENV, "OPENCTI__DAEMON__DOCKER__REGISTRY__URL": "registry.company.com:5000",
               "OPENCTI__DAEMON__DOCKER__REGISTRY__USERNAME": "robot",
               "OPENCTI__DAEMON__DOCKER__REGISTRY__PASSWORD": SECRET}
    s = load_settings(environ=environ, cwd=isolated_env)
    entries = registry_settings(s).entries
    assert [e.key for e in entries] == ["opencti.daemon.docker.registry"]


@pytest.mark.parametrize("name, value", [("URL", "other.company.com"), ("USERNAME", "someone"),
                                         ("PASSWORD", "another-Secret-99")])
def test_both_blocks_differing_is_a_clear_error(run_cli, monkeypatch: pytest.MonkeyPatch, name: str,
                                                value: str) -> None:
    seed = {"URL": "registry.company.com:5000", "USERNAME": "robot", "PASSWORD": SECRET, name: value}
    for key, val in {**MASTER_ENV, **{f"OPENCTI__DAEMON__DOCKER__REGISTRY__{k}": v
                                      for k, v in seed.items()}}.items():
        monkeypatch.setenv(key, val)
    code, out, err = run_cli(["config", "check"])
    assert code == 2
    assert "opencti.daemon.registry (from environment variable OPENCTI__DAEMON__REGISTRY__" in err
    assert "plugin 'config'" not in err and "keep one of them" in err  # a core key
    assert SECRET not in out + err and "another-Secret-99" not in out + err


@pytest.mark.parametrize("environ, key", [
    ({"OPENCTI__DAEMON__DOCKER__REGISTRY__URL": "r.example.com", "OPENCTI__DAEMON__DOCKER__REGISTRY__USERNAME": "u",
      "OPENCTI__DAEMON__DOCKER__REGISTRY__PASWORD": SECRET}, "opencti.daemon.docker.registry.pasword"),
    ({"OPENCTI__DAEMON__DOCKER__REGISTRIES": '[{"url": "r.example.com", "username": "u", "pasword": "'
      + SECRET + '"}]'}, "opencti.daemon.docker.registries[0].pasword"),
    ({"OPENCTI__DAEMON__REGISTRY__SERVER": "r.example.com", "OPENCTI__DAEMON__REGISTRY__USERNAME": "u",
      "OPENCTI__DAEMON__REGISTRY__PASWORD": SECRET}, "opencti.daemon.registry.pasword"),
])
def test_an_unknown_key_in_a_registry_entry_is_an_error(isolated_env: Path, environ, key: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(environ=environ, cwd=isolated_env)
    assert f"{key} (from environment variable" in err.value.message
    assert "unknown key in a registry entry; did you mean password?" in err.value.message
    assert SECRET not in str(err.value)


def test_tls_decision_names_the_setting_that_decided(make_settings) -> None:
    s = make_settings({"opencti.daemon.docker.registries": [
        {"url": "https://plain.example.com:5000/", "insecure": True}, {"url": "tls.example.com"}]})
    assert tls_decision(s, "plain.example.com:5000") == TlsDecision(
        verify=False, setting="opencti.daemon.docker.registries[0].insecure")
    assert tls_decision(s, "tls.example.com") == TlsDecision(verify=True, setting=None)
    assert tls_decision(s, "docker.io") == TlsDecision(verify=True, setting=None)
    assert insecure_key(s, "plain.example.com:5000") == "opencti.daemon.docker.registries[0]"
    assert insecure_key(s, "tls.example.com") is None


def test_the_block_is_parsed_once_per_settings(make_settings) -> None:
    s = make_settings({"opencti.daemon.docker.registry.url": "r.example.com"})
    assert registry_settings(s) is registry_settings(s)
    assert registry_settings(s).primary is not None and registry_settings(s).primary.registry == "r.example.com"


def test_an_invalid_block_is_refused_even_when_the_config_plugin_is_disabled(isolated_env: Path) -> None:
    environ = {"PLUGINS__DISABLED": "config", "OPENCTI__DAEMON__DOCKER__REGISTRY__URL": "https://r.io/v2/path"}
    # the block is the core's: validated at load with or without the config provider
    with pytest.raises(SettingsError, match=r"opencti.daemon.docker.registry.url .*path"):
        load_settings(environ=environ, cwd=isolated_env)
    s = load_settings(environ=environ, cwd=isolated_env, validate=False)
    with pytest.raises(SettingsError, match=r"opencti.daemon.docker.registry.url .*path"):
        registry_prefix.prefix_registry("alpine:3", s)
    with pytest.raises(SettingsError):
        tls_decision(s, "r.io")


def test_the_block_is_used_not_unused_with_the_config_plugin_disabled(run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    # registry-prefix and the TLS policy read it: `config check` must not call it unused
    monkeypatch.setenv("PLUGINS__DISABLED", "config")
    monkeypatch.setenv("AUTH__CHAIN", "[docker-config, anonymous]")
    monkeypatch.setenv("OPENCTI__DAEMON__DOCKER__REGISTRY__URL", "localhost:5000")
    monkeypatch.setenv("OPENCTI__DAEMON__DOCKER__REGISTRY__INSECURE", "true")
    code, out, err = run_cli(["config", "check"])
    assert code == 0, err
    assert "settings are valid" in out and "unused" not in out + err
    code, out, err = run_cli(["image", "resolve", "connector-misp:5.0.0"])
    assert code == 0 and out.startswith("localhost:5000/connector-misp:5.0.0"), out + err


# --- password_file (issue 13 items 3, 4) ---------------------------------------------------------

def with_password_file(make_settings, path: Path | str):
    return make_settings({"opencti.daemon.docker.registry": {
        "url": "registry.company.com:5000", "username": "robot", "password_file": str(path)}})


def test_password_file_is_read_and_its_line_ending_dropped(make_settings, tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text(SECRET + "\n")
    found = ask(with_password_file(make_settings, f))
    assert isinstance(found, Found) and found.credentials.password == SECRET
    assert found.credentials.file == str(f)


@pytest.mark.parametrize("kind, words", [("fifo", "is a FIFO (named pipe): only regular files are read"),
                                         ("dev-zero", "is a character device"),
                                         ("huge", "is larger than 64 KiB"),
                                         ("missing", "does not exist")])
def test_password_file_is_a_regular_bounded_file(make_settings, tmp_path: Path, kind: str, words: str) -> None:
    if kind == "fifo":
        path: Path | str = tmp_path / "fifo"
        os.mkfifo(path)
    elif kind == "dev-zero":
        path = "/dev/zero"
    elif kind == "huge":
        path = tmp_path / "huge"
        path.write_text("x" * (65 * 1024))
    else:
        path = tmp_path / "nope"
    failed = ask(with_password_file(make_settings, path))
    assert isinstance(failed, Failed)
    assert f"opencti.daemon.docker.registry.password_file {path} {words}" in failed.reason
