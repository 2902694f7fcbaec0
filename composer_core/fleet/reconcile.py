"""Keeping a fleet aligned: one reconciliation pass from a connectors file.

A pass is:

1. **one** engine list call for the containers labelled with this manager's ``manager.id``;
2. a plan computed without the engine: per connector ``deploy`` (no container), ``replace`` (the
   config hash of resolved image + env changed, or the name did), ``start`` / ``stop`` (status),
   ``recreate`` (a container that failed to start on consecutive passes), ``nothing``; and
   ``remove`` for managed containers whose connector left the file, or stale ones of a connector
   (containers without our label are never touched);
3. the pulls, each distinct image once, then the actions, at most ``manager.max_parallel`` at a
   time: the orphans' removals first (a new id may reuse a name), then the connectors' actions,
   then the stale containers' removals (a connector's old container goes after its new one runs).

The plan hands the deployer what it already holds (the resolved image, the container spec, the
current container): the deployer never inspects again what the list call told.

A failed action never stops the others; the pass reports every result. A steady state (nothing to
do) costs exactly the one list call, whatever the size of the fleet.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from composer_core import redact
from composer_core.engine.deploy import Deployer, container_spec, is_current
from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_MANAGER, manager_id
from composer_core.errors import ComposerError
from composer_core.fleet.connectors import Connector
from composer_core.images.resolve import resolve_image
from composer_core.pluginmanager import Plugins
from composer_core.settings import Settings
from composer_core.timestamps import seconds_since
from composer_core.types import ContainerInfo, ContainerSpec, ResolvedImage, Runtime

log = logging.getLogger("xtm_composer.fleet")

PlannedAction = Literal["deploy", "replace", "start", "stop", "recreate", "remove", "nothing"]
StepResult = Literal["ok", "failed", "planned", "cancelled"]
RUNNING = ("running", "restarting")
# XTM Composer's definition of a connector restarting in a loop
LOOP_RESTARTS = 3
LOOP_UPTIME_SECONDS = 300
# a container started this long after its creation was started again (by the engine or a user)
RESTARTED_AFTER_SECONDS = 2
#: a container whose start failed on this many consecutive passes is recreated, not started again
RECREATE_AFTER_FAILED_STARTS = 2


@dataclass
class PlannedStep:
    """One planned action, and after execution its result."""

    id: str
    name: str
    action: PlannedAction
    reason: str
    connector: Connector | None = None
    container: ContainerInfo | None = None
    resolved: ResolvedImage | None = None
    spec: ContainerSpec | None = None
    #: a container of a connector in the file, but not the one under its name: removed last
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


def plan(connectors: Sequence[Connector], containers: Iterable[ContainerInfo], settings: Settings,
         plugins: Plugins, start_failures: Mapping[str, int] | None = None) -> list[PlannedStep]:
    """The actions that align ``containers`` (this manager's) with ``connectors``. No engine call.

    ``start_failures``: consecutive failed starts per container id, as earlier passes counted."""
    start_failures = start_failures or {}
    manager = manager_id(settings)
    by_id: dict[str, list[ContainerInfo]] = {}
    orphans: list[ContainerInfo] = []
    wanted = {c.id for c in connectors}
    for info in containers:
        cid = info.labels.get(LABEL_CONNECTOR)
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
        elif not is_current(current, spec):
            step.action, step.reason = "replace", "image or env changed (config hash differs)"
        elif connector.status == "started" and current.status not in RUNNING:
            failed = start_failures.get(current.id, 0)
            if failed >= RECREATE_AFTER_FAILED_STARTS:
                step.action = "recreate"
                step.reason = (f"it failed to start on {failed} consecutive passes "
                               f"(container is {current.status}): recreating it")
            else:
                step.action = "start"
                step.reason = f"status is started, container is {current.status}"
        elif connector.status == "stopped" and current.status in RUNNING:
            step.action, step.reason = "stop", f"status is stopped, container is {current.status}"
        steps.append(step)
    for orphan in orphans:
        cid = orphan.labels.get(LABEL_CONNECTOR) or "?"
        steps.append(PlannedStep(cid, orphan.name, "remove", "its connector is not in the file",
                                 container=orphan))
    return steps


# --- execute ------------------------------------------------------------------------------------


class Reconciler:
    """Runs passes on one connected runtime. ``stop_event`` set: in-flight actions finish, no new
    one starts (SIGTERM / SIGINT in ``run``). ``start_failures`` (container id -> consecutive
    failed starts) is what consecutive passes remember; the CLI keeps it beside the pass lock."""

    def __init__(self, runtime: Runtime, settings: Settings, plugins: Plugins, *,
                 stop_event: threading.Event | None = None, stop_timeout: int = 10,
                 deployer_factory: Callable[[], Deployer] | None = None,
                 start_failures: MutableMapping[str, int] | None = None) -> None:
        self.runtime = runtime
        self.settings = settings
        self.plugins = plugins
        self.manager = manager_id(settings)
        self.stop_event = stop_event or threading.Event()
        self.stop_timeout = stop_timeout
        self.max_parallel = int(settings.get("manager.max_parallel"))
        self.start_failures: MutableMapping[str, int] = (
            {} if start_failures is None else start_failures)
        self._failures_lock = threading.Lock()
        self._deployer_factory = deployer_factory or (
            lambda: Deployer(runtime, settings, plugins, stop_timeout=stop_timeout))

    def containers(self) -> list[ContainerInfo]:
        return self.runtime.list({LABEL_MANAGER: self.manager})

    def plan(self, connectors: Sequence[Connector]) -> tuple[list[PlannedStep], list[ContainerInfo]]:
        containers = self.containers()
        # only containers that still exist are remembered
        for gone in set(self.start_failures) - {c.id for c in containers}:
            del self.start_failures[gone]
        return plan(connectors, containers, self.settings, self.plugins,
                    self.start_failures), containers

    def run_pass(self, connectors: Sequence[Connector], *, dry_run: bool = False) -> Pass:
        steps, containers = self.plan(connectors)
        result = Pass(steps, self.runtime.name)
        result.warnings = self._restart_loops(containers)
        if dry_run:
            return result
        todo = [s for s in steps if s.action != "nothing"]
        for step in steps:
            if step.action == "nothing":
                step.result = "ok"
        if not todo:
            return result
        deployer = self._deployer_factory()  # one per pass: each image is pulled once a pass
        pull_errors = self._pull_all(deployer, [s for s in todo
                                                if s.action in ("deploy", "replace", "recreate")])
        # Orphans' removals first: a connector whose id changed but whose name did not is an
        # orphan to remove *and* a deploy under the same name; in parallel they would race.
        # Stale containers of a connector last: its old container goes once the new one runs.
        for batch in ([s for s in todo if s.action == "remove" and not s.stale],
                      [s for s in todo if s.action != "remove"],
                      [s for s in todo if s.action == "remove" and s.stale]):
            if not batch:
                continue
            with ThreadPoolExecutor(max_workers=self.max_parallel,
                                    thread_name_prefix="xtm-apply") as pool:
                list(pool.map(lambda s: self._execute(deployer, s, pull_errors), batch))
        return result

    def _pull_all(self, deployer: Deployer, steps: list[PlannedStep]) -> dict[str, ComposerError]:
        images: dict[str, ResolvedImage] = {}
        for step in steps:
            assert step.resolved is not None
            images.setdefault(step.resolved.ref.normalized(), step.resolved)
        errors: dict[str, ComposerError] = {}

        def pull(item: tuple[str, ResolvedImage]) -> None:
            reference, resolved = item
            if self.stop_event.is_set():
                return
            try:
                deployer.pull(resolved, quiet=True)
            except Exception as exc:  # noqa: BLE001 - one image's failure must not stop the pass
                errors[reference] = as_composer_error(exc)
                log.error("pulling %s failed: %s", reference, redact.scrub(errors[reference].message))

        with ThreadPoolExecutor(max_workers=self.max_parallel,
                                thread_name_prefix="xtm-pull") as pool:
            list(pool.map(pull, images.items()))
        return errors

    def _execute(self, deployer: Deployer, step: PlannedStep,
                 pull_errors: dict[str, ComposerError]) -> None:
        if self.stop_event.is_set():
            step.result = "cancelled"
            return
        try:
            if step.action in ("deploy", "replace", "recreate"):
                assert step.connector is not None and step.resolved is not None
                assert step.spec is not None
                error = pull_errors.get(step.resolved.ref.normalized())
                if error is not None:
                    raise error
                start = step.connector.status == "started"
                if step.action == "recreate":
                    assert step.container is not None
                    deployer.recreate(step.resolved, step.spec, step.container, start=start)
                    self._forget_failures(step.container.id)
                else:
                    current = step.container if step.action == "replace" else None
                    deployer.put(step.resolved, step.spec, current, start=start)
            elif step.action == "start":
                assert step.container is not None
                self._start(step, step.container)
            elif step.action == "stop":
                self.runtime.stop(step.name, timeout=self.stop_timeout)
            elif step.action == "remove":
                assert step.container is not None
                self.runtime.remove(step.container.id, force=True)
            step.result = "ok"
            log.info("connector %s: %s %s: ok", step.id, step.action, step.name)
        except Exception as exc:  # noqa: BLE001 - one action's failure must not stop the others
            step.result = "failed"
            step.error = as_composer_error(exc)
            log.error("connector %s: %s %s failed: %s", step.id, step.action, step.name,
                      redact.scrub(step.error.message))

    def _start(self, step: PlannedStep, container: ContainerInfo) -> None:
        try:
            self.runtime.start(step.name)
        except ComposerError:
            with self._failures_lock:
                failed = self.start_failures.get(container.id, 0) + 1
                self.start_failures[container.id] = failed
            step.extra["failed_starts"] = failed
            if failed >= RECREATE_AFTER_FAILED_STARTS:
                step.reason += (f"; failed to start on {failed} consecutive passes: the next "
                                "pass recreates it")
            raise
        self._forget_failures(container.id)

    def _forget_failures(self, container_id: str) -> None:
        with self._failures_lock:
            self.start_failures.pop(container_id, None)

    def _restart_loops(self, containers: list[ContainerInfo]) -> list[str]:
        """Containers restarting in a loop (more than 3 restarts, up less than 5 minutes). The list
        call tells which may be: Docker lists them as ``restarting``; Podman, which restarts
        without that state, lists when they were created and last started. Only those are
        inspected for their restart count, so a steady fleet costs no extra call."""
        warnings = []
        for info in containers:
            if not _may_be_restarting(info):
                continue
            detail = self.runtime.inspect(info.id) or info
            uptime = seconds_since(detail.started_at)
            if detail.restart_count > LOOP_RESTARTS and (uptime is None or uptime < LOOP_UPTIME_SECONDS):
                message = (f"connector {info.labels.get(LABEL_CONNECTOR, '?')} ({info.name}) is "
                           f"restarting in a loop: {detail.restart_count} restarts")
                warnings.append(message)
                log.warning("%s", message)
        return warnings


def _may_be_restarting(info: ContainerInfo) -> bool:
    if info.status == "restarting" or info.restart_count > LOOP_RESTARTS:
        return True
    if info.restarted_after is None or info.restarted_after < RESTARTED_AFTER_SECONDS:
        return False
    uptime = seconds_since(info.started_at)
    return uptime is None or uptime < LOOP_UPTIME_SECONDS
