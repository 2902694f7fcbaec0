"""One ``docker-credential-NAME get``, bounded in time and in size, its answer classified.

Why a module of its own: this is where untrusted output meets our logs. The helper's stdout and
stderr are parsed here and never copied anywhere: an answer that is not the protocol's is reported by
its exit status and size only ("helper exited 1 with a non-standard answer (52 bytes, not shown)").

Bounds, so that no helper can hang a pull or exhaust memory (``yes`` as a helper once took 6 GB and
13 s despite a 3 s timeout): ``auth.helper_timeout`` is a wall-clock bound on the whole exchange
(start, stdin, reading both pipes, exit), and at most :data:`LIMIT_OUTPUT` bytes are read from each
pipe. Past either bound the helper is killed with its whole process group: it runs in its own
session, so a shell script's ``sleep`` (or a pinentry) holding the pipes dies with it.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from composer_core.auth.authfile import LIMIT_CREDENTIAL, too_large
from composer_core.files import KiB, MiB

#: The protocol's "not found" answer (stdout, exit 1).
NOT_FOUND_TEXT = "credentials not found in native keychain"
TOKEN_USERNAME = "<token>"
#: the most read from each of the helper's pipes; its answer is a few hundred bytes of JSON
LIMIT_OUTPUT = 1 * MiB
_CHUNK = 64 * KiB


@dataclass(frozen=True, slots=True)
class HelperAnswer:
    """What the helper said, in words that are safe to show; the secret stays in ``secret``.
    ``seconds`` is how long a helper that ran to completion took (``None``: it did not)."""

    outcome: Literal["found", "not-found", "error"]
    detail: str
    username: str | None = None
    secret: str | None = field(default=None, repr=False)
    identity_token: bool = False
    seconds: float | None = None
    timed_out: bool = False

    @property
    def result(self) -> str:
        """The answer as the helper-executions metric words it (docs/metrics.md)."""
        return "timeout" if self.timed_out else self.outcome.replace("-", "_")


def _candidates(name: str, environ: Mapping[str, str]) -> list[str]:
    directories = environ.get("PATH", os.defpath).split(os.pathsep)
    return [os.path.join(d or os.curdir, f"docker-credential-{name}") for d in directories]


def find_helper(name: str, environ: Mapping[str, str]) -> str | None:
    """The helper's path on the request's PATH (never the process's own): the first regular,
    executable file of that name, as a shell finds it."""
    for path in _candidates(name, environ):
        if _is_file(path) and os.access(path, os.X_OK):
            return path
    return None


def non_executable_helper(name: str, environ: Mapping[str, str]) -> str | None:
    """A file of the helper's name on PATH that cannot be executed (say so, rather than "missing")."""
    for path in _candidates(name, environ):
        if _is_file(path):
            return path
    return None


def _is_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def run_get(executable: str, server_url: str, environ: Mapping[str, str],
            timeout: float) -> HelperAnswer:
    started = time.monotonic()
    try:
        proc = subprocess.Popen([executable, "get"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=dict(environ), start_new_session=True)
    except OSError as exc:
        return HelperAnswer("error", f"cannot be run: {exc.strerror or type(exc).__name__}")
    try:
        outcome = _exchange(proc, server_url.encode(), started + timeout)
    finally:
        _stop(proc)
    if outcome == "timeout":
        return HelperAnswer("error", f"timed out: did not answer within {timeout:g} s and was killed "
                                     "(with its process group)", timed_out=True)
    if isinstance(outcome, str):  # the pipe that overflowed
        return HelperAnswer("error", f"credential too large: printed more than {LIMIT_OUTPUT // MiB} MiB "
                                     f"on {outcome}, the most read from a credential helper; it was "
                                     "killed (nothing of it is shown)")
    out, err = outcome
    answer = classify(proc.returncode, out, err)
    return HelperAnswer(answer.outcome, answer.detail, answer.username, answer.secret,
                        answer.identity_token, time.monotonic() - started)


def _exchange(proc: subprocess.Popen[bytes], stdin: bytes,
              deadline: float) -> tuple[bytes, bytes] | str:
    """Write ``stdin``, read both pipes until EOF and wait for the exit, all before ``deadline``.
    Returns (stdout, stderr), ``"timeout"``, or the name of a pipe that passed :data:`LIMIT_OUTPUT`."""
    assert proc.stdin and proc.stdout and proc.stderr
    stdin_fd, out_fd, err_fd = proc.stdin.fileno(), proc.stdout.fileno(), proc.stderr.fileno()
    names = {out_fd: "stdout", err_fd: "stderr"}
    buffers = {out_fd: bytearray(), err_fd: bytearray()}
    pending = memoryview(stdin)
    with selectors.DefaultSelector() as selector:
        for fd in (stdin_fd, out_fd, err_fd):
            os.set_blocking(fd, False)
        selector.register(stdin_fd, selectors.EVENT_WRITE)
        for fd in names:
            selector.register(fd, selectors.EVENT_READ)
        # each turn moves at least one byte or closes a pipe; the deadline bounds the rest
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            for key, _ in selector.select(remaining):
                if key.fd == stdin_fd:
                    try:
                        pending = pending[os.write(stdin_fd, pending[:_CHUNK]):]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # the helper does not read its stdin: its business
                        pending = pending[len(pending):]
                    if not pending:
                        selector.unregister(stdin_fd)
                        proc.stdin.close()
                    continue
                try:
                    chunk = os.read(key.fd, _CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffers[key.fd] += chunk
                if len(buffers[key.fd]) > LIMIT_OUTPUT:
                    return names[key.fd]
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0.001))
    except subprocess.TimeoutExpired:
        return "timeout"
    return bytes(buffers[out_fd]), bytes(buffers[err_fd])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill what is left of the helper's process group, reap it, close the pipes."""
    # only while the helper is unreaped: its group id cannot have been reused by another process
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            if proc.poll() is None:
                proc.kill()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:  # the unsent rest of stdin, on a helper that is gone
                pass
    try:
        proc.wait(timeout=1)
    except subprocess.TimeoutExpired:  # not reapable yet (a kernel in uninterruptible sleep)
        pass


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
    size_of = len(username.encode()) + len(secret.encode())
    if size_of > LIMIT_CREDENTIAL:
        return HelperAnswer("error", too_large(size_of))
    if username == TOKEN_USERNAME:
        return HelperAnswer("found", "identity token", None, secret, True)
    return HelperAnswer("found", f"user {username!r}", username, secret)
