"""Tests for composer_core.images.reference: grammar tables, normalisation and properties."""

from __future__ import annotations

import dataclasses
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composer_core.images.reference import (
    ImageRef,
    InvalidReference,
    InvalidRegistryURL,
    full_image_name,
    normalize_registry_url,
)

H64 = "a" * 64
D256 = "sha256:" + "0123456789abcdef" * 4
D384 = "sha384:" + "0123456789abcdef" * 6
D512 = "sha512:" + "0123456789abcdef" * 8

# text -> (domain, path, tag, digest, explicit_registry)
VALID = {
    "alpine": ("docker.io", "library/alpine", None, None, None),
    "alpine:3.18": ("docker.io", "library/alpine", "3.18", None, None),
    "myorg/app": ("docker.io", "myorg/app", None, None, None),
    "myorg/team/app:1": ("docker.io", "myorg/team/app", "1", None, None),
    "library/alpine": ("docker.io", "library/alpine", None, None, None),
    "docker.io/alpine": ("docker.io", "library/alpine", None, None, "docker.io"),
    "docker.io/library/alpine:3": ("docker.io", "library/alpine", "3", None, "docker.io"),
    "index.docker.io/alpine": ("docker.io", "library/alpine", None, None, "index.docker.io"),
    "index.docker.io/myorg/app": ("docker.io", "myorg/app", None, None, "index.docker.io"),
    # no "/": always a repository, so this is repository "localhost" with tag "5000"
    "localhost:5000": ("docker.io", "library/localhost", "5000", None, None),
    "localhost": ("docker.io", "library/localhost", None, None, None),
    "localhost/foo": ("localhost", "foo", None, None, "localhost"),
    "localhost:5000/foo": ("localhost:5000", "foo", None, None, "localhost:5000"),
    "localhost:5000/a/b:v1": ("localhost:5000", "a/b", "v1", None, "localhost:5000"),
    "registry.com/app:v1": ("registry.com", "app", "v1", None, "registry.com"),
    "my-reg.example.com:443/x": (
        "my-reg.example.com:443",
        "x",
        None,
        None,
        "my-reg.example.com:443",
    ),
    "foo:5000/bar": ("foo:5000", "bar", None, None, "foo:5000"),
    "1.2.3.4/x": ("1.2.3.4", "x", None, None, "1.2.3.4"),
    "[::1]:5000/foo": ("[::1]:5000", "foo", None, None, "[::1]:5000"),
    "[::1]/foo": ("[::1]", "foo", None, None, "[::1]"),
    "[2001:db8::1]:5000/a/b:c": ("[2001:db8::1]:5000", "a/b", "c", None, "[2001:db8::1]:5000"),
    # an uppercase first component is a registry domain (repository names are lowercase)
    "Foo/bar": ("Foo", "bar", None, None, "Foo"),
    "REG.example.com/bar": ("REG.example.com", "bar", None, None, "REG.example.com"),
    "a__b": ("docker.io", "library/a__b", None, None, None),
    "a---b": ("docker.io", "library/a---b", None, None, None),
    "a.b": ("docker.io", "library/a.b", None, None, None),
    "a_b-c.d": ("docker.io", "library/a_b-c.d", None, None, None),
    "foo:_a": ("docker.io", "library/foo", "_a", None, None),
    "foo:A-b.C_d": ("docker.io", "library/foo", "A-b.C_d", None, None),
    "foo:" + "t" * 128: ("docker.io", "library/foo", "t" * 128, None, None),
    "foo@" + D256: ("docker.io", "library/foo", None, D256, None),
    "foo@" + D384: ("docker.io", "library/foo", None, D384, None),
    "foo@" + D512: ("docker.io", "library/foo", None, D512, None),
    "foo:t@" + D256: ("docker.io", "library/foo", "t", D256, None),
    "localhost:5000/x@" + D256: ("localhost:5000", "x", None, D256, "localhost:5000"),
    H64 + ":v1": ("docker.io", "library/" + H64, "v1", None, None),  # only the bare hex is refused
    "x.com/" + "b" * 255: ("x.com", "b" * 255, None, None, "x.com"),
    "b" * 247: ("docker.io", "library/" + "b" * 247, None, None, None),  # path = 255
}

