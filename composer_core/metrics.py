"""What ``run`` shows of itself: Prometheus metrics and a health verdict, on a small HTTP server.

``manager.metrics.enable`` (default false), ``manager.metrics.host`` (default ``127.0.0.1``) and
``manager.metrics.port`` (default 14270): when enabled, ``run`` serves

* ``/metrics``: the Prometheus text format (``prometheus-client``, imported only then), every
  metric with help text and low-cardinality labels (docs/metrics.md lists them);
* ``/healthz``: 200 while the last successful pass is younger than 3 x
  ``manager.execute_schedule`` (and, before the first one, while ``run`` is younger than that),
  503 otherwise; the body is one line of JSON saying why.

No label or value carries a secret, a connector's env or an image reference: labels are kinds,
states, actions, results and triggers, words of this module's own vocabulary.

**The recording seam** (:func:`recorder`): what the credential chain, the credential helpers and
the platform clients do is counted through the process-wide recorder, a :class:`Metrics` that
records nothing until ``run`` installs its own (:func:`recording`). Plugins call it and know
nothing of Prometheus or of the server::

    from composer_core.metrics import recorder
    recorder().platform_call("opencti", "GetConnectors", "ok")

Its labels come from closed vocabularies: outcomes and results from the tuples below (anything
else is counted as ``other``), names (providers, helpers, platforms, operations) are checked
words (:data:`NAME_PATTERN`), at most :data:`MAX_NAMES` of each kind (the rest: ``other``).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from composer_core.errors import ComposerError, UsageError

if TYPE_CHECKING:
    from composer_core.fleet.reconcile import Pass
    from composer_core.workload import Observed

log = logging.getLogger("xtm_composer.metrics")

#: a pass older than this many schedules makes ``/healthz`` answer 503
HEALTH_SCHEDULES = 3
#: registry error kinds (ComposerError.kind) as the ``kind`` label of registry errors
REGISTRY_ERROR_KINDS = {
    "authentication-required": "auth_required", "unauthorized": "rejected",
    "registry-unreachable": "unreachable", "registry-tls": "tls",
    "image-not-found": "not_found", "insecure-not-allowed": "insecure_not_allowed",
    "registry": "other",
}
#: what starts a pass: the periodic resync, a workload event, a desired-state change, a
#: reconnected event stream
TRIGGERS = ("resync", "event", "source", "reconnect")
OBSERVED_STATES = ("started", "stopped", "restarting", "pending", "failed", "missing")
#: what the credential chain records of each provider it walks, once per resolution: what the
#: provider answered; ``skipped``: not asked (an earlier one answered); ``unavailable``: its
#: plugin is disabled or failed to load
CREDENTIAL_OUTCOMES = ("found", "not_found", "error", "skipped", "unavailable")
#: what a credential helper that ran answered (``timeout``: killed at auth.helper_timeout)
HELPER_RESULTS = ("found", "not_found", "error", "timeout")
#: how a platform call ended: ``ok``, or why not (``not_graphql``: an answer that is not GraphQL
#: JSON; ``invalid_answer``: GraphQL without what the operation needs)
PLATFORM_RESULTS = ("ok", "unreachable", "timeout", "tls", "not_graphql", "graphql_error",
                    "no_data", "invalid_answer", "error")
#: the value of a label that was not in its vocabulary
OTHER = "other"
#: a provider, helper, platform or operation name usable as a label value
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,62}")
#: distinct names per kind of name; a plugin recording more has the rest counted as ``other``
MAX_NAMES = 64


class Health:
    """The ``/healthz`` verdict: healthy while the last successful pass is younger than
    ``bound`` seconds (before the first: while ``run`` is). ``clock``: monotonic seconds."""

    def __init__(self, bound: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.bound = bound
        self._clock = clock
        self._started = clock()
        self._last_success: float | None = None
        self._last_error: str | None = None
        self._lock = threading.Lock()

    def succeeded(self) -> None:
        with self._lock:
            self._last_success = self._clock()
            self._last_error = None

    def failed(self, reason: str) -> None:
        with self._lock:
            self._last_error = reason

    def verdict(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, the one-line JSON body)."""
        with self._lock:
            now = self._clock()
            if self._last_success is None:
                age = now - self._started
                if age <= self.bound:
                    return 200, {"status": "starting", "age_seconds": round(age, 1)}
                reason = f"no successful pass in the {age:.0f}s since run started"
            else:
                age = now - self._last_success
                if age <= self.bound:
                    return 200, {"status": "ok", "last_pass_seconds_ago": round(age, 1)}
                reason = (f"the last successful pass was {age:.0f}s ago, more than "
                          f"{self.bound:g}s")
            if self._last_error:
                reason += f": {self._last_error}"
            return 503, {"status": "unhealthy", "reason": reason}


