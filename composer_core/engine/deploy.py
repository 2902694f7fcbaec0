"""The deploy flow: image -> credentials -> pull with exactly that credential -> create -> start.

:class:`ContainerDeployer` is the container-level flow for inputs already resolved (what
:class:`~composer_core.engine.container_backend.ContainerBackend` drives with a workload's
credential and TLS decision); :class:`Deployer` adds the resolution and is what a single container
deploy (``pull``, tests) uses:

1. resolve the image (the resolvers of ``images.resolvers``);
2. resolve its credentials (the providers of ``auth.chain``): one credential, or anonymous;
3. pull with at most that one credential, scoped to the image's registry (an anonymous pull sends
   an explicitly empty auth, so that no engine falls back to credentials of its own);
4. create the container with its name, env and labels (``opencti-manager``,
   ``opencti-connector-id`` and ``opencti-config-hash``, a hash of the resolved image and the env);
5. start it.

Deploying is idempotent: the same name with the same config hash does nothing (it only starts a
stopped container). A changed hash replaces the container without ever leaving a half-made one or
a stopped old one behind: the new image is pulled and the new container created *before* the old
one is touched, the new one starts before the old one stops, and a failure after that rolls back
to the old container. A failed create removes only the container that very create made (a
per-call label), never one another process created under the same name.

A pull failure becomes one readable, typed error with the engine's own text, what was sent, the
credential trace and the remedy (:func:`explain_pull_failure`). Env values are never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from composer_core import redact
from composer_core.auth.chain import Resolution, forget_rejected, resolve_credentials
from composer_core.engine.labels import (
    LABEL_CONNECTOR,
    LABEL_CREATION,
    LABEL_HASH,
    LABEL_MANAGER,
    is_managed,
    manager_id,
    name_taken,
)
from composer_core.engine.progress import ProgressFactory, no_progress
from composer_core.engine.spec import NAME_RULE, env_key_problem, env_value_problem, name_problem
from composer_core.engine.tls import TlsDecision, tls_decision
from composer_core.errors import (
    AuthenticationRequired,
    ComposerError,
    ContainerError,
    CredentialsRejected,
    ImageNotFound,
    InsecureRegistryNotAllowed,
    RegistryError,
    RegistryTLSError,
    RegistryUnreachable,
    UsageError,
)
from composer_core.images.resolve import resolve_image
from composer_core.pluginmanager import Plugins
from composer_core.settings import Settings
from composer_core.types import ContainerInfo, ContainerSpec, PullProgress, ResolvedImage, Runtime

log = logging.getLogger("xtm_composer.deploy")

#: env variables whose values are registered with the redactor (masked in any output)
SECRET_ENV = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|API_?KEY|PRIVATE_?KEY|CREDENTIAL", re.I)
#: after a failed create, how often and how long to look for the container another pass is making
RACE_INSPECTS = 25
RACE_PAUSE = 0.2
DeployAction = Literal["created", "replaced", "unchanged", "started"]


# --- input ------------------------------------------------------------------------------------


def validate_name(name: str) -> str:
    if name_problem(name) is not None:
        raise UsageError(f"invalid container name {name!r}", hint=f"a name is {NAME_RULE}")
    return name


def validate_env(env: Mapping[str, str]) -> dict[str, str]:
    """The rules of :mod:`composer_core.engine.spec`, the same as the connectors file's."""
    for key, value in env.items():
        problem = env_key_problem(key)
        if problem is not None:
            raise UsageError(f"invalid environment variable name {key!r}: "
                             f"{problem.partition(': ')[2]}",
                             hint="use --env KEY=VALUE with a non-empty KEY without '=' or "
                                  "control characters")
        if not isinstance(value, str):
            raise UsageError(f"environment variable {key} must be a string")
        problem = env_value_problem(value)
        if problem is not None:
            raise UsageError(f"environment variable {key}: {problem}",
                             hint="remove the NUL character from the value")
        if SECRET_ENV.search(key):
            redact.register(value)
    return dict(env)


