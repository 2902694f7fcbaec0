"""Registry names and credential-file keys, normalised one way for every provider.

* Hosts compare case-insensitively; the port is significant (``host:5000`` is not ``host``).
* Docker Hub has one canonical name, ``docker.io``; ``index.docker.io``, ``registry-1.docker.io`` and
  the Docker CLI's key ``https://index.docker.io/v1/`` are aliases of it.
* A key's scheme and API-version path (``/v1/``, ``/v2/``) are dropped; any other path is a *scope*
  (``quay.io/team/app``) that matches whole path segments only and never falls back to the host.
* IPv6 literals have one form, bracketed and compressed: ``[::1]:6555``. A key written without the
  brackets is read as the Docker CLI reads it (``https://::1:6555/v2/`` is ``[::1]:6555``: the last
  group is the port when it is one and the rest is an address); one that is no address is skipped
  with its reason, never kept as a key that could not match.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from composer_core.redact import hide_userinfo

HUB = "docker.io"
HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
#: The key the Docker CLI, docker-py and the credential helpers use for Docker Hub.
HUB_KEY = "https://index.docker.io/v1/"


def canonical_host(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # an image's IPv6 registry: [0:0::1]:5000 is [::1]:5000
        try:
            return _ipv6_host(host)
        except InvalidKey:
            return host
    return HUB if host in HUB_ALIASES else host


@dataclass(frozen=True, slots=True)
class KeyScope:
    """A normalised credential key: the registry host[:port] and an optional path scope."""

    host: str
    path: str = ""

    def matches(self, registry: str, repository_path: str) -> int | None:
        """How specifically this key covers ``registry/repository_path``: the number of path
        segments it names (0 for a host-wide key), or ``None`` when it does not cover it."""
        if self.host != canonical_host(registry):
            return None
        if not self.path:
            return 0
        if repository_path == self.path or repository_path.startswith(self.path + "/"):
            return self.path.count("/") + 1
        return None

    def __str__(self) -> str:
        return f"{self.host}/{self.path}" if self.path else self.host


class InvalidKey(ValueError):
    pass


def _ipv6(text: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


def _ipv6_host(host: str) -> str:
    """``[addr]``, ``[addr]:port``, or Docker's reading of an unbracketed ``addr:port``, in the one
    bracketed, compressed form; :class:`InvalidKey` when it holds no IPv6 address."""
    if host.startswith("["):
        inside, bracket, port = host[1:].partition("]")
        address = _ipv6(inside) if bracket else None
        if address is None or (port and not (port[0] == ":" and port[1:].isdigit())):
            raise InvalidKey(f"not an IPv6 address in brackets: {host!r}")
        return f"[{address.compressed}]{port}"
    head, _, tail = host.rpartition(":")
    address = _ipv6(head)
    if address is not None and tail.isdigit() and 0 < int(tail) <= 65535:
        return f"[{address.compressed}]:{tail}"  # as the Docker CLI reads it
    address = _ipv6(host)
    if address is None:
        raise InvalidKey(f"{host!r} is neither a host[:port] nor an IPv6 address (write an IPv6 "
                         "registry in brackets: [::1]:5000)")
    return f"[{address.compressed}]"


def parse_key(key: str) -> KeyScope:
    """Normalise a config.json / auth.json key; raise :class:`InvalidKey` for one that is no key."""
    if not isinstance(key, str) or not key.strip():
        raise InvalidKey("empty key")
    text = key.strip()
    lowered = text.lower()
    for scheme in ("https://", "http://"):
        if lowered.startswith(scheme):
            text = text[len(scheme):]
            break
    else:
        if "://" in text:
            raise InvalidKey(f"unsupported scheme in {hide_userinfo(key)!r}")
    host, _, path = text.partition("/")
    path = path.strip("/")
    if path in ("v1", "v2"):  # API versions, not scopes
        path = ""
    if not host or any(c in host for c in " @?#"):
        raise InvalidKey(f"no registry host in {hide_userinfo(key)!r}")
    if host.startswith("[") or host.count(":") > 1:
        host = _ipv6_host(host.lower())
    if any(c in path for c in "@:?#") or "//" in path:
        raise InvalidKey(f"a key must not hold a tag, a digest or a query: {hide_userinfo(key)!r}")
    return KeyScope(canonical_host(host), path.lower())


def helper_server_url(registry: str) -> str:
    """The server URL a Docker credential helper is asked for (Docker Hub has its own)."""
    return HUB_KEY if canonical_host(registry) == HUB else canonical_host(registry)
