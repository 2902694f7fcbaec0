"""A platform's managed connector -> the :class:`Connector` the fleet deploys.

* name: the platform's own rule (``managedConnectorAdd``): each run of characters outside
  ``[a-zA-Z0-9]`` becomes ``-``, lowercase, ``-`` trimmed, at most 63 characters; a name that
  leaves fewer than 2 characters is held. Two listed connectors with the same container name are
  both held (neither may take the other's container).
* image: ``manager_contract_image``, resolved later by the image resolvers and the credential
  chain like any other.
* env: the contract's values in order (``encrypted: true`` ones decrypted, ``null`` -> ``""``), then
  ``OPENCTI_URL`` and ``OPENCTI_CONFIG_HASH``, then the proxy settings when ``opencti.with_proxy``
  (one value per key: the composer's own wins, and the overridden keys are logged, never values).
* status: requested ``starting`` -> started; anything else (``stopping``, ``stopped``) -> stopped.

A value that cannot be decrypted holds the connector: never deployed with an empty secret.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from composer_core import redact
from composer_core.fleet.connectors import Connector
from composer_core.fleet.sources import SourceUnavailable
from composer_core.images.reference import ImageRef, InvalidReference
from composer_plugins.opencti.config import OpenCTIConfig
from composer_plugins.opencti.crypto import DecryptionCache, DecryptionError, ManagerKey

#: what decrypts the listing's values: the key itself, or a cache of what it decrypted
Decrypter = ManagerKey | DecryptionCache

log = logging.getLogger("xtm_composer.opencti")

STARTED_STATES = ("started", "running", "healthy")
PROXY_KEYS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
_NOT_ALNUM = re.compile(r"[^a-zA-Z0-9]+")


def container_name(name: str) -> str | None:
    """The platform's sanitising rule; None when fewer than 2 characters remain."""
    cleaned = _NOT_ALNUM.sub("-", name).lower().strip("-")[:63].strip("-")
    return cleaned if len(cleaned) >= 2 else None


def current_status(raw: object) -> str:
    return "started" if raw in STARTED_STATES else "stopped"


@dataclass
class Mapped:
    """One listed connector and what becomes of it."""

    id: str
    name: str
    platform_name: str
    image: str
    hash: str
    requested: str
    current: str | None
    connector: Connector | None = None
    #: why it is held (neither deployed nor changed); None when deployable
    problem: str | None = None
    decrypted: list[str] = field(default_factory=list)
    overridden: list[str] = field(default_factory=list)

    @property
    def wanted(self) -> str:
        return "started" if self.requested == "starting" else "stopped"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "platform_name": self.platform_name,
                "image": self.image, "hash": self.hash, "requested_status": self.requested,
                "current_status": self.current, "wanted": self.wanted,
                "decryption": "failed" if self.problem and "decrypt" in self.problem else "ok",
                "encrypted_keys": list(self.decrypted), "problem": self.problem}


def proxy_env(config: OpenCTIConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """What ``opencti.with_proxy`` injects: the settings' values, else the composer's own
    environment (upper case, then lower case)."""
    if not config.with_proxy:
        return {}
    env: dict[str, str] = {}
    for key, value in zip(PROXY_KEYS, (config.http_proxy, config.https_proxy, config.no_proxy),
                          strict=True):
        chosen = value or environ.get(key) or environ.get(key.lower())
        if chosen:
            env[key] = chosen
            if key != "NO_PROXY":
                redact.register(chosen)
    if not config.reject_unauthorized:
        env["NODE_TLS_REJECT_UNAUTHORIZED"] = "0"
    return env


def _entry(raw: Mapping[str, Any], index: int) -> tuple[str, str, str, str, str, str | None]:
    """The fields of one listing entry; a malformed entry makes the listing unusable (partial)."""
    def text(key: str, optional: bool = False) -> Any:
        value = raw.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or (not value and key == "id"):
            raise SourceUnavailable(f"GetConnectors: entry {index} has no valid {key}: the listing "
                                    "is incomplete, the pass is skipped and nothing is changed")
        return value

    return (text("id"), text("name"), text("manager_contract_image"),
            text("manager_contract_hash"), text("manager_requested_status"),
            text("manager_current_status", optional=True))


def map_connector(raw: Mapping[str, Any], index: int, key: Decrypter | None,
                  config: OpenCTIConfig, proxies: Mapping[str, str]) -> Mapped:
    cid, platform_name, image, digest, requested, current = _entry(raw, index)
    name = container_name(platform_name)
    mapped = Mapped(cid, name or "?", platform_name, image, digest, requested, current)
    configuration = raw.get("manager_contract_configuration")
    if not isinstance(configuration, list):
        raise SourceUnavailable(f"GetConnectors: connector {cid} has no configuration list: the "
                                "listing is incomplete, the pass is skipped")
    env: dict[str, str] = {}
    problems: list[str] = []
    for item in configuration:
        if not isinstance(item, Mapping) or not isinstance(item.get("key"), str):
            problems.append("a configuration entry has no key")
            continue
        var, value = item["key"], item.get("value")
        if item.get("encrypted") is True:
            mapped.decrypted.append(var)
            if key is None:
                problems.append(f"{var} is encrypted and no private key is loaded")
                continue
            try:
                env[var] = key.decrypt(value if isinstance(value, str) else "")
            except DecryptionError as exc:
                problems.append(f"{var} cannot be decrypted: {exc.message}")
            continue
        env[var] = "" if value is None else str(value)
    env["OPENCTI_URL"] = config.url
    env["OPENCTI_CONFIG_HASH"] = digest
    mapped.overridden = sorted(k for k in proxies if k in env)
    env.update(proxies)
    if name is None:
        problems.append(f"name {platform_name!r} leaves fewer than 2 characters for a container name")
    try:
        ImageRef.parse(image)
    except InvalidReference as exc:
        problems.append(f"manager_contract_image: {exc}")
    if problems:
        mapped.problem = "; ".join(problems)
        return mapped
    mapped.connector = Connector(id=cid, name=mapped.name, image=image, env=env,
                                 status=mapped.wanted)  # type: ignore[arg-type]
    return mapped


def map_listing(listing: list[dict[str, Any]], key: Decrypter | None, config: OpenCTIConfig,
                environ: Mapping[str, str] | None = None) -> list[Mapped]:
    """The listing's connectors, mapped. Logs nothing: a listing may be asked every few seconds
    (the source says what changed)."""
    proxies = proxy_env(config, os.environ if environ is None else environ)
    mapped = [map_connector(raw, i, key, config, proxies) for i, raw in enumerate(listing)]
    ids = [m.id for m in mapped]
    twice = {i for i in ids if ids.count(i) > 1}
    if twice:
        raise SourceUnavailable(f"GetConnectors: connector id {sorted(twice)[0]} is listed twice: "
                                "the listing is inconsistent, the pass is skipped")
    by_name: dict[str, list[Mapped]] = {}
    for m in mapped:
        if m.name != "?":
            by_name.setdefault(m.name, []).append(m)
    for group in by_name.values():
        if len(group) > 1:
            for m in group:
                others = ", ".join(o.id for o in group if o is not m)
                m.problem = (f"{m.problem}; " if m.problem else "") + \
                    f"container name {m.name!r} is also that of connector {others}"
                m.connector = None
    return mapped
