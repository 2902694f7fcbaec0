"""The plugin manager: loads the ``xtm_composer`` entry points and is the one facade over pluggy.

Application code asks :meth:`Plugins.credential_providers`, :meth:`Plugins.runtime`... and never calls
``pm.hook.*`` itself. Built-in plugins are entry points of our own distribution and go through
exactly the same path as third-party ones.

Loading is lazy (on the first question) and isolated per entry point: a plugin that fails to import,
fails validation or raises from a hook is recorded as ``failed`` with its reason, warned about once
with its name and distribution, and every other plugin keeps working. ``strict`` turns such a failure
into a :class:`~composer_core.errors.PluginError`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import importlib_metadata
import pluggy

from composer_core import hookspecs
from composer_core.errors import PluginError
from composer_core.settings.spec import SettingsSpec
from composer_core.types import CredentialProvider, ImageResolver, RuntimeBackend, as_list

GROUP = "xtm_composer"
log = logging.getLogger("xtm_composer.plugins")

Status = Literal["active", "disabled", "failed"]
R = TypeVar("R", ImageResolver, CredentialProvider, RuntimeBackend, SettingsSpec)


@dataclass
class PluginRecord:
    """What ``xtm-composer plugins`` shows of one plugin."""

    name: str
    distribution: str
    version: str
    module: str
    status: Status = "active"
    reason: str | None = None
    hooks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "distribution": self.distribution, "version": self.version,
                "module": self.module, "status": self.status, "reason": self.reason,
                "hooks": list(self.hooks)}


EntryPointFilter = Callable[[importlib_metadata.EntryPoint], bool]


class Plugins:
    """A fresh pluggy manager with the composer hookspecs, and the typed questions asked of it."""

    def __init__(self, *, disabled: Iterable[str] = (), strict: bool = False,
                 entry_point_filter: EntryPointFilter | None = None,
                 load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.disabled = {name.strip() for name in disabled if name and name.strip()}
        self.strict = strict
        self._filter = entry_point_filter
        self._load_entry_points = load_entry_points
        self._loaded = False
        self._records: dict[str, PluginRecord] = {}
        self._cache: dict[str, dict[str, Any]] = {}
        self._inactive: frozenset[str] | None = None
        # the deploy flow asks from worker threads: loading and collecting happen once, under a lock
        self._lock = threading.RLock()

    # --- loading ---------------------------------------------------------------------------

    def load(self) -> None:
        """Load every entry point once. Safe to call again, from any thread."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            if self._load_entry_points:
                for ep in self._entry_points():
                    self._load_one(ep)
            self._check_pending()

    def _entry_points(self) -> list[importlib_metadata.EntryPoint]:
        eps = importlib_metadata.entry_points(group=GROUP)
        seen: dict[str, importlib_metadata.EntryPoint] = {}
        for ep in eps:
            if self._filter is not None and not self._filter(ep):
                continue
            if ep.name in seen and _dist_name(seen[ep.name]) != _dist_name(ep):
                raise PluginError(
                    f"two distributions register a plugin named {ep.name!r}: "
                    f"{_dist_label(seen[ep.name])} and {_dist_label(ep)}",
                    hint="uninstall one of them, or disable one by name with plugins.disabled",
                )
            seen.setdefault(ep.name, ep)
        return sorted(seen.values(), key=lambda e: e.name)

    def _load_one(self, ep: importlib_metadata.EntryPoint) -> None:
        record = PluginRecord(name=ep.name, distribution=_dist_name(ep),
                              version=_dist_version(ep), module=ep.value)
        self._records[ep.name] = record
        if ep.name in self.disabled:
            record.status = "disabled"
            record.reason = "disabled by settings (plugins.disabled / XTM_COMPOSER_DISABLE_PLUGINS)"
            self.pm.set_blocked(ep.name)
            return
        try:
            plugin = ep.load()
            self.pm.register(plugin, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - isolation is the point: any failure is recorded
            self._fail(record, f"{type(exc).__name__}: {exc}")
            return
        record.hooks = self._hooks_of(ep.name)

    def register(self, plugin: object, name: str, *, distribution: str = "(registered in code)",
                 version: str = "") -> None:
        """Register a plugin object directly (tests, embedding applications)."""
        self.load()
        record = PluginRecord(name=name, distribution=distribution, version=version,
                              module=getattr(plugin, "__name__", type(plugin).__name__))
        self._records[name] = record
        self.pm.register(plugin, name=name)
        record.hooks = self._hooks_of(name)
        self._check_pending()
        self._cache.clear()
        self._inactive = None

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._records.pop(name, None)
        self._cache.clear()
        self._inactive = None

    def _hooks_of(self, name: str) -> list[str]:
        plugin = self.pm.get_plugin(name)
        callers = self.pm.get_hookcallers(plugin) or []
        return sorted(caller.name for caller in callers)

    def _check_pending(self) -> None:
        # A misspelled hook (`composer_credential_provider`) must fail loudly, not be ignored.
        while True:
            try:
                self.pm.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                name = self.pm.get_name(exc.plugin) or repr(exc.plugin)
                self.pm.unregister(exc.plugin)
                record = self._records.get(name)
                if record is None:
                    raise PluginError(f"plugin {name!r}: {exc}") from None
                self._fail(record, str(exc))

    def _fail(self, record: PluginRecord, reason: str) -> None:
        self._inactive = None
        record.status = "failed"
        record.reason = reason
        record.hooks = []
        if self.pm.get_plugin(record.name) is not None:
            self.pm.unregister(name=record.name)
        if self.strict:
            raise PluginError(
                f"plugin {record.name!r} from {record.distribution} failed: {reason}",
                hint="fix or uninstall the plugin, or unset XTM_COMPOSER_STRICT_PLUGINS",
            )
        log.warning("plugin %r from %s failed and is not used: %s",
                    record.name, record.distribution, reason)

    # --- questions ---------------------------------------------------------------------------

    def records(self) -> list[PluginRecord]:
        self.load()
        return sorted(self._records.values(), key=lambda r: r.name)

    def inactive_names(self) -> frozenset[str]:
        """Plugins that are installed but disabled or failed (the chain skips them by name)."""
        self.load()
        if self._inactive is None:
            self._inactive = frozenset(r.name for r in self._records.values()
                                       if r.status != "active")
        return self._inactive

    def image_resolvers(self) -> dict[str, ImageResolver]:
        return self._named("composer_image_resolvers", ImageResolver, "image resolver")

    def credential_providers(self) -> dict[str, CredentialProvider]:
        return self._named("composer_credential_providers", CredentialProvider,
                           "credential provider")

    def settings_specs(self) -> dict[str, SettingsSpec]:
        """The settings specs of the active plugins (hook ``composer_settings``), by name."""
        return self._named("composer_settings", SettingsSpec, "settings spec")

    def runtime_backends(self) -> dict[str, RuntimeBackend]:
        return self._named("composer_runtime_backends", RuntimeBackend, "runtime backend")

    def runtime(self, name: str) -> RuntimeBackend:
        backends = self.runtime_backends()
        if name not in backends:
            raise PluginError(
                f"no runtime backend named {name!r}",
                hint=f"available: {', '.join(sorted(backends)) or 'none'}",
            )
        return backends[name]

    def register_commands(self, cli: Any) -> None:
        self.load()
        for impl in self.pm.hook.composer_register_commands.get_hookimpls():
            record = self._records.get(impl.plugin_name)
            try:
                impl.function(cli=cli)
            except Exception as exc:  # noqa: BLE001
                if record is None:
                    raise
                self._fail(record, f"composer_register_commands raised {type(exc).__name__}: {exc}")

    def _named(self, hook_name: str, kind: type[R], label: str) -> dict[str, R]:
        self.load()
        cached = self._cache.get(hook_name)
        if cached is not None:
            return cached
        with self._lock:
            return self._collect(hook_name, kind, label)

    def _collect(self, hook_name: str, kind: type[R], label: str) -> dict[str, R]:
        if hook_name in self._cache:
            return self._cache[hook_name]
        found: dict[str, R] = {}
        owner: dict[str, str] = {}
        # Called implementation by implementation so that every contribution is attributed to its
        # plugin: a broken one is isolated, and a duplicate name can name both distributions.
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            record = self._records.get(impl.plugin_name)
            try:
                items = as_list(impl.function())
                bad = [i for i in items if not isinstance(i, kind)]
                if bad:
                    raise TypeError(f"returned {type(bad[0]).__name__}, expected {kind.__name__}")
            except Exception as exc:  # noqa: BLE001
                if record is None:
                    raise
                self._fail(record, f"{hook_name} failed: {type(exc).__name__}: {exc}")
                continue
            for item in items:
                if item.name in found:
                    first = self._records.get(owner[item.name])
                    raise PluginError(
                        f"two plugins contribute a {label} named {item.name!r}: "
                        f"plugin {owner[item.name]!r} ({first.distribution if first else '?'}) and "
                        f"plugin {impl.plugin_name!r} ({record.distribution if record else '?'})",
                        hint="uninstall or disable (plugins.disabled) one of them",
                    )
                found[item.name] = item
                owner[item.name] = impl.plugin_name
        self._cache[hook_name] = found
        return found


def _dist_name(ep: importlib_metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "(unknown distribution)"


def _dist_version(ep: importlib_metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else ""


def _dist_label(ep: importlib_metadata.EntryPoint) -> str:
    version = _dist_version(ep)
    return f"{_dist_name(ep)} {version}".strip()
