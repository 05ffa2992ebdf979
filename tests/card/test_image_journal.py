"""The card image's A/B journal (format /3, docs/card.md §2): in-place slot writes after each state
change, the newest whole generation wins on load, a torn slot falls back to the other one, a base
write supersedes the journal, and a journal that is not this card's is ignored."""

from __future__ import annotations

import json

import pytest

from citycard.card import ImageError, load_card, new_card, read_image, save_card
from citycard.card.image import (
    SLOT_BYTES_MIN,
    SLOT_HEADER_BYTES,
    journal_path,
    parse_slot,
    slot_record,
)
from citycard.hsm import SoftHSM

h = bytes.fromhex
SELECT_DEBIT = h("00A4040008A00000033301010100")
GENERATE = h("80AE80000299AA00")


@pytest.fixture
def hsm() -> SoftHSM:
    return SoftHSM.ephemeral()


@pytest.fixture
def saved(echo, registered, hsm, tmp_path):
    card = new_card(echo.apps(), hsm=hsm, image_path=tmp_path / "card.json")
    save_card(card)
    return card, tmp_path / "card.json"


def generate(card, times: int = 1) -> None:
    card.process(SELECT_DEBIT)
    for _ in range(times):
        assert card.process(GENERATE)[-2:] == h("9000")


def slots(path) -> list[tuple[int, bytes] | None]:
    raw = journal_path(path).read_bytes()
    half = len(raw) // 2
    return [parse_slot(raw[:half]), parse_slot(raw[half:])]


def test_state_changes_go_to_alternating_slots_and_the_base_stays(saved, hsm):
    card, path = saved
    base = path.read_bytes()
    assert json.loads(base)["generation"] == 1 and card.image_generation == 1
    generate(card, 3)  # generations 2, 3, 4
    assert path.read_bytes() == base  # the base file is not rewritten inside a transaction
    assert journal_path(path).stat().st_size == 2 * SLOT_BYTES_MIN
    (even, odd) = slots(path)
    assert even is not None and odd is not None
    assert (even[0], odd[0]) == (4, 3)
    assert json.loads(even[1])["applications"][0]["state"]["counter"] == 3
    again = load_card(path, hsm=hsm)
    assert again.image_generation == 4 and again.applications[0].counter == 3
    assert read_image(path)["generation"] == 4


def test_a_torn_newest_slot_falls_back_to_the_other_one(saved, hsm):
    card, path = saved
    generate(card, 2)  # generation 2 in slot 0 (counter 1), 3 in slot 1 (counter 2)
    journal = journal_path(path)
    raw = bytearray(journal.read_bytes())
    half = len(raw) // 2
    raw[half + SLOT_HEADER_BYTES + 10] ^= 0xFF  # a crash tore the write of generation 3
    journal.write_bytes(bytes(raw))
    again = load_card(path, hsm=hsm)
    assert again.image_generation == 2 and again.applications[0].counter == 1
    generate(again)  # generation 3 again, into the torn slot: whole now
    assert load_card(path, hsm=hsm).applications[0].counter == 2


def test_a_base_write_supersedes_the_journal(saved, hsm):
    card, path = saved
    generate(card, 2)
    card.applications[0].counter = 50
    save_card(card)  # generation 4 in the base: newer than both slots
    assert json.loads(path.read_text())["generation"] == 4
    assert load_card(path, hsm=hsm).applications[0].counter == 50
    generate(card)  # generation 5 into the journal again
    assert load_card(path, hsm=hsm).applications[0].counter == 51


def test_another_cards_journal_beside_the_file_is_ignored(echo, registered, hsm, tmp_path):
    mine = new_card(echo.apps(), hsm=hsm, image_path=tmp_path / "card.json")
    save_card(mine)
    other = new_card(echo.apps(), hsm=hsm, image_path=tmp_path / "other.json")
    save_card(other)
    generate(other, 3)
    journal_path(tmp_path / "other.json").rename(journal_path(tmp_path / "card.json"))
    loaded = load_card(tmp_path / "card.json", hsm=hsm)
    assert loaded.serial == mine.serial and loaded.applications[0].counter == 0


def test_a_whole_slot_with_a_bad_document_is_refused_with_the_journal_named(saved, hsm):
    card, path = saved
    generate(card)
    journal = journal_path(path)
    raw = bytearray(journal.read_bytes())
    record = slot_record(9, json.dumps({"format": "citycard-card-image/3", "generation": 9}).encode())
    raw[: len(record)] = record
    journal.write_bytes(bytes(raw))
    with pytest.raises(ImageError, match=r"card\.json\.ab: card_serial must be hex"):
        load_card(path, hsm=hsm)


def test_a_format_2_image_is_read_as_generation_0(saved, hsm):
    _, path = saved
    document = json.loads(path.read_text())
    document["format"] = "citycard-card-image/2"
    del document["generation"]
    path.write_text(json.dumps(document))
    loaded = load_card(path, hsm=hsm)
    assert loaded.image_generation == 0
    generate(loaded)
    assert load_card(path, hsm=hsm).image_generation == 1


def test_a_document_that_outgrows_its_slots_goes_to_the_base_and_the_journal_is_made_anew(saved, hsm):
    card, path = saved
    generate(card)
    assert journal_path(path).stat().st_size == 2 * SLOT_BYTES_MIN
    card.applications[0].records[(1, 3)] = bytes(SLOT_BYTES_MIN)  # hex doubles it: past one slot
    generate(card)
    assert not journal_path(path).exists()
    assert load_card(path, hsm=hsm).applications[0].records[(1, 3)] == bytes(SLOT_BYTES_MIN)
    generate(card)  # a new, larger journal
    assert journal_path(path).stat().st_size >= 4 * SLOT_BYTES_MIN
    assert load_card(path, hsm=hsm).applications[0].counter == 3


def test_slot_records_round_trip_and_reject_damage():
    record = slot_record(5, b'{"a":1}')
    assert parse_slot(record + bytes(100)) == (5, b'{"a":1}')
    assert parse_slot(bytes(200)) is None  # an empty slot
    assert parse_slot(record[:-1]) is None  # cut short
    assert parse_slot(record[:20] + b"\x00" + record[21:]) is None  # a length byte changed
    with pytest.raises(ValueError, match="generation must be"):
        slot_record(0, b"{}")
