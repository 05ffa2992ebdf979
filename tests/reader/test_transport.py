"""The in-process transport and the T=0 handling every transport shares (61xx GET RESPONSE, 6Cxx re-send)."""

from __future__ import annotations

import sys

import pytest

from citycard.reader import (
    CardProtocolError,
    InProcessTransport,
    NotConnectedError,
    PcscTransport,
    PcscUnavailableError,
    ReaderNotFoundError,
    Transport,
    list_readers,
    status_word,
)
from citycard.reader.pcsc import choose_reader
from citycard.reader.transport import APDU_BYTES_MAX, EXCHANGES_PER_TRANSMIT_MAX, with_le

ATR = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")
SELECT_PPSE = "00A404000E325041592E5359532E444446303100"
PPSE_FCI = "6F10840E325041592E5359532E4444463031"


class ScriptedCard:
    """A card whose answers are data: each (C-APDU hex, R-APDU hex) is expected in turn."""

    atr = ATR

    def __init__(self, script: list[tuple[str, str]]):
        self.script = list(script)
        self.seen: list[str] = []
        self.powered = 0

    def power_on(self) -> None:
        self.powered += 1

    def power_off(self) -> None:
        self.powered -= 1

    def reset(self) -> bytes:
        return bytes.fromhex("3B00")

    def process(self, apdu: bytes) -> bytes:
        self.seen.append(apdu.hex().upper())
        expected, answer = self.script.pop(0)
        assert apdu.hex().upper() == expected, f"card expected {expected}, got {apdu.hex().upper()}"
        return bytes.fromhex(answer)


def transmit(card: ScriptedCard, apdu: str, **options) -> str:
    with InProcessTransport(card, **options) as reader:
        return reader.transmit(bytes.fromhex(apdu)).hex().upper()


def test_connect_powers_the_card_and_returns_its_atr_disconnect_powers_it_off():
    card = ScriptedCard([])
    reader = InProcessTransport(card)
    assert isinstance(reader, Transport)
    assert reader.connect() == ATR and reader.atr == ATR and card.powered == 1
    assert reader.connect() == ATR and card.powered == 1  # a second connect changes nothing
    reader.disconnect()
    reader.disconnect()
    assert card.powered == 0 and not reader.connected


def test_reset_returns_the_atr_the_card_gives():
    with InProcessTransport(ScriptedCard([])) as reader:
        assert reader.reset() == bytes.fromhex("3B00") and reader.atr == bytes.fromhex("3B00")


def test_plain_exchange_passes_through():
    assert transmit(ScriptedCard([(SELECT_PPSE, PPSE_FCI + "9000")]), SELECT_PPSE) == PPSE_FCI + "9000"


def test_61xx_is_followed_by_get_response_and_the_data_joined():
    card = ScriptedCard(
        [
            ("00A4040007A000000333010100", "6112"),
            ("00C0000012", "6F10840E325041592E53" + "6108"),
            ("00C0000008", "59532E4444463031" + "9000"),
        ]
    )
    assert transmit(card, "00A4040007A000000333010100") == PPSE_FCI + "9000"
    assert len(card.seen) == 3


def test_6cxx_resends_the_command_with_the_exact_le():
    card = ScriptedCard([("80CA9F7900", "6C09"), ("80CA9F7909", "9F7906000000010000" + "9000")])
    assert transmit(card, "80CA9F7900") == "9F7906000000010000" + "9000"


def test_6cxx_on_a_case_3_command_adds_the_le():
    card = ScriptedCard([("00A4040002AABB", "6C20"), ("00A4040002AABB20", "9000")])
    assert transmit(card, "00A4040002AABB") == "9000"


def test_6cxx_then_61xx_on_the_same_command():
    card = ScriptedCard(
        [("80CA9F7900", "6C09"), ("80CA9F7909", "6109"), ("00C0000009", "9F7906000000010000" + "9000")]
    )
    assert transmit(card, "80CA9F7900") == "9F7906000000010000" + "9000"


def test_a_second_6cxx_is_returned_as_the_card_said():
    card = ScriptedCard([("80CA9F7900", "6C09"), ("80CA9F7909", "6C0A")])
    assert transmit(card, "80CA9F7900") == "6C0A"


def test_t0_off_returns_61xx_and_6cxx_raw():
    assert transmit(ScriptedCard([(SELECT_PPSE, "6112")]), SELECT_PPSE, t0=False) == "6112"
    assert transmit(ScriptedCard([("80CA9F7900", "6C09")]), "80CA9F7900", t0=False) == "6C09"


