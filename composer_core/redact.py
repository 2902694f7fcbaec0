"""The process-wide register of secrets, and the text redactor built on it.

Every password, token or helper secret that xtm-composer holds is registered here the moment it
exists (settings load, :class:`composer_core.types.Credentials` creation). The log filter and the CLI's
error printer pass their text through :func:`scrub`, so that no path, at any level, prints one.
"""

from __future__ import annotations

import threading

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


def clear() -> None:
    """For tests only."""
    global _ordered
    with _lock:
        _secrets.clear()
        _ordered = ()
