"""Provider ``docker-config``: Docker's config.json, real files in throwaway folders."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from base64 import b64encode
from pathlib import Path

import pytest

from composer_core.types import Failed, Found, NotFound
from composer_plugins.docker.auth import docker_auth_config
from composer_plugins.docker_config import lookup
from composer_plugins.keychain import lookup as keychain_lookup
from tests.conftest import assert_no_secrets
from tests.keychain_helpers import (
    BAD_ENTRY_SECRET,
    DOCKER_PASSWORD,
    DOCKER_TOKEN,
    ENV_PASSWORD,
    SECRETS,
    b64,
    request,
    write_json,
)

AUTH = b64(f"docker-user:{DOCKER_PASSWORD}")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "req-home"
    path.mkdir()
    return path


def ask(image: str, make_settings, environ: dict[str, str]):
    return lookup(request(image, make_settings(), environ))


def test_home_docker_config(home: Path, make_settings) -> None:
    path = write_json(home / ".docker/config.json", {"auths": {"reg.io": {"auth": AUTH}}})
    result = ask("reg.io/team/app:1", make_settings, {"HOME": str(home)})
    assert isinstance(result, Found)
    creds = result.credentials
    assert (creds.registry, creds.source, creds.username, creds.password) == (
        "reg.io", "docker-config", "docker-user", DOCKER_PASSWORD)
    assert (creds.key, creds.file) == ("reg.io", str(path))
    assert result.detail == f"key 'reg.io' in {path} matches reg.io/team/app (user 'docker-user')"


def test_home_comes_from_the_request_not_the_process(home: Path, make_settings) -> None:
    # the process HOME (isolated_env) has a config.json; the request's HOME has none
    write_json(Path(os.environ["HOME"]) / ".docker/config.json", {"auths": {"reg.io": {"auth": AUTH}}})
    result = ask("reg.io/app", make_settings, {"HOME": str(home)})
    assert isinstance(result, NotFound)
    assert str(home / ".docker/config.json") in result.reason
    assert isinstance(ask("reg.io/app", make_settings, {}), NotFound)


def test_docker_config_is_a_directory_and_excludes_home(home: Path, tmp_path: Path, make_settings) -> None:
    write_json(home / ".docker/config.json", {"auths": {"reg.io": {"auth": AUTH}}})
    elsewhere = tmp_path / "dc"
    elsewhere.mkdir()
    result = ask("reg.io/app", make_settings, {"HOME": str(home), "DOCKER_CONFIG": str(elsewhere)})
    assert isinstance(result, NotFound)
    assert result.reason == f"no config.json at {elsewhere}/config.json (DOCKER_CONFIG={elsewhere})"
    write_json(elsewhere / "config.json", {"auths": {"reg.io": {"username": "plain", "password": "pw-123456"}}})
    found = ask("reg.io/app", make_settings, {"HOME": str(home), "DOCKER_CONFIG": str(elsewhere)})
    assert isinstance(found, Found) and found.credentials.username == "plain"
    assert found.credentials.file == str(elsewhere / "config.json")


@pytest.mark.parametrize("entry, expected", [
    ({"auth": b64(f"docker-user:{DOCKER_PASSWORD}")}, ("docker-user", DOCKER_PASSWORD, None)),
    ({"auth": b64(f"docker-user:{DOCKER_PASSWORD}", padded=False)}, ("docker-user", DOCKER_PASSWORD, None)),
    ({"auth": b64(f"docker-user:{DOCKER_PASSWORD}\0\0")}, ("docker-user", DOCKER_PASSWORD, None)),
    ({"auth": b64("docker-user:pa:ss:word")}, ("docker-user", "pa:ss:word", None)),
    ({"username": "docker-user", "password": DOCKER_PASSWORD}, ("docker-user", DOCKER_PASSWORD, None)),
    ({"auth": b64("docker-user:"), "identitytoken": DOCKER_TOKEN}, ("docker-user", None, DOCKER_TOKEN)),
    ({"identitytoken": DOCKER_TOKEN}, (None, None, DOCKER_TOKEN)),
    # auth wins over plaintext fields, as in the Docker CLI
    ({"auth": AUTH, "username": "other", "password": "other-pw"}, ("docker-user", DOCKER_PASSWORD, None)),
], ids=["padded", "unpadded", "trailing-nuls", "colon-in-password", "plaintext", "auth+token", "token",
        "auth-wins"])
def test_entry_shapes(home: Path, make_settings, entry: dict, expected: tuple) -> None:
    write_json(home / ".docker/config.json", {"auths": {"reg.io": entry}})
    result = ask("reg.io/app", make_settings, {"HOME": str(home)})
    assert isinstance(result, Found), result
    creds = result.credentials
    assert (creds.username, creds.password, creds.identity_token) == expected
    if expected[2]:
        assert docker_auth_config(creds) == {"serveraddress": "reg.io", "identitytoken": DOCKER_TOKEN}
        assert "identity token" in result.detail
    assert_no_secrets(result.detail + repr(result), SECRETS)


@pytest.mark.parametrize("key, image", [
    ("https://index.docker.io/v1/", "alpine"),
    ("docker.io", "library/alpine:3"),
    ("index.docker.io", "docker.io/library/alpine"),
    ("registry-1.docker.io", "myorg/app"),
    ("https://index.docker.io/v1", "myorg/app"),
    ("https://my.registry.net/v1/", "my.registry.net/app"),
    ("http://my.registry.net/v2/", "my.registry.net/app"),
    ("MY.Registry.NET", "my.registry.net/team/app"),
    ("10.10.30.45:5000", "10.10.30.45:5000/app"),
    ("https://localhost:5000", "localhost:5000/app"),
    # IPv6: one bracketed, compressed form; unbracketed read as the Docker CLI reads it
    ("https://::1:6555/v2/", "[::1]:6555/app"),
    ("[::1]:6555", "[0:0::1]:6555/app"),
    ("https://[0:0:0::1]:6555/v1/", "[::1]:6555/app"),
    ("[FE80::1]", "[fe80::1]/app"),
])
def test_keys_are_normalised(home: Path, make_settings, key: str, image: str) -> None:
    write_json(home / ".docker/config.json", {"auths": {key: {"auth": AUTH}}})
    result = ask(image, make_settings, {"HOME": str(home)})
    assert isinstance(result, Found), result
    assert result.credentials.key == key


@pytest.mark.parametrize("key, image", [
    ("10.10.30.45", "10.10.30.45:5000/app"),  # the port is significant
    ("10.10.30.45:5000", "10.10.30.45/app"),
    ("localhost:5001", "localhost:5000/app"),
    ("https://index.docker.io/v1/", "quay.io/app"),
    ("reg.io", "sub.reg.io/app"),
    ("[::1]:6555", "[::1]:6556/app"),
    ("[::1]", "[::1]:6555/app"),
])
def test_keys_that_do_not_match(home: Path, make_settings, key: str, image: str) -> None:
    path = write_json(home / ".docker/config.json", {"auths": {key: {"auth": AUTH}, "other.io": {}}})
    result = ask(image, make_settings, {"HOME": str(home)})
    assert isinstance(result, NotFound)
    assert result.reason.startswith("no entry for ")
    assert f" in {path} (keys: {key}, other.io)" in result.reason


def test_marker_means_not_here(home: Path, make_settings) -> None:
    write_json(home / ".docker/config.json", {"auths": {"https://index.docker.io/v1/": {}},
                                              "credsStore": "pass"})
    result = ask("alpine", make_settings, {"HOME": str(home)})
    assert isinstance(result, NotFound)
    assert "'https://index.docker.io/v1/': {} marker" in result.reason
    assert "keychain" in result.reason


def test_bad_entries_are_skipped_and_never_break_the_file(home: Path, make_settings,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="xtm_composer")
    path = write_json(home / ".docker/config.json", {"auths": {
        "bad64.io": {"auth": "!!" + BAD_ENTRY_SECRET},
        "nocolon.io": {"auth": b64(BAD_ENTRY_SECRET)},
        "int.io": {"auth": 12345},
        "list.io": [BAD_ENTRY_SECRET],
        "nopass.io": {"username": "someone"},
        "nouser.io": {"password": BAD_ENTRY_SECRET},
        "quay.io/app:latest": {"auth": AUTH},
        "": {"auth": AUTH},
        "latin1.io": {"auth": b64encode(b"user:\xff\xfe").decode()},
        "reg.io": {"auth": AUTH},
    }})
    good = ask("reg.io/app", make_settings, {"HOME": str(home)})
    assert isinstance(good, Found) and good.credentials.password == DOCKER_PASSWORD
    for host in ("bad64.io", "nocolon.io", "int.io", "list.io", "nopass.io", "nouser.io"):
        result = ask(f"{host}/app", make_settings, {"HOME": str(home)})
        assert isinstance(result, NotFound), host
    reason = ask("bad64.io/app", make_settings, {"HOME": str(home)}).reason
    assert "entry 'bad64.io' skipped: bad base64" in reason
    assert "entry 'nocolon.io' skipped: auth has no ':' (expected base64 of user:password)" in reason
    assert "entry 'int.io' skipped: auth is a number, expected a string" in reason
    assert "entry 'list.io' skipped: is a list, expected an object" in reason
    assert "entry 'nopass.io' skipped: no password" in reason
    assert "entry 'nouser.io' skipped: no username" in reason
    assert "entry 'quay.io/app:latest' skipped: invalid key" in reason
    assert "entry '' skipped: invalid key: empty key" in reason
    assert "entry 'latin1.io' skipped: auth does not decode to UTF-8 text" in reason
    assert str(path) in caplog.text  # warned once about the skipped entries
    assert_no_secrets(reason + caplog.text, SECRETS)


@pytest.mark.parametrize("content, why", [
    ("{not json", "is not valid JSON: Expecting property name enclosed in double quotes at line 1"),
    ('{"auths": {"reg.io": {"auth": "' + BAD_ENTRY_SECRET + '"}', "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object, found a list"),
    (b"\xff\xfe{}", "is not UTF-8 text"),
    ('{"auths": ["reg.io"]}', "'auths' is a list, expected an object"),
    ('{"auths": "' + BAD_ENTRY_SECRET + '"}', "'auths' is a string, expected an object"),
])
def test_malformed_file_is_an_error_of_this_step(home: Path, make_settings, content, why) -> None:
    path = home / ".docker/config.json"
    path.parent.mkdir()
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = ask("reg.io/app", make_settings, {"HOME": str(home)})
    assert isinstance(result, Failed) and not result.fatal
    assert str(path) in result.reason and why in result.reason
    assert_no_secrets(result.reason, SECRETS)


def test_config_json_that_is_a_directory(home: Path, make_settings) -> None:
    (home / ".docker/config.json").mkdir(parents=True)
    result = ask("reg.io/app", make_settings, {"HOME": str(home)})
    assert isinstance(result, Failed)
    assert result.reason == f"{home}/.docker/config.json is a directory, not a file"


def test_unreadable_files(home: Path, tmp_path: Path, make_settings) -> None:
    # DOCKER_CONFIG names a file, not a directory
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = ask("reg.io/app", make_settings, {"DOCKER_CONFIG": str(not_a_dir)})
    assert isinstance(result, Failed) and "Not a directory" in result.reason
    # a symlink loop, a FIFO (which would block a naive read forever)
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "config.json").symlink_to(loop / "config.json")
    result = ask("reg.io/app", make_settings, {"DOCKER_CONFIG": str(loop)})
    assert isinstance(result, Failed) and "symbolic links" in result.reason
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "config.json")
    result = ask("reg.io/app", make_settings, {"DOCKER_CONFIG": str(fifo)})
    assert isinstance(result, Failed) and "is not a regular file" in result.reason


def _as_nobody(action):
    """Run ``action()`` in a forked child that dropped root's privileges (root reads a mode-000
    file anyway); returns what it returned, as text."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, str(action()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return text


