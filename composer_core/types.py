"""The value types that flow between the core and the plugins.

Hooks contribute small frozen records with a ``name`` (:class:`ImageResolver`,
:class:`CredentialProvider`, :class:`RuntimeBackend`, defined in :mod:`composer_core.records` and
re-exported here so that plugins may import them from either); a credential lookup answers one of
:class:`Found`, :class:`NotFound` or :class:`Failed`. Secrets never appear in a ``repr``, a ``str``
or any serialisation of these types; an engine reads them from the typed fields (``username``,
``password``, ``identity_token``, ``registry``) and builds its own wire format in its plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from composer_core import redact

# the hook records, re-exported: third-party plugins import them from here
from composer_core.records import CredentialProvider as CredentialProvider
from composer_core.records import ImageResolver as ImageResolver
from composer_core.records import RuntimeBackend as RuntimeBackend
from composer_core.redact import MASK

if TYPE_CHECKING:
    from composer_core.engine.tls import TlsDecision
    from composer_core.images.reference import ImageRef
    from composer_core.settings import Settings


@dataclass(frozen=True, slots=True)
class Credentials:
    """One registry credential, with where it came from.

    ``registry`` is the host[:port] the credential belongs to (``docker.io`` for Docker Hub);
    ``source`` the provider that found it; ``key`` the entry that matched (a config.json key, a
    helper's server URL...) and ``file`` the file it was read from, when there is one.
    """

    registry: str
    source: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)
    key: str | None = None
    file: str | None = None

    def __post_init__(self) -> None:
        # Every secret that exists in this process is known to the log redactor, so that no
        # formatting accident (an exception text, a debug dump) can print it.
        redact.register(self.password, self.identity_token)

    def __repr__(self) -> str:
        return (
            f"Credentials(registry={self.registry!r}, source={self.source!r}, "
            f"username={self.username!r}, password={MASK if self.password else None!r}, "
            f"identity_token={MASK if self.identity_token else None!r}, key={self.key!r}, "
            f"file={self.file!r})"
        )

    __str__ = __repr__

    @property
    def anonymous(self) -> bool:
        return False

    def public(self) -> dict[str, Any]:
        """Everything but the secrets, for logs, ``explain`` and ``--json``."""
        return {
            "registry": self.registry,
            "source": self.source,
            "username": self.username,
            "identity_token": self.identity_token is not None,
            "key": self.key,
            "file": self.file,
        }



@dataclass(frozen=True, slots=True)
class AnonymousCredentials:
    """No credentials: the pull sends no auth at all. Distinct from ``None`` on purpose."""

    source: str = "anonymous"

    @property
    def anonymous(self) -> bool:
        return True

    @property
    def username(self) -> None:
        return None

    @property
    def identity_token(self) -> None:
        return None

    # ``key`` and ``file`` exist, always None, so that the core reads every credential alike
    @property
    def key(self) -> None:
        return None

    @property
    def file(self) -> None:
        return None

    def public(self) -> dict[str, Any]:
        return {"source": self.source, "username": None, "identity_token": False}


Anonymous = AnonymousCredentials()
AnyCredentials = Credentials | AnonymousCredentials


# --- what a credential provider answers ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Found:
    """The provider has credentials for this image; ``detail`` says which key, from which file."""

    credentials: AnyCredentials
    detail: str
    outcome: Literal["found"] = "found"


@dataclass(frozen=True, slots=True)
class NotFound:
    """The provider has nothing for this image; ``reason`` says why (no file, no matching key...)."""

    reason: str
    outcome: Literal["not-found"] = "not-found"


@dataclass(frozen=True, slots=True)
class Failed:
    """The provider could not answer (unreadable file, helper missing or hanging...)."""

    reason: str
    #: fatal errors stop the chain (e.g. ``auth.strict_helpers: true``); others are skipped
    fatal: bool = False
    outcome: Literal["error"] = "error"


LookupResult = Found | NotFound | Failed


@dataclass(frozen=True, slots=True)
class CredentialRequest:
    """What a provider is asked: credentials for ``registry`` to pull ``image``.

    ``image`` is the resolved reference (after every image resolver ran); ``registry`` is its
    host[:port] (``docker.io`` for Docker Hub). ``environ`` is the environment to read
    (``DOCKER_CONFIG``, ``REGISTRY_AUTH_FILE``, ``HOME``...): providers never read ``os.environ``
    directly, so that a resolution is reproducible and testable.
    """

    image: ImageRef
    registry: str
    settings: Settings
    environ: Mapping[str, str]


# --- image resolution ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rewrite:
    """An image resolver's answer: the image text to use from now on, and why."""

    image: str
    detail: str


@dataclass(frozen=True, slots=True)
class ResolutionStep:
    resolver: str
    before: str
    after: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"resolver": self.resolver, "before": self.before, "after": self.after,
                "detail": self.detail}


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """The exact reference to pull, the text the user wrote, and which rule changed what."""

    input: str
    ref: ImageRef
    steps: tuple[ResolutionStep, ...] = ()

    @property
    def pull_name(self) -> str:
        """What is sent to the engine: the resolved text in Docker's familiar form."""
        return self.ref.familiar()


