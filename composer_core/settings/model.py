"""The merged settings as a value: dotted-key access, provenance, masking of secret-bearing keys."""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from composer_core.redact import MASK

if TYPE_CHECKING:
    from composer_core.settings.spec import SettingsSpec

#: the top-level sections; every key lives under one of them
SECTIONS = ("manager", "opencti", "auth", "images", "plugins")

#: a key whose normalised name contains one of these holds a secret, typos included
#: (``pasword``, ``api_token``, ``passwd``, ``secret_key``): its value is never shown
_SECRET_PARTS = ("pass", "pasw", "pwd", "psw", "token", "secret", "credential", "apikey",
                 "privatekey", "auth", "cookie", "session")
#: ...unless the key names where a secret is, not the secret itself
_NOT_SECRET_SUFFIXES = ("file", "path", "dir", "url", "store", "helper", "helpers")
_NON_ALNUM = re.compile(r"[^a-z0-9]")


@functools.lru_cache(maxsize=4096)  # keys repeat: 10k registries hold three distinct ones
def looks_secret(key: str) -> bool:
    """Whether a settings key (one segment, any case) looks like it holds a secret."""
    name = _NON_ALNUM.sub("", str(key).lower())
    if not name or name.endswith(_NOT_SECRET_SUFFIXES):
        return False
    return any(part in name for part in _SECRET_PARTS)


def describe(value: Any) -> str:
    """A value by its type and size, never its content: what error messages say about input that
    may be, or contain, a secret."""
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return f"a string ({len(value)} characters)"
    if isinstance(value, Mapping):
        return f"a mapping ({len(value)} keys)"
    if isinstance(value, (list, tuple)):
        return f"a list ({len(value)} items)"
    return f"a {type(value).__name__}"


@dataclass(frozen=True)
class UnknownKey:
    """A key no part of xtm-composer reads: a typo, or the key of an inactive plugin."""

    key: str
    origin: str
    suggestion: str | None

    def message(self) -> str:
        hint = f"; did you mean {self.suggestion}?" if self.suggestion else ""
        return f"{self.key} (from {self.origin}): unknown key, ignored{hint}"


class Settings:
    """The merged settings: read-only, dotted-key access, and where each value came from.

    Every key the core or an active plugin reads holds a value here (its default at least), so
    callers never pass a default of their own to :meth:`get`.
    """

    def __init__(self, data: Mapping[str, Any], sources: Mapping[str, str], *,
                 specs: Iterable[SettingsSpec] = (), unknown: Iterable[UnknownKey] = (),
                 shape_problems: Iterable[tuple[str, str]] = ()) -> None:
        self._data = data
        self._sources = dict(sources)
        #: the settings specs of the plugins whose defaults are merged in (and validated)
        self.specs: tuple[SettingsSpec, ...] = tuple(specs)
        #: keys that nothing reads, in the order found
        self.unknown: tuple[UnknownKey, ...] = tuple(unknown)
        #: (dotted key, message) found while merging: a section given as a scalar, say
        self.shape_problems: tuple[tuple[str, str], ...] = tuple(shape_problems)
        #: installed plugins that are disabled or failed: keys nothing reads may be theirs
        self.inactive_plugins: tuple[str, ...] = ()
        #: values derived once from these settings (the parsed registry block)
        self.memo: dict[str, Any] = {}

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self._data
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return default if node is None else node

    def source(self, dotted: str) -> str:
        """The layer that set ``dotted`` (or the nearest parent that was set as a whole)."""
        parts = [part.split("[", 1)[0] for part in dotted.split(".")]  # registries[1] -> registries
        while parts:
            key = ".".join(parts)
            if key in self._sources:
                return self._sources[key]
            parts.pop()
        return "embedded defaults"

    def secrets(self) -> list[str]:
        """Every value :meth:`as_dict` masks, for the log redactor."""
        return secrets_in(self._data)

    def as_dict(self, *, masked: bool = True) -> dict[str, Any]:
        data = copy.deepcopy(dict(self._data))
        return mask(data) if masked else data

    def with_overrides(self, overrides: Mapping[str, Any], origin: str) -> Settings:
        """A copy with dotted keys replaced (used by tests and by command-line flags)."""
        data = copy.deepcopy(dict(self._data))
        sources = dict(self._sources)
        for dotted, value in overrides.items():
            dotted_set(data, dotted, value)
            sources[dotted] = origin
        copied = Settings(data, sources, specs=self.specs, unknown=self.unknown,
                          shape_problems=self.shape_problems)
        copied.inactive_plugins = self.inactive_plugins
        return copied


def mask(node: Any, secret: bool = False) -> Any:
    """``node`` with every value under a secret-bearing key replaced by the mask (the elements
    of a list under such a key too). A mapping is never masked whole: its own keys decide, so the
    ``auth`` section (settings, not a credential) stays readable."""
    if isinstance(node, dict):
        return {key: mask(value, looks_secret(key)) for key, value in node.items()}
    if isinstance(node, list):
        return [mask(v, secret) for v in node]
    # a boolean is never a secret (https_proxy_reject_unauthorized names "auth", holds a switch)
    return MASK if secret and node not in (None, "") and not isinstance(node, bool) else node


def dotted_set(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def secrets_in(node: Any) -> list[str]:
    """Every string :func:`mask` would hide, for the log redactor."""
    found: list[str] = []
    stack: list[tuple[Any, bool]] = [(node, False)]
    while stack:
        value, secret = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, looks_secret(k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, secret) for v in value)
        elif secret and isinstance(value, str):
            found.append(value)
    return found