def test_permission_denied(make_settings) -> None:
    # In a folder anyone may traverse, so that only the file's own mode 000 refuses the read.
    home = Path(tempfile.mkdtemp(prefix="xtm-perm-"))
    try:
        home.chmod(0o755)
        path = write_json(home / ".docker/config.json", {"auths": {}})
        path.parent.chmod(0o755)
        path.chmod(0)
        settings = make_settings()

        def attempt() -> str:
            result = lookup(request("reg.io/app", settings, {"HOME": str(home)}))
            return f"{type(result).__name__}: {getattr(result, 'reason', '')}"

        outcome = _as_nobody(attempt) if os.geteuid() == 0 else attempt()
        assert outcome.startswith("Failed: ") and "Permission denied" in outcome, outcome
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_empty_file_is_an_empty_configuration(home: Path, make_settings) -> None:
    write_json(home / ".docker/config.json", "  \n")
    result = ask("reg.io/app", make_settings, {"HOME": str(home)})
    assert isinstance(result, NotFound) and "(no keys)" in result.reason


def test_tie_break_exact_key_then_file_order(home: Path, make_settings,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="xtm_composer")
    write_json(home / ".docker/config.json", {"auths": {
        "https://reg.io/v1/": {"username": "first-alias", "password": "pw-aaaa1"},
        "REG.IO": {"username": "second-alias", "password": "pw-bbbb2"},
        "reg.io": {"username": "exact", "password": "pw-cccc3"},
    }})
    for _ in range(3):
        result = ask("reg.io/app", make_settings, {"HOME": str(home)})
        assert isinstance(result, Found) and result.credentials.username == "exact"
    assert "'https://reg.io/v1/', 'REG.IO' also match as specifically; 'reg.io' wins (exact key first)" \
        in result.detail
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "wins" in r.getMessage()]
    assert len(warnings) == 1  # once per process, not once per pull

    write_json(home / ".docker/config.json", {"auths": {
        "https://reg.io/v2/": {"username": "first", "password": "pw-aaaa1"},
        "REG.IO": {"username": "second", "password": "pw-bbbb2"},
    }})
    result = ask("reg.io/app", make_settings, {"HOME": str(home)})
    assert isinstance(result, Found) and result.credentials.username == "first"
    assert "'https://reg.io/v2/' wins (file order)" in result.detail


