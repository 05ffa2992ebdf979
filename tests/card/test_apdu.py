"""Short C-APDUs of cases 1–4 and R-APDUs (ISO/IEC 7816-3 §12.1): parsing, lengths, round trips."""

from __future__ import annotations

import pytest

from citycard.card import CardError, Command, Response
from citycard.card.apdu import APDU_BYTES_MAX

h = bytes.fromhex


@pytest.mark.parametrize(
    ("apdu", "expected"),
    [
        ("00A40400", Command(0x00, 0xA4, 0x04, 0x00)),  # case 1
        ("00B2010C00", Command(0x00, 0xB2, 0x01, 0x0C, le=256)),  # case 2, Le 00 = 256
        ("0084000008", Command(0x00, 0x84, 0x00, 0x00, le=8)),
        ("80E2800003010100", Command(0x80, 0xE2, 0x80, 0x00, data=h("010100"))),  # case 3
        ("00A4040007A000000333010100", Command(0x00, 0xA4, 0x04, 0x00, data=h("A0000003330101"), le=256)),
    ],
)
def test_parse_each_case(apdu, expected):
    command = Command.parse(h(apdu))
    assert command == expected
    assert command.to_bytes() == h(apdu) or command.le == 256  # Le 256 is written back as 00
    assert Command.parse(command.to_bytes()) == command


@pytest.mark.parametrize(
    ("apdu", "reason"),
    [
        ("00A404", "header alone is 4"),
        ("00A4040000A0", "Lc 00 with data"),
        ("00A4040005A0000003", "Lc 05 does not match the 4 bytes"),
        ("00A4040002A0000003", "Lc 02 does not match the 4 bytes"),
        ("00" * (APDU_BYTES_MAX + 1), "at most 261"),
    ],
)
def test_malformed_apdus_give_6700_with_the_reason(apdu, reason):
    with pytest.raises(CardError) as caught:
        Command.parse(h(apdu))
    assert caught.value.sw == 0x6700
    assert reason in caught.value.reason


def test_class_bits():
    assert Command(0x84, 0x1E, 0, 0).secure_messaging and Command(0x84, 0x1E, 0, 0).proprietary
    assert not Command(0x00, 0xB2, 1, 0x0C).secure_messaging
    assert (
        Command(0x04, 0xDA, 0x9F, 0x79).secure_messaging and not Command(0x04, 0xDA, 0x9F, 0x79).proprietary
    )


def test_response_round_trip():
    assert Response(h("9F360200AB"), 0x9000).to_bytes() == h("9F360200AB9000")
    assert Response.parse(h("6A82")) == Response(b"", 0x6A82)
    assert Response.parse(h("0102611C")) == Response(h("0102"), 0x611C)
    with pytest.raises(ValueError, match="at least 2 bytes"):
        Response.parse(h("90"))
