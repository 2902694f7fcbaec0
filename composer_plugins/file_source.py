"""Built-in desired-state source ``file``: the connectors file of ``-f FILE``.

The file is validated as a whole when the source opens (an invalid file: exit 2, before any engine
is contacted) and re-read whenever it changes; an invalid new version keeps the last good one. A
file that may still be being written (modified less than :data:`SETTLE_SECONDS` ago, or changed
while it was read) is read again at the next ask: a file saved in place is truncated, then written,
and its first half may well be valid YAML naming fewer connectors, whose removal nobody asked for.
Its containers carry no platform label, as they always have (:mod:`composer_core.fleet.sources`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from composer_core import hookimpl, redact
from composer_core.errors import ComposerError, UsageError
from composer_core.fleet.connectors import load_connectors
from composer_core.fleet.sources import DesiredState, Observation
from composer_core.records import DesiredStateSource
from composer_core.settings import Settings

log = logging.getLogger("xtm_composer.run")

#: a file modified more recently than this may be mid-write: it is read at a later ask
SETTLE_SECONDS = 0.25


class FileSource:
    name = "file"
    platform: str | None = None
    #: ``run`` asks whether the file changed every second (a ``stat``)
    poll_seconds = 1.0

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.connectors = load_connectors(path)  # invalid at start: exit 2
        self._stamp = self._current_stamp()

    def _current_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def describe(self) -> str:
        return f"{len(self.connectors)} connectors from {self.path}"

    def desired(self) -> DesiredState:
        stamp = self._current_stamp()
        if stamp != self._stamp and _settled(stamp):
            try:
                connectors = load_connectors(self.path)
            except ComposerError as exc:
                if self._current_stamp() == stamp:  # else: read torn, ask again
                    self._stamp = stamp
                    log.error("connectors file %s changed but is invalid, keeping the previous "
                              "version: %s", self.path, redact.scrub(exc.message))
            else:
                if self._current_stamp() == stamp:
                    self._stamp, self.connectors = stamp, connectors
                    log.info("connectors file %s changed: %d connectors", self.path,
                             len(self.connectors))
        return DesiredState(self.connectors)

    def observe(self, observation: Observation) -> None:
        """A file hears nothing back."""

    def close(self) -> None:
        """Nothing to release."""


def _settled(stamp: tuple[int, int] | None) -> bool:
    """Whether a file of this stamp is done being written (a vanished file: at once)."""
    return stamp is None or time.time_ns() - stamp[0] >= SETTLE_SECONDS * 1e9


def open_file_source(settings: Settings, options: Mapping[str, Any]) -> FileSource:
    path = options.get("file")
    if not path:
        raise UsageError("the file source needs a connectors file",
                         hint="pass it with -f FILE, or set manager.source to another source "
                              "(`xtm-composer plugins` lists them)")
    return FileSource(str(path))


@hookimpl
def composer_sources() -> DesiredStateSource:
    return DesiredStateSource(name="file", open=open_file_source, platform=None,
                              description="the connectors file given with -f FILE")
