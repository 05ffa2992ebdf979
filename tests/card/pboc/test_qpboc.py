"""qPBOC: the card decides in GPO; offline EC purchase with TC + fDDA, online and decline answers."""

from __future__ import annotations

import pytest

from citycard.crypto import oda
from citycard.crypto.cryptogram import pboc_ac_data, verify_ac
from citycard.crypto.iad import parse_iad, verify_iad_mac
from citycard.crypto.suite import GM, INTL
from citycard.emv.bits import CTQ, CVR
from citycard.emv.dol import build_dol
from citycard.emv.tlv import decode_dict

h = bytes.fromhex
OK = 0x9000


def gpo_answer(card, **kwargs) -> dict[str, bytes]:
    data, sw = card.gpo_qpboc(**kwargs)
    assert sw == OK
    return decode_dict(data)["77"]


def verify_tc(card, kit, answer, values) -> None:
    iad = parse_iad(answer["9F10"])
    ac_data = pboc_ac_data(
        tag_9f02=values["9F02"],
        tag_9f03=values["9F03"],
        tag_9f1a=values["9F1A"],
        tag_95=values["95"],
        tag_5f2a=values["5F2A"],
        tag_9a=values["9A"],
        tag_9c=values["9C"],
        tag_9f37=values["9F37"],
        tag_82=answer["82"],
        tag_9f36=answer["9F36"],
        cvr=iad.cvr_field,
    )
    sk_ac = card.issuer_key(0, answer["9F36"])
    assert verify_ac(sk_ac, ac_data, tag_9f26=answer["9F26"], suite=card.suite)
    assert verify_iad_mac(
        card.issuer_key(1, answer["9F36"]), tag_9f10=answer["9F10"], tag_9f36=answer["9F36"]
    )


def test_offline_ec_purchase(card, kit):
    seen = []
    card.ctx.on_save = lambda: seen.append((card.app.counters.atc, card.app.counters.ec_balance_fen))
    answer = gpo_answer(card, amount=200, ttq="28000000")  # fDDA version 00
    assert answer["9F27"] == h("40")
    assert seen == [(6, 4800)]  # ATC, balance (and log) saved once, before the answer
    assert answer["9F5D"] == h("000000004800")
    assert answer["94"] == kit.QPBOC_AFL and answer["57"][:8] == h(kit.PAN)
    assert parse_iad(answer["9F10"]).ec_balance_fen == 4800
    assert CVR.decode(parse_iad(answer["9F10"]).cvr)[1] == "first_gac_returned_tc"
    verify_tc(card, kit, answer, card.qpboc_values(amount=200, ttq="28000000"))
    result = oda.verify_dynamic_signature(kit.pki(card.suite.name).icc_public, answer["9F4B"], h("A1B2C3D4"))
    assert result.valid, result.reasons
    assert card.send("80CA9F7900")[0] == h("9F7906000000004800")
    log, sw = card.send("00B2015C00")
    assert sw == OK and log[6:12] == h("000000000200") and log[-2:] == h("0006")
    assert card.gac(0x40, card.cdol1())[1] == 0x6985  # the AC was in the GPO


def test_fdda_version_01_signs_the_rewritten_9f69(card, kit):
    answer = gpo_answer(card, amount=300, ttq="28000080")
    record, sw = card.send("00B2011C00")  # the last record, SFI 3
    assert sw == OK
    tag_9f69 = decode_dict(record)["70"]["9F69"]
    assert tag_9f69[0] == 0x01 and tag_9f69[5:7] == answer["9F6C"]
    terminal = oda.fdda_terminal_dynamic_data(
        version=1, tag_9f37=h("A1B2C3D4"), tag_9f02=h("000000000300"), tag_5f2a=h("0156"), tag_9f69=tag_9f69
    )
    result = oda.verify_dynamic_signature(kit.pki(card.suite.name).icc_public, answer["9F4B"], terminal)
    assert result.valid, result.reasons
    assert result.fields["icc_dynamic_number"] == tag_9f69[1:5]
    card.select("contactless")
    assert card.send("00B2011C00")[0] == card.app.data.records[3, 1]  # next transaction: as personalised


def test_online_when_above_single_limit_and_decline_offline_only(make_card, kit):
    card = make_card(values={"balance_fen": 90_000})
    answer = gpo_answer(card, amount=25_000, ttq="26000000")  # above 9F78 (200.00), below 9F6B
    assert answer["9F27"] == h("80") and "9F4B" not in answer and "9F5D" not in answer
    assert answer["9F63"] == h("30313233343536373839414243444546")
    assert CTQ.decode(answer["9F6C"]) == ["go_online_if_oda_fails"]  # no CVM below the CVM limit
    answer = gpo_answer(card, amount=35_000, ttq="26000000")  # above the card CVM limit 9F6B (300.00)
    assert set(CTQ.decode(answer["9F6C"])) == {"go_online_if_oda_fails", "online_pin_required"}
    assert card.app.counters.ec_balance_fen == 90_000
    answer = gpo_answer(card, amount=25_000, ttq="28000000")  # offline-only reader
    assert answer["9F27"] == h("00")
    assert card.app.counters.ec_balance_fen == 90_000


def test_cvm_required_offline_asks_for_a_signature(card):
    answer = gpo_answer(card, amount=100, ttq="2A400000")  # signature supported, CVM required
    assert answer["9F27"] == h("40")
    assert "signature_required" in CTQ.decode(answer["9F6C"])


def test_reset_threshold_sends_online_capable_readers_online(card):
    answer = gpo_answer(card, amount=4500, ttq="26000000")  # 50.00 − 45.00 < 10.00
    assert answer["9F27"] == h("80")
    answer = gpo_answer(card, amount=4500, ttq="28000000")  # offline-only: approve anyway
    assert answer["9F27"] == h("40") and answer["9F5D"] == h("000000000500")


def test_qpboc_without_ttq_qpboc_bit(card):
    card.select("contactless")
    values = card.qpboc_values(amount=100, ttq="08000000")
    assert card.gpo(build_dol(card.app.data.fci_tag("contactless", "9F38"), values))[1] == 0x6985


@pytest.mark.parametrize(("df69", "expected"), [(0x00, INTL), (0x01, GM), (0x02, INTL)])
def test_suite_chosen_from_df69_on_a_dual_suite_card(kit, df69, expected):
    card = kit.new_card(INTL, suites=(INTL, GM))
    answer = gpo_answer(card, amount=100, ttq="28000000", DF69=bytes([df69]))
    assert parse_iad(answer["9F10"]).suite is expected
    card.suite = expected
    verify_tc(card, kit, answer, card.qpboc_values(amount=100, ttq="28000000", DF69=bytes([df69])))


@pytest.mark.parametrize("df69", [0x00, 0x01])
def test_single_suite_card_uses_the_suite_it_has(card, df69):
    answer = gpo_answer(card, amount=100, ttq="28000000", DF69=bytes([df69]))
    assert parse_iad(answer["9F10"]).suite is card.suite
