"""Personalisation by DGIs: every DGI checked, KCVs verified, completeness enforced."""

from __future__ import annotations

import pytest

from citycard.card.pboc import PbocApplication
from citycard.card.sw import CardError
from citycard.crypto.suite import GM, INTL

h = bytes.fromhex


def fresh(kit):
    return kit.Card(PbocApplication(kit.AID_DEBIT), kit.ScriptedContext(), INTL)


def store(card, dgi: int, data: bytes) -> int:
    try:
        card.app.store_data(dgi, data, card.ctx)
    except CardError as exc:
        return exc.sw
    return 0x9000


def test_a_full_personalisation_completes(card, kit):
    assert card.app.personalised
    assert (card.app.label, card.app.priority) == ("PBOC DEBIT", 1)
    assert card.app.secrets.suites() == [card.suite]


def test_not_a_pboc_aid():
    with pytest.raises(ValueError, match="not a PBOC AID"):
        PbocApplication(h("A0000000031010"))


@pytest.mark.parametrize(
    ("dgi", "data", "sw"),
    [
        (0x7F01, b"", 0x6A88),  # not a DGI of this application
        (0x0101, h("5A0112"), 0x6A80),  # not a 70 template
        (0x0102, h("70099F7906000000000100"), 0x6A80),  # 9F79 is GET DATA only
        (0x9104, h("7D000801"), 0x6A80),  # AFL entries are 4 bytes
        (0x9104, h("7D0008020100"), 0x6A80),  # first record after last
        (0x8000, bytes(47), 0x6A80),
        (0x9000, bytes(8), 0x6A80),
        (0x8010, h("1412341234FFFFFF"), 0x6A80),  # not format 2
        (0x9010, h("0304"), 0x6A80),  # counter above the limit
        (0x8040, bytes(32), 0x6A80),  # d = 0 is no SM2 key
        (0xA001, h("15030000400000"), 0x6A80),  # file type 03
        (0xA001, h("1501000040"), 0x6A80),
        (0x0D01, h("9F5102"), 0x6A80),  # malformed TLV
    ],
)
def test_malformed_dgis(kit, dgi, data, sw):
    assert store(fresh(kit), dgi, data) == sw


def test_kcvs_are_checked_in_either_order(kit):
    keys = b"".join(kit.card_keys(INTL))
    good = next(data for dgi, data in kit.dgis(INTL) if dgi == 0x9000)
    bad = bytes([good[0] ^ 1]) + good[1:]
    card = fresh(kit)
    assert store(card, 0x8000, keys) == 0x9000
    assert store(card, 0x9000, bad) == 0x6A80
    card = fresh(kit)
    assert store(card, 0x9000, bad) == 0x9000
    assert store(card, 0x8000, keys) == 0x6A80


def test_part14_kcvs_are_checked(kit):
    card = fresh(kit)
    assert store(card, 0xA001, h("15010000400000")) == 0x9000
    assert store(card, 0x9020, h("000000")) == 0x9000
    assert store(card, 0x8020, kit.CAPP_KEYS[0]) == 0x6A80
    assert store(card, 0x8020, b"".join(kit.CAPP_KEYS)) == 0x6A80  # two keys for one file


def test_inconsistent_rsa_crt_key(kit):
    card = fresh(kit)
    parts = [data for dgi, data in kit.dgis(INTL) if 0x8201 <= dgi <= 0x8205]
    parts[0] = (int.from_bytes(parts[0], "big") + 1).to_bytes(len(parts[0]), "big")  # q⁻¹ mod p off by one
    sws = [store(card, 0x8201 + i, part) for i, part in enumerate(parts)]
    assert sws == [0x9000] * 4 + [0x6A80]


@pytest.mark.parametrize(
    ("left_out", "reason"),
    [
        ({0x8000, 0x9000}, "no card keys"),
        ({0x9000}, "without their KCVs"),
        ({0x0202}, "records [2] that were not stored"),
        ({0x8201, 0x8202}, "ICC RSA key incomplete"),
        ({0x8020}, "without opening keys"),
    ],
)
def test_finish_names_what_is_missing(kit, left_out, reason):
    card = fresh(kit)
    for dgi, data in kit.dgis(INTL):
        if dgi not in left_out:
            card.app.store_data(dgi, data, card.ctx)
    with pytest.raises(CardError) as caught:
        card.app.finish_personalisation(card.ctx)
    assert caught.value.sw == 0x6985 and reason in caught.value.reason
    assert not card.app.personalised
    card.select("contact")
    assert card.send("80CA9F7900")[1] == 0x6985  # nothing answers before personalisation


def test_no_store_data_after_personalisation(card):
    with pytest.raises(CardError) as caught:
        card.app.store_data(0x0D01, h("9F51020156"), card.ctx)
    assert caught.value.sw == 0x6985


def finish_with(kit, items):
    card = fresh(kit)
    for dgi, data in items:
        card.app.store_data(dgi, data, card.ctx)
    with pytest.raises(CardError) as caught:
        card.app.finish_personalisation(card.ctx)
    assert caught.value.sw == 0x6985 and not card.app.personalised
    return caught.value.reason


def test_gm_gpo_data_is_refused_on_a_single_suite_card(kit):
    reason = finish_with(kit, [*kit.dgis(INTL), (0x9106, kit.AIP + kit.CONTACT_AFL)])
    assert reason == (
        "personalisation incomplete: 9106 is the GM contact GPO data of a card with both suites, "
        "but this card has only the INTL keys (its GPO data is 9104)"
    )


def test_a_dual_suite_card_needs_each_suites_gpo_data_and_icc_key(kit):
    dual = kit.dgis(INTL, suites=(INTL, GM))
    reason = finish_with(kit, [(dgi, data) for dgi, data in dual if dgi != 0x9106])
    assert reason.endswith(
        "a card with both suites' keys needs the contact GPO data of GM (9106) as well as that of INTL (9104)"
    )
    reason = finish_with(kit, [(dgi, data) for dgi, data in dual if dgi != 0x8040])
    assert reason.endswith(
        "the GM AIP (contact and contactless) announces DDA/CDA but there is no SM2 ICC private key (8040)"
    )
