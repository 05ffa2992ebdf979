"""Secrets of the API: operator passwords (scrypt), bearer tokens and API keys (SHA-256 of a random
secret). Pure functions; the clear secret is returned once to the caller and never stored.

Passwords: ``hashlib.scrypt`` (RFC 7914) with a per-user random salt, stored as
``scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>`` so the cost can be raised later without breaking old
hashes. Tokens and API keys are 32 random bytes; only their SHA-256 is stored, so a copy of the
database lets nobody in (a 256-bit secret needs no slow hash: it cannot be guessed).

>>> stored = hash_password("correct horse", salt=bytes(16), n=2**4)
>>> stored.split("$")[:4]
['scrypt', '16', '8', '1']
>>> verify_password("correct horse", stored), verify_password("wrong", stored)
(True, False)
>>> secret_hash("cck_abc") == secret_hash("cck_abc") != secret_hash("cck_abd")
True
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SCRYPT_N = 2**14  # CPU/memory cost: ~16 MiB and ~30 ms per login on this machine
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_DKLEN = 32
SALT_BYTES = 16
SECRET_BYTES = 32  # tokens and API keys
PASSWORD_CHARS_MIN = 10
PASSWORD_CHARS_MAX = 256
SCRYPT_MAXMEM = 64 * 1024 * 1024
TOKEN_PREFIX = "cct_"  # makes a leaked token recognisable (secret scanners) and tells it from a key
API_KEY_PREFIX = "cck_"
SHOWN_PREFIX_CHARS = 12  # "cck_" + 8 characters: enough to tell keys apart in a listing


def hash_password(password: str, *, salt: bytes | None = None, n: int = SCRYPT_N) -> str:
    """The stored form of ``password``: scrypt with a fresh 16-byte salt (unless one is given)."""
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=SCRYPT_DKLEN, maxmem=SCRYPT_MAXMEM
    )
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; constant-time compare; False for a malformed hash."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, expected = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
    except ValueError:
        return False
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=SCRYPT_MAXMEM
    )
    return hmac.compare_digest(digest, expected)


def new_secret(prefix: str) -> str:
    """A fresh token or API key: ``prefix`` + 43 base64url characters (32 random bytes).

    >>> key = new_secret(API_KEY_PREFIX); key.startswith("cck_"), len(key)
    (True, 47)
    """
    return prefix + secrets.token_urlsafe(SECRET_BYTES)


def secret_hash(secret: str) -> str:
    """SHA-256 of a token or API key, as 64 hex digits: what the database stores and looks up."""
    return hashlib.sha256(secret.encode()).hexdigest()


def body_hash(data: bytes) -> str:
    """SHA-256 of a canonical request, as 64 hex digits (idempotency: same key, same request?)."""
    return hashlib.sha256(data).hexdigest()
