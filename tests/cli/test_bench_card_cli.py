"""`citycard bench card`: the JSON shape scripts depend on, and the terminal's purchase sequence it times.

Figures are measured, not asserted (benchmarks are not tests); the PC/SC figure must be there when
pcscd with vpcd and pyscard are, and null when they are not.
"""

from __future__ import annotations

import json

import pytest

from citycard.cli.bench_card import PurchaseError, QpbocPurchase, qpboc_ec_purchase, read_balance_fen
from citycard.emv import encode_one
from citycard.reader import InProcessTransport, PcscUnavailableError, list_readers

SELECT_PPSE = "00A404000E325041592E5359532E444446303100"
DEBIT, EC = "A000000333010101", "A000000333010106"


def tlv(tag: str, *values: str) -> str:
    return encode_one(tag, bytes.fromhex("".join(values))).hex().upper()


def ppse(*entries: tuple[str, int]) -> str:
    listed = "".join(tlv("61", tlv("4F", aid), tlv("87", f"{priority:02X}")) for aid, priority in entries)
    return tlv("6F", tlv("84", b"2PAY.SYS.DDF01".hex()), tlv("A5", tlv("BF0C", listed))) + "9000"


def fci(aid: str, pdol: str) -> str:
    return tlv("6F", tlv("84", aid), tlv("A5", tlv("9F38", pdol) if pdol else "")) + "9000"


def gpo(afl: str) -> str:
    return (
        tlv("77", tlv("82", "3D00"), tlv("94", afl), tlv("9F36", "000A"), tlv("9F26", "1122334455667788"))
        + "9000"
    )


def pcsc_here() -> bool:
    try:
        import smartcard.scard  # noqa: F401

        return "Virtual PCD 00 00" in list_readers()
    except (ImportError, PcscUnavailableError):
        return False


def test_bench_card_json_shape(citycard):
    r = citycard("bench", "card", "--json", timeout=600)
    assert r.code == 0, r.err
    figures = json.loads(r.out)
    assert set(figures) == {
        "apdus_per_s",
        "qpboc_ec_purchases_per_s",
        "qpboc_ec_purchases_per_s_without_saves",
        "pcsc_apdu_round_trip_ms",
    }
    assert all(figures[name] > 0 for name in figures if name != "pcsc_apdu_round_trip_ms")
    if pcsc_here():
        assert figures["pcsc_apdu_round_trip_ms"] > 0
    else:
        assert figures["pcsc_apdu_round_trip_ms"] is None
        assert "PC/SC round trip not measured" in r.err


class ScriptedCard:
    """The card's answers are data: (expected C-APDU hex, R-APDU hex) in turn."""

    atr = bytes.fromhex("3B00")

    def __init__(self, script: list[tuple[str, str]]):
        self.script = list(script)

    def process(self, apdu: bytes) -> bytes:
        expected, answer = self.script.pop(0)
        assert apdu.hex().upper() == expected, f"expected {expected}, got {apdu.hex().upper()}"
        return bytes.fromhex(answer)


def run(script: list[tuple[str, str]], **options) -> QpbocPurchase:
    card = ScriptedCard(script)
    with InProcessTransport(card) as reader:
        purchase = qpboc_ec_purchase(reader, amount_fen=150, tag_9f37=bytes.fromhex("11223344"), **options)
    assert card.script == []
    return purchase


def test_the_purchase_takes_the_highest_priority_application_and_reads_the_afl():
    purchase = run(
        [
            (SELECT_PPSE, ppse((DEBIT, 2), (EC, 1))),
            (f"00A4040008{EC}00", fci(EC, "9F66049F0206DF6901")),
            ("80A800000D830B" + "28000000" + "000000000150" + "01" + "00", gpo("10010201")),
            ("00B2011400", tlv("70", tlv("5A", "6235489888019428")) + "9000"),
            ("00B2021400", tlv("70", tlv("9F74", b"ECC001".hex())) + "9000"),
        ],
        tag_df69=b"\x01",
    )
    assert purchase.aid == bytes.fromhex(EC)
    assert purchase.pdol_data == bytes.fromhex("2800000000000000015001")
    assert purchase.apdus == 5
    assert purchase.tags["9F26"] == bytes.fromhex("1122334455667788")
    assert [(sfi, record, oda) for sfi, record, _, oda in purchase.records] == [(2, 1, True), (2, 2, False)]
    assert purchase.static_data() == bytes.fromhex("5A086235489888019428")  # SFI ≤ 10: the 70 value only


def test_a_refused_gpo_is_a_purchase_error_naming_the_step():
    with pytest.raises(PurchaseError, match="GPO: card answered 6985"):
        run(
            [
                (SELECT_PPSE, ppse((EC, 1))),
                (f"00A4040008{EC}00", fci(EC, "")),
                ("80A80000028300" + "00", "6985"),
            ]
        )


def test_an_empty_ppse_and_a_ragged_afl_are_purchase_errors():
    with pytest.raises(
        PurchaseError, match=r"SELECT PPSE: card answered 9000 \(no application in the PPSE\)"
    ):
        run([(SELECT_PPSE, ppse())])
    with pytest.raises(
        PurchaseError, match="GPO: card answered 9000 \\(AFL of 3 bytes is not whole 4-byte entries"
    ):
        run(
            [
                (SELECT_PPSE, ppse((EC, 1))),
                (f"00A4040008{EC}00", fci(EC, "")),
                ("80A80000028300" + "00", gpo("100102")),
            ]
        )


def test_read_balance_selects_first_when_asked():
    card = ScriptedCard([(f"00A4040008{EC}00", fci(EC, "")), ("80CA9F7900", "9F7906000000009850" + "9000")])
    with InProcessTransport(card) as reader:
        assert read_balance_fen(reader, aid=bytes.fromhex(EC)) == 9850
