"""``xtm-composer apply`` and ``run``: keep a fleet of connectors aligned with a desired-state
source: the connectors file of ``-f FILE`` (source ``file``), or the source ``manager.source``
names (``opencti``: the OpenCTI platform), see :mod:`composer_core.fleet.sources`.

Both drive the selected backend through the workload contract
(:class:`~composer_core.workload.Backend`), one observation per pass."""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from typing import Any

import click

from composer_core import redact
from composer_core.cli.context import get_app
from composer_core.cli.output import emit_json, emit_table, json_option

log = logging.getLogger("xtm_composer.run")
#: :func:`pause` waits in slices of at most this (a huge schedule cannot overflow a wait, and a
#: stop is seen at once), and never longer than MAX_PAUSE in all (``run``'s loop,
#: :class:`composer_core.fleet.events.Runner`, wakes on its events and waits 60 s at most too)
PAUSE_SLICE = 60.0
MAX_PAUSE = 86400.0

file_option = click.option("-f", "--file", "path", metavar="FILE", type=click.Path(dir_okay=False),
                           help="Connectors file (YAML): connectors: [{id, name, image, env, "
                                "status}]; means source `file`. Without it: the source "
                                "manager.source names.")


def _options(path: str | None) -> dict[str, Any]:
    return {"file": path} if path else {}


def _print_pass(result: Any, dry_run: bool) -> None:
    rows = [(s.id, s.name, s.action, s.result if not dry_run else "planned",
             s.reason if s.error is None else f"{s.reason}; {s.error.message.splitlines()[0]}")
            for s in result.steps]
    emit_table(("ID", "NAME", "ACTION", "RESULT", "REASON"), rows)
    for step in result.failed:
        assert step.error is not None
        click.echo(redact.scrub(f"{step.id} ({step.action} {step.name}) failed: {step.error}"), err=True)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)


def _print_objects(app: Any, connectors: Any, *, dry_run: bool, output: str | None,
                   offline: bool, show_secrets: bool) -> None:
    """``apply --dry-run -o yaml`` / ``--offline`` [``--show-secrets``]: the objects a backend
    that renders its objects (kubernetes) would apply, as YAML documents; nothing is changed."""
    import yaml

    from composer_core.engine.labels import manager_id
    from composer_core.engine.select import connect_runtime, selected_name
    from composer_core.engine.workloads import build_workload
    from composer_core.errors import UsageError
    from composer_core.images.resolve import resolve_image

    if show_secrets and not offline:
        raise UsageError("--show-secrets needs --offline",
                         hint="secret data is printed only when no cluster is involved")
    if not offline and (output != "yaml" or not dry_run):
        raise UsageError("-o yaml needs --dry-run (or --offline)",
                         hint="apply -f FILE --dry-run -o yaml prints the objects, changes nothing")
    name = selected_name(app.settings, app.runtime_override)
    if offline:
        record = app.plugins.runtime_backends().get(name)
        render_offline = getattr(getattr(record, "connect", None), "offline", None)
        if render_offline is None:
            raise UsageError(f"--offline: runtime {name!r} cannot render its objects without "
                             "its engine", hint="use --runtime kubernetes")
        backend = render_offline(app.settings)
    else:
        backend = connect_runtime(app.settings, app.plugins, app.runtime_override)
    try:
        render = getattr(backend, "render", None)
        if render is None:
            raise UsageError(f"-o yaml: runtime {backend.name!r} has no objects to print",
                             hint="use --runtime kubernetes")
        manager = manager_id(app.settings)
        workloads = [build_workload(resolve_image(c.image, app.settings, app.plugins), c.name,
                                    c.env, manager=manager, connector_id=c.id, state=c.status,
                                    settings=app.settings, plugins=app.plugins)
                     for c in connectors]
        objects = render(workloads, manager, secrets=show_secrets)
    finally:
        backend.close()
    click.echo(yaml.safe_dump_all(objects, sort_keys=False, allow_unicode=True), nl=False)


@click.command(name="apply")
@file_option
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--stop-timeout", type=click.IntRange(min=0), default=10, show_default=True,
              help="Seconds a container may take to stop.")
@json_option
@click.option("-o", "--output", type=click.Choice(["yaml"]), default=None,
              help="With --dry-run: print the objects the pass would apply (kubernetes), the "
                   "secret data masked.")
@click.option("--offline", is_flag=True,
              help="Print those objects without contacting any cluster (implies --dry-run "
                   "-o yaml).")
@click.option("--show-secrets", is_flag=True,
              help="With --offline: print the secret data (for `kubectl apply -f -`).")
