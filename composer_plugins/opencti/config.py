"""The ``opencti`` source's settings, with XTM Composer's names, checked as a whole.

The token and the private key are secrets: registered with :mod:`composer_core.redact` the moment
they are read (from the settings or from ``opencti.token_file`` /
``manager.credentials_key_filepath``), masked by ``config show``, never formatted into a message.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from composer_core import redact
from composer_core.errors import SettingsError
from composer_core.files import LIMIT_SECRET_FILE, FileReadError, read_text
from composer_core.settings import Settings

log = logging.getLogger("xtm_composer.opencti")

#: seconds; the platform may hold the listing up to 90 s after an upgrade (its auto-upgrade wait)
LISTING_TIMEOUT = 100.0
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


class _Problems:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.items: list[str] = []

    def add(self, dotted: str, message: str) -> None:
        self.items.append(f"{dotted} (from {self.settings.source(dotted)}): {message}")


def _seconds(s: Settings, p: _Problems, dotted: str, default: float) -> float:
    value = s.get(dotted, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        p.add(dotted, f"must be a number of seconds greater than 0, not {value!r}")
        return default
    return float(value)


def _flag(s: Settings, p: _Problems, dotted: str, default: bool) -> bool:
    value = s.get(dotted, default)
    if not isinstance(value, bool):
        p.add(dotted, f"must be true or false, not {value!r}")
        return default
    return value


def _text(s: Settings, p: _Problems, dotted: str) -> str | None:
    value = s.get(dotted)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        p.add(dotted, f"must be a string, not {type(value).__name__}")
        return None
    return value


def _secret_file(p: _Problems, dotted: str, path: str, what: str) -> str | None:
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
    """Every ``opencti.*`` and ``manager.*`` key the source uses, or one :class:`SettingsError`."""
    s = settings
    p = _Problems(s)
    if not _flag(s, p, "opencti.enable", True):
        p.add("opencti.enable", "is false: the opencti source serves no platform")
    url = _text(s, p, "opencti.url")
    if url is None:
        p.add("opencti.url", "is required: the platform's base URL, such as http://opencti:8080")
    elif not url.startswith(("http://", "https://")):
        p.add("opencti.url", f"must start with http:// or https://, not {redact.hide_userinfo(url)!r}")
    token = _text(s, p, "opencti.token")
    token_file = _text(s, p, "opencti.token_file")
    if token_file:
        if token:
            log.warning("both opencti.token and opencti.token_file are set: the file wins")
        text = _secret_file(p, "opencti.token_file", token_file, "opencti token file")
        token = (text or "").strip() or None
        if token is None and not any(i.startswith("opencti.token_file") for i in p.items):
            p.add("opencti.token_file", "the file is empty")
    if token is None and not token_file:
        p.add("opencti.token", "is required (or opencti.token_file): the API token of a platform "
                               "user with the capabilities CONNECTORAPI and SETTINGS_SETACCESSES")
    redact.register(token)
    key_pem = _text(s, p, "manager.credentials_key")
    key_path = _text(s, p, "manager.credentials_key_filepath")
    key_origin = "manager.credentials_key"
    if key_pem:
        from composer_plugins.opencti.crypto import register_pem

        register_pem(key_pem)
    if key_path:
        if key_pem:
            log.warning("both manager.credentials_key and manager.credentials_key_filepath are "
                        "set: the file wins")
        key_pem = _secret_file(p, "manager.credentials_key_filepath", key_path, "private key file")
        key_origin = key_path
        if key_pem:
            from composer_plugins.opencti.crypto import register_pem

            register_pem(key_pem)
    elif not key_pem:
        p.add("manager.credentials_key_filepath",
              "is required (or manager.credentials_key): the manager's RSA private key, which "
              "`xtm-composer keygen PATH` generates")
    manager_id = _text(s, p, "manager.id") or ""
    name = _text(s, p, "manager.name") or ""
    if len(name.strip()) < 2:
        p.add("manager.name", "must be at least 2 characters, not blank (the platform refuses less)")
    config: dict[str, Any] = dict(
        verify_tls=not _flag(s, p, "opencti.unsecured_certificate", False),
        connect_timeout=_seconds(s, p, "opencti.connect_timeout", 10),
        request_timeout=_seconds(s, p, "opencti.request_timeout", 30),
        listing_timeout=_seconds(s, p, "opencti.listing_timeout", LISTING_TIMEOUT),
        execute_schedule=_seconds(s, p, "manager.execute_schedule", 10),
        ping_schedule=_seconds(s, p, "manager.ping_alive_schedule", 60),
        logs_schedule=_seconds(s, p, "opencti.logs_schedule", 10),
        health_schedule=_seconds(s, p, "opencti.health_schedule", 30),
        with_proxy=_flag(s, p, "opencti.with_proxy", False),
        http_proxy=_text(s, p, "opencti.http_proxy"),
        https_proxy=_text(s, p, "opencti.https_proxy"),
        no_proxy=_text(s, p, "opencti.no_proxy"),
        https_proxy_ca=_ca_list(s.get("opencti.https_proxy_ca")),
        reject_unauthorized=_flag(s, p, "opencti.https_proxy_reject_unauthorized", True),
    )
    if config["ping_schedule"] >= 300:
        p.add("manager.ping_alive_schedule", "must be under 300: the platform shows a manager "
                                             "inactive after 5 minutes without a ping")
    for proxy in (config["http_proxy"], config["https_proxy"]):
        redact.register(proxy)  # a proxy URL may carry a password
    if p.items:
        lines = "\n  ".join(p.items)
        raise SettingsError(f"invalid settings for the opencti source:\n  {lines}",
                            hint="fix these keys (docs/opencti.md); `xtm-composer config show` "
                                 "prints the merged settings")
    assert url is not None and token is not None and key_pem is not None
    return OpenCTIConfig(url=url, token=token, manager_id=manager_id, manager_name=name,
                         key_pem=key_pem, key_origin=key_origin, **config)  # type: ignore[arg-type]
