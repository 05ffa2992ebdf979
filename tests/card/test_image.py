"""The card image: save/load round trip with the HSM sealer, atomic writes and torn writes, refusal of
untrusted classes and of images that are not ours, and no clear key in the file."""

from __future__ import annotations

import json
import os

import pytest

from citycard.card import (
    IMAGE_BYTES_MAX,
    ApplicationSealer,
    Card,
    HsmSealer,
    ImageError,
    ImageTooLargeError,
    load_card,
    new_card,
    read_image,
    save_card,
)
from citycard.card.image import application_class, image_document
from citycard.crypto import INTL
from citycard.crypto.keys import key_check_value
from citycard.hsm import SoftHSM

h = bytes.fromhex
SELECT_DEBIT = h("00A4040008A00000033301010100")
GENERATE = h("80AE80000299AA00")


@pytest.fixture
def hsm() -> SoftHSM:
    return SoftHSM.ephemeral()


@pytest.fixture
def saved(echo, registered, hsm, tmp_path):
    """A card with the three test applications saved to ``card.json``."""
    card = new_card(echo.apps(), hsm=hsm, image_path=tmp_path / "card.json")
    save_card(card)
    return card, tmp_path / "card.json"


def test_round_trip_keeps_everything_and_opens_the_sealed_key(saved, hsm, echo, registered):
    card, path = saved
    loaded = load_card(path, hsm=hsm)
    assert (loaded.serial, loaded.atr, loaded.protocol, loaded.card_blocked) == (
        card.serial,
        card.atr,
        "T=1",
        False,
    )
    assert [app.aid for app in loaded.applications] == [echo.DEBIT, echo.CREDIT, echo.OTHER]
    debit = loaded.applications[0]
    assert debit.key == echo.CARD_KEY and debit.records == card.applications[0].records
    assert loaded.image_path == path and isinstance(loaded.sealer, HsmSealer)
    document = json.loads(path.read_text())
    assert document["format"] == "citycard-card-image/3"
    assert document["applications"][0]["class"] == registered
    assert document["kcvs"] == {"card-image": hsm.card_image_key().kcv_hex}


def test_the_file_holds_no_clear_key_only_its_kcv(saved, echo):
    _, path = saved
    text = path.read_text()
    assert echo.CARD_KEY.hex().upper() not in text.upper()
    sealed = json.loads(text)["applications"][0]["state"]["key"]
    assert sealed["kcv"] == key_check_value(echo.CARD_KEY, suite=INTL).hex().upper() == "08D7B4"
    assert sealed["kcv_method"] == "3DES"


def test_state_saved_by_the_application_survives_a_restart(saved, hsm):
    card, path = saved
    card.process(SELECT_DEBIT)
    assert card.process(GENERATE)[-2:] == h("9000")
    assert card.process(GENERATE)[-2:] == h("9000")
    again = load_card(path, hsm=hsm)  # a new process: only the file is left
    assert again.applications[0].counter == 2
    again.process(SELECT_DEBIT)
    assert again.process(h("80CA9F3600")) == h("9F360200029000")


def test_card_block_is_saved(saved, hsm):
    card, path = saved
    card.process(SELECT_DEBIT)
    assert card.process(h("8416000004AABBCCDD")) == h("9000")
    again = load_card(path, hsm=hsm)
    assert again.card_blocked and again.process(SELECT_DEBIT) == h("6A81")


def test_t0_protocol_and_atr_are_kept(echo, registered, hsm, tmp_path):
    card = new_card(echo.apps(), hsm=hsm, image_path=tmp_path / "t0.json", protocol="T=0")
    save_card(card)
    loaded = load_card(tmp_path / "t0.json", hsm=hsm)
    assert loaded.protocol == "T=0" and loaded.atr == card.atr and loaded.atr[:2] == h("3B6E")
    assert loaded.process(SELECT_DEBIT) == h("611D")


# --- torn writes ---------------------------------------------------------------------------------------
def test_a_failed_replace_leaves_the_old_image_and_no_temp_file(saved, monkeypatch):
    card, path = saved
    before = path.read_bytes()
    card.applications[0].counter = 99

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        save_card(card)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["card.json"]


