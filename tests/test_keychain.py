"""Provider ``keychain``: Docker credential helpers, real executables run by the real provider.

The error shapes (non-standard "not found", garbage, exit 1, a hang, a counter) come from small
shell-script helpers (tests/keychain_helpers.py): a real keychain cannot be made to produce them on
demand. The OS keychain itself is Debian's ``docker-credential-pass`` (tests marked integration).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from composer_core.auth.chain import forget_rejected, resolve_credentials
from composer_core.errors import CredentialsError
from composer_core.images.resolve import resolve_image
from composer_core.types import Failed, Found, NotFound
from composer_plugins.docker.auth import docker_auth_config
from composer_plugins.keychain import CACHE, lookup
from tests.conftest import assert_no_secrets
from tests.keychain_helpers import (
    GARBAGE_SECRET,
    HELPER_SECRET,
    HELPER_TOKEN,
    HELPERS,
    PASS_SECRET,
    PASS_TOKEN,
    SECRETS,
    SYSTEM_PATH,
    PassStore,
    calls,
    counting_helper,
    hanging_helper,
    helper_env,
    request,
    write_helper,
    write_json,
)


class Clock:
    """Injected into the cache: expiry without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(CACHE, "clock", fake)
    return fake


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "kc-home"
    path.mkdir()
    return path


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    return path


def config(home: Path, data: dict) -> Path:
    return write_json(home / ".docker/config.json", data)


def ask(image: str, settings, environ: dict[str, str]):
    return lookup(request(image, settings, environ))


def test_creds_store_found_then_cached(home: Path, bin_dir: Path, make_settings, clock: Clock) -> None:
    path = config(home, {"credsStore": "count", "auths": {"reg.io": {}}})
    counting_helper(bin_dir)
    env = helper_env(home, bin_dir)
    first = ask("reg.io/team/app:1", make_settings(), env)
    assert isinstance(first, Found)
    creds = first.credentials
    assert (creds.registry, creds.source, creds.username, creds.password, creds.identity_token) == (
        "reg.io", "keychain", "helper-user", HELPER_SECRET, None)
    assert (creds.key, creds.file) == ("credsStore -> docker-credential-count", str(path))
    assert first.detail.startswith(f"docker-credential-count (credsStore in {path}) for reg.io: "
                                   "user 'helper-user'; helper ran (")
    clock.now += 299
    second = ask("reg.io/other:2", make_settings(), env)
    assert isinstance(second, Found) and second.credentials.password == HELPER_SECRET
    assert second.detail.endswith("; from cache (expires in 1 s)")
    assert calls(bin_dir) == ["reg.io"]
    clock.now += 2  # past auth.cache_ttl (300 s)
    assert "helper ran" in ask("reg.io/app", make_settings(), env).detail
    assert calls(bin_dir) == ["reg.io", "reg.io"]
    assert_no_secrets(first.detail + second.detail + repr(first), SECRETS)


def test_hub_server_url_and_per_registry_cache(home: Path, bin_dir: Path, make_settings) -> None:
    config(home, {"credsStore": "count"})
    counting_helper(bin_dir)
    env = helper_env(home, bin_dir)
    for image in ("alpine", "docker.io/library/alpine", "index.docker.io/myorg/app", "localhost:5000/x",
                  "LOCALHOST:5000/y"):
        assert isinstance(ask(image, make_settings(), env), Found)
    # one execution per (helper, registry); Docker Hub is asked with the CLI's key
    assert calls(bin_dir) == ["https://index.docker.io/v1/", "localhost:5000"]


