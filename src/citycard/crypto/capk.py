"""Certification Authority public keys (CAPK) as the terminal holds them, and a test CA generator.

A CAPK record is RID (9F06) ‖ index (9F22) ‖ key ‖ expiry ‖ checksum (EMV Book 2 §11.2.2; the
terminal parameter layout DF02 modulus, DF04 exponent, DF03 checksum, DF05 expiry in
pboc-notes §2.2). An RSA key is modulus + exponent; an SM2 key (JR/T 0025.17) is the point x‖y
(64 bytes) and has no exponent.

Checksum (DF03): EMV defines it as SHA-1(RID ‖ index ‖ modulus ‖ exponent) (Book 2 §11.2.2,
verified against the Visa and Mastercard test keys of vectors-public §3.4). For SM2 CAPKs we use
SHA-1(RID ‖ index ‖ x ‖ y): the same rule with the point in place of modulus‖exponent, kept on
SHA-1 so the 20-byte DF03 field stays as it is. UNCERTAIN: JR/T 0025.17 may define the SM2
checksum with SM3 instead; no public sample was found (pboc-notes §14). The hash and key
algorithm indicators (DF06/DF07) follow the same caution: 01/01 for RSA (EMV), 07/04 for SM2 as
commonly quoted but not confirmed (pboc-notes §2.2).

>>> from citycard.crypto.suite import GM
>>> ca = generate_test_ca(GM)
>>> (ca.capk.rid.hex().upper(), f"{ca.capk.index:02X}", len(ca.capk.key), len(ca.capk.checksum))
('A000000333', 'E1', 64, 20)
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import NamedTuple

from citycard.crypto import rsa, sm2
from citycard.crypto.hashes import sha1
from citycard.crypto.suite import GM, INTL, Suite

RID_BYTES = 5
SM2_KEY_BYTES = 64
UNIONPAY_RID = bytes.fromhex("A000000333")
# Default indexes for generated test CAs: outside the ranges UnionPay uses for its RSA (01–0C)
# and SM2 (18) keys (pboc-notes §4.5), one per suite so both fit one terminal table.
TEST_CA_INDEX = {"rsa": 0xE0, "sm2": 0xE1}
TEST_CA_RSA_BITS = 1152
# Hash / public-key algorithm indicators (DF06 / DF07, Book 2 §11.2.2). SM2 values UNCERTAIN.
ALGORITHM_INDICATORS = {"rsa": (0x01, 0x01), "sm2": (0x07, 0x04)}


class CapkError(ValueError):
    """A CA public key record that is malformed or whose checksum does not match."""


def capk_checksum(rid: bytes, index: int, key: bytes, exponent: bytes = b"") -> bytes:
    """SHA-1(RID ‖ index ‖ key ‖ exponent): the EMV CAPK checksum (Book 2 §11.2.2).

    For SM2 keys ``key`` is x‖y and ``exponent`` is empty (see the module note).

    >>> capk_checksum(bytes.fromhex("A000000003"), 0x99, bytes([0xAB] * 128), b"\\x03").hex()[:8]
    'd23355bb'
    """
    if len(rid) != RID_BYTES:
        raise CapkError(f"RID (9F06) must be {RID_BYTES} bytes, got {len(rid)}")
    if not 0 <= index <= 0xFF:
        raise CapkError(f"CA public key index (9F22) must be one byte, got {index}")
    return sha1(rid + bytes([index]) + key + exponent)


@dataclass(frozen=True, slots=True)
class Capk:
    """One CA public key. ``key`` is the RSA modulus or the SM2 point x‖y; ``exponent`` RSA only.

    It has the ``suite``/``key``/``exponent`` attributes of :class:`citycard.crypto.oda.PublicKey`,
    so the ODA functions take it wherever they verify a CA signature.
    """

    rid: bytes
    index: int
    suite: Suite
    key: bytes
    exponent: bytes = b""
    expiry: dt.date | None = None  # last day of validity (DF05), None when unknown

    def __post_init__(self) -> None:
        capk_checksum(self.rid, self.index, b"")  # RID and index checks
        if self.suite.signature == "sm2":
            if len(self.key) != SM2_KEY_BYTES:
                raise CapkError(f"SM2 CA public key must be {SM2_KEY_BYTES} bytes (x‖y), got {len(self.key)}")
            if self.exponent:
                raise CapkError("an SM2 CA public key has no exponent")
        else:
            if not self.key or self.key[0] == 0:
                raise CapkError("RSA CA modulus must be non-empty with a non-zero first byte")
            if len(self.key) > rsa.RSA_BITS_MAX // 8:
                raise CapkError(
                    f"RSA CA modulus is at most {rsa.RSA_BITS_MAX // 8} bytes, got {len(self.key)}"
                )
            if int.from_bytes(self.exponent, "big") not in rsa.PUBLIC_EXPONENTS:
                raise CapkError(
                    f"RSA CA exponent must be 03 or 010001, got {self.exponent.hex().upper() or 'none'}"
                )

    @classmethod
    def from_record(
        cls,
        *,
        rid: bytes,
        index: int,
        suite: Suite,
        key: bytes,
        exponent: bytes = b"",
        checksum: bytes,
        expiry: dt.date | None = None,
    ) -> Capk:
        """Load a CAPK from a parameter table and check its stored checksum (DF03)."""
        capk = cls(rid=rid, index=index, suite=suite, key=key, exponent=exponent, expiry=expiry)
        if checksum != capk.checksum:
            raise CapkError(
                f"CAPK {rid.hex().upper()}/{index:02X} checksum {checksum.hex().upper()} does not match "
                f"SHA-1(RID‖index‖key‖exponent) = {capk.checksum.hex().upper()}"
            )
        return capk

    @property
    def checksum(self) -> bytes:
        return capk_checksum(self.rid, self.index, self.key, self.exponent)

    @property
    def modulus(self) -> bytes:
        if self.suite.signature != "rsa":
            raise CapkError("an SM2 CA public key has no modulus; use .key (x‖y)")
        return self.key

    @property
    def hash_algorithm_indicator(self) -> int:
        return ALGORITHM_INDICATORS[self.suite.signature][0]

    @property
    def key_algorithm_indicator(self) -> int:
        return ALGORITHM_INDICATORS[self.suite.signature][1]

    def is_expired(self, today: dt.date) -> bool:
        return self.expiry is not None and today > self.expiry


class TestCa(NamedTuple):
    """A generated test CA: the private key (``RsaPrivateKey`` or 32 SM2 bytes) and its CAPK."""

    __test__ = False  # not a pytest test class

    private_key: rsa.RsaPrivateKey | bytes
    capk: Capk


def generate_test_ca(
    suite: Suite,
    *,
    rid: bytes = UNIONPAY_RID,
    index: int | None = None,
    bits: int = TEST_CA_RSA_BITS,
    exponent: int = 3,
    expiry: dt.date | None = None,
) -> TestCa:
    """A fresh CA key pair for tests and the demo HSM (never a scheme key).

    RSA (INTL): ``bits`` modulus, ``exponent`` 3 or 65537. SM2 (GM): a random key on the
    recommended curve; ``bits`` and ``exponent`` are ignored. ``index`` defaults to E0 (RSA) or
    E1 (SM2).
    """
    if index is None:
        index = TEST_CA_INDEX[suite.signature]
    if suite.signature == "sm2":
        private_key: rsa.RsaPrivateKey | bytes = sm2.generate_private_key()
        key, key_exponent = sm2.public_key(private_key), b""
    else:
        private_key = rsa.generate_rsa_key(bits, exponent)
        key, key_exponent = private_key.modulus_bytes, private_key.exponent_bytes
    capk = Capk(rid=rid, index=index, suite=suite, key=key, exponent=key_exponent, expiry=expiry)
    return TestCa(private_key, capk)


CAPK_TABLE_MAX = 256  # a terminal holds a few dozen CA keys; more in a table file is a mistake


@lru_cache(maxsize=1)
def scheme_test_capks() -> dict[tuple[bytes, int], Capk]:
    """The shipped table of scheme TEST CA public keys (``citycard/data/capk_test_keys.json``).

    Each record's checksum is verified as it loads, so a corrupted table fails loudly here.
    """
    text = resources.files("citycard.data").joinpath("capk_test_keys.json").read_text(encoding="utf-8")
    records = json.loads(text)["capks"]
    if len(records) > CAPK_TABLE_MAX:
        raise CapkError(f"CAPK table has {len(records)} keys, at most {CAPK_TABLE_MAX}")
    table: dict[tuple[bytes, int], Capk] = {}
    for record in records:
        rid, index = bytes.fromhex(record["rid"]), int(record["index"], 16)
        if record["algorithm"] == "sm2":
            suite, key, exponent = GM, bytes.fromhex(record["public_key"]), b""
        else:
            suite, key, exponent = INTL, bytes.fromhex(record["modulus"]), bytes.fromhex(record["exponent"])
        expiry = dt.date.fromisoformat(record["expiry"]) if record.get("expiry") else None
        table[rid, index] = Capk.from_record(
            rid=rid,
            index=index,
            suite=suite,
            key=key,
            exponent=exponent,
            checksum=bytes.fromhex(record["checksum"]),
            expiry=expiry,
        )
    return table


def find_capk(rid: bytes, index: int, table: dict[tuple[bytes, int], Capk] | None = None) -> Capk:
    """The CA public key for RID (9F06) and index (8F/9F22); CapkError names what is known instead."""
    known = scheme_test_capks() if table is None else table
    capk = known.get((rid, index))
    if capk is None:
        indexes = sorted(i for r, i in known if r == rid)
        hint = (
            f"known indexes for this RID: {', '.join(f'{i:02X}' for i in indexes)}"
            if indexes
            else f"no key for RID {rid.hex().upper()} in the table"
        )
        raise CapkError(f"unknown CAPK {rid.hex().upper()}/{index:02X}: {hint}")
    return capk


__all__ = [
    "Capk",
    "CapkError",
    "TestCa",
    "capk_checksum",
    "find_capk",
    "generate_test_ca",
    "scheme_test_capks",
]