# --- container engines (behind the workload contract of composer_core.workload) ----------------


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """A container to create. ``image`` is the exact reference that was pulled."""

    name: str
    image: str
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    #: the engine restarts a connector that exits, unless it was stopped on purpose
    restart_policy: Literal["no", "always", "unless-stopped", "on-failure"] = "unless-stopped"


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """What the core needs to know of a container, the same whichever engine runs it."""

    id: str
    name: str
    image: str
    status: str  # running, exited, created, paused, restarting...
    labels: Mapping[str, str] = field(default_factory=dict)
    restart_count: int = 0
    started_at: str | None = None
    #: seconds between creation and the last start, when the engine's list tells (Podman): a
    #: container restarted by its engine starts long after it was created
    restarted_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "image": self.image, "status": self.status,
                "labels": dict(self.labels), "restart_count": self.restart_count,
                "started_at": self.started_at}


@dataclass(frozen=True, slots=True)
class PullProgress:
    """One progress event of a pull, for a progress bar."""

    layer: str | None
    status: str
    current: int | None = None
    total: int | None = None


class Runtime(Protocol):
    """A connected container engine, at container level. Every method raises a
    :class:`composer_core.errors.ComposerError` subclass on failure, never an SDK exception.

    The core drives it through :class:`~composer_core.engine.container_backend.ContainerBackend`,
    which implements the workload contract (:class:`composer_core.workload.Backend`) over it:
    an engine plugin's ``connect(settings)`` returns ``ContainerBackend(runtime)``."""

    name: str
    endpoint: str

    def pull(self, image: ImageRef, credentials: AnyCredentials, *, tls: TlsDecision,
             progress: Callable[[PullProgress], None] | None = None) -> str:
        """Pull ``image`` with exactly ``credentials`` (anonymous: an explicitly empty auth, never
        the engine's own), verifying TLS as ``tls`` says; the pulled image's id."""
        ...
    def create(self, spec: ContainerSpec) -> ContainerInfo: ...
    def start(self, name: str) -> None: ...
    def stop(self, name: str, timeout: int = 10) -> None: ...
    def remove(self, name: str, *, force: bool = False) -> None: ...
    def rename(self, name: str, new_name: str) -> None:
        """Needed by a redeploy: the new container is created beside the old one, then takes its
        name, so that a failure can roll back to the old container."""
        ...
    def inspect(self, name: str) -> ContainerInfo | None: ...
    def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]: ...
    def logs(self, name: str, tail: int | None = None) -> str: ...
    def close(self) -> None: ...


def as_list(value: object) -> list[Any]:
    """Hooks may return one record or an iterable of records; the facade flattens both."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes, Mapping)):
        return list(value)
    return [value]
