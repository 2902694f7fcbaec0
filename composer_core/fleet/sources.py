"""Desired-state sources: what ``apply`` and ``run`` align the engine with, and whose containers
each one may touch.

A source (``composer_sources``, :mod:`composer_core.hookspecs`) answers :meth:`Source.desired` at
the start of every pass and hears :meth:`Source.observe` after it. The pass itself is the fleet's
(:mod:`composer_core.fleet.reconcile`), run over the containers the source **owns**: those of this
``manager.id`` whose platform label names the source's platform (no label for the ``file``
source, whose containers have never carried one). So a source never removes, replaces or stops a
container another source deployed, and several sources can serve one manager side by side.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_MANAGER
from composer_core.errors import ComposerError, PluginError
from composer_core.fleet.connectors import Connector
from composer_core.fleet.reconcile import Pass, PlannedStep, Reconciler
from composer_core.pluginmanager import Plugins
from composer_core.settings import Settings
from composer_core.types import PullProgress
from composer_core.workload import Applied, Backend, Observed, Workload

log = logging.getLogger("xtm_composer.sources")

#: Which platform (source) deployed a container, as XTM Composer labels it.
LABEL_PLATFORM = "opencti-platform"
#: The names upstream's next labels use; read, never written.
XTM_LABEL_PLATFORM = "xtm-platform"
XTM_LABEL_CONNECTOR = "xtm-workload-id"
DEFAULT_SOURCE = "file"


class SourceUnavailable(ComposerError):
    """The source could not say what is desired (platform unreachable, listing failed or partial):
    the pass is skipped and nothing is deployed, changed or removed."""

    exit_code = 16
    kind = "source-unavailable"


@dataclass(frozen=True)
class DesiredState:
    """What a source wants now. ``held``: connector id -> why it is neither deployed nor changed
    this pass (its container, if any, is kept as it is); ``names``: connector id -> container name
    of the held ones, when known."""

    connectors: Sequence[Connector]
    held: Mapping[str, str] = field(default_factory=dict)
    names: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Observation:
    """A pass as the source hears it: the pass, this source's workloads as observed after it,
    and the backend (for their logs)."""

    result: Pass
    containers: list[Observed]
    backend: Backend
    dry_run: bool = False


class Source(Protocol):
    """A desired-state source (docs/plugins.md, ``composer_sources``). Optional attribute
    ``poll_seconds`` (float or None, default None): how often ``run`` may ask :meth:`desired`
    between two resyncs because asking is cheap and never touches the engine (the ``file``
    source: a ``stat``; ``opencti``: one GetConnectors); a change runs a full pass at once. Without
    it the source is asked at each resync only."""

    name: str
    platform: str | None

    def describe(self) -> str:
        """One line for the log: where the desired state comes from."""
        ...

    def desired(self) -> DesiredState: ...
    def observe(self, observation: Observation) -> None: ...
    def close(self) -> None: ...


def poll_seconds(source: Source, schedule: float) -> float | None:
    """How often ``run`` asks ``source`` between resyncs: its ``poll_seconds``, when it has one
    shorter than the resync ``schedule`` (else the resync asks it often enough)."""
    poll = getattr(source, "poll_seconds", None)
    if isinstance(poll, (int, float)) and not isinstance(poll, bool) and 0 < poll < schedule:
        return float(poll)
    return None


def platform_of(info: Observed) -> str | None:
    return info.labels.get(LABEL_PLATFORM) or info.labels.get(XTM_LABEL_PLATFORM) or None


def connector_of(info: Observed) -> str | None:
    return info.labels.get(LABEL_CONNECTOR) or info.labels.get(XTM_LABEL_CONNECTOR) or None


def owns(platform: str | None, info: Observed) -> bool:
    """A source owns the containers labelled with its platform; the unlabelled ones belong to the
    source without a platform (``file``)."""
    return platform_of(info) == platform


def open_source(settings: Settings, plugins: Plugins, options: Mapping[str, Any]) -> Source:
    """The source ``-f FILE`` (``file``) or ``manager.source`` names, opened."""
    name = DEFAULT_SOURCE if options.get("file") else str(settings.get("manager.source")
                                                            or DEFAULT_SOURCE)
    sources = plugins.sources()
    if name not in sources:
        raise PluginError(f"no desired-state source named {name!r} (manager.source, from "
                          f"{settings.source('manager.source')})",
                          hint=f"available: {', '.join(sorted(sources)) or 'none'}")
    record = sources[name]
    source = record.open(settings, dict(options))
    if getattr(source, "platform", None) != record.platform:
        raise PluginError(f"source {name!r} opened with platform {source.platform!r}, but its "
                          f"record declares {record.platform!r}",
                          hint="this is a bug of the plugin contributing it")
    return source


class _LabellingBackend:
    """The backend, with the source's platform label added to every workload applied."""

    def __init__(self, backend: Backend, labels: Mapping[str, str]) -> None:
        self._backend = backend
        self._labels = dict(labels)

    def apply(self, workload: Workload, current: Observed | None, *,
              progress: Callable[[PullProgress], None] | None = None) -> Applied:
        labelled = replace(workload, labels={**workload.labels, **self._labels})
        return self._backend.apply(labelled, current, progress=progress)

    @property
    def stop_timeout(self) -> Any:  # the core sets it when the backend has one
        return self._backend.stop_timeout  # type: ignore[attr-defined]

    @stop_timeout.setter
    def stop_timeout(self, seconds: int) -> None:
        self._backend.stop_timeout = seconds  # type: ignore[attr-defined]

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._backend, attr)


