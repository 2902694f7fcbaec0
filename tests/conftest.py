"""Shared fixtures.

* Every test runs with a throwaway HOME and working directory and none of the developer's
  credential files or xtm-composer variables: nothing of the machine leaks in, nothing leaks out.
* ``plugins`` is a fresh plugin manager that loads only our own distribution's entry points, so
  that third-party plugins installed on the machine never leak into the suite.
* Integration tests (marker ``integration``) use the bench started by ``scripts/bench-services``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from composer_core import redact
from composer_core.pluginmanager import Plugins
from composer_core.settings import Settings, load_settings

# Fixtures shared by several test modules live beside their helpers; importing them here makes
# them visible to every test without each module re-importing them.
from tests.engine_helpers import (  # noqa: F401
    connect,
    connect_backend,
    engine,
    engine_settings,
    manager,
)
from tests.keychain_helpers import clean_helper_cache, pass_store  # noqa: F401
from tests.opencti_helpers import key_file, opencti_settings, platform, platform_token  # noqa: F401

OUR_DISTRIBUTION = "xtm-composer"

_SCRUBBED_PREFIXES = ("XTM_COMPOSER_", "OPENCTI__", "MANAGER__", "AUTH__", "IMAGES__", "PLUGINS__")
_SCRUBBED = ("DOCKER_CONFIG", "DOCKER_AUTH_CONFIG", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME",
             "COMPOSER_ENV", "DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "CONTAINER_HOST",
             "GNUPGHOME", "PASSWORD_STORE_DIR")


@pytest.fixture(autouse=True)
def only_our_plugins_in_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line, invoked in-process, loads only this distribution's entry points: a
    third-party plugin installed on the machine cannot change a CLI test's result. Tests of
    third-party loading set their own filter."""
    from composer_core.cli import context

    monkeypatch.setattr(context, "ENTRY_POINT_FILTER", only_ours)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    for name in list(os.environ):
        if name in _SCRUBBED or name.startswith(_SCRUBBED_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    redact.clear()
    yield work
    redact.clear()


def only_ours(ep: Any) -> bool:
    dist = getattr(ep, "dist", None)
    return dist is not None and dist.name == OUR_DISTRIBUTION


@pytest.fixture
def plugins() -> Plugins:
    return Plugins(entry_point_filter=only_ours)


@pytest.fixture
def make_settings(isolated_env: Path) -> Callable[..., Settings]:
    """Settings from the embedded defaults plus dotted overrides, and nothing of the machine."""

    def make(overrides: dict[str, Any] | None = None, *, environ: dict[str, str] | None = None,
             files: tuple[str, ...] = ()) -> Settings:
        return load_settings(files, environ=environ or {}, cwd=isolated_env, overrides=overrides,
                             entry_point_filter=only_ours)

    return make


@pytest.fixture
def bench() -> Any:
    """The running test bench (scripts/bench-services up). Missing: a failure under CI, else a skip."""
    from tests.bench import require_bench

    return require_bench()


def assert_no_secrets(text: str, secrets: list[str]) -> None:
    """Every secret used by a test must be absent from everything it captured."""
    for secret in secrets:
        assert secret not in text, f"a secret leaked into the output: ...{secret[:2]}..."


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], tuple[int, str, str]]:
    """Run the real entry point (:func:`composer_core.cli.main`, with its error handling) in
    process: returns (exit code, stdout, stderr)."""
    from composer_core.cli import main

    def run(args: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run
