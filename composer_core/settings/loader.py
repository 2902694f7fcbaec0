"""Reading and merging the settings layers: plain data, one pass, nothing read but what is given.

Layers, later wins:

1. the embedded defaults (``default_settings.yaml``: the core's keys);
2. the defaults of each active plugin's :class:`~composer_core.settings.spec.SettingsSpec`;
3. ``config/default.yaml`` then ``config/${COMPOSER_ENV:-production}.yaml`` in the working
   directory, when present (as XTM Composer reads them);
4. files given with ``--config FILE`` (repeatable), else those listed in ``XTM_COMPOSER_CONFIG``;
5. environment variables in XTM Composer's form: sections joined with ``__`` and no prefix
   (``OPENCTI__DAEMON__DOCKER__REGISTRY__URL``), read from the ``environ`` given and nothing else;
6. command-line flags (``--runtime``, ``--log-level``).

Mappings merge key by key; scalars and lists replace; an empty section (``manager:`` or
``manager: {}``) changes nothing. Each leaf remembers the layer it came from. No value is ever
interpreted beyond its YAML or environment type: ``@int``, ``@format {env[...]}`` or ``@jinja`` are
text like any other (the loader does not use dynaconf: see docs/settings.md).
"""

from __future__ import annotations

import copy
import difflib
import functools
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from composer_core import redact
from composer_core.errors import SettingsError
from composer_core.files import LIMIT_SETTINGS
from composer_core.settings.model import SECTIONS, Settings, UnknownKey, describe
from composer_core.settings.registry import LIST, MASTER, SINGLE
from composer_core.settings.spec import SettingsSpec
from composer_core.yamlfile import MAX_DEPTH, YamlFileError, parse_yaml, printable_key, read_yaml

log = logging.getLogger("xtm_composer.settings")

#: leaves that are always text: never typed from an environment variable (a password "0x1F")
STRING_KEYS = frozenset({"password", "token", "secret", "auth", "identitytoken", "identity_token",
                         "credentials_key", "api_key", "username", "url", "server",
                         "password_file", "email", "endpoint", "id", "name"})
#: mappings whose keys are data (registry names with dots), replaced whole like a list
OPAQUE = frozenset({"opencti.daemon.docker.mirrors"})
#: core keys whose content the core's validation checks whole (the registry block: an unknown key
#: inside an entry is an error there, not a warning here)
CORE_OWNS = (SINGLE, LIST, MASTER)
#: how many unknown keys are logged one by one at start (``config check`` lists them all)
_LOGGED_UNKNOWN = 20

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?"
                    r"|inf|nan|infinity)", re.IGNORECASE)


@dataclass(frozen=True)
class Layer:
    origin: str
    data: Mapping[str, Any]
    #: a finer origin per dotted key (the environment variable that set it)
    origins: Mapping[str, str] | None = None
    #: a layer of defaults: its keys are known by definition
    defaults: bool = False


