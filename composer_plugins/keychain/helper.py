"""One ``docker-credential-NAME get``, bounded by a timeout, its answer classified.

Why a module of its own: this is where untrusted output meets our logs. The helper's stdout and
stderr are parsed here and never copied anywhere: an answer that is not the protocol's is reported by
its exit status and size only ("helper exited 1 with a non-standard answer (52 bytes, not shown)").

The helper runs in its own session so that on timeout the whole process group is killed: a shell
script's ``sleep`` (or a pinentry) would otherwise keep the pipes open and the read would hang.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

#: The protocol's "not found" answer (stdout, exit 1).
NOT_FOUND_TEXT = "credentials not found in native keychain"
TOKEN_USERNAME = "<token>"


@dataclass(frozen=True, slots=True)
class HelperAnswer:
    """What the helper said, in words that are safe to show; the secret stays in ``secret``."""

    outcome: Literal["found", "not-found", "error"]
    detail: str
    username: str | None = None
    secret: str | None = field(default=None, repr=False)
    identity_token: bool = False
    seconds: float = 0.0


def find_helper(name: str, environ: Mapping[str, str]) -> str | None:
    """The helper's path on the request's PATH (never the process's own)."""
    return shutil.which(f"docker-credential-{name}", path=environ.get("PATH", os.defpath))


def run_get(executable: str, server_url: str, environ: Mapping[str, str],
            timeout: float) -> HelperAnswer:
    started = time.monotonic()
    try:
        proc = subprocess.Popen([executable, "get"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=dict(environ), start_new_session=True)
    except OSError as exc:
        return HelperAnswer("error", f"cannot be run: {exc.strerror or type(exc).__name__}")
    try:
        out, err = proc.communicate(server_url.encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return HelperAnswer("error", f"did not answer within {timeout:g} s and was killed")
    seconds = time.monotonic() - started
    answer = classify(proc.returncode, out, err)
    return HelperAnswer(answer.outcome, answer.detail, answer.username, answer.secret,
                        answer.identity_token, seconds)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        proc.communicate(timeout=1)
    except subprocess.TimeoutExpired:
        # something left the process group and still holds the pipes: stop reading them
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()


def classify(returncode: int, out: bytes, err: bytes) -> HelperAnswer:
    """Map the helper's exit status and stdout to an answer (``err`` only counts)."""
    text = out.decode("utf-8", "replace").strip()
    size = f"{len(out)} bytes on stdout, {len(err)} on stderr, not shown"
    if text == NOT_FOUND_TEXT:
        return HelperAnswer("not-found", NOT_FOUND_TEXT)
    if returncode < 0:
        return HelperAnswer("error", f"was killed by signal {-returncode}")
    if returncode != 0:
        return HelperAnswer("error", f"exited {returncode} with a non-standard answer ({size}); "
                                     f"the protocol's 'not found' is {NOT_FOUND_TEXT!r}")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        data = None
    fields = (data.get("Username", ""), data.get("Secret", "")) if isinstance(data, dict) else None
    if fields is None or not all(isinstance(f, str) for f in fields):
        return HelperAnswer("error", "exited 0 with a non-standard answer "
                                     f"({size})")
    username, secret = fields
    if not username and not secret:
        return HelperAnswer("not-found", "empty Username and Secret (not found)")
    if not secret:
        return HelperAnswer("error", "answered a Username without a Secret")
    if username == TOKEN_USERNAME:
        return HelperAnswer("found", "identity token", None, secret, True)
    return HelperAnswer("found", f"user {username!r}", username, secret)