def test_trace_sees_every_raw_exchange():
    seen = []
    card = ScriptedCard([("80CA9F7900", "6C09"), ("80CA9F7909", "9F7906000000010000" + "9000")])
    transmit(
        card, "80CA9F7900", trace=lambda c, r, s: seen.append((c.hex().upper(), r.hex().upper(), s >= 0))
    )
    assert seen == [("80CA9F7900", "6C09", True), ("80CA9F7909", "9F7906000000010000" + "9000", True)]


def test_an_endless_61xx_chain_is_a_card_protocol_error():
    class Chatty(ScriptedCard):
        def process(self, apdu: bytes) -> bytes:
            return bytes.fromhex("6101")

    with pytest.raises(CardProtocolError, match=f"61xx/6Cxx for {EXCHANGES_PER_TRANSMIT_MAX} exchanges"):
        transmit(Chatty([]), SELECT_PPSE)


def test_an_answer_without_status_word_is_a_card_protocol_error():
    with pytest.raises(CardProtocolError, match="R-APDU of 1 bytes to 00A40400"):
        transmit(ScriptedCard([(SELECT_PPSE, "90")]), SELECT_PPSE)


def test_bad_apdus_are_refused_before_the_card_sees_them():
    card = ScriptedCard([])
    with InProcessTransport(card) as reader:
        with pytest.raises(ValueError, match="C-APDU of 3 bytes: the header CLA INS P1 P2 alone is 4"):
            reader.transmit(b"\x00\xa4\x04")
        with pytest.raises(ValueError, match=f"at most {APDU_BYTES_MAX}"):
            reader.transmit(bytes(APDU_BYTES_MAX + 1))
        with pytest.raises(TypeError, match="a C-APDU is bytes, got str"):
            reader.transmit(SELECT_PPSE)  # type: ignore[arg-type]
    assert card.seen == []


def test_transmit_needs_a_connection():
    reader = InProcessTransport(ScriptedCard([]))
    with pytest.raises(NotConnectedError, match="before connect"):
        reader.transmit(bytes.fromhex(SELECT_PPSE))
    with pytest.raises(NotConnectedError, match="no ATR yet"):
        _ = reader.atr


def test_objects_without_process_or_atr_are_refused():
    with pytest.raises(TypeError, match="object has no process"):
        InProcessTransport(object())

    class NoAtr:
        atr = b""

        def process(self, apdu: bytes) -> bytes:
            return b"\x90\x00"

    with pytest.raises(CardProtocolError, match=r"NoAtr\.atr must be non-empty bytes"):
        InProcessTransport(NoAtr()).connect()


@pytest.mark.parametrize(
    ("apdu", "le", "expected"),
    [
        ("00A40400", 0x10, "00A4040010"),  # case 1: Le added
        ("80CA9F7900", 0x09, "80CA9F7909"),  # case 2: Le replaced
        ("00A4040002AABB", 0x20, "00A4040002AABB20"),  # case 3: Le added
        ("00A4040002AABB00", 0x20, "00A4040002AABB20"),  # case 4: Le replaced
        ("00A4040000000100", 0x20, None),  # extended: not re-sent
    ],
)
def test_with_le(apdu, le, expected):
    result = with_le(bytes.fromhex(apdu), le)
    assert (result.hex().upper() if result else None) == expected


def test_status_word():
    assert status_word(bytes.fromhex("6A82")) == 0x6A82
    with pytest.raises(ValueError, match="at least SW1 SW2"):
        status_word(b"\x90")


def test_choose_reader_by_exact_name_or_substring():
    readers = ["Virtual PCD 00 00", "Virtual PCD 00 01", "Gemalto PC Twin Reader 00 00"]
    assert choose_reader(readers, None) == "Virtual PCD 00 00"
    assert choose_reader(readers, "Virtual PCD 00 01") == "Virtual PCD 00 01"
    assert choose_reader(readers, "gemalto") == "Gemalto PC Twin Reader 00 00"
    with pytest.raises(ReaderNotFoundError, match="no reader matches 'ACR122'; readers: Virtual PCD 00 00, "):
        choose_reader(readers, "ACR122")
    with pytest.raises(ReaderNotFoundError, match="pcscd knows no reader"):
        choose_reader([], None)


def test_pcsc_without_pyscard_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "smartcard", None)  # as if pyscard were not installed
    with pytest.raises(PcscUnavailableError, match=r"install citycard\[pcsc\]"):
        list_readers()
    with pytest.raises(PcscUnavailableError, match=r"install citycard\[pcsc\]"):
        PcscTransport("Virtual PCD").connect()


def test_pcsc_transport_checks_its_options():
    with pytest.raises(ValueError, match="card_wait_s must be 0 to 600"):
        PcscTransport(card_wait_s=-1)
    with pytest.raises(ValueError, match="protocol must be 'any', 'T0' or 'T1'"):
        PcscTransport(protocol="T2")  # type: ignore[arg-type]
