"""Logging as ``manager.logger`` asks: text or JSON lines on stderr, every line scrubbed of secrets."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

from composer_core import redact

LOGGER = "xtm_composer"
_HANDLER_FLAG = "_xtm_composer_handler"


class _Scrubbing(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact.scrub(super().format(record))


class _Json(_Scrubbing):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "target": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # scrubbed before serialising: JSON escaping would hide a secret holding " or \ or é
        return redact.scrub(json.dumps(redact.scrub_data(entry), default=str))


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted: a caller that swaps it (a test
    runner, an embedding application) never leaves the logger writing to a closed stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always the current sys.stderr


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """(Re)configure the ``xtm_composer`` logger; idempotent."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, _HANDLER_FLAG, False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderr()
    setattr(handler, _HANDLER_FLAG, True)
    if fmt.lower() == "json":
        handler.setFormatter(_Json())
    else:
        handler.setFormatter(_Scrubbing("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logger.addHandler(handler)
    name = level.upper()
    logger.setLevel({"WARN": "WARNING"}.get(name, name))
    logger.propagate = True
