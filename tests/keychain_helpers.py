"""Credential helpers and credential files for the credential-chain tests.

* :func:`pass_store` (session-scoped): Debian's real ``docker-credential-pass`` on a throwaway gpg key
  and password store (GNUPGHOME and PASSWORD_STORE_DIR in temporary folders). Missing: a failure
  when ``CI=true``, else a skip.
* :func:`write_helper`: small ``docker-credential-*`` shell scripts for the shapes a real keychain
  cannot be made to produce on demand (non-standard "not found", garbage, exit 1, a hang, a counter).
  They are real executables run through the real provider; nothing of ours is mocked.
* ``clean_helper_cache`` (autouse where imported): the keychain cache is process-wide.

Every secret a test uses is listed in :data:`SECRETS`, for the leak scans.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from composer_core.auth import authfile
from composer_core.images.reference import ImageRef
from composer_core.settings import Settings
from composer_core.types import CredentialRequest
from composer_plugins.keychain import CACHE, default_store

SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"

# Every secret used by the credential tests; each is distinctive so that a scan cannot miss it.
DOCKER_PASSWORD = "dcfg-Pa55-7f3e9a1b"
DOCKER_TOKEN = "dcfg-IdToken-51c0ffee"
PODMAN_PASSWORD = "podm-Pa55-a8b7c6d5"
ENV_PASSWORD = "envcfg-Pa55-3c4d5e6f"  # in DOCKER_AUTH_CONFIG
CONFIG_PASSWORD = "conf-Pa55-0d1e2f3a"
HELPER_SECRET = "helper-Secret-9e8d7c6b"
HELPER_TOKEN = "helper-IdToken-4b3a2918"
PASS_SECRET = "pass-Secret-13572468"
PASS_TOKEN = "pass-IdToken-86427531"
#: what the misbehaving helpers print: never to be shown either
GARBAGE_SECRET = "garbage-Leak-5a5a5a5a"
BAD_ENTRY_SECRET = "badentry-Leak-6b6b6b6b"
SECRETS = [DOCKER_PASSWORD, DOCKER_TOKEN, PODMAN_PASSWORD, ENV_PASSWORD, CONFIG_PASSWORD, HELPER_SECRET,
           HELPER_TOKEN, PASS_SECRET, PASS_TOKEN, GARBAGE_SECRET, BAD_ENTRY_SECRET]


def b64(text: str, *, padded: bool = True) -> str:
    encoded = b64encode(text.encode()).decode()
    return encoded if padded else encoded.rstrip("=")


SECRETS += [b64(f"docker-user:{DOCKER_PASSWORD}"), b64(f"podman-user:{PODMAN_PASSWORD}"),
            b64(f"env-user:{ENV_PASSWORD}"),
            b64(f"docker-user:{DOCKER_PASSWORD}", padded=False)]


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def request(image: str, settings: Settings, environ: dict[str, str]) -> CredentialRequest:
    ref = ImageRef.parse(image)
    return CredentialRequest(image=ref, registry=ref.registry, settings=settings, environ=environ)


# --- helper scripts ----------------------------------------------------------------------------

HELPERS = {
    # the protocol's "not found"
    "std-notfound": 'cat >/dev/null\necho "credentials not found in native keychain"\nexit 1\n',
    # Docker Desktop's wrapper style: not the standard text
    "odd-notfound": f'cat >/dev/null\necho "No stored credential for $(date) {GARBAGE_SECRET}"\nexit 1\n',
    "garbage": f'cat >/dev/null\necho "<html>login page {GARBAGE_SECRET}</html>"\n',
    "fails": f'cat >/dev/null\necho "keychain locked: {GARBAGE_SECRET}" >&2\necho "error {GARBAGE_SECRET}"\n'
             'exit 1\n',
    "empty": 'url=$(cat)\nprintf \'{"ServerURL":"%s","Username":"","Secret":""}\' "$url"\n',
    "token": 'url=$(cat)\nprintf \'{"ServerURL":"%s","Username":"<token>","Secret":"'
             + HELPER_TOKEN + '"}\' "$url"\n',
}


def write_helper(bin_dir: Path, name: str, body: str) -> Path:
    """Write ``docker-credential-NAME`` (a /bin/sh script) into ``bin_dir`` and make it executable."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def counting_helper(bin_dir: Path, name: str = "count", *, delay: float = 0.0,
                    username: str = "helper-user", secret: str = HELPER_SECRET) -> Path:
    """A helper answering found, appending the server URL it was asked for to ``NAME.calls``."""
    calls = bin_dir / f"{name}.calls"
    nap = f"sleep {delay}\n" if delay else ""
    return write_helper(bin_dir, name, f'url=$(cat)\necho "$url" >> "{calls}"\n{nap}'
                        f'printf \'{{"ServerURL":"%s","Username":"{username}","Secret":"{secret}"}}\' '
                        '"$url"\n')


