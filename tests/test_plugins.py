"""The plugin loader on real metadata: good, broken, blocked, misspelled and clashing plugins."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from composer_core.cli import cli
from composer_core.errors import PluginError
from composer_core.pluginmanager import Plugins
from tests import fakedist

BUILTINS = {"registry-prefix", "mirrors", "config", "docker-config", "keychain", "containers-auth",
            "anonymous", "docker", "podman", "swarm", "kubernetes", "file", "opencti"}


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


@pytest.fixture
def make_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, dict[str, str]], Path]:
    """A fake distribution on ``sys.path``: ``{entry point: module source}``, modules named uniquely
    and forgotten at teardown; the command line (``run_cli``) loads only ours and these."""

    from composer_core.cli import context

    made: list[str] = []

    def make(dist: str, plugins: dict[str, str]) -> Path:
        modules = {ep: f"fake_{dist}_{ep}".replace("-", "_") for ep in plugins}
        site = fakedist.write_dist(tmp_path / dist, dist, modules,
                                   {modules[ep]: source for ep, source in plugins.items()})
        monkeypatch.syspath_prepend(str(site))
        # the command line loads ours and the fake distributions, nothing else installed
        made.append(dist)
        monkeypatch.setattr(context, "ENTRY_POINT_FILTER", dists(*made))
        for module in modules.values():
            monkeypatch.delitem(sys.modules, module, raising=False)
        return site

    return make


def test_builtins_are_entry_points_of_our_distribution(plugins: Plugins) -> None:
    records = {r.name: r for r in plugins.records()}
    assert set(records) == BUILTINS
    for record in records.values():
        assert record.distribution == "xtm-composer"
        assert record.status == "active", record.reason
    assert records["config"].hooks == ["composer_credential_providers"]  # its keys are the core's
    assert records["keychain"].hooks == ["composer_credential_providers", "composer_settings"]
    assert records["registry-prefix"].hooks == ["composer_image_resolvers"]
    assert set(plugins.credential_providers()) == {"config", "docker-config", "keychain",
                                                   "containers-auth", "anonymous"}
    assert set(plugins.image_resolvers()) == {"registry-prefix", "mirrors"}
    assert set(plugins.sources()) == {"file", "opencti"}


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
    # fails soft: the later distribution's plugin is failed, naming both; everything else works
    providers = manager.credential_providers()
    assert "vault" in providers and "config" in providers["config"].name
    records = {r.name: r for r in manager.records()}
    assert records["good"].status == "active"
    assert records["vault2"].status == "failed"
    assert "fakeplug" in (records["vault2"].reason or "")
    assert "otherplug" in (records["vault2"].reason or "")
    # using the contested name is an error naming both distributions
    with pytest.raises(PluginError) as err:
        providers["vault"]
    assert err.value.exit_code == 3
    assert "vault" in err.value.message
    assert "fakeplug" in err.value.message and "otherplug" in err.value.message
    with pytest.raises(PluginError, match="vault.*fakeplug.*otherplug"):
        Plugins(strict=True, disabled=["blocked", "broken"],
                entry_point_filter=dists("fakeplug", "otherplug")).load()


def test_a_chain_naming_a_contested_provider_fails_and_one_not_naming_it_works(
        fake_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_settings) -> None:
    from composer_core.auth.chain import resolve_credentials
    from composer_core.images.resolve import resolve_image

    other = fakedist.write_dist(tmp_path / "other", "otherplug", {"vault2": "fake_vault2"},
                                {"fake_vault2": fakedist.DUPLICATE_PROVIDER})
    monkeypatch.syspath_prepend(str(other))
    manager = Plugins(disabled=["blocked"], entry_point_filter=dists("fakeplug", "otherplug"))
    settings = make_settings()
    image = resolve_image("vault.example.com/team/app:1", settings, manager)
    assert resolve_credentials(image, settings, manager, environ={}).source == "anonymous"
    with pytest.raises(PluginError, match="credential provider named 'vault'"):
        resolve_credentials(image, make_settings({"auth.chain": ["vault", "anonymous"]}), manager,
                            environ={})


def test_duplicate_plugin_names_across_distributions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = fakedist.write_dist(tmp_path / "s", "shadowplug", {"docker": "fake_docker"},
                               {"fake_docker": "raise RuntimeError('a shadowed plugin is never imported')\n"})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "fake_docker", raising=False)
    with pytest.raises(PluginError, match="docker.*xtm-composer.*shadowplug|docker.*shadowplug.*xtm-composer"):
        Plugins(strict=True, entry_point_filter=dists("shadowplug")).load()
    # not strict: the built-in keeps the name (ours load first, though "shadowplug" sorts before
    # "xtm-composer"), the other is recorded failed naming both, and is never imported
    manager = Plugins(entry_point_filter=dists("shadowplug"))
    dockers = [r for r in manager.records() if r.name == "docker"]
    assert [(r.distribution, r.status) for r in dockers] == [("xtm-composer", "active"),
                                                            ("shadowplug", "failed")]
    assert "xtm-composer" in (dockers[1].reason or "") and "shadowplug" in (dockers[1].reason or "")
    assert "fake_docker" not in sys.modules
    assert "docker" in manager.runtime_backends() and "docker" not in manager.inactive_names()
    disabled = Plugins(disabled=["docker"], entry_point_filter=dists("shadowplug"))
    assert [r.status for r in disabled.records() if r.name == "docker"] == ["disabled", "disabled"]
    assert "docker" not in disabled.runtime_backends() and "fake_docker" not in sys.modules


def test_an_entry_point_named_like_a_builtin_breaks_no_command(make_dist, run_cli,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    make_dist("shadowplug", {"docker": "X = 1\n"})
    for args in (["--help"], ["config", "show"]):
        code, out, err = run_cli(args)
        assert code == 0, err
    code, out, err = run_cli(["plugins", "--json"])
    assert code == 0, err
    rows = [r for r in json.loads(out) if r["name"] == "docker"]
    assert [(r["distribution"], r["status"]) for r in rows] == [("xtm-composer", "active"),
                                                                ("shadowplug", "failed")]
    assert "shadowplug" in rows[1]["reason"] and "xtm-composer" in rows[1]["reason"]
    assert "shadowplug" in err  # warned
    monkeypatch.setenv("XTM_COMPOSER_STRICT_PLUGINS", "1")
    code, out, err = run_cli(["plugins"])
    assert code == 3 and "shadowplug" in err and "Traceback" not in err


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
    from composer_core.cli import context

    monkeypatch.setattr(context, "ENTRY_POINT_FILTER", dists("fakeplug"))
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


#: what `--help`, `plugins` and `config show` must never import: engine SDKs, the progress bar, the
#: platform client's crypto and HTTP stacks, the orchestrator and metrics clients
HEAVY_MODULES = ("docker", "podman", "rich", "cryptography", "requests", "graphql", "kubernetes",
                 "prometheus_client", "urllib3")


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["config", "show"]])
def test_light_commands_do_not_import_engine_sdks(args: list[str], tmp_path: Path) -> None:
    code = ("import sys, runpy; sys.argv=['xtm-composer', *" + repr(args) + "]\n"
            f"HEAVY = {HEAVY_MODULES!r}\n"
            "try:\n    runpy.run_module('composer_core', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in HEAVY)\n"
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


# --- hooks are called as pluggy calls them ---------------------------------------------------


def test_an_implementation_may_take_fewer_arguments_than_the_spec(make_dist) -> None:
    make_dist("fewerplug", {"fewer": fakedist.LEGACY_NO_ARGUMENT})
    manager = Plugins(entry_point_filter=dists("fewerplug"))
    with pytest.warns(DeprecationWarning, match="'fewer'"):
        record = {r.name: r for r in manager.records()}["fewer"]
    assert record.status == "active", record.reason
    assert record.hooks == ["composer_register_commands"]


@pytest.mark.parametrize(("source", "hook"), [(fakedist.WRAPPER, "composer_credential_providers"),
                                              (fakedist.HOOKWRAPPER, "composer_runtime_backends")])
def test_wrappers_are_refused_at_load_naming_the_plugin(make_dist, source: str, hook: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    make_dist("wrapplug", {"wrapping": source})
    manager = Plugins(entry_point_filter=dists("wrapplug"))
    with caplog.at_level("WARNING", logger="xtm_composer.plugins"):
        record = {r.name: r for r in manager.records()}["wrapping"]
    assert record.status == "failed"
    assert hook in (record.reason or "") and "wrapper" in (record.reason or "")
    assert "does not support" in (record.reason or "")
    warned = [r.getMessage() for r in caplog.records if "wrapping" in r.getMessage()]
    assert len(warned) == 1 and "wrapplug" in warned[0]
    # the others are untouched
    assert {"config", "anonymous"} <= set(manager.credential_providers())
    assert {"docker", "podman"} <= set(manager.runtime_backends())
    with pytest.raises(PluginError, match="'wrapping' from wrapplug.*wrapper"):
        Plugins(strict=True, entry_point_filter=dists("wrapplug")).load()


def test_tryfirst_and_trylast_do_not_decide_who_keeps_a_name(plugins: Plugins) -> None:
    from composer_core import hookimpl
    from composer_core.types import CredentialProvider, NotFound

    class First:
        @hookimpl
        def composer_credential_providers(self) -> CredentialProvider:
            return CredentialProvider(name="shared", lookup=lambda request: NotFound("first"))

    class Second:
        # trylast puts this implementation first in pluggy's list: the load order still wins
        @hookimpl(trylast=True)
        def composer_credential_providers(self) -> CredentialProvider:
            return CredentialProvider(name="shared", lookup=lambda request: NotFound("second"))

    plugins.register(First(), "first")
    plugins.register(Second(), "second")
    records = {r.name: r for r in plugins.records()}
    assert records["first"].status == "active"
    assert records["second"].status == "failed"
    assert "'shared'" in (records["second"].reason or "")
    assert plugins.credential_providers().owner("shared") == "first"
    plugins.unregister("second")
    plugins.unregister("first")


# --- names: checked, and clashes fail soft ---------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [("vault", "vault"), ("my-vault_2", "my-vault_2"),
                                                ("ｖａｕｌｔ", "vault")])
def test_record_names_are_normalised(name: str, expected: str) -> None:
    from composer_core.records import check_name

    assert check_name(name, "credential provider") == expected


@pytest.mark.parametrize("name", ["Vault ", "Vault", " vault", "", "2fa", "my vault", "vault.io",
                                  "-vault", "v" * 64, None, 7])
def test_record_names_that_break_the_rule_are_refused(name: object) -> None:
    from composer_core.records import InvalidName
    from composer_core.types import CredentialProvider, NotFound

    with pytest.raises(InvalidName, match="credential provider name"):
        CredentialProvider(name=name, lookup=lambda request: NotFound("x"))  # type: ignore[arg-type]


def test_a_bad_name_is_refused_at_load_naming_the_plugin(make_dist, make_settings) -> None:
    from composer_core.auth.chain import resolve_credentials
    from composer_core.images.resolve import resolve_image

    make_dist("badname", {"spaced": fakedist.BAD_NAME})
    manager = Plugins(entry_point_filter=dists("badname"))
    record = {r.name: r for r in manager.records()}["spaced"]
    assert record.status == "failed"
    assert "composer_credential_providers" in (record.reason or "")
    assert "'Vault '" in (record.reason or "") and "lowercase letters" in (record.reason or "")
    # the chain then names the failed plugin's provider as skipped, not as an unknown name
    settings = make_settings({"auth.chain": ["spaced", "anonymous"]})
    image = resolve_image("alpine", settings, manager)
    steps = {s.provider: s for s in resolve_credentials(image, settings, manager, environ={}).steps}
    assert steps["spaced"].outcome == "skipped"
    with pytest.raises(PluginError, match="spaced.*badname.*Vault"):
        Plugins(strict=True, entry_point_filter=dists("badname")).load()


def _record_for(hook: str, name: str) -> object:
    import click

    from composer_core.types import CredentialProvider, ImageResolver, NotFound, RuntimeBackend

    return {"composer_image_resolvers": lambda: ImageResolver(name=name,
                                                              resolve=lambda image, s: None),
            "composer_credential_providers": lambda: CredentialProvider(
                name=name, lookup=lambda request: NotFound("x")),
            "composer_runtime_backends": lambda: RuntimeBackend(name=name, connect=lambda s: None),
            "composer_commands": lambda: click.Command(name)}[hook]()


@pytest.mark.parametrize("hook", ["composer_image_resolvers", "composer_credential_providers",
                                  "composer_runtime_backends", "composer_commands"])
def test_every_record_hook_checks_names_and_attributes_them(plugins: Plugins, hook: str) -> None:
    from composer_core import hookimpl

    def make_plugin(name: str) -> object:
        plugin = type("P", (), {})()
        setattr(plugin, hook, hookimpl(lambda: _record_for(hook, name)))
        return plugin

    plugins.register(make_plugin("Upper"), "upper")
    plugins.register(make_plugin("fine-name"), "fine")
    records = {r.name: r for r in plugins.records()}
    assert records["upper"].status == "failed" and "'Upper'" in (records["upper"].reason or "")
    assert records["fine"].status == "active", records["fine"].reason
    assert records["fine"].contributes == {hook: ["fine-name"]}
    accessor = {"composer_image_resolvers": plugins.image_resolvers,
                "composer_credential_providers": plugins.credential_providers,
                "composer_runtime_backends": plugins.runtime_backends,
                "composer_commands": plugins.commands}[hook]
    assert accessor()["fine-name"].name == "fine-name"
    assert accessor().owner("fine-name") == "fine"
    plugins.unregister("fine")
    plugins.unregister("upper")
    assert "fine-name" not in accessor()


def test_a_contested_runtime_backend_fails_only_when_used(make_dist, run_cli, make_settings) -> None:
    from composer_core.engine.select import connect_runtime

    make_dist("enginex", {"enginex": fakedist.DOCKER_BACKEND})
    code, out, err = run_cli(["plugins", "--json"])
    assert code == 0, err
    row = {r["name"]: r for r in json.loads(out)}["enginex"]
    assert row["status"] == "failed"
    assert "xtm-composer" in row["reason"] and "enginex" in row["reason"]
    code, out, err = run_cli(["--runtime", "docker", "ps"])
    assert code == 3, err
    assert "runtime backend named 'docker'" in err and "enginex" in err and "xtm-composer" in err
    assert "never be connected" not in err and "Traceback" not in err
    manager = Plugins(entry_point_filter=dists("enginex"))
    with pytest.raises(PluginError, match="docker"):
        connect_runtime(make_settings(), manager, "docker")
    with pytest.raises(PluginError, match="docker"):  # auto asks docker first: a use too
        connect_runtime(make_settings(), manager)
    with pytest.raises(PluginError, match="docker"):
        manager.runtime("docker")


# --- commands --------------------------------------------------------------------------------


def test_composer_commands_adds_attributed_commands(make_dist, run_cli) -> None:
    make_dist("cmdplug", {"greeter": fakedist.COMMANDS})
    code, out, err = run_cli(["--help"])
    assert code == 0, err
    assert "hello" in out and "Say hello." in out
    code, out, err = run_cli(["hello"])
    assert code == 0, err
    assert out.strip() == "hello from COMMANDS"
    code, out, err = run_cli(["plugins", "--json"])
    row = {r["name"]: r for r in json.loads(out)}["greeter"]
    assert row["hooks"] == ["composer_commands"]
    assert row["contributes"] == {"composer_commands": ["hello"]}
    code, out, err = run_cli(["plugins"])
    assert code == 0, err
    assert out.splitlines()[0].split() == ["NAME", "DISTRIBUTION", "HOOKS", "PROVIDES", "STATUS"]
    line = next(line for line in out.splitlines() if line.startswith("greeter "))
    assert line.split() == ["greeter", "cmdplug", "1.0", "commands", "hello", "active"]


def test_two_plugins_adding_one_command_fail_soft(make_dist, run_cli) -> None:
    make_dist("cmdone", {"greeter": fakedist.COMMANDS})
    make_dist("cmdtwo", {"greeter2": fakedist.OTHER_HELLO})
    code, out, err = run_cli(["--help"])
    assert code == 0, err
    assert "hello" in out and "unavailable: two plugins add this command" in out
    code, out, err = run_cli(["plugins", "--json"])
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["greeter"]["status"] == "active"
    assert rows["greeter2"]["status"] == "failed"
    assert "cmdone" in rows["greeter2"]["reason"] and "cmdtwo" in rows["greeter2"]["reason"]
    code, out, err = run_cli(["hello"])
    assert code == 3
    assert "command named 'hello'" in err and "cmdone" in err and "cmdtwo" in err
    assert "hello from" not in out
    code, out, err = run_cli(["config", "show"])
    assert code == 0, err


def test_a_plugin_command_cannot_take_a_builtin_name(make_dist, run_cli) -> None:
    make_dist("takeover", {"takeover": fakedist.BUILTIN_NAME})
    code, out, err = run_cli(["--help"])
    assert code == 0, err
    code, out, err = run_cli(["config", "show"])
    assert code == 0, err
    assert "not the built-in" not in out and "manager:" in out
    code, out, err = run_cli(["plugins", "--json"])
    row = {r["name"]: r for r in json.loads(out)}["takeover"]
    assert row["status"] == "failed" and "'config', which is a built-in command" in row["reason"]


def test_the_deprecated_register_commands_still_works_and_warns(
        fake_site: Path, caplog: pytest.LogCaptureFixture) -> None:
    manager = Plugins(disabled=["blocked"], entry_point_filter=dists("fakeplug"))
    with pytest.warns(DeprecationWarning, match="'good'.*composer_register_commands.*composer_commands"), \
            caplog.at_level("WARNING", logger="xtm_composer.plugins"):
        commands = manager.commands()
        manager.commands()
    assert commands["vault-status"].command.name == "vault-status"
    assert commands.owner("vault-status") == "good"
    record = {r.name: r for r in manager.records()}["good"]
    assert record.contributes["composer_register_commands"] == ["vault-status"]
    deprecations = [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(deprecations) == 1 and "'good' (fakeplug 1.0)" in deprecations[0].getMessage()


# --- loading is complete or not at all, and thread-correct ----------------------------------


def test_a_load_that_raised_leaves_nothing_behind(fake_site: Path) -> None:
    calls: list[str] = []

    def flaky(ep: object) -> bool:
        calls.append("asked")
        if len(calls) == 1:
            raise RuntimeError("metadata went away")
        return dists("fakeplug")(ep)

    manager = Plugins(disabled=["blocked"], entry_point_filter=flaky)
    with pytest.raises(PluginError, match="loading the plugins failed: RuntimeError: metadata"):
        manager.credential_providers()
    # not marked loaded, not empty: the next question loads for real
    assert {"vault", "config", "anonymous"} <= set(manager.credential_providers())
    strict = Plugins(strict=True, disabled=["blocked"], entry_point_filter=dists("fakeplug"))
    for _ in range(2):  # every question raises, none answers from a half-loaded manager
        with pytest.raises(PluginError, match="fake_broken needs a library"):
            strict.records()


def test_a_fresh_manager_answers_every_thread_completely(make_dist) -> None:
    import threading

    make_dist("slowplug", {"slow": fakedist.SLOW_IMPORT})
    manager = Plugins(entry_point_filter=dists("slowplug"))
    expected_providers = {"config", "docker-config", "keychain", "containers-auth", "anonymous",
                          "slow"}
    barrier = threading.Barrier(16, timeout=30)
    seen: list[tuple[set[str], set[str], frozenset[str]]] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            barrier.wait()
            seen.append(({r.name for r in manager.records()}, set(manager.credential_providers()),
                         manager.inactive_names()))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(seen) == 16
    for names, providers, inactive in seen:
        assert names == BUILTINS | {"slow"}
        assert providers == expected_providers
        assert inactive == frozenset()


# --- the core, not the plugin, says who answered ---------------------------------------------


def test_the_core_stamps_the_provider_that_answered(plugins: Plugins, make_settings) -> None:
    from composer_core import hookimpl
    from composer_core.auth.chain import forget_rejected, resolve_credentials
    from composer_core.images.resolve import resolve_image
    from composer_core.types import CredentialProvider, Credentials, Found

    forgotten: list[Credentials] = []

    class Liar:
        @hookimpl
        def composer_credential_providers(self) -> CredentialProvider:
            def lookup(request: object) -> Found:
                return Found(Credentials(registry="registry.example.com", source="keychain",
                                         username="u", password="stamp-secret-0x5", key="k"), "k")

            return CredentialProvider(name="stamped", lookup=lookup, forget=forgotten.append)

    plugins.register(Liar(), "stamped")
    settings = make_settings({"auth.chain": ["stamped", "anonymous"]})
    resolution = resolve_credentials(resolve_image("registry.example.com/a/b:1", settings, plugins),
                                     settings, plugins, environ={})
    assert resolution.source == "stamped"
    assert resolution.to_dict()["source"] == "stamped"
    assert resolution.to_dict()["key"] == "k"
    assert [s.outcome for s in resolution.steps] == ["found", "skipped"]
    assert "stamped already answered" in resolution.steps[1].detail
    forget_rejected(resolution, plugins)
    assert [c.source for c in forgotten] == ["stamped"]
    plugins.unregister("stamped")


def test_anonymous_credentials_read_like_any_other(plugins: Plugins, make_settings) -> None:
    from composer_core.auth.chain import resolve_credentials
    from composer_core.images.resolve import resolve_image
    from composer_core.types import Anonymous

    assert Anonymous.key is None and Anonymous.file is None
    settings = make_settings({"auth.chain": ["anonymous"]})
    data = resolve_credentials(resolve_image("alpine", settings, plugins), settings, plugins,
                               environ={}).to_dict()
    assert data["source"] == "anonymous" and data["key"] is None and data["file"] is None


# --- selector: auto ---------------------------------------------------------------------------


class _FakeRuntime:
    """Stands in for an engine: what connect_runtime returns is the point here, not containers."""

    name = "fake-engine"
    endpoint = "fake://in-process"

    def close(self) -> None:
        pass


def test_auto_order_lets_a_third_party_engine_take_part(plugins: Plugins, make_settings,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    from composer_core import hookimpl
    from composer_core.engine.select import connect_runtime
    from composer_core.errors import RuntimeUnavailable
    from composer_core.types import RuntimeBackend

    asked: list[str] = []

    class FakeEngine:
        @hookimpl
        def composer_runtime_backends(self) -> list[RuntimeBackend]:
            def connect(settings: object) -> _FakeRuntime:
                asked.append("fake-engine")
                return _FakeRuntime()

            def refuse(settings: object) -> _FakeRuntime:
                asked.append("down-engine")
                raise RuntimeUnavailable("down-engine does not answer")

            return [RuntimeBackend(name="fake-engine", connect=connect),  # type: ignore[arg-type]
                    RuntimeBackend(name="down-engine", connect=refuse)]  # type: ignore[arg-type]

    plugins.register(FakeEngine(), "fake-engine")
    assert make_settings().get("opencti.daemon.auto_order") == ["docker", "podman"]
    settings = make_settings({"opencti.daemon.auto_order": ["down-engine", "fake-engine"]})
    with caplog.at_level("INFO", logger="xtm_composer.runtime"):
        runtime = connect_runtime(settings, plugins)
    assert isinstance(runtime, _FakeRuntime)
    assert asked == ["down-engine", "fake-engine"]
    assert "runtime auto: using fake-engine" in caplog.text
    with pytest.raises(RuntimeUnavailable, match="selector auto tried down-engine\\):"):
        connect_runtime(make_settings({"opencti.daemon.auto_order": ["down-engine"]}), plugins)
    plugins.unregister("fake-engine")


def test_auto_order_is_checked(plugins: Plugins, make_settings) -> None:
    from composer_core.engine.select import connect_runtime
    from composer_core.errors import SettingsError
    from composer_core.settings import validate_settings

    with pytest.raises(SettingsError, match="auto_order.*unknown runtime backends 'dokcer'"):
        connect_runtime(make_settings({"opencti.daemon.auto_order": ["dokcer"]}), plugins)
    with pytest.raises(SettingsError, match="auto_order.*is empty"):
        connect_runtime(make_settings({"opencti.daemon.auto_order": []}), plugins)
    with pytest.raises(SettingsError, match="opencti.daemon.auto_order.*must be a list of names"):
        validate_settings(make_settings({"opencti.daemon.auto_order": 5}))
    with pytest.raises(SettingsError, match="opencti.daemon.auto_order.*names docker more than once"):
        validate_settings(make_settings({"opencti.daemon.auto_order": ["docker", "docker"]}))


# --- one facade, generic -------------------------------------------------------------------


def test_a_new_record_hook_needs_one_facade_method() -> None:
    from dataclasses import dataclass
    from typing import ClassVar

    import pluggy

    from composer_core import hookimpl
    from composer_core.hookspecs import PROJECT
    from composer_core.pluginmanager import Contributions
    from composer_core.records import Record

    @dataclass(frozen=True, slots=True)
    class Gadget(Record):
        kind: ClassVar[str] = "gadget"

    class Spec:
        @pluggy.HookspecMarker(PROJECT)
        def composer_gadgets(self) -> list[Gadget]:  # type: ignore[empty-body]
            ...

    class WithGadgets(Plugins):
        def gadgets(self) -> Contributions[Gadget]:
            return self._named("composer_gadgets", Gadget, "gadget")

    manager = WithGadgets(load_entry_points=False)
    manager.pm.add_hookspecs(Spec)
    for name in ("one", "two"):
        plugin = type("P", (), {"composer_gadgets": hookimpl(lambda self: [Gadget(name="shared")])})()
        manager.register(plugin, name)
    assert list(manager.gadgets()) == ["shared"] and manager.gadgets().owner("shared") == "one"
    with pytest.raises(PluginError, match="two plugins contribute a gadget named 'shared'"):
        manager.gadgets()["shared"]
    assert {r.name: r.status for r in manager.records()} == {"one": "active", "two": "failed"}


def test_the_entry_point_group_is_defined_once() -> None:
    import composer_core
    from composer_core import hookspecs, pluginmanager

    assert not hasattr(pluginmanager, "GROUP")
    assert composer_core.hookimpl.project_name == hookspecs.PROJECT == "xtm_composer"
    ours = [ep for ep in __import__("importlib_metadata").entry_points(group=hookspecs.PROJECT)
            if ep.dist is not None and ep.dist.name == "xtm-composer"]
    assert {ep.name for ep in ours} == BUILTINS


def test_every_hook_has_a_section_in_the_docs_and_a_test() -> None:
    import ast
    import inspect

    from composer_core import hookspecs

    hooks = sorted(n for n, f in vars(hookspecs).items()
                   if n.startswith("composer_") and callable(f))
    # the discovery finds the hooks (a new one joins them and needs its section and test too)
    assert {"composer_commands", "composer_credential_providers", "composer_image_resolvers",
            "composer_register_commands", "composer_runtime_backends"} <= set(hooks)
    docs = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    tree = ast.parse(Path(__file__).read_text())
    this = inspect.currentframe().f_code.co_name  # type: ignore[union-attr]
    bodies = [ast.unparse(node) for node in tree.body
              if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
              and node.name != this]
    for hook in hooks:
        assert f"### {hook}" in docs or f"### `{hook}" in docs, f"docs/plugins.md lacks ### {hook}"
        assert any(hook in body for body in bodies), f"no test in test_plugins.py names {hook}"


def test_the_plugins_table_lists_each_contribution_once(run_cli) -> None:
    code, out, _ = run_cli(["plugins"])
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    # keychain contributes a provider and a settings spec, both named keychain: one PROVIDES entry
    assert re.search(r"credential_providers, settings\s+keychain\s+active", rows["keychain"]), rows["keychain"]


def test_sources_are_contributions_attributed_to_their_plugin(plugins: Plugins) -> None:
    records = {r.name: r for r in plugins.records()}
    assert records["file"].contributes == {"composer_sources": ["file"]}
    assert records["opencti"].contributes["composer_sources"] == ["opencti"]
    assert records["opencti"].hooks == ["composer_commands", "composer_settings", "composer_sources"]
    assert plugins.sources().owner("opencti") == "opencti"
