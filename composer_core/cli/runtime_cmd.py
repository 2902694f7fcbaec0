"""Container commands: ``pull``, ``deploy``, ``ps``, ``logs``, ``start``, ``stop``, ``rm``.

Each connects the runtime chosen by ``--runtime`` / ``opencti.daemon.selector`` (``auto``: Docker,
then Podman) and closes it on the way out. ``ps`` lists only the containers labelled with this
manager's ``manager.id``; ``logs``, ``start``, ``stop`` and ``rm`` refuse any other container.
Structured outputs take ``--json`` and carry the ``runtime`` used. Engine SDKs and rich are
imported only when a command runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from composer_core import redact
from composer_core.cli.context import get_app
from composer_core.cli.output import emit_json, emit_table, json_option
from composer_core.types import Runtime


@contextmanager
def connected() -> Iterator[tuple[Any, Runtime]]:
    from composer_core.engine.select import connect_runtime

    app = get_app()
    runtime = connect_runtime(app.settings, app.plugins, app.runtime_override)
    try:
        yield app, runtime
    finally:
        runtime.close()


def _deployer(app: Any, runtime: Runtime, as_json: bool, stop_timeout: int = 10) -> Any:
    from composer_core.engine import progress
    from composer_core.engine.deploy import Deployer

    return Deployer(runtime, app.settings, app.plugins, stop_timeout=stop_timeout,
                    progress=progress.factory(progress.wanted(as_json)))


@click.command(name="pull")
@click.argument("image")
@json_option
def pull_command(image: str, as_json: bool) -> None:
    """Resolve IMAGE and its credentials, and pull it with exactly that one credential."""
    with connected() as (app, runtime):
        result = _deployer(app, runtime, as_json).pull(image)
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
    from composer_core.engine.deploy import parse_env, validate_name

    validate_name(name)
    variables = parse_env(env)
    with connected() as (app, runtime):
        result = _deployer(app, runtime, as_json, stop_timeout).deploy(
            image, name, variables, connector_id=connector_id)
    if as_json:
        emit_json(result.to_dict())
        return
    data = result.to_dict()
    messages = {"created": "created and started", "replaced": "replaced and started",
                "unchanged": "unchanged (same image and env): nothing to do",
                "started": "unchanged, was stopped: started"}
    click.echo(redact.scrub(f"{data['name']}: {messages[data['action']]} "
                            f"({data['resolved']} on {data['runtime']})"))


@click.command(name="ps")
@json_option
def ps_command(as_json: bool) -> None:
    """List the containers this manager manages (label opencti-manager=<manager.id>)."""
    from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_HASH, LABEL_MANAGER, manager_id

    with connected() as (app, runtime):
        manager = manager_id(app.settings)
        containers = runtime.list({LABEL_MANAGER: manager})
    if as_json:
        emit_json({"runtime": runtime.name, "manager": manager,
                   "containers": [c.to_dict() for c in containers]})
        return
    rows = [(c.name, c.labels.get(LABEL_CONNECTOR), c.image, c.status,
             (c.labels.get(LABEL_HASH) or "")[:12]) for c in containers]
    emit_table(("NAME", "CONNECTOR", "IMAGE", "STATUS", "CONFIG"), rows)


@click.command(name="logs")
@click.argument("name")
@click.option("--tail", type=click.IntRange(min=0), help="Only the last K lines.")
def logs_command(name: str, tail: int | None) -> None:
    """Print the logs of the managed container NAME."""
    _name(name)
    with connected() as (app, runtime):
        _managed(runtime, app, name)
        text = runtime.logs(name, tail=tail)
    click.echo(text, nl=not text.endswith("\n"))


def _managed(runtime: Runtime, app: Any, name: str) -> Any:
    from composer_core.engine.labels import managed_container, manager_id

    return managed_container(runtime, name, manager_id(app.settings))


def _name(name: str) -> str:
    from composer_core.engine.deploy import validate_name

    return validate_name(name)


def _done(runtime: Runtime, name: str, past: str, as_json: bool) -> None:
    if as_json:
        emit_json({"runtime": runtime.name, "name": name, "action": past})
    else:
        click.echo(f"{name}: {past}")


@click.command(name="start")
@click.argument("name")
@json_option
def start_command(name: str, as_json: bool) -> None:
    """Start the managed container NAME."""
    _name(name)
    with connected() as (app, runtime):
        _managed(runtime, app, name)
        runtime.start(name)
    _done(runtime, name, "started", as_json)


@click.command(name="stop")
@click.argument("name")
@click.option("--time", "timeout", type=click.IntRange(min=0), default=10, show_default=True,
              help="Seconds to wait before killing it.")
@json_option
def stop_command(name: str, timeout: int, as_json: bool) -> None:
    """Stop the managed container NAME."""
    _name(name)
    with connected() as (app, runtime):
        _managed(runtime, app, name)
        runtime.stop(name, timeout=timeout)
    _done(runtime, name, "stopped", as_json)


@click.command(name="rm")
@click.argument("name")
@click.option("--force", "-f", is_flag=True, help="Remove it even if it is running.")
@json_option
def rm_command(name: str, force: bool, as_json: bool) -> None:
    """Remove the managed container NAME (refused while it runs, unless --force)."""
    from composer_core.errors import ContainerError

    _name(name)
    with connected() as (app, runtime):
        info = _managed(runtime, app, name)
        if info.status in ("running", "restarting", "paused") and not force:
            raise ContainerError(f"container {name!r} is {info.status}",
                                 hint=f"stop it first (`xtm-composer stop {name}`), or use "
                                      "rm --force")
        runtime.remove(name, force=force)
    _done(runtime, name, "removed", as_json)


COMMANDS = [pull_command, deploy_command, ps_command, logs_command, start_command, stop_command,
            rm_command]
