"""The HSM's key-exchange half (citycard.hsm.keyexchange) and key exchange on demand over TCP."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from tests.host.test_server import TERMINAL, TMK, ApprovingHost, RunningServer, _hsm, purchase

from citycard.crypto import GM, INTL
from citycard.crypto.keys import key_check_value
from citycard.crypto.mac import pad_method_2
from citycard.host.client import HostClient
from citycard.host.server import HostServer
from citycard.hsm import HSMError, SoftHSM
from citycard.hsm.keyexchange import F62_SESSION_BYTES, pin_block_format_0
from citycard.iso8583 import builders, compute_mac


@pytest.mark.parametrize("suite", [INTL, GM], ids=["intl", "gm"])
def test_session_keys_round_trip_and_mac_matches_iso8583_mac(suite) -> None:
    host, terminal = _hsm(suite), _hsm(suite)
    sent = host.generate_session_keys("tmk:T0000001", peer="T0000001")
    assert len(sent.f62) == F62_SESSION_BYTES == 40
    got = terminal.install_session_keys("tmk:T0000001", peer="host", f62=sent.f62)
    assert (got.pik_kcv_hex, got.mak_kcv_hex) == (sent.pik_kcv_hex, sent.mak_kcv_hex)
    assert sent.pik_kcv_hex != sent.mak_kcv_hex
    assert "KCV" in repr(sent) and sent.f62.hex() not in repr(sent)
    data = b"0200 message body"
    mac = host.session_mac("mak:T0000001", data)
    # the same MAC as iso8583.mac with the clear MAK (deciphered here from F62 with plain crypto)
    clear_mak = suite.ecb_decrypt(TMK, sent.f62[20:36])
    assert key_check_value(clear_mak, suite=suite, length=4).hex().upper() == sent.mak_kcv_hex
    assert (
        mac
        == compute_mac(data, clear_mak, suite)
        == suite.block_mac(clear_mak, pad_method_2(data, suite.block_bytes))[:8]
    )
    assert terminal.verify_session_mac("mak:host", data, mac)
    assert not terminal.verify_session_mac("mak:host", data + b"!", mac)


def test_key_refusals() -> None:
    hsm = _hsm(INTL)
    hsm.generate_key("imk", "IMK-AC", INTL)
    with pytest.raises(HSMError, match="TMK or ZMK"):
        hsm.generate_session_keys("imk", peer="T1")
    with pytest.raises(HSMError, match="40 bytes"):
        hsm.install_session_keys("tmk:T0000001", peer="x", f62=bytes(39))
    with pytest.raises(HSMError, match="not signed on"):
        hsm.session_mac("mak:nobody", b"x")
    hsm.generate_session_keys("tmk:T0000001", peer="T1")
    with pytest.raises(HSMError, match="may not be used for mac"):
        hsm.session_mac("pik:T1", b"x")
    hsm.drop_session_keys("T1")
    assert not hsm.has_session_key("mak:T1")


def test_pin_translation_to_a_zone_pin_key() -> None:
    hsm = _hsm(INTL)
    zpk = bytes.fromhex("89ABCDEF0123456776543210FEDCBA98")
    hsm.import_key("zpk-intl", "PIN", INTL, zpk)
    hsm.import_key("zpk-gm", "PIN", GM, zpk)
    keys = hsm.generate_session_keys("tmk:T0000001", peer="T1")
    block = hsm.encipher_pin_block(keys.pik_label, pin="1234", pan="6235480000000016")
    clear = pin_block_format_0("1234", "6235480000000016")
    assert INTL.ecb_decrypt(INTL.ecb_decrypt(TMK, keys.f62[:16]), block) == clear  # F52 under the PIK
    assert (
        INTL.ecb_decrypt(zpk, hsm.translate_pin_block(keys.pik_label, "zpk-intl", pin_block=block)) == clear
    )
    gm_block = hsm.translate_pin_block(keys.pik_label, "zpk-gm", pin_block=block)
    assert GM.ecb_decrypt(zpk, gm_block) == clear + b"\x80" + bytes(7)
    with pytest.raises(HSMError, match="not a PIN key"):
        hsm.translate_pin_block(keys.pik_label, "tmk:T0000001", pin_block=block)
    with pytest.raises(HSMError, match="8 bytes"):
        hsm.translate_pin_block(keys.pik_label, "zpk-intl", pin_block=bytes(7))
    # a GM terminal: SM4 PIK, a 16-byte block (F57) = SM4-ECB of the format-0 block ‖ 80 00…
    gm_hsm = _hsm(GM)
    gm_hsm.import_key("zpk-intl", "PIN", INTL, zpk)
    gm_hsm.import_key("zpk-gm", "PIN", GM, zpk)
    gm_keys = gm_hsm.generate_session_keys("tmk:T0000001", peer="T1")
    sm4_block = gm_hsm.encipher_pin_block(gm_keys.pik_label, pin="1234", pan="6235480000000016")
    pik = GM.ecb_decrypt(TMK, gm_keys.f62[:16])
    assert len(sm4_block) == 16 and GM.ecb_decrypt(pik, sm4_block) == clear + b"\x80" + bytes(7)
    to_gm = gm_hsm.translate_pin_block(gm_keys.pik_label, "zpk-gm", pin_block=sm4_block)
    assert GM.ecb_decrypt(zpk, to_gm) == clear + b"\x80" + bytes(7)
    to_intl = gm_hsm.translate_pin_block(gm_keys.pik_label, "zpk-intl", pin_block=sm4_block)
    assert INTL.ecb_decrypt(zpk, to_intl) == clear
    with pytest.raises(HSMError, match="16 bytes"):
        gm_hsm.translate_pin_block(gm_keys.pik_label, "zpk-gm", pin_block=block)  # an 8-byte block
    garbled = GM.ecb_encrypt(pik, clear + b"\x81" + bytes(7))  # deciphers, but the padding is wrong
    with pytest.raises(HSMError, match="padded format-0"):
        gm_hsm.translate_pin_block(gm_keys.pik_label, "zpk-gm", pin_block=garbled)


@pytest.mark.parametrize("suite", [INTL, GM], ids=["intl", "gm"])
def test_key_exchange_on_demand_replaces_the_keys(suite) -> None:
    server_hsm = _hsm(suite)
    running = RunningServer(HostServer(ApprovingHost(), hsm=server_hsm, institution_id="08010000"))
    try:
        with HostClient("127.0.0.1", running.port, hsm=_hsm(suite)) as client:
            client.sign_on(terminal_id=TERMINAL.terminal_id, merchant_id=TERMINAL.merchant_id)
            old = server_hsm.session_key_kcv("mak:T0000001")
            assert client.exchange(purchase(71))["39"] == "00"
            client.key_exchange(terminal_id=TERMINAL.terminal_id, merchant_id=TERMINAL.merchant_id)
            assert server_hsm.session_key_kcv("mak:T0000001") != old
            assert client.exchange(purchase(72))["39"] == "00"
        request = builders.network("key_exchange", terminal=TERMINAL, stan=73, when=datetime.now(UTC))
        assert builders.classify(request).name == "key_exchange"
    finally:
        running.shutdown()


def test_session_keys_are_not_stored_and_gone_after_a_restart(tmp_path) -> None:
    """Session keys are volatile: the HSM reopened on the same store knows none (peers sign on again)."""

    def open_hsm() -> SoftHSM:
        return SoftHSM.open(tmp_path / "hsm-keys.json", master_key_file=tmp_path / "hsm-master.key")

    hsm = open_hsm()
    hsm.import_key("tmk:T1", "TMK", INTL, TMK)
    keys = hsm.generate_session_keys("tmk:T1", peer="T1")
    assert hsm.has_session_key("mak:T1") and [info.label for info in hsm.list_keys()] == ["tmk:T1"]
    stored = (tmp_path / "hsm-keys.json").read_text()
    assert keys.mak_kcv_hex not in stored and keys.f62.hex() not in stored.lower()
    reopened = open_hsm()
    assert not reopened.has_session_key("mak:T1") and reopened.key_info("tmk:T1").kcv_hex
