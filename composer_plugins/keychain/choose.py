"""Which credential helper config.json names for a registry: ``credHelpers[host]``, else ``credsStore``.

Docker CLI rules, with per-entry validation: ``credHelpers`` keys are hosts (normalised like every
key: case, scheme, ``/v1/``, Hub aliases; a key written exactly wins over an alias, then file order);
an entry present but empty means "no helper for this registry" and ``credsStore`` is then not asked
(that is how the Docker CLI reads it); an empty ``credsStore`` means no store. A value that is not a
helper name is skipped with its reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from composer_core.auth.authfile import json_type
from composer_core.auth.registries import HUB_KEY, InvalidKey, parse_key
from composer_core.redact import hide_userinfo

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True, slots=True)
class Choice:
    """A helper to run (``name``), or why there is none (``reason``, with ``error`` when the
    configuration itself is wrong); ``origin`` is how the file named it, ``notes`` what was skipped."""

    name: str | None
    origin: str
    reason: str = ""
    error: bool = False
    notes: tuple[str, ...] = ()


def _bad_name(value: object) -> str | None:
    if not isinstance(value, str):
        return f"is {json_type(value)}, expected a helper name"
    if value and not _NAME.fullmatch(value):
        return "is not a helper name (letters, digits, '.', '_', '+' and '-' only)"
    return None


def choose_helper(data: Mapping[str, Any], registry: str) -> Choice:
    notes: list[str] = []
    helpers = data.get("credHelpers")
    if helpers is not None and not isinstance(helpers, dict):
        notes.append(f"credHelpers skipped: it is {json_type(helpers)}, expected an object")
        helpers = None
    matched: list[tuple[bool, str, object]] = []  # (not exact, key, value), in file order
    for key, value in (helpers or {}).items():
        try:
            scope = parse_key(key)
        except InvalidKey as exc:
            notes.append(f"credHelpers[{hide_userinfo(key)!r}] skipped: {exc}")
            continue
        if scope.path:
            notes.append(f"credHelpers[{key!r}] skipped: credHelpers keys are hosts, not paths")
            continue
        problem = _bad_name(value)
        if problem:
            notes.append(f"credHelpers[{key!r}] skipped: it {problem}")
            continue
        if scope.matches(registry, "") is None:
            continue
        matched.append((key not in (str(scope), HUB_KEY), key, value))
    if matched:
        matched.sort(key=lambda item: item[0])  # stable: exact first, then file order
        _, key, value = matched[0]
        if len(matched) > 1:
            others = ", ".join(repr(k) for _, k, _ in matched[1:])
            notes.append(f"credHelpers {others} also match{'es' if len(matched) == 2 else ''}; "
                         f"{key!r} wins (exact key first, then file order)")
        origin = f"credHelpers[{key}]"
        if not value:
            return Choice(None, origin, f"{origin} is empty: no helper for {registry} (credsStore is "
                                        "not asked, as in the Docker CLI)", notes=tuple(notes))
        return Choice(str(value), origin, notes=tuple(notes))
    store = data.get("credsStore")
    if store is None or store == "":
        why = "credsStore is empty" if store == "" else "no credsStore"
        return Choice(None, "credsStore", f"no credHelpers entry for {registry} and {why}",
                      notes=tuple(notes))
    problem = _bad_name(store)
    if problem:
        return Choice(None, "credsStore", f"credsStore {problem}", error=True, notes=tuple(notes))
    return Choice(str(store), "credsStore", notes=tuple(notes))