def test_cred_helpers_win_over_creds_store(home: Path, bin_dir: Path, make_settings) -> None:
    path = config(home, {"credsStore": "std-notfound",
                         "credHelpers": {"Reg.IO": "count", "index.docker.io": "count"}})
    write_helper(bin_dir, "std-notfound", HELPERS["std-notfound"])
    counting_helper(bin_dir)
    env = helper_env(home, bin_dir)
    found = ask("reg.io/app", make_settings(), env)
    assert isinstance(found, Found)
    assert found.credentials.key == "credHelpers[Reg.IO] -> docker-credential-count"
    assert found.credentials.file == str(path)
    assert ask("alpine", make_settings(), env).credentials.key == \
        "credHelpers[index.docker.io] -> docker-credential-count"
    other = ask("quay.io/app", make_settings(), env)
    assert isinstance(other, NotFound)
    assert other.reason.startswith(f"docker-credential-std-notfound (credsStore in {path}) for quay.io: "
                                   "credentials not found in native keychain; helper ran (")


def test_cred_helpers_tie_break_and_bad_entries(home: Path, bin_dir: Path, make_settings) -> None:
    config(home, {"credHelpers": {"https://reg.io/v1/": "std-notfound", "reg.io": "count",
                                  "reg.io/team": "count", "ghcr.io": 12, "gcr.io": "../evil"}})
    counting_helper(bin_dir)
    env = helper_env(home, bin_dir)
    found = ask("reg.io/app", make_settings(), env)
    assert isinstance(found, Found)
    assert "credHelpers 'https://reg.io/v1/' also matches; 'reg.io' wins (exact key first" in found.detail
    assert "credHelpers['reg.io/team'] skipped: credHelpers keys are hosts" in found.detail
    ghcr = ask("ghcr.io/app", make_settings(), env)
    assert isinstance(ghcr, NotFound)
    assert "credHelpers['ghcr.io'] skipped: it is a number, expected a helper name" in ghcr.reason
    assert "credHelpers['gcr.io'] skipped: it is not a helper name" in ghcr.reason


def test_empty_names(home: Path, bin_dir: Path, make_settings) -> None:
    counting_helper(bin_dir)
    env = helper_env(home, bin_dir)
    path = config(home, {"credsStore": ""})
    result = ask("reg.io/app", make_settings(), env)
    assert isinstance(result, NotFound)
    assert result.reason == f"{path}: no credHelpers entry for reg.io and credsStore is empty"
    config(home, {"credsStore": "count", "credHelpers": {"reg.io": ""}})
    result = ask("reg.io/app", make_settings(), env)
    assert isinstance(result, NotFound) and "credHelpers[reg.io] is empty: no helper for reg.io" in result.reason
    config(home, {"credsStore": ["count"]})
    result = ask("reg.io/app", make_settings(), env)
    assert isinstance(result, Failed) and "credsStore is a list, expected a helper name" in result.reason
    config(home, {"credHelpers": ["count"], "credsStore": "count"})
    result = ask("reg.io/app", make_settings(), env)
    assert isinstance(result, Found) and "credHelpers skipped: it is a list" in result.detail
    assert calls(bin_dir) == ["reg.io"]


def test_no_config_and_broken_config(home: Path, make_settings) -> None:
    result = ask("reg.io/app", make_settings(), helper_env(home))
    assert isinstance(result, NotFound) and "no config.json at" in result.reason
    config(home, "{oops")
    result = ask("reg.io/app", make_settings(), helper_env(home))
    assert isinstance(result, Failed) and "is not valid JSON" in result.reason
    (home / "dc/config.json").mkdir(parents=True)
    result = ask("reg.io/app", make_settings(), helper_env(home, DOCKER_CONFIG=str(home / "dc")))
    assert isinstance(result, Failed) and "is a directory" in result.reason
    config(home, {"auths": {}})
    result = ask("reg.io/app", make_settings(), helper_env(home))
    assert isinstance(result, NotFound) and "no credHelpers entry for reg.io and no credsStore" in result.reason


