"""Built-in credential provider ``config``: credentials from xtm-composer's own settings.

Reads the registry block of the settings (parsed once by
:func:`composer_core.settings.registry.registry_settings`): XTM Composer's
``opencti.daemon.docker.registry.{url, username, password}`` (or master's
``opencti.daemon.registry.{server, username, password, email}``) plus ``password_file`` (read at
lookup: Docker and Kubernetes secrets), and the list form
``opencti.daemon.docker.registries: [{url, username, password|password_file, insecure}]``.
The core owns those keys (their defaults and validation): the ``registry-prefix`` resolver and the
TLS policy read them too, with or without this plugin.

Scoped: an entry answers only for images whose registry is its url's host[:port]. (XTM Composer
sends its configured credentials with every pull, Docker Hub included; we never do.)
"""

from __future__ import annotations

from composer_core import hookimpl
from composer_core.auth.registries import canonical_host
from composer_core.files import LIMIT_SECRET_FILE, FileReadError, read_text
from composer_core.settings.registry import LIST, SINGLE, RegistryEntry, registry_settings
from composer_core.types import (
    CredentialProvider,
    CredentialRequest,
    Credentials,
    Failed,
    Found,
    LookupResult,
    NotFound,
)

NAME = "config"


def read_password_file(entry: RegistryEntry) -> str | Failed:
    """The password in ``entry.password_file`` (its first line ending stripped), or why not."""
    assert entry.password_file is not None
    try:
        password = read_text(entry.password_file, limit=LIMIT_SECRET_FILE,
                             what=f"{entry.key}.password_file").rstrip("\r\n")
    except FileReadError as exc:
        return Failed(exc.reason)
    if not password:
        return Failed(f"{entry.key}.password_file {entry.password_file} is empty")
    return password


def lookup(request: CredentialRequest) -> LookupResult:
    registries = registry_settings(request.settings)
    registry = canonical_host(request.registry)
    if not registries.entries:
        return NotFound(f"no registry configured ({SINGLE}.url and {LIST} are empty)")
    entry = registries.find(registry)
    if entry is None:
        configured = ", ".join(e.registry for e in registries.entries)
        return NotFound(f"no configured registry matches {registry} (configured: {configured})")
    if not entry.username:
        return NotFound(f"{entry.key} matches {registry} but has no username/password "
                        f"(from {entry.origin})")
    password = entry.password
    if not password and entry.password_file:
        read = read_password_file(entry)
        if isinstance(read, Failed):
            return read
        password = read
    if not password:
        return NotFound(f"{entry.key} matches {registry} but has no password (from {entry.origin})")
    creds = Credentials(registry=registry, source=NAME, username=entry.username, password=password,
                        key=entry.key, file=entry.password_file)
    where = f"password from {entry.password_file}" if creds.file else f"from {entry.origin}"
    return Found(creds, f"{entry.key} (url {entry.url}) matches {registry}, user "
                        f"{entry.username!r}, {where}")


@hookimpl
def composer_credential_providers() -> CredentialProvider:
    return CredentialProvider(name=NAME, lookup=lookup,
                              description="opencti.daemon.docker.registry / registries settings")