def parse_env(pairs: Iterable[str]) -> dict[str, str]:
    """``["K=V", ...]`` -> ``{"K": "V"}``; the value may contain ``=``, the key may not."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            # never echo the pair: its value may be a secret
            raise UsageError(f"invalid --env {key if sep else '(no =)'!r}: expected KEY=VALUE",
                             hint="for example --env OPENCTI_URL=http://opencti:8080")
        env[key] = value
    return validate_env(env)


def config_hash(reference: str, env: Mapping[str, str],
                command: Sequence[str] | None = None) -> str:
    """sha256 of a canonical JSON of the resolved image and the sorted env (and the command)."""
    data: dict[str, Any] = {"image": reference, "env": sorted([k, v] for k, v in env.items())}
    if command:
        data["command"] = list(command)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PullResult:
    image: ResolvedImage
    resolution: Resolution
    runtime: str
    image_id: str

    @property
    def reference(self) -> str:
        return self.image.ref.normalized()

    def to_dict(self) -> dict[str, Any]:
        creds = self.resolution.credentials
        return {"runtime": self.runtime, "image": self.image.input, "resolved": self.reference,
                "registry": self.resolution.registry, "image_id": self.image_id,
                "source": creds.source, "username": creds.username,
                "key": creds.key}


@dataclass(frozen=True)
class DeployResult:
    action: DeployAction
    container: ContainerInfo
    image: ResolvedImage
    runtime: str
    config_hash: str
    pull: PullResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "action": self.action, "name": self.container.name,
                "id": self.container.id, "image": self.image.input,
                "resolved": self.image.ref.normalized(), "status": self.container.status,
                "config_hash": self.config_hash,
                "source": self.pull.resolution.source if self.pull else None}


# --- pull failures ----------------------------------------------------------------------------


def _sent(resolution: Resolution) -> str:
    creds = resolution.credentials
    if creds.anonymous:
        return "no credentials (anonymous pull)"
    who = f"user {creds.username!r}" if creds.username else "an identity token"
    key = creds.key
    return f"{who} from provider {creds.source!r}" + (f" (matched {key})" if key else "")


def explain_pull_failure(exc: RegistryError, resolution: Resolution, runtime: str) -> RegistryError:
    """The same error type with one readable message: headline, the engine's own text, what was
    sent, the credential trace; and the remedy as hint."""
    registry = resolution.registry
    image = resolution.image.ref.normalized()
    creds = resolution.credentials
    engine_text = redact.scrub(exc.message)
    hint = exc.hint
    if isinstance(exc, InsecureRegistryNotAllowed):
        headline = engine_text
    elif isinstance(exc, AuthenticationRequired):
        headline = (f"authentication required: {registry} refused the pull of {image}, which was "
                    f"anonymous because no credential provider had credentials for {registry}")
        hint = (f"add username/password for {registry} to the settings "
                f"(opencti.daemon.docker.registry or registries), or run `docker login {registry}`")
    elif isinstance(exc, CredentialsRejected):
        where = creds.file or creds.key
        headline = (f"unauthorized: {registry} rejected the credentials ({_sent(resolution)}) "
                    f"for {image}")
        hint = (f"verify them with `docker login {registry}`, then fix them in provider "
                f"{creds.source!r}" + (f" ({where})" if where else ""))
    elif isinstance(exc, RegistryUnreachable):
        headline = f"registry {registry} is unreachable: the pull of {image} failed"
        hint = ("check the registry URL (the image name, opencti.daemon.docker.registry.url) and "
                "the network between the engine and the registry")
    elif isinstance(exc, RegistryTLSError) and "http response to https" in engine_text.lower():
        headline = f"TLS expected, but {registry} answered in plain HTTP: the pull of {image} failed"
        hint = (f"set insecure: true for {registry} in opencti.daemon.docker.registry or registries "
                "(with Docker, the daemon must list it in insecure-registries too)")
    elif isinstance(exc, RegistryTLSError):
        headline = f"TLS verification of {registry} failed: the pull of {image} failed"
        hint = (f"trust the registry's CA on the engine host (/etc/docker/certs.d/{registry}/ca.crt, "
                f"/etc/containers/certs.d/{registry}/ca.crt), or set insecure: true for "
                f"{registry} (not for production)")
    elif isinstance(exc, ImageNotFound):
        headline = f"{image} was not found at {registry}"
        hint = "check the image name and tag (`xtm-composer image resolve IMAGE`)"
    else:
        headline = f"pulling {image} failed"
    trace = "\n    ".join(resolution.trace_lines()) or "(no provider asked)"
    lines = [headline]
    if engine_text != headline:
        lines.append(f"  {runtime} said: {engine_text}")
    lines += [f"  credentials sent: {_sent(resolution)}", f"  credential chain:\n    {trace}"]
    return type(exc)(redact.scrub("\n".join(lines)), hint=redact.scrub(hint) if hint else None)


# --- the flow ---------------------------------------------------------------------------------


def _quietly(what: str, action: Callable[[], object]) -> bool:
    """Run a rollback or cleanup step; a failure is logged, never hides the original error."""
    try:
        action()
        return True
    except ComposerError as exc:
        log.warning("%s failed: %s", what, redact.scrub(exc.message))
        return False


def container_spec(resolved: ResolvedImage, name: str, env: Mapping[str, str], *, manager: str,
                   connector_id: str, command: Sequence[str] | None = None) -> ContainerSpec:
    """The container a deployment wants: its name, env, command and the labels that identify it
    (manager, connector, and the config hash of the resolved image, env and command)."""
    reference = resolved.ref.normalized()
    labels = {LABEL_MANAGER: manager, LABEL_CONNECTOR: connector_id,
              LABEL_HASH: config_hash(reference, env, command)}
    return ContainerSpec(name=name, image=reference, env=dict(env), labels=labels,
                         command=tuple(command) if command else None)


def is_current(container: ContainerInfo, spec: ContainerSpec) -> bool:
    """The one "does the hash differ?" decision: ``container`` already is ``spec`` (same manager,
    connector and config hash). Both the fleet's plan and a single deploy ask only this."""
    return all(container.labels.get(key) == value for key, value in spec.labels.items())


