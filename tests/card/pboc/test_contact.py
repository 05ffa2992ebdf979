"""Scripted contact transactions: GPO, READ RECORD, GET DATA, VERIFY, DDA, GENERATE AC, ARPC, CDA.

Every cryptogram is checked with the issuer's own pure crypto: IMK → card key → session key →
MAC over the PBOC AC input; every signature with the public key the terminal recovers from the
card's certificate chain.
"""

from __future__ import annotations

import pytest

from citycard.crypto import oda
from citycard.crypto.cryptogram import generate_arpc, pboc_ac_data, verify_ac
from citycard.crypto.iad import parse_iad, verify_iad_mac
from citycard.emv.bits import CVR
from citycard.emv.dol import split_dol_data
from citycard.emv.tlv import decode_dict, decode_one

h = bytes.fromhex
OK = 0x9000


def icc_key_from_card(card, kit):
    """The terminal's ODA: read the records, recover issuer and ICC keys from the certificates."""
    objects = {}
    for sfi, rec in ((1, 1), (2, 1), (2, 2)):
        data, sw = card.send(bytes([0x00, 0xB2, rec, (sfi << 3) | 4, 0x00]))
        assert sw == OK
        objects.update(decode_dict(data, flat=True))
    static = decode_one(card.app.data.records[1, 1]).value + kit.AIP
    capk = kit.pki(card.suite.name).ca.capk
    issuer = oda.recover_issuer_public_key(
        capk, objects["90"], objects.get("92", b""), objects.get("9F32", b""), pan=kit.PAN
    )
    assert issuer.valid, issuer.reasons
    icc = oda.recover_icc_public_key(
        issuer.public_key,
        objects["9F46"],
        objects.get("9F48", b""),
        objects.get("9F47", b""),
        static,
        pan=kit.PAN,
    )
    assert icc.valid, icc.reasons
    return icc.public_key


def ac_input(card, kit, cdol_data: bytes, atc: bytes, cvr: bytes, dol=None) -> bytes:
    values = split_dol_data(dol or kit.CDOL1, cdol_data)
    return pboc_ac_data(
        tag_9f02=values["9F02"],
        tag_9f03=values["9F03"],
        tag_9f1a=values["9F1A"],
        tag_95=values["95"],
        tag_5f2a=values["5F2A"],
        tag_9a=values["9A"],
        tag_9c=values["9C"],
        tag_9f37=values["9F37"],
        tag_82=kit.AIP,
        tag_9f36=atc,
        cvr=b"\x03" + cvr,
    )


def test_select_gives_fci_with_the_interface_template(card, kit):
    assert card.select("contact") == OK
    fci = decode_dict(card.app.fci(card.ctx))["6F"]
    assert fci["84"] == kit.AID_DEBIT
    assert fci["A5"]["9F38"] == kit.CONTACT_PDOL
    card.ctx.interface = "contactless"
    assert decode_dict(card.app.fci(card.ctx))["6F"]["A5"]["9F38"] == kit.QPBOC_PDOL


def test_gpo_contact_returns_aip_afl_and_saves_the_atc_first(card, kit, sealer):
    seen = []
    card.ctx.on_save = lambda: seen.append(card.app.to_image(sealer)["state"]["atc"])
    data, sw = card.gpo_contact(amount=1000)
    assert (data, sw) == (h("800A") + kit.AIP + kit.CONTACT_AFL, OK)
    assert seen == [6]  # ATC 5 → 6, saved during the command, before the answer


def test_gpo_errors(card):
    card.select("contact")
    assert card.send("80A8000002830000")[1] == 0x6700  # PDOL asks 10 bytes
    assert card.send("80A80000028100")[1] == 0x6A80  # not template 83
    assert card.send("80A80000038301AA00")[1] == 0x6700  # 83 says 1 byte, PDOL 10
    assert card.send("80A8010002830000")[1] == 0x6A86
    assert card.gpo_contact()[1] == OK
    assert card.gpo(bytes(10))[1] == 0x6985  # a second GPO in one transaction


def test_dispatch_status_words(card):
    card.select("contact")
    assert card.send("00C0000000")[1] == 0x6D00
    assert card.send("00CA9F7900")[1] == 0x6E00
    assert card.send("80B2010C00")[1] == 0x6E00


