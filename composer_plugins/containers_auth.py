"""Built-in credential provider ``containers-auth``: Podman's, Buildah's and Skopeo's ``auth.json``.

Files, as containers/image reads them (from the request's environment): ``REGISTRY_AUTH_FILE`` alone
when it is set; else ``$XDG_RUNTIME_DIR/containers/auth.json`` (when ``XDG_RUNTIME_DIR`` is set), then
``$XDG_CONFIG_HOME/containers/auth.json`` (default ``~/.config/containers/auth.json``). The first file
holding an entry for the image answers.

Keys may be path-scoped (``quay.io/team/app``): they match whole path segments, most specific first,
and a path-scoped key never falls back to the whole host. A key with a scheme, a tag or a digest is
skipped with its reason. Unlike containers/image, Docker's config.json is *not* read as a last
fallback: ``docker-config`` is its own link of the chain. An unreadable or malformed file is
recorded and the next file is still read (containers/image would abort the pull).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from composer_core import hookimpl
from composer_core.auth.authfile import AuthFileError, best_match, keys_text, read_auth_file, warn_once
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

NAME = "containers-auth"
log = logging.getLogger("xtm_composer.auth.containers_auth")


def auth_files(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """The files to read, in order, each with how it was chosen (for details)."""
    explicit = environ.get("REGISTRY_AUTH_FILE")
    if explicit:
        return [(explicit, "REGISTRY_AUTH_FILE")]
    files = []
    runtime_dir = environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        files.append((os.path.join(runtime_dir, "containers", "auth.json"), "XDG_RUNTIME_DIR"))
    config_home = environ.get("XDG_CONFIG_HOME")
    if config_home:
        files.append((os.path.join(config_home, "containers", "auth.json"), "XDG_CONFIG_HOME"))
    elif environ.get("HOME"):
        files.append((os.path.join(environ["HOME"], ".config", "containers", "auth.json"),
                      "~/.config"))
    return files


def lookup(request: CredentialRequest) -> LookupResult:
    registry = canonical_host(request.registry)
    target = f"{registry}/{request.image.path}"
    files = auth_files(request.environ)
    if not files:
        return NotFound("no auth.json to read (REGISTRY_AUTH_FILE, XDG_RUNTIME_DIR, XDG_CONFIG_HOME "
                        "and HOME are all unset)")
    tried: list[str] = []
    errors: list[str] = []
    for path, how in files:
        try:
            parsed = read_auth_file(path, "containers auth file")
        except AuthFileError as exc:
            errors.append(str(exc))
            continue
        if parsed is None:
            tried.append(f"no file at {path} ({how})")
            continue
        auths = parsed.auths(allow_scheme=False)
        if auths.problem:
            errors.append(f"{path}: {auths.problem}")
            continue
        match = best_match(auths, registry, request.image.path)
        skipped = auths.skipped_text()
        entry = match.entry
        if entry is None:
            scoped = (f"; {', '.join(map(repr, match.out_of_scope))} cover other paths only"
                      if match.out_of_scope else "")
            tried.append(f"no entry for {target} in {path} ({keys_text(auths)}){scoped}"
                         + (f"; {skipped}" if skipped else ""))
            continue
        notes = [*tried, *errors]
        if errors:
            warn_once(log, (path, target, *errors), f"credentials for {target} read from {path}, "
                                                     f"after an unusable file: {'; '.join(errors)}")
        if match.rivals:
            notes.append(match.rivals_text())
            warn_once(log, (path, target, entry.key), f"{path}: {match.rivals_text()}")
        if skipped:
            notes.append(skipped)
        credentials = Credentials(registry=registry, source=NAME, username=entry.username,
                                  password=entry.password, identity_token=entry.identity_token,
                                  key=entry.key, file=path)
        return Found(credentials, f"key {entry.key!r} in {path} matches {target} "
                                  f"({entry.describe()})" + "".join(f"; {n}" for n in notes))
    if errors:
        return Failed("; ".join(errors + tried))
    return NotFound("; ".join(tried))


@hookimpl
def composer_credential_providers() -> CredentialProvider:
    return CredentialProvider(name=NAME, lookup=lookup,
                              description="containers auth.json (REGISTRY_AUTH_FILE, XDG_RUNTIME_DIR, "
                                          "~/.config/containers)")
