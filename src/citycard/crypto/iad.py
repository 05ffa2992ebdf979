"""The PBOC issuer application data (9F10) with the electronic-cash balance and its MAC.

Layout (pboc-notes §2.4, checked against a public worked example): 07 ‖ DKI ‖ CVN ‖ 03 ‖ CVR(3) ‖
algorithm id ‖ [0A ‖ IDD type 01 ‖ EC balance (5 rightmost bytes of 9F79) ‖ MAC(4)], where the MAC
is the PBOC MAC under the MAC session key over ATC ‖ balance(5) ‖ 00, leftmost 4 bytes.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from citycard.crypto.cryptogram import pboc_mac
from citycard.crypto.suite import SUITES, Suite

STANDARD_PART_BYTES = 8
IDD_EC_BYTES = 11
IDD_TYPE_EC = 0x01
EC_BALANCE_FEN_MAX = 999_999_999_999  # n12


@dataclass(frozen=True, slots=True)
class PbocIad:
    dki: int
    cvn: int
    cvr: bytes  # the 3 CVR bytes (without the length byte 03)
    algorithm_id: int
    idd_type: int | None = None
    ec_balance_fen: int | None = None
    mac: bytes | None = None

    @property
    def suite(self) -> Suite:
        for suite in SUITES:
            if suite.iad_algorithm_id == self.algorithm_id:
                return suite
        raise ValueError(f"IAD algorithm id {self.algorithm_id:02X} is neither 01 (3DES) nor 04 (SM4)")

    @property
    def cvr_field(self) -> bytes:
        """The CVR field as used in the AC input: length byte 03 and the 3 CVR bytes."""
        return b"\x03" + self.cvr


def ec_balance_bytes(balance_fen: int) -> bytes:
    """The 5 rightmost bytes of the n12 BCD balance, as carried in the IAD."""
    if not 0 <= balance_fen <= EC_BALANCE_FEN_MAX:
        raise ValueError(f"EC balance must be 0 to {EC_BALANCE_FEN_MAX} fen, got {balance_fen}")
    return bytes.fromhex(f"{balance_fen:012d}")[1:]


def ec_balance_mac(mac_session_key: bytes, *, tag_9f36: bytes, balance_fen: int, suite: Suite) -> bytes:
    """The 4-byte MAC over ATC ‖ balance(5) ‖ 00 that lets the issuer trust the EC balance."""
    if len(tag_9f36) != 2:
        raise ValueError(f"ATC (9F36) must be 2 bytes, got {len(tag_9f36)}")
    data = tag_9f36 + ec_balance_bytes(balance_fen) + b"\x00"
    return pboc_mac(mac_session_key, data, suite=suite, length=4)


def build_iad(
    *,
    dki: int,
    cvn: int,
    cvr: bytes,
    suite: Suite,
    ec_balance_fen: int | None = None,
    mac_session_key: bytes | None = None,
    tag_9f36: bytes | None = None,
) -> bytes:
    """Build the PBOC 9F10: 8 standard bytes, plus the EC IDD when a balance is given."""
    if len(cvr) != 3:
        raise ValueError(f"CVR must be 3 bytes, got {len(cvr)}")
    for name, value in (("DKI", dki), ("CVN", cvn)):
        if not 0 <= value <= 0xFF:
            raise ValueError(f"{name} must be one byte, got {value}")
    iad = bytes([0x07, dki, cvn, 0x03]) + cvr + bytes([suite.iad_algorithm_id])
    if ec_balance_fen is None:
        return iad
    if mac_session_key is None or tag_9f36 is None:
        raise ValueError("an IAD with an EC balance needs the MAC session key and the ATC")
    mac = ec_balance_mac(mac_session_key, tag_9f36=tag_9f36, balance_fen=ec_balance_fen, suite=suite)
    return iad + bytes([0x0A, IDD_TYPE_EC]) + ec_balance_bytes(ec_balance_fen) + mac


def parse_iad(tag_9f10: bytes) -> PbocIad:
    """Split a PBOC 9F10 into its fields, with exact length checks.

    >>> iad = parse_iad(bytes.fromhex("07010103900002040A010000008800180FE8DE"))
    >>> (iad.cvr.hex().upper(), iad.suite.name, iad.ec_balance_fen, iad.mac.hex().upper())
    ('900002', 'GM', 8800, '180FE8DE')
    """
    if len(tag_9f10) < STANDARD_PART_BYTES:
        raise ValueError(f"PBOC IAD (9F10) must be at least 8 bytes, got {len(tag_9f10)}")
    if tag_9f10[0] != 0x07 or tag_9f10[3] != 0x03:
        raise ValueError(f"PBOC IAD (9F10) must start 07 xx xx 03, got {tag_9f10[:4].hex().upper()}")
    fields = {
        "dki": tag_9f10[1],
        "cvn": tag_9f10[2],
        "cvr": tag_9f10[4:7],
        "algorithm_id": tag_9f10[7],
    }
    rest = tag_9f10[STANDARD_PART_BYTES:]
    if not rest:
        return PbocIad(**fields)
    if rest[0] + 1 != len(rest):
        raise ValueError(
            f"IAD discretionary data length byte {rest[0]:02X} does not match {len(rest) - 1} bytes"
        )
    if rest[0] != 0x0A or rest[1] != IDD_TYPE_EC:
        return PbocIad(**fields, idd_type=rest[1] if len(rest) > 1 else None)
    balance_fen = int(rest[2:7].hex())
    return PbocIad(**fields, idd_type=IDD_TYPE_EC, ec_balance_fen=balance_fen, mac=rest[7:11])


def verify_iad_mac(mac_session_key: bytes, *, tag_9f10: bytes, tag_9f36: bytes) -> bool:
    """True when the EC balance MAC in the IAD is right for this ATC (the suite comes from the IAD)."""
    iad = parse_iad(tag_9f10)
    if iad.idd_type != IDD_TYPE_EC or iad.ec_balance_fen is None or iad.mac is None:
        raise ValueError("IAD carries no electronic-cash balance to check")
    expected = ec_balance_mac(
        mac_session_key, tag_9f36=tag_9f36, balance_fen=iad.ec_balance_fen, suite=iad.suite
    )
    return hmac.compare_digest(expected, iad.mac)
