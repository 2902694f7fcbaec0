"""The ``auths`` JSON shape shared by Docker's config.json and containers' auth.json.

Three providers read these files (``docker-config``, ``keychain``, ``containers-auth``), so the rules
live here once:

* **Reading** (:func:`read_auth_file`): a missing file is "nothing here" (``None``); an unreadable,
  non-UTF-8, non-JSON or non-object file raises :class:`AuthFileError` with a reason that never
  quotes the content. Parsed files are memoised on their stat signature, so a warm resolution costs a
  ``stat`` instead of a read and a JSON parse, and an edited file is read again.
* **Entries** (:func:`parse_auths`): each entry is validated on its own; a bad one is *skipped* with
  its reason and never breaks the file. ``{}`` (and entries without any credential field) are
  markers: "not here". Decoding follows the Docker CLI: standard base64 (unpadded accepted), split
  on the first ``:``, trailing NULs trimmed from the password.
* **Matching** (:func:`best_match`): keys normalised by :func:`composer_core.auth.registries.parse_key`;
  the most specific scope wins, then a key written exactly (``reg.io``, ``https://index.docker.io/v1/``)
  over one that only normalises to it, then file order. Losers of that tie-break are reported so that
  the caller can warn. A path-scoped key never covers another path of its host.

Secrets never leave the :class:`AuthEntry` objects: every reason is built from key names, JSON types
and sizes only.
"""

from __future__ import annotations

import binascii
import json
import logging
import os
import stat
from base64 import b64decode
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from composer_core import redact
from composer_core.auth.registries import HUB, HUB_KEY, InvalidKey, KeyScope, parse_key
from composer_core.files import LIMIT_AUTH_FILE, FileReadError, KiB, MiB, read_bytes
from composer_core.redact import hide_userinfo
from composer_core.types import Failed, NotFound

if TYPE_CHECKING:
    from composer_core.types import AnyCredentials

log = logging.getLogger("xtm_composer.auth.files")
#: the largest credential (username + password or token) accepted from any source: registries and
#: engines refuse auth headers much past this (a 1 MB secret made Podman stop answering), while real
#: tokens are a few KiB
LIMIT_CREDENTIAL = 64 * KiB
_CREDENTIAL_FIELDS = ("auth", "username", "password", "identitytoken")


class AuthFileError(Exception):
    """The file exists but cannot be used at all (unreadable, not JSON, not an object)."""


