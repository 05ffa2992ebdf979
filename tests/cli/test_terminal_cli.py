"""`citycard terminal pay`: a real process, a virtual card image, the kernel in between."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from citycard.cli.terminal import parse_amount_fen

BALANCE_FEN = 5_000


def _registered() -> bool:
    from citycard.cli.main import app

    return any(group.name == "terminal" for group in app.registered_groups)


def run_terminal(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``citycard terminal ...`` (or the group alone until main.py registers it)."""
    entry = ["-m", "citycard.cli.main", "terminal"] if _registered() else ["-m", "citycard.cli.terminal"]
    return subprocess.run(
        [sys.executable, *entry, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("citycard-data")


@pytest.fixture(scope="module")
def env(data_dir) -> dict[str, str]:
    return {**os.environ, "CITYCARD_DATA_DIR": str(data_dir)}


@pytest.fixture(scope="module")
def master_card(data_dir, env) -> tuple[Path, object]:
    """A GM electronic-cash card with 50.00 yuan, personalised with the HSM the CLI will open."""
    from citycard.cli.bench_card import personalise_card
    from citycard.hsm import SoftHSM

    old = os.environ.get("CITYCARD_DATA_DIR")
    os.environ["CITYCARD_DATA_DIR"] = str(data_dir)
    try:
        hsm = SoftHSM.open()
        path, prepared = personalise_card(data_dir, hsm, profile="pboc-ec-only-gm", balance_fen=BALANCE_FEN)
    finally:
        if old is None:
            del os.environ["CITYCARD_DATA_DIR"]
        else:
            os.environ["CITYCARD_DATA_DIR"] = old
    return path, prepared


@pytest.fixture
def card(master_card, tmp_path) -> Path:
    copy = tmp_path / "card.json"
    copy.write_bytes(master_card[0].read_bytes())
    return copy


@pytest.mark.parametrize(
    ("text", "fen"), [("12.50", 1250), ("12.5", 1250), ("12", 1200), ("0.01", 1), (" 7.05 ", 705)]
)
def test_amounts_are_parsed_exactly_to_the_fen(text, fen):
    assert parse_amount_fen(text) == fen


@pytest.mark.parametrize("text", ["12.505", "-1", "1e3", "12,50", "0", "0.00", "abc", "", "1.2.3", "12."])
def test_bad_amounts_are_refused(text):
    with pytest.raises(ValueError, match="--amount"):
        parse_amount_fen(text)


def test_bad_amount_exits_2_with_one_line(env, card):
    done = run_terminal("pay", "--card", str(card), "--amount", "12.505", "--contactless", env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --amount '12.505' is not an amount in yuan such as 12.50 (digits, at most 2 decimals)"
    ]


def test_card_and_reader_together_exit_2(env, card):
    done = run_terminal("pay", "--card", str(card), "--reader", "pcsc", "--amount", "1", env=env)
    assert done.returncode == 2 and "exactly one of --card" in done.stderr


def test_missing_card_file_exits_2(env, tmp_path):
    done = run_terminal(
        "pay", "--card", str(tmp_path / "nope.json"), "--amount", "1", "--contactless", env=env
    )
    assert (
        done.returncode == 2
        and done.stderr.strip() == f"error: --card {tmp_path / 'nope.json'}: no such file"
    )


def test_bad_reader_exits_2(env):
    done = run_terminal("pay", "--reader", "usb", "--amount", "1", env=env)
    assert done.returncode == 2 and "--reader must be pcsc or pcsc:NAME" in done.stderr


def test_contactless_purchase_is_approved_offline_and_the_image_is_saved(env, card, master_card):
    done = run_terminal("pay", "--card", str(card), "--amount", "12.50", "--contactless", "--json", env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "approved_offline"
    assert result["amount_fen"] == 1250 and result["balance_fen_after"] == BALANCE_FEN - 1250
    assert result["batch_record"]["pan"] == master_card[1].pan
    assert result["suite"] == "GM" and result["tvr_bits"] == []
    again = run_terminal("pay", "--card", str(card), "--amount", "0.50", "--contactless", "--json", env=env)
    assert json.loads(again.stdout)["balance_fen_after"] == BALANCE_FEN - 1250 - 50  # the image was saved
    assert json.loads(again.stdout)["batch_record"]["atc"] == "0002"


def test_human_output_shows_the_steps_and_the_outcome(env, card):
    done = run_terminal("pay", "--card", str(card), "--amount", "1.50", "--contactless", env=env)
    assert done.returncode == 0, done.stderr
    for text in ("SELECT PPSE", "GPO", "READ RECORD", "FDDA", "APPROVED_OFFLINE", "48.50 yuan"):
        assert text in done.stdout


def test_not_enough_electronic_cash_is_not_approved(env, card):
    done = run_terminal("pay", "--card", str(card), "--amount", "50.01", "--contactless", "--json", env=env)
    assert done.returncode == 1
    assert json.loads(done.stdout)["outcome"] == "online_request"  # the AID row's TTQ is online-capable


def test_blacklisted_card_is_declined(env, card, master_card, tmp_path):
    from citycard.kernel.params import ExceptionFile

    listed = tmp_path / "blacklist.bin"
    ExceptionFile.build([(master_card[1].pan, master_card[1].psn)], version=3).save(listed)
    done = run_terminal(
        "pay",
        "--card",
        str(card),
        "--amount",
        "1",
        "--contactless",
        "--blacklist",
        str(listed),
        "--json",
        env=env,
    )
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["outcome"] == "declined" and result["tvr_bits"] == ["card_on_exception_file"]


def test_apdus_are_printed_on_stderr(env, card):
    done = run_terminal(
        "pay", "--card", str(card), "--amount", "1", "--contactless", "--apdus", "--json", env=env
    )
    assert done.returncode == 0
    assert "> 00A404000E325041592E5359532E444446303100" in done.stderr


@pytest.fixture
def no_random_selection(tmp_path) -> Path:
    """The shipped AID table without random transaction selection, so a contact run is deterministic."""
    from importlib import resources

    text = resources.files("citycard").joinpath("data/terminal/aids.toml").read_text(encoding="utf-8")
    text = text.replace("random_threshold_fen = 50_000", "random_threshold_fen = 0")
    text = text.replace("random_target_percent = 20", "random_target_percent = 0")
    text = text.replace("random_max_target_percent = 50", "random_max_target_percent = 0")
    path = tmp_path / "aids.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_contact_electronic_cash_purchase(env, card, no_random_selection):
    done = run_terminal(
        "pay", "--card", str(card), "--amount", "3.00", "--aids", str(no_random_selection), "--json", env=env
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "approved_offline" and result["interface"] == "contact"
    assert "CDA" in [step["step"] for step in result["steps"]]
    assert result["batch_record"]["amount"] == "000000000300"


def test_contact_above_the_floor_limit_is_an_online_request(env, card, no_random_selection):
    done = run_terminal(
        "pay",
        "--card",
        str(card),
        "--amount",
        "1000.00",
        "--aids",
        str(no_random_selection),
        "--json",
        env=env,
    )
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["outcome"] == "online_request"
    assert "transaction_exceeds_floor_limit" in result["tvr_bits"]
    assert result["field55"].startswith("9F2608")


def test_bad_aid_table_exits_2(env, card, tmp_path):
    broken = tmp_path / "aids.toml"
    broken.write_text('[[aid]]\naid = "A0"\n', encoding="utf-8")
    done = run_terminal("pay", "--card", str(card), "--amount", "1", "--aids", str(broken), env=env)
    assert (
        done.returncode == 2
        and done.stderr.startswith("error: ")
        and len(done.stderr.strip().splitlines()) == 1
    )
