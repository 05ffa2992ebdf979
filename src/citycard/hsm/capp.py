"""Part 14 (extended application, 分段扣费) operations of the HSM: the transit operator's PSAM side.

pboc-notes §7: a reader writes a trip record with ``84 DE 00 (SFI<<3) Lc`` ‖ record ‖ MAC, the MAC
"computed in the operator's PSAM with a key diversified from card data", CBC with IV
``00…00 ‖ ATC`` (the ATC of the same qPBOC transaction's GPO). Here the operator's master key is an
HSM key (type IMK-ENC, usage ``card-keys``) and a card's **record key** is its option-A derivation
with the card's PAN and PSN — the same derivation as the issuer's card keys (UNCERTAIN: the PSAM
diversification of a real operator is its own). The record key reaches the card once, enciphered
under the file's opening key (DGI 8020, itself option A from ``imk-capp-<suite>-<SFI>``) in an
``APPEND RECORD`` (``04 E2``) that opens the record; clear keys never leave this class.

MAC (both commands, the card's rule in ``citycard.card.pboc.capp``): ISO 9797-1 padding method 2
over CLA INS P1 P2 Lc ‖ data, CBC with IV = zeros ‖ ATC (8 bytes for 3DES, 16 for SM4), the
suite's block MAC (retail MAC / SM4 CBC-MAC), leftmost 4 bytes.
"""

from __future__ import annotations

from typing import Any

from citycard.crypto.blockcipher import xor
from citycard.crypto.mac import pad_method_2
from citycard.crypto.suite import Suite

CAPP_MAC_BYTES = 4
CAPP_KEY_BYTES = 16
RECORD_ID_BYTES = 2
RECORD_BYTES_MAX = 250  # a short APDU's data minus the MAC
USAGE = "card-keys"  # the operator master derives per-card keys, as an IMK does


def capp_mac(key: bytes, *, header: bytes, data: bytes, tag_9f36: bytes, suite: Suite) -> bytes:
    """The 4-byte MAC of a Part 14 command (module note).

    >>> from citycard.crypto.suite import INTL
    >>> len(capp_mac(bytes(16), header=bytes.fromhex("84DE00A806"), data=b"\\x05\\x70", tag_9f36=b"\\x00\\x07", suite=INTL))
    4
    """
    if len(header) != 5:
        raise ValueError(f"a Part 14 MAC header is CLA INS P1 P2 Lc (5 bytes), got {len(header)}")
    if len(tag_9f36) != 2:
        raise ValueError(f"ATC (9F36) must be 2 bytes, got {len(tag_9f36)}")
    padded = pad_method_2(header + data, suite.block_bytes)
    iv = bytes(suite.block_bytes - 2) + tag_9f36
    first = xor(padded[: suite.block_bytes], iv)
    return suite.block_mac(key, first + padded[suite.block_bytes :])[:CAPP_MAC_BYTES]


def _check_record(record: bytes) -> None:
    if not RECORD_ID_BYTES <= len(record) <= RECORD_BYTES_MAX:
        raise ValueError(
            f"a Part 14 record is {RECORD_ID_BYTES} to {RECORD_BYTES_MAX} bytes, got {len(record)}"
        )


def _check_sfi(sfi: int) -> None:
    if not 1 <= sfi <= 30:
        raise ValueError(f"SFI must be 1 to 30, got {sfi}")


class CappOperations:
    """Mixed into :class:`~citycard.hsm.SoftHSM` (which provides ``_card_key``)."""

    _card_key: Any

    def capp_update_command(
        self, operator_label: str, *, tag_5a: str, tag_5f34: str, tag_9f36: bytes, sfi: int, record: bytes
    ) -> bytes:
        """UPDATE CAPP DATA CACHE with MAC: ``84 DE 00 (SFI<<3) Lc`` ‖ record ‖ MAC under the card's
        record key (derived from ``operator_label`` with PAN/PSN), IV zeros ‖ ``tag_9f36``."""
        _check_sfi(sfi)
        _check_record(record)
        suite, key = self._card_key(operator_label, USAGE, tag_5a=tag_5a, tag_5f34=tag_5f34)
        header = bytes([0x84, 0xDE, 0x00, sfi << 3, len(record) + CAPP_MAC_BYTES])
        return header + record + capp_mac(key, header=header, data=record, tag_9f36=tag_9f36, suite=suite)

    def capp_append_command(
        self,
        opening_label: str,
        operator_label: str,
        *,
        tag_5a: str,
        tag_5f34: str,
        tag_9f36: bytes,
        sfi: int,
        record: bytes,
    ) -> bytes:
        """APPEND RECORD opening one record: ``04 E2 00 (SFI<<3) Lc`` ‖ E(K_open)[record key] ‖ record ‖
        MAC(K_open). K_open = option A of ``opening_label`` (the file's ``imk-capp-…-SFI``), the record
        key = option A of ``operator_label``; both for this card, neither leaves the HSM in clear."""
        _check_sfi(sfi)
        _check_record(record)
        suite, opening = self._card_key(opening_label, USAGE, tag_5a=tag_5a, tag_5f34=tag_5f34)
        operator_suite, record_key = self._card_key(operator_label, USAGE, tag_5a=tag_5a, tag_5f34=tag_5f34)
        if operator_suite != suite:
            raise ValueError(f"opening key is {suite.name}, operator key {operator_suite.name}: one suite")
        data = suite.ecb_encrypt(opening, record_key[:CAPP_KEY_BYTES]) + record
        header = bytes([0x04, 0xE2, 0x00, sfi << 3, len(data) + CAPP_MAC_BYTES])
        return header + data + capp_mac(opening, header=header, data=data, tag_9f36=tag_9f36, suite=suite)
