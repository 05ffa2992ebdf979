"""Reversals, EC loads with their top-up script, platform scripts and advices (DF31), both suites."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from citycard.crypto.keys import session_key
from citycard.crypto.script import script_mac
from citycard.emv.tlv import TLV, decode, decode_dict, encode
from citycard.host.issuer import IssuerError, tables
from citycard.iso8583 import builders

from .conftest import ACCOUNT_FEN, EC_FEN, TERMINAL, WHEN, balance, healthy, next_stan

SUITE_NAMES = ["INTL", "GM"]


def one(issuer, request):
    (response,) = issuer.process_batch([request])
    return response


def card_row(issuer, card):
    with issuer.engine.connect() as conn:
        return conn.execute(select(tables.cards).where(tables.cards.c.pan == card.pan)).one()


def scripts_in(response) -> dict[str, list[tuple[bytes, bytes]]]:
    """{"71": [(9F18, 86), …], "72": […]} from a response's field 55."""
    out: dict[str, list[tuple[bytes, bytes]]] = {"71": [], "72": []}
    for obj in decode(response.get("55", b"")):
        if obj.tag in out:
            children = {child.tag: child.value for child in obj.children}
            out[obj.tag].append((children["9F18"], children["86"]))
    return out


def mac_ok(card, request, command: bytes) -> bool:
    ic = decode_dict(request["55"])
    sk = session_key(card.keys["MAC"], tag_9f36=ic["9F36"], suite=card.suite)
    expected = script_mac(
        sk, header=command[:5], tag_9f36=ic["9F36"], tag_9f26=ic["9F26"], data=command[5:-4], suite=card.suite
    )
    return expected == command[-4:]


# --- reversals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_a_reversal_sent_three_times_restores_once(issuer, enrol, suite):
    card = enrol(suite)
    purchase = card.request("purchase", 900)
    assert one(issuer, purchase)["39"] == "00"
    assert balance(issuer, card.account) == ACCOUNT_FEN - 900
    reversal = builders.reversal(purchase)
    answers = [one(issuer, dict(reversal)) for _ in range(3)]
    assert [a["t"] for a in answers] == ["0410"] * 3 and [a["39"] for a in answers] == ["00"] * 3
    # the same reversal retransmitted with a new transmission time is a new message: still once
    later = {**reversal, **builders.time_fields(WHEN.replace(minute=9))}
    assert one(issuer, later)["39"] == "00"
    assert balance(issuer, card.account) == ACCOUNT_FEN
    assert balance(issuer, "citybank:merchant:M00000000000001") == 0
    assert card_row(issuer, card).day_total_fen == 0
    assert healthy(issuer)


def test_reversal_in_the_same_batch_as_its_original(issuer, enrol):
    card = enrol("INTL")
    purchase = card.request("purchase", 400)
    answers = issuer.process_batch([purchase, builders.reversal(purchase), builders.reversal(purchase)])
    assert [a["39"] for a in answers] == ["00", "00", "00"]
    assert balance(issuer, card.account) == ACCOUNT_FEN
    assert healthy(issuer)


def test_reversal_of_unknown_and_of_declined_originals(issuer, enrol):
    card = enrol("GM")
    never_sent = card.request("purchase", 100)
    assert one(issuer, builders.reversal(never_sent))["39"] == "25"
    declined = card.request("purchase", 100, tamper=True)
    assert one(issuer, declined)["39"] != "00"
    assert one(issuer, builders.reversal(declined))["39"] == "00"  # found; nothing to undo
    assert balance(issuer, card.account) == ACCOUNT_FEN
    assert healthy(issuer)


def test_an_original_arriving_after_its_reversal_is_declined(issuer, enrol):
    """An acquirer that timed out reverses at once; the delayed original must not be approved then."""
    card = enrol("INTL")
    purchase = card.request("purchase", 800)
    assert one(issuer, builders.reversal(purchase))["39"] == "25"
    late = one(issuer, purchase)
    assert late["39"] == "22" and "38" not in late
    assert one(issuer, dict(purchase)) == late  # and stays declined
    assert balance(issuer, card.account) == ACCOUNT_FEN
    assert healthy(issuer)