def json_type(value: object) -> str:
    """A JSON type name for messages: never the value itself, which may be a secret."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


@dataclass(frozen=True, slots=True)
class AuthEntry:
    """One usable credential entry; ``key`` as written in the file, ``index`` its file position."""

    key: str
    scope: KeyScope
    index: int
    username: str | None
    password: str | None = field(repr=False)
    identity_token: str | None = field(repr=False)

    @property
    def exact(self) -> bool:
        """Written exactly as the canonical spelling of its scope (the form ``docker login`` and
        ``podman login`` write), rather than an alias, a scheme or another case."""
        return self.key == str(self.scope) or (self.scope == KeyScope(HUB) and self.key == HUB_KEY)

    def describe(self) -> str:
        return "identity token" if self.identity_token else f"user {self.username!r}"


@dataclass(frozen=True, slots=True)
class Auths:
    """The ``auths`` section, validated: usable entries, ``{}`` markers and skipped entries."""

    entries: tuple[AuthEntry, ...] = ()
    markers: tuple[tuple[str, KeyScope], ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()  # (key as written, reason)
    keys: tuple[str, ...] = ()  # every key as written, in file order
    problem: str | None = None  # the section as a whole is unusable

    def skipped_text(self) -> str:
        return "; ".join(f"entry {hide_userinfo(key)!r} skipped: {why}" for key, why in self.skipped)


class AuthFile:
    """A parsed credential file: the top-level object and its ``auths``, parsed once per key rule."""

    def __init__(self, path: str, data: Mapping[str, Any]) -> None:
        self.path = path
        self.data = data
        self._auths: dict[bool, Auths] = {}
        #: per-file answers of the providers (a lookup result depends only on the file and the
        #: image), dropped with the file when it changes: a warm lookup is a stat and a dict lookup
        self.memo: dict[Hashable, Any] = {}

    def auths(self, *, allow_scheme: bool) -> Auths:
        parsed = self._auths.get(allow_scheme)
        if parsed is None:
            parsed = self._auths[allow_scheme] = parse_auths(self.data, allow_scheme=allow_scheme)
            if parsed.skipped or parsed.problem:
                log.warning("%s: %s", self.path, parsed.problem or parsed.skipped_text())
        return parsed


_memo: dict[str, tuple[tuple[int, ...], AuthFile]] = {}


def read_auth_file(path: str, what: str = "credential file") -> AuthFile | None:
    """The parsed file at ``path``; ``None`` when it does not exist; :class:`AuthFileError` when it
    cannot be used. Read through :func:`composer_core.files.read_bytes`: regular files only, at most
    ``LIMIT_AUTH_FILE`` bytes (``what`` names the file in that error)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuthFileError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if stat.S_ISDIR(st.st_mode):
        raise AuthFileError(f"{path} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        # a FIFO would block the read forever, a device could never end: refused before opening
        raise AuthFileError(f"{path} is not a regular file ({_kind(st.st_mode)}): only regular "
                            "files are read")
    signature = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    cached = _memo.get(path)
    if cached is not None and cached[0] == signature:
        return cached[1]
    try:
        raw = read_bytes(path, limit=LIMIT_AUTH_FILE, what=what)
    except FileReadError as exc:
        if exc.missing:
            return None
        raise AuthFileError(exc.reason) from None
    parsed = AuthFile(path, _decode_json(path, raw))
    _memo[path] = (signature, parsed)
    return parsed


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "a special file"


def _decode_json(path: str, raw: bytes) -> Mapping[str, Any]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AuthFileError(f"{path} is not UTF-8 text (bad byte at offset {exc.start})") from None
    return _parse_json(path, text)


def _parse_json(path: str, text: str) -> Mapping[str, Any]:
    if not text.strip():
        return {}  # like the Docker CLI: an empty file is an empty configuration
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # exc.msg is the parser's complaint ("Expecting ',' delimiter"), never the document
        raise AuthFileError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                            f"column {exc.colno}") from None
    except RecursionError:
        raise AuthFileError(f"{path} is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise AuthFileError(f"{path} must hold a JSON object, found {json_type(data)}")
    return data


#: the environment variable from which recent Docker CLIs read a whole ``auths`` document
DOCKER_AUTH_CONFIG = "DOCKER_AUTH_CONFIG"
_env_memo: dict[str, AuthFile] = {}


def read_docker_auth_env(environ: Mapping[str, str]) -> AuthFile | None:
    """``DOCKER_AUTH_CONFIG`` of the request's environment as an auth document, ``None`` when it is
    unset or empty; :class:`AuthFileError` when it is not a JSON object (Docker CLI: a warning, and
    the variable is ignored). Entries count by their ``auth`` only, as in the Docker CLI: any other
    field is ignored, and an entry without ``auth`` is skipped with its reason (the Docker CLI would
    ignore the whole variable). Parsed once per value."""
    text = environ.get(DOCKER_AUTH_CONFIG)
    if not text:
        return None
    parsed = _env_memo.get(text)
    if parsed is not None:
        return parsed
    if len(text) > LIMIT_AUTH_FILE:
        raise AuthFileError(f"{DOCKER_AUTH_CONFIG} is longer than {LIMIT_AUTH_FILE // MiB} MiB, the "
                            "most xtm-composer reads from a credential document")
    data = _parse_json(DOCKER_AUTH_CONFIG, text)
    parsed = AuthFile(DOCKER_AUTH_CONFIG, data)
    section = data.get("auths")
    if isinstance(section, dict):
        kept: dict[str, Any] = {}
        skipped: list[tuple[str, str]] = []
        for key, value in section.items():
            if isinstance(value, dict) and not value.get("auth"):
                skipped.append((key, f"no auth (the only field the Docker CLI reads from "
                                     f"{DOCKER_AUTH_CONFIG}: base64 of user:password)"))
            else:  # a wrong shape or a bad auth: reported by parse_auths, as for the files
                kept[key] = {"auth": value["auth"]} if isinstance(value, dict) else value
        auths = parse_auths({"auths": kept}, allow_scheme=True)
        auths = replace(auths, skipped=(*skipped, *auths.skipped), keys=tuple(section))
        if auths.skipped:
            log.warning("%s: %s", DOCKER_AUTH_CONFIG, auths.skipped_text())
        parsed._auths[True] = auths
    if len(_env_memo) >= 8:  # a long-running process sees one value, tests a few
        _env_memo.clear()
    _env_memo[text] = parsed
    return parsed


def clear_memo() -> None:
    """For tests and benchmarks: forget every parsed file."""
    _memo.clear()
    _env_memo.clear()


def parse_auths(data: Mapping[str, Any], *, allow_scheme: bool) -> Auths:
    """Validate ``data["auths"]`` entry by entry. ``allow_scheme`` is the Docker rule
    (``https://reg.io/v1/`` is a key); containers-auth keys must not hold a scheme."""
    section = data.get("auths")
    if section is None:
        return Auths()
    if not isinstance(section, dict):
        return Auths(problem=f"'auths' is {json_type(section)}, expected an object")
    entries: list[AuthEntry] = []
    markers: list[tuple[str, KeyScope]] = []
    skipped: list[tuple[str, str]] = []
    for index, (key, value) in enumerate(section.items()):
        try:
            if not allow_scheme and "://" in key:
                raise InvalidKey("a key must not hold a scheme (write host[:port][/path])")
            scope = parse_key(key)
        except InvalidKey as exc:
            skipped.append((key, f"invalid key: {exc}"))
            continue
        decoded = _decode_entry(value)
        if isinstance(decoded, str):
            skipped.append((key, decoded))
        elif decoded is None:
            markers.append((key, scope))
        else:
            username, password, token = decoded
            entries.append(AuthEntry(key, scope, index, username, password, token))
    return Auths(tuple(entries), tuple(markers), tuple(skipped), tuple(section))


def _decode_entry(value: object) -> tuple[str | None, str | None, str | None] | str | None:
    """(username, password, identity token), ``None`` for a marker, or the reason to skip it."""
    if not isinstance(value, dict):
        return f"is {json_type(value)}, expected an object"
    for name in _CREDENTIAL_FIELDS:
        if value.get(name) is not None and not isinstance(value[name], str):
            return f"{name} is {json_type(value[name])}, expected a string"
    auth, username, password, token = (value.get(name) or None for name in _CREDENTIAL_FIELDS)
    if not (auth or username or password or token):
        if value.get("registrytoken"):
            return "registrytoken entries are not supported (use auth or identitytoken)"
        return None
    if auth:
        decoded = _decode_auth(auth)
        if isinstance(decoded, str):
            return decoded
        username, password = decoded
    size = sum(len(part.encode()) for part in (username, password, token) if part)
    if size > LIMIT_CREDENTIAL:
        return too_large(size)
    if token:
        return username or None, None, token
    if not username:
        return "no username"
    if not password:
        return "no password"
    return username, password, None


def too_large(size: int) -> str:
    """The one wording of an oversize credential, whatever its source."""
    return (f"credential too large: {size} bytes, more than {LIMIT_CREDENTIAL // KiB} KiB "
            "(registries and engines refuse auth headers that large)")


def _decode_auth(auth: str) -> tuple[str, str] | str:
    text = auth.strip()
    if len(text) % 4 == 1:
        return "bad base64"
    try:
        raw = b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return "bad base64"
    try:
        plain = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "auth does not decode to UTF-8 text"
    username, sep, password = plain.partition(":")
    if not sep:
        return "auth has no ':' (expected base64 of user:password)"
    return username, password.rstrip("\x00")


@dataclass(frozen=True, slots=True)
class Match:
    """The winning entry for an image, and what else was considered (for details and warnings)."""

    entry: AuthEntry | None
    #: entries as specific as the winner that lost the tie-break (exact key, then file order)
    rivals: tuple[AuthEntry, ...] = ()
    #: ``{}`` markers covering the image
    markers: tuple[str, ...] = ()
    #: path-scoped keys of the same host that do not cover this repository
    out_of_scope: tuple[str, ...] = ()

    def rivals_text(self) -> str:
        if not self.rivals or self.entry is None:
            return ""
        reasons = []
        if self.entry.exact and not all(r.exact for r in self.rivals):
            reasons.append("exact key first")
        if any(r.exact == self.entry.exact for r in self.rivals):
            reasons.append("file order")
        why = ", then ".join(reasons)
        names = ", ".join(repr(r.key) for r in self.rivals)
        return f"{names} also match{'es' if len(self.rivals) == 1 else ''} as specifically; " \
               f"{self.entry.key!r} wins ({why})"


def best_match(auths: Auths, registry: str, repository_path: str) -> Match:
    """The entry to use for ``registry/repository_path``: most specific, then exact, then first."""
    covering: list[tuple[int, AuthEntry]] = []
    out_of_scope: list[str] = []
    for entry in auths.entries:
        specificity = entry.scope.matches(registry, repository_path)
        if specificity is not None:
            covering.append((specificity, entry))
        elif entry.scope.path and entry.scope.matches(registry, entry.scope.path) is not None:
            out_of_scope.append(entry.key)
    markers = tuple(key for key, scope in auths.markers
                    if scope.matches(registry, repository_path) is not None)
    if not covering:
        return Match(None, markers=markers, out_of_scope=tuple(out_of_scope))
    covering.sort(key=lambda item: (-item[0], not item[1].exact, item[1].index))
    best_specificity, best = covering[0]
    rivals = tuple(entry for specificity, entry in covering[1:] if specificity == best_specificity)
    return Match(best, rivals, markers, tuple(out_of_scope))


def keys_text(auths: Auths, limit: int = 12) -> str:
    """``keys: a, b`` for "no entry" messages (key names only)."""
    if not auths.keys:
        return "no keys"
    # a key written as a URL may carry a password (https://robot:pw@reg.io): never shown
    shown = ", ".join(hide_userinfo(key) for key in auths.keys[:limit])
    more = f", ... ({len(auths.keys) - limit} more)" if len(auths.keys) > limit else ""
    return f"keys: {shown}{more}"


_warned: set[tuple[str, ...]] = set()


def warn_once(logger: logging.Logger, key: tuple[str, ...], message: str) -> None:
    """A conflict is worth one warning per process, not one per deploy pass."""
    if key not in _warned:
        _warned.add(key)
        logger.warning("%s", message)


def docker_config_path(environ: Mapping[str, str]) -> tuple[str | None, str]:
    """Docker CLI rules: ``$DOCKER_CONFIG/config.json`` (a directory; no fallback to ``~/.docker``
    when it is set), else ``$HOME/.docker/config.json``. Returns the path (or ``None``) and how it
    was chosen, for details."""
    directory = environ.get("DOCKER_CONFIG")
    if directory:
        return os.path.join(directory, "config.json"), f"DOCKER_CONFIG={directory}"
    home = environ.get("HOME")
    if not home:
        return None, "neither DOCKER_CONFIG nor HOME is set"
    return os.path.join(home, ".docker", "config.json"), "~/.docker"


def reregister(credentials: AnyCredentials) -> None:
    """A memoised answer is reused: make sure the redactor still knows its secrets (it may have
    been cleared since, e.g. between tests)."""
    redact.register(getattr(credentials, "password", None), credentials.identity_token)


def read_docker_config(environ: Mapping[str, str]) -> AuthFile | NotFound | Failed:
    """Docker's config.json as the Docker CLI finds it, or why there is none to read (shared by
    the providers that read it: docker-config for ``auths``, keychain for its helpers)."""
    path, how = docker_config_path(environ)
    if path is None:
        return NotFound(f"no config.json to read ({how})")
    try:
        config = read_auth_file(path, "Docker config file")
    except AuthFileError as exc:
        return Failed(str(exc))
    if config is None:
        return NotFound(f"no config.json at {path} ({how})")
    return config