@pytest.mark.parametrize("helper, outcome, text", [
    ("std-notfound", NotFound, "credentials not found in native keychain"),
    ("empty", NotFound, "empty Username and Secret (not found)"),
    ("odd-notfound", Failed, "exited 1 with a non-standard answer ("),
    ("garbage", Failed, "exited 0 with a non-standard answer ("),
    ("fails", Failed, "exited 1 with a non-standard answer ("),
])
def test_helper_answers(home: Path, bin_dir: Path, make_settings, caplog: pytest.LogCaptureFixture,
                        helper: str, outcome: type, text: str) -> None:
    caplog.set_level(logging.DEBUG, logger="xtm_composer")
    config(home, {"credsStore": helper})
    write_helper(bin_dir, helper, HELPERS[helper])
    result = ask("reg.io/app", make_settings(), helper_env(home, bin_dir))
    assert isinstance(result, outcome)
    shown = result.reason
    assert text in shown
    if outcome is Failed:
        assert not result.fatal
        assert "not shown" in shown
    assert_no_secrets(shown + caplog.text, SECRETS)
    strict = ask("reg.io/app", make_settings({"auth.strict_helpers": True}), helper_env(home, bin_dir))
    assert isinstance(strict, outcome)
    if outcome is Failed:
        assert strict.fatal and "from cache" in strict.reason  # errors are kept for the miss TTL


def test_identity_token(home: Path, bin_dir: Path, make_settings) -> None:
    config(home, {"credHelpers": {"docker.io": "token"}})
    write_helper(bin_dir, "token", HELPERS["token"])
    result = ask("alpine", make_settings(), helper_env(home, bin_dir))
    assert isinstance(result, Found)
    creds = result.credentials
    assert (creds.username, creds.password, creds.identity_token) == (None, None, HELPER_TOKEN)
    assert docker_auth_config(creds) == {"serveraddress": "docker.io", "identitytoken": HELPER_TOKEN}
    assert "identity token" in result.detail
    assert_no_secrets(result.detail + repr(creds) + str(creds.public()), SECRETS)


