"""The image-resolution hook: registry-prefix and mirrors, their order, and `image resolve`."""

from __future__ import annotations

import json

import pytest

from composer_core import hookimpl
from composer_core.errors import ComposerError, InvalidImage, SettingsError
from composer_core.images.resolve import resolve_image
from composer_core.types import ImageResolver, Rewrite

REG = {"opencti.daemon.docker.registry.url": "localhost:5000"}


@pytest.mark.parametrize("image, expected, prefixed", [
    ("connector-misp:5.0.0", "localhost:5000/connector-misp:5.0.0", True),
    ("myorg/connector:1.0", "localhost:5000/myorg/connector:1.0", True),
    ("docker.io/alpine:3.18", "docker.io/library/alpine:3.18", False),
    ("registry.com/app:v1", "registry.com/app:v1", False),
    ("localhost:5000/foo", "localhost:5000/foo:latest", False),   # no double prefix (the seed's bug)
    ("localhost/foo", "localhost/foo:latest", False),
])
def test_registry_prefix(make_settings, plugins, image: str, expected: str, prefixed: bool) -> None:
    resolved = resolve_image(image, make_settings(REG), plugins)
    assert resolved.ref.normalized() == expected
    assert [s.resolver for s in resolved.steps] == (["registry-prefix"] if prefixed else [])


def test_prefix_step_records_what_changed(make_settings, plugins) -> None:
    resolved = resolve_image("connector-misp:5.0.0", make_settings(
        {"opencti.daemon.docker.registry.url": "https://Registry.Company.com:5000/"}), plugins)
    (step,) = resolved.steps
    assert step.resolver == "registry-prefix"
    assert step.before == "connector-misp:5.0.0"
    assert step.after == "registry.company.com:5000/connector-misp:5.0.0"
    assert "opencti.daemon.docker.registry.url" in step.detail


def test_no_registry_configured_leaves_image_as_written(make_settings, plugins) -> None:
    resolved = resolve_image("alpine:3.18", make_settings(), plugins)
    assert resolved.steps == ()
    assert resolved.ref.normalized() == "docker.io/library/alpine:3.18"


MIRRORS = {"opencti.daemon.docker.mirrors": {"docker.io": "mirror.company.com/dockerhub",
                                             "quay.io/team": "mirror.company.com/quay-team"}}


@pytest.mark.parametrize("image, expected", [
    ("docker.io/library/alpine:3.18", "mirror.company.com/dockerhub/library/alpine:3.18"),
    ("alpine", "mirror.company.com/dockerhub/library/alpine:latest"),
    ("index.docker.io/myorg/app@sha256:" + "a" * 64, "mirror.company.com/dockerhub/myorg/app@sha256:" + "a" * 64),
    ("quay.io/team/app:1", "mirror.company.com/quay-team/app:1"),
    ("quay.io/teamster/app:1", "quay.io/teamster/app:1"),       # whole segments only
    ("quay.io/other/app:1", "quay.io/other/app:1"),
    ("ghcr.io/x/y:2", "ghcr.io/x/y:2"),
])
def test_mirrors_match_whole_segments(make_settings, plugins, image: str, expected: str) -> None:
    assert resolve_image(image, make_settings(MIRRORS), plugins).ref.normalized() == expected


def test_resolvers_compose_in_configured_order(make_settings, plugins) -> None:
    settings = make_settings({**REG, "opencti.daemon.docker.mirrors": {"localhost:5000": "mirror.local/cache"}})
    resolved = resolve_image("connector-misp:5.0.0", settings, plugins)
    assert [s.resolver for s in resolved.steps] == ["registry-prefix", "mirrors"]
    assert resolved.ref.normalized() == "mirror.local/cache/connector-misp:5.0.0"
    reordered = settings.with_overrides({"images.resolvers": ["mirrors", "registry-prefix"]}, "test")
    # mirrors first sees docker.io/library/connector-misp (no rule), then the prefix applies
    assert resolve_image("connector-misp:5.0.0", reordered, plugins).ref.normalized() == \
        "localhost:5000/connector-misp:5.0.0"