def test_a_failed_write_during_a_command_answers_6581_and_keeps_the_old_image(saved, monkeypatch, hsm):
    card, path = saved
    card.process(SELECT_DEBIT)
    before = path.read_bytes()
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError(5, "I/O error")))
    assert card.process(GENERATE) == h("6581")
    assert path.read_bytes() == before
    monkeypatch.setattr(os, "replace", real_replace)
    assert load_card(path, hsm=hsm, clock=None).applications[0].counter == 0


def test_a_truncated_temp_file_left_by_a_crash_is_ignored(saved, hsm):
    card, path = saved
    full = json.dumps(image_document(card))
    (path.parent / ".card.json.k3j2l1.tmp").write_text(full[: len(full) // 2])
    loaded = load_card(path, hsm=hsm)
    assert loaded.applications[0].key == card.applications[0].key


def test_an_image_past_the_size_limit_is_refused_on_save_and_on_load(saved, tmp_path, hsm):
    card, _ = saved
    card.applications[0].records[(2, 1)] = bytes(IMAGE_BYTES_MAX // 2 + 1)
    with pytest.raises(ImageTooLargeError, match="exceeds"):
        save_card(card)
    card.process(SELECT_DEBIT)
    assert card.process(GENERATE) == h("6A84")  # the command's save: not enough memory
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (IMAGE_BYTES_MAX + 1))
    with pytest.raises(ImageError, match="more than"):
        load_card(big, hsm=hsm)


# --- what is refused ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("class_path", "message"),
    [
        ("os:system", "not a class path under citycard.card"),
        ("citycard.cli.main:app", "not a class path under citycard.card"),
        ("citycard.card.os:Card", "is not an Application"),
        ("citycard.card.nothing_here:App", "does not import"),
    ],
)
def test_only_application_classes_under_citycard_card_are_loaded(saved, hsm, class_path, message):
    _, path = saved
    document = json.loads(path.read_text())
    document["applications"][1]["class"] = class_path
    path.write_text(json.dumps(document))
    with pytest.raises(ImageError, match=message):
        load_card(path, hsm=hsm)


def test_unregistered_test_class_is_refused(echo, hsm, tmp_path):
    card = new_card(echo.apps(), hsm=hsm)
    save_card(card, tmp_path / "card.json")
    with pytest.raises(ImageError, match=r"not a class path under citycard\.card"):
        load_card(tmp_path / "card.json", hsm=hsm)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="something/2"), "not a card image"),
        (lambda d: d.update(card_serial="00"), "card_serial must be hex of 8"),
        (lambda d: d.update(atr="9000"), "starting with 3B or 3F"),
        (lambda d: d.update(protocol="T=2"), "protocol must be"),
        (lambda d: d.update(card_blocked="no"), "card_blocked"),
        (lambda d: d.update(applications={}), "applications must be a list"),
        (lambda d: d["applications"][0].pop("state"), "state object"),
        (lambda d: d["applications"][0].update(aid="A0"), "aid must be hex"),
        (lambda d: d["applications"][0]["state"].pop("counter"), "KeyError"),
        (lambda d: d["applications"][0]["state"].update(aid="A000000333010109"), "rebuilt with AID"),
        (lambda d: d["kcvs"].update({"card-image": "000000"}), "this HSM's is"),
    ],
)
def test_bad_images_are_refused_with_the_reason(saved, hsm, change, message):
    _, path = saved
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    with pytest.raises(ImageError, match=message):
        load_card(path, hsm=hsm)


def test_missing_and_non_json_files(tmp_path, hsm):
    with pytest.raises(ImageError, match="does not exist"):
        read_image(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ImageError, match="not JSON"):
        read_image(tmp_path / "bad.json")


def test_an_image_from_another_hsm_does_not_load(saved):
    _, path = saved
    with pytest.raises(ImageError, match="this HSM does not hold"):
        load_card(path, hsm=SoftHSM.ephemeral())