class Metrics:
    """What ``run`` records; this base records nothing (metrics disabled)."""

    def pass_done(self, trigger: str, result: Pass, seconds: float) -> None:
        """A pass ran (its actions' results are counted)."""

    def pass_failed(self, trigger: str, seconds: float) -> None:
        """A pass could not run (engine or source down)."""

    def event(self, kind: str) -> None:
        """An event of the stream was received."""

    def reconnect(self) -> None:
        """The event stream was opened again after it broke."""

    def backoff(self) -> None:
        """A connector's event reconciles were held back (it restarts in a loop)."""

    def connectors(self, desired: Mapping[str, str], observed: Iterable[Observed]) -> None:
        """The connectors by desired state (``desired``: connector id -> started/stopped) and by
        observed state (a desired connector without a workload is ``missing``)."""

    # --- what the chain and plugins record, through recorder() --------------------------------

    def credential_resolved(self, provider: str, outcome: str) -> None:
        """The chain walked ``provider`` (a name of ``auth.chain``) for one resolution, with
        ``outcome`` (:data:`CREDENTIAL_OUTCOMES`)."""

    def helper_ran(self, helper: str, result: str) -> None:
        """Credential helper ``helper`` (``docker-credential-NAME``'s NAME) was executed and
        answered ``result`` (:data:`HELPER_RESULTS`)."""

    def helper_cache_hit(self, helper: str) -> None:
        """A cached answer of ``helper`` was used instead of executing it."""

    def platform_call(self, platform: str, operation: str, result: str) -> None:
        """A call ``operation`` (a fixed name of the client, e.g. a GraphQL operation name) to
        ``platform`` (the source's name) ended with ``result`` (:data:`PLATFORM_RESULTS`)."""

    def platform_operations(self, platform: str, operations: Sequence[str]) -> None:
        """``platform``'s operations, so that their counters show 0 before the first call."""


_current: Metrics = Metrics()
_declared: dict[str, tuple[str, ...]] = {}
_declared_lock = threading.Lock()


def recorder() -> Metrics:
    """The process-wide recorder: the metrics of ``run`` while it runs with
    ``manager.metrics.enable``, else one that records nothing. Cheap and thread-safe: call it at
    each event, do not keep what it returns."""
    return _current


def declare_platform_operations(platform: str, operations: Sequence[str]) -> None:
    """Declare the operations a platform client makes (once, at the import of the client): their
    counters show 0 from the start of ``run``, before the first call."""
    with _declared_lock:
        _declared[platform] = tuple(operations)
    _current.platform_operations(platform, tuple(operations))


@contextmanager
def recording(metrics: Metrics) -> Iterator[Metrics]:
    """Make ``metrics`` the process-wide recorder for the block (``run`` does, for its life);
    the previous one is back after it."""
    global _current
    previous, _current = _current, metrics
    with _declared_lock:
        declared = dict(_declared)
    for platform, operations in declared.items():
        metrics.platform_operations(platform, operations)
    try:
        yield metrics
    finally:
        _current = previous


class _Vocabulary:
    """Label values of one kind: words of a fixed set, or names (checked and bounded in count);
    anything else is :data:`OTHER`. A value refused is said once, without the value itself (it
    might be anything a plugin had at hand)."""

    def __init__(self, what: str, fixed: Sequence[str] | None = None) -> None:
        self.what = what
        self.fixed = frozenset(fixed) if fixed is not None else None
        self._names: set[str] = set()
        self._lock = threading.Lock()
        self._warned = False

    def __call__(self, value: object) -> str:
        if self.fixed is not None:
            if isinstance(value, str) and value in self.fixed:
                return value
        elif isinstance(value, str) and NAME_PATTERN.fullmatch(value):
            if value in self._names:
                return value
            with self._lock:
                if value in self._names or len(self._names) < MAX_NAMES:
                    self._names.add(value)
                    return value
        if not self._warned:
            self._warned = True
            log.warning("a %s outside its vocabulary was recorded: counted as %r (see "
                        "docs/metrics.md)", self.what, OTHER)
        return OTHER


