"""What a container spec may hold: the one definition of a valid container name and of a valid
environment variable, used by the connectors file (``fleet/connectors.py``), by ``--env`` and by
the deploy flow, so that what the file accepts is exactly what an engine is given.

Problems are described, never echoed when they are values: an env value often is a token.
"""

from __future__ import annotations

import re

#: A container name: Docker's and Podman's alphabet, at least two characters.
NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
NAME_RULE = "at least 2 characters of letters, digits, '_', '.' or '-', starting with a letter or a digit"
# C0 controls and DEL: a newline splits an env file or a log line; NUL cannot cross execve.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a valid container name, or ``None``."""
    if isinstance(name, str) and NAME_PATTERN.fullmatch(name):
        return None
    return f"invalid container name {name!r}: {NAME_RULE}"


def env_key_problem(key: object) -> str | None:
    """Why ``key`` is not a valid environment variable name, or ``None``.

    The name is shown (``repr``, so a newline or a NUL is visible): names are not secrets.
    """
    if not isinstance(key, str):
        return f"invalid variable name {key!r}: it must be a string"
    if not key:
        return "invalid variable name '': it is empty"
    if "=" in key:
        return f"invalid variable name {key!r}: it must not contain '='"
    if _CONTROL.search(key):
        return f"invalid variable name {key!r}: it must not contain a control character (newline, NUL...)"
    return None


def env_value_problem(value: str) -> str | None:
    """Why the string ``value`` cannot be an environment value, or ``None``. The value itself is
    never part of the answer."""
    if "\0" in value:
        at = value.index("\0")
        return (f"the value holds a NUL character (at offset {at} of {len(value)}), which no "
                "process environment can carry")
    return None
