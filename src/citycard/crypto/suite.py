"""The two PBOC algorithm suites as one object each.

Every crypto path takes a :class:`Suite` and calls its members, so no PBOC function is written
twice: INTL is 3DES + SHA-1 + RSA (JR/T 0025.7), GM is SM4 + SM3 + SM2 (JR/T 0025.17).
The card chooses per transaction from the terminal's DF69 (00 = INTL, 01 = GM; pboc-notes §2.1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from citycard.crypto import blockcipher, hashes, mac


@dataclass(frozen=True, slots=True)
class Suite:
    name: str  # "INTL" or "GM"
    cipher: str  # "3des" or "sm4": the CLI's --alg value
    signature: str  # "rsa" or "sm2"
    block_bytes: int  # 8 for 3DES, 16 for SM4
    hash_bytes: int  # 20 for SHA-1, 32 for SM3
    tag_df69: int  # SM algorithm support indicator value selecting this suite
    iad_algorithm_id: int  # byte 8 of the PBOC IAD (pboc-notes §2.4: 01 3DES, 04 SM4)
    ecb_encrypt: Callable[[bytes, bytes], bytes]
    master_ecb_encrypt: Callable[[bytes, bytes], bytes]  # same, for long-lived keys (context reused)
    ecb_decrypt: Callable[[bytes, bytes], bytes]
    cbc_encrypt: Callable[..., bytes]
    cbc_decrypt: Callable[..., bytes]
    block_mac: Callable[[bytes, bytes], bytes]  # MAC over padded data: 8 bytes (alg 3) / 16 (SM4)
    hash: Callable[[bytes], bytes]
    key_bytes: int = 16

    def check_key(self, key: bytes, what: str = "key") -> None:
        if len(key) != self.key_bytes:
            raise ValueError(f"{self.cipher.upper()} {what} must be {self.key_bytes} bytes, got {len(key)}")

    def __repr__(self) -> str:
        return f"Suite.{self.name}"


INTL = Suite(
    name="INTL",
    cipher="3des",
    signature="rsa",
    block_bytes=8,
    hash_bytes=20,
    tag_df69=0x00,
    iad_algorithm_id=0x01,
    ecb_encrypt=blockcipher.tdes_ecb_encrypt,
    master_ecb_encrypt=blockcipher.tdes_master_ecb_encrypt,
    ecb_decrypt=blockcipher.tdes_ecb_decrypt,
    cbc_encrypt=blockcipher.tdes_cbc_encrypt,
    cbc_decrypt=blockcipher.tdes_cbc_decrypt,
    block_mac=mac.retail_mac,
    hash=hashes.sha1,
)

GM = Suite(
    name="GM",
    cipher="sm4",
    signature="sm2",
    block_bytes=16,
    hash_bytes=32,
    tag_df69=0x01,
    iad_algorithm_id=0x04,
    ecb_encrypt=blockcipher.sm4_ecb_encrypt,
    master_ecb_encrypt=blockcipher.sm4_master_ecb_encrypt,
    ecb_decrypt=blockcipher.sm4_ecb_decrypt,
    cbc_encrypt=blockcipher.sm4_cbc_encrypt,
    cbc_decrypt=blockcipher.sm4_cbc_decrypt,
    block_mac=mac.sm4_cbc_mac,
    hash=hashes.sm3,
)

SUITES = (INTL, GM)


def suite_for_alg(alg: str) -> Suite:
    """The suite for a CLI ``--alg`` value (``3des`` or ``sm4``)."""
    for suite in SUITES:
        if suite.cipher == alg.lower():
            return suite
    raise ValueError(f"unknown algorithm {alg!r}: expected 3des or sm4")


def suite_for_df69(tag_df69: int) -> Suite:
    """The suite selected by the SM algorithm support indicator DF69 (00 INTL, 01 GM)."""
    for suite in SUITES:
        if suite.tag_df69 == tag_df69:
            return suite
    raise ValueError(f"DF69 must be 00 (international) or 01 (SM), got {tag_df69:02X}")
