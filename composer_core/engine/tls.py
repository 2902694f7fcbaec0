"""The TLS policy of a pull: verify the registry's certificate unless the settings mark it insecure,
and which registries Docker treats as insecure on its own (loopback).

Engines receive a :class:`TlsDecision` (verify or not, and the setting that decided it), not the
whole settings: :func:`tls_decision` takes it from the registry block, parsed once
(:func:`composer_core.settings.registry.registry_settings`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from composer_core.settings import Settings
from composer_core.settings.registry import registry_settings


@dataclass(frozen=True)
class TlsDecision:
    """Whether to verify the registry's TLS certificate; ``setting`` is the settings key that said
    ``insecure: true`` (``opencti.daemon.docker.registries[1].insecure``), or ``None``."""

    verify: bool
    setting: str | None = None


def tls_decision(settings: Settings, registry: str) -> TlsDecision:
    """The decision for pulls from ``registry`` (``host[:port]``, any spelling)."""
    entry = registry_settings(settings).insecure_entry(registry)
    if entry is None:
        return TlsDecision(verify=True)
    return TlsDecision(verify=False, setting=f"{entry.key}.insecure")


def insecure_key(settings: Settings, registry: str) -> str | None:
    """The settings key of the entry marking ``registry`` ``insecure: true``, or ``None``."""
    entry = registry_settings(settings).insecure_entry(registry)
    return entry.key if entry is not None else None


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

