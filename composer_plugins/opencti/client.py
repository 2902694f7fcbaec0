"""The seven GraphQL operations XTM Composer sends to OpenCTI, over HTTP with explicit timeouts.

``POST {opencti.url}/graphql`` with ``Authorization: Bearer {opencti.token}``. A transport error, a
non-empty ``errors`` array and a null ``data`` all mean "this operation failed"
(:class:`PlatformError`). Every request has a connect timeout (``opencti.connect_timeout``) and a
read timeout (``opencti.request_timeout``), except the listing, which the platform may hold up to
90 s after an upgrade: it reads for ``opencti.listing_timeout`` (100 s). ``requests`` is imported
when the first client is made.

Every operation is counted (:func:`composer_core.metrics.recorder`), by its GraphQL operation
name and how it ended: ``ok``, or the :attr:`PlatformError.result` of its failure.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from composer_core import redact
from composer_core.fleet.sources import SourceUnavailable
from composer_core.metrics import declare_platform_operations, recorder
from composer_plugins.opencti.config import OpenCTIConfig

log = logging.getLogger("xtm_composer.opencti")

CONNECTOR_FIELDS = """
    id name manager_contract_hash manager_contract_image
    manager_current_status manager_requested_status
    manager_contract_configuration { key value encrypted }"""

GET_VERSION = "query GetVersion { about { version } }"
REGISTER = """mutation RegisterConnectorsManager($input: RegisterConnectorsManagerInput!) {
  registerConnectorsManager(input: $input) { id about_version }
}"""
PING = """mutation UpdateConnectorManagerStatus($input: UpdateConnectorManagerStatusInput!) {
  updateConnectorManagerStatus(input: $input) { id about_version }
}"""
GET_CONNECTORS = "query GetConnectors {\n  connectorsForManagers {" + CONNECTOR_FIELDS + "\n  }\n}"
UPDATE_STATUS = ("mutation UpdateConnectorCurrentStatus($input: CurrentConnectorStatusInput!) {\n"
                 "  updateConnectorCurrentStatus(input: $input) {" + CONNECTOR_FIELDS + "\n  }\n}")
REPORT_LOGS = ("mutation ReportConnectorLogs($input: LogsConnectorStatusInput!) "
               "{ updateConnectorLogs(input: $input) }")
REPORT_HEALTH = ("mutation UpdateConnectorHealth($input: HealthConnectorStatusInput!) "
                 "{ updateConnectorHealth(input: $input) }")


#: the operations, by their GraphQL operation names (the ``operation`` label of platform calls)
OPERATIONS = ("GetVersion", "RegisterConnectorsManager", "UpdateConnectorManagerStatus",
              "GetConnectors", "UpdateConnectorCurrentStatus", "ReportConnectorLogs",
              "UpdateConnectorHealth")
PLATFORM = "opencti"
declare_platform_operations(PLATFORM, OPERATIONS)


class PlatformError(SourceUnavailable):
    """The platform did not answer an operation (unreachable, refused, GraphQL error, null data).
    ``result``: why, in the words of the platform-calls metric (``unreachable``, ``timeout``,
    ``tls``, ``not_graphql``, ``graphql_error``, ``no_data``, ``invalid_answer``)."""

    kind = "platform"

    def __init__(self, message: str, *, hint: str | None = None,
                 result: str = "invalid_answer") -> None:
        super().__init__(message, hint=hint)
        self.result = result


P = ParamSpec("P")
R = TypeVar("R")


def _counted(operation: str) -> Callable[[Callable[Concatenate[PlatformClient, P], R]],
                                         Callable[Concatenate[PlatformClient, P], R]]:
    """Count each call of the decorated operation once, with how it ended."""
    assert operation in OPERATIONS

    def decorate(method: Callable[Concatenate[PlatformClient, P], R]) -> Callable[
            Concatenate[PlatformClient, P], R]:
        @functools.wraps(method)
        def counted(self: PlatformClient, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                answer = method(self, *args, **kwargs)
            except PlatformError as exc:
                recorder().platform_call(PLATFORM, operation, exc.result)
                raise
            except Exception:
                recorder().platform_call(PLATFORM, operation, "error")
                raise
            recorder().platform_call(PLATFORM, operation, "ok")
            return answer
        return counted
    return decorate


class PlatformClient:
    def __init__(self, config: OpenCTIConfig) -> None:
        import requests

        self.config = config
        self._session = requests.Session()
        # with_proxy false ignores every proxy, the environment's included (as upstream)
        self._session.trust_env = config.with_proxy
        if config.with_proxy:
            proxies = {k: v for k, v in (("http", config.http_proxy), ("https", config.https_proxy))
                       if v}
            self._session.proxies.update(proxies)
        # trust_env off also drops REQUESTS_CA_BUNDLE / SSL_CERT_FILE: honour them here, so that a
        # platform behind a private CA is verified rather than reached with no verification
        self._session.verify = _ca_bundle() if config.verify_tls else False
        if not config.verify_tls:
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            log.warning("opencti.unsecured_certificate: the platform's TLS certificate is not "
                        "verified")
        self._session.headers.update({"Authorization": f"Bearer {config.token}",
                                      "Content-Type": "application/json",
                                      "Accept": "application/json"})

    def close(self) -> None:
        self._session.close()

    def _call(self, operation: str, query: str, variables: dict[str, Any] | None = None, *,
              read_timeout: float | None = None) -> dict[str, Any]:
        import requests

        body: dict[str, Any] = {"query": query, "operationName": operation, "variables": variables or {}}
        timeout = (self.config.connect_timeout, read_timeout or self.config.request_timeout)
        where = redact.hide_userinfo(self.config.graphql_url)
        try:
            response = self._session.post(self.config.graphql_url, json=body, timeout=timeout)
        except requests.exceptions.SSLError as exc:
            reason = redact.scrub(_first_line(exc))
            raise PlatformError(f"{operation}: TLS with the platform at {where} failed: {reason}",
                                hint="trust its certificate authority (SSL_CERT_FILE or "
                                     "REQUESTS_CA_BUNDLE naming a PEM bundle), or set "
                                     "opencti.unsecured_certificate: true (not for production)",
                                result="tls") from None
        except requests.Timeout:
            raise PlatformError(f"{operation}: the platform at {where} did not answer within "
                                f"{timeout[1]:g} s", hint=_HINT, result="timeout") from None
        except requests.RequestException as exc:
            reason = redact.scrub(_first_line(exc))
            raise PlatformError(f"{operation}: the platform at {where} is unreachable: {reason}",
                                hint=_HINT, result="unreachable") from None
        try:
            data = response.json()
        except ValueError:
            raise PlatformError(f"{operation}: the platform at {where} answered HTTP "
                                f"{response.status_code}, not GraphQL JSON", hint=_HINT,
                                result="not_graphql") from None
        errors = data.get("errors") if isinstance(data, dict) else None
        if errors:
            messages = "; ".join(redact.scrub(str(e.get("message", e)) if isinstance(e, dict) else str(e))
                                 for e in errors[:3])
            raise PlatformError(f"{operation}: the platform answered an error: {messages}",
                                hint=_error_hint(messages), result="graphql_error")
        result = data.get("data") if isinstance(data, dict) else None
        if not isinstance(result, dict):
            raise PlatformError(f"{operation}: the platform answered no data "
                                f"(HTTP {response.status_code})", hint=_HINT, result="no_data")
        return result

    # --- the seven operations ---------------------------------------------------------------

    @_counted("GetVersion")
    def version(self) -> str:
        about = self._call("GetVersion", GET_VERSION).get("about")
        if not isinstance(about, dict) or not isinstance(about.get("version"), str):
            raise PlatformError("GetVersion: the platform answered no version")
        return str(about["version"])

    @_counted("RegisterConnectorsManager")
    def register(self, public_key: str) -> str:
        answer = self._call("RegisterConnectorsManager", REGISTER, {"input": {
            "id": self.config.manager_id, "name": self.config.manager_name,
            "public_key": public_key}}).get("registerConnectorsManager")
        if not isinstance(answer, dict):
            raise PlatformError("RegisterConnectorsManager: the platform answered no manager")
        return str(answer.get("about_version") or "")

    @_counted("UpdateConnectorManagerStatus")
    def ping(self) -> str:
        """The platform's version (``about_version``); :class:`PlatformError` when the ping fails
        (this manager unknown to the platform included)."""
        answer = self._call("UpdateConnectorManagerStatus", PING,
                            {"input": {"id": self.config.manager_id}}).get("updateConnectorManagerStatus")
        if not isinstance(answer, dict):
            raise PlatformError("UpdateConnectorManagerStatus: the platform does not know manager "
                                f"{self.config.manager_id!r}",
                                hint="it registers again at the next attempt", result="no_data")
        return str(answer.get("about_version") or "")

    @_counted("GetConnectors")
    def connectors(self) -> list[dict[str, Any]]:
        listing = self._call("GetConnectors", GET_CONNECTORS,
                             read_timeout=self.config.listing_timeout).get("connectorsForManagers")
        if listing is None:
            raise PlatformError("GetConnectors: the platform answered no listing (null)",
                                result="no_data")
        if not isinstance(listing, list) or not all(isinstance(c, dict) for c in listing):
            raise PlatformError("GetConnectors: the listing is not a list of connectors")
        return listing

    @_counted("UpdateConnectorCurrentStatus")
    def report_status(self, connector_id: str, status: str) -> None:
        self._call("UpdateConnectorCurrentStatus", UPDATE_STATUS,
                   {"input": {"id": connector_id, "status": status}})

    @_counted("ReportConnectorLogs")
    def report_logs(self, connector_id: str, lines: list[str]) -> None:
        self._call("ReportConnectorLogs", REPORT_LOGS, {"input": {"id": connector_id, "logs": lines}})

    @_counted("UpdateConnectorHealth")
    def report_health(self, connector_id: str, restart_count: int, started_at: str,
                      in_reboot_loop: bool) -> None:
        self._call("UpdateConnectorHealth", REPORT_HEALTH, {"input": {
            "id": connector_id, "restart_count": restart_count, "started_at": started_at,
            "is_in_reboot_loop": in_reboot_loop}})


def _ca_bundle() -> str | bool:
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        path = os.environ.get(name)
        if path and os.path.isfile(path):
            return path
    return True


_HINT = "check opencti.url and the network; the pass is skipped and nothing is changed"


def _error_hint(messages: str) -> str:
    lowered = messages.lower()
    if "logged in" in lowered or "auth" in lowered:
        return ("check opencti.token: the platform user needs the capabilities CONNECTORAPI and "
                "SETTINGS_SETACCESSES")
    if "only one connector manager" in lowered:
        return ("the platform already has another manager: use its manager.id (never change it "
                "once registered)")
    return _HINT


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
