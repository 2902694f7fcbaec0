"""``xtm-composer image resolve``: the exact reference that would be pulled, and why."""

from __future__ import annotations

import click

from composer_core.cli.context import get_app
from composer_core.cli.output import emit_json, json_option
from composer_core.images.resolve import resolve_image


@click.group(name="image")
def image_group() -> None:
    """Image references: what a connector's image resolves to."""


@image_group.command(name="resolve")
@click.argument("image")
@json_option
def resolve(image: str, as_json: bool) -> None:
    """Print the reference that would be pulled for IMAGE (registry prefix, mirrors)."""
    app = get_app()
    resolved = resolve_image(image, app.settings, app.plugins)
    ref = resolved.ref
    if as_json:
        emit_json({
            "input": resolved.input,
            "resolved": ref.normalized(),
            "registry": ref.registry,
            "repository": ref.path,
            "tag": ref.tag,
            "digest": ref.digest,
            "rules": [s.to_dict() for s in resolved.steps],
        })
        return
    click.echo(ref.normalized())
    for step in resolved.steps:
        click.echo(f"  {step.resolver}: {step.before} -> {step.after} ({step.detail})")


COMMANDS = [image_group]
