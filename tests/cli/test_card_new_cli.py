"""`citycard card new` end to end: a real process personalises a card, then a terminal talks to it.

The HSM lives in ``CITYCARD_DATA_DIR`` (a temporary directory) for both the command and the test,
so the test can read the CAPK and export the card keys it then looks for in the perso script.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from citycard.card import IMAGE_FORMAT, Card, load_card
from citycard.card.perso import PersoScript, luhn_check_digit
from citycard.crypto import oda
from citycard.crypto.capk import UNIONPAY_RID
from citycard.crypto.suite import GM, INTL
from citycard.emv import build_dol, decode, decode_one, find
from citycard.hsm import SoftHSM

h = bytes.fromhex
PAN = "623548100000000" + luhn_check_digit("623548100000000")
TODAY = {"9A": h("250315"), "9F1A": h("0156"), "5F2A": h("0156"), "9F02": h("000000000100")}


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CITYCARD_DATA_DIR", str(tmp_path))  # the subprocess inherits it
    monkeypatch.delenv("CITYCARD_HSM_MASTER_KEY", raising=False)
    return tmp_path


def transmit(card: Card, apdu: bytes) -> bytes:
    """Send one APDU and require 9000; the response data."""
    response = card.process(apdu)
    assert response[-2:] == b"\x90\x00", f"{apdu[:4].hex().upper()} answered {response[-2:].hex().upper()}"
    return response[:-2]


def select(card: Card, name: bytes) -> bytes:
    return transmit(card, bytes([0x00, 0xA4, 0x04, 0x00, len(name)]) + name + b"\x00")


def gpo(card: Card, fci: bytes, values: dict[str, bytes]) -> bytes:
    pdol = find(decode(fci), "9F38")
    data = build_dol(pdol.value if pdol else b"", values)
    return transmit(card, h("80A80000") + bytes([len(data) + 2, 0x83, len(data)]) + data + b"\x00")


def read_afl(card: Card, afl: bytes) -> tuple[dict[str, bytes], bytes]:
    """READ RECORD every AFL record: (the tags read, the static data to authenticate)."""
    tags: dict[str, bytes] = {}
    signed = b""
    for i in range(0, len(afl), 4):
        sfi, first, last, oda_count = afl[i] >> 3, afl[i + 1], afl[i + 2], afl[i + 3]
        for number in range(first, last + 1):
            record = transmit(card, bytes([0x00, 0xB2, number, sfi << 3 | 4, 0x00]))
            template = decode_one(record, tag="70")
            tags.update({obj.tag: obj.value for obj in template.children or ()})
            if number < first + oda_count:
                signed += template.value
    return tags, signed


@pytest.mark.parametrize(("profile", "suite"), [("citizen-card-gm", GM), ("pboc-debit-intl", INTL)])
def test_card_new_then_a_terminal_reads_and_authenticates_the_card(
    citycard, data_dir: Path, profile: str, suite
) -> None:
    image, script = data_dir / "card.json", data_dir / "perso.json"
    result = citycard(
        "card", "new", "--profile", profile, "--out", str(image), "--pan", PAN, "--script", str(script)
    )
    assert result.code == 0, result.err
    assert f"623548******{PAN[-4:]}" in result.out and PAN not in result.out
    assert suite.name in result.out and "A000000333010101" in result.out and "EC balance" in result.out

    hsm = SoftHSM.open()
    card = load_card(image, hsm=hsm)
    card.power_on()

    # contactless: PPSE, SELECT, qPBOC GPO (the card decides in the GPO; no balance yet: AAC)
    card.interface = "contactless"
    ppse = select(card, b"2PAY.SYS.DDF01")
    assert find(decode(ppse), "4F").value == h("A000000333010101")
    fci = select(card, h("A000000333010101"))
    discretionary = find(decode(fci), "BF0C")
    assert (find(discretionary.children, "DF61") is not None) == (profile == "citizen-card-gm")
    answer = decode_one(
        gpo(
            card,
            fci,
            {**TODAY, "9F66": h("28000000"), "9F37": h("11223344"), "DF69": bytes([suite.tag_df69])},
        ),
        tag="77",
    )
    fields = {obj.tag: obj.value for obj in answer.children or ()}
    assert fields["9F36"] == h("0001")
    assert fields["57"].hex().upper().startswith(PAN + "D")
    assert fields["9F10"][7] == suite.iad_algorithm_id
    tags, _ = read_afl(card, fields["94"])
    assert tags["9F74"] == b"ECC001"

    # contact: SELECT, GPO, READ RECORD, ODA with the test CA's key, then DDA with the ICC key
    card.power_on()
    card.interface = "contact"
    fci = select(card, h("A000000333010101"))
    answer = decode_one(gpo(card, fci, {**TODAY, "9F7A": b"\x01", "DF69": bytes([suite.tag_df69])}), tag="80")
    aip, afl = answer.value[:2], answer.value[2:]
    tags, signed = read_afl(card, afl)
    assert tags["5A"].hex().upper().rstrip("F") == PAN
    capk = hsm.get_capk(UNIONPAY_RID, tags["8F"][0])
    issuer = oda.recover_issuer_public_key(
        capk, tags["90"], tags.get("92", b""), tags.get("9F32", b""), pan=PAN
    )
    assert issuer.valid, issuer.reasons
    icc = oda.recover_icc_public_key(
        issuer.public_key, tags["9F46"], tags.get("9F48", b""), tags.get("9F47", b""), signed + aip, pan=PAN
    )
    assert icc.valid, icc.reasons
    un = h("CAFEBABE")
    signature = decode_one(transmit(card, h("0088000004") + un + b"\x00"))
    tag_9f4b = find(signature.children, "9F4B").value if signature.tag == "77" else signature.value
    assert oda.verify_dynamic_signature(icc.public_key, tag_9f4b, un).valid
    assert transmit(card, h("80CA9F7900")) == h("9F7906000000000000")
    assert transmit(card, h("80CA9F7700")) == h("9F7706000000100000")

    # the perso script: a bureau's file, no clear key in it, and it personalises another blank card
    text = script.read_text()
    keys = hsm.export_card_keys_for_personalisation(
        {kind: f"imk-{kind.lower()}-{suite.name.lower()}" for kind in ("AC", "MAC", "ENC")},
        tag_5a=PAN,
        tag_5f34="01",
        suite=suite,
    )
    for key in keys.values():
        assert key.hex().upper() not in text
    assert json.loads(text)["kcvs"][suite.name] == keys.kcvs()
    assert oct(script.stat().st_mode & 0o777) == "0o600"
    loaded = PersoScript.load(script)
    from citycard.card import new_card
    from citycard.card.pboc import PbocApplication

    blank = new_card(
        [PbocApplication(loaded.aid)], hsm=hsm, image_path=data_dir / "replay.json", perso_suite=suite
    )
    blank.power_on()
    for apdu in loaded.apdus:
        transmit(blank, apdu)
    assert blank.applications[0].personalised


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--profile", "pboc-platinum"],
            "error: unknown profile 'pboc-platinum': expected one of citizen-card-gm, ",
        ),
        (
            ["--profile", "pboc-debit-gm", "--pan", "6235481000000001"],
            "error: PAN 623548******0001: Luhn check digit",
        ),
        (
            ["--profile", "pboc-debit-gm", "--pan", "4111111111111111"],
            "error: PAN 411111******1111 does not start",
        ),
        (
            ["--profile", "pboc-debit-gm", "--pan", "62354810000"],
            "error: PAN must be 16 digits for profile pboc-debit-gm",
        ),
        (["--profile", "pboc-debit-gm", "--psn", "1"], "error: PSN (5F34) must be 2 digits, got '1'"),
        (["--profile", "pboc-debit-gm", "--psn", "0A"], "error: PSN (5F34) must be 2 digits, got '0A'"),
        (
            ["--profile", "pboc-debit-gm", "--pin", "12"],
            "error: PIN must be 4 to 12 digits, got 2 characters",
        ),
        (["--profile", "/no/such.toml"], "error: /no/such.toml: no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(citycard, data_dir: Path, args: list[str], message: str) -> None:
    image = data_dir / "card.json"
    result = citycard("card", "new", "--out", str(image), *args)
    assert result.code == 2
    assert result.err.startswith(message) and result.err.count("\n") == 1
    assert not image.exists()
    assert not (data_dir / "hsm-keys.json").exists()  # refused before the HSM was touched


def test_a_broken_profile_file_names_the_problem(citycard, data_dir: Path) -> None:
    from citycard.card.perso.profile import profiles_dir

    text = (profiles_dir() / "pboc-debit-gm.toml").read_text()
    bad = data_dir / "bad.toml"
    bad.write_text(
        text.replace("ec_single_transaction_limit_fen = 100000", "ec_single_transaction_limit_fen = 150000")
    )
    result = citycard("card", "new", "--profile", str(bad), "--out", str(data_dir / "card.json"))
    assert result.code == 2
    assert result.err == (
        "error: bad.toml: limits.ec_single_transaction_limit_fen: 150000 fen (9F78) is above the EC balance "
        "limit (9F77) of 100000 fen\n"
    )


def test_an_existing_image_is_not_replaced_without_force(citycard, data_dir: Path) -> None:
    image = data_dir / "card.json"
    image.write_text("{}")
    result = citycard("card", "new", "--profile", "pboc-ec-only-gm", "--out", str(image))
    assert result.code == 2 and "exists" in result.err and image.read_text() == "{}"
    result = citycard("card", "new", "--profile", "pboc-ec-only-gm", "--out", str(image), "--force", "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert (
        summary["aid"] == "A000000333010106"
        and summary["suites"] == ["GM"]
        and summary["ec_balance_fen"] == 0
    )
    assert json.loads(image.read_text())["format"] == IMAGE_FORMAT
