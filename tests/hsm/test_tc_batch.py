"""hsm.tc_batch's batched key steps equal crypto.keys' one-at-a-time ones, in both suites and with
ECB on libcrypto and on cryptography (the whole verify_taps: tests/clearing/test_record.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import require_service

from citycard.crypto import GM, INTL, libcrypto
from citycard.crypto.keys import derive_card_key, session_key
from citycard.hsm.tc_batch import _card_keys, _session_keys

SUITES = {"INTL": INTL, "GM": GM}
CARDS = st.lists(
    st.tuples(st.from_regex(r"[0-9]{12,19}", fullmatch=True), st.from_regex(r"[0-9]{2}", fullmatch=True)),
    min_size=1,
    max_size=12,
)
KEY = st.binary(min_size=16, max_size=16)


@settings(max_examples=150, deadline=None)
@given(suite=st.sampled_from(["INTL", "GM"]), imk=KEY, cards=CARDS)
def test_card_keys_of_many_cards_in_one_call_equal_derive_card_key(suite: str, imk: bytes, cards) -> None:  # type: ignore[no-untyped-def]
    got = _card_keys(imk, cards, SUITES[suite])
    assert got == [derive_card_key(imk, tag_5a=pan, tag_5f34=psn, suite=SUITES[suite]) for pan, psn in cards]


def _ecbs() -> list[tuple[str, object]]:
    fast = libcrypto.load()
    out: list[tuple[str, object]] = [("INTL", INTL.ecb_encrypt), ("GM", GM.ecb_encrypt)]
    if fast is not None:
        out += [("INTL", fast.tdes_ecb_encrypt), ("GM", fast.sm4_ecb_encrypt)]
    return out


def test_libcrypto_ecb_is_there() -> None:
    require_service(libcrypto.load() is not None, "the system's OpenSSL libcrypto 3 is not usable here")


@pytest.mark.parametrize(("suite", "ecb"), _ecbs())
@settings(max_examples=60, deadline=None)
@given(card_key=KEY, atcs=st.lists(st.binary(min_size=2, max_size=2), min_size=1, max_size=300))
def test_a_cards_session_keys_in_one_ecb_call_equal_session_key(
    suite: str, ecb, card_key: bytes, atcs
) -> None:  # type: ignore[no-untyped-def]
    got = _session_keys(card_key, atcs, SUITES[suite], ecb)
    assert got == [session_key(card_key, tag_9f36=atc, suite=SUITES[suite]) for atc in atcs]


def test_libcrypto_ecb_refuses_bad_lengths() -> None:
    fast = libcrypto.load()
    require_service(fast is not None, "the system's OpenSSL libcrypto 3 is not usable here")
    assert fast is not None
    with pytest.raises(ValueError, match="3DES ECB: key 16 bytes, got 8"):
        fast.tdes_ecb_encrypt(bytes(8), bytes(16))
    with pytest.raises(ValueError, match="SM4-ECB: data 16"):
        fast.sm4_ecb_encrypt(bytes(16), bytes(24))
    with pytest.raises(ValueError, match="DES-EDE3-ECB: data 8"):
        fast.tdes_ecb_encrypt(bytes(16), b"")
