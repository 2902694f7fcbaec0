"""Built-in credential provider ``docker-config``: the ``auths`` of Docker's ``config.json``.

The file is ``$DOCKER_CONFIG/config.json`` when ``DOCKER_CONFIG`` is set (a directory, and then
``~/.docker`` is *not* read, as in the Docker CLI), else ``$HOME/.docker/config.json``; both read from
the request's environment. Entries hold ``auth`` (base64 of ``user:password``), plaintext
``username``/``password`` or an ``identitytoken``; ``{}`` markers (written by ``docker login`` when a
credential helper holds the secret) mean "not here": the ``keychain`` provider asks the helper.

``DOCKER_AUTH_CONFIG`` (a whole ``auths`` document in the environment, as the Docker CLI reads it
since 2025) is read first: an entry there wins over the file and, the chain going on to
``keychain`` only when nothing was found, over the helpers too, which is the Docker CLI's precedence.

Where we differ from the Docker CLI, on purpose: a bad entry is skipped with its reason instead of
rejecting the file; a path-scoped key (``reg.io/team-a``) covers only ``reg.io/team-a/...`` instead of
being collapsed to its host; several keys for the same registry are resolved deterministically
(most specific, then exact key, then file order) with a warning.
"""

from __future__ import annotations

import logging

from composer_core import hookimpl
from composer_core.auth.authfile import (
    DOCKER_AUTH_CONFIG,
    AuthFile,
    AuthFileError,
    Match,
    best_match,
    keys_text,
    read_docker_auth_env,
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
    from_env = _from_environment(request)
    if isinstance(from_env, Found):
        return from_env
    config = read_docker_config(request.environ)
    result = _memoised(config, request) if isinstance(config, AuthFile) else config
    return _after_environment(from_env, result)


def _memoised(document: AuthFile, request: CredentialRequest) -> LookupResult:
    memo_key = (NAME, request.registry, request.image.path)
    result: LookupResult | None = document.memo.get(memo_key)
    if result is None:
        result = document.memo[memo_key] = _answer(document, request)
    elif isinstance(result, Found):
        reregister(result.credentials)
    return result


def _from_environment(request: CredentialRequest) -> LookupResult | None:
    """``DOCKER_AUTH_CONFIG``: read before the file, and an entry there wins over the file and
    over the credential helpers, as in the Docker CLI (its memory store falls back to the others)."""
    try:
        document = read_docker_auth_env(request.environ)
    except AuthFileError as exc:
        warn_once(log, (DOCKER_AUTH_CONFIG, str(exc)), f"{exc}; it is ignored")
        return Failed(f"{exc} (ignored)")
    return None if document is None else _memoised(document, request)


def _after_environment(from_env: LookupResult | None, result: LookupResult) -> LookupResult:
    """The file's answer, with what DOCKER_AUTH_CONFIG said first (it had nothing for the image)."""
    if from_env is None:
        return result
    env_text = from_env.reason if isinstance(from_env, (NotFound, Failed)) else ""
    if isinstance(result, Found):
        return Found(result.credentials, f"{env_text}; {result.detail}")
    if isinstance(result, Failed) or isinstance(from_env, Failed):
        return Failed(f"{env_text}; {result.reason}")
    return NotFound(f"{env_text}; {result.reason}")


def _answer(config: AuthFile, request: CredentialRequest) -> LookupResult:
    path = config.path
    env = path == DOCKER_AUTH_CONFIG
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
                              key=f"{DOCKER_AUTH_CONFIG}[{entry.key}]" if env else entry.key,
                              file=None if env else path)
    where = (f"in {DOCKER_AUTH_CONFIG} (the environment, read before config.json as the Docker CLI "
             "does)" if env else f"in {path}")
    return Found(credentials, f"key {entry.key!r} {where} matches {target} "
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
