"""The ``kubernetes`` backend: one Deployment per connector, pull Secrets from the credential chain.

* ``apply``: the registry's pull Secret (only the credential the chain resolved for it), then the
  Deployment, both by server-side apply under our field manager (fields a user or another
  controller owns survive); a Deployment whose immutable selector differs is deleted and recreated
  (said in ``Applied.detail``); pull Secrets no Deployment of this manager uses any more are
  deleted. A started workload is then watched (bounded by ``rollout_timeout``) until its pod runs,
  crash-loops (returned as ``restarting``) or cannot pull (the typed registry error, explained
  with the workload's credential trace).
* ``observe``: two requests (Deployments, pods, by label selector); the state comes from the pod,
  not from the replica count.
* ``set_state``: replicas 1 / 0 by a merge patch carrying the resourceVersion read just before
  (a concurrent change -> 409 -> read again, at most 3 times).
* ``remove``: delete with a uid precondition (never a newer Deployment of the same name).
* ``logs``: the newest pod's last N lines (``tailLines``).
* ``events`` (capability ``events``): watches of the Deployments and Pods carrying the labels,
  as workload events (:mod:`composer_plugins.kubernetes.events`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import closing
from typing import Any

from composer_core.auth.chain import Resolution
from composer_core.engine.deploy import explain_pull_failure
from composer_core.engine.labels import LABEL_CONNECTOR, LABEL_HASH, LABEL_MANAGER, name_taken
from composer_core.engine.pullerrors import classify_pull_failure
from composer_core.errors import ComposerError, ContainerError, ContainerNotFound
from composer_core.types import Anonymous, AnyCredentials, Credentials, PullProgress
from composer_core.workload import (
    EVENT_WINDOW,
    Applied,
    ApplyAction,
    Observed,
    Workload,
    WorkloadState,
)
from composer_plugins.kubernetes.api import Api, ApiError, selector
from composer_plugins.kubernetes.events import KubernetesEvents, Resume
from composer_plugins.kubernetes.objects import (
    LABEL_PULL_SECRET,
    PULL_FAILURES,
    Options,
    check_name,
    deployment,
    mask_secret,
    pull_credentials,
    pull_secret,
    secret_name,
    selector_labels,
)

APPS = "apps/v1"
#: how often a rollout is looked at, and how many times a conflicting write is retried
POLL_INTERVAL = 0.2
CONFLICT_RETRIES = 3


def render(workloads: Sequence[Workload], manager: str, options: Options) -> list[dict[str, Any]]:
    """Every object the workloads need: one pull Secret per registry with a credential, then
    the Deployments. No cluster involved (``apply --offline``)."""
    secrets: dict[str, dict[str, Any]] = {}
    deployments = []
    for workload in workloads:
        creds = pull_credentials(workload.credentials)
        name = None
        if creds is not None:
            name = secret_name(manager, creds.registry)
            secrets.setdefault(name, pull_secret(creds, manager, options.namespace))
        deployments.append(deployment(workload, options, name))
    return [*secrets.values(), *deployments]


def _said(word: str, text: str = "") -> str:
    """A detail whose first word is the state's own word (what ``ps`` shows as the status)."""
    return f"{word} ({text})" if text else word


