"""Synthetic but cryptographically real TC uploads, for the clearing benchmark and crash tests.

Each synthetic card gets its AC and MAC card keys from the issuer's IMKs in the HSM — the same
export a card's personalisation uses (``export_card_keys_for_personalisation``) — and then taps as
a card would: ATC + 1, the EC balance down by the fare, the TC over the PBOC AC input and the IAD
with the balance MAC (pboc-notes §2.4, §4.2). The verifier cannot tell them from a virtual card's.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from citycard.clearing.record import CHINA_TIME
from citycard.crypto.cryptogram import generate_ac, pboc_ac_data
from citycard.crypto.iad import build_iad
from citycard.crypto.keys import session_key
from citycard.crypto.suite import Suite
from citycard.emv.tlv import encode_one

CVR_TC = bytes.fromhex("900000")  # UNCERTAIN: CVR bits of an offline qPBOC TC as our card sets them
AIP = bytes.fromhex("7C00")
COUNTRY = CURRENCY = bytes.fromhex("0156")
TTQ_TVR = bytes(5)


@dataclass
class SyntheticCard:
    pan: str
    psn: str
    suite: Suite
    ac_key: bytes
    mac_key: bytes
    balance_fen: int
    atc: int = 0

    def tap(self, amount_fen: int, when: dt.datetime, *, operator: str, route: str, vehicle: str,
            terminal_id: str, rng: random.Random) -> dict[str, Any]:  # fmt: skip
        """The upload dict of this card's next offline tap."""
        self.atc += 1
        self.balance_fen -= amount_fen
        atc = self.atc.to_bytes(2, "big")
        values = {
            "9F02": bytes.fromhex(f"{amount_fen:012d}"), "9F03": bytes(6), "9F1A": COUNTRY, "95": TTQ_TVR,
            "5F2A": CURRENCY, "9A": bytes.fromhex(when.astimezone(CHINA_TIME).strftime("%y%m%d")),
            "9C": b"\x00", "9F37": rng.randbytes(4), "82": AIP, "9F36": atc,
        }  # fmt: skip
        iad = build_iad(
            dki=1, cvn=1, cvr=CVR_TC, suite=self.suite, ec_balance_fen=self.balance_fen,
            mac_session_key=session_key(self.mac_key, tag_9f36=atc, suite=self.suite), tag_9f36=atc,
        )  # fmt: skip
        data = pboc_ac_data(
            tag_9f02=values["9F02"], tag_9f03=values["9F03"], tag_9f1a=values["9F1A"], tag_95=values["95"],
            tag_5f2a=values["5F2A"], tag_9a=values["9A"], tag_9c=values["9C"], tag_9f37=values["9F37"],
            tag_82=AIP, tag_9f36=atc, cvr=b"\x03" + CVR_TC,
        )  # fmt: skip
        tc = generate_ac(session_key(self.ac_key, tag_9f36=atc, suite=self.suite), data, suite=self.suite)
        field55 = encode_one("9F26", tc) + encode_one("9F27", b"\x40") + encode_one("9F10", iad)
        field55 += b"".join(encode_one(tag, value) for tag, value in values.items())
        field55 += encode_one("9F5D", bytes.fromhex(f"{self.balance_fen:012d}"))
        return {
            "pan": self.pan, "psn": self.psn, "amount_fen": amount_fen, "balance_fen_after": self.balance_fen,
            "field55": field55.hex().upper(), "terminal_id": terminal_id, "operator": operator,
            "route": route, "vehicle": vehicle, "tap_at": when.isoformat(),
        }  # fmt: skip


def make_cards(
    hsm: Any, labels: dict[str, Any], *, count: int, balance_fen: int, bin_: str = "623548"
) -> list[SyntheticCard]:
    """``count`` cards, alternating the suites of ``labels`` (``INTL``/``GM`` → SuiteLabels)."""
    from citycard.crypto.suite import SUITES

    by_name = {suite.name: suite for suite in SUITES}
    cards = []
    names = sorted(labels)
    for i in range(count):
        name = names[i % len(names)]
        pan, suite = f"{bin_}{i:010d}", by_name[name]
        keys = hsm.export_card_keys_for_personalisation(
            {"AC": labels[name].imk_ac, "MAC": labels[name].imk_mac}, tag_5a=pan, tag_5f34="01", suite=suite
        )
        cards.append(SyntheticCard(pan, "01", suite, keys["AC"], keys["MAC"], balance_fen))
    return cards


def taps(cards: list[SyntheticCard], count: int, *, start: dt.datetime, seed: int = 7,
         operators: tuple[str, ...] = ("bus-1", "taxi-1")) -> Iterator[dict[str, Any]]:  # fmt: skip
    """``count`` taps spread round-robin over ``cards`` (so each card's ATCs rise in order)."""
    rng = random.Random(seed)
    for i in range(count):
        card = cards[i % len(cards)]
        operator = operators[i % len(operators)]
        when = start + dt.timedelta(seconds=i // len(cards))
        yield card.tap(rng.choice((100, 150, 200, 250)), when, operator=operator, route=f"R{i % 7}",
                       vehicle=f"V{i % 31}", terminal_id=f"T{i % 97:04d}", rng=rng)  # fmt: skip
