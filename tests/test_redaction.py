"""Secrets in output: never formatted, and the last-resort scrubber never garbles ordinary words.

The probe's finding: with the password ``docker`` the logs read ``using ****** at
unix:///.../******.sock``, which garbles the line and tells the reader the password. Short
passwords (``docker``, ``podman``, ``5101``, ``a``) are protected by never being formatted; the
scrubber masks only distinctive secrets, as whole tokens (docs/credentials.md).

The scans are differential: the same commands run with a short password and with another
(``qq``); once the varying parts (ids, times) are normalised, the outputs must be identical. A
password that reached an output, or a scrubber that masked a word because it equals the password,
would make them differ.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from composer_core import logs, redact
from composer_core.redact import MASK, distinctive, register, scrub
from composer_plugins.keychain import CACHE
from tests.engine_helpers import unique

Run = Callable[[list[str]], tuple[int, str, str]]
SHORT_PASSWORDS = ["docker", "podman", "5101", "a"]
OTHER = "qq"  # the control: appears nowhere in any output


# --- the rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize("secret, masked", [
    ("docker", False), ("podman", False), ("5101", False), ("a", False),
    ("changeme", False), ("password", False), ("12345678", False), ("docker-registry", False),
    ("localhost", False), ("Registry", False),
    ("s3cr3t-Pa55word", True), ("a2bd11c7aade21da9091f2197f1f3cbb", True), ("tok-123456", True),
    ("p@ss word", True), ("hunter2!", True), ("tab\tsecret", True), ("CorrectHorseBattery", True),
])
def test_which_secrets_the_scrubber_masks(secret: str, masked: bool) -> None:
    assert distinctive(secret) is masked
    register(secret)
    assert (scrub(f"x {secret} y") == f"x {MASK} y") is masked


def test_short_secrets_never_garble_ordinary_text() -> None:
    register(*SHORT_PASSWORDS)
    line = ("runtime auto: using docker at unix:///tmp/xtm-bench/docker/docker.sock; podman at "
            "127.0.0.1:5101; a container")
    assert scrub(line) == line


def test_distinctive_secrets_are_masked_as_whole_tokens_only() -> None:
    register("Pa55word1", "s3cr3t-Pa55word")
    assert scrub("Pa55word1 u:Pa55word1@reg.io 'Pa55word1' Pa55word1.") == \
        f"{MASK} u:{MASK}@reg.io '{MASK}' {MASK}."
    # a longer value that merely contains it is another token, not this secret
    assert scrub("xPa55word1 Pa55word12") == "xPa55word1 Pa55word12"
    # the longest registered secret first: it is masked whole, not as MASK-Pa55word
    assert scrub("s3cr3t-Pa55word") == MASK
    # a secret whose edge is a symbol is found next to anything
    register("!x9Qr7$")  # 7 characters: too short
    register("#k3y-v4lue!")
    assert scrub("a#k3y-v4lue!b") == f"a{MASK}b"


def test_mask_has_one_definition() -> None:
    """Issue 9: MASK is defined in composer_core.redact and imported wherever it is used."""
    from composer_core import types
    from composer_core.settings import model

    assert model.MASK is redact.MASK and types.MASK is redact.MASK
    root = Path(redact.__file__).parent.parent
    defining = sorted(str(path.relative_to(root)) for package in ("composer_core", "composer_plugins")
                      for path in (root / package).rglob("*.py")
                      if re.search(r"^MASK\s*=", path.read_text(), re.M))
    assert defining == ["composer_core/redact.py"]


# --- config show and auth explain, no engine needed -----------------------------------------------

_VARYING = [
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[.,]\d+Z?"), "<time>"),
    (re.compile(r"\b[0-9a-f]{12,64}\b"), "<id>"),
    (re.compile(r"\b\d+\.\d+ ?s\b"), "<seconds>"),
    (re.compile(r"\(\d+ bytes\)"), "(<bytes>)"),
]


def normalised(text: str) -> str:
    for pattern, replacement in _VARYING:
        text = pattern.sub(replacement, text)
    return text


def settings_file(tmp_path: Path, password: str, registry: str = "reg.example.com") -> Path:
    """One path whatever the password: the path is shown by auth explain."""
    path = tmp_path / f"settings-{registry.replace(':', '-')}.yaml"
    path.write_text(json.dumps({"opencti": {"daemon": {"docker": {"registries": [
        {"url": registry, "username": "robot", "password": password}]}}}}))
    return path


def offline_outputs(run_cli: Run, tmp_path: Path, password: str) -> list[str]:
    CACHE.clear()  # both runs ask the default credential store alike
    config = str(settings_file(tmp_path, password))
    outputs = []
    for args in (["config", "show"], ["config", "show", "--json"],
                 ["--log-level", "debug", "auth", "explain", "reg.example.com/team/app:1"],
                 ["--log-level", "debug", "auth", "explain", "reg.example.com/team/app:1", "--json"],
                 ["--log-level", "debug", "auth", "explain", "other.example.com/app"]):
        code, out, err = run_cli(["--config", config, *args])
        assert code == 0, err
        outputs += [out, err]
    return outputs


@pytest.mark.parametrize("password", SHORT_PASSWORDS)
def test_config_show_and_auth_explain_with_a_short_password(run_cli: Run, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            password: str) -> None:
    monkeypatch.setenv("MANAGER__LOGGER__FORMAT", "json")
    json_logs = offline_outputs(run_cli, tmp_path, password)
    assert any(line.startswith("{") for line in json_logs[5].splitlines())  # the debug lines
    assert [normalised(text) for text in json_logs] == \
        [normalised(text) for text in offline_outputs(run_cli, tmp_path, OTHER)]
    monkeypatch.delenv("MANAGER__LOGGER__FORMAT")
    shown = offline_outputs(run_cli, tmp_path, password)
    control = offline_outputs(run_cli, tmp_path, OTHER)
    assert [normalised(text) for text in shown] == [normalised(text) for text in control]
    # the masked field is the only mask, and ordinary words that equal the password are intact
    config_text, config_json = shown[0], json.loads(shown[2])
    assert config_json["opencti"]["daemon"]["docker"]["registries"][0]["password"] == MASK
    assert config_text.count(MASK) == 1
    assert "selector:" in config_text and "docker:" in config_text
    explained = json.loads(shown[6])
    assert (explained["source"], explained["username"]) == ("config", "robot")
    assert MASK not in "".join(shown[4:])


# --- a deploy on both engines ---------------------------------------------------------------------


def deploy_outputs(run_cli: Run, tmp_path: Path, bench: Any, password: str, name: str) -> list[str]:
    """A deploy from the open registry with ``password`` configured for it (the registry ignores
    it), then a pull from the private registry with that (wrong) password: the error path."""
    CACHE.clear()
    outputs = []
    config = str(settings_file(tmp_path, password, bench.registry_open))
    code, out, err = run_cli(["--config", config, "--log-level", "debug", "deploy",
                              bench.ref(bench.registry_open), "--name", name,
                              "--env", f"OPENCTI_TOKEN={password}", "--json"])
    assert code == 0, err
    assert json.loads(out)["source"] == "config"
    outputs += [out, err]
    code, out, err = run_cli(["rm", "--force", name])
    assert code == 0, err
    outputs += [out, err]
    wrong = str(settings_file(tmp_path, password, bench.registry_private))
    for extra in ([], ["--json"]):
        code, out, err = run_cli(["--config", wrong, "--log-level", "debug", "pull",
                                  bench.ref(bench.registry_private), *extra])
        assert code == 7, err  # rejected
        outputs += [out, err]
    return outputs


@pytest.mark.integration
@pytest.mark.parametrize("password", SHORT_PASSWORDS)
def test_deploy_with_a_short_password(engine: str, bench: Any, run_cli: Run, tmp_path: Path,
                                      manager: str, monkeypatch: pytest.MonkeyPatch,
                                      password: str) -> None:
    monkeypatch.setenv("MANAGER__ID", manager)
    # auto: the line the probe saw garbled names the engine and its socket
    monkeypatch.setenv("OPENCTI__DAEMON__SELECTOR", "auto")
    if engine == "podman":  # no Docker answers: auto falls back to Podman
        monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    name = unique()
    shown = deploy_outputs(run_cli, tmp_path, bench, password, name)
    control = deploy_outputs(run_cli, tmp_path, bench, OTHER, name)
    assert [normalised(text) for text in shown] == [normalised(text) for text in control]
    everything = "\n".join(shown)
    endpoint = bench.docker_host if engine == "docker" else bench.podman_host
    assert f"using {engine} at {endpoint}" in everything
    assert MASK not in everything
    assert "unauthorized" in everything


def test_the_log_handler_follows_sys_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller that swaps and closes stderr after configure() (click's CliRunner does) must not
    leave the logger writing into a closed stream: records go to the current sys.stderr."""
    import io

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logs.configure("info", "text")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger(logs.LOGGER).warning("after the swap")
    assert second.getvalue().endswith("WARNING xtm_composer: after the swap\n")
    assert "Logging error" not in second.getvalue()