# text -> expected message start
INVALID = {
    "": "image reference must not be empty",
    "FOO": "repository name must be lowercase",
    "foo/Bar": "repository name must be lowercase",
    "localhost/Foo": "repository name must be lowercase",
    "x.com/" + "b" * 256: "repository name must not be longer than 255 characters",
    "b" * 248: "repository name must not be longer than 255 characters",
    "a/" + "b" * 254: "repository name must not be longer than 255 characters",
    H64: "repository name must not be a 64-character hexadecimal string",
    "foo@sha256:" + "a" * 63: "invalid digest length",
    "foo@sha256:" + "a" * 65: "invalid digest length",
    "foo@sha384:" + "a" * 64: "invalid digest length",
    "foo@sha512:" + "a" * 96: "invalid digest length",
    "foo@sha256:" + "A" * 64: "invalid digest format",
    "foo@md5:" + "a" * 32: "unsupported digest algorithm",
    "foo@sha256:abc": "invalid reference format",  # < 32 hex: not even digest-shaped
    "[1]:5000/foo": "invalid IPv6 address",
    "[::g]/foo": "invalid reference format",
    "::1/foo": "invalid reference format",
    "alpine\n": "invalid reference format",
    "alpine:3\n": "invalid reference format",
    " alpine": "invalid reference format",
    "alpine:": "invalid reference format",
    "alpine@": "invalid reference format",
    "foo:" + "t" * 129: "invalid reference format",
    "foo:.a": "invalid reference format",
    "foo:-a": "invalid reference format",
    "a___b": "invalid reference format",
    "a-_b": "invalid reference format",
    "-a": "invalid reference format",
    "a-": "invalid reference format",
    "/foo": "invalid reference format",
    "foo/": "invalid reference format",
    "foo//bar": "invalid reference format",
    "my_reg.com/foo": "invalid reference format",
    "-a.com/x": "invalid reference format",
    "foo..com/x": "invalid reference format",
    "a:b:c/foo": "invalid reference format",
    "https://registry.com/foo": "invalid reference format",
    "café": "invalid reference format",
    "a" * 1025: "image reference must not be longer than 1024 characters",
}


@pytest.mark.parametrize("text", sorted(VALID))
def test_parse_valid(text: str) -> None:
    ref = ImageRef.parse(text)
    got = (ref.domain, ref.path, ref.tag, ref.digest, ref.explicit_registry)
    assert got == VALID[text]
    assert ref.names_registry is (ref.explicit_registry is not None)
    assert ref.registry == ref.domain
    assert ref.repository == f"{ref.domain}/{ref.path}"


@pytest.mark.parametrize("text", sorted(INVALID))
def test_parse_invalid(text: str) -> None:
    with pytest.raises(InvalidReference) as info:
        ImageRef.parse(text)
    message = str(info.value)
    assert message.startswith(INVALID[text])
    assert repr(text[:120]) in message


@pytest.mark.parametrize(("text", "shown"), [
    ("user:s3cr3tpw@registry.example.com/team/app:1", "'***@registry.example.com/team/app:1'"),
    ("robot:s3cr3tpw@localhost:5000/app", "'***@localhost:5000/app'"),
    ("a:s3cr3tpw@b@reg.io/app@sha256:" + "a" * 64, "'***@reg.io/app@sha256:" + "a" * 51),
])
def test_user_info_is_refused_and_the_password_never_echoed(text: str, shown: str) -> None:
    with pytest.raises(InvalidReference) as info:
        ImageRef.parse(text)
    message = str(info.value)
    assert message.startswith("image reference must not carry credentials (user:password@registry)")
    assert shown in message
    assert "s3cr3tpw" not in message


@pytest.mark.parametrize("text", ["u:s3cr3tpw@host", "x:s3cr3tpw@" + "a" * 1100])
def test_no_invalid_reference_echoes_what_precedes_an_at(text: str) -> None:
    with pytest.raises(InvalidReference) as info:
        ImageRef.parse(text)
    assert "s3cr3tpw" not in str(info.value) and "***@" in str(info.value)


@pytest.mark.parametrize("value", [None, 5, b"alpine", ["alpine"], object()])
def test_parse_rejects_non_str(value: object) -> None:
    with pytest.raises(InvalidReference, match="must be a str"):
        ImageRef.parse(value)  # type: ignore[arg-type]


def test_str_subclass_is_accepted() -> None:
    class S(str):
        pass

    assert ImageRef.parse(S("alpine")) == ImageRef.parse("alpine")