# --- sealed items cannot move ------------------------------------------------------------------------------
def test_a_sealed_key_moved_to_another_card_does_not_open(saved, echo, hsm, tmp_path):
    _, path = saved
    other = new_card(echo.apps(), hsm=hsm, image_path=tmp_path / "other.json")
    save_card(other)
    theirs = json.loads(path.read_text())["applications"][0]["state"]["key"]
    document = json.loads((tmp_path / "other.json").read_text())
    document["applications"][0]["state"]["key"] = theirs  # same name, same HSM key, another card
    (tmp_path / "other.json").write_text(json.dumps(document))
    with pytest.raises(ImageError, match="does not open for card"):
        load_card(tmp_path / "other.json", hsm=hsm)


def test_a_sealed_item_with_an_altered_kcv_does_not_open(saved, hsm):
    _, path = saved
    document = json.loads(path.read_text())
    document["applications"][0]["state"]["key"]["kcv"] = "000000"
    path.write_text(json.dumps(document))
    with pytest.raises(ImageError, match="does not open"):
        load_card(path, hsm=hsm)


def test_application_class_resolves_registered_and_package_classes(registered, echo):
    assert application_class(registered) is echo.EchoApplication
    with pytest.raises(ImageError):
        application_class("citycard.card.image:ImageError")


def test_a_card_without_an_image_file_saves_nothing(echo, hsm, tmp_path):
    card = Card(echo.apps())
    card.save()  # no file, no error
    card.process(SELECT_DEBIT)
    assert card.process(GENERATE)[-2:] == h("9000")
    with pytest.raises(ImageError, match="no image file"):
        save_card(card)
    with pytest.raises(ImageError, match="no sealer"):
        save_card(card, tmp_path / "x.json")
    assert list(tmp_path.iterdir()) == []


# --- with the PBOC application and a real personalisation script ------------------------------------------
@pytest.mark.parametrize("profile", ["pboc-debit-intl", "citizen-card-gm"])
def test_a_personalised_pboc_card_saves_loads_and_hides_its_secrets(profile, tmp_path):
    from citycard.card.pboc import PbocApplication
    from citycard.card.perso.prepare import prepare_card
    from citycard.card.perso.profile import load_profile
    from citycard.card.perso.script import perso_script

    hsm = SoftHSM.ephemeral()
    prepared = prepare_card(load_profile(profile), hsm, seed=7)
    script = perso_script(prepared)
    path = tmp_path / "card.json"
    card = new_card([PbocApplication(script.aid)], hsm=hsm, image_path=path, perso_suite=prepared.perso_suite)
    assert [card.process(apdu)[-2:].hex().upper() for apdu in script.apdus] == ["9000"] * len(script.apdus)
    assert card.applications[0].personalised and path.exists()  # saved by the last block

    loaded = load_card(path, hsm=hsm)
    assert loaded.serial == card.serial and loaded.applications[0].personalised
    assert loaded.process(h("00A404000E315041592E5359532E444446303100"))[-2:] == h("9000")
    directory_record = loaded.process(h("00B2010C00"))
    assert directory_record[:1] == h("70") and directory_record[-2:] == h("9000")
    loaded.process(h("00A4040008") + script.aid + h("00"))
    assert loaded.process(h("80CA9F3600")) == h("9F360200009000")

    text = path.read_text()
    sealed = json.loads(text)["applications"][0]["state"]["secrets"]["sealed"]
    assert len(sealed) >= 3  # card keys, PIN block, ICC private key (parts)
    sealer = ApplicationSealer(HsmSealer(hsm, loaded.serial), script.aid)
    for name, item in sealed.items():
        assert set(item) == {"sealed", "kcv", "kcv_method"}
        assert sealer.open(name, item).hex().upper() not in text.upper()


def test_application_sealer_scopes_names_by_aid(hsm):
    sealer = HsmSealer(hsm, bytes(range(8)))
    debit = ApplicationSealer(sealer, h("A000000333010101"))
    credit = ApplicationSealer(sealer, h("A000000333010102"))
    item = debit.seal("pin", h("241234FFFFFFFFFF"))
    assert debit.open("pin", item) == h("241234FFFFFFFFFF")
    with pytest.raises(ValueError, match="does not open"):
        credit.open("pin", item)  # the same name in another application is another item


def test_an_image_of_the_old_format_is_refused_with_its_reason(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format": "citycard-card-image/1", "applications": []}))
    with pytest.raises(
        ImageError, match=r"format /1, from before 'citycard-card-image/3': make the card again"
    ):
        read_image(old)