def _pod_state(pod: Mapping[str, Any]) -> tuple[str, str, Mapping[str, Any]]:
    """(state, detail, container status) of one pod."""
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    container: Mapping[str, Any] = statuses[0] if statuses else {}
    state = container.get("state") or {}
    waiting = state.get("waiting") or {}
    reason = str(waiting.get("reason") or "")
    message = str(waiting.get("message") or "")
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "stopped", "terminating", container
    if reason in PULL_FAILURES:
        return "failed", _said(reason, message), container
    if reason == "CrashLoopBackOff":
        last = (container.get("lastState") or {}).get("terminated") or {}
        code = last.get("exitCode")
        return "restarting", _said(reason, f"restarted {container.get('restartCount', 0)} times, "
                                   f"last exit {last.get('reason') or 'unknown'}"
                                   + (f", code {code}" if code is not None else "")), container
    ended = state.get("terminated")
    if ended is not None and status.get("phase") not in ("Succeeded", "Failed"):
        # it exited and the kubelet restarts it (restartPolicy Always), as in a crash loop
        code = ended.get("exitCode")
        return "restarting", _said("Terminated", f"{ended.get('reason') or 'exited'}"
                                   + (f", code {code}" if code is not None else "")
                                   + f", restarted {container.get('restartCount', 0)} times"
                                   ), container
    if status.get("phase") == "Running" and state.get("running") and container.get("ready"):
        return "started", f"running on {pod.get('spec', {}).get('nodeName') or '?'}", container
    if status.get("phase") in ("Succeeded", "Failed"):
        return "stopped", _said(str(status["phase"]), "the pod ended"), container
    if reason:
        return "pending", _said(reason, message), container
    for condition in status.get("conditions") or []:
        if condition.get("status") == "False" and condition.get("reason"):
            return "pending", _said(str(condition["reason"]),
                                    str(condition.get("message") or "")), container
    if state.get("running"):
        return "pending", _said("Running", "not ready"), container
    return "pending", str(status.get("phase") or "Pending"), container


