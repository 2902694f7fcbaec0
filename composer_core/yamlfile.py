"""Reading a YAML file a user wrote, with errors that say where it is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class YamlFileError(Exception):
    """``unreadable``: the file could not be read at all; otherwise it is not valid YAML."""

    def __init__(self, reason: str, *, unreadable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unreadable = unreadable


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise YamlFileError(f"cannot read {path}: {reason}", unreadable=True) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise YamlFileError(f"not valid YAML{where}: {problem}", unreadable=False) from None