def test_hub_tie_break_prefers_the_keys_logins_write(home: Path, make_settings) -> None:
    write_json(home / ".docker/config.json", {"auths": {
        "registry-1.docker.io": {"username": "alias", "password": "pw-aaaa1"},
        "https://index.docker.io/v1/": {"username": "docker-login", "password": "pw-bbbb2"},
    }})
    result = ask("alpine", make_settings, {"HOME": str(home)})
    assert isinstance(result, Found) and result.credentials.username == "docker-login"
    write_json(home / ".docker/config.json", {"auths": {
        "index.docker.io": {"username": "alias", "password": "pw-aaaa1"},
        "docker.io": {"username": "podman-login", "password": "pw-bbbb2"},
        "https://index.docker.io/v1/": {"username": "docker-login", "password": "pw-cccc3"},
    }})
    result = ask("alpine", make_settings, {"HOME": str(home)})
    assert isinstance(result, Found) and result.credentials.username == "podman-login"
    assert "'docker.io' wins (exact key first, then file order)" in result.detail


def test_path_scoped_keys_are_not_collapsed_to_the_host(home: Path, make_settings) -> None:
    write_json(home / ".docker/config.json", {"auths": {
        "reg.io/team-a": {"username": "team-a", "password": "pw-aaaa1"},
        "reg.io/team-a/special": {"username": "special", "password": "pw-bbbb2"},
    }})
    env = {"HOME": str(home)}
    found = ask("reg.io/team-a/app:1", make_settings, env)
    assert isinstance(found, Found) and found.credentials.username == "team-a"
    assert found.credentials.key == "reg.io/team-a"
    assert ask("reg.io/team-a/special/x", make_settings, env).credentials.username == "special"
    for image in ("reg.io/team-b/app", "reg.io/team-ab/app", "reg.io/app"):
        result = ask(image, make_settings, env)
        assert isinstance(result, NotFound), image
        assert "scoped to other paths of this registry" in result.reason


