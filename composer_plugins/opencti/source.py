"""The ``opencti`` source: the loop side of the platform protocol.

Every pass (``desired``): register first (GetVersion, then RegisterConnectorsManager; retried every
``manager.ping_alive_schedule`` while the platform does not answer), then list the connectors
(GetConnectors). Pings go every ``ping_alive_schedule`` (from a thread of their own in ``run``, so
that a long pass never lets the manager look inactive; else checked at each pass) and register
again when the platform's version changed; a failed ping goes back to GetVersion. Any failure there raises
:class:`~composer_core.fleet.sources.SourceUnavailable`: the pass is skipped, nothing is removed.

After a pass (``observe``): the status each connector's container shows is reported when it
differs from the platform's (UpdateConnectorCurrentStatus), its last 100 log lines are pushed every
``opencti.logs_schedule`` (ReportConnectorLogs) and, while it runs, its health right after it is
seen starting and then every ``opencti.health_schedule`` (UpdateConnectorHealth). Each connector
has its own log and health timers: upstream's shared ones starve all but one connector.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from composer_core import redact
from composer_core.errors import ComposerError
from composer_core.fleet.reconcile import LOOP_RESTARTS, LOOP_UPTIME_SECONDS
from composer_core.fleet.sources import DesiredState, Observation, SourceUnavailable, connector_of
from composer_core.timestamps import parse_time, seconds_since
from composer_core.workload import Backend, Observed
from composer_plugins.opencti.client import PlatformClient, PlatformError
from composer_plugins.opencti.config import OpenCTIConfig
from composer_plugins.opencti.crypto import DecryptionCache, ManagerKey, load_private_key
from composer_plugins.opencti.mapping import Mapped, map_listing

log = logging.getLogger("xtm_composer.opencti")
LOG_LINES = 100
#: observed states reported to the platform as started (the engine restarting it included)
RUNNING = ("started", "restarting")


@dataclass
class _Timers:
    next_logs: float = 0.0
    next_health: float = 0.0
    started: bool = False


def rfc3339(stamp: str | None) -> str | None:
    moment = parse_time(stamp)
    if moment is None or moment.year < 1971:  # Podman/Docker's "zero time" of a never-started one
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class OpenCTISource:
    name = "opencti"
    platform = "opencti"

    def __init__(self, config: OpenCTIConfig, *, client: PlatformClient | None = None,
                 key: ManagerKey | None = None, clock: Callable[[], float] = time.monotonic,
                 environ: Mapping[str, str] | None = None, ping_thread: bool = False) -> None:
        self.config = config
        self.key = key or load_private_key(config.key_pem, config.key_origin)
        self._decrypter = DecryptionCache(self.key)
        #: ``run`` lists the connectors this often between resyncs (``opencti.listing_schedule``;
        #: None: at each resync only), and runs a pass at once when the listing changed
        self.poll_seconds = config.listing_schedule or None
        self.client = client or PlatformClient(config)
        self.clock = clock
        self.environ = environ
        self.version: str | None = None
        self.registered = False
        self._next_attempt = 0.0
        self._next_ping = 0.0
        self.listing: list[Mapped] = []
        self._reported: dict[str, tuple[str, str | None]] = {}
        self._timers: dict[str, _Timers] = {}
        self._held: dict[str, str] = {}
        self._overridden: dict[str, list[str]] = {}
        #: ping from a thread of its own (``run``), so that a long pass (a slow pull) never lets
        #: the platform see the manager inactive; without it the ping is checked at each pass
        self._ping_thread = ping_thread
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._pinger: threading.Thread | None = None

    def describe(self) -> str:
        return (f"the OpenCTI platform at {redact.hide_userinfo(self.config.url)} (manager "
                f"{self.config.manager_id})")

    # --- registration and ping --------------------------------------------------------------

    def _register(self, now: float) -> None:
        if now < self._next_attempt:
            raise SourceUnavailable(f"not registered with the platform yet: next attempt in "
                                    f"{self._next_attempt - now:.0f} s")
        self._next_attempt = now + self.config.ping_schedule
        self.version = self.client.version()
        self.client.register(self.key.public_pkcs1)
        self.registered = True
        self._next_ping = now + self.config.ping_schedule
        log.info("registered as connector manager %r (%s) with OpenCTI %s",
                 self.config.manager_id, self.config.manager_name, self.version)

    def ensure_registered(self) -> None:
        with self._lock:
            now = self.clock()
            if not self.registered:
                self._register(now)
                if self._ping_thread and self._pinger is None:
                    self._pinger = threading.Thread(target=self._ping_loop, daemon=True,
                                                    name="xtm-opencti-ping")
                    self._pinger.start()
                return
            if self._pinger is not None or now < self._next_ping:
                return
            self._next_ping = now + self.config.ping_schedule
            self._ping(self.client, now)

    def _ping(self, client: PlatformClient, now: float) -> None:
        """One ping (under the lock); a failure goes back to GetVersion, a new version registers
        again."""
        try:
            version = client.ping()
        except PlatformError:
            self.registered = False  # back to GetVersion, at once and then every ping schedule
            self._next_attempt = now
            raise
        if version and version != self.version:
            log.info("the platform's version changed (%s -> %s): registering again",
                     self.version, version)
            client.register(self.key.public_pkcs1)
            self.version = version

    def _ping_loop(self) -> None:
        client = PlatformClient(self.config)  # a session of its own: the pass uses the other
        try:
            while not self._stop.wait(self.config.ping_schedule):
                with self._lock:
                    if not self.registered:
                        continue  # the next pass registers again, on the ping schedule
                    try:
                        self._ping(client, self.clock())
                    except PlatformError as exc:
                        log.warning("ping failed: %s", redact.scrub(exc.message))
        finally:
            client.close()

    # --- the desired state ------------------------------------------------------------------

    def desired(self) -> DesiredState:
        self.ensure_registered()
        mapped = map_listing(self.client.connectors(), self._decrypter, self.config, self.environ)
        self._decrypter.listing_done()
        self.listing = mapped
        overridden = {m.id: m.overridden for m in mapped if m.overridden and m.connector}
        for cid, keys in overridden.items():
            if self._overridden.get(cid) != keys:
                log.info("connector %s: the composer's proxy settings replace the platform's %s",
                         cid, ", ".join(keys))
        self._overridden = overridden
        held = {m.id: m.problem for m in mapped if m.problem is not None}
        for cid, reason in held.items():
            if self._held.get(cid) != reason:
                log.error("connector %s is held (neither deployed nor changed): %s", cid, reason)
        for cid in set(self._held) - set(held):
            log.info("connector %s is no longer held", cid)
        self._held = dict(held)  # type: ignore[arg-type]
        return DesiredState([m.connector for m in mapped if m.connector is not None],
                            held=self._held, names={m.id: m.name for m in mapped})

    # --- reporting --------------------------------------------------------------------------

    def observe(self, observation: Observation) -> None:
        if observation.dry_run:
            return
        by_id: dict[str, Observed] = {}
        for info in observation.containers:
            cid = connector_of(info)
            if cid is not None and (cid not in by_id or info.name in {m.name for m in self.listing}):
                by_id[cid] = info
        listed = {m.id for m in self.listing}
        for gone in set(self._timers) - listed:
            del self._timers[gone]
        for m in self.listing:
            self._report_one(m, by_id.get(m.id), observation.backend)

    def _quietly(self, what: str, cid: str, action: Callable[[], Any]) -> None:
        try:
            action()
        except ComposerError as exc:
            log.warning("connector %s: %s failed: %s", cid, what, redact.scrub(exc.message))
        except Exception as exc:  # noqa: BLE001 - one connector's report never stops the others
            log.warning("connector %s: %s failed: %s", cid, what,
                        redact.scrub(f"{type(exc).__name__}: {exc}"))

    def _report_one(self, m: Mapped, info: Observed | None, backend: Backend) -> None:
        observed = "started" if info is not None and info.state in RUNNING else "stopped"
        if m.current != observed and self._reported.get(m.id) != (observed, m.current):
            def send() -> None:
                self.client.report_status(m.id, observed)
                self._reported[m.id] = (observed, m.current)
                log.info("connector %s: reported %s to the platform", m.id, observed)
            self._quietly("reporting its status", m.id, send)
        timers = self._timers.setdefault(m.id, _Timers())
        now = self.clock()
        if info is not None and now >= timers.next_logs:
            timers.next_logs = now + self.config.logs_schedule
            self._quietly("pushing its logs", m.id, lambda: self._push_logs(m.id, info, backend))
        if observed == "started" and (not timers.started or now >= timers.next_health):
            assert info is not None
            timers.next_health = now + self.config.health_schedule
            self._quietly("pushing its health", m.id, lambda: self._push_health(m.id, info, backend))
        timers.started = observed == "started"

    def _push_logs(self, cid: str, info: Observed, backend: Backend) -> None:
        lines = backend.logs(info, LOG_LINES).splitlines()[-LOG_LINES:]
        self.client.report_logs(cid, lines)

    def _push_health(self, cid: str, info: Observed, backend: Backend) -> None:
        restarts, started = info.restart_count, info.started_at
        # a single host's list carries neither the start time nor the restart count: inspect
        runtime = getattr(backend, "runtime", None)
        if runtime is not None and callable(getattr(runtime, "inspect", None)):
            detail = runtime.inspect(info.id)
            if detail is not None:
                restarts, started = detail.restart_count, detail.started_at
        started_at = rfc3339(started)
        if started_at is None:
            return  # the platform needs the start time: nothing to say yet
        uptime = seconds_since(started)
        looping = restarts > LOOP_RESTARTS and (uptime is None or uptime < LOOP_UPTIME_SECONDS)
        self.client.report_health(cid, restarts, started_at, looping)

    def close(self) -> None:
        self._stop.set()
        if self._pinger is not None:
            self._pinger.join(timeout=self.config.request_timeout + self.config.connect_timeout + 1)
        self.client.close()


def open_opencti_source(settings: Any, options: Mapping[str, Any]) -> OpenCTISource:
    from composer_core.errors import SettingsError
    from composer_plugins.opencti.config import read_config

    config = read_config(settings)
    if config.with_proxy and config.https_proxy_ca:
        raise SettingsError("opencti.https_proxy_ca is set, but this version cannot give connectors "
                            "a CA bundle (the engines have no bind mounts yet): they would not "
                            "trust the proxy", hint="unset opencti.https_proxy_ca, or bake the CA "
                                                    "into the connector images")
    return OpenCTISource(config, ping_thread=True)
