"""hsm._tc_native (the per-tap loop of tc_batch.verify_taps in C, on the system's libcrypto)
answers what the Python loop answers, in both suites, for good taps and for every kind of bad one;
taps outside its shape go to the Python loop; the whole verify_taps is the same with and without it
(tests/clearing/test_record.py checks it against SoftHSM.verify_arqc one by one)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import require_service

from citycard.crypto import libcrypto
from citycard.hsm import tc_batch
from citycard.hsm.tc_batch import _PADS, _SUITES, _block_ciphers, _session_keys, _verify_card

NATIVE = tc_batch._native_verify()
CODES = {"INTL": 0, "GM": 1}


def _python_codes(taps, keys) -> bytes:  # type: ignore[no-untyped-def]
    macs, ecbs = _block_ciphers()
    reasons: list[str | None] = [None] * len(taps)
    for i, (code, ac, mac) in enumerate(keys):
        _verify_card(taps, [i], "INTL" if code == 0 else "GM", ac, mac, macs, ecbs, reasons)
    return bytes(0 if r is None else 1 if r.startswith("TC") else 2 for r in reasons)


def test_the_c_loop_is_built_and_bound() -> None:
    require_service(libcrypto.load() is not None, "the system's OpenSSL libcrypto 3 is not usable here")
    require_service(NATIVE is not None, "hsm._tc_native was not built (no C compiler or Python headers)")


needs_native = pytest.mark.skipif(NATIVE is None, reason="hsm._tc_native is not built or not usable here")
KEY = st.binary(min_size=16, max_size=16)


@needs_native
@settings(max_examples=300, deadline=None)
@given(
    suite=st.sampled_from(["INTL", "GM"]),
    card_ac=KEY,
    card_mac=KEY,
    taps=st.lists(
        st.tuples(
            st.binary(min_size=2, max_size=2),  # ATC
            st.binary(min_size=8, max_size=120),  # AC input: a retail MAC needs 2 blocks
            st.binary(min_size=5, max_size=5),  # the IAD's balance
            st.sampled_from(("good", "tc", "mac", "random")),
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_the_c_loop_answers_as_the_python_loop(suite: str, card_ac: bytes, card_mac: bytes, taps) -> None:  # type: ignore[no-untyped-def]
    macs, ecbs = _block_ciphers()
    pads = _PADS[_SUITES[suite].block_bytes]
    rows, keys = [], []
    pair = (CODES[suite], card_ac, card_mac)
    for atc, ac_input, balance, kind in taps:
        (ac_key,) = _session_keys(card_ac, [atc], _SUITES[suite], ecbs[suite])
        (mac_key,) = _session_keys(card_mac, [atc], _SUITES[suite], ecbs[suite])
        tc = macs[suite](ac_key, ac_input + pads[len(ac_input) % len(pads)])[:8]
        mac = macs[suite](mac_key, atc + balance + b"\x00" + pads[8 % len(pads)])[:4]
        if kind == "tc":
            tc = bytes([tc[0] ^ 0x10]) + tc[1:]
        elif kind == "mac":
            mac = mac[:3] + bytes([mac[3] ^ 0x01])
        elif kind == "random":
            tc, mac = bytes(reversed(tc)), bytes(4)
        iad = bytes([7, 1, 1, 3, 0x90, 0, 0, _SUITES[suite].iad_algorithm_id, 0x0A, 1]) + balance + mac
        rows.append(("6235480000000001", "01", atc, ac_input, tc, iad))
        keys.append(pair)
    expected = _python_codes(rows, keys)
    assert NATIVE(rows, keys) == expected
    assert [k for k, (_, _, _, kind) in zip(expected, taps, strict=True) if kind == "good"] == [0] * sum(
        kind == "good" for *_, kind in taps
    )


@needs_native
@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda t, k: ((*t[:2], b"\x01", *t[3:]), k), ValueError, "9F36 must be 2 bytes, got 1"),
        (lambda t, k: ((*t[:4], bytes(7), *t[5:]), k), ValueError, "9F26 must be 8 bytes, got 7"),
        (lambda t, k: ((*t[:5], bytes(18)), k), ValueError, "9F10 must be 19 bytes, got 18"),
        (lambda t, k: ((*t[:3], bytearray(37), *t[4:]), k), TypeError, "AC input must be bytes"),
        (lambda t, k: ((*t[:3], bytes(4081), *t[4:]), k), ValueError, "AC input of 4081 bytes; 8 to 4080"),
        (lambda t, k: ((*t[:3], bytes(7), *t[4:]), k), ValueError, "AC input of 7 bytes; 8 to 4080"),
        (lambda t, k: (t, (2, *k[1:])), ValueError, "suite 2 is neither 0"),
        (lambda t, k: (t, (k[0], bytes(8), k[2])), ValueError, "AC card key must be 16 bytes, got 8"),
        (lambda t, k: (t[:5], k), TypeError, "a tap is a 6-tuple"),
    ],
)
def test_the_c_loop_refuses_what_it_does_not_take(change, error, message) -> None:  # type: ignore[no-untyped-def]
    tap = ("6235480000000001", "01", b"\x00\x01", bytes(37), bytes(8), bytes(19))
    keys = (0, bytes(16), bytes(16))
    bad_tap, bad_keys = change(tap, keys)
    with pytest.raises(error, match=message):
        NATIVE([tap, bad_tap], [keys, bad_keys])
    with pytest.raises(ValueError, match="taps and keys differ in length"):
        NATIVE([tap], [])


@needs_native
def test_bind_needs_every_address() -> None:
    from citycard.hsm import _tc_native

    addresses = libcrypto.addresses()
    assert addresses is not None
    with pytest.raises(KeyError, match="no address for SM4-CBC"):
        _tc_native.bind({k: v for k, v in addresses.items() if k != "SM4-CBC"})
    _tc_native.bind(addresses)  # bound again: the next tests use it
    taps, keys, expected = tc_batch._sample_taps()
    assert NATIVE(taps, keys) == expected


def test_verify_taps_the_same_without_the_c_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """verify_taps through the C loop, through Python (CITYCARD_NATIVE=0), and with a tap the C loop
    refuses (a 7-byte TC: the whole call goes to Python, which finds it does not verify) — the same
    reasons."""
    from types import SimpleNamespace

    from citycard.crypto import GM, INTL
    from citycard.hsm import SoftHSM

    hsm = SoftHSM.ephemeral()
    labels = {}
    for suite in (INTL, GM):
        name = suite.name.lower()
        hsm.generate_key(f"ac-{name}", "IMK-AC", suite)
        hsm.generate_key(f"mac-{name}", "IMK-MAC", suite)
        labels[suite.name] = SimpleNamespace(imk_ac=f"ac-{name}", imk_mac=f"mac-{name}")
    sample, _, _ = tc_batch._sample_taps()  # TCs under other keys: every one fails, either way
    answers = {}
    for mode in ("native", "python"):
        monkeypatch.setenv(tc_batch.NATIVE_ENV, "1" if mode == "native" else "0")
        answers[mode] = hsm.verify_taps(sample, labels)
    assert answers["native"] == answers["python"]
    assert all(reason and "does not verify" in reason for reason in answers["native"])
    monkeypatch.setenv(tc_batch.NATIVE_ENV, "1")
    odd = [*sample[:-1], (*sample[-1][:4], sample[-1][4][:7], sample[-1][5])]
    assert hsm.verify_taps(odd, labels) == answers["python"]


def test_native_env_names_agree() -> None:
    from citycard.clearing import record

    assert tc_batch.NATIVE_ENV == record.NATIVE_ENV
