"""The authorisation pipeline through process_batch, on SQLite and PostgreSQL, both suites."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import func, select

from citycard.crypto.cryptogram import generate_arpc
from citycard.crypto.keys import session_key
from citycard.emv.tlv import TLV, decode_dict
from citycard.emv.tlv import encode as tlv_encode
from citycard.host.issuer import IssuerHost, tables
from citycard.host.issuer.codes import CRYPTOGRAM_FAILURE
from citycard.iso8583 import builders
from citycard.iso8583.message import decode, encode

from .conftest import ACCOUNT_FEN, EXPIRY, balance, healthy, next_stan

SUITE_NAMES = ["INTL", "GM"]
MERCHANT = "citybank:merchant:M00000000000001"


def postings(issuer) -> int:
    with issuer.engine.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(tables.messages).where(tables.messages.c.approved)
        ).scalar_one()


def one(issuer, request):
    (response,) = issuer.process_batch([request])
    return response


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_purchase_approved_moves_money_and_answers_arpc(issuer, enrol, suite):
    card = enrol(suite)
    request = card.request("purchase", 1_250)
    response = one(issuer, request)
    assert response["t"] == "0210" and response["39"] == "00"
    assert response["11"] == request["11"] and response["41"] == request["41"]
    assert len(response["38"]) == 6
    ic = decode_dict(response["55"])
    ac_sk = session_key(card.keys["AC"], tag_9f36=card.atc.to_bytes(2, "big"), suite=card.suite)
    arqc = decode_dict(request["55"])["9F26"]
    assert ic["91"] == generate_arpc(ac_sk, tag_9f26=arqc, tag_8a=b"00", suite=card.suite) + b"00"
    assert balance(issuer, card.account) == ACCOUNT_FEN - 1_250
    assert balance(issuer, MERCHANT) == 1_250
    assert healthy(issuer)
    encode(response)  # the answer is a valid CUPS message


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_wrong_arqc_is_declined_and_nothing_posted(issuer, enrol, suite):
    card = enrol(suite)
    response = one(issuer, card.request("purchase", 500, tamper=True))
    assert response["39"] == CRYPTOGRAM_FAILURE
    assert "55" not in response and "38" not in response  # no ARPC for a card that failed
    assert balance(issuer, card.account) == ACCOUNT_FEN
    assert postings(issuer) == 0
    assert healthy(issuer)


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_replayed_atc_is_declined(issuer, enrol, suite):
    card = enrol(suite)
    assert one(issuer, card.request("purchase", 100))["39"] == "00"
    again = card.request("purchase", 100, atc=card.atc)  # a new STAN, the same ATC
    response = one(issuer, again)
    assert response["39"] == "63"
    older = one(issuer, card.request("purchase", 100, atc=card.atc - 1 or 1))
    assert older["39"] == "63"
    assert balance(issuer, card.account) == ACCOUNT_FEN - 100
    assert healthy(issuer)


def test_suspicious_atc_jump_is_declined_then_tracked(issuer, enrol, config):
    card = enrol("INTL")
    card.atc = config.atc_jump_max + 5
    response = one(issuer, card.request("purchase", 100))
    assert response["39"] == "59"
    assert decode_dict(response["55"])["91"][-2:] == b"59"  # the card still authenticates the decline
    assert one(issuer, card.request("purchase", 100))["39"] == "00"  # next ATC: judged from the new mark
    assert balance(issuer, card.account) == ACCOUNT_FEN - 100


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_insufficient_funds(issuer, enrol, suite):
    card = enrol(suite, account_balance_fen=999)
    response = one(issuer, card.request("purchase", 1_000))
    assert response["39"] == "51"
    assert decode_dict(response["55"])["91"][-2:] == b"51"
    assert balance(issuer, card.account) == 999
    assert postings(issuer) == 0


def test_expired_card(issuer, enrol):
    card = enrol("GM", expiry=EXPIRY.replace(year=2020))
    request = card.request("purchase", 100)
    request["14"] = "2012"
    assert one(issuer, request)["39"] == "54"
    assert balance(issuer, card.account) == ACCOUNT_FEN


def test_expiry_in_f14_must_match_the_card(issuer, enrol):
    card = enrol("INTL")
    request = card.request("purchase", 100)
    request["14"] = "2901"
    assert one(issuer, request)["39"] == "54"


@pytest.mark.parametrize(("status", "rc"), [("blocked", "62"), ("lost", "41"), ("stolen", "43")])
def test_card_status_declines(issuer, enrol, status, rc):
    card = enrol("INTL", status=status)
    response = one(issuer, card.request("purchase", 100))
    assert response["39"] == rc
    assert balance(issuer, card.account) == ACCOUNT_FEN
    assert postings(issuer) == 0


def test_status_change_by_the_platform(issuer, enrol):
    card = enrol("GM")
    issuer.set_card_status(pan=card.pan, psn=card.psn, status="stolen")
    assert one(issuer, card.request("purchase", 100))["39"] == "43"


def test_unknown_card_and_unknown_psn(issuer, enrol):
    card = enrol("INTL")
    request = card.request("purchase", 100)
    request["23"] = "002"
    assert one(issuer, request)["39"] == "14"
    request = card.request("purchase", 100)
    request["2"] = "6235489999999999"
    assert one(issuer, request)["39"] == "14"


@pytest.mark.parametrize(
    ("change", "rc"),
    [
        (lambda r: r.pop("23"), "30"),  # no PSN
        (lambda r: r.update({"55": r["55"][:-3]}), "30"),  # truncated TLV
        (lambda r: r.update({"4": "000000000999"}), "13"),  # F4 disagrees with 9F02
        (lambda r: r.update({"49": "840"}), "30"),  # not CNY
    ],
)
def test_malformed_requests_get_a_precise_code_and_change_nothing(issuer, enrol, change, rc):
    card = enrol("INTL")
    request = card.request("purchase", 100)
    change(request)
    assert one(issuer, request)["39"] == rc
    assert balance(issuer, card.account) == ACCOUNT_FEN
    assert postings(issuer) == 0


def test_field55_without_a_required_tag(issuer, enrol):
    card = enrol("GM")
    objects = decode_dict(card.field55(100))
    del objects["9F37"]
    request = card.request("purchase", 100, ic=tlv_encode([TLV(t, v) for t, v in objects.items()]))
    assert one(issuer, request)["39"] == "30"


def test_a_contact_cvr_that_reports_no_arqc_is_a_format_error(issuer, enrol):
    card = enrol("INTL")
    response = one(issuer, card.request("purchase", 100, cvr=bytes.fromhex("900000")))  # "TC in GAC1"
    assert response["39"] == "30"
    assert balance(issuer, card.account) == ACCOUNT_FEN


def test_a_message_no_kind_fits_is_a_format_error(issuer):
    (response,) = issuer.process_batch([{"t": "0200", "3": "990000", "11": "000001", "41": "T0000001"}])
    assert response["t"] == "0210" and response["39"] == "30"


def test_limits(issuer, enrol, config):
    card = enrol("INTL", account_balance_fen=config.transaction_max_fen + 10)
    assert one(issuer, card.request("purchase", config.transaction_max_fen + 1))["39"] == "61"
    assert one(issuer, card.request("purchase", 0))["39"] == "13"
    assert balance(issuer, card.account) == config.transaction_max_fen + 10


def test_daily_limit(issuer, enrol, config):
    tight = IssuerHost(replace(config, daily_max_fen=1_500), engine=issuer.engine, hsm=issuer.hsm)
    card = enrol("GM")
    card.issuer = tight
    assert one(tight, card.request("purchase", 1_000))["39"] == "00"
    assert one(tight, card.request("purchase", 600))["39"] == "61"
    assert one(tight, card.request("purchase", 500))["39"] == "00"
    assert balance(tight, card.account) == ACCOUNT_FEN - 1_500


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_the_same_request_twice_gets_the_same_answer_and_posts_once(issuer, enrol, suite):
    card = enrol(suite)
    request = card.request("purchase", 700)
    first = one(issuer, request)
    second = one(issuer, dict(request))
    assert first == second and first["39"] == "00"
    both = issuer.process_batch([request, dict(request)])  # a copy inside one batch, after the store
    assert both == [first, first]
    assert balance(issuer, card.account) == ACCOUNT_FEN - 700
    assert postings(issuer) == 1


def test_copies_inside_one_batch_post_once(issuer, enrol):
    card = enrol("INTL")
    request = card.request("purchase", 300)
    answers = issuer.process_batch([request, dict(request), dict(request)])
    assert [a["39"] for a in answers] == ["00"] * 3 and answers[0] == answers[1] == answers[2]
    assert balance(issuer, card.account) == ACCOUNT_FEN - 300
    assert healthy(issuer)


def test_a_batch_of_many_cards_and_outcomes(issuer, enrol):
    cards = [enrol(suite) for suite in ("INTL", "GM", "INTL", "GM")]
    poor = enrol("GM", account_balance_fen=10)
    requests = [card.request("purchase", 100 + i) for i, card in enumerate(cards)]
    requests.insert(2, poor.request("purchase", 100))
    requests.append(cards[0].request("purchase", 50, tamper=True))
    requests.append(cards[1].request("purchase", 60))  # the same card twice in one batch
    answers = issuer.process_batch(requests)
    assert [a["39"] for a in answers] == ["00", "00", "51", "00", "00", CRYPTOGRAM_FAILURE, "00"]
    assert [a["11"] for a in answers] == [r["11"] for r in requests]
    assert balance(issuer, cards[1].account) == ACCOUNT_FEN - 101 - 60
    assert balance(issuer, MERCHANT) == 100 + 101 + 102 + 103 + 60
    assert healthy(issuer)


def test_answers_survive_the_wire(issuer, enrol):
    card = enrol("GM")
    request, _ = decode(encode(card.request("purchase", 100)))
    response = one(issuer, request)
    assert decode(encode(response))[0] == response


def test_authorisation_and_pre_authorisation_post_pending(issuer, enrol):
    card = enrol("INTL")
    for kind in ("authorisation", "pre_authorisation"):
        response = one(issuer, card.request(kind, 200))
        assert response["t"] == "0110" and response["39"] == "00"
    assert balance(issuer, card.account) == ACCOUNT_FEN - 400
    assert healthy(issuer)


def test_network_messages_are_not_the_issuers(issuer):
    terminal = builders.Terminal("T0000001", "M00000000000001")
    echo = builders.network(
        "echo", terminal=terminal, stan=next_stan(), when=builders.datetime.now(builders.UTC)
    )
    assert one(issuer, echo)["39"] == "00"


def test_concurrent_batches_lose_nothing(issuer, enrol):
    """Four threads post batches at once (one merchant account: a hot row); every approval is
    posted exactly once, balances are exact and the invariants hold."""
    from concurrent.futures import ThreadPoolExecutor

    cards = [enrol("INTL" if i % 2 else "GM") for i in range(8)]
    rounds = 5
    batches = [
        [cards[thread * 2 + j].request("purchase", 10 + j) for j in range(2)]
        for thread in range(4)
        for _ in range(rounds)
    ]
    # each thread owns two cards, so the ATCs of a card arrive in order
    by_thread = [batches[t * rounds : (t + 1) * rounds] for t in range(4)]

    def run(mine):
        return [issuer.process_batch(batch) for batch in mine]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, by_thread))
    codes = [answer["39"] for per_thread in results for batch in per_thread for answer in batch]
    assert codes == ["00"] * (4 * rounds * 2)
    for card_index, card in enumerate(cards):
        assert balance(issuer, card.account) == ACCOUNT_FEN - rounds * (10 + card_index % 2)
    assert balance(issuer, MERCHANT) == 4 * rounds * (10 + 11)
    assert postings(issuer) == 4 * rounds * 2
    assert healthy(issuer)


def test_a_failing_message_answers_96_alone_and_is_not_stored(issuer, enrol, config):
    """An HSM refusal in one message (its IMK-AC label points nowhere) sinks only that message;
    its retransmission is processed afresh once the key is there."""
    good_a, bad, good_b = enrol("GM"), enrol("INTL"), enrol("GM")
    intl = config.keys["INTL"]
    broken_keys = {**config.keys, "INTL": replace(intl, imk_ac="no-such-key")}
    broken = IssuerHost(replace(config, keys=broken_keys), engine=issuer.engine, hsm=issuer.hsm)
    requests = [
        good_a.request("purchase", 100),
        bad.request("purchase", 100),
        good_b.request("purchase", 100),
    ]
    assert [a["39"] for a in broken.process_batch(requests)] == ["00", "96", "00"]
    assert balance(issuer, bad.account) == ACCOUNT_FEN
    assert one(issuer, requests[1])["39"] == "00"  # not stored as 96: tried afresh with the right keys
    assert healthy(issuer)


def test_known_cards_are_read_by_id_and_a_new_psn_of_the_same_pan_still_found(issuer, enrol):
    """After its first batch a card is read by row id and its balance by account id (the issuer's
    caches); a second card of the same PAN (a replacement, PSN 02) is not in the cache and must
    still be found by PAN; the balances the issuer reads stay exact: an amount above the balance is
    refused (51) on the cached path too."""
    card = enrol("GM")
    assert one(issuer, card.request("purchase", 1_000))["39"] == "00"
    assert issuer._card_ids[(card.pan, 1)] > 0 and issuer._account_cache.get(card.account) is not None
    assert one(issuer, card.request("purchase", 2_000))["39"] == "00"  # by id now
    issuer.enrol_card(pan=card.pan, psn=2, suite=card.suite, pin=None, expiry=EXPIRY, account_balance_fen=500)
    second = replace(card, psn=2, atc=0, keys={})
    second.__post_init__()
    assert one(issuer, second.request("purchase", 400))["39"] == "00"
    assert one(issuer, second.request("purchase", 400))["39"] == "51"  # 100 fen left: cached balance read
    assert balance(issuer, card.account) == ACCOUNT_FEN - 3_000
    assert balance(issuer, second.account) == 100
    assert healthy(issuer)
