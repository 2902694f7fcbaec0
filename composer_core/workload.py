"""The workload contract: what the core hands a backend, and what a backend reports back.

The core decides *what* should run; a backend (a container engine, an orchestrator) makes it so.
The core resolves everything before a backend is asked: the image (the resolvers of
``images.resolvers``), the ONE credential the chain found for that image's registry (or explicitly
none), the TLS decision, the env, the labels and the config hash. It hands the result over as a
:class:`Workload`. A backend reports what it sees of each managed workload as an :class:`Observed`,
the same shape on every backend, and the result of a change as an :class:`Applied`.

:class:`Backend` is the protocol every backend implements; ``RuntimeBackend.connect(settings)``
returns one. docker and podman implement it through the core's
:class:`~composer_core.engine.container_backend.ContainerBackend` over their container-level
:class:`~composer_core.types.Runtime`; an orchestrator (swarm) implements it directly.

Errors: every method raises a :class:`~composer_core.errors.ComposerError` subclass, never an SDK
exception (exit codes in the README):

* :class:`~composer_core.errors.RuntimeUnavailable` (5): the engine does not answer;
* registry errors, explained with the workload's credential trace
  (:func:`composer_core.engine.deploy.explain_pull_failure`):
  :class:`~composer_core.errors.AuthenticationRequired` (6: anonymous, the registry wants
  credentials), :class:`~composer_core.errors.CredentialsRejected` (7: the credential sent was
  refused; the message names its provider), :class:`~composer_core.errors.RegistryUnreachable` (8),
  :class:`~composer_core.errors.RegistryTLSError` (9), :class:`~composer_core.errors.ImageNotFound`
  (10), :class:`~composer_core.errors.InsecureRegistryNotAllowed` (11), any other registry
  failure :class:`~composer_core.errors.RegistryError` (15);
* :class:`~composer_core.errors.ContainerError` (12): the engine refused a create, start, stop,
  rename or remove (a name taken by a workload of someone else says so);
* :class:`~composer_core.errors.ContainerNotFound` (13): the workload named is gone.

Nothing here carries a secret in a ``repr``, a ``str`` or :meth:`Observed.to_dict`: a
:class:`Workload`'s credential is a :class:`~composer_core.types.Credentials`, which masks its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_HASH
from composer_core.errors import ComposerError

if TYPE_CHECKING:
    from composer_core.auth.chain import Resolution
    from composer_core.engine.tls import TlsDecision
    from composer_core.types import AnyCredentials, PullProgress, ResolvedImage

#: what the core asks of a workload
WorkloadState = Literal["started", "stopped"]
#: what a backend sees of one: ``restarting`` (the engine restarts it), ``pending`` (an
#: orchestrator has not placed or pulled it yet), ``failed`` (it cannot run: see ``error``)
ObservedState = Literal["started", "stopped", "restarting", "pending", "failed"]
#: what :meth:`Backend.apply` did
ApplyAction = Literal["created", "updated", "replaced", "started", "stopped", "unchanged"]
#: what happened to a workload, as an event stream reports it (:meth:`Backend.events`): the
#: engine's own word is in :attr:`WorkloadEvent.action`
EventKind = Literal["died", "killed", "stopped", "removed", "paused", "failed", "started",
                    "created", "other"]
#: the kinds that may leave a workload unlike its desired state: ``run`` reconciles on them
DISRUPTIVE_KINDS: frozenset[str] = frozenset({"died", "killed", "stopped", "removed", "paused",
                                              "failed"})


@dataclass(frozen=True, slots=True)
class Workload:
    """What the core hands a backend: one connector, fully resolved.

    ``name``: the container / service / Deployment name (validated by the core, see
    :data:`composer_core.engine.spec.NAME_RULE`). ``image``: ``image.ref`` is the exact reference
    to run, ``image.input`` what the user wrote. ``resolution``: the credential chain's answer for
    ``image.ref.registry``: ``resolution.credentials`` is the ONE credential to send (Anonymous:
    explicitly none, never the engine's own), ``resolution.steps`` the trace an error explains
    itself with. ``tls``: verify the registry's certificate or not, and which setting said so.
    ``labels``: the core's labels (``opencti-manager``, ``opencti-connector-id``,
    ``opencti-config-hash``: :mod:`composer_core.engine.labels`), to put on the workload as they
    are. ``state``: started or stopped. ``config_hash``: the hash of the resolved image, env and
    command (the value of the ``opencti-config-hash`` label). ``command``: replaces the image's
    command when set.
    """

    name: str
    connector_id: str
    image: ResolvedImage
    resolution: Resolution
    tls: TlsDecision
    env: Mapping[str, str] = field(repr=False)
    labels: Mapping[str, str]
    state: WorkloadState
    config_hash: str
    command: tuple[str, ...] | None = None

    @property
    def credentials(self) -> AnyCredentials:
        """The one credential to send for ``image.ref.registry`` (Anonymous: none at all)."""
        return self.resolution.credentials


@dataclass(frozen=True, slots=True)
class Observed:
    """What a backend sees of one managed workload, the same shape on every backend.

    ``id``: the container id / service id / Deployment uid (what :meth:`Backend.set_state`,
    :meth:`Backend.remove` and :meth:`Backend.logs` act on). ``labels``: the workload's labels as
    the engine reports them. ``image``: the image as the engine reports it (swarm:
    ``repo:tag@sha256:...``). ``restart_count`` and ``started_at`` (ISO 8601): what the fleet's
    restart-loop warning reads. ``replicas_wanted`` / ``replicas_running``: ``None`` where replicas
    do not apply (a single host). ``detail``: one engine-specific line (a single host: the
    engine's container status, ``running``, ``exited``, ``paused``...; an orchestrator: ``running
    on n2``, ``task rejected: No such image ...``), never a secret. ``error``: a typed failure the
    backend observed (a task rejected for auth -> AuthenticationRequired / CredentialsRejected /
    ImageNotFound, explained with the workload's trace when known).
    """

    id: str
    name: str
    labels: Mapping[str, str]
    state: ObservedState
    image: str
    restart_count: int = 0
    started_at: str | None = None
    replicas_wanted: int | None = None
    replicas_running: int | None = None
    detail: str = ""
    error: ComposerError | None = None

    @property
    def connector_id(self) -> str | None:
        return self.labels.get(LABEL_CONNECTOR)

    @property
    def config_hash(self) -> str | None:
        return self.labels.get(LABEL_HASH)

    @property
    def status(self) -> str:
        """The engine's own word for the state: the first word of ``detail`` (a single host puts
        its container status there), else ``state``. What ``ps`` showed before workloads."""
        return self.detail.split(maxsplit=1)[0] if self.detail.strip() else self.state

    def to_dict(self) -> dict[str, Any]:
        """For ``ps --json``: the keys of the container-only listing (``id``, ``name``,
        ``image``, ``status``, ``labels``, ``restart_count``, ``started_at``) plus ``state``,
        ``replicas_wanted``, ``replicas_running``, ``detail`` and ``error`` (its typed dict, or
        ``None``). No secret."""
        return {"id": self.id, "name": self.name, "image": self.image, "status": self.status,
                "labels": dict(self.labels), "restart_count": self.restart_count,
                "started_at": self.started_at, "state": self.state,
                "replicas_wanted": self.replicas_wanted,
                "replicas_running": self.replicas_running, "detail": self.detail,
                "error": self.error.to_dict() if self.error is not None else None}


@dataclass(frozen=True, slots=True)
class Applied:
    """What :meth:`Backend.apply` did (``action``), what the workload now is (``observed``), and
    a line about how (``detail``: "rolling update, version 12 -> 13", "pinned sha256:...")."""

    action: ApplyAction
    observed: Observed
    detail: str = ""


@dataclass(frozen=True, slots=True)
class WorkloadEvent:
    """One event of an event stream (:meth:`Backend.events`): what happened (``kind``, and the
    engine's own ``action``: ``die``, ``destroy``, ``died``, ``remove``...) to which workload
    (``name``, ``id``, and the connector id its label carries: ``None`` when it carries none) and
    when (``time``: the engine's clock, seconds since the epoch; what ``since`` takes to replay
    from there). Never a secret: no env, no image reference."""

    name: str
    connector_id: str | None
    kind: EventKind
    action: str = ""
    id: str = ""
    time: float = 0.0


class EventStream(Protocol):
    """An open event stream: iterate it for :class:`WorkloadEvent` s. The iteration ends
    normally when the stream's window is over (the engine closes it; the caller opens the next
    one with ``since`` = :attr:`until`) or when :meth:`close` was called, from any thread; it
    raises :class:`~composer_core.errors.RuntimeUnavailable` when the stream breaks (the engine
    went away): the caller reconnects, and events may have been lost."""

    #: the engine time this stream ends at (the next one's ``since``)
    until: float

    def __iter__(self) -> Iterator[WorkloadEvent]: ...

    def close(self) -> None:
        """End the iteration (from any thread, at once); idempotent."""
        ...


class Backend(Protocol):
    """A connected backend: a container engine or an orchestrator.

    ``name``: its registered name (``docker``, ``podman``, ``swarm``). ``endpoint``: where it is
    connected, never with credentials (the fleet's pass lock is keyed by it). ``capabilities``:
    optional abilities the core may use: ``pull`` (a single-host ``pull`` command: the backend
    exposes its container-level :class:`~composer_core.types.Runtime` as ``runtime``),
    ``replicas``, ``digest-pinning``, ``stored-credentials`` (below), ``events`` (the backend
    has :meth:`events`; a backend without it is reconciled by passes only).

    ``stored-credentials`` (optional; swarm declares it, docker, podman and the in-memory backend
    do not): the orchestrator STORES the pull credential it was given with the workload and
    never returns it, so a rotated password would otherwise reach it only with the next config
    change. Such a backend implements ``credentials_changed(workload: Workload, current:
    Observed) -> bool``: the credential ``workload`` would send (``workload.credentials``)
    differs from the one ``current`` was given (swarm: a keyed fingerprint in a label). It makes
    no engine request (what :meth:`observe` read is enough) and raises only a ComposerError. The
    fleet then builds the Workload of every connector planned nothing / start / stop too, and
    where this says so, plans a ``replace``: :meth:`apply` with the same config hash must then
    send the new credential (an in-place update), never answer ``unchanged``.
    """

    name: str
    endpoint: str
    capabilities: frozenset[str]

    def observe(self, labels: Mapping[str, str]) -> list[Observed]:
        """Every workload carrying all ``labels`` (the core passes ``{opencti-manager: id}``; an
        empty mapping: every workload, managed or not, for a command that must tell "not ours"
        from "missing"). At most ONE request on a single host, TWO on an orchestrator (services
        + tasks): a steady fleet pass costs exactly this call. Raises RuntimeUnavailable when
        the engine does not answer."""
        ...

    def apply(self, workload: Workload, current: Observed | None, *,
              progress: Callable[[PullProgress], None] | None = None) -> Applied:
        """Make ``workload`` so. ``current`` is what :meth:`observe` returned for it this pass
        (``None``: not there). The core already decided that the config hash differs, the
        state differs, or (``stored-credentials``) the credential changed; the backend creates,
        updates (orchestrators: in place, rolling) or replaces (single host: with rollback: the
        old workload keeps running until the new one runs, and a failure leaves the old one as
        it was), and starts or stops per ``workload.state``; with ``stored-credentials``, a
        workload whose credential changed (``credentials_changed``) is updated in place with the
        new one, even with the same config hash. Sends exactly ``workload.credentials`` for the
        image's registry and never another; ``progress`` receives pull progress events when the
        backend pulls.

        Returns the :class:`Applied` action and what the workload now is. Raises typed
        ComposerError: registry errors 6/7/8/9/10/11/15 explained with the workload's trace
        (:func:`composer_core.engine.deploy.explain_pull_failure`); ContainerError (12) when the
        engine refuses, or when the name belongs to a workload this manager does not manage."""
        ...

    def set_state(self, current: Observed, state: WorkloadState) -> Observed:
        """Start or stop ``current`` (by id) without changing anything else (single host:
        start / stop; swarm: replicas 1 / 0); what it now is. Raises ContainerError when the
        engine refuses (a start that fails), ContainerNotFound when it is gone."""
        ...

    def remove(self, current: Observed) -> None:
        """Remove this managed workload (by id), running or not. Never touches a workload
        without our manager label: ``current`` comes from :meth:`observe` with that label.
        Raises ContainerNotFound when it is gone, ContainerError when the engine refuses."""
        ...

    def logs(self, current: Observed, tail: int) -> str:
        """The last ``tail`` lines of ``current``'s output (all tasks / nodes on an
        orchestrator), never the whole log. Raises ContainerNotFound when it is gone."""
        ...

    def close(self) -> None:
        """Release the connection; the backend is not used afterwards."""
        ...

    # Optional, capability ``events`` (not part of the protocol a backend must implement):
    #
    # def events(self, labels: Mapping[str, str], since: float | None = None,
    #            window: float = EVENT_WINDOW) -> EventStream:
    #     """The events of the workloads carrying all ``labels``, from ``since`` (engine time,
    #     seconds; ``None``: from now) for ``window`` seconds at most: an :class:`EventStream`.
    #     ONE request, held open for the window (the engine ends it then): a steady fleet costs
    #     one request per window (kubernetes: two, a watch of Deployments and one of Pods). Only
    #     events of labelled workloads are reported, each once (replayed from ``since`` on a new
    #     stream; a backend that resumes by version rather than time, kubernetes, resumes where
    #     the same instance's last window ended, and otherwise reports from now: the caller runs
    #     a full pass after a reconnect). Raises RuntimeUnavailable when the engine does not
    #     answer."""


#: how long one event stream stays open before the next one is asked (seconds)
EVENT_WINDOW = 300.0


def has_events(backend: object) -> bool:
    """Whether ``backend`` declares the ``events`` capability and has the method."""
    capabilities: frozenset[str] = getattr(backend, "capabilities", frozenset())
    return "events" in capabilities and callable(getattr(backend, "events", None))
