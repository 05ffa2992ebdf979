"""`citycard card info` and `citycard card apdu` on a card image sealed by the default HSM.

The card holds the OS tests' EchoApplication (tests/card/conftest.py), trusted for these tests only.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from citycard.card import new_card, save_card
from citycard.cli.main import app
from citycard.hsm import SoftHSM

runner = CliRunner()
SELECT_PSE = "00A404000E315041592E5359532E444446303100"
SELECT_PPSE = "00A404000E325041592E5359532E444446303100"
SELECT_DEBIT = "00A4040008A00000033301010100"


def _echo_module():
    spec = importlib.util.spec_from_file_location(
        "citycard_tests_echo", Path(__file__).parents[1] / "card" / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


echo = _echo_module()


@pytest.fixture
def image(tmp_path, monkeypatch) -> Path:
    """A card image with the test applications, sealed by ``SoftHSM.open()`` in a temporary data dir."""
    monkeypatch.setenv("CITYCARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CITYCARD_HSM_MASTER_KEY", raising=False)
    monkeypatch.setattr("citycard.card.image.APPLICATION_CLASSES", {})
    from citycard.card import register_application_class

    register_application_class(echo.EchoApplication)
    path = tmp_path / "card.json"
    save_card(new_card(echo.echo_apps(), hsm=SoftHSM.open(), image_path=path))
    return path


def run(*args: str):
    return runner.invoke(app, ["card", *args])


def test_info_shows_the_card_and_kcvs_never_a_key(image):
    result = run("info", str(image))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "3B8E800163697479636172642050424F433311 (T=1)" in out
    assert "A000000333010101" in out and "PBOC DEBIT" in out and "personalised" in out
    assert "key: KCV 08D7B4 (3DES)" in out
    assert "balance_fen: 123.45 yuan (12345 fen)" in out
    assert echo.CARD_KEY.hex().upper() not in out.upper()


def test_info_json(image):
    result = run("info", str(image), "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["atr"], info["protocol"], info["card_blocked"]) == (
        "3B8E800163697479636172642050424F433311",
        "T=1",
        False,
    )
    debit = info["applications"][0]
    assert (debit["aid"], debit["label"], debit["priority"], debit["personalised"]) == (
        "A000000333010101",
        "PBOC DEBIT",
        1,
        True,
    )
    assert debit["state"]["key"] == {"kcv": "08D7B4", "kcv_method": "3DES"}
    assert debit["state"]["balance_fen"] == {"fen": 12345, "yuan": "123.45"}
    assert set(info["kcvs"]) == {"card-image"}
    assert echo.CARD_KEY.hex().upper() not in result.stdout.upper()


def test_apdu_prints_each_exchange_with_sw_meaning_and_tlv(image):
    result = run("apdu", str(image), SELECT_PSE, "00B2010C00", "00B2090C00")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert f"> {SELECT_PSE}" in out
    assert "< 6F1C840E315041592E5359532E4444463031A50A8801015F2D047A68656E9000" in out
    assert "  SW 9000: success" in out
    assert "    88 Short File Identifier (SFI): 01" in out
    assert "      4F Application Dedicated File (ADF) Name: A000000333010101" in out
    assert '      50 Application Label: 50424F43204445424954 "PBOC DEBIT"' in out
    assert "  SW 6A83: record not found" in out


def test_apdu_json_and_state_saved_after(image):
    result = run("apdu", str(image), "--json", SELECT_DEBIT, "80AE80000299AA00", "80500000")
    assert result.exit_code == 0, result.stderr
    exchanges = json.loads(result.stdout)
    assert [x["sw"] for x in exchanges] == ["9000", "9000", "6D00"]
    assert exchanges[1]["r_apdu"] == "770A9F36020001DF010299AA9000"
    assert exchanges[1]["tlv"][0]["tag"] == "77"
    assert exchanges[1]["tlv"][0]["children"][0] == {
        "tag": "9F36",
        "name": "Application Transaction Counter (ATC)",
        "length": 2,
        "value": "0001",
    }
    assert exchanges[2]["sw_meaning"] == "instruction not supported" and exchanges[2]["tlv"] is None
    info = json.loads(run("info", str(image), "--json").stdout)
    assert info["applications"][0]["state"]["counter"] == 1  # the image was saved


def test_apdu_contactless_selects_the_ppse(image):
    result = run("apdu", str(image), "--contactless", "--json", SELECT_PPSE, SELECT_PSE)
    assert result.exit_code == 0, result.stderr
    ppse, pse = json.loads(result.stdout)
    assert ppse["sw"] == "9000" and ppse["tlv"][0]["children"][0]["value"] == "325041592E5359532E4444463031"
    assert pse["sw"] == "6A82"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("apdu", "{image}", SELECT_PSE, "00B2010C0"), "error: APDU 2: odd-length hex (9 digits)"),
        (("apdu", "{image}", "00A4ZZ00"), "error: APDU 1: not hex (bad character 'Z')"),
        (("apdu", "{missing}", SELECT_PSE), "does not exist"),
        (("info", "{missing}"), "does not exist"),
        (("info", "{bad}"), "not JSON"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(image, tmp_path, args, message):
    (tmp_path / "bad.json").write_text("{")
    names = {"image": str(image), "missing": str(tmp_path / "none.json"), "bad": str(tmp_path / "bad.json")}
    before = image.read_bytes()
    result = run(*(arg.format(**names) for arg in args))
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ")
    assert image.read_bytes() == before  # nothing was sent, nothing saved


def test_an_image_from_another_hsm_is_refused(image, tmp_path, monkeypatch):
    monkeypatch.setenv("CITYCARD_DATA_DIR", str(tmp_path / "elsewhere"))
    result = run("info", str(image))
    assert result.exit_code == 2
    assert "this HSM does not hold" in result.stderr


def test_real_process_missing_image(citycard, tmp_path, monkeypatch):
    monkeypatch.setenv("CITYCARD_DATA_DIR", str(tmp_path / "data"))
    result = citycard("card", "info", str(tmp_path / "none.json"))
    assert result.code == 2
    assert result.err.strip() == f"error: card image {tmp_path / 'none.json'} does not exist"


def test_public_state_keeps_maps_of_sealed_items_and_drops_only_the_blobs():
    from citycard.cli.card_inspect import public_state

    item = {"sealed": "AB" * 40, "kcv": "123456", "kcv_method": "SM4"}
    state = {"secrets": {"sealed": {"keys/GM": item}, "kcvs": {"GM": "0A0B0C"}}, "ec_balance_fen": -5}
    assert public_state(state) == {
        "secrets": {"sealed": {"keys/GM": {"kcv": "123456", "kcv_method": "SM4"}}, "kcvs": {"GM": "0A0B0C"}},
        "ec_balance_fen": {"fen": -5, "yuan": "-0.05"},
    }
