"""Issuer scripts after an online ARQC: EC top-up (圈存), limits, blocks, PIN change, secure messaging."""

from __future__ import annotations

from citycard.crypto.iad import parse_iad
from citycard.crypto.script import build_script_command, ec_load_command, pin_change_command
from citycard.emv.bits import CVR

h = bytes.fromhex
OK = 0x9000


def online(card, kit) -> tuple[bytes, bytes]:
    """GPO + first GENERATE AC (ARQC); returns (ATC, ARQC) for the issuer's script MACs."""
    card.gpo_contact(amount=0)
    answer = kit.format1(card.gac(0x80, card.cdol1(amount=0))[0])
    assert answer["9F27"] == h("80")
    return answer["9F36"], answer["9F26"]


def script(card, atc, arqc, *, cla=0x84, ins, p1=0, p2=0, data=b"") -> bytes:
    return build_script_command(
        card.issuer_key(1, atc),
        cla=cla,
        ins=ins,
        p1=p1,
        p2=p2,
        data=data,
        tag_9f36=atc,
        tag_9f26=arqc,
        suite=card.suite,
    )


def load(card, atc, arqc, balance_fen: int) -> bytes:
    return ec_load_command(
        card.issuer_key(1, atc), new_balance_fen=balance_fen, tag_9f36=atc, tag_9f26=arqc, suite=card.suite
    )


def test_ec_top_up_with_a_correct_mac(card, kit):
    atc, arqc = online(card, kit)
    saves = card.ctx.saves
    assert card.send(load(card, atc, arqc, 30_000)) == (b"", OK)
    assert card.ctx.saves == saves + 1
    assert card.send("80CA9F7900")[0] == h("9F7906000000030000")
    record, sw = card.send("00B2016400")  # load log, SFI 12
    assert sw == OK
    assert record[:14] == h("9F79") + h("000000005000") + h("000000030000")
    assert record[14:17] == h("250314") and record[-2:] == atc
    data, _ = card.gac(0x40, card.cdol2())  # 72-style: the card still completes
    assert parse_iad(data[13:]).ec_balance_fen == 30_000


def test_ec_top_up_with_a_wrong_mac_is_refused_and_reported(card, kit):
    atc, arqc = online(card, kit)
    command = bytearray(load(card, atc, arqc, 30_000))
    command[-1] ^= 0x01
    assert card.send(bytes(command))[1] == 0x6988
    assert card.app.counters.ec_balance_fen == 5000
    card.gpo_contact()
    data, _ = card.gac(0x40, card.cdol1())
    cvr = CVR.decode(parse_iad(data[13:]).cvr)
    assert "issuer_script_processing_failed" in cvr and "issuer_script_commands_processed=1" in cvr
    assert data[2] == 0x80  # asked for a TC, went online


def test_top_up_above_the_balance_limit(card, kit):
    atc, arqc = online(card, kit)
    assert card.send(load(card, atc, arqc, 100_001))[1] == 0x6A80  # 9F77 is 1000.00
    assert card.app.counters.ec_balance_fen == 5000
    assert card.send(load(card, atc, arqc, 100_000))[1] == OK


def test_script_preconditions(card, kit):
    card.gpo_contact()
    data, _ = card.gac(0x40, card.cdol1())  # offline TC: no ARQC in this transaction
    assert data[2] == 0x40
    assert card.send("04DA9F790A0000000300000102030400")[1] == 0x6985
    atc, arqc = online(card, kit)
    assert card.send("80DA9F790A00000003000001020304")[1] == 0x6982  # no secure messaging
    assert card.send(script(card, atc, arqc, ins=0xDA, p1=0x9F, p2=0x1F, data=bytes(6)))[1] == 0x6A88
    assert card.send(script(card, atc, arqc, ins=0xDA, p1=0x9F, p2=0x78, data=bytes(5)))[1] == 0x6700
    assert card.send("841E000002AABB")[1] == 0x6700
    assert card.send(script(card, atc, arqc, ins=0x1E, p1=1))[1] == 0x6A86


def test_put_data_limits(card, kit):
    atc, arqc = online(card, kit)
    command = script(card, atc, arqc, cla=0x04, ins=0xDA, p1=0x9F, p2=0x78, data=h("000000000500"))
    assert card.send(command)[1] == OK
    assert card.send("80CA9F7800")[0] == h("9F7806000000000500")
    command = script(card, atc, arqc, cla=0x04, ins=0xDA, p1=0x9F, p2=0x6D, data=h("00000000ABCD"))
    assert card.send(command)[1] == 0x6A80  # not BCD


def test_application_block_and_unblock(card, kit):
    atc, arqc = online(card, kit)
    assert card.send(script(card, atc, arqc, ins=0x1E))[1] == OK
    data, _ = card.gac(0x40, card.cdol2())
    assert data[2] == 0x00  # blocked before the second GENERATE AC: AAC
    assert card.select("contact") == 0x6283
    card.gpo_contact()
    assert card.gac(0x40, card.cdol1())[0][2] == 0x00  # offline request on a blocked application
    atc, arqc = online(card, kit)  # the terminal may still ask ARQC, so the issuer can unblock
    assert card.send(script(card, atc, arqc, ins=0x18))[1] == OK
    assert card.select("contact") == OK


def test_card_block_is_exposed_to_the_os(card, kit):
    atc, arqc = online(card, kit)
    assert not card.app.blocks_card
    assert card.send(script(card, atc, arqc, ins=0x16))[1] == OK
    assert card.app.blocks_card and card.ctx.card_blocked
    assert card.send("80CA9F7900")[1] == 0x6A81
    assert card.select("contact") == 0x6A81


def test_pin_change_with_and_without_the_current_pin(card, kit):
    card_ac_key = kit.card_keys(card.suite)[0]
    for current, new in ((kit.PIN, "654321"), (None, "9876")):
        atc, arqc = online(card, kit)
        command = pin_change_command(
            mac_session_key=card.issuer_key(1, atc),
            enc_session_key=card.issuer_key(2, atc),
            new_pin=new,
            card_ac_key=card_ac_key,
            tag_9f36=atc,
            tag_9f26=arqc,
            suite=card.suite,
            current_pin=current,
        )
        assert card.send(command)[1] == OK
        card.gpo_contact()
        block = h(f"2{len(new):X}{new}".ljust(16, "F"))
        assert card.send(h("0020008008") + block)[1] == OK


def test_pin_unblock_resets_the_try_counter(card, kit):
    card.gpo_contact()
    for _ in range(3):
        card.send("0020008008249999FFFFFFFFFF")
    assert card.send("80CA9F1700")[0] == h("9F170100")
    atc, arqc = online(card, kit)
    assert card.send(script(card, atc, arqc, ins=0x24))[1] == OK
    assert card.send("80CA9F1700")[0] == h("9F170103")
