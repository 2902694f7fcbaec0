"""Choosing and connecting the container engine, and what every runtime plugin shares.

:func:`connect_runtime` turns ``--runtime`` / ``opencti.daemon.selector`` into a connected
:class:`~composer_core.types.Runtime`: a named backend, or ``auto``, which tries ``docker`` then
``podman`` and uses the first that answers (and says which).

The helpers below are shared by the built-in runtime plugins so that both engines behave the same:
the labels that mark a container as ours, the TLS policy read from the settings, and the
classification of an engine's pull-failure text into a typed error.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping

from composer_core import redact
from composer_core.errors import (
    AuthenticationRequired,
    ComposerError,
    ContainerNotFound,
    CredentialsRejected,
    ImageNotFound,
    RegistryError,
    RegistryTLSError,
    RegistryUnreachable,
    RuntimeUnavailable,
    SettingsError,
)
from composer_core.manager import Plugins
from composer_core.reference import InvalidRegistryURL, normalize_registry_url
from composer_core.registries import canonical_host
from composer_core.settings import Settings
from composer_core.types import AnyCredentials, ContainerInfo, Runtime

log = logging.getLogger("xtm_composer.runtime")

AUTO = "auto"
#: ``auto`` asks these engines, in this order.
AUTO_ORDER = ("docker", "podman")
SELECTOR = "opencti.daemon.selector"

#: The labels every container we create carries (the first two as XTM Composer sets them).
LABEL_MANAGER = "opencti-manager"
LABEL_CONNECTOR = "opencti-connector-id"
LABEL_HASH = "opencti-config-hash"


# --- selection ---------------------------------------------------------------------------------


def selected_name(settings: Settings, override: str | None = None) -> str:
    return (override or str(settings.get(SELECTOR, AUTO) or AUTO)).strip()


def connect_runtime(settings: Settings, plugins: Plugins, override: str | None = None) -> Runtime:
    """Connect the engine named by ``override`` (``--runtime``) or the selector setting."""
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
    tried: list[str] = []
    for candidate in AUTO_ORDER:
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
        "no container engine answers (selector auto tried " + ", ".join(AUTO_ORDER) + "):\n    "
        + "\n    ".join(tried),
        hint="start Docker or the Podman API service (`podman system service`), or point "
             "DOCKER_HOST / CONTAINER_HOST (or opencti.daemon.docker.endpoint / "
             "opencti.daemon.podman.endpoint) at it")


# --- managed containers -----------------------------------------------------------------------


def manager_id(settings: Settings) -> str:
    return str(settings.get("manager.id"))


def is_managed(info: ContainerInfo, manager: str) -> bool:
    return info.labels.get(LABEL_MANAGER) == manager


def managed_container(runtime: Runtime, name: str, manager: str) -> ContainerInfo:
    """The container ``name`` if this manager manages it; :class:`ContainerNotFound` otherwise."""
    info = runtime.inspect(name)
    if info is None:
        raise ContainerNotFound(f"no container named {name!r} on {runtime.name}",
                                hint="`xtm-composer ps` lists the containers of this manager")
    if not is_managed(info, manager):
        owner = info.labels.get(LABEL_MANAGER)
        whose = f"manager {owner!r}" if owner else "no xtm-composer manager"
        raise ContainerNotFound(
            f"container {name!r} on {runtime.name} is not managed by this manager "
            f"({LABEL_MANAGER}={manager}); it belongs to {whose}, so it is left alone",
            hint="xtm-composer only touches containers labelled with its manager.id")
    return info


# --- TLS policy --------------------------------------------------------------------------------


def registry_entries(settings: Settings) -> list[tuple[str, Mapping[str, object]]]:
    """The registry blocks of the settings (single block first, then the list), with their key."""
    entries: list[tuple[str, Mapping[str, object]]] = []
    single = settings.get("opencti.daemon.docker.registry")
    if isinstance(single, Mapping) and single.get("url"):
        entries.append(("opencti.daemon.docker.registry", single))
    for i, entry in enumerate(settings.get("opencti.daemon.docker.registries") or []):
        if isinstance(entry, Mapping) and entry.get("url"):
            entries.append((f"opencti.daemon.docker.registries[{i}]", entry))
    return entries


def insecure_key(settings: Settings, registry: str) -> str | None:
    """The settings key marking ``registry`` ``insecure: true``, or ``None`` (verify TLS)."""
    wanted = canonical_host(registry)
    for key, entry in registry_entries(settings):
        try:
            host = canonical_host(normalize_registry_url(str(entry["url"])))
        except InvalidRegistryURL:
            continue
        if host == wanted and entry.get("insecure") is True:
            return key
    return None


def split_host(registry: str) -> str:
    """The host of ``host[:port]`` (IPv6 literals in brackets keep working)."""
    if registry.startswith("["):
        return registry[1:].split("]", 1)[0]
    return registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry


def is_loopback_registry(registry: str) -> bool:
    """Whether Docker would treat ``registry`` as insecure by default: 127.0.0.0/8, ::1, localhost.

    Only literal addresses and ``localhost`` count: no DNS lookup, so the answer is deterministic.
    """
    host = split_host(registry).lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- pull failures -----------------------------------------------------------------------------

_UNAUTHORIZED = ("unauthorized", "authentication required", "no basic auth credentials",
                 "denied", "403 forbidden", "401 unauthorized")
_TLS = ("x509:", "certificate", "server gave http response to https client", "tls:",
        "first record does not look like a tls handshake")
_UNREACHABLE = ("connection refused", "no route to host", "i/o timeout", "no such host",
                "network is unreachable", "connection reset", "context deadline exceeded",
                "dial tcp", "timeout")
_NOT_FOUND = ("manifest unknown", "name unknown", "not found", "does not exist")


def classify_pull_failure(text: str, credentials: AnyCredentials) -> RegistryError:
    """The typed error for an engine's pull-failure ``text`` (kept verbatim as the message).

    A registry answers a missing and a wrong credential alike (``unauthorized: authentication
    required``): what we sent tells them apart, so ``credentials`` decides between
    :class:`AuthenticationRequired` and :class:`CredentialsRejected`.
    """
    engine_text = redact.scrub(text.strip())
    lowered = engine_text.lower()
    if any(word in lowered for word in _TLS):
        return RegistryTLSError(engine_text)
    if any(word in lowered for word in _UNREACHABLE):
        return RegistryUnreachable(engine_text)
    if any(word in lowered for word in _UNAUTHORIZED):
        if credentials.anonymous:
            return AuthenticationRequired(engine_text)
        return CredentialsRejected(engine_text)
    if any(word in lowered for word in _NOT_FOUND):
        return ImageNotFound(engine_text)
    return RegistryError(engine_text)


def reason_of(exc: BaseException) -> str:
    """A short reason for a connection failure: the innermost OS error's text when there is one."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        stack.extend(a for a in current.args if isinstance(a, BaseException))
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                stack.append(linked)
    return redact.scrub(str(exc)) or type(exc).__name__
