"""Engine timestamps: Docker and Podman give nanoseconds, which Python 3.11's
``datetime.fromisoformat`` does not take."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?")


def parse_time(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    match = _TIME.match(stamp)
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        return datetime.fromisoformat(f"{whole}.{(fraction or '0')[:6].ljust(6, '0')}{zone}")
    except ValueError:
        return None


def seconds_since(stamp: str | None) -> float | None:
    moment = parse_time(stamp)
    return None if moment is None else (datetime.now(UTC) - moment).total_seconds()
