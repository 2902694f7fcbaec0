"""Reading a service and its tasks: the :class:`~composer_core.workload.Observed` of a connector, and
the typed error of a task a node rejected.

Task states (Engine API): ``new`` ... ``preparing`` (pulling), ``starting``, ``running``; a task that
cannot start is ``rejected`` (a pull refused: ``No such image: <ref>``), one whose container exits
``failed``. The swarm replaces either with a new task (desired state ``ready``, then ``running``)
after the restart delay, forever, keeping a short history per slot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from composer_core import redact
from composer_core.engine.labels import LABEL_HASH
from composer_core.engine.pullerrors import classify_pull_failure
from composer_core.errors import AuthenticationRequired, ComposerError, CredentialsRejected, RegistryError
from composer_core.types import Anonymous, AnyCredentials, Credentials
from composer_core.workload import Observed, ObservedState

#: Service labels of our own, beside the core's. ``credentials``: which provider's credential the
#: service holds (``anonymous`` for none); never the secret. ``failed``: set when a first deploy or
#: a start was scaled to 0 because its tasks were rejected; ``apply`` then sends the credential again.
#: ``credential-id``: the keyed fingerprint of the credential sent (:mod:`.fingerprint`), read by
#: the backend and never part of an :class:`Observed` (so never in ``ps`` or any output).
LABEL_CREDENTIALS = "xtm-composer.swarm.credentials"
LABEL_CREDENTIAL_ID = "xtm-composer.swarm.credential-id"
LABEL_FAILED = "xtm-composer.swarm.failed"


def replicas(service: Mapping[str, Any]) -> int | None:
    mode = (service.get("Spec") or {}).get("Mode") or {}
    replicated = mode.get("Replicated")
    if not isinstance(replicated, Mapping):
        return None
    return int(replicated.get("Replicas") or 0)


def task_hash(task: Mapping[str, Any]) -> str | None:
    """The config hash of the spec the task was made from (its container's labels)."""
    labels = (((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels") or {})
    value = labels.get(LABEL_HASH)
    return str(value) if value is not None else None


def newest_first(tasks: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(tasks, key=lambda t: (str(t.get("CreatedAt") or ""),
                                        int((t.get("Version") or {}).get("Index") or 0)),
                  reverse=True)


def is_running(task: Mapping[str, Any]) -> bool:
    return (task.get("DesiredState") == "running"
            and (task.get("Status") or {}).get("State") == "running")


def is_rejected(task: Mapping[str, Any]) -> bool:
    return (task.get("Status") or {}).get("State") == "rejected"


def task_failure(err: str, credentials: AnyCredentials, pinned: bool) -> RegistryError | None:
    """The typed error for a task rejected with ``err``, when it is a pull failure.

    A node that cannot pull reports ``No such image: <ref>`` (its dockerd log has the registry's
    reason). When the digest was resolved on the manager with the same credential, the image and
    tag exist: the node's pull was refused, so it is an authentication failure (6 when nothing was
    sent, 7 when a credential was). Anything the classifier knows (``no basic auth credentials``,
    ``manifest unknown``...) is classified as on a single host.
    """
    typed = classify_pull_failure(err, credentials)
    if type(typed) is not RegistryError:
        return typed
    if "no such image" not in err.lower():
        return None
    if not pinned:
        return typed
    why = ("its node could not pull the image (swarm reports a refused pull as 'No such image'; "
           "the node's dockerd log has the registry's answer: unauthorized)")
    text = f"{redact.scrub(err)}: {why}"
    return AuthenticationRequired(text) if credentials.anonymous else CredentialsRejected(text)


def stored_failure(labels: Mapping[str, str], err: str) -> ComposerError | None:
    """A rejected task's error when no workload is at hand (``observe``, a start): the service's
    label says whether it holds a credential, and from which provider."""
    source = labels.get(LABEL_CREDENTIALS, "")
    creds: AnyCredentials = (Anonymous if source in ("", "anonymous")
                             else Credentials(registry="", source=source))
    typed = task_failure(err, creds, pinned=True)  # our services always run a pinned digest
    if typed is None:
        return None
    held = "no credential" if creds.anonymous else f"the credential of provider {source!r}"
    return type(typed)(f"{typed.message}\n  the service holds {held}",
                       hint="run `xtm-composer apply`: it sends the credential the chain "
                            "resolves now")


def observed(service: Mapping[str, Any], tasks: Sequence[Mapping[str, Any]],
             node_name: Callable[[str | None], str]) -> Observed:
    """What a service and its tasks say of the connector (docs/swarm.md, "Observing")."""
    spec = service.get("Spec") or {}
    labels = dict(spec.get("Labels") or {})
    labels.pop(LABEL_CREDENTIAL_ID, None)
    image = str(((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image") or "")
    wanted = replicas(service)
    ordered = newest_first(tasks)
    running = [t for t in ordered if is_running(t)]
    failures = [t for t in ordered if (t.get("Status") or {}).get("State") in ("failed",
                                                                              "rejected")]
    started_at = str((running[0].get("Status") or {}).get("Timestamp")) if running else None
    error: ComposerError | None = None
    state: ObservedState
    if labels.get(LABEL_FAILED):
        state = "failed"
        detail = f"scaled to 0 after its tasks were rejected: {labels[LABEL_FAILED]}"
        error = stored_failure(labels, labels[LABEL_FAILED])
    elif wanted == 0:
        state = "stopped"
        detail = "0 replicas" + (f", {len(running)} stopping" if running else "")
    elif running:
        state = "started"
        nodes = ", ".join(sorted({node_name(t.get("NodeID")) for t in running}))
        detail = f"{len(running)}/{wanted} running on {nodes}"
    else:
        current = ordered[0] if ordered else None
        status = (current or {}).get("Status") or {}
        task_state = str(status.get("State") or "no task yet")
        err = redact.scrub(str(status.get("Err") or ""))
        where = node_name((current or {}).get("NodeID"))
        if current is not None and task_state in ("rejected", "failed"):
            state = "failed"
            detail = f"task {task_state} on {where}: {err or status.get('Message') or ''}"
            if task_state == "rejected":
                error = stored_failure(labels, err)
        elif failures:
            state = "restarting"
            last = failures[0].get("Status") or {}
            detail = (f"0/{wanted} running, task {task_state} on {where}; last failure: "
                      f"{redact.scrub(str(last.get('Err') or last.get('Message') or ''))}")
        else:
            state = "pending"
            detail = f"0/{wanted} running, task {task_state} on {where}" + (
                f": {err}" if err else "")
    return Observed(id=str(service.get("ID")), name=str(spec.get("Name") or ""), labels=labels,
                    state=state, image=image, restart_count=len(failures), started_at=started_at,
                    replicas_wanted=wanted, replicas_running=len(running), detail=detail,
                    error=error)
