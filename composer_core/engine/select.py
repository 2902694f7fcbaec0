"""Choosing and connecting the container engine.

:func:`connect_runtime` turns ``--runtime`` / ``opencti.daemon.selector`` into a connected
:class:`~composer_core.workload.Backend` (docker and podman: a
:class:`~composer_core.engine.container_backend.ContainerBackend` over their container-level
runtime; an orchestrator: its own): a named backend, or ``auto``, which tries the backends named
in ``opencti.daemon.auto_order`` (default ``[docker, podman]``) in that order and uses the first
that answers (and says which). A third-party engine takes part in ``auto`` by being named there.
"""

from __future__ import annotations

import logging

from composer_core.errors import ComposerError, RuntimeUnavailable, SettingsError
from composer_core.images.resolve import ordered
from composer_core.pluginmanager import Plugins
from composer_core.settings import Settings
from composer_core.workload import Backend

log = logging.getLogger("xtm_composer.runtime")

AUTO = "auto"
SELECTOR = "opencti.daemon.selector"
#: the setting listing the engines ``auto`` asks, in order
AUTO_ORDER = "opencti.daemon.auto_order"


def selected_name(settings: Settings, override: str | None = None) -> str:
    return (override or str(settings.get(SELECTOR) or AUTO)).strip()


def connect_runtime(settings: Settings, plugins: Plugins, override: str | None = None) -> Backend:
    """Connect the backend named by ``override`` (``--runtime``) or the selector setting."""
    name = selected_name(settings, override)
    backends = plugins.runtime_backends()
    if name != AUTO:
        if name not in backends:
            origin = "--runtime" if override else f"{SELECTOR} (from {settings.source(SELECTOR)})"
            raise SettingsError(f"{origin}: unknown runtime {name!r}",
                                hint=f"available: {', '.join([AUTO, *sorted(backends)])}")
        runtime = backends[name].connect(settings)
        log.debug("runtime %s at %s", runtime.name, runtime.endpoint)
        return runtime
    candidates = ordered(settings, AUTO_ORDER, backends, plugins, "runtime backends")
    if not candidates:
        raise SettingsError(f"{AUTO_ORDER} (from {settings.source(AUTO_ORDER)}) is empty: "
                            f"{SELECTOR} auto has no engine to try",
                            hint=f"list engines there, such as [docker, podman], or set {SELECTOR} "
                                 "to one engine")
    tried: list[str] = []
    for candidate in candidates:
        backend = backends.get(candidate)
        if backend is None:
            tried.append(f"{candidate}: no such runtime plugin (disabled or failed to load)")
            continue
        try:
            runtime = backend.connect(settings)
        except ComposerError as exc:
            tried.append(f"{candidate}: {exc.message}")
            continue
        log.info("runtime auto: using %s at %s", runtime.name, runtime.endpoint)
        return runtime
    raise RuntimeUnavailable(
        "no container engine answers (selector auto tried " + ", ".join(candidates) + "):\n    "
        + "\n    ".join(tried),
        hint="start Docker or the Podman API service (`podman system service`), or point "
             "DOCKER_HOST / CONTAINER_HOST (or opencti.daemon.docker.endpoint / "
             "opencti.daemon.podman.endpoint) at it")