def test_read_record(card, kit):
    card.select("contact")
    data, sw = card.send("00B2010C00")
    assert sw == OK and decode_dict(data, flat=True)["5A"] == h(kit.PAN)
    assert card.send("00B2050C00")[1] == 0x6A83  # SFI 1 has no record 5
    assert card.send("00B2013C00")[1] == 0x6A82  # SFI 7 does not exist
    assert card.send("00B2010800")[1] == 0x6A86  # P2 b3–b1 must be 100
    assert card.send("00B2000C00")[1] == 0x6A86  # record 0


def test_get_data(card):
    card.select("contact")
    assert card.send("80CA9F7900") == (h("9F7906000000005000"), OK)
    assert card.send("80CA9F3600") == (h("9F36020005"), OK)
    assert card.send("80CA9F1700") == (h("9F170103"), OK)
    assert card.send("80CA9F1300") == (h("9F13020005"), OK)
    assert card.send("80CA9F7700") == (h("9F7706000000100000"), OK)
    assert card.send("80CA9F4F00")[0][3:] == h("9A039F21039F02069F03069F1A025F2A029F4E149C019F3602")
    assert card.send("80CA9F5300")[1] == 0x6A88  # allowed tag, not personalised
    assert card.send("80CA5A0000")[1] == 0x6A88  # not a GET DATA object


def test_verify_pin_paths(card):
    card.select("contact")
    assert card.send("0020008008241234FFFFFFFFFF")[1] == 0x6985  # before GPO
    card.gpo_contact()
    saves = card.ctx.saves
    assert card.send("0020008008249999FFFFFFFFFF")[1] == 0x63C2
    assert card.ctx.saves == saves + 1
    assert card.send("0020008008241234FFFFFFFFFF")[1] == OK  # resets the counter
    assert card.send("80CA9F1700")[0] == h("9F170103")
    assert card.send("0020008807241234FFFFFFFF")[1] == 0x6A86
    assert card.send("0020008807241234FFFFFFFF")[1] == 0x6A86
    assert card.send("0020008007241234FFFFFFFF")[1] == 0x6700
    for left in (2, 1, 0):
        assert card.send("0020008008249999FFFFFFFFFF")[1] == 0x63C0 | left
    assert card.send("0020008008241234FFFFFFFFFF")[1] == 0x6983  # even the right PIN: blocked
    data, _ = card.gac(0x80, card.cdol1())
    cvr = parse_iad(data[13:]).cvr
    assert {"pin_try_limit_exceeded", "offline_pin_verification_failed"} <= set(CVR.decode(cvr))


def test_get_challenge(card):
    card.select("contact")
    first, sw = card.send("0084000000")
    assert sw == OK and len(first) == 8
    assert card.send("0084000008")[0] != first
    assert card.send("0084000004")[1] == 0x6700
    assert card.send("0084010000")[1] == 0x6A86


def test_internal_authenticate_dda_verifies(card, kit):
    card.gpo_contact()
    icc_key = icc_key_from_card(card, kit)
    data, sw = card.send("0088000004CAFEBABE00")
    assert sw == OK
    signature = decode_dict(data)["80"]
    result = oda.verify_dynamic_signature(icc_key, signature, h("CAFEBABE"), suite=card.suite)
    assert result.valid, result.reasons
    assert len(result.fields["icc_dynamic_number"]) == 8
    data, _ = card.gac(0x80, card.cdol1())
    assert "dda_performed" in CVR.decode(parse_iad(data[13:]).cvr)
    assert card.send("0088000004CAFEBABE00")[1] == 0x6985  # after the first GENERATE AC


def test_first_gac_arqc_verified_by_the_issuer(card, kit):
    card.gpo_contact(amount=1000)
    cdol1 = card.cdol1(amount=1000)
    data, sw = card.gac(0x80, cdol1)
    assert sw == OK
    answer = kit.format1(data)
    assert answer["9F27"] == h("80") and answer["9F36"] == h("0006")
    iad = parse_iad(answer["9F10"])
    assert iad.suite is card.suite and iad.ec_balance_fen == 5000
    assert CVR.decode(iad.cvr)[:2] == ["second_gac_not_requested", "first_gac_returned_arqc"]
    sk_ac = card.issuer_key(0, answer["9F36"])
    assert verify_ac(
        sk_ac, ac_input(card, kit, cdol1, answer["9F36"], iad.cvr), tag_9f26=answer["9F26"], suite=card.suite
    )
    assert verify_iad_mac(
        card.issuer_key(1, answer["9F36"]), tag_9f10=answer["9F10"], tag_9f36=answer["9F36"]
    )


