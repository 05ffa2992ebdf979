"""Hash functions: SHA-1 (EMV ODA) and SM3 (GB/T 32905), both from OpenSSL through hashlib."""

from __future__ import annotations

import hashlib


def sha1(data: bytes) -> bytes:
    """SHA-1 digest (20 bytes), the EMV/PBOC international hash."""
    return hashlib.sha1(data).digest()


def sm3(data: bytes) -> bytes:
    """SM3 digest (32 bytes), GB/T 32905.

    >>> sm3(b"abc").hex().upper()
    '66C7F0F462EEEDD9D1F2D46BDC10E4E24167C4875CF2F7A2297DA02B8F4BA8E0'
    """
    return hashlib.new("sm3", data).digest()
