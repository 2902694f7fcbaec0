"""The manager's key and the platform's encryption: both versions, every key size from 2048 bits,
PKCS#8 and PKCS#1 keys, each failure reported; cross-checked with Node.js's crypto."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from composer_plugins.opencti.crypto import DecryptionError, InvalidKey, load_private_key
from tests.conftest import assert_no_secrets
from tests.fakeplatform import encrypt_value

NODE_SCRIPT = Path(__file__).with_name("opencti_encrypt.mjs")
VALUES = ["s3cr3t-password", "pässwörd ✓ 密码", "x" * 5000, ""]


def _pem(key: rsa.RSAPrivateKey, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt,
                             serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def keys() -> dict[int, rsa.RSAPrivateKey]:
    return {bits: rsa.generate_private_key(public_exponent=65537, key_size=bits)
            for bits in (2048, 3072, 4096)}


def _node_encrypt(public_pem: str, values: list[str], version: int) -> list[str]:
    node = shutil.which("node")
    assert node is not None, "node is needed to cross-check the encryption (it is on the bench)"
    out = subprocess.run([node, str(NODE_SCRIPT)], input=json.dumps(
        {"public_key": public_pem, "values": values, "version": version}),
        capture_output=True, text=True, timeout=60, check=True)
    return list(json.loads(out.stdout))


@pytest.mark.parametrize("bits", [2048, 3072, 4096])
@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.PKCS8,
                                 serialization.PrivateFormat.TraditionalOpenSSL])
@pytest.mark.parametrize("version", [1, 2])
def test_both_versions_every_size_both_key_formats(keys, bits, fmt, version) -> None:
    key = load_private_key(_pem(keys[bits], fmt), "test key")
    assert key.bits == bits and key.block_bytes == bits // 8
    assert key.public_pkcs1.startswith("-----BEGIN RSA PUBLIC KEY-----")
    for value in VALUES:
        assert key.decrypt(encrypt_value(key.public_pkcs1, value, version)) == value


@pytest.mark.parametrize("bits", [2048, 4096])
@pytest.mark.parametrize("version", [1, 2])
def test_node_encrypts_we_decrypt(keys, bits, version) -> None:
    """An independent implementation of the platform's encryptValue (Node's crypto, as the
    platform uses) against our decryption: the layout is the platform's, not only ours."""
    key = load_private_key(_pem(keys[bits], serialization.PrivateFormat.PKCS8), "test key")
    ciphertexts = _node_encrypt(key.public_pkcs1, VALUES, version)
    assert [base64.b64decode(c)[0] for c in ciphertexts] == [version] * len(VALUES)
    assert [len(base64.b64decode(c)) for c in ciphertexts[:1]] == [1 + bits // 8 + len(VALUES[0].encode()) + 16]
    assert [key.decrypt(c) for c in ciphertexts] == VALUES


def test_the_python_and_node_layouts_agree(keys) -> None:
    """Same key, same value: both implementations give the same length and version byte, and
    each one's output decrypts (the fake platform encrypts as Node does)."""
    key = load_private_key(_pem(keys[3072], serialization.PrivateFormat.PKCS8), "test key")
    for version in (1, 2):
        ours = base64.b64decode(encrypt_value(key.public_pkcs1, "same value", version))
        (theirs_text,) = _node_encrypt(key.public_pkcs1, ["same value"], version)
        theirs = base64.b64decode(theirs_text)
        assert (len(ours), ours[0]) == (len(theirs), theirs[0])
        assert ours != theirs  # fresh key material every time


def test_each_failure_is_reported_without_the_value(keys) -> None:
    key = load_private_key(_pem(keys[2048], serialization.PrivateFormat.PKCS8), "test key")
    other = load_private_key(_pem(keys[3072], serialization.PrivateFormat.PKCS8), "other")
    secret = "the-secret-value"
    good = base64.b64decode(encrypt_value(key.public_pkcs1, secret, 2))
    flipped = bytearray(good)
    flipped[-1] ^= 0x01
    unknown = bytes([3]) + good[1:]
    for_other = encrypt_value(other.public_pkcs1, secret, 2)
    small = encrypt_value(key.public_pkcs1, secret, 1)  # 2048-bit block, read with a 3072-bit key
    cases = {
        "tag": (key, base64.b64encode(bytes(flipped)).decode(), "AES-GCM tag does not match"),
        "truncated": (key, base64.b64encode(good[:200]).decode(), "too short"),
        "version": (key, base64.b64encode(unknown).decode(), "unknown encryption version 3"),
        "other key": (key, for_other, "does not decrypt with this manager's key"),
        "other key, same size": (key, encrypt_value(load_private_key(_pem(
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            serialization.PrivateFormat.PKCS8), "x").public_pkcs1, secret, 2),
            "does not decrypt with this manager's key"),
        "smaller key": (other, small, "too short"),
        "not base64": (key, "not base64 !!", "not valid base64"),
    }
    messages = []
    for name, (k, value, words) in cases.items():
        with pytest.raises(DecryptionError) as err:
            k.decrypt(value)
        assert words in err.value.message, name
        messages.append(str(err.value))
    assert_no_secrets("\n".join(messages), [secret])


def test_pkcs1_v15_wrong_key_never_yields_a_value(keys) -> None:
    """PKCS#1 v1.5 may decrypt to random bytes with the wrong key (implicit rejection): the value
    is still refused, never returned garbled."""
    key = load_private_key(_pem(keys[2048], serialization.PrivateFormat.PKCS8), "test key")
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger_pub = stranger.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()
    for _ in range(5):
        with pytest.raises(DecryptionError):
            key.decrypt(encrypt_value(stranger_pub, "value", 1))


def test_unusable_keys_are_refused_with_a_reason() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(InvalidKey, match="1024 bits, fewer than 2048"):
        load_private_key(_pem(small, serialization.PrivateFormat.PKCS8), "small.pem")
    curve = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    with pytest.raises(InvalidKey, match="not an RSA key"):
        load_private_key(curve, "ec.pem")
    with pytest.raises(InvalidKey, match="not a PEM private key"):
        load_private_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "bad.pem")
    locked = small.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.BestAvailableEncryption(b"pass")).decode()
    with pytest.raises(InvalidKey, match="passphrase"):
        load_private_key(locked, "locked.pem")


def test_keygen_writes_a_4096_bit_pkcs8_key_mode_600_and_never_overwrites(run_cli, tmp_path) -> None:
    path = tmp_path / "manager.pem"
    code, out, err = run_cli(["keygen", str(path)])
    assert code == 0, err
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    pem = path.read_text()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert load_private_key(pem, str(path)).bits == 4096
    body = [line for line in pem.splitlines() if not line.startswith("-----")]
    assert_no_secrets(out + err, body)
    code, out, err = run_cli(["keygen", str(path)])
    assert code == 2 and "exists: keygen never replaces a key" in err
    assert path.read_text() == pem
