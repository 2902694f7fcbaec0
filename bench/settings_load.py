"""Settings-loading benchmark: large generated settings are loaded in linear time, bombs refused fast.

    .venv/bin/python bench/settings_load.py [--keys 5000] [--registries 10000] [--rounds 3] [--json]

Generates, in a temporary directory, and loads with :func:`composer_core.settings.load_settings`
(every layer, the merge with provenance, the unknown-key check, validation by the core and the
built-in plugins' validators, the redactor's registration of every password):

* ``keys``: a settings file with ``--keys`` distinct leaf keys (50 per section, unknown to
  xtm-composer, so the unknown-key check runs on each section);
* ``mirrors``: ``--keys`` mirror rules (``opencti.daemon.docker.mirrors``, each rule validated);
* ``environment``: ``--keys`` environment variables (``MANAGER__EXTRA__K<i>``);
* ``registries``: a ``opencti.daemon.docker.registries`` list of ``--registries`` entries with url,
  username and password (each url normalised, each password registered with the redactor), then the
  registry block parsed once more for the TLS policy;
* ``alias bomb``: a 1 KB "billion laughs" file, refused (the time to the refusal).

The plugins' settings specs are collected once, untimed. The best of ``--rounds`` counts. Exit code
1 when a load takes a second or more (the target is "well under a second"), or the bomb is not
refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from composer_core import redact  # noqa: E402
from composer_core.engine.tls import tls_decision  # noqa: E402
from composer_core.errors import SettingsError  # noqa: E402
from composer_core.pluginmanager import Plugins  # noqa: E402
from composer_core.settings import load_settings  # noqa: E402

BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join(["*" + chr(97 + i)] * 9) + "]\n"
                  for i in range(8)))


def best(rounds: int, run: Callable[[], Any]) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(rounds):
        redact.clear()
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--registries", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.getLogger("xtm_composer.settings").setLevel(logging.ERROR)  # unknown-key warnings
    specs = list(Plugins().settings_specs().values())
    rows: list[dict[str, Any]] = []

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        keys = work / "keys.yaml"
        groups: dict[str, dict[str, int]] = {}
        for i in range(args.keys):
            groups.setdefault(f"group{i // 50}", {})[f"key{i}"] = i
        keys.write_text(yaml.safe_dump({"manager": {"extra": groups}}))
        mirrors = work / "mirrors.yaml"
        mirrors.write_text(yaml.safe_dump({"opencti": {"daemon": {"docker": {"mirrors": {
            f"reg{i}.example.com": f"mirror.example.com/reg{i}" for i in range(args.keys)}}}}}))
        registries = work / "registries.yaml"
        registries.write_text(yaml.safe_dump({"opencti": {"daemon": {"docker": {"registries": [
            {"url": f"reg{i}.example.com:5000", "username": f"user{i}", "password": f"pw-{i:06d}-secret"}
            for i in range(args.registries)]}}}}))
        bomb = work / "bomb.yaml"
        bomb.write_text(BOMB)
        environ = {f"MANAGER__EXTRA__K{i}": str(i) for i in range(args.keys)}

        def load(files: list[Path], env: dict[str, str] | None = None) -> Any:
            return load_settings([str(f) for f in files], environ=env or {}, cwd=work, specs=specs)

        def registries_and_tls() -> Any:
            settings = load([registries])
            return settings, tls_decision(settings, f"reg{args.registries - 1}.example.com:5000")

        def refuse_bomb() -> str:
            try:
                load([bomb])
            except SettingsError as exc:
                return exc.message
            return "NOT REFUSED"

        cases: list[tuple[str, str, Callable[[], Any], Callable[[Any], bool]]] = [
            ("keys", f"{args.keys:,} keys ({keys.stat().st_size // 1024} KiB file)", lambda: load([keys]),
             lambda s: len(s.get("manager.extra")) == (args.keys + 49) // 50),
            ("mirrors", f"{args.keys:,} mirror rules", lambda: load([mirrors]),
             lambda s: len(s.get("opencti.daemon.docker.mirrors")) == args.keys),
            ("environment", f"{args.keys:,} environment variables", lambda: load([], environ),
             lambda s: len(s.get("manager.extra")) == args.keys),
            ("registries", f"{args.registries:,} registries ({registries.stat().st_size // 1024} KiB file)",
             registries_and_tls, lambda r: len(r[0].get("opencti.daemon.docker.registries")) == args.registries
             and r[1].verify),
            ("alias bomb", f"billion laughs ({len(BOMB)} bytes)", refuse_bomb, lambda m: "alias" in m),
        ]
        for name, what, run, check in cases:
            seconds, result = best(args.rounds, run)
            rows.append({"case": name, "input": what, "seconds": round(seconds, 4), "ok": bool(check(result))})

    failed = [r for r in rows if not r["ok"] or r["seconds"] >= 1.0]
    if args.json:
        print(json.dumps({"python": platform.python_version(), "rows": rows}, indent=2))
    else:
        print(f"Python {platform.python_version()}, best of {args.rounds}")
        print(f"{'case':<12} {'input':<42} {'seconds':>8}  ok")
        for r in rows:
            print(f"{r['case']:<12} {r['input']:<42} {r['seconds']:>8.4f}  {'yes' if r['ok'] else 'NO'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
