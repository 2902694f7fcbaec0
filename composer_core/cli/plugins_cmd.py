"""``xtm-composer plugins``: every plugin, where it comes from, what it implements and provides,
its status."""

from __future__ import annotations

import click

from composer_core.cli.context import get_app
from composer_core.cli.output import emit_json, emit_table, json_option


@click.command(name="plugins")
@json_option
def plugins_command(as_json: bool) -> None:
    """List plugins: name, distribution and version, hooks, what each provides (providers,
    resolvers, backends, commands by name), status (active, disabled, failed)."""
    plugins = get_app().plugins
    records = plugins.records()
    if as_json:
        emit_json([r.to_dict() for r in records])
        return
    rows = []
    for r in records:
        status = r.status if not r.reason or r.status == "active" else f"{r.status}: {r.reason}"
        hooks = ", ".join(h.removeprefix("composer_") for h in r.hooks) or "-"
        # a plugin's settings spec carries the plugin's own name: it is no contribution to list
        provides = ", ".join(sorted({name for hook, names in r.contributes.items()
                                     if hook != "composer_settings" for name in names})) or "-"
        rows.append((r.name, f"{r.distribution} {r.version}".strip(), hooks, provides, status))
    emit_table(("NAME", "DISTRIBUTION", "HOOKS", "PROVIDES", "STATUS"), rows)


COMMANDS = [plugins_command]
