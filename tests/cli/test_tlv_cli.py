"""`citycard tlv decode`: JSON output, scheme names, one-line errors with exit 2; in-process and real process
(the ``citycard`` fixture of tests/cli/conftest.py runs ``python -m citycard.cli.main``)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from citycard.cli.main import app

runner = CliRunner()

PBOC_GPO = "7717" + "82027C00" + "9F360200AB" + "9F6C020000" + "9F5D06000000009950"


def run(*args: str):
    return runner.invoke(app, ["tlv", "decode", *args])


def test_decode_nested_template_pboc_names():
    result = run(PBOC_GPO.lower())
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [
        {
            "tag": "77",
            "name": "Response Message Template Format 2",
            "length": 23,
            "children": [
                {"tag": "82", "name": "Application Interchange Profile (AIP)", "length": 2, "value": "7C00"},
                {
                    "tag": "9F36",
                    "name": "Application Transaction Counter (ATC)",
                    "length": 2,
                    "value": "00AB",
                },
                {"tag": "9F6C", "name": "Card Transaction Qualifiers (CTQ)", "length": 2, "value": "0000"},
                {
                    "tag": "9F5D",
                    "name": "Available Offline Spending Amount",
                    "length": 6,
                    "value": "000000009950",
                },
            ],
        }
    ]


def test_scheme_changes_the_names():
    pboc = json.loads(run("9F7906000000012345").stdout)
    emv = json.loads(run("9F7906000000012345", "--scheme", "emv").stdout)
    assert pboc == [{"tag": "9F79", "name": "Electronic Cash Balance", "length": 6, "value": "000000012345"}]
    assert emv[0]["name"] == "VLP Available Funds"


def test_spaces_padding_and_unknown_tags():
    result = run("00 9F7F 01 AB FF DF8116 01 00")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"tag": "9F7F", "name": "Unknown", "length": 1, "value": "AB"},
        {"tag": "DF8116", "name": "User Interface Request Data", "length": 1, "value": "00"},
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["9C0"], "error: HEX: odd-length hex (3 digits)"),
        (["9CZZ"], "error: HEX: not hex (bad character 'Z')"),
        (["9F"], "error: Tag malformed, subsequent byte missing: tag '9F', offset 0"),
        (["9C01"], "error: Tag value malformed, expecting 1 byte(s): tag '9C', offset 2"),
        (["9C050000"], "error: Tag value malformed, expecting 5 byte(s): tag '9C', offset 2"),
        (["9C010005"], "error: Tag length malformed, length missing: tag '05', offset 4"),
        (["9C8400010001"], "error: Tag length 65537 exceeds the limit of 65536 bytes: tag '9C', offset 1"),
        (
            ["9C0100", "--scheme", "visa"],
            "error: --scheme: unknown tag scheme 'visa': expected one of 'pboc', 'emv'",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == message + "\n"


def test_help_shows_an_example():
    result = runner.invoke(app, ["tlv", "decode", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.stdout
    assert "citycard tlv decode 9F7906000000012345 --scheme pboc" in result.stdout


def test_real_process_decodes(citycard):
    result = citycard("tlv", "decode", "9C0101E0055F2A0202089F0200", "--scheme", "emv")
    assert result.code == 0, result.err
    assert json.loads(result.out) == [
        {"tag": "9C", "name": "Transaction Type", "length": 1, "value": "01"},
        {
            "tag": "E0",
            "name": "Unknown",
            "length": 5,
            "children": [{"tag": "5F2A", "name": "Transaction Currency Code", "length": 2, "value": "0208"}],
        },
        {"tag": "9F02", "name": "Amount, Authorised (Numeric)", "length": 0, "value": ""},
    ]


def test_real_process_bad_input_exit_2(citycard):
    result = citycard("tlv", "decode", "70035A0112FF9F")
    assert result.code == 2
    assert result.out == ""
    assert result.err == "error: Tag malformed, subsequent byte missing: tag '9F', offset 6\n"


def test_real_process_usage_error_exit_2(citycard):
    result = citycard("tlv", "decode")
    assert result.code == 2
    assert result.err.startswith("error: ")
    assert "HEX" in result.err
