"""Block-cipher primitives on bytes: DES, 3DES (EDE) and SM4 in ECB and CBC, no padding.

These are the only functions that touch `cryptography`'s cipher objects; everything above them
(MACs, key derivation, cryptograms) is written once over a :class:`~citycard.crypto.suite.Suite`.

3DES lives in ``cryptography.hazmat.decrepit`` since release 43, and two-key 3DES is deprecated,
so a 16-byte key K1‖K2 is expanded here to K1‖K2‖K1 (ISO/IEC 18033-3 keying option 2).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

DES_BLOCK_BYTES = 8
SM4_BLOCK_BYTES = 16
_ZERO_IV_8 = bytes(8)
_ZERO_IV_16 = bytes(16)

# Creating a cipher context costs ~10 µs, more than encrypting a few blocks, and an issuer derives
# card keys from the same few issuer master keys thousands of times a second. ECB contexts keep no
# state between whole-block updates, so one context per (algorithm, key, direction) is reused.
# Contexts are not thread-safe, hence one bounded LRU per thread.
ECB_CONTEXT_CACHE_MAX = 512
_local = threading.local()


def _ecb_context(kind: str, key: bytes, encrypt: bool) -> Any:
    cache: OrderedDict[tuple[str, bytes, bool], Any] | None = getattr(_local, "ecb", None)
    if cache is None:
        cache = _local.ecb = OrderedDict()
    slot = (kind, key, encrypt)
    context = cache.get(slot)
    if context is not None:
        cache.move_to_end(slot)
        return context
    algorithm = TripleDES(key) if kind == "3des" else algorithms.SM4(key)
    cipher = Cipher(algorithm, modes.ECB())
    context = cipher.encryptor() if encrypt else cipher.decryptor()
    cache[slot] = context
    if len(cache) > ECB_CONTEXT_CACHE_MAX:
        cache.popitem(last=False)
    return context


def _check_blocks(data: bytes, block_bytes: int, what: str) -> None:
    if len(data) % block_bytes:
        raise ValueError(f"{what} must be a multiple of {block_bytes} bytes, got {len(data)}")


def tdes_key(key: bytes) -> bytes:
    """Return a 24-byte 3DES key: single (8) → K‖K‖K, double (16) → K1‖K2‖K1, triple (24) as is.

    >>> tdes_key(bytes(range(16))).hex().upper()
    '000102030405060708090A0B0C0D0E0F0001020304050607'
    """
    if len(key) == 16:
        return key + key[:8]
    if len(key) == 24:
        return key
    if len(key) == 8:
        return key * 3
    raise ValueError(f"3DES key must be 8, 16 or 24 bytes, got {len(key)}")


def _tdes(key: bytes) -> TripleDES:
    return TripleDES(tdes_key(key))


def tdes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """3DES-EDE ECB encryption of whole 8-byte blocks."""
    _check_blocks(data, DES_BLOCK_BYTES, "3DES data")
    return _ecb_context("3des", tdes_key(key), True).update(data)


def tdes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """3DES-EDE ECB decryption of whole 8-byte blocks."""
    _check_blocks(data, DES_BLOCK_BYTES, "3DES data")
    return _ecb_context("3des", tdes_key(key), False).update(data)


def tdes_cbc_encrypt(key: bytes, data: bytes, iv: bytes = _ZERO_IV_8) -> bytes:
    """3DES-EDE CBC encryption of whole 8-byte blocks (IV zero unless given)."""
    _check_blocks(data, DES_BLOCK_BYTES, "3DES data")
    if len(iv) != DES_BLOCK_BYTES:
        raise ValueError(f"3DES IV must be 8 bytes, got {len(iv)}")
    enc = Cipher(_tdes(key), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def tdes_cbc_decrypt(key: bytes, data: bytes, iv: bytes = _ZERO_IV_8) -> bytes:
    """3DES-EDE CBC decryption of whole 8-byte blocks (IV zero unless given)."""
    _check_blocks(data, DES_BLOCK_BYTES, "3DES data")
    if len(iv) != DES_BLOCK_BYTES:
        raise ValueError(f"3DES IV must be 8 bytes, got {len(iv)}")
    dec = Cipher(_tdes(key), modes.CBC(iv)).decryptor()
    return dec.update(data) + dec.finalize()


def des_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """Single DES (as 3DES with K‖K‖K) ECB encryption; ``key`` is 8 bytes."""
    if len(key) != 8:
        raise ValueError(f"DES key must be 8 bytes, got {len(key)}")
    return tdes_ecb_encrypt(key, data)


def des_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """Single DES ECB decryption; ``key`` is 8 bytes."""
    if len(key) != 8:
        raise ValueError(f"DES key must be 8 bytes, got {len(key)}")
    return tdes_ecb_decrypt(key, data)


def des_cbc_encrypt(key: bytes, data: bytes, iv: bytes = _ZERO_IV_8) -> bytes:
    """Single DES CBC encryption; ``key`` is 8 bytes."""
    if len(key) != 8:
        raise ValueError(f"DES key must be 8 bytes, got {len(key)}")
    return tdes_cbc_encrypt(key, data, iv)


def _sm4_key(key: bytes) -> algorithms.SM4:
    if len(key) != 16:
        raise ValueError(f"SM4 key must be 16 bytes, got {len(key)}")
    return algorithms.SM4(key)


def sm4_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """SM4 (GB/T 32907) ECB encryption of whole 16-byte blocks.

    >>> k = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    >>> sm4_ecb_encrypt(k, k).hex().upper()
    '681EDF34D206965E86B3E94F536E4246'
    """
    _check_blocks(data, SM4_BLOCK_BYTES, "SM4 data")
    if len(key) != 16:
        raise ValueError(f"SM4 key must be 16 bytes, got {len(key)}")
    return _ecb_context("sm4", key, True).update(data)


def sm4_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """SM4 ECB decryption of whole 16-byte blocks."""
    _check_blocks(data, SM4_BLOCK_BYTES, "SM4 data")
    if len(key) != 16:
        raise ValueError(f"SM4 key must be 16 bytes, got {len(key)}")
    return _ecb_context("sm4", key, False).update(data)


def sm4_cbc_encrypt(key: bytes, data: bytes, iv: bytes = _ZERO_IV_16) -> bytes:
    """SM4 CBC encryption of whole 16-byte blocks (IV zero unless given)."""
    _check_blocks(data, SM4_BLOCK_BYTES, "SM4 data")
    if len(iv) != SM4_BLOCK_BYTES:
        raise ValueError(f"SM4 IV must be 16 bytes, got {len(iv)}")
    enc = Cipher(_sm4_key(key), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def sm4_cbc_decrypt(key: bytes, data: bytes, iv: bytes = _ZERO_IV_16) -> bytes:
    """SM4 CBC decryption of whole 16-byte blocks (IV zero unless given)."""
    _check_blocks(data, SM4_BLOCK_BYTES, "SM4 data")
    if len(iv) != SM4_BLOCK_BYTES:
        raise ValueError(f"SM4 IV must be 16 bytes, got {len(iv)}")
    dec = Cipher(_sm4_key(key), modes.CBC(iv)).decryptor()
    return dec.update(data) + dec.finalize()


def xor(a: bytes, b: bytes) -> bytes:
    """Byte-wise XOR of two equal-length strings."""
    if len(a) != len(b):
        raise ValueError(f"XOR operands differ in length: {len(a)} and {len(b)}")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")