def test_invalid_reference_is_value_error() -> None:
    assert issubclass(InvalidReference, ValueError)
    assert issubclass(InvalidRegistryURL, ValueError)


def test_hostile_long_input_is_refused_fast() -> None:
    start = time.perf_counter()
    for text in ("x.com/" + "a_" * 50_000 + "_", "a-" * 50_000 + "/b", "a/" * 50_000):
        with pytest.raises(InvalidReference):
            ImageRef.parse(text)
    assert time.perf_counter() - start < 1


@pytest.mark.parametrize(
    ("text", "normalized", "familiar"),
    [
        ("alpine", "docker.io/library/alpine:latest", "alpine"),
        ("docker.io/library/alpine", "docker.io/library/alpine:latest", "alpine"),
        ("index.docker.io/alpine:3", "docker.io/library/alpine:3", "alpine:3"),
        ("myorg/app:1", "docker.io/myorg/app:1", "myorg/app:1"),
        ("library/a/b", "docker.io/library/a/b:latest", "library/a/b"),
        ("localhost:5000", "docker.io/library/localhost:5000", "localhost:5000"),
        ("localhost:5000/x@" + D256, "localhost:5000/x@" + D256, "localhost:5000/x@" + D256),
        ("foo:t@" + D256, "docker.io/library/foo:t@" + D256, "foo:t@" + D256),
        ("[::1]:5000/foo", "[::1]:5000/foo:latest", "[::1]:5000/foo"),
        ("Foo/bar", "Foo/bar:latest", "Foo/bar"),
        # Docker would print these as foo.bar/x, localhost/x, <hex>: all read back differently
        ("docker.io/foo.bar/x", "docker.io/foo.bar/x:latest", "docker.io/foo.bar/x"),
        ("docker.io/localhost/x", "docker.io/localhost/x:latest", "docker.io/localhost/x"),
        ("docker.io/library/" + H64, f"docker.io/library/{H64}:latest", "library/" + H64),
    ],
)
def test_normalized_and_familiar(text: str, normalized: str, familiar: str) -> None:
    ref = ImageRef.parse(text)
    assert ref.normalized() == normalized == str(ref)
    assert ref.familiar() == familiar
    assert ImageRef.parse(familiar) == ref


def test_value_semantics() -> None:
    ref = ImageRef.parse("alpine")
    assert ImageRef.parse("alpine") is ref  # cached, safe because immutable
    assert ref == ImageRef.parse("docker.io/library/alpine")  # explicit_registry not compared
    assert hash(ref) == hash(ImageRef.parse("index.docker.io/alpine"))
    assert ref != ImageRef.parse("alpine:latest")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tag = "x"  # type: ignore[misc]
    assert not hasattr(ref, "__dict__")


def test_replace() -> None:
    ref = ImageRef.parse("alpine:3")
    moved = ref.replace(domain="localhost:5000", path="mirror/library/alpine")
    assert moved.normalized() == "localhost:5000/mirror/library/alpine:3"
    assert moved.explicit_registry == "localhost:5000"
    assert ref.replace(tag=None).normalized() == "docker.io/library/alpine:latest"
    assert ref.replace(tag="4").explicit_registry is None
    assert ref.replace(digest=D256).familiar() == "alpine:3@" + D256
    assert ref.replace(domain="docker.io", path="alpine") == ref
    assert ref.replace(domain="index.docker.io").domain == "docker.io"
    for bad in (
        {"domain": "myhost"},  # would read as a Docker Hub namespace
        {"domain": "a.com/b"},
        {"path": "Foo"},
        {"path": "foo:bar"},
        {"tag": ""},
        {"tag": "-x"},
        {"digest": "sha256:abc"},
    ):
        with pytest.raises(InvalidReference):
            ref.replace(**bad)


