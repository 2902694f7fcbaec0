"""Workload commands: ``pull``, ``deploy``, ``ps``, ``logs``, ``start``, ``stop``, ``rm``.

Each connects the backend chosen by ``--runtime`` / ``opencti.daemon.selector`` (``auto``: Docker,
then Podman) and closes it on the way out, and goes through the workload contract
(:class:`~composer_core.workload.Backend`), so that they work on an orchestrator as on a single
host; ``pull`` needs a single engine (capability ``pull``). ``ps`` lists only the workloads
labelled with this manager's ``manager.id``; ``logs``, ``start``, ``stop`` and ``rm`` refuse any
other. Structured outputs take ``--json`` and carry the ``runtime`` used. Engine SDKs and rich
are imported only when a command runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from composer_core import redact
from composer_core.cli.context import App, get_app
from composer_core.cli.output import emit_json, emit_table, json_option

if TYPE_CHECKING:
    from composer_core.workload import Backend, Observed

#: ``logs`` without ``--tail``: at most this many lines (a backend never sends a whole log)
LOGS_DEFAULT_TAIL = 100_000


@contextmanager
def connected(stop_timeout: int | None = None) -> Iterator[tuple[App, Backend]]:
    from composer_core.engine.select import connect_runtime
    from composer_core.engine.workloads import set_stop_timeout

    app = get_app()
    backend = connect_runtime(app.settings, app.plugins, app.runtime_override)
    if stop_timeout is not None:
        set_stop_timeout(backend, stop_timeout)
    try:
        yield app, backend
    finally:
        backend.close()


@click.command(name="pull")
@click.argument("image")
@json_option
def pull_command(image: str, as_json: bool) -> None:
    """Resolve IMAGE and its credentials, and pull it with exactly that one credential."""
    from composer_core.engine import progress
    from composer_core.engine.container_backend import runtime_of
    from composer_core.engine.deploy import Deployer

    with connected() as (app, backend):
        runtime = runtime_of(backend, "pull")
        result = Deployer(runtime, app.settings, app.plugins,
                          progress=progress.factory(progress.wanted(as_json))).pull(image)
    if as_json:
        emit_json(result.to_dict())
        return
    data = result.to_dict()
    who = data["source"] + (f" (user {data['username']})" if data["username"] else "")
    click.echo(redact.scrub(f"pulled {data['resolved']} on {data['runtime']} "
                            f"(credentials: {who})"))


@click.command(name="deploy")
@click.argument("image")
@click.option("--name", "name", required=True, help="Container name.")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE",
              help="Environment variable; repeatable. Values are never logged.")
@click.option("--connector-id", help="Value of the opencti-connector-id label (default: the name).")
@click.option("--stop-timeout", type=click.IntRange(min=0), default=10, show_default=True,
              help="Seconds to wait for the old container to stop when replacing it.")
@json_option
def deploy_command(image: str, name: str, env: tuple[str, ...], connector_id: str | None,
                   stop_timeout: int, as_json: bool) -> None:
    """Deploy IMAGE as container NAME: pull, create, start. Same config: nothing to do; changed
    config: the container is replaced (the old one stays until the new one is ready)."""
    from composer_core.engine import progress
    from composer_core.engine.deploy import parse_env, validate_name
    from composer_core.engine.labels import manager_id
    from composer_core.engine.workloads import build_workload, deploy_named
    from composer_core.images.resolve import resolve_image

    validate_name(name)
    variables = parse_env(env)
    app = get_app()
    resolved = resolve_image(image, app.settings, app.plugins)
    with connected(stop_timeout) as (app, backend):
        workload = build_workload(resolved, name, variables, manager=manager_id(app.settings),
                                  connector_id=connector_id or name, state="started",
                                  settings=app.settings, plugins=app.plugins)
        action, observed = deploy_named(backend, workload, app.plugins,
                                        progress=progress.factory(progress.wanted(as_json)))
    # the keys of the container deploy's result, and the workload's state and detail
    data = {"runtime": backend.name, "action": action, "name": observed.name, "id": observed.id,
            "image": resolved.input, "resolved": resolved.ref.normalized(),
            "status": observed.status, "config_hash": workload.config_hash,
            "source": workload.resolution.source
            if action in ("created", "replaced", "updated") else None,
            "state": observed.state, "detail": observed.detail}
    if as_json:
        emit_json(data)
        return
    messages = {"created": "created and started", "replaced": "replaced and started",
                "updated": "updated in place and started",
                "unchanged": "unchanged (same image and env): nothing to do",
                "started": "unchanged, was stopped: started", "stopped": "stopped"}
    click.echo(redact.scrub(f"{observed.name}: {messages[action]} "
                            f"({resolved.ref.normalized()} on {backend.name})"))


@click.command(name="ps")
@json_option
def ps_command(as_json: bool) -> None:
    """List the workloads this manager manages (label opencti-manager=<manager.id>), with their
    replicas (wanted/running) where the backend has replicas."""
    from composer_core.engine.labels import LABEL_MANAGER, manager_id

    with connected() as (app, backend):
        manager = manager_id(app.settings)
        observed = backend.observe({LABEL_MANAGER: manager})
    if as_json:
        emit_json({"runtime": backend.name, "manager": manager,
                   "containers": [o.to_dict() for o in observed]})
        return
    replicas = any(o.replicas_wanted is not None for o in observed)
    headers: tuple[str, ...] = ("NAME", "CONNECTOR", "IMAGE", "STATUS", "CONFIG")
    rows: list[tuple[str | None, ...]] = [
        (o.name, o.connector_id, o.image, _status(o), (o.config_hash or "")[:12]) for o in observed]
    if replicas:
        headers += ("REPLICAS",)
        rows = [(*row, _replicas(o)) for row, o in zip(rows, observed, strict=True)]
    emit_table(headers, rows)


def _status(observed: Observed) -> str:
    """The engine's word, and the detail line when it says more (an orchestrator's node)."""
    detail = observed.detail.strip()
    return observed.status if detail in ("", observed.status) else detail


def _replicas(observed: Observed) -> str:
    if observed.replicas_wanted is None:
        return ""
    return f"{observed.replicas_running or 0}/{observed.replicas_wanted}"


@click.command(name="logs")
@click.argument("name")
@click.option("--tail", type=click.IntRange(min=0),
              help=f"Only the last K lines (default: up to {LOGS_DEFAULT_TAIL}).")
def logs_command(name: str, tail: int | None) -> None:
    """Print the logs of the managed workload NAME."""
    _name(name)
    with connected() as (app, backend):
        current = _managed(backend, app, name)
        text = backend.logs(current, LOGS_DEFAULT_TAIL if tail is None else tail)
    click.echo(text, nl=not text.endswith("\n"))


def _managed(backend: Backend, app: App, name: str) -> Observed:
    from composer_core.engine.labels import manager_id
    from composer_core.engine.workloads import managed_named

    return managed_named(backend, name, manager_id(app.settings))


def _name(name: str) -> str:
    from composer_core.engine.deploy import validate_name

    return validate_name(name)


def _done(backend: Backend, name: str, past: str, as_json: bool) -> None:
    if as_json:
        emit_json({"runtime": backend.name, "name": name, "action": past})
    else:
        click.echo(f"{name}: {past}")


@click.command(name="start")
@click.argument("name")
@json_option
def start_command(name: str, as_json: bool) -> None:
    """Start the managed workload NAME."""
    _name(name)
    with connected() as (app, backend):
        backend.set_state(_managed(backend, app, name), "started")
    _done(backend, name, "started", as_json)


@click.command(name="stop")
@click.argument("name")
@click.option("--time", "timeout", type=click.IntRange(min=0), default=10, show_default=True,
              help="Seconds to wait before killing it.")
@json_option
def stop_command(name: str, timeout: int, as_json: bool) -> None:
    """Stop the managed workload NAME."""
    _name(name)
    with connected(timeout) as (app, backend):
        backend.set_state(_managed(backend, app, name), "stopped")
    _done(backend, name, "stopped", as_json)


@click.command(name="rm")
@click.argument("name")
@click.option("--force", "-f", is_flag=True, help="Remove it even if it is running.")
@json_option
def rm_command(name: str, force: bool, as_json: bool) -> None:
    """Remove the managed workload NAME (refused while it runs, unless --force)."""
    from composer_core.errors import ContainerError

    _name(name)
    with connected() as (app, backend):
        current = _managed(backend, app, name)
        if (current.state != "stopped" or current.status == "paused") and not force:
            raise ContainerError(f"container {name!r} is {current.status}",
                                 hint=f"stop it first (`xtm-composer stop {name}`), or use "
                                      "rm --force")
        backend.remove(current)
    _done(backend, name, "removed", as_json)


COMMANDS = [pull_command, deploy_command, ps_command, logs_command, start_command, stop_command,
            rm_command]
