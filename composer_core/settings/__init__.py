"""Settings: layered with dynaconf, validated with errors that name the key and its origin.

Layers, later wins:

1. the embedded defaults (``default_settings.yaml``, shipped inside the package);
2. ``config/default.yaml`` then ``config/${COMPOSER_ENV:-production}.yaml`` in the working
   directory, when present (as XTM Composer reads them);
3. files given with ``--config FILE`` (repeatable), else those listed in ``XTM_COMPOSER_CONFIG``
   (separated by ``,`` or ``:``);
4. environment variables in XTM Composer's form: sections joined with ``__`` and no prefix
   (``OPENCTI__DAEMON__DOCKER__REGISTRY__URL``, ``MANAGER__LOGGER__LEVEL``);
5. command-line flags (``--runtime``, ``--log-level``).

Mappings merge key by key; scalars and lists replace. Each leaf remembers the layer it came from.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from composer_core import redact
from composer_core.auth.registries import InvalidKey, parse_key
from composer_core.errors import SettingsError
from composer_core.redact import MASK
from composer_core.yamlfile import YamlFileError, read_yaml

SECTIONS = ("manager", "opencti", "auth", "images", "plugins")
SECRET_KEYS = frozenset({"password", "token", "secret", "auth", "identitytoken",
                         "identity_token", "credentials_key", "api_key"})
#: leaves that are always text: never typed from an environment variable (a password "0x1F")
STRING_KEYS = SECRET_KEYS | {"username", "url", "password_file", "email", "endpoint", "id", "name"}
LOG_LEVELS = ("debug", "info", "warning", "warn", "error", "critical")


class Settings:
    """The merged settings: read-only, dotted-key access, and where each value came from."""

    def __init__(self, data: Mapping[str, Any], sources: Mapping[str, str]) -> None:
        self._data = data
        self._sources = dict(sources)

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

    def as_dict(self, *, masked: bool = True) -> dict[str, Any]:
        data = copy.deepcopy(dict(self._data))
        return _mask(data) if masked else data

    def with_overrides(self, overrides: Mapping[str, Any], origin: str) -> Settings:
        """A copy with dotted keys replaced (used by tests and by command-line flags)."""
        data = copy.deepcopy(dict(self._data))
        sources = dict(self._sources)
        for dotted, value in overrides.items():
            _dotted_set(data, dotted, value)
            sources[dotted] = origin
        return Settings(data, sources)


def _mask(node: Any) -> Any:
    if isinstance(node, dict):
        # only values are masked: the `auth` section of the settings is a mapping, not a secret
        return {k: (MASK if k.lower() in SECRET_KEYS and v not in (None, "")
                    and not isinstance(v, (dict, list)) else _mask(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_mask(v) for v in node]
    return node


def _dotted_set(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


@dataclass(frozen=True)
class Layer:
    origin: str
    data: Mapping[str, Any]
    #: a finer origin per dotted key (the environment variable that set it)
    origins: Mapping[str, str] | None = None


#: mappings whose keys are data (registry names with dots), replaced whole like a list
OPAQUE = frozenset({"opencti.daemon.docker.mirrors"})


def _leaves(data: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in data.items():
        dotted = f"{prefix}{str(key).lower()}"
        if isinstance(value, Mapping) and value and dotted not in OPAQUE:
            yield from _leaves(value, dotted + ".")
        else:
            yield dotted, value


def _read_yaml(path: Path, origin: str) -> Layer:
    try:
        data = read_yaml(path)
    except YamlFileError as exc:
        if exc.unreadable:
            raise SettingsError(f"settings file: {exc.reason}",
                                hint="check the path given with --config or XTM_COMPOSER_CONFIG") from None
        raise SettingsError(f"settings file {path} is {exc.reason}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SettingsError(f"settings file {path} must hold a mapping at the top level, "
                            f"found {type(data).__name__}")
    return Layer(origin, data)


def _env_layer(environ: Mapping[str, str]) -> Layer:
    from dynaconf.utils.parse_conf import parse_conf_data

    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name, raw in sorted(environ.items()):
        parts = name.split("__")
        if len(parts) < 2 or parts[0].lower() not in SECTIONS or not all(parts):
            continue
        dotted = ".".join(p.lower() for p in parts)
        if parts[-1].lower() in STRING_KEYS:
            value: Any = raw  # a password "12345678" or '"quoted"' is sent exactly as written
        else:
            # "true" -> True, "10" -> 10, '["a","b"]' -> list, like dynaconf's own env loader
            try:
                value = parse_conf_data(raw, tomlfy=True)
            except Exception:  # noqa: BLE001 - dynaconf raises several types; the value may be secret
                raise SettingsError(f"environment variable {name}: its value cannot be parsed",
                                    hint="write a plain value: text, a number, true/false, or a "
                                         "list such as [\"a\", \"b\"]") from None
        _dotted_set(data, dotted, value)
        origins[dotted] = f"environment variable {name}"
    return Layer("environment", data, origins)


def config_files_from_env(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("XTM_COMPOSER_CONFIG", "")
    return [p for p in raw.replace(",", os.pathsep).split(os.pathsep) if p.strip()]


def load_settings(config_files: Sequence[str | os.PathLike[str]] = (), *,
                  environ: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
                  overrides: Mapping[str, Any] | None = None, validate: bool = True) -> Settings:
    """Merge every layer into a :class:`Settings`, then validate it (raising :class:`SettingsError`)."""
    from dynaconf import Dynaconf

    environ = os.environ if environ is None else environ
    base = Path(cwd) if cwd is not None else Path.cwd()
    embedded = resources.files("composer_core.settings").joinpath("default_settings.yaml")
    layers = [Layer("embedded defaults", yaml.safe_load(embedded.read_text(encoding="utf-8")))]
    env_name = environ.get("COMPOSER_ENV", "production") or "production"
    for rel in ("config/default.yaml", f"config/{env_name}.yaml"):
        if (base / rel).is_file():
            layers.append(_read_yaml(base / rel, rel))
    files = [str(f) for f in config_files] or config_files_from_env(environ)
    for file in files:
        path = Path(file)
        layers.append(_read_yaml(path if path.is_absolute() else base / path, f"file {file}"))
    layers.append(_env_layer(environ))
    if overrides:
        flat: dict[str, Any] = {}
        for dotted, value in overrides.items():
            _dotted_set(flat, dotted, value)
        layers.append(Layer("command line", flat))

    # dynaconf is the store: dotted sets merge mappings key by key and replace lists whole
    # (its default list merge would append a user's auth.chain to ours).
    store = Dynaconf(environments=False, load_dotenv=False, envvar_prefix="XTM_COMPOSER_SETTINGS",
                     settings_files=[], merge_enabled=False)
    sources: dict[str, str] = {}
    for layer in layers:
        for dotted, value in _leaves(layer.data):
            if isinstance(value, Mapping):
                # an empty or opaque mapping replaces the previous one whole, like a scalar:
                # cleared first, because dynaconf merges a mapping into an existing one
                store.set(dotted, {})
                if value:
                    store.set(dotted, _literal(dict(value)))
            else:
                store.set(dotted, _literal(value))
            _forget_children(sources, dotted)
            sources[dotted] = _origin_of(layer, dotted)
    data = {section: _plain(store.get(section)) for section in SECTIONS}
    settings = Settings(data, sources)
    _register_secrets(data)
    if validate:
        validate_settings(settings)
    return settings


class _Verbatim:
    """A string on its way through dynaconf's store, which would otherwise read ``@int``,
    ``@format``, ``@jinja``... at its start as directives (and parses each value more than
    once): a password that happens to start with ``@`` is a password."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _literal(value: Any) -> Any:
    if isinstance(value, str):
        return _Verbatim(value)
    if isinstance(value, list):
        return [_literal(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _literal(v) for k, v in value.items()}
    return value


def _origin_of(layer: Layer, dotted: str) -> str:
    if layer.origins:
        parts = dotted.split(".")
        while parts:
            found = layer.origins.get(".".join(parts))
            if found:
                return found
            parts.pop()
    return layer.origin


def _forget_children(sources: dict[str, str], dotted: str) -> None:
    prefix = dotted + "."
    for key in [k for k in sources if k.startswith(prefix)]:
        del sources[key]


def _plain(value: Any) -> Any:
    if isinstance(value, _Verbatim):
        return value.text
    if isinstance(value, Mapping):
        return {str(k).lower(): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _register_secrets(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in SECRET_KEYS and isinstance(value, str):
                redact.register(value)
            else:
                _register_secrets(value)
    elif isinstance(node, list):
        for value in node:
            _register_secrets(value)


# --- validation ------------------------------------------------------------------------------


class _Problems:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.items: list[str] = []

    def add(self, dotted: str, message: str) -> None:
        self.items.append(f"{dotted} (from {self.settings.source(dotted)}): {message}")


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def validate_settings(settings: Settings, *, providers: Iterable[str] | None = None,
                      resolvers: Iterable[str] | None = None,
                      runtimes: Iterable[str] | None = None) -> None:
    """Raise one :class:`SettingsError` listing every problem; silent when all is well.

    The optional name lists check ``auth.chain``, ``images.resolvers`` and the selector against
    the installed plugins (``config check`` passes them).
    """
    p = _Problems(settings)
    s = settings

    def expect(dotted: str, kinds: tuple[type, ...], what: str, *, optional: bool = False) -> Any:
        value = s.get(dotted)
        if value is None:
            if not optional:
                p.add(dotted, f"must be {what}")
            return None
        if isinstance(value, bool) and bool not in kinds:
            p.add(dotted, f"must be {what}, not {_type_name(value)} ({value!r})")
            return None
        if not isinstance(value, kinds):
            p.add(dotted, f"must be {what}, not {_type_name(value)} ({value!r})")
            return None
        return value

    manager_id = expect("manager.id", (str,), "a non-empty string")
    if manager_id is not None and not manager_id.strip():
        p.add("manager.id", "must not be empty")
    level = expect("manager.logger.level", (str,), "a log level")
    if level is not None and level.lower() not in LOG_LEVELS:
        p.add("manager.logger.level", f"unknown level {level!r}; use one of debug, info, "
                                      "warning, error")
    fmt = expect("manager.logger.format", (str,), "text or json")
    if fmt is not None and fmt.lower() not in ("text", "json"):
        p.add("manager.logger.format", f"unknown format {fmt!r}; use text or json")
    for key in ("manager.execute_schedule", "auth.helper_timeout"):
        value = expect(key, (int, float), "a positive number of seconds")
        if value is not None and (not math.isfinite(value) or value <= 0):
            p.add(key, f"must be a finite number greater than 0, not {value!r}")
    for key in ("auth.cache_ttl", "auth.cache_miss_ttl"):
        value = expect(key, (int, float), "a number of seconds (0 disables the cache)")
        if value is not None and (not math.isfinite(value) or value < 0):
            p.add(key, f"must be a finite number, not negative, not {value!r}")
    parallel = expect("manager.max_parallel", (int,), "a whole number of at least 1")
    if parallel is not None and parallel < 1:
        p.add("manager.max_parallel", f"must be at least 1, not {parallel!r}")
    for key in ("auth.strict_helpers", "plugins.strict", "opencti.daemon.podman.loopback_insecure"):
        expect(key, (bool,), "true or false")

    selector = expect("opencti.daemon.selector", (str,), "auto, docker or podman")
    # Without the installed runtimes (at load time, before plugins are loaded) any name may be a
    # third-party backend: connecting to it then fails with the available names.
    if selector is not None and runtimes is not None:
        known = ["auto", *sorted(runtimes)]
        if selector not in known:
            p.add("opencti.daemon.selector",
                  f"unknown selector {selector!r}; use one of {', '.join(known)}")
    for key in ("opencti.daemon.docker.endpoint", "opencti.daemon.podman.endpoint"):
        expect(key, (str,), "an endpoint such as unix:///run/docker.sock", optional=True)

    _validate_registry(p, "opencti.daemon.docker.registry", s.get("opencti.daemon.docker.registry"),
                       url_required=False)
    registries = expect("opencti.daemon.docker.registries", (list,), "a list of registries")
    for i, entry in enumerate(registries or []):
        _validate_registry(p, f"opencti.daemon.docker.registries[{i}]", entry, url_required=True)
    mirrors = expect("opencti.daemon.docker.mirrors", (dict,), "a mapping of registry to mirror")
    for source, target in (mirrors or {}).items():
        try:
            parse_key(str(source))
        except InvalidKey as exc:
            p.add(f"opencti.daemon.docker.mirrors.{source}", f"invalid rule: {exc}; a rule is a "
                  "registry, optionally with a path, such as docker.io or quay.io/team")
        if not isinstance(target, str) or not target.strip():
            p.add(f"opencti.daemon.docker.mirrors.{source}", "must be a mirror such as "
                  "mirror.company.com/dockerhub")

    for key, names, label in (("auth.chain", providers, "credential providers"),
                              ("images.resolvers", resolvers, "image resolvers"),
                              ("plugins.disabled", None, "")):
        value = _as_name_list(s.get(key))
        if value is None:
            p.add(key, f"must be a list of names, not {_type_name(s.get(key))}")
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

    if p.items:
        lines = "\n  ".join(p.items)
        raise SettingsError(f"invalid settings:\n  {lines}",
                            hint="fix these keys; `xtm-composer config show` prints the merged "
                                 "settings and `config check` validates them")


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


def _validate_registry(p: _Problems, prefix: str, entry: Any, *, url_required: bool) -> None:
    from composer_core.images.reference import InvalidRegistryURL, normalize_registry_url

    if entry is None:
        return
    if not isinstance(entry, Mapping):
        p.add(prefix, f"must be a mapping with url, username, password; not {_type_name(entry)}")
        return
    url = entry.get("url")
    if url in (None, ""):
        if url_required:
            p.add(f"{prefix}.url", "is required")
    elif not isinstance(url, str):
        p.add(f"{prefix}.url", f"must be a string, not {_type_name(url)}")
    else:
        try:
            normalize_registry_url(url)
        except InvalidRegistryURL as exc:
            p.add(f"{prefix}.url", str(exc))
    for key in ("username", "password", "password_file", "email"):
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            # never echo a password back, even a mistyped one
            shown = "" if key == "password" else f" ({value!r})"
            p.add(f"{prefix}.{key}", f"must be a string, not {_type_name(value)}{shown}")
    insecure = entry.get("insecure")
    if insecure is not None and not isinstance(insecure, bool):
        p.add(f"{prefix}.insecure", f"must be true or false, not {insecure!r}")
    has_user = bool(entry.get("username"))
    has_secret = bool(entry.get("password")) or bool(entry.get("password_file"))
    if entry.get("password") and entry.get("password_file"):
        p.add(f"{prefix}.password_file", "set either password or password_file, not both")
    # each problem is reported on the key that *is* set, so that its origin can be named
    secret_key = f"{prefix}.password" if entry.get("password") else f"{prefix}.password_file"
    if has_user and not has_secret:
        p.add(f"{prefix}.username", "username is set but password (or password_file) is not")
    elif has_secret and not has_user:
        p.add(secret_key, "password is set but username is not")
    if (has_user or has_secret) and not url and url_required is False:
        p.add(f"{prefix}.username" if has_user else secret_key,
              "credentials are set but url is not: they would have no registry to belong to")
