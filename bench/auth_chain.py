"""Benchmark: repeated credential resolutions of one registry, ours against docker-py's.

Both read the same config.json, whose ``credsStore`` names a small deterministic helper script
(``docker-credential-benchstore``) that appends a line to a counter file on every execution, so that
the helper executions of each side are counted, not assumed.

* ours: :func:`composer_core.auth.chain.resolve_credentials` through the real plugin manager and the default
  ``auth.chain`` (config -> docker-config -> keychain -> ...), the answer coming from the keychain
  provider;
* docker-py: ``docker.auth.load_config(config_path=...)`` once, then
  ``docker.auth.resolve_authconfig(authconfig, registry)`` per resolution (it runs the helper every
  time: it has no cache).

Run: ``.venv/bin/python bench/auth_chain.py [-n 1000] [--rounds 3]``. Prints the machine, a table and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REGISTRY = "registry.example.com:5000"
IMAGE = f"{REGISTRY}/team/connector:1.0"
HELPER = """#!/bin/sh
url=$(cat)
echo "$url" >> "{counter}"
printf '{{"ServerURL":"%s","Username":"bench-user","Secret":"bench-Secret-0123"}}' "$url"
"""


def setup(tmp: Path) -> tuple[dict[str, str], Path, Path]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    counter = tmp / "helper.calls"
    helper = bin_dir / "docker-credential-benchstore"
    helper.write_text(HELPER.format(counter=counter))
    helper.chmod(0o755)
    config_dir = tmp / "docker"
    config_dir.mkdir()
    config = config_dir / "config.json"
    config.write_text(json.dumps({"auths": {REGISTRY: {}}, "credsStore": "benchstore"}))
    (tmp / "home").mkdir()
    environ = {"HOME": str(tmp / "home"), "DOCKER_CONFIG": str(config_dir),
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}
    return environ, config, counter


def executions(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def timed(n: int, rounds: int, resolve: Callable[[], object], counter: Path) -> tuple[float, int]:
    """The best of ``rounds`` timings of ``n`` warm resolutions (after one warm-up), and the helper
    executions of the whole run (warm-up included)."""
    counter.unlink(missing_ok=True)
    resolve()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            resolve()
        best = min(best, time.perf_counter() - started)
    return best, executions(counter)


def ours(environ: dict[str, str], tmp: Path) -> Callable[[], object]:
    from composer_core.auth.chain import resolve_credentials
    from composer_core.images.resolve import resolve_image
    from composer_core.pluginmanager import Plugins
    from composer_core.settings import load_settings

    settings = load_settings(environ={}, cwd=tmp)
    plugins = Plugins()
    image = resolve_image(IMAGE, settings, plugins)

    def resolve() -> object:
        resolution = resolve_credentials(image, settings, plugins, environ=environ)
        assert resolution.source == "keychain", resolution.trace_lines()
        return resolution

    return resolve


def docker_py(environ: dict[str, str], config: Path) -> Callable[[], object]:
    import docker.auth

    os.environ["PATH"] = environ["PATH"]  # docker-py finds the helper on the process PATH
    authconfig = docker.auth.load_config(config_path=str(config))

    def resolve() -> object:
        answer = docker.auth.resolve_authconfig(authconfig, REGISTRY)
        assert answer and answer.get("Username") == "bench-user", answer
        return answer

    return resolve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="resolutions per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per implementation; the best counts")
    args = parser.parse_args()
    import docker

    with tempfile.TemporaryDirectory(prefix="xtm-bench-") as name:
        tmp = Path(name)
        environ, config, counter = setup(tmp)
        rows = []
        for label, resolve in (("xtm-composer (resolve_credentials, default chain)", ours(environ, tmp)),
                               (f"docker-py {docker.__version__} (resolve_authconfig)",
                                docker_py(environ, config))):
            seconds, runs = timed(args.n, args.rounds, resolve, counter)
            rows.append((label, args.n, seconds, args.n / seconds, runs))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {_cpu()}, "
          f"Python {platform.python_version()}, {platform.system()} {platform.release()}")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"{args.n} warm resolutions of {REGISTRY}, best of {args.rounds} rounds, after one warm-up; "
          f"helper executions counted over all {args.n * args.rounds + 1} resolutions; "
          "credsStore helper: a /bin/sh script\n")
    header = ("implementation", "resolutions", "seconds (best round)", "resolutions/s", "helper executions")
    table = [header] + [(r[0], str(r[1]), f"{r[2]:.3f}", f"{r[3]:,.0f}", str(r[4])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("| " + " | ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)) + " |")
        if i == 0:
            print("| " + " | ".join("-" * w for w in widths) + " |")
    print(f"\nratio: {rows[0][3] / rows[1][3]:,.0f}x docker-py's rate")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
