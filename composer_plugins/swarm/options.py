"""``opencti.daemon.swarm.*``: the settings of the swarm backend, checked once at connect.

Each option becomes a part of every service's spec (Engine API ``ServiceSpec``): ``network``
(``host``, an overlay's name, or none: the engine's default), ``constraints`` (placement),
``resources`` (limits: ``cpus`` and ``memory``), ``restart_policy`` (``condition``, ``delay``,
``max_attempts``) and ``wait``, how long ``apply`` watches a new task before it reports.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from composer_core.errors import SettingsError
from composer_core.settings import Settings

PREFIX = "opencti.daemon.swarm"
CONDITIONS = ("none", "on-failure", "any")
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)b?", re.I)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
#: the longest ``wait`` accepted: a failure is to be found within seconds, not waited on
MAX_WAIT = 120.0


class OptionError(SettingsError):
    """One bad ``opencti.daemon.swarm`` option: ``key`` (dotted, full) and ``problem`` (the text
    after the key), so that the settings validator can report it like any other key."""

    def __init__(self, key: str, problem: str, origin: str) -> None:
        super().__init__(f"{key} (from {origin}) {problem}")
        self.key = key
        self.problem = problem


def _bad(key: str, value: Any, expected: str, settings: Settings) -> OptionError:
    full = f"{PREFIX}.{key}"
    return OptionError(full, f"is {value!r}: expected {expected}", settings.source(full))


def _number(settings: Settings, key: str, *, minimum: float = 0) -> float | None:
    value = settings.get(f"{PREFIX}.{key}")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise _bad(key, value, f"a number >= {minimum:g}", settings)
    return float(value)


def _memory(settings: Settings) -> int | None:
    value = settings.get(f"{PREFIX}.resources.memory")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _MEMORY.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if not match or float(match.group(1)) <= 0:
        raise _bad("resources.memory", value, "bytes, or a size such as 512m or 1g", settings)
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class SwarmOptions:
    endpoint: str | None = None
    network: str | None = None
    constraints: tuple[str, ...] = ()
    cpus: float | None = None
    memory: int | None = None
    restart_condition: str = "any"
    restart_delay: float = 5.0
    restart_max_attempts: int = 0
    wait: float = 15.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SwarmOptions:
        endpoint = settings.get(f"{PREFIX}.endpoint")
        network = settings.get(f"{PREFIX}.network")
        if network is not None and (not isinstance(network, str) or not network.strip()):
            raise _bad("network", network, "host, the name of an overlay network, or null",
                       settings)
        constraints = settings.get(f"{PREFIX}.constraints") or []
        if isinstance(constraints, str) or not all(isinstance(c, str) and c.strip()
                                                   for c in constraints):
            raise _bad("constraints", constraints,
                       "a list of placement constraints such as ['node.role==worker']", settings)
        condition = settings.get(f"{PREFIX}.restart_policy.condition") or "any"
        if condition not in CONDITIONS:
            raise _bad("restart_policy.condition", condition, " or ".join(CONDITIONS), settings)
        attempts = _number(settings, "restart_policy.max_attempts")
        if attempts is not None and attempts != int(attempts):
            raise _bad("restart_policy.max_attempts", attempts, "a whole number (0: no limit)",
                       settings)
        wait = _number(settings, "wait")
        if wait is not None and wait > MAX_WAIT:
            raise _bad("wait", wait, f"at most {MAX_WAIT:g} seconds", settings)
        delay = _number(settings, "restart_policy.delay")
        return cls(endpoint=str(endpoint) if endpoint else None,
                   network=network.strip() if network else None,
                   constraints=tuple(c.strip() for c in constraints),
                   cpus=_number(settings, "resources.cpus"), memory=_memory(settings),
                   restart_condition=str(condition),
                   restart_delay=5.0 if delay is None else delay,
                   restart_max_attempts=int(attempts or 0),
                   wait=15.0 if wait is None else wait)

    def task_template(self, container_spec: Mapping[str, Any]) -> dict[str, Any]:
        """The ``TaskTemplate`` of a service running ``container_spec`` with these options."""
        template: dict[str, Any] = {
            "ContainerSpec": dict(container_spec),
            "RestartPolicy": {"Condition": self.restart_condition,
                              "Delay": int(self.restart_delay * 1e9),
                              "MaxAttempts": self.restart_max_attempts},
        }
        if self.constraints:
            template["Placement"] = {"Constraints": list(self.constraints)}
        limits: dict[str, int] = {}
        if self.cpus:
            limits["NanoCPUs"] = int(self.cpus * 1e9)
        if self.memory:
            limits["MemoryBytes"] = self.memory
        if limits:
            template["Resources"] = {"Limits": limits}
        if self.network:
            template["Networks"] = [{"Target": self.network}]
        return template
