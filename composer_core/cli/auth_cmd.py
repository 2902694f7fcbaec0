"""``xtm-composer auth explain``: which credential source answers for an image, and why."""

from __future__ import annotations

import click

from composer_core.auth.chain import resolve_credentials
from composer_core.cli.context import get_app
from composer_core.cli.output import emit_json, json_option
from composer_core.images.resolve import resolve_image
from composer_core.redact import scrub


@click.group(name="auth")
def auth_group() -> None:
    """Registry credentials: where they come from."""


@auth_group.command(name="explain")
@click.argument("image")
@json_option
def explain(image: str, as_json: bool) -> None:
    """Walk the credential chain for IMAGE and show every step (secrets are never shown)."""
    app = get_app()
    resolved = resolve_image(image, app.settings, app.plugins)
    resolution = resolve_credentials(resolved, app.settings, app.plugins)
    if as_json:
        emit_json(resolution.to_dict())
        return
    data = resolution.to_dict()
    lines = [f"image:     {data['image']}", f"resolved:  {data['resolved']}",
             f"registry:  {data['registry']}"]
    for rewrite in resolved.steps:
        lines.append(f"  rewrite: {rewrite.resolver}: {rewrite.before} -> {rewrite.after}")
    who = data["source"]
    if data["username"]:
        who += f" (user {data['username']})"
    elif data["identity_token"]:
        who += " (identity token)"
    lines.append(f"source:    {who}")
    lines.append("chain:")
    marks = {"found": "+", "not-found": "-", "error": "!", "skipped": " "}
    for step in resolution.steps:
        lines.append(f"  {marks[step.outcome]} {step.provider:<16} {step.outcome:<9} {step.detail}")
    click.echo(scrub("\n".join(lines)))


COMMANDS = [auth_group]
