"""``xtm-composer config show|check``: the merged settings (secrets masked) and their validation."""

from __future__ import annotations

import click
import yaml

from composer_core import redact
from composer_core.cli.context import get_app
from composer_core.cli.output import emit_json, json_option
from composer_core.settings import validate_settings


@click.group(name="config")
def config_group() -> None:
    """Show or check the merged settings."""


@config_group.command(name="show")
@json_option
def show(as_json: bool) -> None:
    """Print the merged settings, every secret masked."""
    data = get_app().settings.as_dict(masked=True)
    if as_json:
        emit_json(data)
    else:
        click.echo(redact.scrub(yaml.safe_dump(data, sort_keys=False)).rstrip())


@config_group.command(name="check")
@json_option
def check(as_json: bool) -> None:
    """Validate the settings against the installed plugins; exit 0 when valid, 2 otherwise."""
    app = get_app()
    plugins = app.plugins
    # a disabled plugin named in a list is skipped when used, not an unknown name
    inactive = plugins.inactive_names()
    validate_settings(app.settings,
                      providers=[*plugins.credential_providers(), *inactive],
                      resolvers=[*plugins.image_resolvers(), *inactive],
                      runtimes=plugins.runtime_backends())
    if as_json:
        emit_json({"valid": True})
    else:
        click.echo("settings are valid")


COMMANDS = [config_group]
