"""Built-in credential provider ``containers-auth`` (being written; see issue 4)."""

from __future__ import annotations

from composer_core import hookimpl
from composer_core.types import CredentialProvider, CredentialRequest, NotFound


def lookup(request: CredentialRequest) -> NotFound:
    return NotFound("provider not implemented yet")


@hookimpl
def composer_credential_providers() -> CredentialProvider:
    return CredentialProvider(name="containers-auth", lookup=lookup)