class ContainerDeployer:
    """The container-level flow on one connected runtime, for inputs already resolved: pull with
    the one credential given, create, replace with rollback, recreate. No settings, no plugins:
    :class:`~composer_core.engine.container_backend.ContainerBackend` drives it with what a
    :class:`~composer_core.workload.Workload` carries; :class:`Deployer` adds the resolution.

    Each resolved image is pulled at most once per deployer (a pass deploying twenty connectors
    of the same image pulls it once, even from parallel threads); create a new one to pull again.
    """

    def __init__(self, runtime: Runtime, manager: str, *, progress: ProgressFactory | None = None,
                 stop_timeout: int = 10) -> None:
        self.runtime = runtime
        self.manager = manager
        self.progress = progress or no_progress
        self.stop_timeout = stop_timeout
        self._pulled: dict[str, PullResult] = {}
        #: pulls that failed, by reference: the deployments waiting on the same pull fail with its
        #: error instead of pulling again
        self._failed: dict[str, RegistryError] = {}
        self._pull_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    # --- pull -------------------------------------------------------------------------------

    def _inputs(self, resolved: ResolvedImage) -> tuple[Resolution, TlsDecision]:
        """The credential and TLS decision for ``resolved`` when the caller gave none."""
        raise UsageError(f"no credential resolution was given for {resolved.ref.normalized()}",
                         hint="this is a bug of the caller: hand the workload's resolution over")

    def _pull(self, resolved: ResolvedImage, resolution: Resolution | None = None,
              tls: TlsDecision | None = None,
              progress: Callable[[PullProgress], None] | None = None) -> PullResult:
        reference = resolved.ref.normalized()
        with self._locks_lock:
            lock = self._pull_locks.setdefault(reference, threading.Lock())
        with lock:  # parallel deployments of one image: one pull, the others wait for it
            if reference in self._pulled:
                log.debug("%s already pulled by this deployer", reference)
                return self._pulled[reference]
            if reference in self._failed:
                raise self._failed[reference]
            if resolution is None or tls is None:
                resolution, tls = self._inputs(resolved)
            try:
                result = self._pull_with(resolved, resolution, tls, progress)
            except RegistryError as exc:  # recorded before the next waiter gets the lock
                self._failed[reference] = exc
                raise
            self._pulled[reference] = result
            return result

    def _pull_with(self, resolved: ResolvedImage, resolution: Resolution, tls: TlsDecision,
                   progress: Callable[[PullProgress], None] | None) -> PullResult:
        creds = resolution.credentials
        log.debug("Pull credentials - Source: %s, Key: %s, User: %s", creds.source,
                  creds.key, creds.username)
        try:
            if progress is not None:
                image_id = self.runtime.pull(resolved.ref, creds, tls=tls, progress=progress)
            else:
                with self.progress(resolved.pull_name) as callback:
                    image_id = self.runtime.pull(resolved.ref, creds, tls=tls, progress=callback)
        except RegistryError as exc:
            raise explain_pull_failure(exc, resolution, self.runtime.name) from None
        return PullResult(resolved, resolution, self.runtime.name, image_id)

    def put(self, resolved: ResolvedImage, spec: ContainerSpec, existing: ContainerInfo | None, *,
            start: bool = True, resolution: Resolution | None = None,
            tls: TlsDecision | None = None,
            progress: Callable[[PullProgress], None] | None = None,
            announce: bool = True) -> DeployResult:
        """Create ``spec`` (``existing`` is ``None``: the name is free as far as the caller knows)
        or replace ``existing`` with it (the caller has decided that it is not current).

        Pulls (once per deployer; with ``resolution`` and ``tls`` when given, else as
        :meth:`_inputs` resolves them; ``progress``: the pull's callback instead of the deployer's
        progress factory), then creates and, unless ``start`` is false, starts. The result's
        container is built from what the engine answered, without another inspect.
        """
        digest = spec.labels[LABEL_HASH]
        if announce:  # through a Backend, the core says it (workloads.apply_workload)
            log_deployment(resolved)
        pulled = self._pull(resolved, resolution, tls, progress)
        log.debug("Container %s - env keys: %s", spec.name, ", ".join(sorted(spec.env)) or "(none)")
        if existing is None:
            try:
                info = self._create_and_start(spec, start)
            except ContainerError as exc:
                raced = self._deployed_meanwhile(spec, exc)
                if raced is None:
                    raise
                log.info("Container %s was deployed meanwhile by another pass (same config "
                         "hash %s): nothing to do", spec.name, digest[:12])
                return DeployResult("unchanged", raced, resolved, self.runtime.name, digest,
                                    pulled)
            action: DeployAction = "created"
        else:
            info = self._replace(existing, spec, start)
            action = "replaced"
        log.info("Container %s %s%s (image %s, config hash %s)", spec.name, action,
                 " and started" if start else ", left stopped", spec.image, digest[:12])
        return DeployResult(action, info, resolved, self.runtime.name, digest, pulled)

    def recreate(self, resolved: ResolvedImage, spec: ContainerSpec, wedged: ContainerInfo, *,
                 start: bool = True, resolution: Resolution | None = None,
                 tls: TlsDecision | None = None) -> DeployResult:
        """Remove ``wedged`` (a container that keeps failing to start) and create ``spec`` anew.

        Not a replacement: a wedged container is not running, so there is nothing to keep up, and
        an engine that cannot start it may not rename it either."""
        log.warning("Container %s failed to start on consecutive passes: recreating it",
                    spec.name)
        # before the old one goes: a pull failure leaves it as it is
        self._pull(resolved, resolution, tls)
        self.runtime.remove(wedged.id, force=True)
        result = self.put(resolved, spec, None, start=start, resolution=resolution, tls=tls)
        return result

    def _not_ours(self, name: str) -> ContainerError:
        return name_taken(name, self.runtime.name, self.manager)

    def _deployed_meanwhile(self, spec: ContainerSpec, error: ContainerError) -> ContainerInfo | None:
        """After a failed create: the container another pass made under this name with exactly
        this spec (two passes raced), or ``None``. A container of someone else is named as such."""
        found = self.runtime.inspect(spec.name)
        # Docker reserves a name when a create begins and shows the container only once it is
        # made: after a name conflict, the other pass's create may still be under way. Wait for
        # it, briefly (both engines say "already in use").
        conflict = "already in use" in error.message.lower()
        for _ in range(RACE_INSPECTS if conflict else 0):
            if found is not None:
                break
            time.sleep(RACE_PAUSE)
            found = self.runtime.inspect(spec.name)
        if found is None:
            return None
        if not is_managed(found, self.manager):
            raise self._not_ours(spec.name) from None
        return found if is_current(found, spec) else None

    def _unchanged(self, existing: ContainerInfo, resolved: ResolvedImage,
                   digest: str, start: bool = True) -> DeployResult:
        if existing.status == "running" or not start:
            log.info("Container %s is up to date (config hash %s): nothing to do", existing.name,
                     digest[:12])
            return DeployResult("unchanged", existing, resolved, self.runtime.name, digest)
        log.info("Container %s is up to date but %s: starting it", existing.name, existing.status)
        self.runtime.start(existing.name)
        info = self.runtime.inspect(existing.name) or existing
        return DeployResult("started", info, resolved, self.runtime.name, digest)

    # --- create, replace: never half-made, never destroying what another process made -----

    def _create(self, spec: ContainerSpec) -> ContainerInfo:
        """Create ``spec`` with a creation label unique to this call. If the create fails, only a
        container carrying that very label can be the engine's half-made one: the cleanup
        removes that one, by id, and never a container another process created under the name
        (a 409 on create means exactly that)."""
        creation = secrets.token_hex(8)
        labelled = replace(spec, labels={**spec.labels, LABEL_CREATION: creation})
        try:
            return self.runtime.create(labelled)
        except ComposerError:
            found = self.runtime.inspect(spec.name)
            if found is not None and found.labels.get(LABEL_CREATION) == creation:
                _quietly(f"removing half-made container {spec.name!r}",
                         lambda: self.runtime.remove(found.id, force=True))
            raise

    def _create_and_start(self, spec: ContainerSpec, start: bool = True) -> ContainerInfo:
        created = self._create(spec)
        if not start:
            return created
        try:
            self.runtime.start(spec.name)
        except ComposerError:
            _quietly(f"removing container {spec.name!r} that failed to start",
                     lambda: self.runtime.remove(created.id, force=True))
            raise
        return replace(created, status="running")

    def _replace(self, old: ContainerInfo, spec: ContainerSpec, start: bool = True) -> ContainerInfo:
        """The new container runs before the old one stops, so a connector is down only for the
        time its new container takes to start, and a process killed anywhere in between leaves a
        running connector (under its name or the ``-xtm-old-`` one) for the next pass to tidy."""
        runtime = self.runtime
        token = secrets.token_hex(4)
        staged = replace(spec, name=f"{spec.name}-xtm-new-{token}")
        backup = f"{spec.name}-xtm-old-{token}"
        was_running = old.status in ("running", "restarting")
        # 1. the new container exists before the old one is touched
        created = self._create(staged)
        # 2. the old one steps aside, still running; 3. the new one takes the name and starts
        step = "renaming the old container"
        renamed_old = False
        try:
            runtime.rename(old.id, backup)
            renamed_old = True
            step = "renaming the new container"
            runtime.rename(staged.name, spec.name)
            if start:
                step = "starting the new container"
                runtime.start(spec.name)
        except ComposerError:
            log.warning("Replacing %s failed while %s: rolling back to the old container",
                        spec.name, step)
            _quietly("removing the new container", lambda: runtime.remove(created.id, force=True))
            if renamed_old:
                _quietly("giving the old container its name back",
                         lambda: runtime.rename(old.id, spec.name))
            raise
        # 4. the old one stops (gracefully: the new one already runs) and goes
        if was_running:
            _quietly(f"stopping the old container (now {backup!r})",
                     lambda: runtime.stop(old.id, timeout=self.stop_timeout))
        _quietly(f"removing the old container (now {backup!r})",
                 lambda: runtime.remove(old.id, force=True))
        return replace(created, name=spec.name, status="running" if start else "created")


