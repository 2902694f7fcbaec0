"""Built-in credential provider ``keychain``: the Docker credential helpers, i.e. the OS keychain.

config.json (the one ``docker-config`` reads) names the helper: ``credHelpers[registry]``, else
``credsStore``; when config.json has neither (nor any ``auths``), the Docker CLI's default store
(:mod:`composer_plugins.keychain.default_store`). We run ``docker-credential-NAME get`` with the
server URL on stdin (Docker Hub: ``https://index.docker.io/v1/``), found on the request's PATH,
with the request's environment (a default store is fail-soft even with ``auth.strict_helpers``).

Fail-soft with a record (the complaints this closes: a missing ``desktop`` helper breaking every
pull, a non-standard "not found" treated as fatal, a locked keychain stalling pulls forever): a helper
that is missing, fails, prints garbage or outlives ``auth.helper_timeout`` is an error of this step,
and the chain goes on, unless ``auth.strict_helpers: true`` makes it fatal. Answers are cached
(:mod:`composer_plugins.keychain.cache`); the detail says whether the helper ran or the cache answered.
Helper output never reaches a detail or a log beyond the protocol's standard texts.

Counted (:func:`composer_core.metrics.recorder`): each execution of a helper, by its NAME and what
it answered, and each cached answer used instead; a helper missing from PATH was not executed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

from composer_core import hookimpl
from composer_core.auth.authfile import AuthFile, read_docker_config
from composer_core.auth.registries import canonical_host, helper_server_url
from composer_core.metrics import recorder
from composer_core.settings import Problems, Settings, SettingsSpec, check_bool, check_number
from composer_core.settings.validate import DAY, MAX_TIMEOUT
from composer_core.types import (
    CredentialProvider,
    CredentialRequest,
    Credentials,
    Failed,
    Found,
    LookupResult,
    NotFound,
)
from composer_plugins.keychain import default_store
from composer_plugins.keychain.cache import HelperCache
from composer_plugins.keychain.choose import Choice, choose_helper
from composer_plugins.keychain.helper import HelperAnswer, find_helper, non_executable_helper, run_get

NAME = "keychain"
PROGRAM = "docker-credential-"
log = logging.getLogger("xtm_composer.auth.keychain")

#: Process-wide: every resolution of every thread shares it. ``CACHE.clear()`` in tests.
CACHE: HelperCache[HelperAnswer] = HelperCache()


def _ttl_of(settings: Settings) -> Callable[[HelperAnswer], float]:
    hit = float(settings.get("auth.cache_ttl"))
    miss = float(settings.get("auth.cache_miss_ttl"))
    # an error is kept as long as a miss: a hanging helper then stalls one pull per TTL, not all
    return lambda answer: hit if answer.outcome == "found" else miss


@dataclass(frozen=True, slots=True)
class Plan:
    """What config.json says for one registry, worked out once per file version."""

    choice: Choice
    registry: str
    server_url: str
    via: str = ""  # "docker-credential-NAME (credsStore in /path/config.json)"
    key: str = ""  # the answer's Credentials.key
    notes: str = ""
    default: bool = False  # the Docker CLI's default store, not named by config.json


def _plan(config: AuthFile, registry: str) -> Plan:
    choice = choose_helper(config.data, registry)
    notes = "".join(f"; {note}" for note in choice.notes)
    server_url = helper_server_url(registry)
    if choice.name is None:
        return Plan(choice, registry, server_url, notes=notes)
    program = PROGRAM + choice.name
    return Plan(choice, registry, server_url, f"{program} ({choice.origin} in {config.path})",
                f"{choice.origin} -> {program}", notes)


def _default_plan(base: str, registry: str, environ: Mapping[str, str]) -> Plan | NotFound:
    """The Docker CLI's default store, when config.json names none (see :mod:`.default_store`);
    ``base`` says why config.json named none."""
    detected = default_store.detect(environ)
    if detected is None:
        return NotFound(f"{base}; no default store either (neither docker-credential-pass with pass "
                        "nor docker-credential-secretservice is on PATH)")
    name, why = detected
    program = PROGRAM + name
    return Plan(Choice(name, "the default store"), registry, helper_server_url(registry),
                f"{base}; asked the Docker CLI's default store instead: {program} ({why})",
                f"default store -> {program}", default=True)


def lookup(request: CredentialRequest) -> LookupResult:
    config = read_docker_config(request.environ)
    if isinstance(config, Failed):
        return config
    if isinstance(config, NotFound):
        base = f"{config.reason}, so no credsStore or credHelpers"
        default = _default_plan(base, canonical_host(request.registry), request.environ)
        return _ask(default, None, request) if isinstance(default, Plan) else default
    plan = config.memo.get((NAME, request.registry))
    if plan is None:
        plan = config.memo[(NAME, request.registry)] = _plan(config, canonical_host(request.registry))
    choice = plan.choice
    if choice.name is None:
        if choice.error:
            return Failed(f"{config.path}: {choice.reason}{plan.notes}", fatal=_strict(request))
        base = f"{config.path}: {choice.reason}{plan.notes}"
        if not default_store.applies(config.data):
            return NotFound(base)
        default = _default_plan(base, plan.registry, request.environ)
        if not isinstance(default, Plan):
            return default
        plan = default
    return _ask(plan, config.path, request)


def _ask(plan: Plan, path: str | None, request: CredentialRequest) -> LookupResult:
    """Run the plan's helper (or read its cached answer) and word the answer."""
    choice = plan.choice
    name = str(choice.name)
    key = (name, plan.server_url, request.environ.get("PATH"))
    cached: tuple[HelperAnswer, float | None] | None = CACHE.get(key)  # the hot path: a dict lookup
    if cached is None:
        executable = find_helper(name, request.environ)
        if executable is None:
            return Failed(_missing(plan, choice, str(path), request), fatal=_fatal(plan, request))
        timeout = float(request.settings.get("auth.helper_timeout"))
        log.debug("running %s get for %s (timeout %g s)", executable, plan.server_url, timeout)
        cached = CACHE.get_or_run(
            key, lambda: run_get(executable, plan.server_url, request.environ, timeout),
            _ttl_of(request.settings))
    answer, remaining = cached
    if remaining is not None:
        recorder().helper_cache_hit(name)
        when = f"; from cache (expires in {remaining:.0f} s)"
    else:  # a helper that timed out or could not start did not "run (0.00 s)"
        recorder().helper_ran(name, answer.result)
        when = "" if answer.seconds is None else f"; helper ran ({answer.seconds:.2f} s)"
    detail = f"{plan.via} for {plan.server_url}: {answer.detail}{when}{plan.notes}"
    if answer.outcome == "not-found":
        return NotFound(detail)
    if answer.outcome == "error":
        return Failed(detail, fatal=_fatal(plan, request))
    token = answer.identity_token
    credentials = Credentials(registry=plan.registry, source=NAME, username=answer.username,
                              password=None if token else answer.secret,
                              identity_token=answer.secret if token else None, key=plan.key, file=path)
    return Found(credentials, detail)


