"""Small output helpers shared by the commands: JSON for scripts, aligned columns for people."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from composer_core import redact


def emit_json(data: Any) -> None:
    click.echo(redact.scrub(json.dumps(redact.scrub_data(data), indent=2, default=str)))


def emit_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        line = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        click.echo(redact.scrub(line))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