def _online(card, kit, *, arc=b"00", good_arpc=True, p1=0x40, via_external=False):
    card.gpo_contact(amount=1000)
    answer = kit.format1(card.gac(0x80, card.cdol1())[0])
    arpc = generate_arpc(
        card.issuer_key(0, answer["9F36"]), tag_9f26=answer["9F26"], tag_8a=arc, suite=card.suite
    )
    if not good_arpc:
        arpc = bytes(8)
    if via_external:
        sw = card.send(h("008200000A") + arpc + arc)[1]
        assert sw == (OK if good_arpc else 0x6300)
        data, sw = card.gac(p1, card.cdol2(arc=arc))
    else:
        data, sw = card.gac(p1, card.cdol2(arc=arc, tag_91=arpc + arc))
    assert sw == OK
    return answer, kit.format1(data)


@pytest.mark.parametrize("via_external", [False, True], ids=["tag91", "external"])
def test_arpc_round_trip_approves_with_tc(card, kit, via_external):
    _, second = _online(card, kit, via_external=via_external)
    assert second["9F27"] == h("40")
    cvr = parse_iad(second["9F10"]).cvr
    assert CVR.decode(cvr)[:2] == ["second_gac_returned_tc", "first_gac_returned_arqc"]
    sk_ac = card.issuer_key(0, second["9F36"])
    ac_data = ac_input(card, kit, card.cdol2(arc=b"00"), second["9F36"], cvr, dol=kit.CDOL2)
    assert verify_ac(sk_ac, ac_data, tag_9f26=second["9F26"], suite=card.suite)
    assert card.app.counters.last_online_atc == 6  # online counters reset
    assert card.gac(0x40, card.cdol2())[1] == 0x6985  # a third GENERATE AC


def test_wrong_arpc_declines_and_is_remembered(card, kit):
    _, second = _online(card, kit, good_arpc=False)
    assert second["9F27"] == h("00")
    assert "issuer_authentication_performed_and_failed" in CVR.decode(parse_iad(second["9F10"]).cvr)
    card.gpo_contact()
    data, _ = card.gac(0x40, card.cdol1())
    cvr = CVR.decode(parse_iad(data[13:]).cvr)
    assert "issuer_authentication_failure_on_last_online_transaction" in cvr
    assert data[2] == 0x80  # asked TC, the card goes online


def test_external_authenticate_failure_is_6300_and_declines(card, kit):
    _, second = _online(card, kit, good_arpc=False, via_external=True)
    assert second["9F27"] == h("00")


def test_issuer_decline_gives_aac(card, kit):
    _, second = _online(card, kit, arc=b"05")
    assert second["9F27"] == h("00")


def test_gac_order_and_parameters(card, kit):
    card.select("contact")
    assert card.gac(0x80, card.cdol1())[1] == 0x6985  # before GPO
    card.gpo_contact()
    assert card.gac(0x80, card.cdol1()[:-1])[1] == 0x6700
    assert card.gac(0xC0, card.cdol1())[1] == 0x6A86
    assert card.send(h("80AE8001") + bytes([len(card.cdol1())]) + card.cdol1())[1] == 0x6A86
    assert card.send("008200000A" + "00" * 10)[1] == 0x6985  # before an ARQC
    assert card.gac(0x80, card.cdol1())[1] == OK
    assert card.gac(0x80, card.cdol2())[1] == 0x6A86  # second GAC asks TC or AAC


def test_offline_tc_when_no_risk_and_aac_when_asked(card, kit):
    card.gpo_contact(amount=1000)
    data, sw = card.gac(0x40, card.cdol1(amount=1000))
    assert sw == OK and data[2] == 0x40
    assert card.app.counters.consecutive_offline == 1
    card.gpo_contact()
    data, _ = card.gac(0x00, card.cdol1())
    assert data[2] == 0x00


def test_cda_signature_verifies(card, kit):
    card.gpo_contact(amount=1000)
    icc_key = icc_key_from_card(card, kit)
    cdol1 = card.cdol1(amount=1000)
    data, sw = card.gac(0x90, cdol1)  # ARQC + CDA
    assert sw == OK
    inner = decode_dict(data)["77"]
    assert inner["9F27"] == h("80")
    gpo = next(apdu for apdu in card.sent if apdu.startswith("80A8"))
    pdol_data = gpo[14:-2]  # the 83 template's value
    result = oda.verify_cda(
        icc_key,
        inner["9F4B"],
        tag_9f37=h("0BADCAFE"),
        pdol_data=h(pdol_data),
        cdol1_data=cdol1,
        response_tlvs=data,
        suite=card.suite,
    )
    assert result.valid, result.reasons
    iad = parse_iad(inner["9F10"])
    assert verify_ac(
        card.issuer_key(0, inner["9F36"]),
        ac_input(card, kit, cdol1, inner["9F36"], iad.cvr),
        tag_9f26=result.fields["ac"],
        suite=card.suite,
    )


