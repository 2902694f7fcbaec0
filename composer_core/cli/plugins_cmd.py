"""``xtm-composer plugins``: every plugin, where it comes from, what it implements, its status."""

from __future__ import annotations

import click

from composer_core.cli.context import get_app
from composer_core.cli.output import emit_json, emit_table, json_option


@click.command(name="plugins")
@json_option
def plugins_command(as_json: bool) -> None:
    """List plugins: name, distribution and version, hooks, status (active, disabled, failed)."""
    plugins = get_app().plugins
    records = plugins.records()
    if as_json:
        emit_json([r.to_dict() for r in records])
        return
    rows = []
    for r in records:
        status = r.status if not r.reason or r.status == "active" else f"{r.status}: {r.reason}"
        hooks = ", ".join(h.removeprefix("composer_") for h in r.hooks) or "-"
        rows.append((r.name, f"{r.distribution} {r.version}".strip(), hooks, status))
    emit_table(("NAME", "DISTRIBUTION", "HOOKS", "STATUS"), rows)


COMMANDS = [plugins_command]
