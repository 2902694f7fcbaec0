"""The TLS policy of a pull: verify the registry's certificate unless the settings mark it insecure,
and which registries Docker treats as insecure on its own (loopback)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from composer_core.auth.registries import canonical_host
from composer_core.images.reference import InvalidRegistryURL, normalize_registry_url
from composer_core.settings import Settings


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


@dataclass(frozen=True)
class TlsDecision:
    """Whether a pull verifies the registry's TLS certificate, and the settings key that said not to
    (``None`` when nothing in the settings marks the registry insecure)."""

    verify: bool
    setting: str | None
