"""The workload contract: what the core hands a backend, what a backend reports, and the backend.

A backend runs connectors somewhere: one Docker or Podman host (a container per connector), or an
orchestrator (a Docker Swarm service, later a Kubernetes Deployment). The core does not drive it
step by step (pull, create, start...): it hands it a :class:`Workload`, one connector fully resolved
(the exact image reference, the one credential the chain found for that image's registry, env,
labels, the state asked for, the config hash), and the backend makes it so. What a backend sees of
its workloads comes back as :class:`Observed`, the same shape on every backend, so that ``ps``, the
fleet's plan and ``--json`` read every engine alike.

The methods of :class:`Backend`, in the order a pass uses them:

* :meth:`Backend.observe` once per pass: every workload carrying the manager's labels, in at most
  one request on a single host and two on an orchestrator (services and tasks);
* :meth:`Backend.apply` for each workload whose config hash or state differs from what was
  observed: create, update (an orchestrator updates in place, rolling) or replace (a single host,
  with rollback), and start or stop;
* :meth:`Backend.set_state` to start or stop a workload without changing anything else;
* :meth:`Backend.remove` for a workload no longer wanted;
* :meth:`Backend.logs` for ``xtm-composer logs``; :meth:`Backend.close` at the end.

Errors are :class:`~composer_core.errors.ComposerError` subclasses with the README's exit codes:
a registry failure is one of :class:`~composer_core.errors.RegistryError`'s subclasses (6 no
credential, 7 credential rejected, 8 unreachable, 9 TLS, 10 image not found, 15 unclassified),
explained with the workload's credential trace by
:func:`composer_core.engine.deploy.explain_pull_failure`; an engine that does not answer is
:class:`~composer_core.errors.RuntimeUnavailable` (5); any other failure of a workload operation is
:class:`~composer_core.errors.ContainerError` (12), or :class:`~composer_core.errors.ContainerNotFound`
(13) for a workload that is not there or not this manager's. No method raises an SDK exception, and
no secret (a password, a token, an env value) reaches a message, a ``detail`` or :meth:`Observed.to_dict`.

See ``docs/plugins.md``, "The backend contract".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_HASH

if TYPE_CHECKING:
    from composer_core.auth.chain import Resolution
    from composer_core.engine.tls import TlsDecision
    from composer_core.errors import ComposerError
    from composer_core.types import AnyCredentials, PullProgress, ResolvedImage

#: What the core asks of a workload.
WorkloadState = Literal["started", "stopped"]
#: What a backend sees of one: ``restarting`` (its engine restarts it after an exit), ``pending``
#: (asked to run, not running yet: being pulled, scheduled, started) and ``failed`` (it cannot run:
#: its image cannot be pulled, its tasks are rejected...; :attr:`Observed.error` says why).
ObservedState = Literal["started", "stopped", "restarting", "pending", "failed"]
#: What :meth:`Backend.apply` did.
ApplyAction = Literal["created", "updated", "replaced", "started", "stopped", "unchanged"]


@dataclass(frozen=True, slots=True)
class Workload:
    """What the core hands a backend: one connector, fully resolved.

    ``name`` is the container, service or Deployment name (validated by the core); ``image`` the
    resolved image (``image.ref`` is the exact reference to run, ``image.input`` what the user
    wrote); ``resolution`` the credential chain's answer for ``image.ref.registry``: its
    ``credentials`` are the ONE credential to send (:data:`~composer_core.types.Anonymous` means
    explicitly none) and its ``steps`` the trace every registry error must show. ``tls`` says
    whether the registry's certificate is verified (and which setting said not to). ``labels`` are
    the core's (``opencti-manager``, ``opencti-connector-id``, ``opencti-config-hash``:
    :mod:`composer_core.engine.labels`), to be set on whatever the backend creates. ``state`` is
    what is asked; ``config_hash`` the hash of the image and env that ``labels`` carries;
    ``command`` replaces the image's command when set.
    """

    name: str
    connector_id: str
    image: ResolvedImage
    resolution: Resolution
    tls: TlsDecision
    env: Mapping[str, str]
    labels: Mapping[str, str]
    state: WorkloadState
    config_hash: str
    command: tuple[str, ...] | None = None

    @property
    def credentials(self) -> AnyCredentials:
        """The one credential to send for ``image.ref.registry`` (Anonymous: send none)."""
        return self.resolution.credentials


@dataclass(frozen=True, slots=True)
class Observed:
    """What a backend sees of one managed workload, the same shape on every backend.

    ``id`` is the container id, service id or Deployment uid (what :meth:`Backend.set_state`,
    :meth:`Backend.remove` and :meth:`Backend.logs` act on); ``labels`` the workload's labels as
    the engine reports them; ``image`` the image as the engine reports it (a swarm service:
    ``repo:tag@sha256:...``). ``restart_count`` counts the restarts (a swarm: failed or rejected
    tasks still in the task history); ``started_at`` is ISO 8601. ``replicas_wanted`` and
    ``replicas_running`` are ``None`` where they do not apply (a single host). ``detail`` is one
    engine-specific line ("running on n2", "exited (1)", "task rejected: No such image ..."),
    never a secret. ``error`` is a typed failure the backend observed (a task rejected for auth:
    :class:`~composer_core.errors.AuthenticationRequired`,
    :class:`~composer_core.errors.CredentialsRejected` or
    :class:`~composer_core.errors.ImageNotFound`), explained with the workload's trace when the
    backend knows it.
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
    error: ComposerError | None = field(default=None, compare=False)

    @property
    def connector_id(self) -> str | None:
        return self.labels.get(LABEL_CONNECTOR)

    @property
    def config_hash(self) -> str | None:
        return self.labels.get(LABEL_HASH)

    def to_dict(self) -> dict[str, Any]:
        """For ``ps --json``: every field, the error as its ``to_dict()``; no secret."""
        return {"id": self.id, "name": self.name, "labels": dict(self.labels), "state": self.state,
                "image": self.image, "restart_count": self.restart_count,
                "started_at": self.started_at, "replicas_wanted": self.replicas_wanted,
                "replicas_running": self.replicas_running, "detail": self.detail,
                "error": self.error.to_dict() if self.error is not None else None}


