"""Image references: a small frozen value type over ``docker-image-py``.

Parsing is Docker's ``ParseNormalizedNamed`` (github.com/distribution/reference). The grammar
itself lives in :mod:`docker_image.reference`; this module wraps it, translates its exceptions
into :class:`InvalidReference` and closes the few gaps commented next to the checks below.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
from functools import lru_cache
from typing import Final

from docker_image import digest as _digest
from docker_image import reference as _ref

from composer_core.redact import hide_userinfo

__all__ = [
    "DEFAULT_DOMAIN",
    "ImageRef",
    "InvalidReference",
    "InvalidRegistryURL",
    "full_image_name",
    "normalize_registry_url",
]

DEFAULT_DOMAIN: Final = "docker.io"
_OFFICIAL: Final = "library/"
_HUB_PREFIXES: Final = ("docker.io/", "index.docker.io/")
# Longest valid reference: registry (253-char DNS name + ":65535") + "/" + 255-char path
# + ":" + 128-char tag + "@sha512:" + 128 hex = 780. The library's regexes are quadratic on
# long hostile input (50k chars: ~4 s), so anything beyond this bound is refused up front.
_MAX_TEXT: Final = 1024
_HEX64 = _ref.ImageRegexps.ANCHORED_IDENTIFIER_REGEXP
_HOST_PORT = _ref.ImageRegexps.ANCHORED_HOSTNAME_REGEXP


class InvalidReference(ValueError):
    """An image reference Docker would refuse; the message names the rule and the input."""


class InvalidRegistryURL(ValueError):
    """A registry setting that is not ``[http[s]://]host[:port][/]``."""


class _Keep(enum.Enum):
    KEEP = enum.auto()


_KEEP: Final = _Keep.KEEP

# The library raises two unrelated hierarchies (reference.InvalidReference and
# digest.InvalidDigest) and a bare base class for the uppercase / 64-hex rules.
_MESSAGES: Final[tuple[tuple[type[Exception], str], ...]] = (
    (_ref.NameTooLong, "repository name must not be longer than 255 characters"),
    (_ref.NameContainsUppercase, "repository name must be lowercase"),
    (_ref.NameEmpty, "repository name must have at least one component"),
    (_digest.DigestInvalidLength, "invalid digest length (sha256/384/512: 64/96/128 hex)"),
    (_digest.DigestUnsupported, "unsupported digest algorithm"),
    (_digest.InvalidDigest, "invalid digest format"),
)


def _quote(text: str) -> str:
    return repr(text) if len(text) <= 120 else repr(text[:120]) + "..."


# An "@" that starts a digest ("@sha256:<hex>"); any other "@" may end user info (user:pw@host).
_DIGEST_AT: Final = re.compile(r"@(?=[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$)")


def _user_info_end(text: str) -> int:
    """The index of the last "@" that does not start a digest, or -1."""
    at = text.rfind("@")
    while at >= 0 and _DIGEST_AT.match(text, at):
        at = text.rfind("@", 0, at)
    return at


def _shown(text: str) -> str:
    """``text`` as an error may show it: what precedes a non-digest "@" (followed by a host) may
    be a password."""
    at = _user_info_end(text)
    return text if at < 0 or at == len(text) - 1 else "***" + text[at:]


def _invalid(rule: str, text: str) -> InvalidReference:
    return InvalidReference(f"{rule}: {_quote(_shown(text))}")


def _message(exc: Exception) -> str:
    for cls, message in _MESSAGES:
        if isinstance(exc, cls):
            return message
    text = str(exc)
    if "lowercase" in text:
        return "repository name must be lowercase"
    if "hexadecimal" in text:
        return "repository name must not be a 64-character hexadecimal string (an image ID)"
    return "invalid reference format"


def _suffix(tag: str | None, digest: str | None) -> str:
    return (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


@dataclasses.dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed, normalised image reference. Build it with :meth:`parse` or :meth:`replace`.

    Equality and hashing ignore :attr:`explicit_registry`: ``alpine`` and
    ``docker.io/library/alpine`` are the same image.
    """

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None
    explicit_registry: str | None = dataclasses.field(default=None, compare=False)

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """Parse ``text``; raise :class:`InvalidReference` (and nothing else) when invalid."""
        if type(text) is not str:
            if not isinstance(text, str):
                raise InvalidReference(f"image reference must be a str, not {type(text).__name__}")
            text = str.__str__(text)  # a plain copy: subclasses could override hashing
        return _parse(text)

    @property
    def repository(self) -> str:
        """``domain/path``, e.g. ``docker.io/library/alpine``."""
        return f"{self.domain}/{self.path}"

    @property
    def registry(self) -> str:
        """The registry host[:port] the engine contacts (``docker.io`` for Docker Hub)."""
        return self.domain

    @property
    def names_registry(self) -> bool:
        """True when the text named a registry (``localhost:5000/x``, ``docker.io/x``)."""
        return self.explicit_registry is not None

    def normalized(self) -> str:
        """Fully qualified form; ``:latest`` is added only when there is no tag and no digest."""
        return self.repository + (_suffix(self.tag, self.digest) or ":latest")

    def familiar(self) -> str:
        """The short form Docker prints: no ``docker.io/`` nor ``library/``, no added tag."""
        name = self.repository
        if self.domain == DEFAULT_DOMAIN:
            path = self.path
            rest = path.removeprefix(_OFFICIAL)
            # Gap: Docker shortens library/<64 hex> to the bare hex, which it then refuses.
            if rest != path and "/" not in rest and not _HEX64.match(rest):
                path = rest
            # Gap: Docker prints docker.io/foo.bar/x as foo.bar/x, which reads back as
            # registry foo.bar; keep docker.io/ when the first component looks like a host.
            first, slash, _ = path.partition("/")
            if not (slash and ("." in first or first == "localhost")):
                name = path
        return name + _suffix(self.tag, self.digest)

    def __str__(self) -> str:
        return self.normalized()

    def replace(
        self,
        *,
        domain: str | None = None,
        path: str | None = None,
        tag: str | None | _Keep = _KEEP,
        digest: str | None | _Keep = _KEEP,
    ) -> ImageRef:
        """A new, validated reference with some parts changed (``tag=None`` drops the tag).

        ``domain`` must read as a registry (contain ``.`` or ``:``, or be ``localhost``).
        """
        new_domain = self.domain if domain is None else domain
        new_path = self.path if path is None else path
        new_tag = self.tag if tag is _KEEP else tag
        new_digest = self.digest if digest is _KEEP else digest
        text = f"{new_domain}/{new_path}{_suffix(new_tag, new_digest)}"
        ref = ImageRef.parse(text)
        if (
            ref.explicit_registry != new_domain
            or ref.path not in (new_path, _OFFICIAL + new_path)
            or (ref.tag, ref.digest) != (new_tag, new_digest)
        ):
            raise _invalid("the parts given to replace() do not form this reference", text)
        keep = self.explicit_registry if domain is None else domain
        return dataclasses.replace(ref, explicit_registry=keep)


@lru_cache(maxsize=4096)
def _parse(text: str) -> ImageRef:
    if not text:
        raise _invalid("image reference must not be empty", text)
    if len(text) > _MAX_TEXT:
        raise _invalid(f"image reference must not be longer than {_MAX_TEXT} characters", text)
    # Gap: the library's regexes end in `$`, which also matches before a final "\n", so
    # "alpine\n" would parse as alpine. Valid references are printable ASCII: refuse the rest.
    if not (text.isascii() and text.isprintable()):
        raise _invalid("invalid reference format", text)
    if "@" in text.partition("/")[0] and "/" in text[_user_info_end(text):]:
        # Docker refuses user:password@host/image too; say why, and never echo the password
        raise _invalid("image reference must not carry credentials (user:password@registry): "
                       "put them in the registry settings or a credential store", text)
    try:
        ref = _ref.Reference.parse_normalized_named(text)
    except (_ref.InvalidReference, _digest.InvalidDigest) as exc:
        raise _invalid(_message(exc), text) from None
    domain: str = ref.repository["domain"]
    if domain.startswith("["):
        # Gap: the library accepts any [hex:colons] in brackets ("[1]:5000/x").
        try:
            ipaddress.IPv6Address(domain[1 : domain.index("]")])
        except ValueError:
            raise _invalid("invalid IPv6 address in registry", text) from None
    named = domain != DEFAULT_DOMAIN or text.startswith(_HUB_PREFIXES)
    return ImageRef(
        domain=domain,
        path=ref.repository["path"],
        tag=ref["tag"],
        digest=ref["digest"],
        explicit_registry=text.partition("/")[0] if named else None,
    )


def full_image_name(image: str, registry: str | None) -> str:
    """Prefix ``registry`` to ``image`` unless the image already names one (then unchanged).

    Tag and digest are kept verbatim and no ``library/`` is inserted:
    ``connector-misp:5.0.0`` -> ``localhost:5000/connector-misp:5.0.0``.
    """
    ref = ImageRef.parse(image)
    if not registry or ref.names_registry:
        return image
    full = f"{registry}/{image}"
    if ImageRef.parse(full).explicit_registry != registry:
        raise _invalid(f"{registry!r} does not read as a registry ('.', ':' or localhost)", full)
    return full


def normalize_registry_url(url: str) -> str:
    """``https://Registry.example.com:5000/`` -> ``registry.example.com:5000``."""

    def bad(why: str) -> InvalidRegistryURL:
        return InvalidRegistryURL(
            f"invalid registry url {_quote(hide_userinfo(url))}: {why}; expected host[:port] such as "
            "'registry.example.com:5000' or 'localhost:5000' (an http:// or https:// "
            "prefix and a trailing '/' are accepted)"
        )

    if not isinstance(url, str):
        raise InvalidRegistryURL(f"registry url must be a str, not {type(url).__name__}")
    rest = url.strip()
    scheme, sep, tail = rest.partition("://")
    if sep:
        if scheme.lower() not in ("http", "https"):
            raise bad(f"unsupported scheme {scheme!r}")
        rest = tail
    if not rest:
        raise bad("it is empty")
    before_fragment, hash_, _ = rest.partition("#")
    location, question, _ = before_fragment.partition("?")
    netloc, _, path = location.lower().partition("/")
    if "@" in netloc:
        raise bad("it has user info (put credentials in the auth settings)")
    if path:
        raise bad(f"it has a path ({'/' + path!r})")
    if question:
        raise bad("it has a query")
    if hash_:
        raise bad("it has a fragment")
    if netloc.startswith("["):
        end = netloc.find("]") + 1
        host, colon, port = netloc[:end], netloc[end : end + 1], netloc[end + 1 :]
        if not end or colon not in ("", ":"):
            raise bad(f"invalid IPv6 address {netloc!r}")
        try:  # the grammar allows hex digits and colons only (no zone); then a real address
            ipaddress.IPv6Address(host[1:-1] if _HOST_PORT.fullmatch(host) else "-")
        except ValueError:
            raise bad(f"invalid IPv6 address {host!r}") from None
    else:
        host, colon, port = netloc.partition(":")
        if ":" in port:
            raise bad("an IPv6 address must be in brackets, e.g. '[::1]:5000'")
        if not _HOST_PORT.fullmatch(host) or len(host) > 253:
            raise bad(f"invalid host {host!r}")
        if any(len(label) > 63 for label in host.split(".")):
            raise bad(f"invalid host {host!r} (a label is longer than 63 characters)")
        if not colon and "." not in host and host != "localhost":
            raise bad(f"a bare {host!r} reads as a Docker Hub namespace; add a port or domain")
    if colon and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise bad(f"invalid port {port!r} (1-65535)")
    return f"{host}:{int(port)}" if colon else host