def apply_command(path: str | None, dry_run: bool, stop_timeout: int, as_json: bool,
                  output: str | None = None, offline: bool = False,
                  show_secrets: bool = False) -> None:
    """One reconciliation pass: deploy the missing, replace the changed, start or stop per
    status, remove the managed containers whose connector left the source. Containers without
    this manager's label, or deployed by another source, are never touched. Exits 14 when an
    action failed, after doing all others; 16 when the source cannot say what is desired.
    Passes of one manager on one engine run one at a time (a file lock; the wait is logged)."""
    from composer_core.engine.labels import manager_id
    from composer_core.engine.select import connect_runtime
    from composer_core.errors import ApplyFailed
    from composer_core.fleet.lock import PassLock
    from composer_core.fleet.sources import open_source, run_source_pass

    app = get_app()
    source = open_source(app.settings, app.plugins, _options(path))
    if output or offline or show_secrets:
        try:  # the whole desired state is known before anything is rendered
            _print_objects(app, source.desired().connectors, dry_run=dry_run, output=output,
                           offline=offline, show_secrets=show_secrets)
        finally:
            source.close()
        return
    try:
        state = source.desired()  # the whole desired state is known before any engine call
        backend = connect_runtime(app.settings, app.plugins, app.runtime_override)
        try:
            lock = PassLock(manager_id(app.settings), backend.endpoint)
            if dry_run:  # reads only: no need to wait for another pass
                result = run_source_pass(backend, app.settings, app.plugins, source, state=state,
                                         dry_run=True, stop_timeout=stop_timeout,
                                         start_failures=lock.load_state())
            else:
                with lock:
                    result = run_source_pass(backend, app.settings, app.plugins, source,
                                             state=state, stop_timeout=stop_timeout,
                                             start_failures=lock.start_failures)
        finally:
            backend.close()
    finally:
        source.close()
    if as_json:
        emit_json(result.to_dict())
    else:
        _print_pass(result, dry_run)
    if result.failed:
        names = ", ".join(f"{s.id} ({s.action})" for s in result.failed)
        error = ApplyFailed(f"{len(result.failed)} of {len(result.steps)} actions failed: {names}",
                            hint="the other actions were done; see the errors above and rerun")
        if as_json:
            click.echo(redact.scrub(f"error: {error}"), err=True)
            # not click's Exit: the entry point runs click with standalone_mode=False, which
            # returns an Exit's code instead of exiting with it (the JSON run exited 0)
            sys.exit(error.exit_code)
        raise error


def pause(stop: threading.Event, seconds: float) -> None:
    """Wait ``seconds`` or until ``stop`` is set, in slices of at most PAUSE_SLICE: a huge
    schedule (``1e300``) would overflow one ``Event.wait``; the whole pause is at most MAX_PAUSE."""
    seconds = min(max(seconds, 0.0), MAX_PAUSE) if math.isfinite(seconds) else MAX_PAUSE
    deadline = time.monotonic() + seconds
    for _ in range(int(MAX_PAUSE / PAUSE_SLICE) + 2):  # bounded in count as well as in time
        remaining = deadline - time.monotonic()
        if remaining <= 0 or stop.wait(min(remaining, PAUSE_SLICE)):
            return


@click.command(name="run")
@file_option
@click.option("--stop-timeout", type=click.IntRange(min=0), default=10, show_default=True,
              help="Seconds a container may take to stop.")
def run_command(path: str | None, stop_timeout: int) -> None:
    """Keep the fleet aligned: follow the backend's event stream and reconcile a connector
    killed, stopped or removed out of band at once; a full pass every manager.execute_schedule
    seconds and as soon as FILE changes (or the source manager.source names answers otherwise).
    With manager.metrics.enable: /metrics and /healthz on manager.metrics.host:port. SIGTERM or
    SIGINT: the current actions finish, then it exits cleanly. Engine, registry or platform
    outages are logged once and retried; a pass whose source cannot answer changes nothing."""
    from composer_core.engine.labels import manager_id
    from composer_core.engine.select import connect_runtime
    from composer_core.fleet.events import Runner
    from composer_core.fleet.lock import PassLock
    from composer_core.fleet.sources import open_source
    from composer_core.metrics import HEALTH_SCHEDULES, Health, open_metrics

    app = get_app()
    source = open_source(app.settings, app.plugins, _options(path))  # invalid at start: exit 2
    schedule = float(app.settings.get("manager.execute_schedule"))
    stop = threading.Event()
    try:
        health = Health(HEALTH_SCHEDULES * schedule)
        metrics, server = open_metrics(app.settings, health)
    except BaseException:
        source.close()
        raise

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: finishing the current actions, then stopping",
                 signal.Signals(signum).name)
        stop.set()

    def lock(endpoint: str) -> PassLock:
        # held for one pass only: an operator's apply goes between two passes
        return PassLock(manager_id(app.settings), endpoint, stop_event=stop)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info("run: %s, a pass every %gs, and on events", source.describe(), schedule)
    try:
        Runner(source, lambda: connect_runtime(app.settings, app.plugins, app.runtime_override),
               app.settings, app.plugins, stop, lock=lock, stop_timeout=stop_timeout,
               metrics=metrics, health=health).run()
    finally:
        if server is not None:
            server.close()
        source.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("run: stopped")


COMMANDS = [apply_command, run_command]
