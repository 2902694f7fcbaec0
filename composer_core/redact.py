"""The process-wide register of secrets, and the text redactor built on it.

Every password, token or helper secret that xtm-composer holds is registered here the moment it
exists (settings load, :class:`composer_core.types.Credentials` creation). The log filter and the CLI's
error printer pass their text through :func:`scrub`, so that no path, at any level, prints one.
"""

from __future__ import annotations

import re
import threading
from typing import Any

_lock = threading.Lock()
_secrets: set[str] = set()
_ordered: tuple[str, ...] = ()
MASK = "******"
# Shorter values would mask ordinary words and digits; a 1-3 character secret is not one worth
# protecting this way (and still never reaches any output through our own code paths).
_MIN_LEN = 4


def register(*values: str | None) -> None:
    global _ordered
    new = [v for v in values if isinstance(v, str) and len(v) >= _MIN_LEN and v not in _secrets]
    if not new:
        return
    with _lock:
        _secrets.update(new)
        # longest first, so that a secret containing another is masked whole
        _ordered = tuple(sorted(_secrets, key=len, reverse=True))


def scrub(text: str) -> str:
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)?[^/@\s]*@")


def hide_userinfo(text: str) -> str:
    """``https://robot:pw@reg.io`` -> ``https://***@reg.io``: URLs a user wrote may carry a password."""
    return _USERINFO.sub(lambda m: f"{m.group(1) or ''}***@", text)


def scrub_data(value: Any) -> Any:
    """:func:`scrub` every string inside ``value``, *before* it is serialised: JSON escaping
    (quotes, backslashes, non-ASCII) would hide a secret from a scrub of the serialised text."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub_data(k): scrub_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_data(v) for v in value]
    return value


def clear() -> None:
    """For tests only."""
    global _ordered
    with _lock:
        _secrets.clear()
        _ordered = ()