def hanging_helper(bin_dir: Path, name: str = "hang") -> Path:
    """Sleeps in a child process, whose pid it writes to ``NAME.pid``: the kill must reach it."""
    return write_helper(bin_dir, name, f'sleep 60 &\necho $! > "{bin_dir / (name + ".pid")}"\nwait\n')


def calls(bin_dir: Path, name: str = "count") -> list[str]:
    path = bin_dir / f"{name}.calls"
    return path.read_text().splitlines() if path.exists() else []


def helper_env(home: Path, bin_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """A request environment: HOME, and a PATH with the test helpers first."""
    path = f"{bin_dir}{os.pathsep}{SYSTEM_PATH}" if bin_dir else SYSTEM_PATH
    return {"HOME": str(home), "PATH": path, **extra}


@pytest.fixture(autouse=True)
def clean_helper_cache() -> Iterator[None]:
    CACHE.clear()
    default_store.clear()
    authfile.clear_memo()
    yield
    CACHE.clear()


# --- the real OS-keychain helper ------------------------------------------------------------------


@dataclass
class PassStore:
    """A working ``docker-credential-pass``: ``environ`` holds GNUPGHOME and PASSWORD_STORE_DIR."""

    environ: dict[str, str]

    def store(self, server_url: str, username: str, secret: str) -> None:
        payload = json.dumps({"ServerURL": server_url, "Username": username, "Secret": secret})
        subprocess.run(["docker-credential-pass", "store"], input=payload.encode(), env=self.environ,
                       check=True, capture_output=True, timeout=30)

    def erase(self, server_url: str) -> None:
        subprocess.run(["docker-credential-pass", "erase"], input=server_url.encode(),
                       env=self.environ, check=False, capture_output=True, timeout=30)


def _require(tools: list[str]) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return
    why = f"{', '.join(missing)} not installed (apt-get install golang-docker-credential-helpers pass gnupg)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(why)
    pytest.skip(why)


# one store per test module: modules store entries of their own under the same server URLs
@pytest.fixture(scope="module")
def pass_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PassStore]:
    _require(["docker-credential-pass", "pass", "gpg", "gpgconf"])
    base = tmp_path_factory.mktemp("pass")
    gnupg = base / "gnupg"
    gnupg.mkdir(mode=0o700)
    home = base / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": SYSTEM_PATH, "GNUPGHOME": str(gnupg),
           "PASSWORD_STORE_DIR": str(base / "store")}

    def run(*args: str) -> str:
        return subprocess.run(args, env=env, check=True, capture_output=True, text=True,
                              timeout=120).stdout

    run("gpg", "--batch", "--passphrase", "", "--quick-gen-key", "xtm-composer-tests", "default",
        "default", "never")
    listing = run("gpg", "--batch", "--with-colons", "--list-secret-keys")
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    run("pass", "init", fingerprint)
    try:
        yield PassStore(env)
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False, capture_output=True)