class SourceReconciler(Reconciler):
    """A :class:`Reconciler` that sees only the containers its source owns, keeps held
    connectors' containers out of the plan, and labels what it creates with the platform."""

    def __init__(self, backend: Backend, settings: Settings, plugins: Plugins, source: Source,
                 **options: Any) -> None:
        if source.platform is not None:
            backend = _LabellingBackend(backend, {LABEL_PLATFORM: source.platform})  # type: ignore[assignment]
        super().__init__(backend, settings, plugins, **options)
        self.source = source
        self._held: set[str] = set()
        self.all_containers: list[Observed] = []
        self._listed = False

    def observe(self) -> list[Observed]:
        # one observation per pass: run_desired made it already
        if not self._listed:
            self.all_containers = self.backend.observe({LABEL_MANAGER: self.manager})
        self._listed = False
        return [c for c in self.all_containers
                if owns(self.source.platform, c) and connector_of(c) not in self._held]

    def owned(self) -> list[Observed]:
        return [c for c in self.backend.observe({LABEL_MANAGER: self.manager})
                if owns(self.source.platform, c)]

    def run_desired(self, state: DesiredState, *, dry_run: bool = False) -> Pass:
        """One pass toward ``state``; held connectors (and those whose name another source's
        container holds) appear as failed ``nothing`` steps naming why."""
        held = dict(state.held)
        names = dict(state.names)
        connectors = list(state.connectors)
        self._held = set(held)
        self.all_containers = self.backend.observe({LABEL_MANAGER: self.manager})
        self._listed = True
        taken = {c.name: c for c in self.all_containers if not owns(self.source.platform, c)}
        for connector in list(connectors):
            other = taken.get(connector.name)
            if other is not None:
                whose = platform_of(other) or "file"
                held[connector.id] = (f"name collision: container {connector.name!r} belongs to "
                                      f"source/platform {whose!r} of this manager; it is left alone")
                names[connector.id] = connector.name
                connectors.remove(connector)
                self._held.add(connector.id)
        result = self.run_pass(connectors, dry_run=dry_run)
        for cid, reason in held.items():
            step = PlannedStep(cid, names.get(cid, "?"), "nothing", f"held: {reason}")
            step.result = "failed"
            step.error = ComposerError(reason, hint="nothing was changed for this connector")
            result.steps.append(step)
        return result


def run_source_pass(backend: Backend, settings: Settings, plugins: Plugins, source: Source, *,
                    state: DesiredState | None = None, dry_run: bool = False,
                    **options: Any) -> Pass:
    """Ask the source (unless ``state`` is its answer already), run the pass over its
    containers, tell the source. Raises :class:`SourceUnavailable` (nothing changed) when the
    source cannot answer. ``options`` go to the :class:`Reconciler`."""
    if state is None:
        state = source.desired()
    reconciler = SourceReconciler(backend, settings, plugins, source, **options)
    result = reconciler.run_desired(state, dry_run=dry_run)
    changed = any(s.action != "nothing" for s in result.steps) and not dry_run
    after = reconciler.owned() if changed else [
        c for c in reconciler.all_containers if owns(source.platform, c)]
    try:
        source.observe(Observation(result, after, backend, dry_run))
    except Exception as exc:  # noqa: BLE001 - reporting must never break the pass
        from composer_core import redact

        log.error("source %s: reporting the pass failed: %s", source.name,
                  redact.scrub(f"{type(exc).__name__}: {exc}"))
    return result
