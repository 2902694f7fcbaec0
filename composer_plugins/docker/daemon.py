"""What the Docker daemon allows: insecure registries are its setting, not the client's.

Docker decides per registry from ``docker info``'s ``RegistryConfig``: an ``IndexConfigs`` entry
(``--insecure-registry host:port``) says ``Secure: false``, or the registry's address falls in
``InsecureRegistryCIDRs`` (``127.0.0.0/8`` by default). When our settings mark a registry
``insecure: true`` and the daemon does not allow it, the pull fails before anything is sent, with
the exact ``daemon.json`` line that would allow it.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Mapping
from typing import Any

from composer_core.engine.tls import split_host
from composer_core.errors import InsecureRegistryNotAllowed

_DEFAULT_CIDRS = frozenset({"127.0.0.0/8", "::1/128"})


def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    found = []
    for info in infos:
        try:
            found.append(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
        except ValueError:
            continue
    return found


def daemon_allows_insecure(registry_config: Mapping[str, Any], registry: str) -> bool:
    """Docker's own rule (``isSecureIndex``): an explicit index entry wins, else the CIDRs."""
    index = (registry_config.get("IndexConfigs") or {}).get(registry)
    if isinstance(index, Mapping):
        return index.get("Secure") is False
    networks = []
    for cidr in registry_config.get("InsecureRegistryCIDRs") or []:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            continue
    return any(addr in net for addr in _addresses(split_host(registry)) for net in networks
               if addr.version == net.version)


def daemon_json_line(registry_config: Mapping[str, Any], registry: str) -> str:
    """The complete ``insecure-registries`` line: what the daemon allows today, plus ``registry``."""
    current = [name for name, index in (registry_config.get("IndexConfigs") or {}).items()
               if isinstance(index, Mapping) and index.get("Secure") is False
               and not index.get("Official")]
    current += [c for c in registry_config.get("InsecureRegistryCIDRs") or []
                if c not in _DEFAULT_CIDRS]
    if registry not in current:
        current.append(registry)
    return f'"insecure-registries": {json.dumps(current)}'


def require_insecure_allowed(registry_config: Mapping[str, Any], registry: str, *, key: str,
                             endpoint: str) -> None:
    if daemon_allows_insecure(registry_config, registry):
        return
    line = daemon_json_line(registry_config, registry)
    raise InsecureRegistryNotAllowed(
        f"{registry} is marked insecure in the settings ({key}: true), but the Docker "
        f"daemon at {endpoint} does not allow insecure access to it (Docker decides this, not the "
        "client); nothing was pulled",
        hint=f"add this line to the daemon's /etc/docker/daemon.json and restart dockerd:\n"
             f"    {line}\n  or trust the registry's CA instead: "
             f"/etc/docker/certs.d/{registry}/ca.crt")
