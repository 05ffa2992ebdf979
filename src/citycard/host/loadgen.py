"""Authorisation traffic with REAL ARQCs, for ``bench auth`` and the host's crash and fuzz tests.

A :class:`TestCard` holds the clear AC card key of a test card, exported from the HSM with
:meth:`SoftHSM.export_card_keys_for_personalisation` exactly as a card image gets it — test cards
only; ``repr`` shows the KCV, never the key. Each call to :meth:`TestCard.field_55` uses the next
ATC and computes the ARQC over the PBOC CDOL1 data (pboc-notes §4.2: 9F02‖9F03‖9F1A‖95‖5F2A‖9A‖9C‖
9F37‖82‖9F36‖CVR) with :mod:`citycard.crypto`, as the card would; the issuer then verifies it in its HSM.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from citycard.crypto.cryptogram import generate_ac, pboc_ac_data
from citycard.crypto.iad import build_iad
from citycard.crypto.keys import key_check_value, session_key
from citycard.crypto.suite import Suite
from citycard.emv import TLV
from citycard.emv import encode as tlv_encode
from citycard.emv.bits import CVR
from citycard.iso8583.builders import CHINA_STANDARD_TIME, Card, Terminal, financial

ATC_MAX = 0xFFFF
# CVR byte 1 after a first GENERATE AC that returned an ARQC: second GAC not requested (b8-7 = 10),
# first GAC returned ARQC (b6-5 = 10) → A0 (pboc-notes §2.4 IAD table; emv.bits.CVR); the issuer checks it.
CVR_ONLINE = CVR.encode(["second_gac_not_requested", "first_gac_returned_arqc"])
AIP = bytes.fromhex("7C00")
CURRENCY = bytes.fromhex("0156")
COUNTRY = bytes.fromhex("0156")
DKI, CVN = 0x01, 0x01


def _n12(amount_fen: int) -> bytes:
    return bytes.fromhex(f"{amount_fen:012d}")


@dataclass
class TestCard:
    """A test card's identity, suite and AC card key; ``atc`` is the last ATC used."""

    __test__ = False  # not a pytest test class

    pan: str
    psn: int
    suite: Suite
    ac_key: bytes = field(repr=False)
    expiry_yymm: str = "3012"
    atc: int = 0

    def __repr__(self) -> str:
        kcv = key_check_value(self.ac_key, suite=self.suite).hex().upper()
        return f"TestCard({self.pan}/{self.psn:02d}, {self.suite.name}, AC KCV {kcv}, ATC {self.atc})"

    @property
    def iso_card(self) -> Card:
        return Card(pan=self.pan, psn=self.psn, expiry_yymm=self.expiry_yymm)

    def field_55(self, *, amount_fen: int, when: datetime, tamper: bool = False) -> bytes:
        """F55 of the next online transaction: the tags the issuer needs, with a real ARQC.

        ``tamper`` flips a bit of the ARQC (a forged cryptogram, for tests).
        """
        if self.atc >= ATC_MAX:
            raise ValueError(f"card {self.pan} has used its last ATC")
        self.atc += 1
        atc = self.atc.to_bytes(2, "big")
        local = when.astimezone(CHINA_STANDARD_TIME)
        tags = {
            "9F02": _n12(amount_fen), "9F03": bytes(6), "9F1A": COUNTRY, "95": bytes(5),
            "5F2A": CURRENCY, "9A": bytes.fromhex(local.strftime("%y%m%d")), "9C": b"\x00",
            "9F37": secrets.token_bytes(4), "82": AIP, "9F36": atc,
        }  # fmt: skip
        iad = build_iad(dki=DKI, cvn=CVN, cvr=CVR_ONLINE, suite=self.suite)
        data = pboc_ac_data(
            tag_9f02=tags["9F02"], tag_9f03=tags["9F03"], tag_9f1a=tags["9F1A"], tag_95=tags["95"],
            tag_5f2a=tags["5F2A"], tag_9a=tags["9A"], tag_9c=tags["9C"], tag_9f37=tags["9F37"],
            tag_82=tags["82"], tag_9f36=atc, cvr=iad[3:7],
        )  # fmt: skip
        arqc = generate_ac(session_key(self.ac_key, tag_9f36=atc, suite=self.suite), data, suite=self.suite)
        if tamper:
            arqc = bytes([arqc[0] ^ 0x01]) + arqc[1:]
        objects = [TLV("9F26", arqc), TLV("9F27", b"\x80"), TLV("9F10", iad)]
        objects += [TLV(tag, value) for tag, value in tags.items()]
        return tlv_encode(objects)

    def request(
        self,
        kind: str,
        *,
        terminal: Terminal,
        stan: int,
        amount_fen: int,
        when: datetime,
        tamper: bool = False,
    ) -> dict[str, Any]:
        """A 0100/0200 request of ``kind`` (builders.KINDS) with F55 for the next ATC."""
        ic = self.field_55(amount_fen=amount_fen, when=when, tamper=tamper)
        return financial(kind, terminal=terminal, card=self.iso_card, amount_fen=amount_fen, stan=stan,
                         when=when, ic=ic)  # fmt: skip


def test_card(
    hsm: Any, imk_ac_label: str, *, pan: str, psn: int, suite: Suite, expiry_yymm: str = "3012"
) -> TestCard:
    """A :class:`TestCard` whose AC key the HSM derives from the issuer's IMK-AC."""
    keys = hsm.export_card_keys_for_personalisation(
        {"AC": imk_ac_label}, tag_5a=pan, tag_5f34=f"{psn:02d}", suite=suite
    )
    return TestCard(pan=pan, psn=psn, suite=suite, ac_key=keys["AC"], expiry_yymm=expiry_yymm)


test_card.__test__ = False  # type: ignore[attr-defined]