def log_deployment(resolved: ResolvedImage) -> None:
    """The seed's troubleshooting line, for every deployment on every backend."""
    log.info("Deploying container - Registry: %s, Original image: %s, Pulling: %s",
             resolved.ref.registry, resolved.input, resolved.pull_name)


class Deployer(ContainerDeployer):
    """Deploys containers onto one connected runtime with one set of settings: the flow of
    :class:`ContainerDeployer`, resolving images and credentials itself (the chain of the
    settings, the plugins' resolvers and providers).

    :meth:`deploy` is the whole decision for one container named by the caller: resolve, look at
    the engine, then create, replace, start or nothing. :meth:`put` is what a caller that already
    knows the engine's state hands over: create ``spec``, or replace the current container.
    """

    def __init__(self, runtime: Runtime, settings: Settings, plugins: Plugins, *,
                 progress: ProgressFactory | None = None, environ: Mapping[str, str] | None = None,
                 stop_timeout: int = 10) -> None:
        super().__init__(runtime, manager_id(settings), progress=progress,
                         stop_timeout=stop_timeout)
        self.settings = settings
        self.plugins = plugins
        self.environ = environ

    def _inputs(self, resolved: ResolvedImage) -> tuple[Resolution, TlsDecision]:
        resolution = resolve_credentials(resolved, self.settings, self.plugins, self.environ)
        return resolution, tls_decision(self.settings, resolution.registry)

    def _pull_with(self, resolved: ResolvedImage, resolution: Resolution, tls: TlsDecision,
                   progress: Callable[[PullProgress], None] | None) -> PullResult:
        try:
            return super()._pull_with(resolved, resolution, tls, progress)
        except CredentialsRejected:
            forget_rejected(resolution, self.plugins)
            raise

    def pull(self, image: str | ResolvedImage, *, quiet: bool = False) -> PullResult:
        """Pull ``image`` (text, or already resolved). ``quiet``: the "Pulling image" line at
        debug level."""
        resolved = image if isinstance(image, ResolvedImage) else resolve_image(
            image, self.settings, self.plugins)
        level = logging.DEBUG if quiet else logging.INFO
        reference = resolved.ref.normalized()
        if reference not in self._pulled:
            log.log(level, "Pulling image - Registry: %s, Original image: %s, Pulling: %s",
                    resolved.ref.registry, resolved.input, resolved.pull_name)
        return self._pull(resolved)

    # --- deploy -----------------------------------------------------------------------------

    def deploy(self, image: str, name: str, env: Mapping[str, str] | None = None, *,
               connector_id: str | None = None, command: Sequence[str] | None = None,
               start: bool = True) -> DeployResult:
        """Deploy ``image`` as container ``name``; ``start=False`` leaves a new or replacing
        container created but stopped (a connector whose requested status is stopped)."""
        name = validate_name(name)
        env = validate_env(env or {})
        resolved = resolve_image(image, self.settings, self.plugins)
        spec = container_spec(resolved, name, env, manager=self.manager,
                              connector_id=connector_id or name, command=command)
        existing = self.runtime.inspect(name)
        if existing is not None and not is_managed(existing, self.manager):
            raise self._not_ours(name)
        if existing is not None and is_current(existing, spec):
            return self._unchanged(existing, resolved, spec.labels[LABEL_HASH], start)
        result = self.put(resolved, spec, existing, start=start)
        if result.action == "unchanged":
            return result
        info = self.runtime.inspect(name)
        if info is None:
            raise ContainerError(f"container {name!r} vanished right after it was started")
        return replace(result, container=info)

def deploy(runtime: Runtime, settings: Settings, plugins: Plugins, image: str, name: str,
           env: Mapping[str, str] | None = None, **options: Any) -> DeployResult:
    """One deploy with a fresh :class:`Deployer` (which pulls the image)."""
    deployer_options = {k: options.pop(k) for k in ("progress", "environ", "stop_timeout")
                        if k in options}
    return Deployer(runtime, settings, plugins, **deployer_options).deploy(image, name, env,
                                                                          **options)