@pytest.mark.parametrize(
    ("image", "registry", "expected"),
    [
        ("connector-misp:5.0.0", "localhost:5000", "localhost:5000/connector-misp:5.0.0"),
        ("myorg/connector:1.0", "localhost:5000", "localhost:5000/myorg/connector:1.0"),
        ("alpine@" + D256, "reg.example.com", "reg.example.com/alpine@" + D256),
        ("library/alpine", "reg.example.com", "reg.example.com/library/alpine"),
        ("localhost:5000", "reg.example.com", "reg.example.com/localhost:5000"),
        ("alpine", "[::1]:5000", "[::1]:5000/alpine"),
        ("docker.io/alpine:3.18", "localhost:5000", "docker.io/alpine:3.18"),
        ("index.docker.io/alpine", "localhost:5000", "index.docker.io/alpine"),
        ("registry.com/app:v1", "localhost:5000", "registry.com/app:v1"),
        ("localhost:5000/foo", "localhost:5000", "localhost:5000/foo"),  # the double-prefix bug
        ("localhost/foo", "localhost:5000", "localhost/foo"),
        ("Foo/bar", "localhost:5000", "Foo/bar"),
        ("alpine:3", None, "alpine:3"),
        ("alpine:3", "", "alpine:3"),
    ],
)
def test_full_image_name(image: str, registry: str | None, expected: str) -> None:
    assert full_image_name(image, registry) == expected


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("Alpine", "localhost:5000"),
        ("", "localhost:5000"),
        ("", None),
        ("alpine", "myhost"),  # "myhost/alpine" is a Docker Hub image, not a registry prefix
        ("alpine", "localhost:5000/"),
        ("alpine", "https://localhost:5000"),
        ("alpine", "reg_x.com"),  # the result does not parse
    ],
)
def test_full_image_name_invalid(image: str, registry: str | None) -> None:
    with pytest.raises(InvalidReference):
        full_image_name(image, registry)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://registry.company.com:5000/", "registry.company.com:5000"),
        ("http://registry.company.com", "registry.company.com"),
        ("HTTPS://Registry.Company.COM:443", "registry.company.com:443"),
        ("localhost:5000", "localhost:5000"),
        ("localhost", "localhost"),
        ("localhost/", "localhost"),
        ("myhost:5000", "myhost:5000"),
        ("1.2.3.4:5000", "1.2.3.4:5000"),
        ("[::1]:5000", "[::1]:5000"),
        ("https://[2001:DB8::1]/", "[2001:db8::1]"),
        ("  ghcr.io  ", "ghcr.io"),
        ("reg.io:05000", "reg.io:5000"),
    ],
)
def test_normalize_registry_url(url: str, expected: str) -> None:
    assert normalize_registry_url(url) == expected
    assert normalize_registry_url(expected) == expected


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "it is empty"),
        ("   ", "it is empty"),
        ("https://", "it is empty"),
        ("ftp://reg.io", "unsupported scheme"),
        ("reg.io/v2", "it has a path"),
        ("https://reg.io/org/", "it has a path"),
        ("reg.io//", "it has a path"),
        ("reg.io?x=1", "it has a query"),
        ("reg.io/?x=1", "it has a query"),
        ("reg.io#frag", "it has a fragment"),
        ("user:pw@reg.io", "it has user info"),
        ("https://user@reg.io:5000/", "it has user info"),
        ("reg_io.com", "invalid host"),
        ("-reg.io", "invalid host"),
        ("reg..io", "invalid host"),
        ("reg.io.", "invalid host"),
        ("x" * 64 + ".io", "a label is longer than 63"),
        ("reg.io:", "invalid port"),
        ("reg.io:0", "invalid port"),
        ("reg.io:65536", "invalid port"),
        ("reg.io:50a", "invalid port"),
        ("reg.io:٥٠٠٠", "invalid port"),
        ("::1", "must be in brackets"),
        ("[::1", "invalid IPv6 address"),
        ("[::1]x", "invalid IPv6 address"),
        ("[1]:5000", "invalid IPv6 address"),
        ("[fe80::1%eth0]", "invalid IPv6 address"),
        ("myhost", "reads as a Docker Hub namespace"),
    ],
)
def test_normalize_registry_url_invalid(url: str, why: str) -> None:
    with pytest.raises(InvalidRegistryURL) as info:
        normalize_registry_url(url)
    assert why in str(info.value)
    assert "expected host[:port]" in str(info.value)


def test_normalize_registry_url_non_str() -> None:
    with pytest.raises(InvalidRegistryURL):
        normalize_registry_url(None)  # type: ignore[arg-type]


# --- property-based -------------------------------------------------------------------------

