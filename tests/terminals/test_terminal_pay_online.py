"""`citycard terminal pay --online HOST:PORT` end to end: separate processes, real TCP.

The issuer is the real one: ``citycard host serve --issuer citybank`` (B1's IssuerHost behind B2's
HostServer, SQLite in the data directory), the card enrolled with ``citycard host enrol`` and the
terminal's TMK made by ``citycard host terminal-key``, so the terminal signs on and MACs its
messages. All processes share the data directory, hence the HSM; the card image is personalised
there. A host that never answers is the stand-in (``python -m tests.terminals.issuer_standin
silent``): the real one cannot be told to stay silent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from citycard.terminals.store import TerminalStore

ROOT = Path(__file__).resolve().parents[2]
BALANCE_FEN = 5_000  # the card's EC balance
ACCOUNT_YUAN = "100.00"  # the cardholder's bank account at the issuer
START_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("citycard-online")


@pytest.fixture(scope="module")
def env(data_dir) -> dict[str, str]:
    return {**os.environ, "CITYCARD_DATA_DIR": str(data_dir)}


def personalise_and_enrol(data_dir: Path, env: dict[str, str], directory: Path, profile: str,
                          *enrol_options: str) -> Path:  # fmt: skip
    """A card of ``profile`` personalised into ``directory`` with the HSM all processes open (the data
    directory's), enrolled at the issuer citybank with ACCOUNT_YUAN in its account."""
    from citycard.cli.bench_card import personalise_card
    from citycard.hsm import SoftHSM

    directory.mkdir(exist_ok=True)
    old = os.environ.get("CITYCARD_DATA_DIR")
    os.environ["CITYCARD_DATA_DIR"] = str(data_dir)
    try:
        path, prepared = personalise_card(directory, SoftHSM.open(), profile=profile, balance_fen=BALANCE_FEN)
    finally:
        if old is None:
            del os.environ["CITYCARD_DATA_DIR"]
        else:
            os.environ["CITYCARD_DATA_DIR"] = old
    suite = "intl" if profile.endswith("-intl") else "gm"
    host_command(env, "enrol", "--issuer", "citybank", "--pan", prepared.pan, "--psn", str(int(prepared.psn)),
                 "--expiry", prepared.expiry.strftime("%y%m"), "--suite", suite, "--balance", ACCOUNT_YUAN,
                 *enrol_options)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def master_card(data_dir, env) -> Path:
    """A GM debit card enrolled at the issuer with 100.00 yuan in its account; terminal 00000001 has
    its TMK."""
    path = personalise_and_enrol(data_dir, env, data_dir, "pboc-debit-gm")
    host_command(env, "terminal-key", "--terminal-id", "00000001", "--suite", "gm")
    return path


def host_command(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "citycard.cli.main", "host", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def intl_pin_card(data_dir, env) -> Path:
    """An INTL debit card whose CVM list asks for the online PIN first, enrolled with PIN 4321;
    terminal 00000002 has an INTL TMK, so its session PIK is 3DES (F52 b64)."""
    path = personalise_and_enrol(data_dir, env, data_dir / "intl", "pboc-debit-intl", "--pin", "4321")
    host_command(env, "terminal-key", "--terminal-id", "00000002", "--suite", "intl")
    return path


@pytest.fixture(scope="module")
def gm_pin_card(data_dir, env) -> Path:
    """The GM twin: terminal 00000003 has a GM TMK, so its session PIK is SM4 and the 16-byte PIN
    block travels in F57 (F52 is b64; UNCERTAIN for CUPS, docs/hosts.md)."""
    path = personalise_and_enrol(data_dir, env, data_dir / "gm-pin", "pboc-debit-gm", "--pin", "4321")
    host_command(env, "terminal-key", "--terminal-id", "00000003", "--suite", "gm")
    return path


def issuer_process(env: dict[str, str], mode: str) -> Iterator[int]:
    """``approve`` / ``no-mac``: the real issuer (``citycard host serve``); ``silent``: the stand-in."""
    if mode == "silent":
        command = [sys.executable, "-m", "tests.terminals.issuer_standin", mode]
    else:
        command = [sys.executable, "-m", "citycard.cli.main", "host", "serve", "--issuer", "citybank"]
        command += ["--no-mac"] if mode == "no-mac" else []
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert line.startswith("listening on 127.0.0.1:"), (
            line,
            process.stderr.read() if process.stderr else "",
        )
        yield int(line.rsplit(":", 1)[1])
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def issuer(env) -> Iterator[int]:
    yield from issuer_process(env, "approve")


def pay(card: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "citycard.cli.main", "terminal", "pay", "--card", str(card), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def card(master_card, tmp_path) -> Path:
    copy = tmp_path / "card.json"
    copy.write_bytes(master_card.read_bytes())
    return copy


def test_terminal_pay_online_is_approved_by_the_issuer(card, env, issuer):
    done = pay(card, env, "--amount", "12.50", "--online", f"127.0.0.1:{issuer}", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "approved_online" and result["authorisation_response_code"] == "00"
    assert result["amount_fen"] == 1250 and result["suite"] == "GM"
    assert "issuer_authentication_performed" in result["tsi_bits"]  # the card accepted the ARPC
    assert result["cid"] == "40"  # and gave a TC at the second GENERATE AC
    log = result["online"]["log"]
    assert log[0] == "signed on with tmk:00000001: messages carry a MAC"
    assert any(line.startswith("0200 STAN") and line.endswith("F39 00") for line in log), log
    assert result["online"]["pending_reversals"] == 0


@pytest.mark.parametrize("suite", ["INTL", "GM"])
def test_online_pin_under_the_session_pik_is_checked_by_the_issuer(
    suite, intl_pin_card, gm_pin_card, env, issuer
):
    """The right PIN is approved, a wrong one gets 55 — one card, so its ATC keeps rising (the
    issuer refuses a repeated ATC). INTL: 3DES block in F52; GM: SM4 block in F57."""
    # both cards and terminal keys exist before the issuer starts: it loads the TMKs when it starts
    card, terminal_id = (intl_pin_card, "00000002") if suite == "INTL" else (gm_pin_card, "00000003")
    for pin, outcome, code in (("4321", "approved_online", "00"), ("9999", "declined", "55")):
        done = pay(
            card, env, "--amount", "12.50", "--online", f"127.0.0.1:{issuer}",
            "--terminal-id", terminal_id, "--pin", pin, "--json",
        )  # fmt: skip
        result = json.loads(done.stdout)
        assert result["cvm_results"] == "420300"  # online PIN: the issuer decides
        assert "online_pin_entered" in result["tvr_bits"]
        why = (result["reasons"], result["online"])
        assert (result["outcome"], result["authorisation_response_code"]) == (outcome, code), why
        assert result["suite"] == suite
        assert result["online"]["log"][0] == f"signed on with tmk:{terminal_id}: messages carry a MAC"


def test_terminal_pay_online_above_the_account_balance_is_declined_by_the_issuer(card, env, issuer):
    done = pay(card, env, "--amount", "500.00", "--online", f"127.0.0.1:{issuer}", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "declined"
    assert result["authorisation_response_code"] not in ("00", "Y3", "Z3")  # the issuer's own code
    assert result["reasons"][-1].startswith("declined by the issuer")
    assert result["online"]["pending_reversals"] == 0


def test_terminal_pay_online_timeout_leaves_a_reversal_that_the_next_run_sends(card, env, data_dir):
    terminal_id = "00000077"
    for port in issuer_process(env, "silent"):
        done = pay(
            card, env, "--amount", "12.50", "--online", f"127.0.0.1:{port}", "--timeout", "0.5",
            "--terminal-id", terminal_id, "--json",
        )  # fmt: skip
        assert done.returncode == 1, done.stdout + done.stderr
        result = json.loads(done.stdout)
        assert result["authorisation_response_code"] in ("Y3", "Z3")
        assert result["online"]["pending_reversals"] == 1
    (pending,) = TerminalStore(data_dir, terminal_id).pending
    assert pending.reason == "98"
    for port in issuer_process(env, "no-mac"):  # the next run: the reversal goes first (no TMK: no MAC)
        done = pay(
            card, env, "--amount", "12.50", "--online", f"127.0.0.1:{port}", "--terminal-id", terminal_id,
            "--json",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        result = json.loads(done.stdout)
        assert result["online"]["pending_reversals"] == 0
        assert any(f"0400 STAN {pending.stan} acknowledged" in line for line in result["online"]["log"])
    assert TerminalStore(data_dir, terminal_id).pending == ()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--online", "localhost"), "--online must be HOST:PORT"),
        (("--online", "127.0.0.1:0"), "--online must be HOST:PORT with a port 1 to 65535"),
        (("--terminal-id", "T1"), "--terminal-id must be 8 letters or digits"),
        (("--timeout", "0"), "--timeout must be more than 0"),
    ],
)
def test_bad_online_options_exit_2(card, env, args, message):
    done = pay(card, env, "--amount", "1.00", *args)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {message}")


def ec_state(data_dir: Path, card: Path, env: dict[str, str]) -> tuple[int, int, int]:
    """(the card's 9F79, the issuer's EC shadow balance, the card's EC ledger account) in fen."""
    from sqlalchemy import select

    from citycard.db import database_url, make_engine
    from citycard.host.issuer import tables
    from citycard.ledger import balance_fen

    info = subprocess.run(
        [sys.executable, "-m", "citycard.cli.main", "card", "info", str(card), "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    application = json.loads(info.stdout)["applications"][0]["state"]
    on_card = application["state"]["ec_balance_fen"]["fen"]
    records = b"".join(bytes.fromhex(r) for r in application["data"]["records"].values())
    at = records.index(b"\x5a\x08")  # the PAN (5A, 8 bytes BCD, F-padded) in the application records
    pan = records[at + 2 : at + 10].hex().upper().rstrip("F")
    engine = make_engine(database_url(data_dir))
    try:
        with engine.connect() as conn:
            shadow, psn = conn.execute(
                select(tables.cards.c.ec_balance_fen, tables.cards.c.psn).where(tables.cards.c.pan == pan)
            ).one()
            ledger = balance_fen(conn, f"citybank:ec:{pan}:{int(psn):02d}")
    finally:
        engine.dispose()
    return on_card, shadow, ledger


@pytest.fixture(scope="module")
def ec_card(data_dir, env) -> Path:
    """A GM debit card of its own (the other tests' copies share one ATC sequence, which the issuer
    would refuse as a replay), enrolled with its EC balance as the issuer's shadow."""
    ec_balance = f"{BALANCE_FEN // 100}.{BALANCE_FEN % 100:02d}"
    return personalise_and_enrol(data_dir, env, data_dir / "ec", "pboc-debit-gm", "--ec-balance", ec_balance)


def test_ec_load_over_tcp_tops_up_the_card_and_the_issuer_agrees(ec_card, env, issuer, data_dir):
    """圈存 end to end: `terminal pay --ec-load` → 0200/600000 over TCP (signed on, MACed) → the
    issuer verifies the ARQC, moves 30.00 from the bank account to the EC account and answers the
    04DA9F79 script with the new balance; the card runs it after the second GENERATE AC."""
    card = ec_card
    before = ec_state(data_dir, card, env)
    assert before[0] == before[1] == before[2]
    done = pay(card, env, "--amount", "30.00", "--ec-load", "--online", f"127.0.0.1:{issuer}", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["outcome"] == "approved_online" and result["authorisation_response_code"] == "00"
    assert any(line.startswith("0200 STAN") and line.endswith("F39 00") for line in result["online"]["log"])
    after = ec_state(data_dir, card, env)
    assert after == (before[0] + 3_000,) * 3


def test_ec_load_needs_online_and_contact(card, env):
    done = pay(card, env, "--amount", "1.00", "--ec-load")
    assert done.returncode == 2 and done.stderr.startswith(
        "error: --ec-load is an online contact transaction"
    )
