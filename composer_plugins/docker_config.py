"""Built-in credential provider ``docker-config``: the ``auths`` of Docker's ``config.json``.

The file is ``$DOCKER_CONFIG/config.json`` when ``DOCKER_CONFIG`` is set (a directory, and then
``~/.docker`` is *not* read, as in the Docker CLI), else ``$HOME/.docker/config.json``; both read from
the request's environment. Entries hold ``auth`` (base64 of ``user:password``), plaintext
``username``/``password`` or an ``identitytoken``; ``{}`` markers (written by ``docker login`` when a
credential helper holds the secret) mean "not here": the ``keychain`` provider asks the helper.

Where we differ from the Docker CLI, on purpose: a bad entry is skipped with its reason instead of
rejecting the file; a path-scoped key (``reg.io/team-a``) covers only ``reg.io/team-a/...`` instead of
being collapsed to its host; several keys for the same registry are resolved deterministically
(most specific, then exact key, then file order) with a warning.
"""

from __future__ import annotations

import logging

from composer_core import hookimpl
from composer_core.auth.authfile import (
    AuthFile,
    Match,
    best_match,
    keys_text,
    read_docker_config,
    reregister,
    warn_once,
)
from composer_core.auth.registries import canonical_host
from composer_core.types import (
    CredentialProvider,
    CredentialRequest,
    Credentials,
    Failed,
    Found,
    LookupResult,
    NotFound,
)

NAME = "docker-config"
log = logging.getLogger("xtm_composer.auth.docker_config")


def lookup(request: CredentialRequest) -> LookupResult:
    config = read_docker_config(request.environ)
    if not isinstance(config, AuthFile):
        return config
    memo_key = (NAME, request.registry, request.image.path)
    result = config.memo.get(memo_key)
    if result is None:
        result = config.memo[memo_key] = _answer(config, request)
    elif isinstance(result, Found):
        reregister(result.credentials)
    return result


def _answer(config: AuthFile, request: CredentialRequest) -> LookupResult:
    path = config.path
    auths = config.auths(allow_scheme=True)
    if auths.problem:
        return Failed(f"{path}: {auths.problem}")
    registry = canonical_host(request.registry)
    target = f"{registry}/{request.image.path}"
    match = best_match(auths, registry, request.image.path)
    notes = _notes(match, auths.skipped_text())
    entry = match.entry
    if entry is None:
        return NotFound(f"no entry for {target} in {path} ({keys_text(auths)}){notes}")
    if match.rivals:
        warn_once(log, (path, target, entry.key), f"{path}: {match.rivals_text()}")
    credentials = Credentials(registry=registry, source=NAME, username=entry.username,
                              password=entry.password, identity_token=entry.identity_token,
                              key=entry.key, file=path)
    return Found(credentials, f"key {entry.key!r} in {path} matches {target} "
                              f"({entry.describe()}){notes}")


def _notes(match: Match, skipped: str) -> str:
    """What a user needs to see next to the answer: conflicts, markers, scoped keys, bad entries."""
    notes = []
    if match.rivals:
        notes.append(match.rivals_text())
    if match.entry is None and match.markers:
        notes.append(f"{', '.join(map(repr, match.markers))}: {{}} marker (the secret is held by a "
                     "credential helper: see keychain)")
    if match.entry is None and match.out_of_scope:
        notes.append(f"{', '.join(map(repr, match.out_of_scope))}: scoped to other paths of this "
                     "registry (the Docker CLI would send them; we do not)")
    if skipped:
        notes.append(skipped)
    return "".join(f"; {note}" for note in notes)


@hookimpl
def composer_credential_providers() -> CredentialProvider:
    return CredentialProvider(name=NAME, lookup=lookup,
                              description="auths of Docker's config.json ($DOCKER_CONFIG or ~/.docker)")
