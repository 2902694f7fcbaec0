"""Built-in credential provider ``anonymous``: always answers "no credentials"; it ends the chain.

Put it last in ``auth.chain`` to allow anonymous pulls of public images; remove it to make a pull
without credentials an error before anything is sent.
"""

from __future__ import annotations

from composer_core import hookimpl
from composer_core.types import Anonymous, CredentialProvider, CredentialRequest, Found


def lookup(request: CredentialRequest) -> Found:
    return Found(Anonymous, f"no credentials will be sent to {request.registry} (anonymous pull)")


@hookimpl
def composer_credential_providers() -> CredentialProvider:
    return CredentialProvider(name="anonymous", lookup=lookup,
                              description="pull without credentials; ends the chain")
