"""Access to the local test bench started by ``scripts/bench-services up`` (see docs/bench.md).

``up`` writes ``$XTM_BENCH_DIR/bench.json`` (default ``/tmp/xtm-bench``) once everything
answers, and ``down`` removes it, so a missing file means "bench not running".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

DEFAULT_DIR = "/tmp/xtm-bench"
START_HINT = "start it with: sudo scripts/bench-services up"


@dataclass(frozen=True)
class Bench:
    """Mirror of ``scripts/bench-services env`` (each field is ``XTM_BENCH_<FIELD>``)."""

    dir: str
    docker_host: str  # unix:///.../docker.sock
    podman_host: str  # unix:///.../podman.sock
    containers_conf: str  # CONTAINERS_CONF for any local podman CLI call
    registry_private: str  # host:port, htpasswd auth, plain HTTP
    registry_open: str  # host:port, no auth, plain HTTP
    registry_tls: str  # host:port, htpasswd auth, HTTPS signed by `ca`
    registry_ns_tls: str  # netns host:port, no auth, HTTPS: Docker verifies it (x509 error)
    registry_ns_insecure: str  # netns host:port, no auth, HTTPS: in dockerd's --insecure-registry
    username: str
    password: str = field(repr=False)
    ca: str  # PEM of the CA that signed the registries' certificate
    image: str  # repository:tag (no registry part), e.g. xtm-test/busybox:1.0
    image2: str  # same repository, another image (different content and label)

    def ref(self, registry: str, image: str | None = None) -> str:
        """Full reference, e.g. ``bench.ref(bench.registry_private)`` -> ``127.0.0.1:5000/xtm-test/busybox:1.0``."""
        return f"{registry}/{image or self.image}"

    def env(self) -> dict[str, str]:
        """The ``XTM_BENCH_*`` variables, as printed by ``scripts/bench-services env``."""
        return {f"XTM_BENCH_{f.name.upper()}": getattr(self, f.name) for f in fields(self)}


def bench_dir() -> Path:
    return Path(os.environ.get("XTM_BENCH_DIR") or DEFAULT_DIR)


def bench_json_path() -> Path:
    return bench_dir() / "bench.json"


def load_bench(path: str | os.PathLike[str] | None = None) -> Bench | None:
    """Read bench.json; None when it does not exist (bench not up).

    A file that exists but is unreadable or incomplete raises: that is a broken bench, not a missing one.
    """
    p = Path(path) if path is not None else bench_json_path()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    names = [f.name for f in fields(Bench)]
    missing = [n for n in names if not isinstance(data.get(n), str)]
    if missing:
        raise ValueError(f"{p}: missing or non-string keys {missing}; re-run scripts/bench-services up")
    return Bench(**{n: data[n] for n in names})


def require_bench() -> Bench:
    """The bench, or skip the test (``pytest.fail`` instead when ``CI=true``: CI must run these tests)."""
    bench = load_bench()
    if bench is not None:
        return bench
    import pytest

    msg = f"test bench not running ({bench_json_path()} not found); {START_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)