def test_missing_helper(home: Path, bin_dir: Path, make_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    path = config(home, {"credsStore": "desktop"})
    result = ask("alpine", make_settings(), helper_env(home, bin_dir))
    assert isinstance(result, Failed) and not result.fatal
    assert result.reason == (f"docker-credential-desktop (credsStore in {path}) is not on PATH; install it "
                             f"or remove credsStore from {path}")
    strict = ask("alpine", make_settings({"auth.strict_helpers": True}), helper_env(home, bin_dir))
    assert isinstance(strict, Failed) and strict.fatal
    # PATH is the request's, never the process's
    counting_helper(bin_dir, "desktop")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert isinstance(ask("alpine", make_settings(), helper_env(home)), Failed)
    assert isinstance(ask("alpine", make_settings(), helper_env(home, bin_dir)), Found)


def test_not_executable_and_bad_interpreter(home: Path, bin_dir: Path, make_settings,
                                            tmp_path: Path) -> None:
    config(home, {"credsStore": "broken"})
    helper = write_helper(bin_dir, "broken", "")
    helper.write_text("#!/nonexistent/interpreter\n")
    result = ask("reg.io/app", make_settings(), helper_env(home, bin_dir))
    assert isinstance(result, Failed) and "cannot be run: No such file or directory" in result.reason
    assert "helper ran" not in result.reason  # it never started
    CACHE.clear()
    helper.chmod(0o644)
    result = ask("reg.io/app", make_settings(), helper_env(home, bin_dir))
    # on PATH but not executable: said so, with where, rather than "missing"
    assert isinstance(result, Failed) and not result.fatal
    assert (f"docker-credential-broken (credsStore in {home}/.docker/config.json) is on PATH at "
            f"{helper} but is not executable; `chmod +x` it") in result.reason
    assert "is not on PATH" not in result.reason
    # an executable one later on PATH is the one a shell would run: it answers
    later = tmp_path / "later-bin"
    counting_helper(later, "broken")
    CACHE.clear()
    found = ask("reg.io/app", make_settings(), helper_env(home, bin_dir, PATH=f"{bin_dir}:{later}:{SYSTEM_PATH}"))
    assert isinstance(found, Found)


def test_hanging_helper_is_killed_at_the_timeout(home: Path, bin_dir: Path, make_settings) -> None:
    config(home, {"credsStore": "hang"})
    hanging_helper(bin_dir)
    settings = make_settings({"auth.helper_timeout": 0.5})
    started = time.monotonic()
    result = ask("reg.io/app", settings, helper_env(home, bin_dir))
    elapsed = time.monotonic() - started
    assert isinstance(result, Failed) and not result.fatal
    assert "did not answer within 0.5 s and was killed" in result.reason
    assert "timed out" in result.reason and "helper ran" not in result.reason
    assert elapsed < 3, elapsed
    # the helper's child (which held the pipes) was killed with it
    sleeper = int((bin_dir / "hang.pid").read_text())
    deadline = time.monotonic() + 3
    while _alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(sleeper)
    # kept for the miss TTL: the next pull does not stall again
    started = time.monotonic()
    again = ask("reg.io/app", settings, helper_env(home, bin_dir))
    assert "from cache" in again.reason and time.monotonic() - started < 0.4
    strict = ask("reg.io/app", make_settings({"auth.helper_timeout": 0.5, "auth.strict_helpers": True}),
                 helper_env(home, bin_dir))
    assert isinstance(strict, Failed) and strict.fatal


@pytest.mark.parametrize("body, pipe", [
    ("cat >/dev/null\nexec yes\n", "stdout"),  # the probe's helper: 6 GB read before the bound
    ("cat >/dev/null\nexec yes >&2\n", "stderr"),
])
def test_flooding_helper_is_stopped_at_the_output_bound(home: Path, bin_dir: Path, make_settings,
                                                       body: str, pipe: str) -> None:
    config(home, {"credsStore": "flood"})
    write_helper(bin_dir, "flood", body)
    result = ask("reg.io/app", make_settings({"auth.helper_timeout": 60}), helper_env(home, bin_dir))
    assert isinstance(result, Failed) and not result.fatal
    assert result.reason.startswith("docker-credential-flood (credsStore in ")
    assert (f"credential too large: printed more than 1 MiB on {pipe}, the most read from a "
            "credential helper; it was killed") in result.reason
    assert "helper ran" not in result.reason and "y\ny" not in result.reason


def test_dribbling_helper_is_killed_at_the_timeout(home: Path, bin_dir: Path, make_settings) -> None:
    """Output that never ends and never reaches the bound: the timeout holds for the whole exchange."""
    config(home, {"credsStore": "dribble"})
    write_helper(bin_dir, "dribble", f'echo $$ > "{bin_dir}/dribble.pid"\n'
                                     "while :; do echo x; echo y >&2; sleep 0.01; done\n")
    result = ask("reg.io/app", make_settings({"auth.helper_timeout": 0.5}), helper_env(home, bin_dir))
    assert isinstance(result, Failed)
    assert "timed out: did not answer within 0.5 s and was killed" in result.reason
    assert "helper ran" not in result.reason
    helper = int((bin_dir / "dribble.pid").read_text())
    deadline = time.monotonic() + 3
    while _alive(helper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(helper)


def test_oversize_secret_is_credential_too_large(home: Path, bin_dir: Path, make_settings) -> None:
    config(home, {"credsStore": "big"})
    # a valid answer whose secret is 1 MB: under the output bound, over any auth header's
    write_helper(bin_dir, "big", "cat >/dev/null\nprintf '{\"Username\":\"u\",\"Secret\":\"'\n"
                                 "head -c 1000000 /dev/zero | tr '\\0' a\nprintf '\"}'\n")
    result = ask("reg.io/app", make_settings(), helper_env(home, bin_dir))
    assert isinstance(result, Failed)
    assert ("credential too large: 1000001 bytes, more than 64 KiB (registries and engines refuse "
            "auth headers that large)") in result.reason
    assert "aaaa" not in result.reason


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_miss_ttl_and_disabled_cache(home: Path, bin_dir: Path, make_settings, clock: Clock) -> None:
    config(home, {"credsStore": "miss"})
    write_helper(bin_dir, "miss", f'url=$(cat)\necho "$url" >> "{bin_dir}/miss.calls"\n'
                                  'echo "credentials not found in native keychain"; exit 1\n')
    env = helper_env(home, bin_dir)
    for _ in range(3):
        assert isinstance(ask("reg.io/app", make_settings(), env), NotFound)
    assert calls(bin_dir, "miss") == ["reg.io"]
    clock.now += 31  # past auth.cache_miss_ttl (30 s)
    assert "helper ran" in ask("reg.io/app", make_settings(), env).reason
    assert len(calls(bin_dir, "miss")) == 2
    no_cache = make_settings({"auth.cache_ttl": 0, "auth.cache_miss_ttl": 0})
    CACHE.clear()
    for _ in range(3):
        ask("reg.io/app", no_cache, env)
    assert len(calls(bin_dir, "miss")) == 5


def test_short_ttl_from_settings(home: Path, bin_dir: Path, make_settings, clock: Clock) -> None:
    config(home, {"credsStore": "count"})
    counting_helper(bin_dir)
    settings = make_settings({"auth.cache_ttl": 5})
    ask("reg.io/app", settings, helper_env(home, bin_dir))
    clock.now += 4
    ask("reg.io/app", settings, helper_env(home, bin_dir))
    clock.now += 2
    ask("reg.io/app", settings, helper_env(home, bin_dir))
    assert len(calls(bin_dir)) == 2


def test_concurrent_lookups_run_the_helper_once(home: Path, bin_dir: Path, make_settings) -> None:
    config(home, {"credsStore": "count"})
    counting_helper(bin_dir, delay=0.3)
    settings = make_settings()
    env = helper_env(home, bin_dir)
    results: list[object] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(ask("reg.io/app", settings, env))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 8 and all(isinstance(r, Found) for r in results)
    assert calls(bin_dir) == ["reg.io"]


def test_forget_on_rejection(home: Path, bin_dir: Path, make_settings, plugins, tmp_path: Path) -> None:
    config(home, {"credsStore": "count"})
    counting_helper(bin_dir)
    settings = make_settings({"auth.chain": ["keychain", "anonymous"]})
    env = helper_env(home, bin_dir)
    image = resolve_image("reg.io/app:1", settings, plugins)
    first = resolve_credentials(image, settings, plugins, environ=env)
    assert first.source == "keychain"
    resolve_credentials(image, settings, plugins, environ=env)
    assert len(calls(bin_dir)) == 1
    forget_rejected(first, plugins)  # the registry answered 401
    again = resolve_credentials(image, settings, plugins, environ=env)
    assert "helper ran" in again.steps[0].detail
    assert len(calls(bin_dir)) == 2
    # another registry's answer is kept
    resolve_credentials(resolve_image("quay.io/x", settings, plugins), settings, plugins, environ=env)
    forget_rejected(again, plugins)
    resolve_credentials(resolve_image("quay.io/x", settings, plugins), settings, plugins, environ=env)
    assert calls(bin_dir) == ["reg.io", "reg.io", "quay.io"]


def test_strict_helpers_stop_the_chain(home: Path, bin_dir: Path, make_settings, plugins) -> None:
    config(home, {"credsStore": "garbage"})
    write_helper(bin_dir, "garbage", HELPERS["garbage"])
    env = helper_env(home, bin_dir)
    lenient = make_settings()
    image = resolve_image("reg.io/app", lenient, plugins)
    resolution = resolve_credentials(image, lenient, plugins, environ=env)
    assert resolution.source == "anonymous"
    assert [s.outcome for s in resolution.steps][:3] == ["not-found", "not-found", "error"]
    with pytest.raises(CredentialsError) as raised:
        resolve_credentials(image, make_settings({"auth.strict_helpers": True}), plugins, environ=env)
    assert "credential provider 'keychain' failed for reg.io" in str(raised.value)
    assert_no_secrets(str(raised.value), SECRETS + [GARBAGE_SECRET])


# --- the real OS keychain: docker-credential-pass ---------------------------------------------------


@pytest.mark.integration
def test_pass_found_not_found_and_token(pass_store: PassStore, home: Path, make_settings) -> None:
    pass_store.store("https://index.docker.io/v1/", "hub-user", PASS_SECRET)
    pass_store.store("localhost:5000", "<token>", PASS_TOKEN)
    path = config(home, {"credsStore": "pass", "auths": {"https://index.docker.io/v1/": {}}})
    env = {**pass_store.environ, "HOME": str(home)}
    hub = ask("alpine", make_settings(), env)
    assert isinstance(hub, Found), hub
    assert (hub.credentials.username, hub.credentials.password) == ("hub-user", PASS_SECRET)
    assert hub.credentials.key == "credsStore -> docker-credential-pass"
    assert hub.credentials.file == str(path)
    local = ask("localhost:5000/team/app", make_settings(), env)
    assert isinstance(local, Found) and local.credentials.identity_token == PASS_TOKEN
    assert local.credentials.username is None
    # this version answers an unknown server with exit 0 and an empty Username/Secret
    unknown = ask("quay.io/app", make_settings(), env)
    assert isinstance(unknown, NotFound)
    assert "empty Username and Secret (not found)" in unknown.reason
    assert "from cache" in ask("alpine", make_settings(), env).detail
    assert_no_secrets(hub.detail + local.detail + unknown.reason + repr(hub) + repr(local), SECRETS)


def _through_pass(pass_store: PassStore, registry: str, username: str, settings, plugins,
                  env: dict[str, str]):
    """Store a credential for ``registry`` in the real pass, resolve an image of it through the
    chain: the keychain answers with exactly that credential."""
    pass_store.store(registry, username, PASS_SECRET)
    image = resolve_image(f"{registry}/team/app:1", settings, plugins)
    resolution = resolve_credentials(image, settings, plugins, environ=env)
    assert resolution.source == "keychain"
    assert docker_auth_config(resolution.credentials) == {
        "serveraddress": registry, "username": username, "password": PASS_SECRET}
    return image, resolution


@pytest.mark.integration
def test_pass_through_cred_helpers_and_the_chain(pass_store: PassStore, home: Path, make_settings,
                                                 plugins) -> None:
    config(home, {"credHelpers": {"registry.example.com:5443": "pass"}})
    env = {**pass_store.environ, "HOME": str(home)}
    settings = make_settings()
    image, resolution = _through_pass(pass_store, "registry.example.com:5443", "chain-user", settings,
                                      plugins, env)
    assert resolution.to_dict()["key"] == \
        "credHelpers[registry.example.com:5443] -> docker-credential-pass"
    pass_store.erase("registry.example.com:5443")
    forget_rejected(resolution, plugins)
    after = resolve_credentials(image, settings, plugins, environ=env)
    assert after.source == "anonymous"
    assert "empty Username and Secret" in after.steps[2].detail


# --- the Docker CLI's default store -----------------------------------------------------------------


def _answering(name: str, bin_dir: Path, secret: str = HELPER_SECRET) -> None:
    """A helper in shell builtins only, so that it runs with a PATH of ``bin_dir`` alone."""
    write_helper(bin_dir, name, f'read url\necho "$url" >> "{bin_dir}/{name}.calls"\n'
                                f'printf \'{{"Username":"store-user","Secret":"{secret}"}}\'\n')


def test_default_store_without_pass_is_secretservice(home: Path, bin_dir: Path, make_settings) -> None:
    _answering("secretservice", bin_dir)
    env = helper_env(home, PATH=str(bin_dir))  # no pass program on this PATH
    found = ask("reg.io/app", make_settings(), env)
    assert isinstance(found, Found)
    assert found.credentials.key == "default store -> docker-credential-secretservice"
    assert (found.credentials.file, found.credentials.password) == (None, HELPER_SECRET)
    assert found.detail.startswith(
        f"no config.json at {home}/.docker/config.json (~/.docker), so no credsStore or credHelpers; "
        "asked the Docker CLI's default store instead: docker-credential-secretservice (pass is not "
        "installed) for reg.io: user 'store-user'; helper ran (")
    assert calls(bin_dir, "secretservice") == ["reg.io"]


def test_pass_without_its_helper_means_no_default_store(home: Path, bin_dir: Path, make_settings) -> None:
    """docker/cli picks pass when the pass program is there, then needs docker-credential-pass:
    it does not fall back to secretservice."""
    _answering("secretservice", bin_dir)
    write_helper(bin_dir, "unused", "")
    (bin_dir / "docker-credential-unused").rename(bin_dir / "pass")
    result = ask("reg.io/app", make_settings(), helper_env(home, PATH=str(bin_dir)))
    assert isinstance(result, NotFound)
    assert result.reason.endswith("; no default store either (neither docker-credential-pass with pass "
                                  "nor docker-credential-secretservice is on PATH)")
    assert calls(bin_dir, "secretservice") == []


@pytest.mark.parametrize("data, asked", [
    ({}, True), ({"auths": {}}, True), ({"credHelpers": {}}, True), ({"psFormat": "x"}, True),
    ({"credsStore": ""}, False),  # said on purpose: no store
    ({"auths": {"ghcr.io": {}}}, False),  # the Docker CLI's ContainsAuth
    ({"credHelpers": {"ghcr.io": "x"}}, False),
])
def test_when_the_default_store_is_asked(home: Path, bin_dir: Path, make_settings, data: dict,
                                         asked: bool) -> None:
    config(home, data)
    _answering("secretservice", bin_dir)
    result = ask("reg.io/app", make_settings(), helper_env(home, PATH=str(bin_dir)))
    assert isinstance(result, Found if asked else NotFound)
    assert calls(bin_dir, "secretservice") == (["reg.io"] if asked else [])


def test_default_store_errors_are_never_fatal(home: Path, bin_dir: Path, make_settings, plugins) -> None:
    write_helper(bin_dir, "secretservice", f'echo "Cannot autolaunch D-Bus {GARBAGE_SECRET}" >&2\nexit 1\n')
    strict = make_settings({"auth.strict_helpers": True})
    result = ask("reg.io/app", strict, helper_env(home, PATH=str(bin_dir)))
    assert isinstance(result, Failed) and not result.fatal
    assert "docker-credential-secretservice (pass is not installed) for reg.io: exited 1 with a " \
           "non-standard answer" in result.reason
    resolution = resolve_credentials(resolve_image("reg.io/app", strict, plugins), strict, plugins,
                                     environ=helper_env(home, PATH=str(bin_dir)))
    assert resolution.source == "anonymous"
    assert_no_secrets(result.reason, SECRETS)


@pytest.mark.integration
def test_default_store_is_the_real_pass(pass_store: PassStore, home: Path, make_settings, plugins) -> None:
    """A host where `docker login` stored into pass without any config.json entry: found there."""
    env = {**pass_store.environ, "HOME": str(home)}
    settings = make_settings()
    _, resolution = _through_pass(pass_store, "default.example.com:5000", "pass-user", settings,
                                  plugins, env)
    data = resolution.to_dict()
    assert (data["key"], data["file"]) == ("default store -> docker-credential-pass", None)
    assert "the Docker CLI's default store instead: docker-credential-pass (pass is installed)" in \
        resolution.steps[2].detail
    # nothing stored for another registry: not found, and the chain goes on
    other = resolve_credentials(resolve_image("quay.io/x", settings, plugins), settings, plugins,
                                environ=env)
    assert other.source == "anonymous" and other.steps[2].outcome == "not-found"
    assert_no_secrets("\n".join(resolution.trace_lines() + other.trace_lines()), SECRETS)


def test_ipv6_cred_helpers_key(home: Path, bin_dir: Path, make_settings) -> None:
    config(home, {"credHelpers": {"https://::1:6555": "count"}})
    counting_helper(bin_dir)
    found = ask("[0:0::1]:6555/app", make_settings(), helper_env(home, bin_dir))
    assert isinstance(found, Found) and found.credentials.registry == "[::1]:6555"
    assert calls(bin_dir) == ["[::1]:6555"]  # the helper is asked for the canonical host
