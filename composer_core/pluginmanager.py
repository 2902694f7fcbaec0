"""The plugin manager: loads the ``xtm_composer`` entry points and is the one facade over pluggy.

Application code asks :meth:`Plugins.credential_providers`, :meth:`Plugins.runtime`... and never calls
``pm.hook.*`` itself. Built-in plugins are entry points of our own distribution and go through
exactly the same path as third-party ones.

Loading is lazy (on the first question), done once under a lock (the deploy flow asks from worker
threads) and isolated per entry point: a plugin that fails to import, fails validation, declares a
wrapper, raises from a hook, returns a record with a bad name or contributes a name another plugin
already contributes is recorded as ``failed`` with its reason, warned about once with its name and
distribution, and every other plugin keeps working. ``strict`` turns such a failure into a
:class:`~composer_core.errors.PluginError`.

Every hook is called here implementation by implementation, with only the arguments each one names
(as pluggy calls them), so that every contribution is attributed to its plugin. Plugins load in a
stable order (:func:`load_order`); of two plugins contributing the same name, the later one fails.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping, ValuesView
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import importlib_metadata
import pluggy

from composer_core import hookspecs, redact
from composer_core.errors import ComposerError, PluginError
from composer_core.records import (
    CredentialProvider,
    DesiredStateSource,
    ImageResolver,
    InvalidName,
    PluginCommand,
    Record,
    RuntimeBackend,
)
from composer_core.settings.spec import SettingsSpec
from composer_core.types import as_list

log = logging.getLogger("xtm_composer.plugins")

#: The distribution whose entry points are the built-ins; its plugins load first (:func:`load_order`).
OWN_DISTRIBUTION = "xtm-composer"
#: Deprecated for one release: commands now come from ``composer_commands``.
LEGACY_COMMANDS_HOOK = "composer_register_commands"

PluginStatus = Literal["active", "disabled", "failed"]
R = TypeVar("R", bound=Record)

#: The record hooks collected (and so checked) when the plugins load: a plugin with a bad record
#: or a clashing name shows as failed in ``xtm-composer plugins`` before anything uses it.
CONTRIBUTION_HOOKS: dict[str, tuple[type[Record], str]] = {
    "composer_image_resolvers": (ImageResolver, "image resolver"),
    "composer_credential_providers": (CredentialProvider, "credential provider"),
    "composer_runtime_backends": (RuntimeBackend, "runtime backend"),
    "composer_commands": (PluginCommand, "command"),
    "composer_settings": (SettingsSpec, "settings spec"),
    "composer_sources": (DesiredStateSource, "desired-state source"),
}


@dataclass
class PluginRecord:
    """What ``xtm-composer plugins`` shows of one plugin."""

    name: str
    distribution: str
    version: str
    module: str
    status: PluginStatus = "active"
    reason: str | None = None
    hooks: list[str] = field(default_factory=list)
    #: hook name -> the names this plugin contributes through it
    contributes: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "distribution": self.distribution, "version": self.version,
                "module": self.module, "status": self.status, "reason": self.reason,
                "hooks": list(self.hooks),
                "contributes": {hook: list(names) for hook, names in self.contributes.items()}}


class Contributions(Mapping[str, R], Generic[R]):
    """What one hook contributed, by name, each attributed to its plugin.

    Listing it (``in``, iteration, ``len``, ``values()``) shows every name once. Looking a name up
    (``[name]``, ``get``) raises :class:`PluginError` when two plugins contributed that name: the
    user named something ambiguous, and guessing could, for one, send credentials to the wrong
    provider.
    """

    def __init__(self, items: dict[str, R], owners: dict[str, str], clashes: dict[str, str]) -> None:
        self._items = items
        self._owners = owners
        self._clashes = clashes

    def __getitem__(self, name: str) -> R:
        if name in self._clashes:
            raise PluginError(self._clashes[name],
                              hint="uninstall one of the two distributions, or disable one of the "
                                   "plugins by name with plugins.disabled (see `xtm-composer "
                                   "plugins`)")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> ValuesView[R]:
        return self._items.values()

    def items(self) -> ItemsView[str, R]:
        return self._items.items()

    def owner(self, name: str) -> str:
        """The plugin that contributed ``name`` (the first one, when two did)."""
        return self._owners[name]

    def clashes(self) -> frozenset[str]:
        return frozenset(self._clashes)


EntryPointFilter = Callable[[importlib_metadata.EntryPoint], bool]


class Plugins:
    """A fresh pluggy manager with the composer hookspecs, and the typed questions asked of it."""

    def __init__(self, *, disabled: Iterable[str] = (), strict: bool = False,
                 entry_point_filter: EntryPointFilter | None = None,
                 load_entry_points: bool = True, reserved_commands: Iterable[str] = ()) -> None:
        self.disabled = {name.strip() for name in disabled if name and name.strip()}
        self.strict = strict
        #: names of the built-in commands: a plugin command may not take one
        self.reserved_commands = frozenset(reserved_commands)
        self._filter = entry_point_filter
        self._load_entry_points = load_entry_points
        # the deploy flow asks from worker threads: loading and collecting happen under this lock,
        # and ``_loaded`` turns true only once everything is in place
        self._lock = threading.RLock()
        self._reset()

    def _reset(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._loaded = False
        self._records: dict[str, PluginRecord] = {}
        #: entry points that lost a name clash to another distribution's: never imported
        self._shadowed: list[PluginRecord] = []
        self._rank: dict[str, int] = {}
        self._kinds: dict[str, tuple[type[Record], str]] = dict(CONTRIBUTION_HOOKS)
        self._cache: dict[str, Contributions[Any]] = {}
        #: hook name -> contested name -> the message using it raises; survives recollection
        self._clashes: dict[str, dict[str, tuple[str, str, str]]] = {}
        self._inactive: frozenset[str] | None = None
        self._failures = 0
        self._deprecation_warned: set[str] = set()

    # --- loading ---------------------------------------------------------------------------

    def load(self) -> None:
        """Load every entry point once. Safe to call again, from any thread; a load that raised
        (strict mode) leaves nothing behind and is tried again on the next question."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            try:
                if self._load_entry_points:
                    for ep in self._entry_points():
                        self._load_one(ep)
                self._check_pending()
                self._collect_all()
            except ComposerError:
                self._reset()
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. unreadable metadata: a message, no traceback
                self._reset()
                raise PluginError(f"loading the plugins failed: {type(exc).__name__}: "
                                  f"{redact.scrub(str(exc))}",
                                  hint="an installed distribution's metadata may be broken: "
                                       "`pip check`, then reinstall the one at fault") from exc
            except BaseException:  # interrupted: the next question starts from nothing
                self._reset()
                raise
            self._loaded = True

    def _entry_points(self) -> list[importlib_metadata.EntryPoint]:
        eps = sorted((ep for ep in importlib_metadata.entry_points(group=hookspecs.PROJECT)
                      if self._filter is None or self._filter(ep)), key=load_order)
        chosen: dict[str, importlib_metadata.EntryPoint] = {}
        for ep in eps:
            first = chosen.get(ep.name)
            if first is None:
                chosen[ep.name] = ep
            elif _dist_name(first) != _dist_name(ep):
                record = _record_of(ep)
                self._shadowed.append(record)
                if ep.name in self.disabled:
                    record.status = "disabled"
                    record.reason = f"disabled by settings, as is {_dist_label(first)}'s {ep.name!r}"
                    continue
                self._fail(record, f"{_dist_label(first)} already registers a plugin named "
                                   f"{ep.name!r}, which wins; this one from {_dist_label(ep)} is "
                                   "not loaded")
        return list(chosen.values())

    def _load_one(self, ep: importlib_metadata.EntryPoint) -> None:
        record = _record_of(ep)
        self._records[ep.name] = record
        self._rank[ep.name] = len(self._rank)
        if ep.name in self.disabled:
            record.status = "disabled"
            record.reason = "disabled by settings (plugins.disabled / XTM_COMPOSER_DISABLE_PLUGINS)"
            self.pm.set_blocked(ep.name)
            return
        try:
            plugin = ep.load()
            self.pm.register(plugin, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - isolation is the point: any failure is recorded
            self._fail(record, f"{type(exc).__name__}: {redact.scrub(str(exc))}")
            return
        self._admit(record)

    def register(self, plugin: object, name: str, *, distribution: str = "(registered in code)",
                 version: str = "") -> None:
        """Register a plugin object directly (tests, embedding applications); it ranks after every
        plugin loaded before it."""
        self.load()
        with self._lock:
            record = PluginRecord(name=name, distribution=distribution, version=version,
                                  module=getattr(plugin, "__name__", type(plugin).__name__))
            self.pm.register(plugin, name=name)
            self._records[name] = record
            self._rank[name] = max(self._rank.values(), default=-1) + 1
            self._admit(record)
            self._check_pending()
            self._collect_all()

    def unregister(self, name: str) -> None:
        with self._lock:
            if self.pm.get_plugin(name) is not None:
                self.pm.unregister(name=name)
            self._records.pop(name, None)
            self._rank.pop(name, None)
            for contested in self._clashes.values():
                for key in [k for k, parties in contested.items() if name in parties[1:]]:
                    del contested[key]
            self._invalidate()

    def _admit(self, record: PluginRecord) -> None:
        """A registered plugin's last check: wrappers have no meaning here (see hookspecs)."""
        plugin = self.pm.get_plugin(record.name)
        wrappers = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or []
                          for impl in caller.get_hookimpls()
                          if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper))
        if wrappers:
            self._fail(record, f"{', '.join(wrappers)} is marked as a wrapper (wrapper=True or "
                               "hookwrapper=True), which xtm-composer does not support: the core "
                               "calls each implementation itself; remove the marker")
            return
        record.hooks = self._hooks_of(record.name)

    def _hooks_of(self, name: str) -> list[str]:
        plugin = self.pm.get_plugin(name)
        callers = self.pm.get_hookcallers(plugin) or []
        return sorted(caller.name for caller in callers)

    def _check_pending(self) -> None:
        # A misspelled hook (`composer_credential_provider`) must fail loudly, not be ignored.
        for _ in range(len(self._records) + 1):
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
        self._failures += 1
        record.status = "failed"
        record.reason = reason
        record.hooks = []
        record.contributes = {}
        # a shadowed record shares its name with the plugin that won: never unregister that one
        if self._records.get(record.name) is record and self.pm.get_plugin(record.name) is not None:
            self.pm.unregister(name=record.name)
        self._invalidate()
        if self.strict:
            raise PluginError(
                f"plugin {record.name!r} from {record.distribution} failed: {reason}",
                hint="fix or uninstall the plugin, or unset XTM_COMPOSER_STRICT_PLUGINS",
            )
        log.warning("plugin %r from %s failed and is not used: %s",
                    record.name, record.distribution, reason)

    def _invalidate(self) -> None:
        self._cache = {}
        self._inactive = None

    # --- questions ---------------------------------------------------------------------------

    def records(self) -> list[PluginRecord]:
        self.load()
        with self._lock:
            shadowed = {id(r) for r in self._shadowed}
            every = [*self._records.values(), *self._shadowed]
        # of two entry points named alike, the one loaded comes first
        return sorted(every, key=lambda r: (r.name, id(r) in shadowed))

    def inactive_names(self) -> frozenset[str]:
        """Plugins that are installed but disabled or failed (the chain skips them by name)."""
        self.load()
        with self._lock:
            if self._inactive is None:
                self._inactive = frozenset(r.name for r in self._records.values()
                                           if r.status != "active")
            return self._inactive

    def image_resolvers(self) -> Contributions[ImageResolver]:
        return self._named("composer_image_resolvers", ImageResolver, "image resolver")

    def credential_providers(self) -> Contributions[CredentialProvider]:
        return self._named("composer_credential_providers", CredentialProvider,
                           "credential provider")

    def settings_specs(self) -> Contributions[SettingsSpec]:
        """The settings specs of the active plugins (hook ``composer_settings``), by name."""
        return self._named("composer_settings", SettingsSpec, "settings spec")

    def runtime_backends(self) -> Contributions[RuntimeBackend]:
        return self._named("composer_runtime_backends", RuntimeBackend, "runtime backend")

    def commands(self) -> Contributions[PluginCommand]:
        """The commands plugins add (``composer_commands``, and the deprecated
        ``composer_register_commands``)."""
        return self._named("composer_commands", PluginCommand, "command")

    def sources(self) -> Contributions[DesiredStateSource]:
        """The desired-state sources (``composer_sources``): ``file``, ``opencti``..."""
        return self._named("composer_sources", DesiredStateSource, "desired-state source")

    def runtime(self, name: str) -> RuntimeBackend:
        backends = self.runtime_backends()
        if name not in backends:
            raise PluginError(
                f"no runtime backend named {name!r}",
                hint=f"available: {', '.join(sorted(backends)) or 'none'}",
            )
        return backends[name]

    def _named(self, hook_name: str, kind: type[R], label: str | None = None) -> Contributions[R]:
        """The records ``hook_name`` contributes, checked and attributed, collected once. A new
        record hook needs nothing more than a facade method calling this."""
        self.load()
        cached = self._cache.get(hook_name)
        if cached is not None:
            return cached
        with self._lock:
            self._kinds.setdefault(hook_name, (kind, label or kind.kind))
            cached = self._cache.get(hook_name)
            return cached if cached is not None else self._collect(hook_name)

    # --- collecting --------------------------------------------------------------------------

    def _collect_all(self) -> None:
        # A plugin failing in one hook leaves every hook: collect again until no more fails
        # (bounded: each round but the last fails at least one plugin).
        for _ in range(len(self._records) + 2):
            failures = self._failures
            self._invalidate()
            for hook_name in list(self._kinds):
                self._collect(hook_name)
            if self._failures == failures:
                return

    def _collect(self, hook_name: str) -> Contributions[Any]:
        kind, label = self._kinds[hook_name]
        found: dict[str, Any] = {}
        owners: dict[str, str] = {}
        contested = self._clashes.setdefault(hook_name, {})
        sources = (hook_name, LEGACY_COMMANDS_HOOK) if hook_name == "composer_commands" \
            else (hook_name,)
        for source, impl in self._implementations(*sources):
            record = self._records.get(impl.plugin_name)
            if record is not None:
                record.contributes.pop(source, None)
            try:
                items: list[Any] = [kind.coerce(i) for i in as_list(self._call(source, impl))]
                bad = [i for i in items if not isinstance(i, kind)]
                if bad:
                    raise TypeError(f"returned {type(bad[0]).__name__}, expected {kind.__name__}")
            except Exception as exc:  # noqa: BLE001
                if record is None:
                    raise
                detail = str(exc) if isinstance(exc, InvalidName) else \
                    f"{type(exc).__name__}: {exc}"
                self._fail(record, f"{source} failed: {redact.scrub(detail)}")
                continue
            reason = self._refusal(items, kind, label, found, owners, contested, impl.plugin_name)
            if reason is not None:
                if record is None:
                    raise PluginError(f"plugin {impl.plugin_name!r}: {reason}")
                self._fail(record, reason)
                continue
            for item in items:
                found[item.name] = item
                owners[item.name] = impl.plugin_name
            if record is not None and items:
                record.contributes[source] = sorted(i.name for i in items)
        messages = {name: parties[0] for name, parties in contested.items()}
        result: Contributions[Any] = Contributions(found, owners, messages)
        self._cache[hook_name] = result
        return result

    def _refusal(self, items: list[Any], kind: type[Record], label: str, found: dict[str, Any],
                 owners: dict[str, str], contested: dict[str, tuple[str, str, str]],
                 plugin_name: str) -> str | None:
        """Why this plugin's contributions to one hook cannot be taken, or None."""
        names = [i.name for i in items]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            return f"contributes two {label}s named {twice[0]!r}"
        if kind is PluginCommand:
            taken = sorted(set(names) & self.reserved_commands)
            if taken:
                return f"adds a command named {taken[0]!r}, which is a built-in command"
        for name in names:
            if name in found:
                first = owners[name]
                both = (f"plugin {first!r} ({self._distribution(first)}) and plugin "
                        f"{plugin_name!r} ({self._distribution(plugin_name)})")
                contested[name] = (f"two plugins contribute a {label} named {name!r}: {both}",
                                   first, plugin_name)
                return (f"contributes a {label} named {name!r}, as does plugin {first!r} "
                        f"({self._distribution(first)}), which loaded first; plugin "
                        f"{plugin_name!r} ({self._distribution(plugin_name)}) is not used")
        return None

    def _implementations(self, *hook_names: str) -> list[tuple[str, Any]]:
        # pluggy's own order depends on registration and tryfirst/trylast; ours is the load order
        pairs = [(h, impl) for h in hook_names for impl in getattr(self.pm.hook, h).get_hookimpls()]
        return sorted(pairs, key=lambda pair: self._rank.get(pair[1].plugin_name, len(self._rank)))

    def _call(self, hook_name: str, impl: Any) -> object:
        if hook_name != LEGACY_COMMANDS_HOOK:
            return _call_impl(impl)
        import click

        self._deprecated(impl.plugin_name)
        probe = click.Group(name="xtm-composer")
        _call_impl(impl, cli=probe)
        return [PluginCommand(name=name, command=command)
                for name, command in probe.commands.items()]

    def _deprecated(self, plugin_name: str) -> None:
        if plugin_name in self._deprecation_warned:
            return
        message = (f"plugin {plugin_name!r} ({self._distribution(plugin_name)}) implements "
                   f"{LEGACY_COMMANDS_HOOK}, which is deprecated and will be removed in the next "
                   "release: return the commands from composer_commands instead")
        self._deprecation_warned.add(plugin_name)
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        log.warning("%s", message)

    def _distribution(self, plugin_name: str) -> str:
        record = self._records.get(plugin_name)
        if record is None:
            return "?"
        return f"{record.distribution} {record.version}".strip()


def _call_impl(impl: Any, **kwargs: Any) -> object:
    """Call one hook implementation as pluggy does: with only the arguments it names."""
    return impl.function(*(kwargs[name] for name in impl.argnames))


def load_order(ep: importlib_metadata.EntryPoint) -> tuple[bool, str, str]:
    """Plugins load in this order, and of two plugins claiming one name the later one fails:
    xtm-composer's own entry points first (an installed package can never replace a built-in by
    sorting before it), then the other distributions by normalised name, each by entry-point name."""
    dist = _canonical(_dist_name(ep))
    return (dist != OWN_DISTRIBUTION, dist, ep.name)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _record_of(ep: importlib_metadata.EntryPoint) -> PluginRecord:
    return PluginRecord(name=ep.name, distribution=_dist_name(ep), version=_dist_version(ep),
                        module=ep.value)


def _dist_name(ep: importlib_metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "(unknown distribution)"


def _dist_version(ep: importlib_metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else ""


def _dist_label(ep: importlib_metadata.EntryPoint) -> str:
    version = _dist_version(ep)
    return f"{_dist_name(ep)} {version}".strip()
