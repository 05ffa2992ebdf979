"""The AID table: the shipped file, validation with exact messages, matching."""

from __future__ import annotations

import dataclasses

import pytest

from citycard.kernel.params import AidParameters, AidTable, AidTableError

DEBIT = bytes.fromhex("A000000333010101")

# A minimal valid table: every field in [defaults], one AID.
DEFAULTS = """
[defaults]
partial_selection = true
version = "0030"
tac_default = "D84000A800"
tac_online = "D84004F800"
tac_denial = "0010000000"
floor_limit_fen = 0
random_threshold_fen = 0
random_target_percent = 0
random_max_target_percent = 0
ddol_default = "9F3704"
tdol_default = ""
ec_terminal_limit_fen = 100_000
contactless_transaction_limit_fen = 10_000_000
contactless_offline_floor_limit_fen = 100_000
contactless_cvm_limit_fen = 100_000
online_pin_supported = true
ttq = "36000080"
terminal_capabilities = "E0E8C8"
additional_capabilities = "6000F0A001"
terminal_type = 0x22
country_code = "0156"
currency_code = "0156"
currency_exponent = 2
merchant_category = "4111"
ec_supported = true
sm_supported = true
"""


def table(rows: str, defaults: str = DEFAULTS) -> AidTable:
    return AidTable.from_toml(defaults + rows, source="t.toml")


def error(rows: str, defaults: str = DEFAULTS) -> str:
    with pytest.raises(AidTableError) as info:
        table(rows, defaults)
    return str(info.value)


def test_shipped_table_has_the_four_unionpay_aids_in_priority_order_with_pboc_values():
    aids = AidTable.load()
    assert [p.aid.hex().upper() for p in aids] == [
        "A000000333010101",
        "A000000333010102",
        "A000000333010103",
        "A000000333010106",
    ]
    debit = aids.match(DEBIT)
    assert debit is not None
    assert (
        debit.tac_default.hex().upper(),
        debit.tac_denial.hex().upper(),
        debit.tac_online.hex().upper(),
    ) == (
        "D84000A800",
        "0010000000",
        "D84004F800",
    )
    assert debit.version == b"\x00\x30"
    assert debit.ddol_default == bytes.fromhex("9F3704")
    assert (debit.country_code, debit.currency_code) == (b"\x01\x56", b"\x01\x56")
    assert debit.ec_terminal_limit_fen == 100_000
    assert debit.floor_limit_fen == 0
    ec = aids.match(bytes.fromhex("A000000333010106"))
    assert ec is not None and ec.label == "PBOC EC"
    assert (
        ec.floor_limit_fen,
        ec.random_threshold_fen,
        ec.random_target_percent,
        ec.random_max_target_percent,
    ) == (
        100_000,
        50_000,
        20,
        50,
    )


def test_exact_match_wins_and_partial_match_needs_partial_selection():
    rows = """
[[aid]]
aid = "A000000333"
label = "UNIONPAY ANY"
[[aid]]
aid = "A000000333010101"
label = "DEBIT"
[[aid]]
aid = "A000000004"
partial_selection = false
"""
    aids = table(rows)
    assert aids.match(DEBIT).label == "DEBIT"
    # the longest terminal AID that prefixes the card AID
    assert aids.match(DEBIT + b"\x01").label == "DEBIT"
    assert aids.match(bytes.fromhex("A000000333010102")).label == "UNIONPAY ANY"
    assert aids.match(bytes.fromhex("A0000000041010")) is None  # exact only for A000000004
    assert aids.match(bytes.fromhex("A000000004")).aid == bytes.fromhex("A000000004")
    assert aids.match(bytes.fromhex("A000000003")) is None


