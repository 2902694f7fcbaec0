"""An engine's pull-failure text -> a typed registry error, shared by every runtime plugin so that
both engines report the same failure the same way."""

from __future__ import annotations

import re

from composer_core import redact
from composer_core.errors import (
    AuthenticationRequired,
    CredentialsRejected,
    ImageNotFound,
    RegistryError,
    RegistryTLSError,
    RegistryUnreachable,
)
from composer_core.types import AnyCredentials

_UNAUTHORIZED = ("unauthorized", "authentication required", "no basic auth credentials",
                 "denied", "403 forbidden", "401 unauthorized")
_TLS = ("x509:", "certificate", "server gave http response to https client", "tls:",
        "first record does not look like a tls handshake")
_UNREACHABLE = ("connection refused", "no route to host", "i/o timeout", "no such host",
                "network is unreachable", "connection reset", "context deadline exceeded",
                "dial tcp", "timeout")
# Go's io.EOF / io.ErrUnexpectedEOF: the registry closed the connection (Docker and Podman both
# say `Get "http://host/v2/": EOF` when a registry dies mid-pull or accepts and hangs up)
_EOF = re.compile(r"(?<![a-z0-9_])(?:unexpected )?eof(?![a-z0-9_])")
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
    if any(word in lowered for word in _UNREACHABLE) or _EOF.search(lowered):
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
