"""The Docker CLI's default credential store, for a config.json that names none.

When config.json has no ``auths``, no ``credsStore`` and no ``credHelpers`` (or does not exist),
the Docker CLI on Linux uses ``pass`` when the ``pass`` program is installed, else
``secretservice``, provided that ``docker-credential-<that>`` is on PATH (docker/cli,
``credentials.DetectDefaultStore``); a ``docker login`` on such a host stores there. We ask the same
store, fail-soft: the user never named it, so its errors are recorded but never fatal.

An explicit ``"credsStore": ""`` is taken as "no store, on purpose" (the Docker CLI would still
detect one): the way to turn this off.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

from composer_plugins.keychain.helper import find_helper

#: the detection costs a few stats of PATH: kept per PATH for this long
_TTL = 30.0
_detected: dict[str | None, tuple[float, tuple[str, str] | None]] = {}


def applies(data: Mapping[str, Any] | None) -> bool:
    """Whether the Docker CLI would detect a default store for this config.json (``None``: none)."""
    if data is None:
        return True
    return not any(data.get(name) for name in ("auths", "credHelpers")) and "credsStore" not in data


def detect(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(helper name, why it is the one) on the request's PATH, or ``None``."""
    path = environ.get("PATH")
    now = time.monotonic()
    cached = _detected.get(path)
    if cached is not None and cached[0] > now:
        return cached[1]
    search = path if path is not None else os.defpath
    if shutil.which("pass", path=search):
        name, why = "pass", "pass is installed"
    else:
        name, why = "secretservice", "pass is not installed"
    found = (name, why) if find_helper(name, environ) else None
    if len(_detected) >= 16:
        _detected.clear()
    _detected[path] = (now + _TTL, found)
    return found


def clear() -> None:
    """For tests: forget what was detected."""
    _detected.clear()