def test_contact_ec_purchase_debits_the_balance(card, kit):
    card.gpo_contact(amount=1200, ec=True)
    data, sw = card.gac(0x40, card.cdol1(amount=1200))
    assert sw == OK and data[2] == 0x40
    answer = kit.format1(data)
    assert parse_iad(answer["9F10"]).ec_balance_fen == 3800
    assert card.send("80CA9F7900")[0] == h("9F7906000000003800")
    log, sw = card.send("00B2015C00")  # transaction log SFI 11
    assert sw == OK and log[:3] == h("250314") and log[6:12] == h("000000001200")


def cvr_of(data: bytes) -> set[str]:
    return set(CVR.decode(parse_iad(data[13:]).cvr))


def test_velocity_sends_the_fourth_offline_transaction_online_and_online_resets_it(card, kit):
    for _ in range(3):  # 9F58 lower consecutive offline limit = 3
        card.gpo_contact(amount=100)
        assert card.gac(0x40, card.cdol1(amount=100))[0][2] == 0x40
    card.gpo_contact(amount=100)
    data, _ = card.gac(0x40, card.cdol1(amount=100))
    assert data[2] == 0x80 and "exceeded_velocity_checking_counters" in cvr_of(data)
    answer = kit.format1(data)
    arpc = generate_arpc(
        card.issuer_key(0, answer["9F36"]), tag_9f26=answer["9F26"], tag_8a=b"00", suite=card.suite
    )
    assert card.gac(0x40, card.cdol2(tag_91=arpc + b"00"))[0][2] == 0x40
    assert (card.app.counters.consecutive_offline, card.app.counters.cumulative_offline_fen) == (0, 0)
    card.gpo_contact(amount=100)
    assert card.gac(0x40, card.cdol1(amount=100))[0][2] == 0x40


def test_unable_to_go_online_approves_offline_until_the_upper_limit(make_card):
    card = make_card(values={"atc": 5, "last_online_atc": 0})  # a new card always asks to go online
    for expected in (0x40,) * 5 + (0x00,):  # 9F59 upper consecutive offline limit = 5
        card.gpo_contact(amount=100)
        data, _ = card.gac(0x40, card.cdol1(amount=100))
        assert data[2] == 0x80 and "new_card" in cvr_of(data)
        data, _ = card.gac(0x40, card.cdol2(arc=b"Z3"))
        assert data[2] == expected and "unable_to_go_online" in cvr_of(data)
    assert card.app.counters.consecutive_offline == 5


def test_sda_failure_declined_offline_is_reported_next_time(card):
    card.gpo_contact()
    data, _ = card.gac(0x00, card.cdol1(tvr=h("4000000000")))  # terminal declines: SDA failed
    assert data[2] == 0x00
    card.gpo_contact()
    data, _ = card.gac(0x40, card.cdol1())
    assert data[2] == 0x80 and "sda_failed_on_last_transaction_and_declined_offline" in cvr_of(data)


def test_arqc_left_without_second_gac_is_reported(card):
    card.gpo_contact()
    card.gac(0x80, card.cdol1())
    card.gpo_contact()  # the card was pulled out after the ARQC
    data, _ = card.gac(0x40, card.cdol1())
    assert data[2] == 0x80 and "last_online_transaction_not_completed" in cvr_of(data)


def test_pure_ec_application_approves_offline_only_from_the_balance(kit, suite):
    card = kit.Card(kit.PbocApplication(h("A000000333010106")), kit.ScriptedContext(), suite)
    card.personalise(kit.dgis(suite))
    card.gpo_contact(amount=100)
    assert card.gac(0x40, card.cdol1(amount=100))[0][2] == 0x80  # not EC: go online
    card.gpo_contact(amount=100, ec=True)
    assert card.gac(0x40, card.cdol1(amount=100))[0][2] == 0x40
    assert card.app.counters.ec_balance_fen == 4900
