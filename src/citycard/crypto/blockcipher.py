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
_ECB = modes.ECB()

# Creating a cipher context costs ~10 µs, more than encrypting a few blocks, and an issuer derives
# card keys from the same few issuer master keys thousands of times a second. ECB contexts keep no
# state between whole-block updates, so master keys get one reusable context each. Contexts are not
# thread-safe, hence one bounded LRU per thread. Per-transaction keys (session keys) bypass it.
MASTER_CONTEXT_CACHE_MAX = 64
_local = threading.local()


def _public_encryptor(algorithm: Any, mode: Any) -> Any:
    return Cipher(algorithm, mode).encryptor()


def _public_decryptor(algorithm: Any, mode: Any) -> Any:
    return Cipher(algorithm, mode).decryptor()


def _fast_context_factories() -> tuple[Any, Any]:
    """The Rust context constructors behind ``Cipher.encryptor()``, if this release has them.

    ``Cipher.__init__`` re-validates algorithm and mode in Python (about a third of the cost of a
    fresh context), and an ARQC verify needs three fresh 3DES contexts. The constructors are private
    API, so they are used only if they give the public path's answer on a known SM4 and 3DES block;
    otherwise every context goes through the public ``Cipher`` API.
    """
    try:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        create_encryptor = rust_openssl.ciphers.create_encryption_ctx
        create_decryptor = rust_openssl.ciphers.create_decryption_ctx
        key, block = bytes(range(16)), bytes(range(16, 32))
        for algorithm in (algorithms.SM4(key), TripleDES(key + key[:8])):
            expected = _public_encryptor(algorithm, _ECB).update(block)
            if create_encryptor(algorithm, _ECB).update(block) != expected:
                raise ValueError("fast path disagrees")
            if create_decryptor(algorithm, _ECB).update(expected) != block:
                raise ValueError("fast path disagrees")
    except (ImportError, AttributeError, TypeError, ValueError):
        return _public_encryptor, _public_decryptor
    return create_encryptor, create_decryptor


_encryptor, _decryptor = _fast_context_factories()


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


def _sm4(key: bytes) -> algorithms.SM4:
    if len(key) != 16:
        raise ValueError(f"SM4 key must be 16 bytes, got {len(key)}")
    return algorithms.SM4(key)


def _iv(iv: bytes, block_bytes: int, what: str) -> modes.CBC:
    if len(iv) != block_bytes:
        raise ValueError(f"{what} IV must be {block_bytes} bytes, got {len(iv)}")
    return modes.CBC(iv)


def tdes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """3DES-EDE ECB encryption of whole 8-byte blocks."""
    _check_blocks(data, DES_BLOCK_BYTES, "3DES data")
    return _encryptor(TripleDES(tdes_key(key)), _ECB).update(data)


def tdes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """3DES-EDE ECB decryption of whole 8-byte blocks."""
    _check_blocks(data, DES_BLOCK_BYTES, "3DES data")
    return _decryptor(TripleDES(tdes_key(key)), _ECB).update(data)


def tdes_cbc_encrypt(key: bytes, data: bytes, iv: bytes = _ZERO_IV_8) -> bytes:
    """3DES-EDE CBC encryption of whole 8-byte blocks (IV zero unless given)."""
    _check_blocks(data, DES_BLOCK_BYTES, "3DES data")
    return _encryptor(TripleDES(tdes_key(key)), _iv(iv, 8, "3DES")).update(data)


def tdes_cbc_decrypt(key: bytes, data: bytes, iv: bytes = _ZERO_IV_8) -> bytes:
    """3DES-EDE CBC decryption of whole 8-byte blocks (IV zero unless given)."""
    _check_blocks(data, DES_BLOCK_BYTES, "3DES data")
    return _decryptor(TripleDES(tdes_key(key)), _iv(iv, 8, "3DES")).update(data)


def _des_key(key: bytes) -> bytes:
    if len(key) != 8:
        raise ValueError(f"DES key must be 8 bytes, got {len(key)}")
    return key


def des_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """Single DES (as 3DES with K‖K‖K) ECB encryption; ``key`` is 8 bytes."""
    return tdes_ecb_encrypt(_des_key(key), data)


def des_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """Single DES ECB decryption; ``key`` is 8 bytes."""
    return tdes_ecb_decrypt(_des_key(key), data)


def des_cbc_encrypt(key: bytes, data: bytes, iv: bytes = _ZERO_IV_8) -> bytes:
    """Single DES CBC encryption; ``key`` is 8 bytes."""
    return tdes_cbc_encrypt(_des_key(key), data, iv)


def sm4_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """SM4 (GB/T 32907) ECB encryption of whole 16-byte blocks.

    >>> k = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    >>> sm4_ecb_encrypt(k, k).hex().upper()
    '681EDF34D206965E86B3E94F536E4246'
    """
    _check_blocks(data, SM4_BLOCK_BYTES, "SM4 data")
    return _encryptor(_sm4(key), _ECB).update(data)


def sm4_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """SM4 ECB decryption of whole 16-byte blocks."""
    _check_blocks(data, SM4_BLOCK_BYTES, "SM4 data")
    return _decryptor(_sm4(key), _ECB).update(data)


def sm4_cbc_encrypt(key: bytes, data: bytes, iv: bytes = _ZERO_IV_16) -> bytes:
    """SM4 CBC encryption of whole 16-byte blocks (IV zero unless given)."""
    _check_blocks(data, SM4_BLOCK_BYTES, "SM4 data")
    return _encryptor(_sm4(key), _iv(iv, 16, "SM4")).update(data)


def sm4_cbc_decrypt(key: bytes, data: bytes, iv: bytes = _ZERO_IV_16) -> bytes:
    """SM4 CBC decryption of whole 16-byte blocks (IV zero unless given)."""
    _check_blocks(data, SM4_BLOCK_BYTES, "SM4 data")
    return _decryptor(_sm4(key), _iv(iv, 16, "SM4")).update(data)


def _master_context(cipher: str, key: bytes) -> Any:
    cache: OrderedDict[tuple[str, bytes], Any] | None = getattr(_local, "contexts", None)
    if cache is None:
        cache = _local.contexts = OrderedDict()
    slot = (cipher, key)
    context = cache.get(slot)
    if context is None:
        algorithm = TripleDES(tdes_key(key)) if cipher == "3des" else _sm4(key)
        context = cache[slot] = _encryptor(algorithm, _ECB)
        if len(cache) > MASTER_CONTEXT_CACHE_MAX:
            cache.popitem(last=False)
    else:
        cache.move_to_end(slot)
    return context


def tdes_master_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """:func:`tdes_ecb_encrypt` for a long-lived key (an issuer master key): the context is reused."""
    _check_blocks(data, DES_BLOCK_BYTES, "3DES data")
    return _master_context("3des", key).update(data)


def sm4_master_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """:func:`sm4_ecb_encrypt` for a long-lived key (an issuer master key): the context is reused."""
    _check_blocks(data, SM4_BLOCK_BYTES, "SM4 data")
    return _master_context("sm4", key).update(data)


def xor(a: bytes, b: bytes) -> bytes:
    """Byte-wise XOR of two equal-length strings."""
    if len(a) != len(b):
        raise ValueError(f"XOR operands differ in length: {len(a)} and {len(b)}")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")