def test_host_wide_and_path_scoped_most_specific_wins(home: Path, make_settings) -> None:
    write_json(home / ".docker/config.json", {"auths": {
        "reg.io": {"username": "host", "password": "pw-aaaa1"},
        "reg.io/team-a": {"username": "team-a", "password": "pw-bbbb2"},
    }})
    env = {"HOME": str(home)}
    assert ask("reg.io/team-a/app", make_settings, env).credentials.username == "team-a"
    assert ask("reg.io/team-b/app", make_settings, env).credentials.username == "host"


def test_an_edited_file_is_read_again(home: Path, make_settings) -> None:
    path = write_json(home / ".docker/config.json", {"auths": {"reg.io": {"username": "one", "password": "pw-1111"}}})
    assert ask("reg.io/app", make_settings, {"HOME": str(home)}).credentials.username == "one"
    write_json(path, {"auths": {"reg.io": {"username": "twotwo", "password": "pw-2222"}}})
    assert ask("reg.io/app", make_settings, {"HOME": str(home)}).credentials.username == "twotwo"


def test_registry_is_canonical(home: Path, make_settings) -> None:
    write_json(home / ".docker/config.json", {"auths": {"index.docker.io": {"auth": AUTH}}})
    result = ask("index.docker.io/library/alpine", make_settings, {"HOME": str(home)})
    assert isinstance(result, Found)
    assert result.credentials.registry == "docker.io"
    assert docker_auth_config(result.credentials)["serveraddress"] == "docker.io"


