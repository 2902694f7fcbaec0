"""The connectors file: the desired state of a fleet, validated as a whole before anything changes.

```yaml
connectors:
  - id: misp-1                  # required, unique, stable (label opencti-connector-id)
    name: connector-misp        # container name, unique; default derived from id
    image: connector-misp:5.0.0
    env: {OPENCTI_URL: http://opencti:8080}
    status: started             # started | stopped; default started
```
Every problem of the file is collected (file, entry, key) and reported at once, exit code 2,
before any engine is contacted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from composer_core.engine.spec import NAME_PATTERN, env_key_problem, env_value_problem
from composer_core.errors import UsageError
from composer_core.files import LIMIT_CONNECTORS
from composer_core.images.reference import ImageRef, InvalidReference
from composer_core.yamlfile import YamlFileError, read_yaml

ConnectorStatus = Literal["started", "stopped"]
STATUSES = ("started", "stopped")
KEYS = frozenset({"id", "name", "image", "env", "status"})
# ids become label values and default container names: the container-name alphabet
ID_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


@dataclass(frozen=True)
class Connector:
    id: str
    name: str
    image: str
    env: Mapping[str, str] = field(default_factory=dict)
    status: ConnectorStatus = "started"


class InvalidConnectorsFile(UsageError):
    kind = "invalid-connectors-file"

    def __init__(self, path: str, problems: list[str]) -> None:
        lines = "\n  ".join(problems)
        super().__init__(f"invalid connectors file {path} ({len(problems)} problem"
                         f"{'s' if len(problems) != 1 else ''}):\n  {lines}",
                         hint="fix the file; nothing was changed")
        self.problems = problems

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "problems": self.problems}


def default_name(connector_id: str) -> str:
    return connector_id if NAME_PATTERN.fullmatch(connector_id) else f"connector-{connector_id}"


def _env(where: str, raw: Any, problems: list[str]) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(f"{where}.env: must be a mapping of NAME: value, not {type(raw).__name__}")
        return {}
    env: dict[str, str] = {}
    for key, value in raw.items():
        key_problem = env_key_problem(key)
        if key_problem is not None:
            problems.append(f"{where}.env: {key_problem}")
        elif isinstance(value, (Mapping, list)) or value is None:
            # the value is not shown: it may be a secret
            problems.append(f"{where}.env.{key}: must be a string, number or boolean, "
                            f"not {'null' if value is None else type(value).__name__}")
        else:
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            value_problem = env_value_problem(text)
            if value_problem is not None:
                problems.append(f"{where}.env.{key}: {value_problem}")
            else:
                env[key] = text
    return env


def _claim(seen: dict[str, str], value: str, where: str, key: str, problems: list[str]) -> bool:
    """Ids and names are unique across the file: the first entry claims one, later ones are problems."""
    if value in seen:
        problems.append(f"{where}.{key}: {value!r} is also the {key} of {seen[value]}")
        return False
    seen[value] = where
    return True


def parse_connectors(data: Any, path: str) -> list[Connector]:
    problems: list[str] = []
    if not isinstance(data, Mapping) or not isinstance(data.get("connectors"), list):
        raise InvalidConnectorsFile(path, ["the file must hold a mapping with a list `connectors:`"])
    unknown_top = sorted(set(data) - {"connectors"})
    if unknown_top:
        problems.append(f"unknown top-level keys: {', '.join(map(str, unknown_top))}")
    connectors: list[Connector] = []
    ids: dict[str, str] = {}
    names: dict[str, str] = {}
    for i, entry in enumerate(data["connectors"]):
        where = f"connectors[{i}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: must be a mapping with id, image, ...")
            continue
        cid = entry.get("id")
        if isinstance(cid, str) and cid:
            where = f"connectors[{i}] (id {cid})"
        unknown = sorted(str(k) for k in set(entry) - KEYS)
        if unknown:
            problems.append(f"{where}: unknown keys {', '.join(unknown)} (allowed: "
                            f"{', '.join(sorted(KEYS))})")
        ok = True
        if not isinstance(cid, str) or not ID_PATTERN.fullmatch(cid):
            problems.append(f"{where}.id: required, letters, digits, '_', '.' or '-' "
                            f"(got {cid!r})")
            ok = False
        else:
            ok = _claim(ids, cid, where, "id", problems)
        name = entry.get("name")
        if name is None and ok and isinstance(cid, str):
            name = default_name(cid)
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            if name is not None or ok:
                problems.append(f"{where}.name: invalid container name {name!r}")
            ok = False
        else:
            ok = _claim(names, name, where, "name", problems) and ok
        image = entry.get("image")
        if not isinstance(image, str):
            problems.append(f"{where}.image: required, a string such as connector-misp:5.0.0")
            ok = False
        else:
            try:
                ImageRef.parse(image)
            except InvalidReference as exc:
                problems.append(f"{where}.image: {exc}")
                ok = False
        status = entry.get("status", "started")
        if status not in STATUSES:
            problems.append(f"{where}.status: must be started or stopped, not {status!r}")
            ok = False
        env = _env(where, entry.get("env"), problems)
        if ok and isinstance(cid, str) and isinstance(name, str) and isinstance(image, str):
            connectors.append(Connector(id=cid, name=name, image=image, env=env, status=status))
    if problems:
        raise InvalidConnectorsFile(path, problems)
    return connectors


def load_connectors(path: str | Path) -> list[Connector]:
    p = Path(path)
    try:
        data = read_yaml(p, limit=LIMIT_CONNECTORS, what="connectors file")
    except YamlFileError as exc:
        if exc.unreadable:
            raise UsageError(exc.reason, hint="pass the file with -f FILE") from None
        raise InvalidConnectorsFile(str(p), [exc.reason]) from None
    return parse_connectors(data, str(p))
