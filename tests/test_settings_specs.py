"""Plugins own their settings: the composer_settings hook, its defaults layer, its validators, and
one place for every default."""

from __future__ import annotations

import ast
import re
import types
from pathlib import Path
from typing import Any

import pytest

from composer_core import hookimpl
from composer_core.errors import SettingsError
from composer_core.pluginmanager import Plugins
from composer_core.settings import (
    Problems,
    Settings,
    SettingsSpec,
    check_number,
    embedded_defaults,
    load_settings,
    read_layers,
)

ROOT = Path(__file__).resolve().parent.parent
BUILTIN_SPECS = {"docker", "keychain", "kubernetes", "mirrors", "podman", "opencti", "swarm"}


def vault_plugin(owns: tuple[str, ...] = ("auth.vault",), defaults: dict[str, Any] | None = None):
    def validate(settings: Settings, problems: Problems) -> None:
        check_number(settings, problems, "auth.vault.timeout", what="seconds", minimum=0,
                     above_minimum=True, maximum=60)
        if not str(settings.get("auth.vault.address")).startswith("https://"):
            problems.add("auth.vault.address", "must be an https:// URL")

    module = types.ModuleType("vault_plugin")

    @hookimpl
    def composer_settings() -> SettingsSpec:
        return SettingsSpec(name="vault", owns=owns, validator=validate,
                            defaults=defaults if defaults is not None else
                            {"auth": {"vault": {"address": "https://vault:8200", "timeout": 5}}})

    module.composer_settings = composer_settings  # type: ignore[attr-defined]
    return module


def settings_with(plugins: Plugins, environ: dict[str, str], cwd: Path, **kw: Any) -> Settings:
    return read_layers(environ=environ, cwd=cwd).settings(plugins.settings_specs().values(), **kw)


def test_builtin_plugins_declare_their_settings(plugins: Plugins) -> None:
    specs = plugins.settings_specs()
    assert set(specs) == BUILTIN_SPECS
    assert specs["keychain"].owns_key("auth.helper_timeout")
    assert "config" not in specs  # the registry block is the core's: registry-prefix and TLS read it too
    assert specs["opencti"].owns_key("opencti.token") and specs["opencti"].owns_key("manager.credentials_key")


def test_core_defaults_hold_only_core_keys() -> None:
    core = embedded_defaults()
    assert "helper_timeout" not in core["auth"]
    # of the docker section, only the registry block (read by the config provider, registry-prefix
    # and the TLS policy alike) is the core's; the engine's keys are the docker plugin's
    assert set(core["opencti"]["daemon"]["docker"]) == {"registry", "registries"}


def test_a_plugin_s_defaults_are_a_layer_after_the_embedded_ones(plugins: Plugins, isolated_env: Path) -> None:
    plugins.register(vault_plugin(), name="vault")
    s = settings_with(plugins, {"AUTH__VAULT__TIMEOUT": "7"}, isolated_env)
    assert s.get("auth.vault.address") == "https://vault:8200"
    assert s.source("auth.vault.address") == "defaults of plugin 'vault'"
    assert s.get("auth.vault.timeout") == 7
    assert s.source("auth.vault.timeout") == "environment variable AUTH__VAULT__TIMEOUT"
    assert s.get("auth.helper_timeout") == 10  # the built-ins' defaults are there too
    assert s.source("auth.helper_timeout") == "defaults of plugin 'keychain'"
    assert not s.unknown


def test_each_plugin_error_names_key_layer_and_plugin(plugins: Plugins, isolated_env: Path) -> None:
    plugins.register(vault_plugin(), name="vault")
    with pytest.raises(SettingsError) as err:
        settings_with(plugins, {"AUTH__VAULT__ADDRESS": "http://vault", "AUTH__HELPER_TIMEOUT": "0"},
                      isolated_env)
    message = err.value.message
    assert ("auth.vault.address (from environment variable AUTH__VAULT__ADDRESS, checked by plugin "
            "'vault'): must be an https:// URL") in message
    assert ("auth.helper_timeout (from environment variable AUTH__HELPER_TIMEOUT, checked by plugin "
            "'keychain'): must be greater than 0") in message


def test_a_broken_validator_is_reported_not_raised(plugins: Plugins, isolated_env: Path) -> None:
    module = types.ModuleType("broken_validator")

    def validate(settings: Settings, problems: Problems) -> None:
        raise RuntimeError("boom")

    @hookimpl
    def composer_settings() -> SettingsSpec:
        return SettingsSpec(name="broken", owns=("auth.broken",), validator=validate)

    module.composer_settings = composer_settings  # type: ignore[attr-defined]
    plugins.register(module, name="broken")
    with pytest.raises(SettingsError, match=r"auth.broken .*plugin 'broken'.*validator failed \(RuntimeError\)"):
        settings_with(plugins, {}, isolated_env)


