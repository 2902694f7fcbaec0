"""The private-registry block of the settings, parsed once into one typed value.

Three parts read it: the ``config`` credential provider, the ``registry-prefix`` resolver and the
TLS policy (``insecure``). They all ask :func:`registry_settings`, which parses the block once per
:class:`Settings` and refuses, rather than guesses at, a block that is not valid. The shapes
accepted:

* ``opencti.daemon.docker.registry: {url, username, password | password_file, email, insecure}``
  (the seed's single block);
* ``opencti.daemon.registry: {server, username, password, email}`` (XTM Composer master's single
  block, so that its files carry over); given together with the seed's block, both must say the
  same, or it is an error;
* ``opencti.daemon.docker.registries: [{url, username, password | password_file, email, insecure}]``.

An unknown key inside a registry entry is an error, never a warning: a ``pasword:`` typo must not
quietly turn into an anonymous pull.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from composer_core.errors import SettingsError
from composer_core.settings.model import Settings, describe
from composer_core.settings.spec import Problems
from composer_core.yamlfile import printable_key

SINGLE = "opencti.daemon.docker.registry"
MASTER = "opencti.daemon.registry"
LIST = "opencti.daemon.docker.registries"
ENTRY_KEYS = ("url", "username", "password", "password_file", "email", "insecure")
MASTER_KEYS = ("server", "username", "password", "email")
_TEXT_KEYS = ("username", "password", "password_file", "email")


@dataclass(frozen=True)
class RegistryEntry:
    """One configured registry. ``key`` is its settings key (``opencti.daemon.docker.registries[1]``),
    ``registry`` the canonical ``host[:port]`` its credentials belong to, ``origin`` the layer that
    set its url."""

    key: str
    url: str
    normalized: str
    registry: str
    origin: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    email: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class RegistrySettings:
    """Every registry entry of the settings, in order (single block first), and the problems found.

    ``primary`` is the single block (the seed's or XTM Composer master's): images that name no
    registry are pulled from it.
    """

    entries: tuple[RegistryEntry, ...] = ()
    primary: RegistryEntry | None = None
    problems: tuple[tuple[str, str], ...] = ()

    def find(self, registry: str) -> RegistryEntry | None:
        """The first entry for ``registry`` (any spelling: ``https://host:5000/``, ``host:5000``)."""
        from composer_core.auth.registries import canonical_host

        wanted = canonical_host(registry)
        return next((e for e in self.entries if e.registry == wanted), None)

    def insecure_entry(self, registry: str) -> RegistryEntry | None:
        """The entry marking ``registry`` ``insecure: true``, or ``None`` (verify TLS)."""
        from composer_core.auth.registries import canonical_host

        wanted = canonical_host(registry)
        return next((e for e in self.entries if e.registry == wanted and e.insecure), None)


def registry_settings(settings: Settings) -> RegistrySettings:
    """The parsed registry block of ``settings`` (parsed on first use, then reused).

    Raises :class:`SettingsError` when the block is not valid: validation reports it at start,
    and a part that reads it anyway never works from a block it misunderstood."""
    parsed = settings.memo.get("registries")
    if parsed is None:
        parsed = settings.memo["registries"] = parse_registries(settings)
    if parsed.problems:
        lines = "\n  ".join(f"{key} (from {settings.source(key)}): {message}"
                            for key, message in parsed.problems)
        raise SettingsError(f"invalid registry settings:\n  {lines}",
                            hint="fix these keys; `xtm-composer config check` validates them")
    return parsed


def validate_registries(settings: Settings, problems: Problems) -> None:
    """The validation of the registry block (core keys: the ``config`` provider, the
    ``registry-prefix`` resolver and the TLS policy read them)."""
    parsed = settings.memo.get("registries")
    if parsed is None:
        parsed = settings.memo["registries"] = parse_registries(settings)
    for key, message in parsed.problems:
        problems.add(key, message)


def parse_registries(settings: Settings) -> RegistrySettings:
    problems: list[tuple[str, str]] = []
    entries: list[RegistryEntry] = []
    seed = _entry(settings, SINGLE, settings.get(SINGLE), ENTRY_KEYS, "url", problems,
                  url_required=False)
    master = _entry(settings, MASTER, settings.get(MASTER), MASTER_KEYS, "server", problems,
                    url_required=False)
    primary = seed or master
    if seed is not None and master is not None:
        # what only one of them says is kept; what both say must agree
        differ = [name for name, a, b in (("url/server", seed.registry, master.registry),
                                          ("username", seed.username, master.username),
                                          ("password", seed.password, master.password),
                                          ("email", seed.email, master.email))
                  if a is not None and b is not None and a != b]
        if differ:
            problems.append((MASTER, f"both {MASTER} (XTM Composer's block) and {SINGLE} are set, "
                                     f"and their {', '.join(differ)} differ: keep one of them"))
        primary = replace(seed, username=seed.username or master.username,
                          password=seed.password or master.password,
                          email=seed.email or master.email)
    if primary is not None:
        entries.append(primary)
    listed = settings.get(LIST)
    if listed is not None and not isinstance(listed, list):
        problems.append((LIST, f"must be a list of registries ({{url, username, password}} "
                               f"each), not {describe(listed)}"))
        listed = None
    for i, raw in enumerate(listed or []):
        entry = _entry(settings, f"{LIST}[{i}]", raw, ENTRY_KEYS, "url", problems,
                       url_required=True)
        if entry is not None:
            entries.append(entry)
    return RegistrySettings(tuple(entries), primary, tuple(problems))


def _entry(settings: Settings, prefix: str, raw: Any, known: tuple[str, ...], url_key: str,
           problems: list[tuple[str, str]], *, url_required: bool) -> RegistryEntry | None:
    from composer_core.auth.registries import canonical_host
    from composer_core.images.reference import InvalidRegistryURL, normalize_registry_url

    def add(key: str, message: str) -> None:
        problems.append((f"{prefix}.{key}" if key else prefix, message))

    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        add("", f"must be a mapping with {url_key}, username, password; not {describe(raw)}")
        return None
    ok = True
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            add(printable_key(key), f"unknown key in a registry entry; {hint}(known: "
                                    f"{', '.join(known)})")
            ok = False
    url = raw.get(url_key)
    normalized = None
    if url in (None, ""):
        if url_required:
            add(url_key, "is required")
            ok = False
    elif not isinstance(url, str):
        add(url_key, f"must be a string, not {describe(url)}")
        ok = False
    else:
        try:
            normalized = normalize_registry_url(url)
        except InvalidRegistryURL as exc:
            add(url_key, str(exc))
            ok = False
    text: dict[str, str | None] = {}
    for key in _TEXT_KEYS:
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            add(key, f"must be a string, not {describe(value)}")
            ok = False
            value = None
        text[key] = value or None
    insecure = raw.get("insecure", False)
    if insecure is None:
        insecure = False
    if not isinstance(insecure, bool):
        add("insecure", f"must be true or false, not {describe(insecure)}")
        ok = False
    has_user, has_secret = bool(text["username"]), bool(text["password"] or text["password_file"])
    # each problem is reported on the key that *is* set, so that its origin can be named
    secret_key = "password" if text["password"] else "password_file"
    if text["password"] and text["password_file"]:
        add("password_file", "set either password or password_file, not both")
        ok = False
    if has_user and not has_secret:
        add("username", "username is set but password (or password_file) is not")
        ok = False
    elif has_secret and not has_user:
        add(secret_key, "password is set but username is not")
        ok = False
    if (has_user or has_secret) and url in (None, "") and not url_required:
        add("username" if has_user else secret_key,
            f"credentials are set but {url_key} is not: they would have no registry to belong to")
        ok = False
    if not ok or normalized is None or not isinstance(url, str):
        return None
    origin = settings.source(f"{prefix}.{url_key}" if not prefix.startswith(LIST) else LIST)
    return RegistryEntry(key=prefix, url=url, normalized=normalized,
                         registry=canonical_host(normalized), origin=origin,
                         username=text["username"], password=text["password"],
                         password_file=text["password_file"], email=text["email"],
                         insecure=bool(insecure))
