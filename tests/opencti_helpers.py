"""Fixtures for the tests of the ``opencti`` source: the fake platform (a stand-in, see
tests/fakeplatform) on 127.0.0.1, a manager key on disk, settings pointing at both."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakeplatform import FakePlatform

_KEY_CACHE: dict[int, str] = {}


def key_pem(bits: int = 2048) -> str:
    """A PKCS#8 PEM RSA key, made once per size per test session (4096-bit keys are slow)."""
    if bits not in _KEY_CACHE:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        _KEY_CACHE[bits] = key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()).decode()
    return _KEY_CACHE[bits]


def key_lines(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


@pytest.fixture
def platform_token() -> str:
    return "octi-" + secrets.token_hex(16)


@pytest.fixture
def platform(platform_token: str) -> Iterator[FakePlatform]:
    fake = FakePlatform(platform_token).start()
    yield fake
    fake.down()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "manager.pem"
    path.write_text(key_pem())
    path.chmod(0o600)
    return path


@pytest.fixture
def opencti_settings(make_settings: Callable[..., Any], platform: FakePlatform, platform_token: str,
                     key_file: Path) -> Callable[..., Any]:
    def make(overrides: dict[str, Any] | None = None) -> Any:
        base: dict[str, Any] = {"manager.source": "opencti", "opencti.url": platform.url,
                                "opencti.token": platform_token,
                                "manager.credentials_key_filepath": str(key_file),
                                "opencti.connect_timeout": 2, "opencti.request_timeout": 5,
                                "opencti.listing_timeout": 5}
        base.update(overrides or {})
        return make_settings(base)

    return make
