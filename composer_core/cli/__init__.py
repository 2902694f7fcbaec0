"""The ``xtm-composer`` command line.

The root group holds the built-in commands (each in a small module of this package) and, on first
need, the commands plugins add through ``composer_commands``. :func:`main` turns every
:class:`~composer_core.errors.ComposerError` into one readable message and its exit code, never a
traceback.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from composer_core import __version__, redact
from composer_core.cli.context import build_plugins_for_help, get_app
from composer_core.errors import ComposerError, PluginError
from composer_core.pluginmanager import Contributions
from composer_core.records import PluginCommand

BUILTIN_MODULES = ("plugins_cmd", "config_cmd", "image_cmd", "auth_cmd", "runtime_cmd", "fleet_cmd")


class ComposerGroup(click.Group):
    """A group whose plugin-contributed commands are collected once per invocation, when first
    asked for (kept in the context, so that one run's plugins never leak into the next)."""

    def _plugin_commands(self, ctx: click.Context) -> Contributions[PluginCommand]:
        meta = ctx.find_root().meta
        if "xtm_composer.plugin_commands" not in meta:
            try:
                plugins = get_app(ctx).plugins
            except ComposerError:
                # --help must work even when the settings are broken; the error shows when a
                # command runs.
                plugins = build_plugins_for_help()
            meta["xtm_composer.plugin_commands"] = plugins.commands()
        commands: Contributions[PluginCommand] = meta["xtm_composer.plugin_commands"]
        return commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self._plugin_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        commands = self._plugin_commands(ctx)
        if cmd_name not in commands:
            return None
        try:
            return commands[cmd_name].command
        except PluginError as clash:
            return _contested(cmd_name, clash)


def _contested(name: str, clash: PluginError) -> click.Command:
    """Two plugins add ``name``: listed by --help as such, and refusing to run (exit 3)."""

    def refuse() -> None:
        raise clash

    return click.Command(name, callback=refuse, add_help_option=False,
                         short_help="unavailable: two plugins add this command "
                                    "(see `xtm-composer plugins`)",
                         context_settings={"ignore_unknown_options": True,
                                           "allow_extra_args": True})


@click.group(cls=ComposerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_files", multiple=True, metavar="FILE",
              type=click.Path(dir_okay=False),
              help="Settings file (YAML); repeatable, later wins. Default: XTM_COMPOSER_CONFIG.")
@click.option("--runtime", metavar="NAME",
              help="Container engine: docker, podman (overrides opencti.daemon.selector).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"],
                                                case_sensitive=False),
              help="Overrides manager.logger.level.")
@click.version_option(__version__, prog_name="xtm-composer")
def cli(config_files: tuple[str, ...], runtime: str | None, log_level: str | None) -> None:
    """xtm-composer: deploy OpenCTI connector containers from public or private registries onto
    Docker or Podman, finding registry credentials through an explained chain of providers.

    Settings: embedded defaults, config/default.yaml and config/$COMPOSER_ENV.yaml in the working
    directory, --config files, then environment variables such as
    OPENCTI__DAEMON__DOCKER__REGISTRY__URL. See `xtm-composer config show`.
    """


def _load_builtin_commands() -> None:
    import importlib

    for module in BUILTIN_MODULES:
        mod = importlib.import_module(f"composer_core.cli.{module}")
        for command in mod.COMMANDS:
            cli.add_command(command)


_load_builtin_commands()


def _wants_json(argv: list[str]) -> bool:
    return "--json" in argv


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name="xtm-composer", standalone_mode=False)
    except ComposerError as exc:
        _report(exc.to_dict(), str(exc), exc.exit_code, args)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for users
        if os.environ.get("XTM_COMPOSER_DEBUG"):
            raise
        message = f"internal error: {type(exc).__name__}: {exc}"
        _report({"error": "internal", "message": message, "hint": None},
                message + "\n  hint: this is a bug; rerun with XTM_COMPOSER_DEBUG=1 for the "
                          "traceback and report it", 70, args)
    sys.exit(0)


def _report(payload: dict[str, Any], text: str, code: int, args: list[str]) -> None:
    if _wants_json(args):
        click.echo(redact.scrub(json.dumps(redact.scrub_data(payload))))
    click.echo(redact.scrub(f"error: {text}"), err=True)
    sys.exit(code)
