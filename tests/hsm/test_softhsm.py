"""HSM operations by key reference, checked against the pure crypto functions and public vectors."""

from __future__ import annotations

import threading

import pytest

from citycard.crypto import GM, INTL
from citycard.crypto.cryptogram import generate_ac, generate_arpc, pboc_ac_data
from citycard.crypto.iad import build_iad
from citycard.crypto.keys import derive_card_key, key_check_value, session_key
from citycard.crypto.script import build_script_command, ec_load_command, pin_change_command
from citycard.hsm import HSMError, SoftHSM, softhsm

h = bytes.fromhex
IMK_AC = h("0123456789ABCDEFFEDCBA9876543210")
IMK_MAC = h("FEDCBA98765432100123456789ABCDEF")
IMK_ENC = h("89ABCDEF0123456776543210FEDCBA98")
PAN, PSN, ATC = "6217000012345678901", "01", h("0042")
SUITES = [INTL, GM]
AC_DATA = pboc_ac_data(
    tag_9f02=h("000000001000"),
    tag_9f03=h("000000000000"),
    tag_9f1a=h("0156"),
    tag_95=h("0000000000"),
    tag_5f2a=h("0156"),
    tag_9a=h("240501"),
    tag_9c=h("00"),
    tag_9f37=h("1A2B3C4D"),
    tag_82=h("7C00"),
    tag_9f36=ATC,
    cvr=h("03A00000"),
)
CARD = {"tag_5a": PAN, "tag_5f34": PSN}


def _hsm(suite) -> SoftHSM:
    hsm = SoftHSM.ephemeral()
    hsm.import_key("imk-ac", "IMK-AC", suite, IMK_AC)
    hsm.import_key("imk-mac", "IMK-MAC", suite, IMK_MAC)
    hsm.import_key("imk-enc", "IMK-ENC", suite, IMK_ENC)
    return hsm


def _session(imk: bytes, suite, atc: bytes = ATC) -> bytes:
    return session_key(derive_card_key(imk, tag_5a=PAN, tag_5f34=PSN, suite=suite), tag_9f36=atc, suite=suite)


@pytest.mark.parametrize("suite", SUITES)
def test_verify_arqc_accepts_the_card_cryptogram_and_nothing_else(suite):
    hsm = _hsm(suite)
    arqc = generate_ac(_session(IMK_AC, suite), AC_DATA, suite=suite)

    def verify(*, atc=ATC, data=AC_DATA, arqc=arqc, psn=PSN):
        return hsm.verify_arqc("imk-ac", tag_5a=PAN, tag_5f34=psn, tag_9f36=atc, data=data, tag_9f26=arqc)

    assert verify() is True
    assert verify(atc=h("0043")) is False
    assert verify(data=AC_DATA[:-1] + b"\x01") is False
    assert verify(arqc=bytes(a ^ b for a, b in zip(arqc, h("0000000000000001"), strict=True))) is False
    assert verify(psn="02") is False


def test_verify_arqc_on_the_pyemv_hsm_chain():
    # vectors-public §2.2: IMK-AC 0123…3210, PAN 12345678901234567, PSN 45 → ICC MK KCV FF08.
    hsm = _hsm(INTL)
    keys = hsm.export_card_keys_for_personalisation(
        {"AC": "imk-ac"}, tag_5a="12345678901234567", tag_5f34="45", suite=INTL
    )
    assert keys.kcvs()["AC"].startswith("FF08")


@pytest.mark.parametrize("suite", SUITES)
def test_arpc_equals_the_pure_function(suite):
    hsm = _hsm(suite)
    sk = _session(IMK_AC, suite)
    arqc = generate_ac(sk, AC_DATA, suite=suite)
    expected = generate_arpc(sk, tag_9f26=arqc, tag_8a=b"00", suite=suite)
    arpc = hsm.generate_arpc("imk-ac", **CARD, tag_9f36=ATC, tag_9f26=arqc, tag_8a=b"00")
    assert arpc == expected
    assert hsm.verify_arqc_and_generate_arpc(
        "imk-ac", **CARD, tag_9f36=ATC, data=AC_DATA, tag_9f26=arqc, tag_8a=b"00"
    ) == (True, expected)
    forged = bytes(8)
    ok, decline_arpc = hsm.verify_arqc_and_generate_arpc(
        "imk-ac", **CARD, tag_9f36=ATC, data=AC_DATA, tag_9f26=forged, tag_8a=b"05"
    )
    assert (ok, decline_arpc) == (False, generate_arpc(sk, tag_9f26=forged, tag_8a=b"05", suite=suite))