def test_entry_overrides_defaults_and_iteration_keeps_file_order():
    rows = """
[[aid]]
aid = "A000000333010106"
floor_limit_fen = 5000
random_threshold_fen = 1000
[[aid]]
aid = "A000000333010101"
"""
    aids = table(rows)
    assert [(p.aid.hex(), p.floor_limit_fen, p.random_threshold_fen) for p in aids] == [
        ("a000000333010106", 5000, 1000),
        ("a000000333010101", 0, 0),
    ]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            '[[aid]]\naid = "A000000333010101"\ntac_default = "D84000A8"',
            "t.toml: aid #1 (A000000333010101): tac_default (DF11) must be 5 bytes, got 4",
        ),
        (
            '[[aid]]\naid = "A000000333010101"\nrandom_target_percent = 100\nrandom_max_target_percent = 100',
            "t.toml: aid #1 (A000000333010101): random_target_percent (DF17) must be a percentage from 0 to 99, got 100",
        ),
        (
            '[[aid]]\naid = "A000000333010101"\nrandom_target_percent = 30\nrandom_max_target_percent = 20',
            "t.toml: aid #1 (A000000333010101): random_target_percent (DF17) 30 is above "
            "random_max_target_percent (DF16) 20",
        ),
        (
            '[[aid]]\naid = "A000000333010101"\ncontactless_cvm_limit_fen = -1',
            "t.toml: aid #1 (A000000333010101): contactless_cvm_limit_fen (DF21) must be an amount in fen "
            "from 0 to 999999999999, got -1",
        ),
        (
            '[[aid]]\naid = "A000000333010101"\nfloor_limit_fen = 4294967296',
            "t.toml: aid #1 (A000000333010101): floor_limit_fen (9F1B) must be an amount in fen "
            "from 0 to 4294967295, got 4294967296",
        ),
        (
            '[[aid]]\naid = "A000000333010101"\nfloor_limit_fen = 1000\nrandom_threshold_fen = 1000',
            "t.toml: aid #1 (A000000333010101): random_threshold_fen (DF15) 1000 must be below "
            "floor_limit_fen (9F1B) 1000 (Book 3 §10.6.2)",
        ),
        (
            '[[aid]]\naid = "A000000333010101"\nttq = "3600008G"',
            "t.toml: aid #1 (A000000333010101): ttq is not hex: '3600008G'",
        ),
        (
            '[[aid]]\naid = "A000000333010101"\nttq = 36000080',
            "t.toml: aid #1 (A000000333010101): ttq must be a hex string, got int",
        ),
        (
            '[[aid]]\naid = "A000000333010101"\nonline_pin_supported = 1',
            "t.toml: aid #1 (A000000333010101): online_pin_supported (DF18) must be true or false, got 1",
        ),
        (
            '[[aid]]\naid = "A000000333010101"\ncountry_code = "015A"',
            "t.toml: aid #1 (A000000333010101): country_code (9F1A) must be BCD digits, got 015A",
        ),
        (
            '[[aid]]\naid = "A000000333010101"\nddol_default = "9F0206"',
            "t.toml: aid #1 (A000000333010101): ddol_default (DF14) must ask for the unpredictable number 9F37, "
            "got 9F0206",
        ),
        (
            '[[aid]]\naid = "A000000333010101"\nddol_default = "9F37"',
            "t.toml: aid #1 (A000000333010101): ddol_default (DF14): DOL entry malformed, length byte missing: "
            "tag '9F37', offset 2",
        ),
        (
            '[[aid]]\naid = "A000000333010101"\nterminal_type = 0x27',
            "t.toml: aid #1 (A000000333010101): terminal_type (9F35) must be 11–16, 21–26 or 31–36 "
            "(Book 4 Annex A1), got 27",
        ),
        ('[[aid]]\naid = "A0000003"', "t.toml: aid #1 (A0000003): aid (9F06) must be 5 to 16 bytes, got 4"),
        (
            '[[aid]]\naid = "A000000333010101"\n[[aid]]\naid = "A000000333010101"',
            "t.toml: AID A000000333010101 is listed twice",
        ),
        ("", "t.toml: the AID table is empty: a terminal needs at least one AID"),
        ('[[aid]]\nlabel = "X"', "t.toml: aid #1: missing key 'aid' (9F06)"),
        (
            '[termnal]\nx = 1\n[[aid]]\naid = "A000000333010101"',
            "t.toml: unknown top-level key 'termnal' (expected [defaults] and [[aid]])",
        ),
        (
            '[[aid]]\naid = "A000000333010101"\nlabel = "ABCDEFGHIJKLMNOPQ"',
            "t.toml: aid #1 (A000000333010101): label must be text of at most 16 characters, got 'ABCDEFGHIJKLMNOPQ'",
        ),
    ],
)
def test_broken_tables_give_exact_messages(rows, message):
    assert error(rows) == message


def test_unknown_key_is_named_with_the_known_ones():
    message = error('[[aid]]\naid = "A000000333010101"\nfloor_limt_fen = 1000')
    assert message.startswith("t.toml: aid #1 (A000000333010101): unknown key 'floor_limt_fen' (known: aid, ")
    assert "floor_limit_fen" in message


def test_missing_field_without_defaults_names_field_and_tag():
    message = error('[[aid]]\naid = "A000000333010101"\nversion = "0030"', defaults="")
    assert message == "t.toml: aid #1 (A000000333010101): missing key 'partial_selection' (DF01)"


def test_not_toml_is_reported_with_the_parser_position():
    message = error('[[aid]\naid = "A0"')
    assert message.startswith("t.toml: not valid TOML: ")
    assert "line" in message


def test_load_from_a_path_and_a_missing_path(tmp_path):
    path = tmp_path / "aids.toml"
    path.write_text(DEFAULTS + '[[aid]]\naid = "A000000333010101"\n', encoding="utf-8")
    assert [p.aid for p in AidTable.load(path)] == [DEBIT]
    with pytest.raises(
        AidTableError, match=r"nope\.toml: cannot read the AID table: No such file or directory"
    ):
        AidTable.load(tmp_path / "nope.toml")


def test_parameters_are_validated_when_built_in_code_too():
    base = AidTable.load().match(DEBIT)
    assert (
        dataclasses.replace(base, floor_limit_fen=20_000, random_threshold_fen=10_000).floor_limit_fen
        == 20_000
    )
    with pytest.raises(AidTableError, match=r"^ttq \(9F66\) must be 4 bytes, got 3$"):
        dataclasses.replace(base, ttq=b"\x36\x00\x00")
    with pytest.raises(AidTableError, match=r"^terminal_capabilities \(9F33\) must be bytes, got str$"):
        dataclasses.replace(base, terminal_capabilities="E0E8C8")
    assert isinstance(base, AidParameters)