def test_reversal_before_its_original_in_one_batch(issuer, enrol):
    card = enrol("GM")
    purchase = card.request("purchase", 800)
    answers = issuer.process_batch([builders.reversal(purchase), purchase])
    assert [a["39"] for a in answers] == ["25", "22"]  # as across batches: the late original is refused
    assert balance(issuer, card.account) == ACCOUNT_FEN
    assert healthy(issuer)


# --- EC load (圈存) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_ec_load_moves_money_and_answers_the_absolute_balance_script(issuer, enrol, suite):
    card = enrol(suite)
    request = card.request("ec_load", 2_500)
    response = one(issuer, request)
    assert response["39"] == "00"
    ((script_id, command),) = scripts_in(response)["72"]
    assert command[:5] == bytes.fromhex("04DA9F790A")
    assert command[5:11] == bytes.fromhex(f"{EC_FEN + 2_500:012d}")  # the NEW ABSOLUTE balance
    assert mac_ok(card, request, command)
    assert script_id[:2] == b"\xec\x00"
    assert balance(issuer, card.account) == ACCOUNT_FEN - 2_500
    assert balance(issuer, card.ec_account) == EC_FEN + 2_500
    assert card_row(issuer, card).ec_balance_fen == EC_FEN + 2_500
    assert healthy(issuer)


def test_ec_load_above_the_card_limit_is_refused(issuer, enrol):
    card = enrol("GM")
    limit = bytes.fromhex(f"{EC_FEN + 1_000:012d}")
    response = one(issuer, card.request("ec_load", 1_001, **{"9F77": limit}))
    assert response["39"] == "61"
    assert scripts_in(response)["72"] == []
    assert balance(issuer, card.ec_account) == EC_FEN
    ok = one(issuer, card.request("ec_load", 1_000, **{"9F77": limit}))
    assert ok["39"] == "00"
    # above the configured ceiling (1000 yuan) when the card sends no 9F77
    assert one(issuer, card.request("ec_load", 100_000))["39"] == "61"


def test_ec_load_with_a_forged_iad_balance_is_refused(issuer, enrol):
    card = enrol("INTL")
    card.ec_balance_fen = 50  # the card claims another balance than its MAC key can vouch for …
    ic = card.field55(1_000)
    objects = decode(ic)
    forged = []
    for obj in objects:
        if obj.tag == "9F10":
            value = bytearray(obj.value)
            value[-5] ^= 0x01  # … and the MAC no longer verifies
            obj = TLV("9F10", bytes(value))
        forged.append(obj)
    response = one(issuer, card.request("ec_load", 1_000, ic=encode(forged)))
    assert response["39"] == "05"
    assert balance(issuer, card.ec_account) == EC_FEN


def test_ec_load_reversal_restores_the_shadow(issuer, enrol):
    card = enrol("GM")
    load = card.request("ec_load", 700)
    assert one(issuer, load)["39"] == "00"
    assert one(issuer, builders.reversal(load))["39"] == "00"
    assert card_row(issuer, card).ec_balance_fen == EC_FEN
    assert balance(issuer, card.ec_account) == EC_FEN
    assert balance(issuer, card.account) == ACCOUNT_FEN
    assert healthy(issuer)


# --- platform scripts -------------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_queued_block_script_is_delivered_once_with_a_valid_mac(issuer, enrol, suite):
    card = enrol(suite)
    issuer.queue_script(pan=card.pan, psn=card.psn, kind="block")
    issuer.queue_script(pan=card.pan, psn=card.psn, kind="unblock")
    request = card.request("purchase", 100)
    response = one(issuer, request)
    assert response["39"] == "62"  # the card will block itself before its final AC: not approved
    assert balance(issuer, card.account) == ACCOUNT_FEN
    scripts = scripts_in(response)
    ((_, block),) = scripts["71"]
    ((_, unblock),) = scripts["72"]
    assert block[:5] == bytes.fromhex("841E000004") and mac_ok(card, request, block)
    assert unblock[:5] == bytes.fromhex("8418000004") and mac_ok(card, request, unblock)
    after = one(issuer, card.request("purchase", 100))  # delivered once; the card's status is the platform's
    assert after["39"] == "00" and scripts_in(after) == {"71": [], "72": []}


