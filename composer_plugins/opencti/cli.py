"""``xtm-composer opencti status [--json]`` and ``xtm-composer keygen PATH``."""

from __future__ import annotations

import sys
from typing import Any

import click

from composer_core.cli.context import get_app
from composer_core.cli.output import emit_json, emit_table, json_option


def _first(exc: Exception) -> str:
    from composer_core import redact

    message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    return redact.scrub(str(message).splitlines()[0])


def _engine_plan(app: Any, source: Any, state: Any) -> tuple[dict[str, Any], str | None]:
    """connector id -> (action, reason) of the next pass, from a dry run; or the engine's error."""
    from composer_core.engine.select import connect_runtime
    from composer_core.fleet.sources import SourceReconciler

    try:
        backend = connect_runtime(app.settings, app.plugins, app.runtime_override)
    except Exception as exc:  # noqa: BLE001 - the platform side is still worth showing
        return {}, _first(exc)
    try:
        result = SourceReconciler(backend, app.settings, app.plugins, source).run_desired(
            state, dry_run=True)
    except Exception as exc:  # noqa: BLE001
        return {}, _first(exc)
    finally:
        backend.close()
    plan: dict[str, Any] = {}
    for step in result.steps:
        plan.setdefault(step.id, []).append(f"{step.action} {step.name}: {step.reason}")
    return plan, None


def _describe(app: Any, mapped: Any) -> dict[str, Any]:
    from composer_core.auth.chain import resolve_credentials
    from composer_core.images.resolve import resolve_image

    entry = mapped.to_dict()
    try:
        resolved = resolve_image(mapped.image, app.settings, app.plugins)
        entry["resolved_image"] = resolved.ref.normalized()
        entry["credential_source"] = resolve_credentials(resolved, app.settings,
                                                         app.plugins).source
    except Exception as exc:  # noqa: BLE001
        entry["resolved_image"] = None
        entry["credential_source"] = f"error: {_first(exc)}"
    return entry


def collect_status(app: Any) -> dict[str, Any]:
    from composer_core import redact
    from composer_plugins.opencti.client import PlatformClient
    from composer_plugins.opencti.config import read_config
    from composer_plugins.opencti.crypto import load_private_key
    from composer_plugins.opencti.mapping import map_listing
    from composer_plugins.opencti.source import OpenCTISource

    config = read_config(app.settings)
    report: dict[str, Any] = {
        "platform": redact.hide_userinfo(config.url), "reachable": False, "version": None,
        "manager": {"id": config.manager_id, "name": config.manager_name, "registered": False,
                    "active": False},
        "key": None, "connectors": [], "errors": []}
    key = None
    try:
        key = load_private_key(config.key_pem, config.key_origin)
        report["key"] = {"origin": key.origin, "bits": key.bits}
    except Exception as exc:  # noqa: BLE001
        report["errors"].append(f"private key: {_first(exc)}")
    client = PlatformClient(config)
    try:
        try:
            report["version"] = client.version()
            report["reachable"] = True
        except Exception as exc:  # noqa: BLE001
            report["errors"].append(_first(exc))
            return report
        try:
            client.ping()
            report["manager"]["registered"] = report["manager"]["active"] = True
        except Exception as exc:  # noqa: BLE001
            report["errors"].append(f"registration: {_first(exc)}")
        try:
            listing = map_listing(client.connectors(), key, config)
        except Exception as exc:  # noqa: BLE001
            report["errors"].append(f"listing: {_first(exc)}")
            return report
        report["connectors"] = [_describe(app, m) for m in listing]
        if key is not None:
            source = OpenCTISource(config, client=client, key=key)
            source.listing = listing
            from composer_core.fleet.sources import DesiredState

            state = DesiredState([m.connector for m in listing if m.connector is not None],
                                 held={m.id: m.problem for m in listing if m.problem},
                                 names={m.id: m.name for m in listing})
            plan, engine_error = _engine_plan(app, source, state)
            for entry in report["connectors"]:
                entry["next_pass"] = plan.get(entry["id"], []) if engine_error is None else \
                    [f"unknown: the engine: {engine_error}"]
    finally:
        client.close()
    return report


@click.group(name="opencti")
def opencti_group() -> None:
    """The OpenCTI platform as the source of desired state (manager.source: opencti)."""


@opencti_group.command(name="status")
@json_option
def status_command(as_json: bool) -> None:
    """Is the platform reachable, its version, this manager's registration, and each listed
    connector: requested and current status, image as resolved, credential source, decryption,
    what the next pass would do. Pings the platform once; changes nothing. Exits 16 when the
    platform cannot be reached or its listing fails."""
    from composer_plugins.opencti.client import PlatformError

    report = collect_status(get_app())
    if as_json:
        emit_json(report)
    else:
        manager = report["manager"]
        reachable = f"reachable, OpenCTI {report['version']}" if report["reachable"] else "unreachable"
        click.echo(f"platform: {report['platform']} ({reachable})")
        registered = "registered, active" if manager["registered"] else "not registered"
        click.echo(f"manager: {manager['id']} ({manager['name']}), {registered}")
        key = report["key"]
        click.echo(f"private key: {key['origin']} ({key['bits']} bits)" if key else "private key: unusable")
        rows = [(c["id"], c["name"], c["requested_status"], c["current_status"] or "-",
                 c.get("resolved_image") or c["image"], c.get("credential_source") or "-",
                 c["decryption"], "; ".join(c.get("next_pass") or []) or "-")
                for c in report["connectors"]]
        if rows:
            emit_table(("ID", "NAME", "REQUESTED", "CURRENT", "IMAGE", "CREDENTIALS", "DECRYPTION",
                        "NEXT PASS"), rows)
        for c in report["connectors"]:
            if c["problem"]:
                click.echo(f"held: {c['id']} ({c['name']}): {c['problem']}", err=True)
        for error in report["errors"]:
            click.echo(f"error: {error}", err=True)
    listing_failed = any(e.startswith("listing:") for e in report["errors"])
    if not report["reachable"] or listing_failed:
        # sys.exit, not click's Exit: the entry point runs click with standalone_mode=False,
        # where an Exit's code is returned, not used
        sys.exit(PlatformError.exit_code)


@click.command(name="keygen")
@click.argument("path", type=click.Path(dir_okay=False))
def keygen_command(path: str) -> None:
    """Generate the manager's private key: RSA 4096, PKCS#8 PEM, mode 600, at PATH (never
    replacing an existing file). Point manager.credentials_key_filepath at it."""
    from composer_plugins.opencti.crypto import generate_key_file

    key = generate_key_file(path)
    click.echo(f"wrote a {key.bits}-bit RSA private key (PKCS#8 PEM, mode 600) to {path}")
    click.echo(f"set manager.credentials_key_filepath: {path}")
