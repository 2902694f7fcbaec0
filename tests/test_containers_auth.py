"""Provider ``containers-auth``: Podman's auth.json files, real files in throwaway folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from composer_core.types import Failed, Found, NotFound
from composer_plugins.containers_auth import auth_files, lookup
from tests.conftest import assert_no_secrets
from tests.keychain_helpers import (
    PODMAN_PASSWORD,
    SECRETS,
    b64,
    request,
    write_json,
)

AUTH = b64(f"podman-user:{PODMAN_PASSWORD}")


def entry(user: str) -> dict[str, str]:
    return {"auth": b64(f"{user}:pw-{user}-123")}


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    names = ("home", "runtime", "config", "explicit")
    paths = {name: tmp_path / f"pod-{name}" for name in names}
    for path in paths.values():
        path.mkdir()
    return paths


def ask(image: str, make_settings, environ: dict[str, str]):
    return lookup(request(image, make_settings(), environ))


def test_file_order_from_the_environment(dirs: dict[str, Path]) -> None:
    env = {"HOME": str(dirs["home"])}
    assert auth_files(env) == [(f"{dirs['home']}/.config/containers/auth.json", "~/.config")]
    env |= {"XDG_RUNTIME_DIR": str(dirs["runtime"]), "XDG_CONFIG_HOME": str(dirs["config"])}
    assert [p for p, _ in auth_files(env)] == [f"{dirs['runtime']}/containers/auth.json",
                                               f"{dirs['config']}/containers/auth.json"]
    env["REGISTRY_AUTH_FILE"] = str(dirs["explicit"] / "a.json")
    assert auth_files(env) == [(str(dirs["explicit"] / "a.json"), "REGISTRY_AUTH_FILE")]
    assert auth_files({}) == []


def test_registry_auth_file_is_exclusive(dirs: dict[str, Path], make_settings) -> None:
    write_json(dirs["runtime"] / "containers/auth.json", {"auths": {"quay.io": entry("runtime")}})
    write_json(dirs["home"] / ".config/containers/auth.json", {"auths": {"quay.io": entry("home")}})
    explicit = dirs["explicit"] / "auth.json"
    env = {"HOME": str(dirs["home"]), "XDG_RUNTIME_DIR": str(dirs["runtime"]),
           "REGISTRY_AUTH_FILE": str(explicit)}
    result = ask("quay.io/app", make_settings, env)
    assert isinstance(result, NotFound)
    assert result.reason == f"no file at {explicit} (REGISTRY_AUTH_FILE)"
    write_json(explicit, {"auths": {"quay.io": {"auth": AUTH}}})
    result = ask("quay.io/app", make_settings, env)
    assert isinstance(result, Found)
    creds = result.credentials
    assert (creds.source, creds.registry, creds.username, creds.password, creds.key, creds.file) == (
        "containers-auth", "quay.io", "podman-user", PODMAN_PASSWORD, "quay.io", str(explicit))
    assert_no_secrets(result.detail + repr(result), SECRETS)


def test_runtime_dir_then_config_home_then_home(dirs: dict[str, Path], make_settings) -> None:
    runtime = write_json(dirs["runtime"] / "containers/auth.json", {"auths": {"quay.io": entry("runtime")}})
    config = write_json(dirs["config"] / "containers/auth.json", {"auths": {"quay.io": entry("config"),
                                                                           "ghcr.io": entry("config")}})
    write_json(dirs["home"] / ".config/containers/auth.json", {"auths": {"ghcr.io": entry("home"),
                                                                        "gcr.io": entry("home")}})
    env = {"HOME": str(dirs["home"]), "XDG_RUNTIME_DIR": str(dirs["runtime"]),
           "XDG_CONFIG_HOME": str(dirs["config"])}
    assert ask("quay.io/app", make_settings, env).credentials.username == "runtime"
    found = ask("ghcr.io/app", make_settings, env)
    assert found.credentials.username == "config" and found.credentials.file == str(config)
    assert f"no entry for ghcr.io/app in {runtime}" in found.detail
    # XDG_CONFIG_HOME set: ~/.config is not read
    assert isinstance(ask("gcr.io/app", make_settings, env), NotFound)
    del env["XDG_CONFIG_HOME"]
    assert ask("gcr.io/app", make_settings, env).credentials.username == "home"


def test_path_scoped_keys_most_specific_first(dirs: dict[str, Path], make_settings) -> None:
    path = write_json(dirs["explicit"] / "auth.json", {"auths": {
        "quay.io": entry("host"),
        "quay.io/a/b": entry("ab"),
        "quay.io/a": entry("a"),
    }})
    env = {"REGISTRY_AUTH_FILE": str(path)}
    assert ask("quay.io/a/b/img", make_settings, env).credentials.username == "ab"
    assert ask("quay.io/a/b", make_settings, env).credentials.username == "ab"
    assert ask("quay.io/a/c/img", make_settings, env).credentials.username == "a"
    assert ask("quay.io/a/bb/img", make_settings, env).credentials.username == "a"  # whole segments
    assert ask("quay.io/x/img", make_settings, env).credentials.username == "host"
    result = ask("quay.io/a/b/img:1", make_settings, env)
    assert result.credentials.key == "quay.io/a/b"
    assert result.detail == f"key 'quay.io/a/b' in {path} matches quay.io/a/b/img (user 'ab')"


def test_no_fallback_from_path_scope_to_host(dirs: dict[str, Path], make_settings) -> None:
    path = write_json(dirs["explicit"] / "auth.json", {"auths": {"quay.io/team/app": entry("app")}})
    env = {"REGISTRY_AUTH_FILE": str(path)}
    assert ask("quay.io/team/app:2", make_settings, env).credentials.username == "app"
    for image in ("quay.io/team/other", "quay.io/team/app-two", "quay.io/team", "quay.io/x"):
        result = ask(image, make_settings, env)
        assert isinstance(result, NotFound), image
        assert "'quay.io/team/app' cover other paths only" in result.reason


def test_keys_with_scheme_tag_or_digest_are_skipped(dirs: dict[str, Path], make_settings) -> None:
    path = write_json(dirs["explicit"] / "auth.json", {"auths": {
        "https://quay.io": entry("scheme"),
        "quay.io/app:latest": entry("tag"),
        "quay.io/app@sha256:" + "a" * 64: entry("digest"),
        "quay.io/ok": entry("ok"),
    }})
    env = {"REGISTRY_AUTH_FILE": str(path)}
    assert ask("quay.io/ok/x", make_settings, env).credentials.username == "ok"
    result = ask("quay.io/app", make_settings, env)
    assert isinstance(result, NotFound)
    assert "entry 'https://quay.io' skipped: invalid key: a key must not hold a scheme" in result.reason
    assert "entry 'quay.io/app:latest' skipped: invalid key: a key must not hold a tag" in result.reason
    assert "entry 'quay.io/app@sha256:" in result.reason


def test_hub_and_bad_entries(dirs: dict[str, Path], make_settings) -> None:
    path = write_json(dirs["explicit"] / "auth.json", {"auths": {
        "docker.io": {"auth": AUTH},
        "ghcr.io": {"auth": "%%%"},
        "gcr.io": {},
    }})
    env = {"REGISTRY_AUTH_FILE": str(path)}
    result = ask("alpine", make_settings, env)
    assert isinstance(result, Found) and result.credentials.registry == "docker.io"
    assert "entry 'ghcr.io' skipped: bad base64" in result.detail
    assert isinstance(ask("gcr.io/x", make_settings, env), NotFound)


def test_a_broken_file_is_recorded_and_the_next_one_read(dirs: dict[str, Path], make_settings) -> None:
    runtime = write_json(dirs["runtime"] / "containers/auth.json", "{broken")
    write_json(dirs["config"] / "containers/auth.json", {"auths": {"quay.io": entry("config")}})
    env = {"XDG_RUNTIME_DIR": str(dirs["runtime"]), "XDG_CONFIG_HOME": str(dirs["config"])}
    found = ask("quay.io/app", make_settings, env)
    assert isinstance(found, Found) and found.credentials.username == "config"
    assert f"{runtime} is not valid JSON" in found.detail
    failed = ask("ghcr.io/app", make_settings, env)
    assert isinstance(failed, Failed) and not failed.fatal
    assert f"{runtime} is not valid JSON" in failed.reason and "no entry for ghcr.io/app" in failed.reason


def test_a_directory_and_a_wrong_shape(dirs: dict[str, Path], make_settings) -> None:
    (dirs["explicit"] / "auth.json").mkdir()
    env = {"REGISTRY_AUTH_FILE": str(dirs["explicit"] / "auth.json")}
    result = ask("quay.io/app", make_settings, env)
    assert isinstance(result, Failed) and "is a directory, not a file" in result.reason
    bad = write_json(dirs["explicit"] / "list.json", {"auths": [1]})
    result = ask("quay.io/app", make_settings, {"REGISTRY_AUTH_FILE": str(bad)})
    assert isinstance(result, Failed) and "'auths' is a list, expected an object" in result.reason


def test_nothing_to_read(make_settings) -> None:
    result = ask("quay.io/app", make_settings, {})
    assert isinstance(result, NotFound) and "are all unset" in result.reason


def test_special_and_oversize_files_are_refused_at_once(dirs: dict[str, Path], make_settings) -> None:
    """A FIFO would block a read forever and /dev/zero never ends: both refused before any read,
    and a file past the bound is refused by size; the next file is still read."""
    fifo = dirs["explicit"] / "fifo.json"
    os.mkfifo(fifo)
    result = ask("quay.io/app", make_settings, {"REGISTRY_AUTH_FILE": str(fifo)})
    assert isinstance(result, Failed)
    assert result.reason == f"{fifo} is not a regular file (a FIFO): only regular files are read"
    result = ask("quay.io/app", make_settings, {"REGISTRY_AUTH_FILE": "/dev/zero"})
    assert isinstance(result, Failed)
    assert result.reason == "/dev/zero is not a regular file (a device): only regular files are read"
    big = dirs["runtime"] / "containers" / "auth.json"
    big.parent.mkdir()
    with big.open("wb") as handle:
        handle.truncate(4 * 1024 * 1024 + 1)  # sparse: past the bound without writing it
    write_json(dirs["config"] / "containers" / "auth.json", {"auths": {"quay.io": {"auth": AUTH}}})
    env = {"XDG_RUNTIME_DIR": str(dirs["runtime"]), "XDG_CONFIG_HOME": str(dirs["config"])}
    found = ask("quay.io/app", make_settings, env)
    assert isinstance(found, Found) and found.credentials.password == PODMAN_PASSWORD
    assert (f"containers auth file {big} is larger than 4 MiB, the most xtm-composer reads from "
            "such a file") in found.detail


def test_ipv6_keys(dirs: dict[str, Path], make_settings) -> None:
    path = write_json(dirs["explicit"] / "auth.json", {"auths": {
        "[0:0::1]:5000/team": {"auth": AUTH}, "::1:6555": {"auth": b64("six:pw-six-1234")}}})
    env = {"REGISTRY_AUTH_FILE": str(path)}
    scoped = ask("[::1]:5000/team/app", make_settings, env)
    assert isinstance(scoped, Found) and scoped.credentials.username == "podman-user"
    assert scoped.credentials.registry == "[::1]:5000"
    unbracketed = ask("[::1]:6555/app", make_settings, env)
    assert isinstance(unbracketed, Found) and unbracketed.credentials.username == "six"
    assert isinstance(ask("[::1]:5000/other", make_settings, env), NotFound)
