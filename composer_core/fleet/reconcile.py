"""Keeping a fleet aligned: one reconciliation pass from a connectors file.

The fleet drives its backend only through the workload contract
(:class:`~composer_core.workload.Backend`), so a pass is the same on a single host and on an
orchestrator. A pass is:

1. **one** :meth:`~composer_core.workload.Backend.observe` for the workloads labelled with this
   manager's ``manager.id``;
2. a plan computed without the engine (:func:`plan`, over what was observed): per connector
   ``deploy`` (no workload), ``replace`` (the config hash of resolved image + env changed, or the
   name did), ``start`` / ``stop`` (status), ``recreate`` (a workload that failed to start on
   consecutive passes), ``nothing``; and ``remove`` for managed workloads whose connector left the
   file, or stale ones of a connector (workloads without our label are never touched);
3. the credentials of each distinct image, resolved once, then the actions, at most
   ``manager.max_parallel`` at a time: the orphans' removals first (a new id may reuse a name),
   then the connectors' actions (:meth:`~Backend.apply`, :meth:`~Backend.set_state`), then the
   stale workloads' removals (a connector's old workload goes after its new one runs).

On a backend that stores the pull credential (capability ``stored-credentials``: an
orchestrator), the workloads planned ``nothing`` / ``start`` / ``stop`` are built too (their
credentials resolved with the others, once per image) and those whose credential the backend says
changed (:meth:`~composer_core.workload.Backend.credentials_changed`: a rotated password) become a
``replace``: the backend updates them with the new credential. No engine request is added.

The plan hands the backend what the observation told (the current workload): nothing is looked
at again. Restart loops are reported from what was observed (restart count, start time, state),
and so are the typed failures a backend observed (``Observed.error``), as warnings.

A failed action never stops the others; the pass reports every result. A steady state (nothing to
do) costs exactly the one observation, whatever the size of the fleet.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from composer_core import redact
from composer_core.auth.chain import Resolution
from composer_core.engine.deploy import container_spec
from composer_core.engine.labels import LABEL_MANAGER, manager_id
from composer_core.engine.tls import TlsDecision
from composer_core.engine.workloads import (
    apply_workload,
    credentials_for,
    is_current,
    is_running,
    set_stop_timeout,
    workload_of,
)
from composer_core.errors import ComposerError
from composer_core.fleet.connectors import Connector
from composer_core.images.resolve import resolve_image
from composer_core.pluginmanager import Plugins
from composer_core.settings import Settings
from composer_core.timestamps import seconds_since
from composer_core.types import ContainerSpec, ResolvedImage
from composer_core.workload import Backend, Observed, Workload

log = logging.getLogger("xtm_composer.fleet")

PlannedAction = Literal["deploy", "replace", "start", "stop", "recreate", "remove", "nothing"]
StepResult = Literal["ok", "failed", "planned", "cancelled"]
# XTM Composer's definition of a connector restarting in a loop
LOOP_RESTARTS = 3
LOOP_UPTIME_SECONDS = 300
#: a container whose start failed on this many consecutive passes is recreated, not started again
RECREATE_AFTER_FAILED_STARTS = 2
#: the actions that hand the backend a Workload
APPLYING = ("deploy", "replace", "recreate")
#: the capability of a backend whose orchestrator stores the credential (Backend.credentials_changed)
STORED_CREDENTIALS = "stored-credentials"
ROTATED = "the registry credential changed (rotated): the service gets the new one"


@dataclass
class PlannedStep:
    """One planned action, and after execution its result."""

    id: str
    name: str
    action: PlannedAction
    reason: str
    connector: Connector | None = None
    #: the workload as the pass observed it (None: there is none)
    container: Observed | None = None
    resolved: ResolvedImage | None = None
    #: the name, env, command and labels (with the config hash) the connector wants
    spec: ContainerSpec | None = None
    #: a workload of a connector in the file, but not the one under its name: removed last
    stale: bool = False
    result: StepResult = "planned"
    error: ComposerError | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "name": self.name, "action": self.action,
                                "result": self.result, "reason": self.reason}
        if self.resolved is not None:
            data["image"] = self.resolved.ref.normalized()
        if self.error is not None:
            data["error"] = self.error.to_dict()
        data.update(self.extra)
        return data


@dataclass
class Pass:
    steps: list[PlannedStep]
    runtime: str
    engine_calls: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[PlannedStep]:
        return [s for s in self.steps if s.result == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "actions": [s.to_dict() for s in self.steps],
                "warnings": list(self.warnings)}


def as_composer_error(exc: BaseException) -> ComposerError:
    """Errors of our own pass through; anything else (an SDK exception a runtime let escape) is
    reported as what it is rather than crashing a pass."""
    if isinstance(exc, ComposerError):
        return exc
    return ComposerError(f"unexpected {type(exc).__name__}: {redact.scrub(str(exc))}",
                         hint="this is a bug of the runtime plugin; the other actions went on")


# --- plan ---------------------------------------------------------------------------------------


def plan(connectors: Sequence[Connector], containers: Iterable[Observed], settings: Settings,
         plugins: Plugins, start_failures: Mapping[str, int] | None = None) -> list[PlannedStep]:
    """The actions that align ``containers`` (this manager's workloads, as a backend observed
    them) with ``connectors``. No engine call, no credential lookup.

    ``start_failures``: consecutive failed starts per workload id, as earlier passes counted."""
    start_failures = start_failures or {}
    manager = manager_id(settings)
    by_id: dict[str, list[Observed]] = {}
    orphans: list[Observed] = []
    wanted = {c.id for c in connectors}
    for info in containers:
        cid = info.connector_id
        if cid in wanted:
            by_id.setdefault(cid, []).append(info)
        else:
            orphans.append(info)
    steps: list[PlannedStep] = []
    for connector in connectors:
        resolved = resolve_image(connector.image, settings, plugins)
        spec = container_spec(resolved, connector.name, connector.env, manager=manager,
                              connector_id=connector.id)
        found = by_id.get(connector.id, [])
        current = next((c for c in found if c.name == connector.name), None)
        # other containers of the same connector: an old name, or the leftovers of an
        # interrupted replacement
        for stale in found:
            if stale is not current:
                steps.append(PlannedStep(connector.id, stale.name, "remove",
                                         f"stale container of connector {connector.id} "
                                         f"(it is now named {connector.name!r})", container=stale,
                                         stale=True))
        step = PlannedStep(connector.id, connector.name, "nothing", "up to date", connector,
                           current, resolved, spec)
        if current is None:
            step.action, step.reason = "deploy", "no container yet"
        elif not is_current(current, spec.labels):
            step.action, step.reason = "replace", "image or env changed (config hash differs)"
        elif connector.status == "started" and not is_running(current):
            failed = start_failures.get(current.id, 0)
            if failed >= RECREATE_AFTER_FAILED_STARTS:
                step.action = "recreate"
                step.reason = (f"it failed to start on {failed} consecutive passes "
                               f"(container is {current.status}): recreating it")
            else:
                step.action = "start"
                step.reason = f"status is started, container is {current.status}"
        elif connector.status == "stopped" and is_running(current):
            step.action, step.reason = "stop", f"status is stopped, container is {current.status}"
        steps.append(step)
    for orphan in orphans:
        cid = orphan.connector_id or "?"
        steps.append(PlannedStep(cid, orphan.name, "remove", "its connector is not in the file",
                                 container=orphan))
    return steps


# --- execute ------------------------------------------------------------------------------------


class Reconciler:
    """Runs passes on one connected backend. ``stop_event`` set: in-flight actions finish, no new
    one starts (SIGTERM / SIGINT in ``run``). ``start_failures`` (workload id -> consecutive
    failed starts) is what consecutive passes remember; the CLI keeps it beside the pass lock.
    ``environ``: the environment the credential providers read (default: the process's)."""

    def __init__(self, backend: Backend, settings: Settings, plugins: Plugins, *,
                 stop_event: threading.Event | None = None, stop_timeout: int = 10,
                 start_failures: MutableMapping[str, int] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.plugins = plugins
        self.environ = environ
        self.manager = manager_id(settings)
        self.stop_event = stop_event or threading.Event()
        self.stop_timeout = stop_timeout
        set_stop_timeout(backend, stop_timeout)
        self.max_parallel = int(settings.get("manager.max_parallel"))
        self.start_failures: MutableMapping[str, int] = (
            {} if start_failures is None else start_failures)
        self._failures_lock = threading.Lock()

    def observe(self) -> list[Observed]:
        return self.backend.observe({LABEL_MANAGER: self.manager})

    def plan(self, connectors: Sequence[Connector]) -> tuple[list[PlannedStep], list[Observed]]:
        observed = self.observe()
        # only workloads that still exist are remembered
        for gone in set(self.start_failures) - {o.id for o in observed}:
            del self.start_failures[gone]
        return plan(connectors, observed, self.settings, self.plugins,
                    self.start_failures), observed

    def run_pass(self, connectors: Sequence[Connector], *, dry_run: bool = False) -> Pass:
        steps, observed = self.plan(connectors)
        result = Pass(steps, self.backend.name)
        result.warnings = restart_loops(observed) + observed_failures(observed)
        checked = self._credential_checks(steps)
        # a backend holding registry credentials of its own (kubernetes pull Secrets) is given
        # every connector's workload each pass, so that a rotated credential reaches it
        sync = None if dry_run else getattr(self.backend, "sync_pull_secrets", None)
        if sync is not None:
            wanted = [s for s in steps if s.spec is not None and s.connector]
        else:
            wanted = ([] if dry_run else [s for s in steps if s.action in APPLYING]) + checked
        # the credential chain is asked once per distinct image, for every step that needs it
        workloads = self._workloads(wanted) if wanted else {}
        for step in checked:
            assert step.container is not None
            workload = workloads.get(id(step))
            try:
                if isinstance(workload, ComposerError):
                    raise workload
                if workload is not None and self.backend.credentials_changed(  # type: ignore[attr-defined]
                        workload, step.container):
                    step.action, step.reason = "replace", ROTATED
            except Exception as exc:  # noqa: BLE001 - the step goes on as planned; the pass says why
                error = as_composer_error(exc)
                message = (f"connector {step.id} ({step.name}): whether its registry credential "
                           f"changed is unknown: {redact.scrub((error.message.splitlines() or [''])[0])}")
                result.warnings.append(message)
                log.warning("%s", message)
        if dry_run:
            return result
        todo = [s for s in steps if s.action != "nothing"]
        for step in steps:
            if step.action == "nothing":
                step.result = "ok"
        if sync is not None:
            self._sync_pull_secrets(sync, workloads, result)
        if not todo:
            return result
        # Orphans' removals first: a connector whose id changed but whose name did not is an
        # orphan to remove *and* a deploy under the same name; in parallel they would race.
        # Stale workloads of a connector last: its old workload goes once the new one runs.
        for batch in ([s for s in todo if s.action == "remove" and not s.stale],
                      [s for s in todo if s.action != "remove"],
                      [s for s in todo if s.action == "remove" and s.stale]):
            if not batch:
                continue
            with ThreadPoolExecutor(max_workers=self.max_parallel,
                                    thread_name_prefix="xtm-apply") as pool:
                list(pool.map(lambda s: self._execute(s, workloads), batch))
        return result

    def _credential_checks(self, steps: list[PlannedStep]) -> list[PlannedStep]:
        """The steps whose stored credential the backend is asked about: on a backend with the
        ``stored-credentials`` capability, those planned nothing / start / stop on a workload
        that exists (the others send the chain's credential anyway, or none)."""
        if STORED_CREDENTIALS not in self.backend.capabilities:
            return []
        return [s for s in steps if s.action in ("nothing", "start", "stop")
                and s.container is not None and s.connector is not None and not s.stale]

    def _workloads(self, steps: list[PlannedStep]) -> dict[int, Workload | ComposerError]:
        """The workload of each step to apply (by ``id(step)``), or the error that prevents it:
        the credential chain is asked once per distinct image, in parallel."""
        resolutions: dict[str, tuple[Resolution, TlsDecision] | ComposerError] = {}
        images: dict[str, ResolvedImage] = {}
        for step in steps:
            assert step.resolved is not None
            images.setdefault(step.resolved.ref.normalized(), step.resolved)

        def resolve(item: tuple[str, ResolvedImage]) -> None:
            reference, resolved = item
            if self.stop_event.is_set():
                return
            try:
                resolutions[reference] = credentials_for(resolved, self.settings, self.plugins,
                                                         self.environ)
            except Exception as exc:  # noqa: BLE001 - one image's failure must not stop the pass
                error = as_composer_error(exc)
                resolutions[reference] = error
                log.error("credentials for %s: %s", reference, redact.scrub(error.message))

        with ThreadPoolExecutor(max_workers=self.max_parallel,
                                thread_name_prefix="xtm-credentials") as pool:
            list(pool.map(resolve, images.items()))
        workloads: dict[int, Workload | ComposerError] = {}
        for step in steps:
            assert step.resolved is not None and step.spec is not None
            assert step.connector is not None
            found = resolutions.get(step.resolved.ref.normalized())
            if found is None:  # stopped before it was resolved
                continue
            if isinstance(found, ComposerError):
                workloads[id(step)] = found
                continue
            resolution, tls = found
            workloads[id(step)] = workload_of(step.resolved, step.spec,
                                              connector_id=step.connector.id,
                                              state=step.connector.status,
                                              resolution=resolution, tls=tls)
        return workloads

    def _sync_pull_secrets(self, sync: Any, workloads: dict[int, Workload | ComposerError],
                           result: Pass) -> None:
        try:
            sync([w for w in workloads.values() if isinstance(w, Workload)], self.manager)
        except Exception as exc:  # noqa: BLE001 - a failed sync must not stop the pass
            error = as_composer_error(exc)
            result.warnings.append(f"pull secrets not refreshed: {redact.scrub(error.message)}")

    def _execute(self, step: PlannedStep, workloads: dict[int, Workload | ComposerError]) -> None:
        if self.stop_event.is_set():
            step.result = "cancelled"
            return
        backend = self.backend
        try:
            if step.action in ("deploy", "replace", "recreate"):
                workload = workloads.get(id(step))
                if workload is None:
                    step.result = "cancelled"
                    return
                if isinstance(workload, ComposerError):
                    raise workload
                if step.action == "recreate":
                    assert step.container is not None
                    log.warning("Container %s failed to start on consecutive passes: recreating "
                                "it", step.name)
                    backend.remove(step.container)
                    apply_workload(backend, workload, None, self.plugins)
                    self._forget_failures(step.container.id)
                else:
                    current = step.container if step.action == "replace" else None
                    apply_workload(backend, workload, current, self.plugins)
            elif step.action == "start":
                assert step.container is not None
                self._start(step, step.container)
            elif step.action == "stop":
                assert step.container is not None
                backend.set_state(step.container, "stopped")
            elif step.action == "remove":
                assert step.container is not None
                backend.remove(step.container)
            step.result = "ok"
            log.info("connector %s: %s %s: ok", step.id, step.action, step.name)
        except Exception as exc:  # noqa: BLE001 - one action's failure must not stop the others
            step.result = "failed"
            step.error = as_composer_error(exc)
            log.error("connector %s: %s %s failed: %s", step.id, step.action, step.name,
                      redact.scrub(step.error.message))

    def _start(self, step: PlannedStep, current: Observed) -> None:
        try:
            self.backend.set_state(current, "started")
        except ComposerError:
            with self._failures_lock:
                failed = self.start_failures.get(current.id, 0) + 1
                self.start_failures[current.id] = failed
            step.extra["failed_starts"] = failed
            if failed >= RECREATE_AFTER_FAILED_STARTS:
                step.reason += (f"; failed to start on {failed} consecutive passes: the next "
                                "pass recreates it")
            raise
        self._forget_failures(current.id)

    def _forget_failures(self, workload_id: str) -> None:
        with self._failures_lock:
            self.start_failures.pop(workload_id, None)


def observed_failures(observed: Iterable[Observed]) -> list[str]:
    """The typed failures a backend observed (an orchestrator's task rejected for auth, a missing
    tag...), one warning each with the error's headline: the pass reports them as they are."""
    warnings = []
    for info in observed:
        if info.error is None:
            continue
        headline = redact.scrub(info.error.message.splitlines()[0] if info.error.message else "")
        message = (f"connector {info.connector_id or '?'} ({info.name}) failed on the backend "
                   f"(exit code {info.error.exit_code}): {headline}")
        warnings.append(message)
        log.warning("%s", message)
    return warnings


def restart_loops(observed: Iterable[Observed]) -> list[str]:
    """Workloads restarting in a loop (more than 3 restarts, up less than 5 minutes, or still
    restarting), from what the observation told: no call of its own (a backend whose list lacks
    restart counts looks them up, in ``observe``, only for those that may be restarting)."""
    warnings = []
    for info in observed:
        uptime = seconds_since(info.started_at)
        if info.restart_count > LOOP_RESTARTS and (uptime is None or uptime < LOOP_UPTIME_SECONDS):
            message = (f"connector {info.connector_id or '?'} ({info.name}) is "
                       f"restarting in a loop: {info.restart_count} restarts")
            warnings.append(message)
            log.warning("%s", message)
    return warnings
