"""The core's side of the workload contract: building workloads, deciding, applying.

* :func:`credentials_for`, :func:`workload_of`, :func:`build_workload`: a connector fully
  resolved (image, the one credential, TLS, labels, config hash): what a
  :class:`~composer_core.workload.Backend` is handed.
* :func:`is_current`: the one "does the hash differ?" decision, over what a backend observed.
* :func:`apply_workload`: :meth:`Backend.apply`, and when the registry rejected the credential,
  its provider is told to forget it (a cache must not hand it out again).
* :func:`find_named`: the workload a single-name command (``logs``, ``start``, ``stop``, ``rm``,
  ``deploy``) acts on, refusing one this manager does not manage.
* :func:`deploy_named`: the decision of ``deploy``: create, replace, start, or nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

from composer_core.auth.chain import Resolution, forget_rejected, resolve_credentials
from composer_core.engine.deploy import container_spec, log_deployment
from composer_core.engine.labels import LABEL_HASH, LABEL_MANAGER, name_taken, not_managed
from composer_core.engine.tls import TlsDecision, tls_decision
from composer_core.errors import ContainerNotFound, CredentialsRejected
from composer_core.pluginmanager import Plugins
from composer_core.settings import Settings
from composer_core.types import ContainerSpec, PullProgress, ResolvedImage
from composer_core.workload import Applied, Backend, Observed, Workload, WorkloadState

ProgressCallback = Callable[[PullProgress], None]
DeployAction = Literal["created", "replaced", "updated", "unchanged", "started", "stopped"]


def credentials_for(resolved: ResolvedImage, settings: Settings, plugins: Plugins,
                    environ: Mapping[str, str] | None = None) -> tuple[Resolution, TlsDecision]:
    """The credential chain's answer for ``resolved``'s registry, and the TLS decision for it."""
    resolution = resolve_credentials(resolved, settings, plugins, environ)
    return resolution, tls_decision(settings, resolution.registry)


def workload_of(resolved: ResolvedImage, spec: ContainerSpec, *, connector_id: str,
                state: WorkloadState, resolution: Resolution, tls: TlsDecision) -> Workload:
    """The workload of ``spec`` (what :func:`composer_core.engine.deploy.container_spec` made:
    name, env, command, labels with the config hash), with its credential and TLS decision."""
    return Workload(name=spec.name, connector_id=connector_id, image=resolved,
                    resolution=resolution, tls=tls, env=dict(spec.env), labels=dict(spec.labels),
                    state=state, config_hash=spec.labels[LABEL_HASH], command=spec.command)


def build_workload(resolved: ResolvedImage, name: str, env: Mapping[str, str], *, manager: str,
                   connector_id: str, state: WorkloadState, settings: Settings, plugins: Plugins,
                   command: Sequence[str] | None = None,
                   environ: Mapping[str, str] | None = None) -> Workload:
    """``resolved`` as workload ``name``: the credential chain is asked once, here, for the
    image's registry; the labels and config hash are those of
    :func:`composer_core.engine.deploy.container_spec` (the same as a container deploy's)."""
    spec = container_spec(resolved, name, env, manager=manager, connector_id=connector_id,
                          command=command)
    resolution, tls = credentials_for(resolved, settings, plugins, environ)
    return workload_of(resolved, spec, connector_id=connector_id, state=state,
                       resolution=resolution, tls=tls)


def set_stop_timeout(backend: Backend, seconds: int) -> None:
    """How long a stop may take (``--stop-timeout``, ``stop --time``): a backend that stops
    things gracefully reads its optional ``stop_timeout`` attribute; others have none to set."""
    if hasattr(backend, "stop_timeout"):
        backend.stop_timeout = seconds


def is_current(observed: Observed, labels: Mapping[str, str]) -> bool:
    """``observed`` carries every one of ``labels`` (manager, connector, config hash): the
    workload is what the core wants, whatever its state."""
    return all(observed.labels.get(key) == value for key, value in labels.items())


def is_running(observed: Observed) -> bool:
    return observed.state in ("started", "restarting", "pending")


def apply_workload(backend: Backend, workload: Workload, current: Observed | None,
                   plugins: Plugins, progress: ProgressCallback | None = None) -> Applied:
    """:meth:`Backend.apply`; a rejected credential is forgotten by the provider that gave it.
    A deployment (new, or its config hash changed) is announced with the seed's line first,
    whichever backend makes it."""
    if current is None or current.config_hash != workload.config_hash:
        log_deployment(workload.image)
    try:
        return backend.apply(workload, current, progress=progress)
    except CredentialsRejected:
        forget_rejected(workload.resolution, plugins)
        raise


def find_named(backend: Backend, name: str, manager: str) -> Observed | None:
    """The workload named ``name`` if this manager manages it; ``None`` if there is none; a
    :class:`ContainerError` if it belongs to someone else (it is left alone). One observation."""
    found = next((o for o in backend.observe({}) if o.name == name), None)
    if found is not None and found.labels.get(LABEL_MANAGER) != manager:
        raise not_managed(name, backend.name, found.labels, manager)
    return found


def managed_named(backend: Backend, name: str, manager: str) -> Observed:
    """:func:`find_named`, and :class:`ContainerNotFound` when there is none."""
    found = find_named(backend, name, manager)
    if found is None:
        raise ContainerNotFound(f"no container named {name!r} on {backend.name}",
                                hint="`xtm-composer ps` lists the containers of this manager")
    return found


def deploy_named(backend: Backend, workload: Workload, plugins: Plugins, *,
                 progress: Callable[[str], AbstractContextManager[ProgressCallback | None]]
                 | None = None) -> tuple[DeployAction, Observed]:
    """Deploy one workload named by the user: nothing when it is current and in its state, a
    start (or stop) when only the state differs, else :meth:`Backend.apply` (create, update or
    replace). A name taken by a workload of someone else is refused before any pull."""
    manager = workload.labels[LABEL_MANAGER]
    try:
        current = find_named(backend, workload.name, manager)
    except ContainerNotFound:  # someone else's: deploy refuses as a container error
        raise name_taken(workload.name, backend.name, manager) from None
    rotated = (current is not None and "stored-credentials" in backend.capabilities
               and backend.credentials_changed(workload, current))  # type: ignore[attr-defined]
    if current is not None and is_current(current, workload.labels) and not rotated:
        # as a container deploy always did: up to date and running (or to stay stopped): nothing
        if current.state == "started" or workload.state == "stopped":
            return "unchanged", current
        return "started", backend.set_state(current, "started")
    context = progress(workload.image.pull_name) if progress is not None else nullcontext(None)
    with context as callback:
        applied = apply_workload(backend, workload, current, plugins, callback)
    return applied.action, applied.observed