def test_oversize_config_json_is_refused_by_size(home: Path, make_settings) -> None:
    path = home / ".docker/config.json"
    path.parent.mkdir()
    with path.open("wb") as handle:
        handle.truncate(4 * 1024 * 1024 + 1)
    result = ask("reg.io/app", make_settings, {"HOME": str(home)})
    assert isinstance(result, Failed) and not result.fatal
    assert result.reason == (f"Docker config file {path} is larger than 4 MiB, the most xtm-composer "
                             "reads from such a file")


def test_a_key_written_with_a_password_never_shows_it(home: Path, make_settings,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """``https://robot:pw@reg.io`` as a key: skipped, and the password is in no detail or log (it is
    no registered secret, so only not formatting it protects it)."""
    in_key = "inkey"
    write_json(home / ".docker/config.json", {
        "auths": {f"https://robot:{in_key}@reg.io": {"auth": AUTH}, "ghcr.io": {"auth": AUTH}},
        "credHelpers": {f"robot:{in_key}@quay.io": "pass"}})
    caplog.set_level(logging.DEBUG, logger="xtm_composer")
    result = ask("reg.io/app", make_settings, {"HOME": str(home)})
    assert isinstance(result, NotFound)
    assert "keys: https://***@reg.io, ghcr.io" in result.reason
    assert "entry 'https://***@reg.io' skipped: invalid key" in result.reason
    helper = keychain_lookup(request("reg.io/app", make_settings(), {"HOME": str(home)}))
    assert "credHelpers['***@quay.io'] skipped" in helper.reason
    assert in_key not in result.reason + helper.reason + caplog.text


# --- DOCKER_AUTH_CONFIG -----------------------------------------------------------------------------

ENV_AUTH = b64(f"env-user:{ENV_PASSWORD}")


def env_config(auths: dict, **extra: str) -> dict[str, str]:
    return {"DOCKER_AUTH_CONFIG": json.dumps({"auths": auths}), **extra}


def test_docker_auth_config_alone(make_settings) -> None:
    """A CI job's whole config.json in the environment, no file at all."""
    result = ask("reg.io/team/app", make_settings, env_config({"https://reg.io/v1/": {"auth": ENV_AUTH}}))
    assert isinstance(result, Found)
    creds = result.credentials
    assert (creds.source, creds.username, creds.password) == ("docker-config", "env-user", ENV_PASSWORD)
    assert (creds.key, creds.file) == ("DOCKER_AUTH_CONFIG[https://reg.io/v1/]", None)
    assert result.detail == ("key 'https://reg.io/v1/' in DOCKER_AUTH_CONFIG (the environment, read "
                             "before config.json as the Docker CLI does) matches reg.io/team/app "
                             "(user 'env-user')")


def test_docker_auth_config_wins_over_the_file(home: Path, make_settings) -> None:
    """The Docker CLI's precedence: its memory store (the variable) answers first and falls back to
    the file (or the helper) only for registries it does not hold."""
    path = write_json(home / ".docker/config.json", {"auths": {
        "reg.io": {"auth": AUTH}, "reg.io/team": {"auth": AUTH}, "ghcr.io": {"auth": AUTH}}})
    environ = env_config({"reg.io": {"auth": ENV_AUTH}}, HOME=str(home))
    env_answer = ask("reg.io/team/app", make_settings, environ)
    assert isinstance(env_answer, Found) and env_answer.credentials.password == ENV_PASSWORD
    file_answer = ask("ghcr.io/app", make_settings, environ)
    assert isinstance(file_answer, Found) and file_answer.credentials.password == DOCKER_PASSWORD
    assert file_answer.credentials.file == str(path)
    assert file_answer.detail == (f"no entry for ghcr.io/app in DOCKER_AUTH_CONFIG (keys: reg.io); "
                                  f"key 'ghcr.io' in {path} matches ghcr.io/app (user 'docker-user')")
    neither = ask("quay.io/app", make_settings, environ)
    assert isinstance(neither, NotFound)
    assert neither.reason.startswith("no entry for quay.io/app in DOCKER_AUTH_CONFIG (keys: reg.io); "
                                     f"no entry for quay.io/app in {path}")
    # the variable is read from the request's environment: without it, the file answers
    assert ask("reg.io/team/app", make_settings, {"HOME": str(home)}).credentials.password == \
        DOCKER_PASSWORD


def test_docker_auth_config_entries_count_by_auth_only(make_settings,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """As in the Docker CLI, only ``auth`` is read: an identity token beside it is ignored, and an
    entry without it is skipped with its reason (Docker would ignore the whole variable)."""
    environ = env_config({"reg.io": {"auth": ENV_AUTH, "identitytoken": DOCKER_TOKEN},
                          "ghcr.io": {"username": "u", "password": BAD_ENTRY_SECRET},
                          "quay.io": {"auth": BAD_ENTRY_SECRET}})
    found = ask("reg.io/app", make_settings, environ)
    assert isinstance(found, Found)
    assert (found.credentials.password, found.credentials.identity_token) == (ENV_PASSWORD, None)
    skipped = ask("ghcr.io/app", make_settings, environ)
    assert isinstance(skipped, NotFound)
    assert ("entry 'ghcr.io' skipped: no auth (the only field the Docker CLI reads from "
            "DOCKER_AUTH_CONFIG: base64 of user:password); entry 'quay.io' skipped: bad base64"
            ) in skipped.reason
    assert "keys: reg.io, ghcr.io, quay.io" in skipped.reason
    assert_no_secrets(found.detail + skipped.reason + caplog.text, SECRETS)


@pytest.mark.parametrize("value, why", [
    ('{"auths": {"reg.io": {"auth": "' + BAD_ENTRY_SECRET + '"}', "is not valid JSON"),
    ("[1]", "must hold a JSON object, found a list"),
    ('{"auths": "' + BAD_ENTRY_SECRET + '"}', "'auths' is a string, expected an object"),
])
def test_a_broken_docker_auth_config_is_reported_and_the_file_still_read(
        home: Path, make_settings, value: str, why: str, caplog: pytest.LogCaptureFixture) -> None:
    environ = {"DOCKER_AUTH_CONFIG": value, "HOME": str(home)}
    failed = ask("reg.io/app", make_settings, environ)
    assert isinstance(failed, Failed) and not failed.fatal
    assert failed.reason.startswith("DOCKER_AUTH_CONFIG") and why in failed.reason
    write_json(home / ".docker/config.json", {"auths": {"reg.io": {"auth": AUTH}}})
    found = ask("reg.io/app", make_settings, environ)
    assert isinstance(found, Found) and found.credentials.password == DOCKER_PASSWORD
    assert why in found.detail
    assert_no_secrets(failed.reason + found.detail + caplog.text, SECRETS)


def test_empty_docker_auth_config_is_unset(home: Path, make_settings) -> None:
    result = ask("reg.io/app", make_settings, {"DOCKER_AUTH_CONFIG": "", "HOME": str(home)})
    assert isinstance(result, NotFound) and "DOCKER_AUTH_CONFIG" not in result.reason


@pytest.mark.integration
def test_a_real_pull_with_docker_auth_config(engine: str, bench, run_cli, manager: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A CI job's way: no file, no settings, the credential in DOCKER_AUTH_CONFIG only."""
    monkeypatch.setenv("MANAGER__ID", manager)
    monkeypatch.setenv("OPENCTI__DAEMON__SELECTOR", engine)
    image = bench.ref(bench.registry_private)
    code, _, err = run_cli(["pull", image])
    assert code == 6, err  # nothing configured: authentication required
    monkeypatch.setenv("DOCKER_AUTH_CONFIG", json.dumps({"auths": {bench.registry_private: {
        "auth": b64(f"{bench.username}:{bench.password}")}}}))
    code, out, err = run_cli(["--log-level", "debug", "pull", image, "--json"])
    assert code == 0, err
    data = json.loads(out)
    assert (data["source"], data["username"]) == ("docker-config", bench.username)
    assert_no_secrets(out + err, [bench.password, b64(f"{bench.username}:{bench.password}")])


@pytest.mark.parametrize("key, why", [
    ("a:b:c", "'a:b:c' is neither a host[:port] nor an IPv6 address (write an IPv6 registry in "
              "brackets: [::1]:5000)"),
    ("https://[zz]:5/", "not an IPv6 address in brackets: '[zz]:5'"),
    ("[::1]x", "not an IPv6 address in brackets: '[::1]x'"),
])
def test_a_key_that_is_no_ipv6_address_is_skipped_with_its_reason(home: Path, make_settings, key: str,
                                                                  why: str) -> None:
    """It used to be kept as a key that could never match, listed without a reason."""
    write_json(home / ".docker/config.json", {"auths": {key: {"auth": AUTH}}})
    result = ask("[::1]:6555/app", make_settings, {"HOME": str(home)})
    assert isinstance(result, NotFound)
    assert f"entry {key!r} skipped: invalid key: {why}" in result.reason


def test_an_oversize_credential_entry_is_skipped_as_too_large(home: Path, make_settings) -> None:
    """A 1 MB password would make the engine stop answering; it is refused with a clear reason."""
    huge = "p" * 1_000_000
    write_json(home / ".docker/config.json", {"auths": {
        "reg.io": {"auth": b64(f"u:{huge}")}, "ghcr.io": {"identitytoken": huge}}})
    for image, key in (("reg.io/app", "reg.io"), ("ghcr.io/app", "ghcr.io")):
        result = ask(image, make_settings, {"HOME": str(home)})
        assert isinstance(result, NotFound)
        assert (f"entry {key!r} skipped: credential too large: 100000{1 if key == 'reg.io' else 0} "
                "bytes, more than 64 KiB") in result.reason
        assert "ppp" not in result.reason


def test_docker_auth_config_is_bounded(make_settings) -> None:
    result = ask("reg.io/app", make_settings, {"DOCKER_AUTH_CONFIG": " " * (4 * 1024 * 1024 + 1)})
    assert isinstance(result, Failed) and not result.fatal
    assert result.reason.startswith("DOCKER_AUTH_CONFIG is longer than 4 MiB, the most xtm-composer "
                                    "reads from a credential document (ignored)")
