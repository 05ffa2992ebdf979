"""Card-key derivation, PBOC session keys and key check values, written once over a :class:`Suite`.

Sources: EMV Book 2 Annex A1.4.1 (option A); JR/T 0025.7 and .17 as reproduced in public test
tools (pboc-notes §4.1 and §4.3): the PBOC "process key" uses 000000000000‖ATC and
000000000000‖(ATC ⊕ FFFF) as its two diversification blocks, unlike the EMV common session key.
"""

from __future__ import annotations

from citycard.crypto.suite import Suite

_MAX_PAN_DIGITS = 19
_ONES_64 = (1 << 64) - 1
_SIX_ZEROS = bytes(6)
# byte → the same byte with its low bit set so that the byte has odd parity
_ODD_PARITY = bytes((b & 0xFE) | (((b >> 1).bit_count() & 1) ^ 1) for b in range(256))


def adjust_odd_parity(key: bytes) -> bytes:
    """Set the low bit of every byte so each byte has odd parity (DES key convention).

    >>> adjust_odd_parity(bytes.fromhex("0000FEFF")).hex().upper()
    '0101FEFE'
    """
    return key.translate(_ODD_PARITY)


def option_a_input(*, tag_5a: str, tag_5f34: str) -> bytes:
    """Y = rightmost 16 digits of PAN ‖ PSN, zero-padded on the left, as 8 BCD bytes (Book 2 A1.4.1).

    ``tag_5a`` is the PAN as digits (a trailing F pad is ignored); ``tag_5f34`` the PSN as two
    digits (``"00"`` when the card has no PSN).

    >>> option_a_input(tag_5a="12345678901234567", tag_5f34="01").hex().upper()
    '4567890123456701'
    """
    pan = tag_5a if tag_5a.isdigit() else tag_5a.upper().rstrip("F")
    if not pan.isdigit() or not 1 <= len(pan) <= _MAX_PAN_DIGITS:
        raise ValueError(f"PAN (5A) must be 1 to {_MAX_PAN_DIGITS} digits, got {tag_5a!r}")
    if len(tag_5f34) != 2 or not tag_5f34.isdigit():
        raise ValueError(f"PSN (5F34) must be 2 digits, got {tag_5f34!r}")
    digits = (pan + tag_5f34)[-16:].rjust(16, "0")
    return bytes.fromhex(digits)


def derive_card_key(imk: bytes, *, tag_5a: str, tag_5f34: str, suite: Suite) -> bytes:
    """Card (ICC master) key from an issuer master key by EMV option A, or its SM4 variant.

    INTL: 3DES(IMK)[Y] ‖ 3DES(IMK)[Y ⊕ FF…FF], odd parity. GM: SM4(IMK)[Y ‖ (Y ⊕ FF…FF)], one
    16-byte block (pboc-notes §4.3).

    >>> from citycard.crypto.suite import INTL
    >>> imk = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    >>> derive_card_key(imk, tag_5a="99012345678901234", tag_5f34="45", suite=INTL).hex().upper()
    '67F8292358083E5EA7AB7FDA58D53B6B'
    """
    suite.check_key(imk, "issuer master key")
    y = option_a_input(tag_5a=tag_5a, tag_5f34=tag_5f34)
    y_inverted = (int.from_bytes(y, "big") ^ _ONES_64).to_bytes(8, "big")
    card_key = suite.master_ecb_encrypt(imk, y + y_inverted)
    return adjust_odd_parity(card_key) if suite.block_bytes == 8 else card_key


def session_key(card_key: bytes, *, tag_9f36: bytes, suite: Suite) -> bytes:
    """PBOC session (process) key for one transaction from the card key and the ATC.

    Both suites encrypt 000000000000‖ATC ‖ 000000000000‖(ATC ⊕ FFFF) under the card key: two
    3DES blocks (then odd parity) or one SM4 block (JR/T 0025.7 / .17; pboc-notes §4.1, §4.3).
    """
    suite.check_key(card_key, "card key")
    if len(tag_9f36) != 2:
        raise ValueError(f"ATC (9F36) must be 2 bytes, got {len(tag_9f36)}")
    atc_inverted = (int.from_bytes(tag_9f36, "big") ^ 0xFFFF).to_bytes(2, "big")
    blocks = _SIX_ZEROS + tag_9f36 + _SIX_ZEROS + atc_inverted
    key = suite.ecb_encrypt(card_key, blocks)
    return adjust_odd_parity(key) if suite.block_bytes == 8 else key


def key_check_value(key: bytes, *, suite: Suite, length: int = 3) -> bytes:
    """Key check value: the leftmost ``length`` bytes of the key encrypting one zero block.

    >>> from citycard.crypto.suite import INTL
    >>> key_check_value(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), suite=INTL, length=2).hex().upper()
    '08D7'
    """
    if not 1 <= length <= suite.block_bytes:
        raise ValueError(f"KCV length must be 1 to {suite.block_bytes} bytes, got {length}")
    suite.check_key(key)
    return suite.ecb_encrypt(key, bytes(suite.block_bytes))[:length]
