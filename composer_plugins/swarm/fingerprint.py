"""A keyed fingerprint of the credential a service was given, so that a rotation is seen.

A swarm stores the ``X-Registry-Auth`` a service was created or updated with and never returns it
(``../shared/docs/orchestrators.md`` §2.6). To tell that the chain's credential differs from the
stored one, the backend labels the service with ``xtm-composer.swarm.credential-id``: an
HMAC-SHA256 of exactly the credential sent (registry, username, password or identity token), under
a random 32-byte key of this machine's, kept in ``$XDG_STATE_HOME/xtm-composer/
credential-fingerprint.key`` (else ``~/.local/state/xtm-composer/...``), created 0600. Without the
key, the label cannot be used to test guesses of the password. Anonymous: no fingerprint. A lost
key gives every fingerprint anew: each service is then updated once (docs/swarm.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path

from composer_core.errors import ComposerError
from composer_core.files import FileReadError, read_bytes
from composer_core.types import AnyCredentials

KEY_BYTES = 32
KEY_FILE = Path("xtm-composer") / "credential-fingerprint.key"


def key_path(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/xtm-composer/credential-fingerprint.key``, else under
    ``~/.local/state`` (``HOME`` of ``environ``, else the user's home)."""
    state = environ.get("XDG_STATE_HOME")
    if state and os.path.isabs(state):
        return Path(state) / KEY_FILE
    home = environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".local" / "state" / KEY_FILE


def _key_error(path: Path, why: str) -> ComposerError:
    return ComposerError(
        f"the swarm backend cannot use its credential fingerprint key {path}: {why}",
        hint=f"fix or remove {path} (a new key is then made: every service is updated once, "
             "with the credential the chain resolves)")


def load_or_create_key(path: Path) -> bytes:
    """The key in ``path``; a new random one (file created 0600, its folder 0700) when there is
    none. Two processes creating it at once end with the same key (``O_EXCL``: the loser reads)."""
    for _ in range(2):
        try:
            key = read_bytes(path, limit=KEY_BYTES * 4, what="credential fingerprint key")
        except FileReadError as exc:
            if not exc.missing:
                raise _key_error(path, exc.reason) from None
        else:
            if len(key) != KEY_BYTES:
                raise _key_error(path, f"it holds {len(key)} bytes, not {KEY_BYTES}")
            return key
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                         0o600)
        except FileExistsError:
            continue  # made by another process meanwhile: read it
        except OSError as exc:
            raise _key_error(path, f"it cannot be created: {exc.strerror or exc}") from None
        key = secrets.token_bytes(KEY_BYTES)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, key)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise _key_error(path, f"it cannot be written: {exc.strerror or exc}") from None
        os.close(fd)
        return key
    raise _key_error(path, "it appeared and could not be read")


class Fingerprints:
    """Fingerprints of credentials under this machine's key, read (or made) on first use."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.path = key_path(environ)
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never the key
        return f"Fingerprints(path={str(self.path)!r})"

    def _secret(self) -> bytes:
        with self._lock:
            if self._key is None:
                self._key = load_or_create_key(self.path)
            return self._key

    def of(self, credentials: AnyCredentials) -> str | None:
        """``hmac-sha256:<hex>`` of exactly what ``X-Registry-Auth`` carries for ``credentials``;
        ``None`` when anonymous (no header, no label)."""
        from composer_plugins.docker.auth import docker_auth_config

        auth = docker_auth_config(credentials)
        if not auth:
            return None
        message = json.dumps(auth, sort_keys=True, separators=(",", ":")).encode("utf-8")
        return "hmac-sha256:" + hmac.new(self._secret(), message, hashlib.sha256).hexdigest()
