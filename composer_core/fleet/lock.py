"""One pass at a time per manager and engine: a file lock, and what consecutive passes remember.

Two passes of the same manager on the same engine (an operator's ``apply`` while ``run`` loops,
two replicas of ``run``) would plan from the same list and act twice. :class:`PassLock` serialises
them with ``flock`` on a file keyed by the manager id and the engine endpoint, under a runtime
directory (``$XDG_RUNTIME_DIR/xtm-composer``, else ``/run/xtm-composer`` when writable, else
``/tmp/xtm-composer-<uid>``). The kernel releases an ``flock`` when its process exits, ``kill -9``
included: a lock is never left stale. A pass that finds the lock taken says so, and waits (at
most :data:`WAIT_SECONDS`).

The lock also guards a small state file beside it: the consecutive start failures per container
id (:mod:`composer_core.fleet.reconcile` recreates a container that keeps failing to start), so
that separate ``apply`` processes count the same way as one ``run``.

The lock is a courtesy, not the safety: every destructive step of a pass is safe without it
(a failed create removes only the container that very create made; removals go by id).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from composer_core.errors import ComposerError

log = logging.getLogger("xtm_composer.fleet")

WAIT_SECONDS = 900.0
POLL_SECONDS = 0.2
#: how often the waiting message is repeated
REMIND_SECONDS = 30.0
#: the state file is ours and small; anything bigger is not ours: start afresh
STATE_LIMIT = 1 << 20


class PassLockError(ComposerError):
    kind = "pass-lock"


def lock_directory(environ: Mapping[str, str] | None = None) -> Path:
    """Where the locks live: the user's runtime dir, the system one if writable, else /tmp."""
    environ = os.environ if environ is None else environ
    runtime_dir = environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isdir(runtime_dir) and os.access(runtime_dir, os.W_OK):
        return Path(runtime_dir) / "xtm-composer"
    if os.access("/run", os.W_OK) or os.access("/run/xtm-composer", os.W_OK):
        return Path("/run/xtm-composer")
    return Path(f"/tmp/xtm-composer-{os.getuid()}")


def lock_key(manager: str, endpoint: str) -> str:
    return hashlib.sha256(f"{manager}\0{endpoint}".encode()).hexdigest()[:24]


class PassLock:
    """``with PassLock(manager, endpoint) as lock:`` one pass; ``lock.start_failures`` is the
    state consecutive passes share (saved when the block ends)."""

    def __init__(self, manager: str, endpoint: str, *, directory: Path | None = None,
                 wait_seconds: float = WAIT_SECONDS,
                 stop_event: threading.Event | None = None) -> None:
        self.manager = manager
        self.endpoint = endpoint
        self.directory = directory or lock_directory()
        key = lock_key(manager, endpoint)
        self.path = self.directory / f"{key}.lock"
        self.state_path = self.directory / f"{key}.state.json"
        self.wait_seconds = wait_seconds
        self.stop_event = stop_event
        self.start_failures: dict[str, int] = {}
        self._fd: int | None = None

    def __enter__(self) -> PassLock:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(self.directory)
        if not os.path.isdir(self.directory) or os.path.islink(self.directory) \
                or info.st_uid != os.geteuid():
            raise PassLockError(
                f"the lock directory {self.directory} is not a directory of this user: no pass "
                "lock could be taken, this pass did nothing",
                hint="remove it, or set XDG_RUNTIME_DIR to a directory of this user")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            self._acquire(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "manager": self.manager,
                                  "endpoint": self.endpoint}).encode(), 0)
        self.start_failures = self.load_state()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._save_state()
        finally:
            if self._fd is not None:
                os.close(self._fd)  # closing the descriptor releases the flock
                self._fd = None

    def _acquire(self, fd: int) -> None:
        deadline = time.monotonic() + self.wait_seconds
        reminded = 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if reminded:
                    log.info("the other pass finished: this pass goes on")
                return
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            if self.stop_event is not None and self.stop_event.is_set():
                raise PassLockError(f"stopped while waiting for the pass lock {self.path}")
            now = time.monotonic()
            if now >= deadline:
                raise PassLockError(
                    f"another pass of manager {self.manager!r} on {self.endpoint} "
                    f"({self._holder(fd)}) held the lock {self.path} for more than "
                    f"{self.wait_seconds:g} s: this pass did nothing",
                    hint="let the other pass finish (an `apply`, or a `run` loop), or stop it")
            if not reminded or now - reminded >= REMIND_SECONDS:
                log.warning("another pass of manager %s on %s is running (%s): waiting for it "
                            "to finish (lock %s)", self.manager, self.endpoint, self._holder(fd),
                            self.path)
                reminded = now
            time.sleep(min(POLL_SECONDS, max(deadline - now, 0.0)))

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"pid {int(holder['pid'])}"
        except (OSError, ValueError, KeyError, TypeError):
            return "pid unknown"

    def load_state(self) -> dict[str, int]:
        """The consecutive start failures the last pass saved (read without the lock: for a
        dry run, which changes nothing)."""
        try:
            with open(self.state_path, "rb") as handle:
                raw = handle.read(STATE_LIMIT + 1)
            data = json.loads(raw) if len(raw) <= STATE_LIMIT else {}
        except (OSError, ValueError):
            return {}
        failures = data.get("start_failures") if isinstance(data, dict) else None
        if not isinstance(failures, dict):
            return {}
        return {str(k): int(v) for k, v in failures.items()
                if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 1000}

    def _save_state(self) -> None:
        temporary = self.state_path.with_suffix(".tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"start_failures": self.start_failures}, handle)
            os.replace(temporary, self.state_path)
        except OSError as exc:
            log.warning("could not save the pass state %s: %s", self.state_path, exc.strerror)

