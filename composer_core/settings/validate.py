"""Validation: the core checks its own keys, then every plugin's validator checks the plugin's.

Every problem names its key, the layer that set it and, for a plugin's key, the plugin; values
are quoted only where they cannot be secret (a log level, a selector), otherwise described by
type and size. :func:`check_number`, :func:`check_bool` and :func:`check_text` are the checks
plugins' validators use too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from composer_core.errors import SettingsError
from composer_core.settings.model import Settings, describe
from composer_core.settings.registry import validate_registries
from composer_core.settings.spec import Problem, Problems

LOG_LEVELS = ("debug", "info", "warning", "warn", "error", "critical")
DAY = 86_400
#: the most seconds a wait on another process may last (helper timeouts, engine calls)
MAX_TIMEOUT = 600
MAX_PARALLEL = 256


def check_number(settings: Settings, problems: Problems, key: str, *, what: str,
                 minimum: float, maximum: float, above_minimum: bool = False,
                 whole: bool = False) -> float | None:
    """``key`` must be a finite number in ``[minimum, maximum]`` (``(minimum, maximum]`` with
    ``above_minimum``); returns it, or ``None`` after adding a problem."""
    raw = settings.get(key)
    if isinstance(raw, bool) or not isinstance(raw, int if whole else (int, float)):
        problems.add(key, f"must be {what}, not {describe(raw)}")
        return None
    value = float(raw)
    if not math.isfinite(value):
        problems.add(key, f"must be a finite number, not {raw!r}")
        return None
    if (value <= minimum) if above_minimum else (value < minimum):
        bound = f"greater than {minimum:g}" if above_minimum else f"at least {minimum:g}"
        problems.add(key, f"must be {bound}, not {raw!r}")
        return None
    if value > maximum:
        problems.add(key, f"must be at most {maximum:g}, not {raw!r}")
        return None
    return value


def check_bool(settings: Settings, problems: Problems, key: str) -> None:
    value = settings.get(key)
    if not isinstance(value, bool):
        problems.add(key, f"must be true or false, not {describe(value)}")


def check_text(settings: Settings, problems: Problems, key: str, *, what: str,
               optional: bool = False) -> str | None:
    """``key`` must be a string without control characters (empty allowed when ``optional``)."""
    value = settings.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        problems.add(key, f"must be {what}, not {describe(value)}")
        return None
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        problems.add(key, "must not contain a control character (NUL, newline, tab...)")
        return None
    if not value.strip() and not optional:
        problems.add(key, "must not be empty")
        return None
    return value


def _as_name_list(value: Any) -> list[str] | None:
    """Lists of names; a comma-separated string (handy in environment variables) is one too."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value]
    return None


def name_list(settings: Settings, dotted: str) -> list[str]:
    return _as_name_list(settings.get(dotted)) or []


def _core(settings: Settings, p: Problems, *, providers: Iterable[str] | None,
          resolvers: Iterable[str] | None, runtimes: Iterable[str] | None,
          inactive: Iterable[str] = ()) -> None:
    s = settings
    check_text(s, p, "manager.id", what="a non-empty string")
    check_text(s, p, "manager.name", what="a non-empty string")
    level = check_text(s, p, "manager.logger.level", what="a log level")
    if level is not None and level.lower() not in LOG_LEVELS:
        p.add("manager.logger.level", f"unknown level {level!r}; use one of debug, info, "
                                      "warning, error")
    fmt = check_text(s, p, "manager.logger.format", what="text or json")
    if fmt is not None and fmt.lower() not in ("text", "json"):
        p.add("manager.logger.format", f"unknown format {fmt!r}; use text or json")
    check_number(s, p, "manager.execute_schedule", what="a positive number of seconds",
                 minimum=0, above_minimum=True, maximum=DAY)
    check_number(s, p, "manager.max_parallel", what="a whole number of at least 1", minimum=1,
                 maximum=MAX_PARALLEL, whole=True)
    check_bool(s, p, "manager.metrics.enable")
    check_text(s, p, "manager.metrics.host", what="a host name or address")
    check_number(s, p, "manager.metrics.port", what="a port number (1 to 65535)", minimum=1,
                 maximum=65535, whole=True)
    check_bool(s, p, "plugins.strict")
    validate_registries(s, p)

    selector = check_text(s, p, "opencti.daemon.selector", what="auto, docker or podman")
    # Without the installed runtimes (at load time, before plugins are loaded) any name may be a
    # third-party backend: connecting to it then fails with the available names.
    if selector is not None and runtimes is not None:
        known = ["auto", *sorted(runtimes)]
        if selector not in known:
            p.add("opencti.daemon.selector",
                  f"unknown selector {selector!r}; use one of {', '.join(known)}")

    for key, names, label in (("auth.chain", providers, "credential providers"),
                              ("images.resolvers", resolvers, "image resolvers"),
                              # a disabled backend in auto_order is skipped when auto runs
                              ("opencti.daemon.auto_order",
                               None if runtimes is None else [*runtimes, *inactive],
                               "runtime backends"),
                              ("plugins.disabled", None, "")):
        value = _as_name_list(s.get(key))
        if value is None:
            p.add(key, f"must be a list of names, not {describe(s.get(key))}")
            continue
        dupes = sorted({v for v in value if value.count(v) > 1})
        if dupes:
            p.add(key, f"names {', '.join(dupes)} more than once")
        if names is not None:
            available = sorted(names)
            unknown = [v for v in value if v not in available]
            if unknown:
                p.add(key, f"unknown {label} {', '.join(map(repr, unknown))}; available: "
                           f"{', '.join(available) or 'none'}")
    if _as_name_list(s.get("auth.chain")) == []:
        p.add("auth.chain", "must name at least one provider (end it with anonymous to allow "
                            "anonymous pulls)")


def problems_of(settings: Settings, *, providers: Iterable[str] | None = None,
                resolvers: Iterable[str] | None = None,
                runtimes: Iterable[str] | None = None,
                inactive: Iterable[str] = ()) -> list[Problem]:
    """Every problem of ``settings``: the merge's, the core's, then each plugin's, in name order."""
    p = Problems(settings)
    for key, message in settings.shape_problems:
        p.add(key, message)
    _core(settings, p, providers=providers, resolvers=resolvers, runtimes=runtimes,
          inactive=inactive)
    for spec in settings.specs:
        if spec.validator is None:
            continue
        mine = p.for_plugin(spec.name)
        try:
            spec.validator(settings, mine)
        except Exception as exc:  # noqa: BLE001 - a broken validator must not hide the others
            mine.add(spec.owns[0] if spec.owns else spec.name,
                     f"the plugin's validator failed ({type(exc).__name__}); report it to the "
                     "plugin's authors")
    return p.items


def validate_settings(settings: Settings, *, providers: Iterable[str] | None = None,
                      resolvers: Iterable[str] | None = None,
                      runtimes: Iterable[str] | None = None,
                      inactive: Iterable[str] = ()) -> None:
    """Raise one :class:`SettingsError` listing every problem; silent when all is well.

    The optional name lists check ``auth.chain``, ``images.resolvers`` and the selector against
    the installed plugins (``config check`` passes them).
    """
    items = problems_of(settings, providers=providers, resolvers=resolvers, runtimes=runtimes,
                        inactive=inactive)
    if items:
        lines = "\n  ".join(str(item) for item in items)
        raise SettingsError(f"invalid settings:\n  {lines}",
                            hint="fix these keys; `xtm-composer config show` prints the merged "
                                 "settings and `config check` validates them")