def test_a_blocked_card_still_gets_its_script(issuer, enrol):
    card = enrol("GM", status="blocked")
    issuer.queue_script(pan=card.pan, psn=card.psn, kind="card_block")
    request = card.request("purchase", 100)
    response = one(issuer, request)
    assert response["39"] == "62"
    assert decode_dict(response["55"])["91"][-2:] == b"62"
    ((_, command),) = scripts_in(response)["71"]
    assert command[:4] == bytes.fromhex("84160000") and mac_ok(card, request, command)


def test_a_replayed_cryptogram_gets_no_script(issuer, enrol):
    card = enrol("INTL")
    assert one(issuer, card.request("purchase", 100))["39"] == "00"
    issuer.queue_script(pan=card.pan, psn=card.psn, kind="block")
    replay = one(issuer, card.request("purchase", 100, atc=card.atc))
    assert replay["39"] == "63" and scripts_in(replay)["71"] == []
    assert len(scripts_in(one(issuer, card.request("purchase", 100)))["71"]) == 1  # kept for a fresh ATC


def test_queue_script_refusals(issuer, enrol):
    card = enrol("INTL")
    with pytest.raises(IssuerError, match="script kind"):
        issuer.queue_script(pan=card.pan, psn=card.psn, kind="format_c")
    with pytest.raises(IssuerError, match="no card"):
        issuer.queue_script(pan=card.pan, psn=7, kind="block")
    with pytest.raises(IssuerError, match="BINs"):
        issuer.queue_script(pan="4111111111111111", psn=1, kind="block")


# --- advices ----------------------------------------------------------------------------------


def advice(card, ic: bytes, amount_fen: int = 100):
    return builders.financial(
        "advice",
        terminal=TERMINAL,
        card=builders.Card(pan=card.pan, psn=card.psn),
        amount_fen=amount_fen,
        stan=next_stan(),
        when=WHEN,
        ic=ic,
    )


def test_script_results_are_recorded_once(issuer, enrol):
    card = enrol("GM")
    df31 = bytes.fromhex("2000000001") + bytes.fromhex("1100000002")
    message = advice(card, encode([TLV("9F36", b"\x00\x05"), TLV("DF31", df31)]))
    first = one(issuer, message)
    assert first["t"] == "0230" and first["39"] == "00"
    assert one(issuer, dict(message)) == first
    with issuer.engine.connect() as conn:
        rows = conn.execute(select(tables.script_results.c.script_id, tables.script_results.c.result)).all()
        kinds = conn.execute(select(tables.advices.c.kind)).scalars().all()
    assert sorted(rows) == [("00000001", 0x20), ("00000002", 0x11)]
    assert kinds == ["script_result"]


def test_offline_tc_upload_is_recorded(issuer, enrol):
    card = enrol("INTL")
    tc = card.field55(300)
    response = one(issuer, advice(card, tc, 300))
    assert response["39"] == "00"
    with issuer.engine.connect() as conn:
        row = conn.execute(select(tables.advices)).one()
    assert row.kind == "tc_upload" and row.amount_fen == 300 and bytes(row.ic_data) == tc
    assert balance(issuer, card.account) == ACCOUNT_FEN  # clearing is a later issue


# --- enrolment --------------------------------------------------------------------------------


def test_enrolment_refusals(issuer, enrol):
    from citycard.crypto import INTL

    card = enrol("INTL")
    with pytest.raises(IssuerError, match="already enrolled"):
        issuer.enrol_card(pan=card.pan, psn=1, expiry=WHEN.date(), suite=INTL, pin=None)
    with pytest.raises(IssuerError, match="PAN"):
        issuer.enrol_card(pan="62354", psn=1, expiry=WHEN.date(), suite=INTL, pin=None)
    with pytest.raises(IssuerError, match="status"):
        issuer.enrol_card(
            pan="6235480000000996", psn=1, expiry=WHEN.date(), suite=INTL, pin=None, status="gone"
        )
    with pytest.raises(IssuerError, match="fen"):
        issuer.enrol_card(pan="6235480000000996", psn=1, expiry=WHEN.date(), suite=INTL, pin=None,
                          account_balance_fen=1.5)  # fmt: skip
    assert balance(issuer, card.account) == ACCOUNT_FEN
    assert healthy(issuer)


