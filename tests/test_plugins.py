"""The plugin loader on real metadata: good, broken, blocked, misspelled and clashing plugins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from composer_core.cli import cli
from composer_core.errors import PluginError
from composer_core.pluginmanager import Plugins
from tests import fakedist

BUILTINS = {"registry-prefix", "mirrors", "config", "docker-config", "keychain", "containers-auth",
            "anonymous", "docker", "podman"}


def dists(*names: str):
    allowed = {"xtm-composer", *names}
    return lambda ep: ep.dist is not None and ep.dist.name in allowed


@pytest.fixture
def fake_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    fakedist.write_dist(site, "fakeplug", {"good": "fake_good", "broken": "fake_broken",
                                           "blocked": "fake_blocked"},
                        {"fake_good": fakedist.GOOD, "fake_broken": fakedist.BROKEN,
                         "fake_blocked": fakedist.BLOCKED})
    monkeypatch.syspath_prepend(str(site))
    for mod in ("fake_good", "fake_broken", "fake_blocked"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    return site


def test_builtins_are_entry_points_of_our_distribution(plugins: Plugins) -> None:
    records = {r.name: r for r in plugins.records()}
    assert set(records) == BUILTINS
    for record in records.values():
        assert record.distribution == "xtm-composer"
        assert record.status == "active", record.reason
    assert records["config"].hooks == ["composer_credential_providers", "composer_settings"]
    assert records["registry-prefix"].hooks == ["composer_image_resolvers"]
    assert set(plugins.credential_providers()) == {"config", "docker-config", "keychain",
                                                   "containers-auth", "anonymous"}
    assert set(plugins.image_resolvers()) == {"registry-prefix", "mirrors"}


def test_good_broken_and_blocked_entry_points(fake_site: Path, caplog: pytest.LogCaptureFixture) -> None:
    manager = Plugins(disabled=["blocked"], entry_point_filter=dists("fakeplug"))
    with caplog.at_level("WARNING", logger="xtm_composer.plugins"):
        records = {r.name: r for r in manager.records()}
        manager.records()  # a second question warns no more
    assert records["good"].status == "active"
    assert records["good"].distribution == "fakeplug" and records["good"].version == "1.0"
    assert records["good"].hooks == ["composer_credential_providers", "composer_register_commands"]
    assert records["broken"].status == "failed"
    assert "fake_broken needs a library" in (records["broken"].reason or "")
    assert records["blocked"].status == "disabled"
    assert "fake_blocked" not in sys.modules, "a disabled plugin was imported"
    warnings = [r for r in caplog.records if "broken" in r.getMessage()]
    assert len(warnings) == 1 and "fakeplug" in warnings[0].getMessage()
    # everything else still works, the good plugin included
    assert "vault" in manager.credential_providers()
    assert "config" in manager.credential_providers()


def test_strict_mode_turns_a_failed_import_into_an_error(fake_site: Path) -> None:
    manager = Plugins(strict=True, disabled=["blocked"], entry_point_filter=dists("fakeplug"))
    with pytest.raises(PluginError, match="broken.*fakeplug.*fake_broken needs a library"):
        manager.load()


def test_misspelled_hook_fails_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = fakedist.write_dist(tmp_path / "s", "typoplug", {"typo": "fake_typo"},
                               {"fake_typo": fakedist.MISSPELLED})
    monkeypatch.syspath_prepend(str(site))
    manager = Plugins(entry_point_filter=dists("typoplug"))
    record = {r.name: r for r in manager.records()}["typo"]
    assert record.status == "failed"
    assert "composer_credential_provider" in (record.reason or "")
    with pytest.raises(PluginError, match="typo"):
        Plugins(strict=True, entry_point_filter=dists("typoplug")).load()


def test_duplicate_provider_names_name_both_distributions(fake_site: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    other = fakedist.write_dist(tmp_path / "other", "otherplug", {"vault2": "fake_vault2"},
                                {"fake_vault2": fakedist.DUPLICATE_PROVIDER})
    monkeypatch.syspath_prepend(str(other))
    manager = Plugins(disabled=["blocked"], entry_point_filter=dists("fakeplug", "otherplug"))
    with pytest.raises(PluginError) as err:
        manager.credential_providers()
    assert "vault" in err.value.message
    assert "fakeplug" in err.value.message and "otherplug" in err.value.message


def test_duplicate_plugin_names_across_distributions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = fakedist.write_dist(tmp_path / "s", "shadowplug", {"docker": "fake_docker"},
                               {"fake_docker": "X = 1\n"})
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(PluginError, match="docker.*xtm-composer.*shadowplug|docker.*shadowplug.*xtm-composer"):
        Plugins(entry_point_filter=dists("shadowplug")).load()


def test_disabled_provider_is_skipped_in_the_chain(make_settings, tmp_path: Path) -> None:
    from composer_core.auth.chain import resolve_credentials
    from composer_core.images.resolve import resolve_image

    manager = Plugins(disabled=["keychain"], entry_point_filter=dists())
    settings = make_settings()
    resolution = resolve_credentials(resolve_image("alpine", settings, manager), settings, manager,
                                     environ={"HOME": str(tmp_path)})
    steps = {s.provider: s for s in resolution.steps}
    assert steps["keychain"].outcome == "skipped"
    assert "disabled" in steps["keychain"].detail
    assert resolution.source == "anonymous"


def test_plugins_command_lists_every_plugin_as_json(fake_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XTM_COMPOSER_DISABLE_PLUGINS", "blocked")
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert BUILTINS <= set(rows)
    assert rows["good"]["status"] == "active" and rows["good"]["distribution"] == "fakeplug"
    assert rows["broken"]["status"] == "failed" and "fake_broken" in rows["broken"]["reason"]
    assert rows["blocked"]["status"] == "disabled"
    assert rows["docker"]["hooks"] == ["composer_runtime_backends", "composer_settings"]


def _run(args: list[str], env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("XTM_COMPOSER_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "composer_core", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=60)


def test_plugin_commands_and_strict_switch_from_the_command_line(fake_site: Path, tmp_path: Path) -> None:
    import os

    env = {"PYTHONPATH": os.pathsep.join([str(fake_site), *sys.path]),
           "XTM_COMPOSER_DISABLE_PLUGINS": "blocked"}
    listed = _run(["--help"], env, tmp_path)
    assert listed.returncode == 0 and "vault-status" in listed.stdout
    ran = _run(["vault-status"], env, tmp_path)
    assert ran.returncode == 0 and ran.stdout.strip() == "vault ok"
    assert "broken" in ran.stderr and "fakeplug" in ran.stderr  # warned, not fatal
    strict = _run(["plugins"], {**env, "XTM_COMPOSER_STRICT_PLUGINS": "1"}, tmp_path)
    assert strict.returncode == 3
    assert "fake_broken needs a library" in strict.stderr
    assert "Traceback" not in strict.stderr


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["config", "show"]])
def test_light_commands_do_not_import_engine_sdks(args: list[str], tmp_path: Path) -> None:
    code = ("import sys, runpy; sys.argv=['xtm-composer', *" + repr(args) + "]\n"
            "try:\n    runpy.run_module('composer_core', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('docker', 'podman', 'rich'))\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout[-500:] + out.stderr[-500:]


def test_plugins_disabled_by_the_setting(run_cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = tmp_path / "s.yaml"
    settings.write_text("plugins: {disabled: [mirrors]}\n")
    monkeypatch.setenv("PLUGINS__DISABLED", "keychain")  # the environment layer replaces the file's list
    code, out, err = run_cli(["plugins", "--json"])
    assert code == 0, err
    rows = {r["name"]: r["status"] for r in json.loads(out)}
    assert rows["keychain"] == "disabled" and rows["mirrors"] == "active"
    monkeypatch.delenv("PLUGINS__DISABLED")
    code, out, err = run_cli(["--config", str(settings), "plugins", "--json"])
    assert {r["name"]: r["status"] for r in json.loads(out)}["mirrors"] == "disabled"