class PrometheusMetrics(Metrics):
    """The metrics, in a registry of their own (``registry``). ``providers``: the names of
    ``auth.chain``, whose credential counters show 0 from the start."""

    def __init__(self, providers: Iterable[str] = ()) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connectors_desired = Gauge(
            "xtm_composer_connectors_desired", "Connectors of the desired state, by the state "
            "they should be in.", ["state"], registry=r)
        self.connectors_observed = Gauge(
            "xtm_composer_connectors_observed", "Managed workloads by observed state (missing: "
            "a desired connector without a workload).", ["state"], registry=r)
        self.actions = Counter(
            "xtm_composer_actions_total", "Actions of passes, by kind and result.",
            ["action", "result"], registry=r)
        self.pass_seconds = Histogram(
            "xtm_composer_pass_duration_seconds", "Duration of reconciliation passes.",
            ["trigger"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r)
        self.passes = Counter(
            "xtm_composer_passes_total", "Reconciliation passes, by trigger (resync, event, "
            "source, reconnect) and result (ok: it ran; failed: engine or source down).",
            ["trigger", "result"], registry=r)
        self.events = Counter(
            "xtm_composer_events_total", "Workload events received from the event stream, by "
            "kind.", ["kind"], registry=r)
        self.reconnects = Counter(
            "xtm_composer_event_stream_reconnects_total", "Event stream reconnections after it "
            "broke or lagged.", registry=r)
        self.backoffs = Counter(
            "xtm_composer_restart_backoffs_total", "Event reconciles held back because the "
            "connector restarts in a loop.", registry=r)
        self.registry_errors = Counter(
            "xtm_composer_registry_errors_total", "Registry errors of actions, by kind "
            "(auth_required, rejected, unreachable, tls, not_found, insecure_not_allowed, "
            "other).", ["kind"], registry=r)
        self.last_success = Gauge(
            "xtm_composer_last_successful_pass_timestamp_seconds", "When the last pass that "
            "ran ended (seconds since the epoch).", registry=r)
        self.credentials = Counter(
            "xtm_composer_credential_resolutions_total", "Credential chain steps: each "
            "resolution counts once for every provider of auth.chain, by provider and outcome "
            "(found, not_found, error, skipped, unavailable).", ["provider", "outcome"],
            registry=r)
        self.helper_runs = Counter(
            "xtm_composer_credential_helper_executions_total", "docker-credential-* helpers "
            "executed, by helper (the NAME of docker-credential-NAME) and result (found, "
            "not_found, error, timeout).", ["helper", "result"], registry=r)
        self.helper_hits = Counter(
            "xtm_composer_credential_helper_cache_hits_total", "Cached helper answers used "
            "instead of executing the helper, by helper.", ["helper"], registry=r)
        self.platform_calls = Counter(
            "xtm_composer_platform_calls_total", "Calls to the platform of the source, by "
            "platform, operation and result (ok, or why it failed).",
            ["platform", "operation", "result"], registry=r)
        self._provider = _Vocabulary("credential provider name")
        self._outcome = _Vocabulary("credential outcome", CREDENTIAL_OUTCOMES)
        self._helper = _Vocabulary("credential helper name")
        self._helper_result = _Vocabulary("helper result", HELPER_RESULTS)
        self._platform = _Vocabulary("platform name")
        self._operation = _Vocabulary("platform operation")
        self._platform_result = _Vocabulary("platform call result", PLATFORM_RESULTS)
        #: label sets whose counters were made at 0 (:meth:`_first_seen`)
        self._seen: set[tuple[str, ...]] = set()
        self._seen_lock = threading.Lock()
        #: a scrape sees a pass's counters all or none (:meth:`pass_done`, :meth:`text`)
        self._pass_lock = threading.Lock()
        for trigger in TRIGGERS:
            for result in ("ok", "failed"):
                self.passes.labels(trigger, result)
        for name in providers:
            provider = self._provider(name)
            for outcome in CREDENTIAL_OUTCOMES:
                self.credentials.labels(provider, outcome)

    def pass_done(self, trigger: str, result: Pass, seconds: float) -> None:
        with self._pass_lock:
            self.passes.labels(trigger, "ok").inc()
            self.pass_seconds.labels(trigger).observe(seconds)
            self.last_success.set(time.time())
            for step in result.steps:
                if step.action == "nothing" and step.result == "ok":
                    continue
                self.actions.labels(step.action, step.result).inc()
                if step.error is not None and step.error.kind in REGISTRY_ERROR_KINDS:
                    self.registry_errors.labels(REGISTRY_ERROR_KINDS[step.error.kind]).inc()

    def pass_failed(self, trigger: str, seconds: float) -> None:
        with self._pass_lock:
            self.passes.labels(trigger, "failed").inc()
            self.pass_seconds.labels(trigger).observe(seconds)

    def event(self, kind: str) -> None:
        self.events.labels(kind).inc()

    def reconnect(self) -> None:
        self.reconnects.inc()

    def backoff(self) -> None:
        self.backoffs.inc()

    def connectors(self, desired: Mapping[str, str], observed: Iterable[Observed]) -> None:
        for state in ("started", "stopped"):
            self.connectors_desired.labels(state).set(
                sum(1 for s in desired.values() if s == state))
        counts = dict.fromkeys(OBSERVED_STATES, 0)
        seen: set[str] = set()
        for workload in observed:
            counts[workload.state] = counts.get(workload.state, 0) + 1
            if workload.connector_id:
                seen.add(workload.connector_id)
        counts["missing"] = len(set(desired) - seen)
        for state, count in counts.items():
            self.connectors_observed.labels(state).set(count)

    def credential_resolved(self, provider: str, outcome: str) -> None:
        self.credentials.labels(self._provider(provider), self._outcome(outcome)).inc()

    def _first_seen(self, labels: tuple[str, ...]) -> bool:
        """Whether ``labels`` are seen for the first time (their counters are then made at 0)."""
        if labels in self._seen:
            return False
        with self._seen_lock:
            if labels in self._seen:
                return False
            self._seen.add(labels)
            return True

    def _helper_label(self, helper: str) -> str:
        """``helper``'s label; its counters are made (at 0) when it is first seen."""
        label = self._helper(helper)
        if self._first_seen(("helper", label)):
            for result in HELPER_RESULTS:
                self.helper_runs.labels(label, result)
            self.helper_hits.labels(label)
        return label

    def helper_ran(self, helper: str, result: str) -> None:
        self.helper_runs.labels(self._helper_label(helper), self._helper_result(result)).inc()

    def helper_cache_hit(self, helper: str) -> None:
        self.helper_hits.labels(self._helper_label(helper)).inc()

    def platform_operations(self, platform: str, operations: Sequence[str]) -> None:
        for operation in operations:
            self._operation_labels(platform, operation)

    def _operation_labels(self, platform: str, operation: str) -> tuple[str, str]:
        labels = (self._platform(platform), self._operation(operation))
        if self._first_seen(("platform", *labels)):
            for result in PLATFORM_RESULTS:
                self.platform_calls.labels(*labels, result)
        return labels

    def platform_call(self, platform: str, operation: str, result: str) -> None:
        self.platform_calls.labels(*self._operation_labels(platform, operation),
                                   self._platform_result(result)).inc()

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        with self._pass_lock:
            return bytes(generate_latest(self.registry))


class MetricsServer:
    """``/metrics`` and ``/healthz`` on ``host:port``, served by a daemon thread."""

    def __init__(self, host: str, port: int, metrics: PrometheusMetrics, health: Health) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from prometheus_client import CONTENT_TYPE_LATEST

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, kind = metrics.text(), 200, CONTENT_TYPE_LATEST
                elif path == "/healthz":
                    status, data = health.verdict()
                    body, kind = (json.dumps(data) + "\n").encode(), "application/json"
                else:
                    status, kind = 404, "text/plain"
                    body = b"not found: /metrics or /healthz\n"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("metrics: %s", format % args)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise UsageError(f"the metrics server cannot listen on {host}:{port}: "
                             f"{exc.strerror or exc}",
                             hint="choose a free manager.metrics.port, or set "
                                  "manager.metrics.enable to false") from None
        self._server.daemon_threads = True
        self.address = f"{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.5}, daemon=True,
                                        name="xtm-metrics")

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def open_metrics(settings: Any, health: Health) -> tuple[Metrics, MetricsServer | None]:
    """The metrics ``run`` records, and their server when ``manager.metrics.enable`` is true."""
    if settings.get("manager.metrics.enable") is not True:
        return Metrics(), None
    from composer_core.settings import name_list

    try:
        metrics = PrometheusMetrics(providers=name_list(settings, "auth.chain"))
    except ImportError:
        raise ComposerError("manager.metrics.enable is true but prometheus-client is not "
                            "installed", hint="pip install prometheus-client") from None
    server = MetricsServer(str(settings.get("manager.metrics.host")),
                           int(settings.get("manager.metrics.port")), metrics, health)
    log.info("metrics on http://%s/metrics and /healthz", server.address)
    return metrics, server.start()