@functools.cache
def _embedded() -> dict[str, Any]:
    text = resources.files("composer_core.settings").joinpath("default_settings.yaml")
    data = parse_yaml(text.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def embedded_defaults() -> dict[str, Any]:
    """The core's defaults (a copy: callers may change it)."""
    return copy.deepcopy(_embedded())


def _file_layer(path: Path, origin: str) -> Layer:
    try:
        data = read_yaml(path, limit=LIMIT_SETTINGS, what="settings file")
    except YamlFileError as exc:
        if exc.missing:
            raise SettingsError(f"settings file: cannot read {path}: No such file or directory",
                                hint="check the path given with --config or XTM_COMPOSER_CONFIG") from None
        if exc.unreadable:
            # the reader's reason is a sentence naming the file ("settings file X is a FIFO...")
            raise SettingsError(exc.reason,
                                hint="check the path given with --config or XTM_COMPOSER_CONFIG") from None
        raise SettingsError(f"settings file {path} is {exc.reason}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SettingsError(f"settings file {path} must hold a mapping at the top level, "
                            f"found {type(data).__name__}")
    return Layer(origin, data)


def env_value(name: str, raw: str) -> Any:
    """The typed value of environment variable ``name``: ``true``/``false``, a number, JSON (or
    YAML flow) for a list or mapping, else the text as written. Never a dynaconf directive."""
    key = name.rsplit("__", 1)[-1].lower()
    if key in STRING_KEYS:
        return raw  # a password "12345678" or '"quoted"' is sent exactly as written
    text = raw.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if text[:1] in ("[", "{"):
        try:
            return parse_yaml(text)
        except YamlFileError as exc:
            # the reason names a position, never the content: the value may hold a password
            raise SettingsError(f"environment variable {name}: its value is {exc.reason}",
                                hint='write JSON, such as ["a", "b"] or [{"url": "reg.io:5000", '
                                     '"username": "u", "password": "p"}]') from None
    return raw


def _env_layer(environ: Mapping[str, str]) -> Layer:
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name, raw in sorted(environ.items()):
        names = name.split("__")
        if len(names) < 2 or names[0].lower() not in SECTIONS or not all(names):
            continue
        dotted = ".".join(p.lower() for p in names)
        node = data
        for part in dotted.split(".")[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[dotted.rsplit(".", 1)[-1]] = env_value(name, raw)
        origins[dotted] = f"environment variable {name}"
        parts = dotted.split(".")
        for i in range(1, len(parts)):  # a section the variable creates is named by it too
            origins.setdefault(".".join(parts[:i]), f"environment variable {name}")
    return Layer("environment", data, origins)


def config_files_from_env(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("XTM_COMPOSER_CONFIG", "")
    return [p for p in raw.replace(",", os.pathsep).split(os.pathsep) if p.strip()]


def _origin_of(layer: Layer, dotted: str) -> str:
    if layer.origins:
        parts = dotted.split(".")
        while parts:
            found = layer.origins.get(".".join(parts))
            if found:
                return found
            parts.pop()
    return layer.origin


def _plain(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` with lower-case mapping keys (keys are case-insensitive)."""
    if depth > MAX_DEPTH:
        raise SettingsError(f"a settings value is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, Mapping):
        return {str(k).lower(): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    return value


class _Merge:
    """Merges layers into one tree in a single pass over each (linear in the keys written)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.shape_problems: list[tuple[str, str]] = []
        self.data_after_defaults: dict[str, Any] = {}

    def layer(self, layer: Layer) -> None:
        self._into(self.data, layer.data, layer, "", 0)

    def _into(self, base: dict[str, Any], data: Mapping[str, Any], layer: Layer, prefix: str,
              depth: int) -> None:
        if depth > MAX_DEPTH:
            raise SettingsError(f"{layer.origin}: settings nested more than {MAX_DEPTH} levels deep")
        for raw_key, value in data.items():
            key = str(raw_key).lower()
            dotted = prefix + key
            current = base.get(key)
            if value is None and isinstance(current, dict):
                continue  # `manager:` with its children commented out: no change
            if dotted in OPAQUE:
                base[key] = _plain(value, depth)
                self.sources[dotted] = _origin_of(layer, dotted)
            elif isinstance(value, Mapping):
                if isinstance(current, dict):
                    self._into(current, value, layer, dotted + ".", depth + 1)
                elif key not in base or current is None:
                    child: dict[str, Any] = {}
                    base[key] = child
                    self.sources.setdefault(dotted, _origin_of(layer, dotted))
                    self._into(child, value, layer, dotted + ".", depth + 1)
                else:
                    base[key] = _plain(value, depth)
                    self.sources[dotted] = _origin_of(layer, dotted)
            elif isinstance(current, dict) and (current or not layer.defaults):
                # a section given as a scalar: refused, the defaults under it are kept
                self.sources[dotted] = _origin_of(layer, dotted)
                self.shape_problems.append((dotted, f"must be a mapping (a section of settings), "
                                                    f"not {describe(value)}"))
            else:
                base[key] = _plain(value, depth)
                self.sources[dotted] = _origin_of(layer, dotted)


# --- which keys exist ------------------------------------------------------------------------

#: a known key whose content its owner checks (a leaf, a list, an owned key)
_TERMINAL: Mapping[str, Any] = MappingProxyType({})


def _schema(defaults: Iterable[Mapping[str, Any]], owned: Iterable[str]) -> dict[str, Any]:
    """The tree of known keys: the sections of the defaults, down to their terminal keys."""
    schema: dict[str, Any] = {}

    def add(node: dict[str, Any], data: Mapping[str, Any], prefix: str) -> None:
        for key, value in data.items():
            dotted = prefix + key
            if isinstance(value, Mapping) and value and dotted not in OPAQUE:
                child = node.setdefault(key, {})
                if child is not _TERMINAL:
                    add(child, value, dotted + ".")
            else:
                node.setdefault(key, _TERMINAL)

    for data in defaults:
        add(schema, data, "")
    for dotted in owned:
        node = schema
        parts = dotted.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is _TERMINAL:
                break
            node = node.setdefault(part, {})
        else:
            node[parts[-1]] = _TERMINAL
    return schema


def _shape(value: Any) -> type:
    return dict if isinstance(value, Mapping) else list if isinstance(value, list) else object


def _nearest(key: str, value: Any, known: Mapping[str, Any], defaults: Any) -> str | None:
    """The known sibling ``key`` was most likely meant to be: the closest spelling, preferring
    one of the same shape (``registri: {url: ...}`` means ``registry``, not ``registries``)."""
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    if not close:
        return None
    siblings = defaults if isinstance(defaults, Mapping) else {}
    same = [c for c in close if c in siblings and _shape(siblings[c]) is _shape(value)]
    return (same or close)[0]


def _unknown_keys(layers: Iterable[Layer], schema: Mapping[str, Any],
                  defaults: Mapping[str, Any]) -> list[UnknownKey]:
    found: dict[str, UnknownKey] = {}
    for layer in layers:
        if layer.defaults:
            continue
        stack: list[tuple[Mapping[str, Any], Mapping[str, Any], Any, str]] = [
            (layer.data, schema, defaults, "")]
        while stack:
            data, known, dflt, prefix = stack.pop()
            for raw_key, value in data.items():
                key = str(raw_key).lower()
                dotted = prefix + key
                node = known.get(key)
                if node is None:
                    shown = prefix + printable_key(key)
                    if shown not in found:
                        near = _nearest(key, value, known, dflt)
                        found[shown] = UnknownKey(shown, _origin_of(layer, dotted),
                                                  prefix + near if near else None)
                elif node is not _TERMINAL and isinstance(value, Mapping):
                    child = dflt.get(key) if isinstance(dflt, Mapping) else None
                    stack.append((value, node, child, dotted + "."))
    return sorted(found.values(), key=lambda u: u.key)


# --- the two steps of loading ----------------------------------------------------------------


@dataclass
class SettingsSource:
    """Every layer given by the user, read once. :meth:`core` merges them over the embedded
    defaults alone (enough to know which plugins to load); :meth:`settings` adds the defaults of
    the plugins' specs and validates."""

    layers: list[Layer]
    embedded: dict[str, Any] = field(default_factory=embedded_defaults)

    def core(self) -> Settings:
        return self._merge(())

    def settings(self, specs: Iterable[SettingsSpec] = (), *, validate: bool = True,
                 inactive: Iterable[str] = (), warn: bool = True) -> Settings:
        """``inactive``: the installed plugins that are disabled or failed (their keys are then
        reported as unused by ``config check`` rather than warned about at every start).
        ``warn=False``: the caller logs the unknown keys itself (:func:`warn_unknown`), once
        logging is configured."""
        settings = self._merge(_usable(specs))
        settings.inactive_plugins = tuple(sorted(inactive))
        redact.register(*settings.secrets())
        if validate:
            from composer_core.settings.validate import validate_settings

            validate_settings(settings)
        if warn:
            warn_unknown(settings)
        return settings

    def _merge(self, specs: Sequence[SettingsSpec]) -> Settings:
        merge = _Merge()
        base = [Layer("embedded defaults", self.embedded, defaults=True)]
        base += [Layer(f"defaults of plugin {s.name!r}", s.defaults, defaults=True) for s in specs]
        for layer in base:
            merge.layer(layer)
        merge.data_after_defaults = copy.deepcopy(merge.data)
        for layer in self.layers:
            merge.layer(layer)
        defaults = merge.data_after_defaults
        data = {section: merge.data.get(section) or {} for section in SECTIONS}
        schema = _schema([self.embedded, *(s.defaults for s in specs)],
                         [*CORE_OWNS, *(key for s in specs for key in s.owns)])
        return Settings(data, merge.sources, specs=specs,
                        unknown=_unknown_keys(self.layers, schema, defaults),
                        shape_problems=merge.shape_problems)


def _usable(specs: Iterable[SettingsSpec]) -> tuple[SettingsSpec, ...]:
    """Specs in name order; one owning a core key or another plugin's key is left out, loudly
    (a third-party plugin must not be able to take over ``manager.id``)."""
    core = _schema([embedded_defaults()], CORE_OWNS)
    kept: list[SettingsSpec] = []
    for spec in sorted(specs, key=lambda s: s.name):
        clash = next((f"core setting {key}" for key in spec.owns if _in_schema(core, key)), None)
        if clash is None:
            clash = next((f"{key} of plugin {other.name!r}" for other in kept for key in spec.owns
                          if other.owns_key(key) or any(spec.owns_key(k) for k in other.owns)),
                         None)
        if clash is not None:
            log.warning("settings of plugin %r ignored: it claims %s", spec.name, clash)
            continue
        kept.append(spec)
    return tuple(kept)


def _in_schema(schema: Mapping[str, Any], dotted: str) -> bool:
    node: Any = schema
    for part in dotted.split("."):
        if node is _TERMINAL:
            return True
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def warn_unknown(settings: Settings) -> None:
    """Log a warning for each unknown key (a typo, with the nearest known key)."""
    # Keys of a disabled plugin are unknown too: said only by `config check` (as unused), unless
    # they look like a typo of a known key.
    shown = [u for u in settings.unknown if u.suggestion is not None or not settings.inactive_plugins]
    for unknown in shown[:_LOGGED_UNKNOWN]:
        log.warning("settings: %s", unknown.message())
    if len(shown) > _LOGGED_UNKNOWN:
        log.warning("settings: %d more unknown keys; `xtm-composer config check` lists them",
                    len(shown) - _LOGGED_UNKNOWN)


def read_layers(config_files: Sequence[str | os.PathLike[str]] = (), *,
                environ: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> SettingsSource:
    """Read every user layer (files, the ``environ`` given, command-line overrides) once."""
    environ = os.environ if environ is None else environ
    base = Path(cwd) if cwd is not None else Path.cwd()
    layers: list[Layer] = []
    env_name = environ.get("COMPOSER_ENV", "production") or "production"
    for rel in ("config/default.yaml", f"config/{env_name}.yaml"):
        if (base / rel).is_file():
            layers.append(_file_layer(base / rel, rel))
    files = [str(f) for f in config_files] or config_files_from_env(environ)
    for file in files:
        path = Path(file)
        layers.append(_file_layer(path if path.is_absolute() else base / path, f"file {file}"))
    layers.append(_env_layer(environ))
    if overrides:
        flat: dict[str, Any] = {}
        for dotted, value in overrides.items():
            node = flat
            parts = dotted.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        layers.append(Layer("command line", flat))
    return SettingsSource(layers)


def load_settings(config_files: Sequence[str | os.PathLike[str]] = (), *,
                  environ: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
                  overrides: Mapping[str, Any] | None = None, validate: bool = True,
                  specs: Iterable[SettingsSpec] | None = None,
                  entry_point_filter: Callable[[Any], bool] | None = None) -> Settings:
    """Merge every layer into a :class:`Settings`, then validate it (raising :class:`SettingsError`).

    ``environ`` is the only environment read (default: the process's). ``specs`` are the plugins'
    settings specs; by default those of the plugins these settings enable (among the entry points
    ``entry_point_filter`` keeps, when given).
    """
    source = read_layers(config_files, environ=environ, cwd=cwd, overrides=overrides)
    inactive: Iterable[str] = ()
    if specs is None:
        from composer_core.pluginmanager import Plugins
        from composer_core.settings.validate import name_list

        env = os.environ if environ is None else environ
        disabled = name_list(source.core(), "plugins.disabled") + [
            n.strip() for n in env.get("XTM_COMPOSER_DISABLE_PLUGINS", "").split(",") if n.strip()]
        plugins = Plugins(disabled=disabled, entry_point_filter=entry_point_filter)
        specs, inactive = plugins.settings_specs().values(), plugins.inactive_names()
    return source.settings(specs, validate=validate, inactive=inactive)