@pytest.mark.parametrize("owns", [("manager.id",), ("auth.helper_timeout",), ("auth",)])
def test_a_spec_claiming_a_core_or_another_plugin_s_key_is_ignored(
        plugins: Plugins, isolated_env: Path, caplog: pytest.LogCaptureFixture, owns: tuple[str, ...]) -> None:
    key = owns[0]
    defaults: dict[str, Any] = {}
    node = defaults
    for part in key.split(".")[:-1]:
        node = node.setdefault(part, {})
    node[key.split(".")[-1]] = "taken-over" if key != "auth" else {"chain": ["anonymous"]}
    plugins.register(vault_plugin(owns=owns, defaults=defaults), name="vault")
    with caplog.at_level("WARNING", logger="xtm_composer.settings"):
        s = settings_with(plugins, {}, isolated_env)
    assert "settings of plugin 'vault' ignored: it claims" in caplog.text
    assert s.get("manager.id") == "xtm-composer" and s.get("auth.helper_timeout") == 10
    assert s.get("auth.chain")[0] == "config"


def test_a_spec_must_own_the_keys_it_gives_defaults_for() -> None:
    with pytest.raises(ValueError, match="defaults for keys it does not own: auth.other"):
        SettingsSpec(name="vault", owns=("auth.vault",), defaults={"auth": {"other": 1}})
    with pytest.raises(ValueError, match="settings spec name 'Vault ' is invalid"):
        SettingsSpec(name="Vault ", owns=())


def test_a_disabled_plugin_s_keys_are_accepted_and_reported_unused(run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XTM_COMPOSER_DISABLE_PLUGINS", "keychain")
    monkeypatch.setenv("AUTH__HELPER_TIMEOUT", "5")
    code, out, err = run_cli(["config", "show"])
    assert code == 0 and "auth.helper_timeout" not in err  # no warning at every start
    code, out, err = run_cli(["config", "check"])
    assert code == 0, err
    assert ("unused: auth.helper_timeout (from environment variable AUTH__HELPER_TIMEOUT): not read by "
            "the core or any active plugin (inactive plugins: keychain)") in err
    code, out, _ = run_cli(["config", "check", "--json"])
    assert code == 0 and '"key": "auth.helper_timeout"' in out


def test_a_disabled_plugin_s_defaults_are_not_merged(isolated_env: Path) -> None:
    s = load_settings(environ={"PLUGINS__DISABLED": "keychain,podman"}, cwd=isolated_env)
    assert s.get("auth.helper_timeout") is None and s.get("opencti.daemon.podman") is None
    assert s.get("opencti.daemon.docker.registries") == []


# --- defaults live in one place, and all are documented ---------------------------------------

def _leaves(data: Any, prefix: str = "") -> list[str]:
    if isinstance(data, dict) and data:
        return [k for key, value in data.items() for k in _leaves(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def test_every_default_key_is_documented(plugins: Plugins) -> None:
    docs = (ROOT / "docs" / "settings.md").read_text()
    documented = set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", docs))
    keys = _leaves(embedded_defaults())
    for spec in plugins.settings_specs().values():
        keys += _leaves(dict(spec.defaults))
        keys += list(spec.owns)
    missing = sorted(set(keys) - documented)
    assert not missing, f"keys not documented in docs/settings.md: {missing}"


def _literal_defaults(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and "settings" in ast.unparse(node.func.value) and len(node.args) == 2
                and isinstance(node.args[0], (ast.Constant, ast.Name))):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_setting_has_a_default_in_code() -> None:
    sources = [p for pkg in ("composer_core", "composer_plugins") for p in (ROOT / pkg).rglob("*.py")]
    found = [hit for path in sources for hit in _literal_defaults(path)]
    assert not found, "defaults belong in default_settings.yaml or a SettingsSpec:\n" + "\n".join(found)


def test_an_invalid_spec_fails_its_plugin_not_the_settings(plugins: Plugins, isolated_env: Path) -> None:
    module = types.ModuleType("bad_spec")

    @hookimpl
    def composer_settings() -> SettingsSpec:
        return SettingsSpec(name="bad", owns=("auth.bad",), defaults={"manager": {"id": "taken"}})

    module.composer_settings = composer_settings  # type: ignore[attr-defined]
    plugins.register(module, name="bad")
    s = settings_with(plugins, {}, isolated_env)
    assert s.get("manager.id") == "xtm-composer"
    record = {r.name: r for r in plugins.records()}["bad"]
    assert record.status == "failed" and "defaults for keys it does not own: manager.id" in (record.reason or "")


def test_unknown_keys_are_all_warned_when_no_plugin_is_inactive(isolated_env: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "u.yaml"
    f.write_text("manger: {id: x}\nauth: {vault_address: https://v}\n")
    with caplog.at_level("WARNING", logger="xtm_composer.settings"):
        load_settings([str(f)], environ={}, cwd=isolated_env)
    assert "manger (from file" in caplog.text and "auth.vault_address (from file" in caplog.text


def test_a_spec_owns_keys_inside_the_sections_only() -> None:
    with pytest.raises(ValueError, match="owns keys outside the sections manager, opencti, auth, images, "
                                         "plugins: vault.address"):
        SettingsSpec(name="vault", owns=("vault.address",))