def _missing(plan: Plan, choice: Choice, path: str, request: CredentialRequest) -> str:
    if plan.default:  # detected a moment ago
        return f"{plan.via} is no longer on PATH"
    present = non_executable_helper(str(choice.name), request.environ)
    if present is not None:
        return (f"{plan.via} is on PATH at {present} but is not executable; `chmod +x` it or remove "
                f"{choice.origin} from {path}{plan.notes}")
    return f"{plan.via} is not on PATH; install it or remove {choice.origin} from {path}{plan.notes}"


def _fatal(plan: Plan, request: CredentialRequest) -> bool:
    # a default store is fail-soft: the user never named it, so it never stops a pull
    return _strict(request) and not plan.default


def _strict(request: CredentialRequest) -> bool:
    return request.settings.get("auth.strict_helpers") is True


def forget(credentials: Credentials) -> None:
    """The registry rejected this helper's answer: drop it, so that the next pull asks again."""
    helper = (credentials.key or "").rpartition(f"-> {PROGRAM}")[2]
    server_url = helper_server_url(credentials.registry)

    def same(key: Hashable) -> bool:
        return isinstance(key, tuple) and key[1] == server_url and (not helper or key[0] == helper)

    dropped = CACHE.forget(same)
    log.debug("forgot %d cached helper answer(s) for %s", dropped, server_url)


def _validate(settings: Settings, problems: Problems) -> None:
    check_bool(settings, problems, "auth.strict_helpers")
    check_number(settings, problems, "auth.helper_timeout", what="a positive number of seconds",
                 minimum=0, above_minimum=True, maximum=MAX_TIMEOUT)
    for key in ("auth.cache_ttl", "auth.cache_miss_ttl"):
        check_number(settings, problems, key, what="a number of seconds (0 disables the cache)",
                     minimum=0, maximum=DAY)


@hookimpl
def composer_settings() -> SettingsSpec:
    return SettingsSpec(
        name=NAME, validator=_validate,
        owns=("auth.strict_helpers", "auth.helper_timeout", "auth.cache_ttl", "auth.cache_miss_ttl"),
        defaults={"auth": {"strict_helpers": False,  # a missing, failing or hanging helper is fatal
                           "helper_timeout": 10,     # seconds a helper may take
                           "cache_ttl": 300,         # seconds a helper's answer is reused
                           "cache_miss_ttl": 30}})   # seconds a helper's "not found" is reused


@hookimpl
def composer_credential_providers() -> CredentialProvider:
    return CredentialProvider(name=NAME, lookup=lookup, forget=forget,
                              description="Docker credential helpers (credHelpers, credsStore)")
