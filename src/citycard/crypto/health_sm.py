"""The resident health card's keys and secure messaging, both suites (pboc-notes §8.1; UNCERTAIN).

WS/T 543 part 4 (the user-card command set) and the SAM specification are not public. The reader
SDKs show the shape: per-DF read keys (RK) and update keys (UK) diversified per card in the SAM,
EXTERNAL AUTHENTICATE after GET CHALLENGE for reading, and UPDATE RECORD with encryption and a
MAC under a session transfer key for writing. The arithmetic below is this project's choice,
written like the PBOC rules it sits beside (pboc-notes §4.1, §4.3):

- **card key** = E(master)[D ‖ ~D], D the card's 8-byte diversifier (its chip serial, EF05 tag 86):
  two 3DES blocks with odd parity (INTL) or one SM4 block (GM) — EMV option A on another input;
- **authentication cryptogram** = E(RK)[R ‖ 0…0] leftmost 8 bytes, R the card's 8-byte challenge;
- **session key** = E(UK)[R ‖ ~R] (parity for 3DES), one per GET CHALLENGE;
- **secure messaging** (CLA 04): data = CBC(SK, IV 0)[plain ‖ 80 00…] ‖ MAC, MAC = the suite's
  block MAC (ISO 9797-1 alg. 3 / SM4 CBC-MAC) over CLA INS P1 P2 Lc ‖ ciphertext, padded method 2,
  leftmost 4 bytes; Lc counts the ciphertext and the MAC.

>>> from citycard.crypto.suite import GM, INTL
>>> uk, r = bytes(range(16)), bytes(8)
>>> for suite in (INTL, GM):
...     sk = session_key(uk, challenge=r, suite=suite)
...     data = wrap(sk, header=bytes.fromhex("04DC0134"), plain=b"\\x80\\x01A", suite=suite)
...     assert unwrap(sk, header=bytes.fromhex("04DC0134"), data=data, suite=suite) == b"\\x80\\x01A"
"""

from __future__ import annotations

import hmac

from citycard.crypto.keys import adjust_odd_parity
from citycard.crypto.mac import pad_method_2
from citycard.crypto.suite import Suite

DIVERSIFIER_BYTES = 8
CHALLENGE_BYTES = 8
CRYPTOGRAM_BYTES = 8
MAC_BYTES = 4
HEADER_BYTES = 4  # CLA INS P1 P2; Lc is added from the data length
SM_DATA_BYTES_MAX = 255
_ONES_64 = (1 << 64) - 1


class SecureMessagingError(ValueError):
    """A secure-messaging command that does not hold: ``kind`` is ``missing`` (no MAC or no
    ciphertext: 6987), ``mac`` (the MAC or the padding does not verify: 6988)."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def _check(what: str, value: bytes, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(
            f"{what} must be {size} bytes, got {len(value) if isinstance(value, bytes) else value!r}"
        )


def _inverted(block: bytes) -> bytes:
    return (int.from_bytes(block, "big") ^ _ONES_64).to_bytes(8, "big")


def _key(suite: Suite, key: bytes) -> bytes:
    return adjust_odd_parity(key) if suite.block_bytes == 8 else key


def diversify(master: bytes, *, diversifier: bytes, suite: Suite) -> bytes:
    """A card's RK/UK from the SAM's master: E(master)[D ‖ ~D] (module note)."""
    suite.check_key(master, "health master key")
    _check("diversifier", diversifier, DIVERSIFIER_BYTES)
    return _key(suite, suite.master_ecb_encrypt(master, diversifier + _inverted(diversifier)))


def auth_cryptogram(read_key: bytes, *, challenge: bytes, suite: Suite) -> bytes:
    """EXTERNAL AUTHENTICATE data: E(RK)[R ‖ zeros to a block], leftmost 8 bytes."""
    suite.check_key(read_key, "read key")
    _check("challenge", challenge, CHALLENGE_BYTES)
    block = challenge + bytes(suite.block_bytes - CHALLENGE_BYTES)
    return suite.ecb_encrypt(read_key, block)[:CRYPTOGRAM_BYTES]


def session_key(update_key: bytes, *, challenge: bytes, suite: Suite) -> bytes:
    """The session transfer key of one secure-messaging command: E(UK)[R ‖ ~R]."""
    suite.check_key(update_key, "update key")
    _check("challenge", challenge, CHALLENGE_BYTES)
    return _key(suite, suite.ecb_encrypt(update_key, challenge + _inverted(challenge)))


def mac(session: bytes, *, header: bytes, ciphertext: bytes, suite: Suite) -> bytes:
    """The 4-byte MAC over CLA INS P1 P2 Lc ‖ ciphertext (Lc = ciphertext + MAC)."""
    _check("header", header, HEADER_BYTES)
    lc = len(ciphertext) + MAC_BYTES
    if lc > SM_DATA_BYTES_MAX:
        raise ValueError(f"secure-messaging data of {lc} bytes: a short APDU carries {SM_DATA_BYTES_MAX}")
    padded = pad_method_2(header + bytes([lc]) + ciphertext, suite.block_bytes)
    return suite.block_mac(session, padded)[:MAC_BYTES]


def wrap(session: bytes, *, header: bytes, plain: bytes, suite: Suite) -> bytes:
    """The command data of a secure-messaging write: encrypted ``plain`` ‖ MAC."""
    ciphertext = suite.cbc_encrypt(session, pad_method_2(plain, suite.block_bytes))
    return ciphertext + mac(session, header=header, ciphertext=ciphertext, suite=suite)


def unwrap(session: bytes, *, header: bytes, data: bytes, suite: Suite) -> bytes:
    """The plain data of a secure-messaging write, after its MAC and padding are checked."""
    if len(data) < suite.block_bytes + MAC_BYTES or (len(data) - MAC_BYTES) % suite.block_bytes:
        raise SecureMessagingError(
            "missing", f"secure-messaging data of {len(data)} bytes: whole cipher blocks and a 4-byte MAC"
        )
    ciphertext, given = data[:-MAC_BYTES], data[-MAC_BYTES:]
    if not hmac.compare_digest(mac(session, header=header, ciphertext=ciphertext, suite=suite), given):
        raise SecureMessagingError("mac", "the MAC does not verify")
    padded = suite.cbc_decrypt(session, ciphertext)
    end = padded.rstrip(b"\x00")
    if not end.endswith(b"\x80"):
        raise SecureMessagingError("mac", "the deciphered data has no 80 padding")
    return end[:-1]