@pytest.mark.parametrize("suite", SUITES)
def test_ec_load_script_equals_the_pure_function(suite):
    hsm = _hsm(suite)
    arqc = h("1234567890ABCDEF")
    command = hsm.ec_load_script("imk-mac", **CARD, tag_9f36=ATC, tag_9f26=arqc, new_balance_fen=50_000)
    expected = ec_load_command(
        _session(IMK_MAC, suite), new_balance_fen=50_000, tag_9f36=ATC, tag_9f26=arqc, suite=suite
    )
    assert command == expected
    assert command.hex().upper().startswith("04DA9F790A000000050000")
    assert len(command) == 5 + 6 + 4


@pytest.mark.parametrize("suite", SUITES)
def test_script_command_and_pin_change_equal_the_pure_functions(suite):
    hsm = _hsm(suite)
    arqc = h("1234567890ABCDEF")
    unblock = hsm.script_command(
        "imk-mac", **CARD, tag_9f36=ATC, tag_9f26=arqc, cla=0x84, ins=0x18, p1=0, p2=0, data=b""
    )
    mac_sk = _session(IMK_MAC, suite)
    assert unblock == build_script_command(
        mac_sk, cla=0x84, ins=0x18, p1=0, p2=0, data=b"", tag_9f36=ATC, tag_9f26=arqc, suite=suite
    )
    for current in (None, "1234"):
        command = hsm.pin_change_script(
            "imk-mac",
            "imk-enc",
            "imk-ac",
            **CARD,
            tag_9f36=ATC,
            tag_9f26=arqc,
            new_pin="9999",
            current_pin=current,
        )
        assert command == pin_change_command(
            mac_session_key=mac_sk,
            enc_session_key=_session(IMK_ENC, suite),
            new_pin="9999",
            card_ac_key=derive_card_key(IMK_AC, tag_5a=PAN, tag_5f34=PSN, suite=suite),
            tag_9f36=ATC,
            tag_9f26=arqc,
            suite=suite,
            current_pin=current,
        )
        assert command[:4] == h("84240001" if current else "84240002")


@pytest.mark.parametrize("suite", SUITES)
def test_verify_iad_mac(suite):
    hsm = _hsm(suite)
    tag_9f10 = build_iad(
        dki=1,
        cvn=1,
        cvr=h("A00000"),
        suite=suite,
        ec_balance_fen=8_800,
        mac_session_key=_session(IMK_MAC, suite),
        tag_9f36=ATC,
    )
    assert hsm.verify_iad_mac("imk-mac", **CARD, tag_9f36=ATC, tag_9f10=tag_9f10) is True
    raised_balance = tag_9f10[:10] + h("0000990000") + tag_9f10[15:]  # 8 800 fen → 990 000 fen
    assert hsm.verify_iad_mac("imk-mac", **CARD, tag_9f36=ATC, tag_9f10=raised_balance) is False
    assert hsm.verify_iad_mac("imk-mac", **CARD, tag_9f36=h("0043"), tag_9f10=tag_9f10) is False
    other = GM if suite is INTL else INTL
    wrong_suite_iad = tag_9f10[:7] + bytes([other.iad_algorithm_id]) + tag_9f10[8:]
    with pytest.raises(HSMError, match=rf"IAD \(9F10\) names suite {other.name}, but key 'imk-mac' belongs"):
        hsm.verify_iad_mac("imk-mac", **CARD, tag_9f36=ATC, tag_9f10=wrong_suite_iad)


@pytest.mark.parametrize("suite", SUITES)
def test_key_usage_is_enforced_by_key_type(suite):
    hsm = _hsm(suite)
    hsm.generate_key("zmk", "ZMK", suite)
    arqc = h("1234567890ABCDEF")
    with pytest.raises(
        HSMError,
        match=r"'imk-ac' \(type IMK-AC\) may not MAC an issuer script command \(that needs IMK-MAC\)",
    ):
        hsm.ec_load_script("imk-ac", **CARD, tag_9f36=ATC, tag_9f26=arqc, new_balance_fen=1)
    with pytest.raises(
        HSMError, match=r"'imk-mac' \(type IMK-MAC\) may not verify an ARQC \(that needs IMK-AC\)"
    ):
        hsm.verify_arqc("imk-mac", **CARD, tag_9f36=ATC, data=AC_DATA, tag_9f26=arqc)
    with pytest.raises(HSMError, match=r"'imk-enc' \(type IMK-ENC\) may not generate an ARPC"):
        hsm.generate_arpc("imk-enc", **CARD, tag_9f36=ATC, tag_9f26=arqc, tag_8a=b"00")
    with pytest.raises(HSMError, match=r"'zmk' \(type ZMK\) may not verify the EC balance MAC"):
        hsm.verify_iad_mac("zmk", **CARD, tag_9f36=ATC, tag_9f10=bytes(8))
    with pytest.raises(HSMError, match=r"'imk-ac' \(type IMK-AC\) may not encipher issuer script data"):
        hsm.pin_change_script(
            "imk-mac", "imk-ac", "imk-ac", **CARD, tag_9f36=ATC, tag_9f26=arqc, new_pin="1234"
        )
    with pytest.raises(HSMError, match=r"card key MAC needs an IMK-MAC key; 'imk-ac' has type IMK-AC"):
        hsm.export_card_keys_for_personalisation({"MAC": "imk-ac"}, **CARD, suite=suite)


