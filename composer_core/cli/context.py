"""What every command shares: the merged settings and the plugin manager, built once per run."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click

from composer_core import logs
from composer_core.pluginmanager import EntryPointFilter, Plugins
from composer_core.settings import Settings, name_list, read_layers, warn_unknown

TRUTHY = ("1", "true", "yes", "on")
#: Which entry points the command line loads (None: all installed). Tests narrow it to known
#: distributions, so that a plugin installed on the machine cannot change their result.
ENTRY_POINT_FILTER: EntryPointFilter | None = None


@dataclass
class App:
    settings: Settings
    plugins: Plugins
    runtime_override: str | None = None


def _env_disabled(environ: Mapping[str, str]) -> list[str]:
    return [n.strip() for n in environ.get("XTM_COMPOSER_DISABLE_PLUGINS", "").split(",")
            if n.strip()]


def make_plugins(settings: Settings, environ: Mapping[str, str] | None = None) -> Plugins:
    environ = os.environ if environ is None else environ
    strict = settings.get("plugins.strict") or (
        environ.get("XTM_COMPOSER_STRICT_PLUGINS", "").lower() in TRUTHY)
    disabled = name_list(settings, "plugins.disabled") + _env_disabled(environ)
    return Plugins(disabled=disabled, strict=bool(strict), reserved_commands=builtin_commands(),
                   entry_point_filter=ENTRY_POINT_FILTER)


def build_plugins_for_help() -> Plugins:
    return Plugins(disabled=_env_disabled(os.environ), reserved_commands=builtin_commands(),
                   entry_point_filter=ENTRY_POINT_FILTER)


def builtin_commands() -> list[str]:
    """The names of the built-in commands, which no plugin command may take."""
    from composer_core.cli import cli  # the package imports this module: import at call time

    return list(cli.commands)


def build_app(params: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> App:
    environ = os.environ if environ is None else environ
    overrides: dict[str, Any] = {}
    if params.get("log_level"):
        overrides["manager.logger.level"] = params["log_level"].lower()
    if params.get("runtime"):
        overrides["opencti.daemon.selector"] = params["runtime"]
    # the user's layers are read once; the plugins they enable contribute their settings specs
    source = read_layers(params.get("config_files") or (), environ=environ, overrides=overrides)
    plugins = make_plugins(source.core(), environ)
    settings = source.settings(plugins.settings_specs().values(), inactive=plugins.inactive_names(),
                               warn=False)
    logs.configure(settings.get("manager.logger.level"), settings.get("manager.logger.format"))
    warn_unknown(settings)
    return App(settings=settings, plugins=plugins, runtime_override=params.get("runtime"))


def get_app(ctx: click.Context | None = None) -> App:
    """The :class:`App` of this invocation (settings loaded and validated on first use)."""
    ctx = ctx or click.get_current_context()
    root = ctx.find_root()
    app = root.meta.get("xtm_composer.app")
    if app is None:
        app = build_app(root.params)
        root.meta["xtm_composer.app"] = app
    return app