def test_third_party_resolver_runs_where_the_settings_put_it(make_settings, plugins) -> None:
    class NoLatest:
        @hookimpl
        def composer_image_resolvers(self):
            def pin(image, settings):
                return Rewrite(image.removesuffix(":latest") + ":stable", "latest is not allowed") \
                    if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1] else None
            return ImageResolver(name="no-latest", resolve=pin)

    plugins.register(NoLatest(), "no-latest")
    settings = make_settings({**REG, "images.resolvers": ["no-latest", "registry-prefix"]})
    resolved = resolve_image("connector-misp", settings, plugins)
    assert resolved.ref.normalized() == "localhost:5000/connector-misp:stable"
    assert [s.resolver for s in resolved.steps] == ["no-latest", "registry-prefix"]
    plugins.unregister("no-latest")


def test_resolver_producing_garbage_is_named(make_settings, plugins) -> None:
    class Broken:
        @hookimpl
        def composer_image_resolvers(self):
            return ImageResolver(name="broken", resolve=lambda image, settings: Rewrite("NOT//valid", "oops"))

    plugins.register(Broken(), "broken")
    with pytest.raises(ComposerError, match="image resolver 'broken' rewrote 'alpine' into an invalid reference"):
        resolve_image("alpine", make_settings({"images.resolvers": ["broken"]}), plugins)


def test_unknown_resolver_name_fails_loudly(make_settings, plugins) -> None:
    with pytest.raises(SettingsError, match="unknown image resolvers 'mirorrs'"):
        resolve_image("alpine", make_settings({"images.resolvers": ["mirorrs"]}), plugins)


def test_invalid_image(make_settings, plugins) -> None:
    with pytest.raises(InvalidImage) as err:
        resolve_image("UPPER/Case", make_settings(), plugins)
    assert err.value.exit_code == 2


def test_image_resolve_cli(run_cli, monkeypatch) -> None:
    monkeypatch.setenv("OPENCTI__DAEMON__DOCKER__REGISTRY__URL", "localhost:5000")
    code, out, err = run_cli(["image", "resolve", "connector-misp:5.0.0", "--json"])
    assert code == 0, err
    data = json.loads(out)
    assert data == {
        "input": "connector-misp:5.0.0", "resolved": "localhost:5000/connector-misp:5.0.0",
        "registry": "localhost:5000", "repository": "connector-misp", "tag": "5.0.0", "digest": None,
        "rules": [{"resolver": "registry-prefix", "before": "connector-misp:5.0.0",
                   "after": "localhost:5000/connector-misp:5.0.0",
                   "detail": "image names no registry: prefixed with localhost:5000 "
                             "(opencti.daemon.docker.registry.url)"}],
    }
    code, out, _ = run_cli(["image", "resolve", "localhost:5000/foo"])
    assert code == 0 and out.splitlines()[0] == "localhost:5000/foo:latest"


@pytest.mark.parametrize("bad", ["Bad//x", "", "a" * 300, "x@sha256:abc"])
def test_image_resolve_cli_rejects_invalid_input(run_cli, bad: str) -> None:
    code, out, err = run_cli(["image", "resolve", bad])
    assert code == 2
    assert err.startswith("error: invalid image")
    assert "Traceback" not in err


def test_a_mirror_rule_may_name_a_whole_repository(make_settings, plugins) -> None:
    settings = make_settings({"opencti.daemon.docker.mirrors": {"quay.io/team/app": "mirror.io/app"}})
    assert resolve_image("quay.io/team/app:1", settings, plugins).ref.normalized() == "mirror.io/app:1"
    assert resolve_image("quay.io/team/app/sub:2", settings, plugins).ref.normalized() == "mirror.io/app/sub:2"
