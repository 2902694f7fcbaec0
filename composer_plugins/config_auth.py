"""Built-in credential provider ``config``: credentials from xtm-composer's own settings.

Reads XTM Composer's block ``opencti.daemon.docker.registry.{url, username, password}`` plus
``password_file`` (read at lookup: Docker and Kubernetes secrets), and the list form
``opencti.daemon.docker.registries: [{url, username, password|password_file, insecure}]``.

Scoped: an entry answers only for images whose registry is its url's host[:port]. (XTM Composer
sends its configured credentials with every pull, Docker Hub included; we never do.)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from composer_core import hookimpl
from composer_core.auth.registries import canonical_host
from composer_core.images.reference import InvalidRegistryURL, normalize_registry_url
from composer_core.settings import Settings
from composer_core.types import (
    CredentialProvider,
    CredentialRequest,
    Credentials,
    Failed,
    Found,
    LookupResult,
    NotFound,
)

SINGLE = "opencti.daemon.docker.registry"
LIST = "opencti.daemon.docker.registries"


def configured_registries(settings: Settings) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every registry entry of the settings, with its settings key, in order."""
    single = settings.get(SINGLE)
    if isinstance(single, Mapping) and single.get("url"):
        yield SINGLE, single
    for i, entry in enumerate(settings.get(LIST) or []):
        if isinstance(entry, Mapping) and entry.get("url"):
            yield f"{LIST}[{i}]", entry


def registry_of(entry: Mapping[str, Any]) -> str | None:
    try:
        return canonical_host(normalize_registry_url(str(entry["url"])))
    except InvalidRegistryURL:
        return None


def lookup(request: CredentialRequest) -> LookupResult:
    settings = request.settings
    registry = canonical_host(request.registry)
    seen: list[str] = []
    for key, entry in configured_registries(settings):
        host = registry_of(entry)
        seen.append(host or repr(entry.get("url")))
        if host != registry:
            continue
        username = entry.get("username")
        origin = settings.source(f"{key}.url") if key == SINGLE else settings.source(LIST)
        if not username:
            return NotFound(f"{key} matches {registry} but has no username/password "
                            f"(from {origin})")
        password = entry.get("password")
        password_file = entry.get("password_file")
        if not password and password_file:
            try:
                password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                return Failed(f"{key}.password_file {password_file}: cannot read it "
                              f"({exc.strerror or type(exc).__name__})")
            if not password:
                return Failed(f"{key}.password_file {password_file} is empty")
        if not password:
            return NotFound(f"{key} matches {registry} but has no password (from {origin})")
        creds = Credentials(registry=registry, source="config", username=str(username),
                            password=str(password), key=key,
                            file=password_file if entry.get("password_file") else None)
        where = f"password from {password_file}" if creds.file else f"from {origin}"
        return Found(creds, f"{key} (url {entry['url']}) matches {registry}, user "
                            f"{username!r}, {where}")
    if not seen:
        return NotFound(f"no registry configured ({SINGLE}.url and {LIST} are empty)")
    return NotFound(f"no configured registry matches {registry} (configured: {', '.join(seen)})")


@hookimpl
def composer_credential_providers() -> CredentialProvider:
    return CredentialProvider(name="config", lookup=lookup,
                              description="opencti.daemon.docker.registry / registries settings")