class KubernetesBackend:
    """The workload contract on a Kubernetes namespace (see the module's docstring)."""

    name = "kubernetes"
    capabilities = frozenset({"replicas", "events"})

    def __init__(self, api: Api, options: Options, *, rollout_timeout: float = 60.0,
                 poll_interval: float = POLL_INTERVAL) -> None:
        self.api = api
        self.options = options
        self.endpoint = f"{api.endpoint} namespace {api.namespace}"
        self.rollout_timeout = rollout_timeout
        self.poll_interval = poll_interval
        self.stop_timeout = 10
        #: the resolution applied per workload name: what a later observation explains itself by
        self._resolutions: dict[str, Resolution] = {}
        #: pull Secret name -> the data this process last applied (a steady pass sends nothing)
        self._applied_secrets: dict[str, Any] = {}
        self._lock = threading.Lock()
        #: one writer of Secrets and Deployments at a time (see _write)
        self._writing = threading.RLock()
        #: label selector -> where the next window of events resumes (kept by this instance)
        self._resumes: dict[str, Resume] = {}

    # --- observe ----------------------------------------------------------------------------

    def observe(self, labels: Mapping[str, str]) -> list[Observed]:
        deployments = self.api.list(APPS, "deployments", labels)
        pods = self.api.list("", "pods", labels)
        return [self._observed(d, pods) for d in deployments]

    @staticmethod
    def _pods_of(dep: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> list[Any]:
        match = (dep.get("spec", {}).get("selector") or {}).get("matchLabels") or {}
        if not match:
            return []
        mine = [p for p in pods if all((p.get("metadata", {}).get("labels") or {}).get(k) == v
                                       for k, v in match.items())]
        wanted = (dep.get("metadata", {}).get("labels") or {}).get(LABEL_HASH)
        # the pods of the current template first, newest first
        return sorted(mine, key=lambda p: (
            (p["metadata"].get("labels") or {}).get(LABEL_HASH) == wanted,
            p["metadata"].get("creationTimestamp") or ""), reverse=True)

    def _observed(self, dep: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> Observed:
        meta = dep.get("metadata") or {}
        spec = dep.get("spec") or {}
        name = str(meta.get("name"))
        containers = (((spec.get("template") or {}).get("spec") or {}).get("containers") or [{}])
        image = str(containers[0].get("image") or "")
        wanted = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
        running = int((dep.get("status") or {}).get("readyReplicas") or 0)
        mine = self._pods_of(dep, pods)
        error: ComposerError | None = None
        restarts, started_at = 0, None
        if wanted == 0:
            state, detail = "stopped", _said("stopped", "scaled to 0" + (", terminating"
                                                                       if mine else ""))
        elif not mine:
            state, detail = "pending", _said("pending", "no pod yet")
        else:
            state, detail, container = _pod_state(mine[0])
            restarts = int(container.get("restartCount") or 0)
            started_at = ((container.get("state") or {}).get("running") or {}).get("startedAt")
            if state == "failed":
                waiting = (container.get("state") or {}).get("waiting") or {}
                error = self._pull_error(name, image, mine[0], str(waiting.get("message")
                                                                   or waiting.get("reason")))
        return Observed(id=str(meta.get("uid")), name=name, labels=dict(meta.get("labels") or {}),
                        state=state,  # type: ignore[arg-type]
                        image=image, restart_count=restarts, started_at=started_at,
                        replicas_wanted=wanted, replicas_running=running, detail=detail,
                        error=error)

    def _pull_error(self, name: str, image: str, pod: Mapping[str, Any],
                    text: str) -> ComposerError:
        with self._lock:
            resolution = self._resolutions.get(name)
        if resolution is not None:
            return explain_pull_failure(classify_pull_failure(text, resolution.credentials),
                                        resolution, self.name)
        # not applied by this process: what was sent is told by the pod's pull Secrets
        pull_secrets = (pod.get("spec") or {}).get("imagePullSecrets") or []
        sent: AnyCredentials = Anonymous
        if pull_secrets:
            sent = Credentials(registry=image.split("/")[0], source="kubernetes pull secret "
                               + str(pull_secrets[0].get("name")))
        error = classify_pull_failure(text, sent)
        error.hint = error.hint or "`xtm-composer apply` explains it with the credential trace"
        return error

    # --- apply ------------------------------------------------------------------------------

    def apply(self, workload: Workload, current: Observed | None, *,
              progress: Callable[[PullProgress], None] | None = None) -> Applied:
        check_name(workload.name)
        manager = workload.labels[LABEL_MANAGER]
        existing = self._existing(workload.name)
        if existing is not None and (existing["metadata"].get("labels") or {}).get(
                LABEL_MANAGER) != manager:
            raise name_taken(workload.name, f"kubernetes namespace {self.api.namespace}", manager)
        with self._lock:
            self._resolutions[workload.name] = workload.resolution
        applied, action, detail = self._write(workload, existing, manager)
        observed = self._rollout(applied, workload)
        if not detail:
            detail = f"generation {applied.get('metadata', {}).get('generation', '?')}"
        return Applied(action=action, observed=observed, detail=detail)

    def _write(self, workload: Workload, existing: Any,
               manager: str) -> tuple[Any, ApplyAction, str]:
        """The pull Secret, the Deployment, and the Secrets no longer used: one writer at a time
        (a parallel apply's collection must not delete a Secret before its Deployment uses it)."""
        with self._writing:
            creds = pull_credentials(workload.credentials)
            secret = None
            if creds is not None:
                secret = secret_name(manager, creds.registry)
                self._apply_secret(pull_secret(creds, manager, self.api.namespace))
            body = deployment(workload, self.options, secret)
            detail = ""
            action: ApplyAction
            try:
                applied = self.api.apply(APPS, "deployments", workload.name, body)
            except ApiError as exc:
                if not (exc.status == 422 and existing is not None
                        and any(c.startswith("spec.selector") for c in exc.causes)):
                    raise
                self._recreate(existing)
                applied = self.api.apply(APPS, "deployments", workload.name, body)
                action, detail = "replaced", ("spec.selector is immutable and differed: the "
                                              "Deployment was deleted and recreated")
            else:
                action = self._action(existing, workload)
            if existing is not None and self._secrets_of(existing) != (
                    [secret] if secret else []):
                self._collect_secrets(manager)
        return applied, action, detail

    def _existing(self, name: str) -> Any:
        try:
            return self.api.get(APPS, "deployments", name)
        except ContainerNotFound:
            return None

    @staticmethod
    def _secrets_of(dep: Mapping[str, Any]) -> list[str]:
        pod_spec = ((dep.get("spec") or {}).get("template") or {}).get("spec") or {}
        return [str(s.get("name")) for s in pod_spec.get("imagePullSecrets") or []]

    @staticmethod
    def _action(existing: Any, workload: Workload) -> ApplyAction:
        if existing is None:
            return "created"
        labels = existing["metadata"].get("labels") or {}
        replicas = (existing.get("spec") or {}).get("replicas")
        if labels.get(LABEL_HASH) == workload.config_hash:
            wanted = 1 if workload.state == "started" else 0
            if replicas == wanted:
                return "unchanged"
            return "started" if wanted else "stopped"
        return "updated"

    def _recreate(self, existing: Mapping[str, Any]) -> None:
        name = str(existing["metadata"]["name"])
        try:
            self.api.delete(APPS, "deployments", name, uid=existing["metadata"].get("uid"))
        except ContainerNotFound:
            return
        deadline = time.monotonic() + self.rollout_timeout
        for _ in range(int(self.rollout_timeout / self.poll_interval) + 2):
            if self._existing(name) is None:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(self.poll_interval)
        raise ContainerError(f"Deployment {name!r} was deleted to change its selector but is "
                             f"still there after {self.rollout_timeout:g}s",
                             hint="look at its finalizers (`kubectl get deployment "
                                  f"{name} -o yaml`); the next pass tries again")

    def _rollout(self, dep: Mapping[str, Any], workload: Workload) -> Observed:
        """What the workload is once its pod runs, crash-loops or fails to pull: a list of its
        pods, then a watch from there (bounded by ``rollout_timeout``; a watch that ends early
        is followed by a new list)."""
        labels = {**selector_labels(workload.labels), LABEL_HASH: workload.config_hash}
        observed = self._observed(dep, [])
        if workload.state != "started":
            return observed
        deadline = time.monotonic() + self.rollout_timeout
        for _ in range(int(self.rollout_timeout / self.poll_interval) + 2):
            items, version = self.api.list_from("", "pods", labels)
            pods = {p["metadata"]["name"]: p for p in items}
            observed = self._observed(dep, pods.values())
            if observed.error is not None:
                raise observed.error
            remaining = deadline - time.monotonic()
            if observed.state in ("started", "restarting") or remaining <= 0:
                return observed
            with closing(self.api.watch("", "pods", labels, version,
                                        math.ceil(remaining))) as events:
                for kind, pod in events:
                    if kind == "ERROR":  # such as 410 Gone: list again
                        break
                    name = str((pod.get("metadata") or {}).get("name"))
                    if kind == "DELETED":
                        pods.pop(name, None)
                    else:
                        pods[name] = pod
                    observed = self._observed(dep, pods.values())
                    if observed.error is not None:
                        raise observed.error
                    if observed.state in ("started", "restarting"):
                        return observed
            if time.monotonic() > deadline:
                break
            time.sleep(self.poll_interval)  # the watch ended early: not in a tight loop
        return observed

    def render(self, workloads: Sequence[Workload], manager: str, *,
               secrets: bool = False) -> list[dict[str, Any]]:
        """The objects an apply of ``workloads`` writes (pull Secrets first), the Secrets'
        data masked unless ``secrets``. No request."""
        objects = render(workloads, manager, self.options)
        return objects if secrets else [mask_secret(o) for o in objects]

    def _collect_secrets(self, manager: str) -> list[str]:
        """Delete this manager's pull Secrets that none of its Deployments references."""
        with self._writing:
            return self._collect_unused(manager)

    def _collect_unused(self, manager: str) -> list[str]:
        used = {name for dep in self.api.list(APPS, "deployments", {LABEL_MANAGER: manager})
                for name in self._secrets_of(dep)}
        deleted = []
        for secret in self.api.list("", "secrets", {LABEL_MANAGER: manager,
                                                    LABEL_PULL_SECRET: "true"}):
            name = str(secret["metadata"]["name"])
            if name not in used:
                try:
                    self.api.delete("", "secrets", name, uid=secret["metadata"].get("uid"))
                except ContainerNotFound:
                    pass
                with self._lock:
                    self._applied_secrets.pop(name, None)
                deleted.append(name)
        return deleted

    def _apply_secret(self, obj: Mapping[str, Any]) -> None:
        name = str(obj["metadata"]["name"])
        self.api.apply("", "secrets", name, obj)
        with self._lock:
            self._applied_secrets[name] = obj["data"]

    def sync_pull_secrets(self, workloads: Sequence[Workload], manager: str) -> list[str]:
        """What a fleet pass calls with every connector's workload: the pull Secret of each
        registry they use is applied when its credential differs from what this process last
        applied (a rotated credential reaches the cluster on the next pass; a steady pass sends
        nothing). The Secrets applied, by name."""
        done = []
        for obj in render(workloads, manager, self.options):
            if obj["kind"] != "Secret":
                continue
            with self._lock:
                same = self._applied_secrets.get(obj["metadata"]["name"]) == obj["data"]
            if not same:
                with self._writing:
                    self._apply_secret(obj)
                done.append(obj["metadata"]["name"])
        return done

    # --- set_state, remove, logs --------------------------------------------------------------

    def set_state(self, current: Observed, state: WorkloadState) -> Observed:
        replicas = 1 if state == "started" else 0
        for attempt in range(CONFLICT_RETRIES):
            dep = self._existing(current.name)
            if dep is None or dep["metadata"].get("uid") != current.id:
                raise ContainerNotFound(f"Deployment {current.name!r} is gone from namespace "
                                        f"{self.api.namespace!r}")
            patch = {"metadata": {"resourceVersion": dep["metadata"].get("resourceVersion")},
                     "spec": {"replicas": replicas}}
            try:
                patched = self.api.merge_patch(APPS, "deployments", current.name, patch)
            except ApiError as exc:
                if exc.status == 409 and attempt + 1 < CONFLICT_RETRIES:
                    continue  # changed since read: read again
                raise
            labels = selector_labels(patched["metadata"].get("labels") or {})
            return self._observed(patched, self.api.list("", "pods", labels))
        raise AssertionError("unreachable")  # pragma: no cover

    def remove(self, current: Observed) -> None:
        try:
            self.api.delete(APPS, "deployments", current.name, uid=current.id)
        except ApiError as exc:
            if exc.status == 409:  # the uid precondition: another Deployment has that name now
                raise ContainerNotFound(f"Deployment {current.name!r} (uid {current.id}) is gone "
                                        f"from namespace {self.api.namespace!r}") from None
            raise
        with self._lock:
            self._resolutions.pop(current.name, None)
        manager = current.labels.get(LABEL_MANAGER)
        if manager:
            self._collect_secrets(manager)

    def logs(self, current: Observed, tail: int) -> str:
        labels = {k: v for k, v in current.labels.items() if k in (LABEL_MANAGER, LABEL_CONNECTOR)}
        pods = self.api.list("", "pods", labels)
        dep = self._existing(current.name)
        if dep is None:
            raise ContainerNotFound(f"Deployment {current.name!r} is gone from namespace "
                                    f"{self.api.namespace!r}")
        mine = self._pods_of(dep, pods)
        if not mine or tail <= 0:
            return ""
        return self.api.log(str(mine[0]["metadata"]["name"]), tail)

    # --- events -------------------------------------------------------------------------------

    def events(self, labels: Mapping[str, str], since: float | None = None,
               window: float = EVENT_WINDOW) -> KubernetesEvents:
        """The events of the Deployments and Pods carrying ``labels`` for ``window`` seconds:
        two watch requests held open (capability ``events``). ``since`` given: resume where the
        last window of this instance ended (by ``resourceVersion``, nothing in between is
        missed); without such a window (``since`` None, a new connection, the last one failed):
        list both first (two requests) and watch from the lists' versions: from now."""
        key = selector(labels)
        resume = None
        if since is not None:
            with self._lock:
                resume = self._resumes.pop(key, None)
        if resume is None:
            resume = Resume.listed(self.api, labels)

        def keep(reached: Resume) -> None:
            with self._lock:
                self._resumes[key] = reached

        return KubernetesEvents(self.api, labels, resume, until=time.time() + window, keep=keep)

    def close(self) -> None:
        self.api.close()
