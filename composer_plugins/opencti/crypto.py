"""The manager's RSA key, and the decryption of the values OpenCTI encrypts for it.

The platform (``catalog-domain.ts``, ``encryptValue``) encrypts each value with a fresh AES-256-GCM
key and IV, and that key material with the manager's public RSA key. The value is standard base64
(with padding) of::

    byte 0      version: 0x01 = RSA PKCS#1 v1.5, 0x02 = RSA-OAEP (SHA-256, MGF1-SHA-256, no label)
    next k      RSA ciphertext of aes_key (32 bytes) || iv (12 bytes); k = the key size in bytes
    the rest    AES-256-GCM ciphertext of the UTF-8 value, then its 16-byte tag; no AAD

Unlike upstream, the RSA block length comes from the key (any size from 2048 bits), and private
keys are accepted in PKCS#8 and PKCS#1 PEM. A value that cannot be decrypted raises
:class:`DecryptionError`, whose message names the reason, never the value. ``cryptography`` is
imported here only, and only this module's users import it.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field
from typing import Any

from composer_core import redact
from composer_core.errors import ComposerError, UsageError

MIN_KEY_BITS = 2048
KEYGEN_BITS = 4096
VERSION_PKCS1 = 1
VERSION_OAEP = 2
AES_KEY_BYTES = 32
IV_BYTES = 12
TAG_BYTES = 16


class DecryptionError(ComposerError):
    """An encrypted value could not be decrypted; the message says why, never the value."""

    kind = "decryption"


class InvalidKey(UsageError):
    """The manager's private key cannot be used."""

    kind = "invalid-key"


def register_pem(pem: str) -> None:
    """The key as a whole and each of its lines: no part of it may reach a log."""
    redact.register(pem, pem.strip(), *(line.strip() for line in pem.splitlines()
                                        if line.strip() and not line.startswith("-----")))


@dataclass(frozen=True)
class ManagerKey:
    """The loaded private key; ``public_pkcs1`` is what registration sends."""

    origin: str
    bits: int
    public_pkcs1: str
    _key: Any = field(repr=False)

    @property
    def block_bytes(self) -> int:
        return (self.bits + 7) // 8

    def decrypt(self, value: str) -> str:
        return decrypt_value(self, value)


class DecryptionCache:
    """A key's decrypted values by their ciphertext, so that a listing asked every few seconds
    decrypts a value once (an RSA operation), not at every listing. It keeps only the values of
    the last listing (:meth:`listing_done`): what the platform no longer lists is dropped. Its
    values are secrets already registered with the redactor; a failure is never cached."""

    def __init__(self, key: ManagerKey) -> None:
        self.key = key
        self._plain: dict[str, str] = {}
        self._used: dict[str, str] = {}
        #: values actually decrypted (a test reads it)
        self.decryptions = 0

    def decrypt(self, value: str) -> str:
        plain = self._plain.get(value)
        if plain is None:
            plain = self.key.decrypt(value)
            self.decryptions += 1
        self._used[value] = plain
        return plain

    def listing_done(self) -> None:
        self._plain, self._used = self._used, {}


def load_private_key(pem: str, origin: str) -> ManagerKey:
    """Load a PKCS#8 or PKCS#1 RSA private key (PEM, not encrypted) of at least 2048 bits."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    register_pem(pem)
    try:
        key = serialization.load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError) as exc:
        reason = "it is protected by a passphrase" if "password" in str(exc).lower() else \
            "it is not a PEM private key (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)"
        raise InvalidKey(f"the manager's private key ({origin}) cannot be loaded: {reason}",
                         hint="generate one with `xtm-composer keygen PATH` and set "
                              "manager.credentials_key_filepath to PATH") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidKey(f"the manager's private key ({origin}) is not an RSA key",
                         hint="OpenCTI encrypts with RSA: `xtm-composer keygen PATH` makes one")
    if key.key_size < MIN_KEY_BITS:
        raise InvalidKey(f"the manager's private key ({origin}) has {key.key_size} bits, fewer "
                         f"than {MIN_KEY_BITS}", hint="`xtm-composer keygen PATH` makes a 4096-bit key")
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.PKCS1).decode("ascii")
    return ManagerKey(origin=origin, bits=key.key_size, public_pkcs1=public, _key=key)


def decrypt_value(key: ManagerKey, value: str) -> str:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise DecryptionError("not valid base64") from None
    k = key.block_bytes
    if len(raw) < 1 + k + TAG_BYTES:
        raise DecryptionError(f"too short for a value encrypted for a {key.bits}-bit key "
                              f"({len(raw)} bytes, at least {1 + k + TAG_BYTES} expected): "
                              "truncated, or encrypted for a smaller key")
    version = raw[0]
    if version == VERSION_PKCS1:
        scheme: Any = padding.PKCS1v15()
    elif version == VERSION_OAEP:
        scheme = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()),
                              algorithm=hashes.SHA256(), label=None)
    else:
        raise DecryptionError(f"unknown encryption version {version} (known: 1 = RSA PKCS#1 "
                              "v1.5, 2 = RSA-OAEP SHA-256)")
    try:
        material = key._key.decrypt(raw[1:1 + k], scheme)
    except ValueError:
        material = b""
    # PKCS#1 v1.5 may answer random bytes instead of failing (implicit rejection): the length
    # and the GCM tag below catch it
    if len(material) != AES_KEY_BYTES + IV_BYTES:
        raise DecryptionError(f"the RSA block does not decrypt with this manager's key "
                              f"({key.origin}): the value was encrypted for another key (was "
                              "manager.id or the key changed since it was entered?)")
    aes_key, iv = material[:AES_KEY_BYTES], material[AES_KEY_BYTES:]
    try:
        plain = AESGCM(aes_key).decrypt(iv, raw[1 + k:], None)
    except InvalidTag:
        raise DecryptionError("the AES-GCM tag does not match: the value was altered or "
                              "encrypted for another key") from None
    try:
        text = plain.decode("utf-8")
    except UnicodeDecodeError:
        raise DecryptionError("the decrypted value is not UTF-8 text") from None
    redact.register(text)
    return text


def generate_key_file(path: str) -> ManagerKey:
    """A new RSA-4096 key, written as PKCS#8 PEM with mode 600; an existing file is never replaced."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=KEYGEN_BITS)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    register_pem(pem.decode("ascii"))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists: keygen never replaces a key",
                         hint="a platform's encrypted values are tied to the key it knows; choose "
                              "another path, or remove the file yourself if you really mean it") from None
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}",
                         hint="check that the directory exists and is writable") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    os.chmod(path, 0o600)
    return load_private_key(pem.decode("ascii"), path)
