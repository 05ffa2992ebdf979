"""Fuzz the health DDF1's APDU parsing: never an exception (6F00), always a status word, and no
random command ever changes a file or grants a read right (every write needs the update key)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citycard.card.health import HEALTH_DDF1_NAME
from citycard.card.health import files as hf
from citycard.card.health.perso import load_health_application
from citycard.card.health.records import LAYOUTS
from citycard.card.image import new_card
from citycard.crypto.suite import GM, INTL
from citycard.hsm import SoftHSM

SELECT = b"\x00\xa4\x04\x00" + bytes([len(HEALTH_DDF1_NAME)]) + HEALTH_DDF1_NAME + b"\x00"
RECORDS = {
    "DDF1/EF05": [{"card_type": "2", "card_no": "110101199003071234"}],
    "DDF1/EF06": [
        {"name": "李四", "sex": "2", "birth_date": "1985-12-01", "id_number": "110101198512011234"}
    ],
    "DF02/EF07": [{"allergen": "peanut"}],
}
INSTRUCTIONS = st.one_of(
    st.sampled_from([0x84, 0x82, 0xB2, 0xB0, 0xDC, 0xE2, 0xD6, 0xA4]), st.integers(0, 255)
)
CLASSES = st.one_of(st.sampled_from([0x00, 0x04, 0x0C, 0x80, 0x84]), st.integers(0, 255))
SFIS = st.one_of(st.sampled_from([f.sfi for f in hf.FILES]), st.integers(0, 31))
ALLOWED_SW1 = {0x61, 0x62, 0x63, 0x65, 0x67, 0x68, 0x69, 0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x90}


@st.composite
def apdus(draw) -> bytes:
    ins = draw(INSTRUCTIONS)
    p1 = draw(st.one_of(st.integers(0, 255), st.builds(lambda s: 0x80 | s, SFIS)))
    p2 = draw(st.one_of(st.integers(0, 255), st.builds(lambda s: s << 3 | 4, SFIS)))
    header = bytes([draw(CLASSES), ins, p1, p2])
    data = draw(st.binary(max_size=255))
    shape = draw(st.sampled_from(["case1", "case2", "case3", "case4", "lying", "short"]))
    le = bytes([draw(st.integers(0, 255))])
    if shape == "case1":
        return header
    if shape == "case2":
        return header + le
    if shape in ("case3", "case4"):
        data = data or b"\x00"
        return header + bytes([len(data)]) + data + (le if shape == "case4" else b"")
    if shape == "lying":
        return header + bytes([draw(st.integers(0, 255))]) + data
    return header[: draw(st.integers(0, 3))]


_HSM = SoftHSM.ephemeral()
for _suite in (GM, INTL):
    _HSM.create_health_masters(_suite)
_CARDS = {}
for _suite in (GM, INTL):
    _card = new_card([], hsm=_HSM)
    load_health_application(_card, _HSM, _suite, records=RECORDS)
    _CARDS[_suite.name] = _card


def _state(card) -> str:
    image = card.applications[0].to_image(_Clear())
    image.pop("key_tries")  # a random EXTERNAL AUTHENTICATE may count a failure: that is allowed
    return str(image)


class _Clear:
    def seal(self, name, clear):
        return {"kcv": clear[:2].hex()}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(suite=st.sampled_from(["GM", "INTL"]), commands=st.lists(apdus(), min_size=1, max_size=12))
def test_random_apdus_answer_a_status_word_and_change_nothing(suite, commands):
    card = _CARDS[suite]
    card.power_on()
    assert card.process(SELECT)[-2:] == b"\x90\x00"
    before = _state(card)
    for apdu in commands:
        answer = card.process(apdu)
        assert isinstance(answer, bytes) and len(answer) >= 2
        assert answer[-2] in ALLOWED_SW1, f"{apdu.hex()} → {answer.hex()}"
        assert answer[-2:] != b"\x6f\x00", f"internal error on {apdu.hex()}"
        if apdu[1:2] == b"\xb2" and answer[-2:] == b"\x90\x00" and len(apdu) > 3:
            # a record read succeeded: only the freely readable issuer file can be read unauthenticated
            assert apdu[3] >> 3 == hf.ISSUER_FILE.sfi, apdu.hex()
    assert _state(card) == before


# --- the parsers on the terminal side: card data never raises anything but the record error ---------
@settings(max_examples=400, deadline=None)
@given(data=st.one_of(st.binary(max_size=400), st.builds(lambda b: b"\xe0" + b, st.binary(max_size=300))))
def test_visit_record_parser_raises_only_its_error(data):
    from citycard.card.health.records import HealthRecordError, VisitRecord

    try:
        record = VisitRecord.from_bytes(data)
    except HealthRecordError:
        return
    assert VisitRecord.from_bytes(record.to_bytes()) == record  # what parses re-encodes the same


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(LAYOUTS)), data=st.binary(max_size=220))
def test_record_parser_raises_only_its_error(name, data):
    from citycard.card.health.records import HealthRecordError, decode_record

    try:
        values = decode_record(name, data)
    except HealthRecordError:
        return
    assert isinstance(values, dict)


class _HostileCard:
    """Answers every APDU with drawn bytes: the desk must fail with its own errors, never crash."""

    def __init__(self, answers):
        self.answers = answers

    def connect(self):
        return b"\x3b\x00"

    def transmit(self, apdu):
        return self.answers.pop(0) if self.answers else b"\x6a\x82"


def _tlv_record(items) -> bytes:
    from citycard.emv import encode_one

    return b"".join(encode_one(f"{tag:02X}", value) for tag, value in items) + b"\x90\x00"


def _fci(suite_byte: bytes) -> bytes:
    from citycard.emv import encode_one

    body = encode_one("84", HEALTH_DDF1_NAME) + encode_one("A5", encode_one("DF69", suite_byte))
    return encode_one("6F", body) + b"\x90\x00"


_ANSWERS = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda b: b + b"\x90\x00", st.binary(max_size=260)),
    st.sampled_from([b"\x90\x00", b"\x69\x82", b"\x6a\x83", b"\x63\xc1"]),
    st.builds(_fci, st.sampled_from([b"\x00", b"\x01", b"\x02", b""])),
    st.builds(
        _tlv_record,
        st.lists(st.tuples(st.integers(0x80, 0x88), st.binary(max_size=24)), min_size=1, max_size=6),
    ),
    st.builds(lambda b: b"\xe0" + bytes([len(b)]) + b + b"\x90\x00", st.binary(max_size=120)),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers=st.lists(_ANSWERS, max_size=40))
def test_the_desk_survives_a_hostile_card(answers):
    from citycard.card.health.records import HealthRecordError, RecordSignatureError
    from citycard.terminals.health_card import HealthCardError, HealthCardReader, HospitalSam

    reader = HealthCardReader(_HostileCard(list(answers)), sam=HospitalSam(_HSM, "H001"))
    try:
        reader.select()
        reader.read_identity()
        reader.read_alerts()
        reader.read_visits()
    except (HealthCardError, HealthRecordError, RecordSignatureError):
        pass


def test_the_desk_refuses_a_card_with_a_short_chip_serial():
    from citycard.emv import encode_one
    from citycard.terminals.health_card import HealthCardError, HealthCardReader, HospitalSam

    fci = encode_one("6F", encode_one("84", HEALTH_DDF1_NAME) + encode_one("A5", encode_one("DF69", b"\x01")))
    issuer = encode_one("85", b"110101199003071234") + encode_one("86", b"\x01\x02\x03")
    card = _HostileCard([fci + b"\x90\x00", issuer + b"\x90\x00"])
    reader = HealthCardReader(card, sam=HospitalSam(_HSM, "H001"))
    try:
        reader.select()
    except HealthCardError as exc:
        assert "chip_serial: exactly 8 bytes, got 3" in str(exc)
    else:
        raise AssertionError("a 3-byte chip serial was accepted")
