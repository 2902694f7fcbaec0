"""The process-wide register of secrets, and the last-resort text scrubber built on it.

Two promises, kept by two means (docs/credentials.md, "Secrets in output"):

1. **No secret is formatted into text.** Messages are built from key names, types, sizes and
   usernames; a secret only ever travels inside :class:`composer_core.types.Credentials` (or the
   settings) towards an engine's pull call. That protects every secret, however short.
2. **Ordinary output is never garbled.** The scrubber (:func:`scrub`, applied by the log formatter
   and the CLI's printers in case promise 1 is broken somewhere) masks only secrets that are
   *distinctive* (:func:`distinctive`: long and mixed enough that finding one in a text is a leak,
   not a word), and only as whole tokens. A password ``docker`` is never masked inside
   ``unix:///run/docker.sock``: masking it there would garble the line and tell the reader the
   password.

Every password, token or helper secret xtm-composer holds is registered here the moment it exists
(settings load, :class:`composer_core.types.Credentials` creation).
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any

MASK = "******"
#: a distinctive secret is at least this long...
MIN_DISTINCTIVE = 8
#: ...and letters only (one case) or digits only are words and numbers, not leaks; these join words
#: into host names, paths and image names, so they make no mix either
_SEPARATORS = frozenset("-_./:")
#: letters only, but both cases and this long: a random token rather than a word
MIN_MIXED_CASE = 16

_lock = threading.Lock()
_secrets: set[str] = set()
#: the distinctive secrets, longest first (so that a secret containing another is masked whole)
_masked: tuple[str, ...] = ()


def distinctive(secret: str) -> bool:
    """Whether a match of ``secret`` in a text is a leak rather than a word: at least 8 characters
    mixing letters, digits and symbols (two kinds at least; ``-_./:`` are no symbol), or letters of
    both cases at 16 characters or more. ``docker``, ``5101``, ``changeme``, ``docker-registry``
    are not; ``s3cr3t-Pa55``, ``a2bd11c7aade21da``, ``p@ss word`` are."""
    if len(secret) < MIN_DISTINCTIVE:
        return False
    letters = any(c.isalpha() for c in secret)
    digits = any(c.isdigit() for c in secret)
    symbols = any(not c.isalnum() and c not in _SEPARATORS for c in secret)
    if letters + digits + symbols >= 2:
        return True
    return (len(secret) >= MIN_MIXED_CASE and any(c.isupper() for c in secret)
            and any(c.islower() for c in secret))


@functools.lru_cache(maxsize=4096)
def _token(secret: str) -> re.Pattern[str]:
    """``secret`` as a whole token: not preceded or followed by a letter or digit where its own edge
    is one (``Pa55word1`` is not masked inside ``xPa55word12``, which is another value). Compiled
    only for a secret that occurs in a text: registering thousands stays cheap."""
    head = r"(?<![^\W_])" if secret[0].isalnum() else ""
    tail = r"(?![^\W_])" if secret[-1].isalnum() else ""
    return re.compile(head + re.escape(secret) + tail)


def register(*values: str | None) -> None:
    global _masked
    new = [v for v in values if isinstance(v, str) and v and v not in _secrets]
    if not new:
        return
    with _lock:
        _secrets.update(new)
        added = tuple(v for v in set(new) if distinctive(v))
        if added:  # a sort of sorted data plus a few: linear
            _masked = tuple(sorted(_masked + added, key=len, reverse=True))


def scrub(text: str) -> str:
    # the hot path: one substring test per secret; the token-aware pattern only where one occurs
    for secret in _masked:
        if secret in text:
            text = _token(secret).sub(MASK, text)
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
    global _masked
    with _lock:
        _secrets.clear()
        _masked = ()
