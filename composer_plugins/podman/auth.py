"""The Podman wire form of one credential: the ``X-Registry-Auth`` header of the libpod pull.

Base64url JSON of an auth *map*, built from the typed fields of
:class:`~composer_core.types.Credentials`. The map form (``{registry: {"username", "password"}}``
or ``{registry: {"identitytoken"}}``) is what the Podman service scopes per registry: it writes it
to a temporary auth file and looks each registry up there. A single config (``{"username",
"password", "serveraddress"}``) would be sent by the service to *every* registry the pull contacts
(registries.conf mirrors, short-name candidates...). Anonymous is ``{}``, an empty map: no
credentials, and not the service's own (podman-py sends no header at all, and the service then
uses its own user's auth files: podman-py#553).
"""

from __future__ import annotations

import base64
import json

from composer_core.types import AnyCredentials, Credentials


def podman_auth_map(credentials: AnyCredentials) -> dict[str, dict[str, str]]:
    """``{registry: {...}}`` for ``credentials``; ``{}`` when anonymous."""
    if not isinstance(credentials, Credentials):  # anonymous
        return {}
    if credentials.identity_token:
        entry = {"identitytoken": credentials.identity_token}
    else:
        entry = {"username": credentials.username or "", "password": credentials.password or ""}
    return {credentials.registry: entry}


def registry_auth_header(credentials: AnyCredentials) -> str:
    """The ``X-Registry-Auth`` value for ``credentials``."""
    return base64.urlsafe_b64encode(json.dumps(podman_auth_map(credentials)).encode()).decode()