def test_pin_change_keys_must_share_one_suite():
    hsm = _hsm(INTL)
    hsm.import_key("gm-enc", "IMK-ENC", GM, IMK_ENC)
    with pytest.raises(HSMError, match=r"must share one suite; got MAC INTL, ENC GM, AC INTL"):
        hsm.pin_change_script(
            "imk-mac", "gm-enc", "imk-ac", **CARD, tag_9f36=ATC, tag_9f26=bytes(8), new_pin="1234"
        )


@pytest.mark.parametrize("suite", SUITES)
def test_export_card_keys_for_personalisation(suite):
    hsm = _hsm(suite)
    keys = hsm.export_card_keys_for_personalisation(
        {"AC": "imk-ac", "MAC": "imk-mac", "ENC": "imk-enc"}, **CARD, suite=suite
    )
    expected = {
        kind: derive_card_key(imk, tag_5a=PAN, tag_5f34=PSN, suite=suite)
        for kind, imk in (("AC", IMK_AC), ("MAC", IMK_MAC), ("ENC", IMK_ENC))
    }
    assert keys == expected
    shown = repr(keys) + str(keys)
    for key in expected.values():
        assert key.hex().upper() not in shown.upper()
    assert f"AC: KCV {key_check_value(expected['AC'], suite=suite).hex().upper()}" in shown
    other = GM if suite is INTL else INTL
    with pytest.raises(HSMError, match=rf"key 'imk-ac' belongs to suite {suite.name}, not {other.name}"):
        hsm.export_card_keys_for_personalisation({"AC": "imk-ac"}, **CARD, suite=other)
    with pytest.raises(HSMError, match=r"card key kind 'DEK' is not one of AC, MAC, ENC"):
        hsm.export_card_keys_for_personalisation({"DEK": "imk-ac"}, **CARD, suite=suite)


def test_no_clear_key_in_errors_or_repr():
    hsm = _hsm(INTL)
    messages = [repr(hsm), str(hsm)]
    for call in (
        lambda: hsm.verify_arqc("imk-mac", **CARD, tag_9f36=ATC, data=AC_DATA, tag_9f26=bytes(8)),
        lambda: hsm.import_key("imk-ac", "IMK-AC", INTL, IMK_MAC),
        lambda: hsm.verify_arqc("imk-ac", **CARD, tag_9f36=h("00"), data=AC_DATA, tag_9f26=bytes(8)),
    ):
        with pytest.raises(ValueError) as caught:
            call()
        messages.append(str(caught.value))
    text = " ".join(messages).upper()
    assert "ATC (9F36) MUST BE 2 BYTES" in text
    for key in (IMK_AC, IMK_MAC, IMK_ENC):
        assert key.hex().upper() not in text
    with pytest.raises(TypeError, match="cannot be pickled"):
        import pickle

        pickle.dumps(hsm)


def test_unwrapped_key_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(softhsm, "CACHE_KEYS_MAX", 4)
    hsm = SoftHSM.ephemeral()
    for n in range(10):
        hsm.import_key(f"imk-{n}", "IMK-AC", INTL, bytes([n]) * 16)
    for n in range(10):
        arqc = generate_ac(_session(bytes([n]) * 16, INTL), AC_DATA, suite=INTL)
        assert hsm.verify_arqc(f"imk-{n}", **CARD, tag_9f36=ATC, data=AC_DATA, tag_9f26=arqc) is True
    assert list(hsm._cache) == ["imk-6", "imk-7", "imk-8", "imk-9"]
    hsm.delete_key("imk-9")
    with pytest.raises(HSMError, match=r"no key labelled 'imk-9'"):
        hsm.verify_arqc("imk-9", **CARD, tag_9f36=ATC, data=AC_DATA, tag_9f26=bytes(8))


@pytest.mark.parametrize("suite", SUITES)
def test_verify_arqc_from_many_threads(suite):
    hsm = _hsm(suite)
    cases = []
    for atc in range(1, 41):
        tag_9f36 = atc.to_bytes(2, "big")
        cases.append((tag_9f36, generate_ac(_session(IMK_AC, suite, tag_9f36), AC_DATA, suite=suite)))
    results: list[bool] = []

    def worker():
        for tag_9f36, arqc in cases:
            results.append(hsm.verify_arqc("imk-ac", **CARD, tag_9f36=tag_9f36, data=AC_DATA, tag_9f26=arqc))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * (8 * len(cases))