@dataclass(frozen=True, slots=True)
class Applied:
    """What :meth:`Backend.apply` did (``action``), what it left (``observed``) and one line of
    detail ("rolling update, version 12 -> 13", "pinned sha256:...")."""

    action: ApplyAction
    observed: Observed
    detail: str = ""


class Backend(Protocol):
    """A connected engine or orchestrator. ``RuntimeBackend(name, connect)`` is the hook record;
    ``connect(settings)`` returns one of these, or raises
    :class:`~composer_core.errors.RuntimeUnavailable` saying what answers there and what to do.

    ``name`` is the backend's registered name (``docker``, ``podman``, ``swarm``); ``endpoint``
    where it is connected (never with credentials); ``capabilities`` its optional abilities:
    ``pull`` (a single-host pull command), ``replicas``, ``digest-pinning``, later ``events``.
    """

    name: str
    endpoint: str
    capabilities: frozenset[str]

    def observe(self, labels: Mapping[str, str]) -> list[Observed]:
        """Every workload carrying all ``labels`` (the core passes ``{opencti-manager: id}``), sorted
        by name. At most ONE request on a single host, TWO on an orchestrator (services + tasks).
        Raises :class:`~composer_core.errors.RuntimeUnavailable` when the engine stops answering."""
        ...

    def apply(self, workload: Workload, current: Observed | None, *,
              progress: Callable[[PullProgress], None] | None = None) -> Applied:
        """Make ``workload`` so. ``current`` is what :meth:`observe` returned for it this pass
        (``None``: not there). The core already decided the config hash differs or the state
        differs; the backend creates, updates (orchestrators: in place, rolling) or replaces (single
        host: with rollback), and starts or stops per ``workload.state``. It sends exactly
        ``workload.credentials`` for the image's registry and never another. ``progress`` receives
        pull events where the backend pulls itself (single host).

        Raises typed errors: a registry failure 6/7/8/9/10/15 explained with the workload's trace
        (:func:`composer_core.engine.deploy.explain_pull_failure`), 11 for an insecure registry the
        engine does not allow, 12 when the engine refuses the workload (a name taken by a workload
        this manager does not manage included)."""
        ...

    def set_state(self, current: Observed, state: WorkloadState) -> Observed:
        """Start / stop without changing anything else (single host: start/stop; swarm: replicas
        1/0, keeping the credential the service holds). Returns what is observed afterwards;
        :class:`~composer_core.errors.ContainerNotFound` when it is gone."""
        ...

    def remove(self, current: Observed) -> None:
        """Remove this managed workload (by id). Never touches a workload without our manager
        label (:class:`~composer_core.errors.ContainerNotFound` then)."""
        ...

    def logs(self, current: Observed, tail: int) -> str:
        """The last ``tail`` lines (all tasks/nodes on an orchestrator), never the whole log."""
        ...

    def close(self) -> None:
        """Release the connection; the backend is not used afterwards."""
        ...