# --- stand-in advices (the switch approved while the issuer was down) --------------------------


def standin_advice(request):
    """The switch's 0220 for a stand-in approval: the original's fields, F39 00, F38 S + STAN."""
    advice = {k: v for k, v in request.items() if k not in ("52", "26", "64", "35")}
    advice.update({"t": "0220", "39": "00", "38": "S" + request["11"][-5:]})
    return advice


def test_standin_advice_is_booked_once(issuer, enrol):
    card = enrol("INTL")
    purchase = card.request("purchase", 1_500)
    advice = standin_advice(purchase)
    assert one(issuer, advice)["39"] == "00"
    assert one(issuer, dict(advice))["t"] == "0230"  # a retransmission: the stored answer
    assert balance(issuer, card.account) == ACCOUNT_FEN - 1_500
    # the original reaches the issuer late: same ledger identity, nothing more moves
    assert one(issuer, purchase)["39"] == "00"
    assert balance(issuer, card.account) == ACCOUNT_FEN - 1_500
    assert balance(issuer, "citybank:merchant:M00000000000001") == 1_500
    assert healthy(issuer)


def test_standin_advice_after_the_original_was_booked(issuer, enrol):
    card = enrol("GM")
    purchase = card.request("purchase", 700)
    assert one(issuer, purchase)["39"] == "00"
    assert one(issuer, standin_advice(purchase))["39"] == "00"
    assert balance(issuer, card.account) == ACCOUNT_FEN - 700
    both = card.request("purchase", 300)
    answers = issuer.process_batch([both, standin_advice(both)])  # in one batch
    assert [a["39"] for a in answers] == ["00", "00"]
    assert balance(issuer, card.account) == ACCOUNT_FEN - 1_000
    assert healthy(issuer)


def test_standin_approval_beyond_the_balance_goes_to_suspense(issuer, enrol):
    card = enrol("INTL", account_balance_fen=100)
    assert one(issuer, standin_advice(card.request("purchase", 5_000)))["39"] == "00"
    assert balance(issuer, card.account) == 100
    assert balance(issuer, "citybank:suspense") == -5_000
    assert balance(issuer, "citybank:merchant:M00000000000001") == 5_000
    assert healthy(issuer)


# --- settlement totals (0500) -----------------------------------------------------------------


def settlement(debit_count, debit_fen):
    return builders.settlement(
        terminal=TERMINAL, stan=next_stan(), when=WHEN, debit_count=debit_count, debit_fen=debit_fen
    )


def test_settlement_totals_agree_or_not(issuer, enrol):
    card = enrol("INTL")
    first, second = card.request("purchase", 1_000), card.request("purchase", 250)
    assert one(issuer, first)["39"] == "00"
    assert one(issuer, card.request("purchase", 99, tamper=True))["39"] != "00"  # declined: not counted
    assert one(issuer, builders.reversal(first))["39"] == "00"  # reversed: not counted
    load = card.request("ec_load", 500)
    answers = issuer.process_batch([second, load, settlement(2, 750)])  # this batch's own count too
    assert [a["39"] for a in answers] == ["00", "00", "00"]
    assert builders.parse_settlement_totals(answers[2])["debit_fen"] == 750
    wrong = one(issuer, settlement(3, 750))
    assert wrong["t"] == "0510" and wrong["39"] == "95"
    assert builders.parse_settlement_totals(wrong) == {
        "debit_count": 2, "debit_fen": 750, "credit_count": 0, "credit_fen": 0,
    }  # fmt: skip
    assert balance(issuer, card.account) == ACCOUNT_FEN - 750
    assert healthy(issuer)
