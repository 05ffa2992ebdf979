"""Application cryptograms, ARPC and PBOC MACs, once for both suites.

JR/T 0025.7 §(application cryptogram): the AC is a MAC under the AC session key over the CDOL data
padded by ISO/IEC 9797-1 method 2 — MAC algorithm 3 for 3DES, SM4 CBC-MAC (leftmost 8 bytes) for
SM4 (pboc-notes §4.2, §4.3).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from citycard.crypto.blockcipher import xor
from citycard.crypto.mac import pad_method_2
from citycard.crypto.suite import Suite

AC_BYTES = 8
ARC_BYTES = 2
MAX_MAC_DATA_BYTES = 4096  # a CDOL or script command is far smaller; larger input is a caller bug


def pboc_mac(session_key: bytes, data: bytes, *, suite: Suite, length: int = 8) -> bytes:
    """MAC under a PBOC session key: pad method 2, then the suite's block MAC, leftmost ``length`` bytes.

    >>> from citycard.crypto.suite import INTL
    >>> sk = bytes.fromhex("AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB")
    >>> data = bytes.fromhex("000000002000000000000000012400000080000124110309003804823E58000001")
    >>> pboc_mac(sk, data, suite=INTL).hex().upper()
    '3B76CF10FECD8789'
    """
    suite.check_key(session_key, "session key")
    if not 4 <= length <= 8:
        raise ValueError(f"MAC length must be 4 to 8 bytes, got {length}")
    if len(data) > MAX_MAC_DATA_BYTES:
        raise ValueError(f"MAC data must be at most {MAX_MAC_DATA_BYTES} bytes, got {len(data)}")
    return suite.block_mac(session_key, pad_method_2(data, suite.block_bytes))[:length]


def generate_ac(session_key: bytes, data: bytes, *, suite: Suite) -> bytes:
    """Application cryptogram (ARQC, TC or AAC, 9F26): the 8-byte PBOC MAC over the CDOL data."""
    return pboc_mac(session_key, data, suite=suite, length=AC_BYTES)


def verify_ac(session_key: bytes, data: bytes, *, tag_9f26: bytes, suite: Suite) -> bool:
    """True when ``tag_9f26`` is the cryptogram of ``data`` (compared in constant time)."""
    if len(tag_9f26) != AC_BYTES:
        raise ValueError(f"application cryptogram (9F26) must be 8 bytes, got {len(tag_9f26)}")
    return hmac.compare_digest(generate_ac(session_key, data, suite=suite), tag_9f26)


def pboc_ac_data(
    *,
    tag_9f02: bytes,
    tag_9f03: bytes,
    tag_9f1a: bytes,
    tag_95: bytes,
    tag_5f2a: bytes,
    tag_9a: bytes,
    tag_9c: bytes,
    tag_9f37: bytes,
    tag_82: bytes,
    tag_9f36: bytes,
    cvr: bytes,
) -> bytes:
    """The PBOC AC input: 9F02‖9F03‖9F1A‖95‖5F2A‖9A‖9C‖9F37‖82‖9F36‖CVR (37 bytes; pboc-notes §4.2).

    ``cvr`` is the 4-byte CVR field of the PBOC IAD (its length byte 03 and three CVR bytes).
    """
    parts = (
        ("9F02", tag_9f02, 6),
        ("9F03", tag_9f03, 6),
        ("9F1A", tag_9f1a, 2),
        ("95", tag_95, 5),
        ("5F2A", tag_5f2a, 2),
        ("9A", tag_9a, 3),
        ("9C", tag_9c, 1),
        ("9F37", tag_9f37, 4),
        ("82", tag_82, 2),
        ("9F36", tag_9f36, 2),
        ("CVR", cvr, 4),
    )
    for name, value, length in parts:
        if len(value) != length:
            raise ValueError(f"{name} must be {length} bytes, got {len(value)}")
    return b"".join(value for _, value, _ in parts)


def pboc_ac_data_from_tags(values: Mapping[str, bytes], *, cvr: bytes | None = None) -> bytes:
    """:func:`pboc_ac_data` from a dict of tag → value (field 55, a CDOL1 split, a batch record).

    ``cvr`` defaults to the CVR field of the PBOC IAD in ``values["9F10"]`` (bytes 3–6); a missing
    tag raises KeyError naming it.
    """
    return pboc_ac_data(
        tag_9f02=values["9F02"], tag_9f03=values["9F03"], tag_9f1a=values["9F1A"], tag_95=values["95"],
        tag_5f2a=values["5F2A"], tag_9a=values["9A"], tag_9c=values["9C"], tag_9f37=values["9F37"],
        tag_82=values["82"], tag_9f36=values["9F36"], cvr=values["9F10"][3:7] if cvr is None else cvr,
    )  # fmt: skip


def generate_arpc(session_key: bytes, *, tag_9f26: bytes, tag_8a: bytes, suite: Suite) -> bytes:
    """ARPC method 1 (EMV Book 2 §8.2.1; PBOC): encrypt ARQC ⊕ (ARC ‖ 00…) under the AC session key.

    3DES: one 8-byte block. SM4: the 16-byte block (ARQC ⊕ ARC‖00…) ‖ 00×8, leftmost 8 bytes
    (pboc-notes §4.3).

    >>> from citycard.crypto.suite import INTL
    >>> sk = bytes.fromhex("AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB")
    >>> arqc = bytes.fromhex("1234567890ABCDEF")
    >>> generate_arpc(sk, tag_9f26=arqc, tag_8a=b"\\x00\\x00", suite=INTL).hex().upper()
    'F5E6F44147E2F1B0'
    """
    suite.check_key(session_key, "session key")
    if len(tag_9f26) != AC_BYTES:
        raise ValueError(f"ARQC (9F26) must be 8 bytes, got {len(tag_9f26)}")
    if len(tag_8a) != ARC_BYTES:
        raise ValueError(f"authorisation response code (8A) must be 2 bytes, got {len(tag_8a)}")
    block = xor(tag_9f26, tag_8a + bytes(AC_BYTES - ARC_BYTES))
    block += bytes(suite.block_bytes - AC_BYTES)
    return suite.ecb_encrypt(session_key, block)[:AC_BYTES]


def verify_arpc(session_key: bytes, *, tag_9f26: bytes, tag_8a: bytes, arpc: bytes, suite: Suite) -> bool:
    """True when ``arpc`` is the method-1 ARPC for this ARQC and ARC (card side of issuer authentication)."""
    if len(arpc) != AC_BYTES:
        raise ValueError(f"ARPC must be 8 bytes, got {len(arpc)}")
    expected = generate_arpc(session_key, tag_9f26=tag_9f26, tag_8a=tag_8a, suite=suite)
    return hmac.compare_digest(expected, arpc)
