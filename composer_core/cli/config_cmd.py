"""``xtm-composer config show|check``: the merged settings (secrets masked) and their validation."""

from __future__ import annotations

import click
import yaml

from composer_core import redact
from composer_core.cli.context import get_app
from composer_core.cli.output import emit_json, json_option
from composer_core.settings import Settings, validate_settings


@click.group(name="config")
def config_group() -> None:
    """Show or check the merged settings."""


@config_group.command(name="show")
@json_option
def show(as_json: bool) -> None:
    """Print the merged settings, every value under a secret-bearing key masked."""
    data = get_app().settings.as_dict(masked=True)
    if as_json:
        emit_json(data)
    else:
        click.echo(redact.scrub(yaml.safe_dump(data, sort_keys=False)).rstrip())


def _unused(settings: Settings) -> list[dict[str, str | None]]:
    """Keys that neither the core nor an active plugin reads: typos, or an inactive plugin's."""
    inactive = ", ".join(settings.inactive_plugins)
    found = []
    for unknown in settings.unknown:
        if unknown.suggestion is None and inactive:
            reason = f"not read by the core or any active plugin (inactive plugins: {inactive})"
        else:
            reason = "unknown key" + (f"; did you mean {unknown.suggestion}?"
                                      if unknown.suggestion else "")
        found.append({"key": unknown.key, "origin": unknown.origin, "reason": reason,
                      "suggestion": unknown.suggestion})
    return found


@config_group.command(name="check")
@json_option
def check(as_json: bool) -> None:
    """Validate the settings against the installed plugins; exit 0 when valid, 2 otherwise.

    Keys nothing reads (a typo, or a disabled plugin's) are listed as unused; they do not make
    the settings invalid."""
    app = get_app()
    plugins = app.plugins
    # a disabled plugin named in a list is skipped when used, not an unknown name
    inactive = plugins.inactive_names()
    validate_settings(app.settings,
                      providers=[*plugins.credential_providers(), *inactive],
                      resolvers=[*plugins.image_resolvers(), *inactive],
                      runtimes=plugins.runtime_backends(), inactive=inactive)
    unused = _unused(app.settings)
    if as_json:
        emit_json({"valid": True, "unused": unused})
        return
    for item in unused:
        click.echo(redact.scrub(f"unused: {item['key']} (from {item['origin']}): {item['reason']}"),
                   err=True)
    click.echo("settings are valid")


COMMANDS = [config_group]
