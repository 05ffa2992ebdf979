"""Padding and MACs: ISO/IEC 9797-1 padding method 2, MAC algorithm 3 (retail MAC) and SM4 CBC-MAC."""

from __future__ import annotations

from citycard.crypto.blockcipher import des_cbc_encrypt, sm4_cbc_encrypt, tdes_ecb_encrypt


def pad_method_2(data: bytes, block_bytes: int) -> bytes:
    """ISO/IEC 9797-1 padding method 2: append 80, then 00 up to a multiple of ``block_bytes``.

    >>> pad_method_2(bytes.fromhex("0102"), 8).hex().upper()
    '0102800000000000'
    >>> len(pad_method_2(bytes(8), 8))
    16
    """
    padded = data + b"\x80"
    return padded + bytes(-len(padded) % block_bytes)


def retail_mac(key: bytes, data: bytes) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 3 over already padded ``data`` with a 16-byte key K1‖K2.

    Single-DES CBC under K1 over all blocks, then DES⁻¹(K2) and DES(K1) on the last block; IV zero.
    """
    if len(key) != 16:
        raise ValueError(f"MAC algorithm 3 key must be 16 bytes, got {len(key)}")
    if not data or len(data) % 8:
        raise ValueError(f"MAC algorithm 3 data must be a non-empty multiple of 8 bytes, got {len(data)}")
    # DES⁻¹(K2) then DES(K1) after a DES(K1) step is 3DES-EDE with K1‖K2‖K1, so the last block is
    # one 3DES encryption of (CBC chaining value ⊕ last block): two cipher calls instead of four.
    last = data[-8:]
    if len(data) > 8:
        chaining = des_cbc_encrypt(key[:8], data[:-8])[-8:]
        last = (int.from_bytes(chaining, "big") ^ int.from_bytes(last, "big")).to_bytes(8, "big")
    return tdes_ecb_encrypt(key, last)


def sm4_cbc_mac(key: bytes, data: bytes) -> bytes:
    """SM4 CBC-MAC over already padded ``data`` (IV zero): the last 16-byte cipher block."""
    if not data or len(data) % 16:
        raise ValueError(f"SM4 CBC-MAC data must be a non-empty multiple of 16 bytes, got {len(data)}")
    return sm4_cbc_encrypt(key, data)[-16:]
