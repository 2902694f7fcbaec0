"""The credential chain: for the registry of a resolved image, ask the configured providers in order.

:func:`resolve_credentials` is the one function the deploy flow calls. It walks ``auth.chain``; the
first provider answering ``found`` wins; every step is recorded with its outcome and a detail (which
key matched in which file, or why not), so that ``auth explain`` and every auth error can show
exactly what was tried. Secrets never reach the trace.

Every resolution is counted (:func:`composer_core.metrics.recorder`), once for each provider of
the chain it walked: what it answered, ``skipped`` (an earlier one answered) or ``unavailable``
(its plugin is disabled or failed to load). A resolution stopped by a fatal error counts the
providers walked up to it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from composer_core import redact
from composer_core.auth.registries import canonical_host
from composer_core.errors import CredentialsError
from composer_core.images.resolve import ordered
from composer_core.metrics import recorder
from composer_core.pluginmanager import Plugins
from composer_core.settings import Settings
from composer_core.types import (
    AnyCredentials,
    CredentialRequest,
    Credentials,
    Failed,
    Found,
    LookupResult,
    NotFound,
    ResolvedImage,
)

log = logging.getLogger("xtm_composer.auth")
Outcome = Literal["found", "not-found", "error", "skipped"]


@dataclass(frozen=True, slots=True)
class Step:
    provider: str
    outcome: Outcome
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"provider": self.provider, "outcome": self.outcome, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Resolution:
    """The chain's answer for one image: the credential to send (or Anonymous) and the trace."""

    image: ResolvedImage
    registry: str
    credentials: AnyCredentials
    steps: tuple[Step, ...]

    @property
    def source(self) -> str:
        return self.credentials.source

    def to_dict(self) -> dict[str, Any]:
        creds = self.credentials
        return {
            "image": self.image.input,
            "resolved": self.image.ref.normalized(),
            "registry": self.registry,
            "source": creds.source,
            "username": creds.username,
            "identity_token": bool(creds.identity_token),
            "key": creds.key,
            "file": creds.file,
            "steps": [s.to_dict() for s in self.steps],
        }

    def trace_lines(self) -> list[str]:
        return [f"{s.provider}: {s.outcome} - {s.detail}" for s in self.steps]


def _ask(provider_name: str, lookup: Any, request: CredentialRequest) -> LookupResult:
    try:
        result = lookup(request)
    except Exception as exc:  # noqa: BLE001 - a provider bug is an error of its step, not a crash
        return Failed(f"provider raised {type(exc).__name__}: {redact.scrub(str(exc))}")
    if not isinstance(result, (Found, NotFound, Failed)):
        return Failed(f"provider returned {type(result).__name__}, expected Found, NotFound or "
                      "Failed")
    return result


def _stamped(credentials: AnyCredentials, provider: str) -> AnyCredentials:
    """The credentials, their ``source`` set to the provider that answered: whatever a plugin
    wrote there, the trace, the deploy log and ``forget`` name the provider the core asked."""
    if credentials.source == provider:
        return credentials
    return replace(credentials, source=provider)


def resolve_credentials(image: ResolvedImage, settings: Settings, plugins: Plugins,
                        environ: Mapping[str, str] | None = None) -> Resolution:
    providers = plugins.credential_providers()
    registry = canonical_host(image.ref.registry)  # LOCALHOST:5000 -> localhost:5000
    request = CredentialRequest(image=image.ref, registry=registry, settings=settings,
                                environ=os.environ if environ is None else environ)
    steps: list[Step] = []
    try:
        return _walk(image, registry, request, settings, plugins, providers, steps)
    finally:
        metrics = recorder()
        for step in steps:
            metrics.credential_resolved(step.provider, _metric_outcome(step))


UNAVAILABLE = "plugin disabled or failed to load (see `xtm-composer plugins`)"


def _metric_outcome(step: Step) -> str:
    """The step's outcome as the metric words it (docs/metrics.md)."""
    if step.outcome == "skipped" and step.detail == UNAVAILABLE:
        return "unavailable"
    return step.outcome.replace("-", "_")


def _walk(image: ResolvedImage, registry: str, request: CredentialRequest, settings: Settings,
          plugins: Plugins, providers: Mapping[str, Any], steps: list[Step]) -> Resolution:
    """Ask the providers of ``auth.chain`` in order, appending each step to ``steps``."""
    chosen: AnyCredentials | None = None
    for name in ordered(settings, "auth.chain", providers, plugins, "credential providers"):
        if chosen is not None:
            steps.append(Step(name, "skipped", f"not asked: {chosen.source} already answered"))
            continue
        provider = providers.get(name)
        if provider is None:
            steps.append(Step(name, "skipped", UNAVAILABLE))
            continue
        result = _ask(name, provider.lookup, request)
        if isinstance(result, Found):
            chosen = _stamped(result.credentials, name)
            steps.append(Step(name, "found", redact.scrub(result.detail)))
        elif isinstance(result, NotFound):
            steps.append(Step(name, "not-found", redact.scrub(result.reason)))
        else:
            steps.append(Step(name, "error", redact.scrub(result.reason)))
            if result.fatal:
                raise CredentialsError(
                    f"credential provider {name!r} failed for {registry}: "
                    f"{redact.scrub(result.reason)}",
                    hint="fix the provider, or set auth.strict_helpers: false to skip it")
    if chosen is None:
        trace = "\n    ".join(f"{s.provider}: {s.outcome} - {s.detail}" for s in steps)
        raise CredentialsError(
            f"no credentials for {registry} and anonymous pulls are not allowed "
            f"(auth.chain does not end with anonymous); tried:\n    {trace}",
            hint=f"add credentials for {registry} to the settings, or `docker login {registry}`, "
                 "or add anonymous to auth.chain")
    resolution = Resolution(image, registry, chosen, tuple(steps))
    log.debug("credentials for %s: source=%s key=%s file=%s", image.ref.normalized(),
              chosen.source, chosen.key, chosen.file)
    return resolution


def forget_rejected(resolution: Resolution, plugins: Plugins) -> None:
    """The registry rejected these credentials: let their provider drop them from any cache."""
    creds = resolution.credentials
    if not isinstance(creds, Credentials):
        return
    provider = plugins.credential_providers().get(creds.source)
    if provider is not None and provider.forget is not None:
        try:
            provider.forget(creds)
        except Exception as exc:  # noqa: BLE001
            log.warning("provider %s could not forget rejected credentials: %s", creds.source,
                        redact.scrub(str(exc)))
