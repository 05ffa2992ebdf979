"""`citycard bench card`: the JSON shape scripts depend on, and the kernel purchase it times.

Figures are measured, not asserted (benchmarks are not tests); the PC/SC figure must be there when
pcscd with vpcd and pyscard are, and null when they are not.
"""

from __future__ import annotations

import json

import pytest

from citycard.cli.bench_card import BalanceError, read_balance_fen
from citycard.emv import encode_one
from citycard.reader import InProcessTransport, PcscUnavailableError, list_readers

EC = "A000000333010106"


def tlv(tag: str, *values: str) -> str:
    return encode_one(tag, bytes.fromhex("".join(values))).hex().upper()


def fci(aid: str, pdol: str) -> str:
    return tlv("6F", tlv("84", aid), tlv("A5", tlv("9F38", pdol) if pdol else "")) + "9000"


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


def test_the_purchase_is_the_kernels_and_approves_offline_in_both_suites(tmp_path):
    """One terminal code path: the bench's purchase is run_qpboc (fDDA included), TC, balance down."""
    from citycard.card import load_card
    from citycard.cli.bench_card import bench_terminal, personalise_card, purchases_per_s
    from citycard.hsm import SoftHSM

    hsm = SoftHSM.ephemeral()
    for profile in ("pboc-ec-only-gm", "pboc-debit-intl"):
        path, prepared = personalise_card(tmp_path, hsm, profile=profile, balance_fen=1_000)
        card = load_card(path, hsm=hsm)
        card.interface = "contactless"
        assert purchases_per_s(card, bench_terminal(hsm, prepared.suites[0]), runs=3) > 0
        with InProcessTransport(card) as reader:
            assert read_balance_fen(reader, aid=prepared.aid) == 1_000 - 4  # warm-up + 3, 1 fen each


def test_a_refused_balance_inquiry_names_the_step():
    card = ScriptedCard([(f"00A4040008{EC}00", "6A82")])
    with (
        InProcessTransport(card) as reader,
        pytest.raises(BalanceError, match="SELECT AID: card answered 6A82"),
    ):
        read_balance_fen(reader, aid=bytes.fromhex(EC))


def test_read_balance_selects_first_when_asked():
    card = ScriptedCard([(f"00A4040008{EC}00", fci(EC, "")), ("80CA9F7900", "9F7906000000009850" + "9000")])
    with InProcessTransport(card) as reader:
        assert read_balance_fen(reader, aid=bytes.fromhex(EC)) == 9850
