"""The Docker wire form of one credential: the auth config docker-py encodes as ``X-Registry-Auth``.

Built here, from the typed fields of :class:`~composer_core.types.Credentials`, because it is the
Docker Engine API's format and nobody else's. Exactly one credential, scoped to its registry
(``serveraddress``); an identity token replaces username and password. Anonymous is ``{}``, an
explicit empty auth: with ``None`` docker-py would send whatever its own ``config.json`` holds.
"""

from __future__ import annotations

from composer_core.types import AnyCredentials, Credentials


def docker_auth_config(credentials: AnyCredentials) -> dict[str, str]:
    """The ``auth_config`` of docker-py's ``pull`` for ``credentials`` (``{}`` when anonymous)."""
    if not isinstance(credentials, Credentials):  # anonymous
        return {}
    auth: dict[str, str] = {"serveraddress": credentials.registry}
    if credentials.identity_token:
        auth["identitytoken"] = credentials.identity_token
    else:
        auth["username"] = credentials.username or ""
        auth["password"] = credentials.password or ""
    return auth
