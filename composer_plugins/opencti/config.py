"""The ``opencti`` source's settings, with XTM Composer's names, checked as a whole.

The token and the private key are secrets: registered with :mod:`composer_core.redact` the moment
they are read (from the settings or from ``opencti.token_file`` /
``manager.credentials_key_filepath``), masked by ``config show``, never formatted into a message.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from composer_core import redact
from composer_core.errors import SettingsError
from composer_core.files import LIMIT_SECRET_FILE, FileReadError, read_text
from composer_core.settings import (
    Problems,
    Settings,
    SettingsSpec,
    check_bool,
    check_number,
    check_text,
    describe,
)
from composer_core.settings.validate import DAY, MAX_TIMEOUT
from composer_plugins.opencti.crypto import register_pem

log = logging.getLogger("xtm_composer.opencti")

#: seconds; the platform may hold the listing up to 90 s after an upgrade (its auto-upgrade wait)
LISTING_TIMEOUT = 100
CA_IN_CONTAINER = "/etc/ssl/certs/xtm-proxy-ca.crt"


@dataclass(frozen=True)
class OpenCTIConfig:
    url: str
    token: str = field(repr=False)
    verify_tls: bool
    connect_timeout: float
    request_timeout: float
    listing_timeout: float
    manager_id: str
    manager_name: str
    execute_schedule: float
    ping_schedule: float
    logs_schedule: float
    health_schedule: float
    key_pem: str = field(repr=False)
    #: seconds between two listings while ``run`` waits for its next resync (0: at each resync only)
    listing_schedule: float = 0.0
    key_origin: str = ""
    with_proxy: bool = False
    http_proxy: str | None = None
    https_proxy: str | None = None
    no_proxy: str | None = None
    https_proxy_ca: tuple[str, ...] = ()
    reject_unauthorized: bool = True

    @property
    def graphql_url(self) -> str:
        return self.url.rstrip("/") + "/graphql"


#: the defaults of the keys this plugin owns (its settings spec); XTM Composer's names
DEFAULTS: dict[str, Any] = {
    "manager": {"ping_alive_schedule": 60, "credentials_key": None,
                "credentials_key_filepath": None},
    "opencti": {"enable": True, "url": "http://host.docker.internal:4000", "token": None,
                "token_file": None, "unsecured_certificate": False, "connect_timeout": 10,
                "request_timeout": 30, "listing_timeout": LISTING_TIMEOUT, "logs_schedule": 10,
                "health_schedule": 30, "listing_schedule": 5, "with_proxy": False, "http_proxy": None,
                "https_proxy": None, "no_proxy": None, "https_proxy_ca": [],
                "https_proxy_reject_unauthorized": True},
}
OWNS = tuple(f"{section}.{key}" for section, keys in DEFAULTS.items() for key in keys)
_FLAGS = ("opencti.enable", "opencti.unsecured_certificate", "opencti.with_proxy",
          "opencti.https_proxy_reject_unauthorized")
_TIMEOUTS = ("opencti.connect_timeout", "opencti.request_timeout", "opencti.listing_timeout")
_SCHEDULES = ("opencti.logs_schedule", "opencti.health_schedule", "manager.ping_alive_schedule")
_TEXTS = ("opencti.url", "opencti.token", "opencti.token_file", "opencti.http_proxy",
          "opencti.https_proxy", "opencti.no_proxy", "manager.credentials_key_filepath")


def validate(settings: Settings, problems: Problems) -> None:
    """The spec's validator, run at every start: types and bounds. What the source needs to
    open (a token, a key, the files) is checked when it opens (:func:`read_config`)."""
    for key in _FLAGS:
        check_bool(settings, problems, key)
    for key in _TIMEOUTS:
        check_number(settings, problems, key, what="a positive number of seconds", minimum=0,
                     maximum=MAX_TIMEOUT, above_minimum=True)
    for key in _SCHEDULES:
        check_number(settings, problems, key, what="a positive number of seconds", minimum=0,
                     maximum=DAY, above_minimum=True)
    check_number(settings, problems, "opencti.listing_schedule",
                 what="a number of seconds (0: list at each resync only)", minimum=0, maximum=DAY)
    ping = settings.get("manager.ping_alive_schedule")
    if isinstance(ping, (int, float)) and not isinstance(ping, bool) and 300 <= ping <= DAY:
        problems.add("manager.ping_alive_schedule", "must be under 300: the platform shows a "
                                                    "manager inactive after 5 minutes without a ping")
    for key in _TEXTS:
        check_text(settings, problems, key, what="a string", optional=True)
    pem = settings.get("manager.credentials_key")  # PEM text: its newlines are its own
    if pem is not None and not isinstance(pem, str):
        problems.add("manager.credentials_key", f"must be PEM text, not {describe(pem)}")
    ca = settings.get("opencti.https_proxy_ca")
    if ca is not None and not isinstance(ca, (str, list, Mapping)):
        problems.add("opencti.https_proxy_ca", f"must be a list of PEM texts or file paths, not "
                                               f"{describe(ca)}")


def settings_spec() -> SettingsSpec:
    return SettingsSpec(name="opencti", owns=OWNS, defaults=DEFAULTS, validator=validate)


def _text(s: Settings, dotted: str) -> str | None:
    value = s.get(dotted)
    return value if isinstance(value, str) and value.strip() else None


def _secret_file(p: Problems, dotted: str, path: str, what: str) -> str | None:
    try:
        text = read_text(os.path.expanduser(path), limit=LIMIT_SECRET_FILE, what=what)
    except FileReadError as exc:
        p.add(dotted, exc.reason)
        return None
    return text


def _ca_list(value: Any) -> tuple[str, ...]:
    if value in (None, "", []):
        return ()
    if isinstance(value, str):
        import json

        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError:
                return (value,)
            return tuple(str(v) for v in parsed if v)
        return (value,)
    if isinstance(value, Mapping):  # an indexed map from the environment: {"0": ..., "1": ...}
        return tuple(str(value[k]) for k in sorted(value, key=lambda k: int(k) if str(k).isdigit() else 0))
    if isinstance(value, list):
        return tuple(str(v) for v in value if v)
    return (str(value),)


def read_config(settings: Settings) -> OpenCTIConfig:
    """Every key the source uses, or one :class:`SettingsError` listing every problem: the
    validator's, and what opening the source needs (a URL, a token, a key, readable files)."""
    s = settings
    p = Problems(s)
    validate(s, p)
    if s.get("opencti.enable") is False:
        p.add("opencti.enable", "is false: the opencti source serves no platform")
    url = _text(s, "opencti.url")
    if url is None:
        p.add("opencti.url", "is required: the platform's base URL, such as http://opencti:8080")
    elif not url.startswith(("http://", "https://")):
        p.add("opencti.url", f"must start with http:// or https://, not {redact.hide_userinfo(url)!r}")
    token = _text(s, "opencti.token")
    token_file = _text(s, "opencti.token_file")
    if token_file:
        if token:
            log.warning("both opencti.token and opencti.token_file are set: the file wins")
        text = _secret_file(p, "opencti.token_file", token_file, "opencti token file")
        token = (text or "").strip() or None
        if text is not None and token is None:
            p.add("opencti.token_file", "the file is empty")
    elif token is None:
        p.add("opencti.token", "is required (or opencti.token_file): the API token of a platform "
                               "user with the capabilities CONNECTORAPI and SETTINGS_SETACCESSES")
    redact.register(token)
    key_pem = _text(s, "manager.credentials_key")
    key_path = _text(s, "manager.credentials_key_filepath")
    key_origin = "manager.credentials_key"
    if key_pem:
        register_pem(key_pem)
    if key_path:
        if key_pem:
            log.warning("both manager.credentials_key and manager.credentials_key_filepath are "
                        "set: the file wins")
        key_pem = _secret_file(p, "manager.credentials_key_filepath", key_path, "private key file")
        key_origin = key_path
        if key_pem:
            register_pem(key_pem)
    elif not key_pem:
        p.add("manager.credentials_key_filepath",
              "is required (or manager.credentials_key): the manager's RSA private key, which "
              "`xtm-composer keygen PATH` generates")
    name = _text(s, "manager.name") or ""
    if len(name.strip()) < 2:
        p.add("manager.name", "must be at least 2 characters, not blank (the platform refuses less)")
    for proxy in (_text(s, "opencti.http_proxy"), _text(s, "opencti.https_proxy")):
        redact.register(proxy)  # a proxy URL may carry a password
    if p.items:
        lines = "\n  ".join(str(problem) for problem in p.items)
        raise SettingsError(f"invalid settings for the opencti source:\n  {lines}",
                            hint="fix these keys (docs/opencti.md); `xtm-composer config show` "
                                 "prints the merged settings")
    assert url is not None and token is not None and key_pem is not None
    return OpenCTIConfig(
        url=url, token=token, manager_id=str(s.get("manager.id")), manager_name=name,
        key_pem=key_pem, key_origin=key_origin,
        verify_tls=not s.get("opencti.unsecured_certificate"),
        connect_timeout=float(s.get("opencti.connect_timeout")),
        request_timeout=float(s.get("opencti.request_timeout")),
        listing_timeout=float(s.get("opencti.listing_timeout")),
        execute_schedule=float(s.get("manager.execute_schedule")),
        ping_schedule=float(s.get("manager.ping_alive_schedule")),
        logs_schedule=float(s.get("opencti.logs_schedule")),
        health_schedule=float(s.get("opencti.health_schedule")),
        listing_schedule=float(s.get("opencti.listing_schedule")),
        with_proxy=bool(s.get("opencti.with_proxy")),
        http_proxy=_text(s, "opencti.http_proxy"), https_proxy=_text(s, "opencti.https_proxy"),
        no_proxy=_text(s, "opencti.no_proxy"),
        https_proxy_ca=_ca_list(s.get("opencti.https_proxy_ca")),
        reject_unauthorized=s.get("opencti.https_proxy_reject_unauthorized") is not False)