_component = st.from_regex(r"[a-z0-9]{1,8}(?:(?:[._]|__|-{1,3})[a-z0-9]{1,8}){0,2}", fullmatch=True)
_label = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", fullmatch=True)
_port = st.integers(1, 65535).map(str)
_ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
_dns = st.lists(_label, min_size=1, max_size=3).map(".".join)
_host = st.one_of(st.sampled_from(["localhost", "docker.io", "index.docker.io"]), _dns)
_registries = st.builds(
    lambda host, port: f"{host}:{port}" if port else host, _host | _ipv6, st.none() | _port
).filter(lambda r: "." in r or ":" in r or r == "localhost")  # else a Hub namespace
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_digest = st.sampled_from([("sha256", 64), ("sha384", 96), ("sha512", 128)]).flatmap(
    lambda alg: st.text("0123456789abcdef", min_size=alg[1], max_size=alg[1]).map(
        lambda hex_: f"{alg[0]}:{hex_}"
    )
)


@st.composite
def reference_parts(
    draw: st.DrawFn,
) -> tuple[str, str | None, str, str | None, str | None]:
    """(text, registry, path, tag, digest), the text valid by construction."""
    registry = draw(st.none() | _registries)
    components = draw(st.lists(_component, min_size=1, max_size=3))
    if registry is None and len(components) > 1:  # else the first component reads as a host
        components[0] = components[0].replace(".", "-")
    path = "/".join(components)
    tag = draw(st.none() | _tag)
    digest = draw(st.none() | _digest)
    text = (f"{registry}/{path}" if registry else path) + (f":{tag}" if tag else "")
    return text + (f"@{digest}" if digest else ""), registry, path, tag, digest


reference_texts = reference_parts().map(lambda parts: parts[0])
_refs = reference_texts.map(ImageRef.parse)
_noise = st.sampled_from(list("A.:/@-_[]%\n\t ") + ["__", "..", "é", "\x00"])
_fast = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fast
@given(reference_parts())
def test_constructed_references_parse(
    parts: tuple[str, str | None, str, str | None, str | None],
) -> None:
    text, registry, path, tag, digest = parts
    ref = ImageRef.parse(text)
    assert (ref.tag, ref.digest) == (tag, digest)
    assert ref.explicit_registry == registry
    assert ref.path in (path, "library/" + path)
    assert ref.domain == ("docker.io" if registry in (None, "index.docker.io") else registry)


@_fast
@given(_refs)
def test_normalized_round_trips(ref: ImageRef) -> None:
    again = ImageRef.parse(ref.normalized())
    expected = ref if ref.tag or ref.digest else ref.replace(tag="latest")
    assert again == expected
    assert again.normalized() == ref.normalized()
    assert again.names_registry


@_fast
@given(_refs)
def test_familiar_round_trips(ref: ImageRef) -> None:
    familiar = ref.familiar()
    assert ImageRef.parse(familiar) == ref
    assert not familiar.startswith(("docker.io/library/", "index.docker.io/"))


@_fast
@given(reference_texts, _registries.map(normalize_registry_url))
def test_full_image_name_names_the_registry(image: str, registry: str) -> None:
    ref = ImageRef.parse(image)
    out = full_image_name(image, registry)
    parsed = ImageRef.parse(out)
    if ref.names_registry:
        assert out == image
    else:
        assert out == f"{registry}/{image}"
        assert parsed.explicit_registry == registry
        assert (parsed.tag, parsed.digest) == (ref.tag, ref.digest)
    assert full_image_name(image, None) == image


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.text(alphabet="abAB09.:/@-_[]\n %", max_size=40),
        reference_texts.map(lambda t: t + "\n"),
        st.builds(  # near misses: one character inserted into a valid reference
            lambda t, i, c: t[:i] + c + t[i:], reference_texts, st.integers(0, 80), _noise
        ),
    )
)
def test_parse_raises_only_invalid_reference(text: str) -> None:
    try:
        ref = ImageRef.parse(text)
    except InvalidReference:
        return
    assert ImageRef.parse(ref.familiar()) == ref
    assert ImageRef.parse(ref.normalized()).normalized() == ref.normalized()


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet="ab09.:/@-_[]?# HTPS", max_size=30)))
def test_normalize_registry_url_raises_only_its_error(url: str) -> None:
    try:
        out = normalize_registry_url(url)
    except InvalidRegistryURL:
        return
    assert normalize_registry_url(out) == out
    assert ImageRef.parse(f"{out}/x").explicit_registry == out
    assert full_image_name("x", out) == f"{out}/x"
