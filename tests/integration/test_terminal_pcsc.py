"""The kernel through the real PC/SC stack: pyscard → pcscd → vpcd → VpcdBridge → virtual card.

``citycard card serve`` (its own process) + ``citycard terminal pay --reader pcsc --contactless``
(another process) complete a qPBOC electronic-cash purchase; the kernel in-process over
:class:`PcscTransport` does it in both suites. Needs pcscd with vsmartcard's vpcd driver and
pyscard (``.ci/run`` sets them up); without them these tests skip, with
CITYCARD_REQUIRE_SERVICES=1 they fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tests.conftest import require_service
from tests.integration.test_pcsc_vpcd import pcsc_problem, served

from citycard.reader import VPCD_PORT, InProcessTransport, PcscTransport

BALANCE_FEN = 10_000
PURCHASE_FEN = 150
SERVE_SLOT = 1  # `card serve` in its own process takes slot 1; in-process bridges try slot 0 first


@pytest.fixture(scope="module")
def pcsc() -> None:
    problem = pcsc_problem()
    require_service(problem is None, f"PC/SC through pcscd + vpcd: {problem}")


def _terminal_command() -> list[str]:
    from citycard.cli.main import app

    if any(group.name == "terminal" for group in app.registered_groups):
        return [sys.executable, "-m", "citycard.cli.main", "terminal"]
    return [sys.executable, "-m", "citycard.cli.terminal"]  # until main.py registers the group


def _personalise(data_dir, profile: str):
    from citycard.cli.bench_card import personalise_card
    from citycard.hsm import SoftHSM

    old = os.environ.get("CITYCARD_DATA_DIR")
    os.environ["CITYCARD_DATA_DIR"] = str(data_dir)
    try:
        return personalise_card(data_dir, SoftHSM.open(), profile=profile, balance_fen=BALANCE_FEN)
    finally:
        if old is None:
            del os.environ["CITYCARD_DATA_DIR"]
        else:
            os.environ["CITYCARD_DATA_DIR"] = old


def test_card_serve_and_terminal_pay_complete_a_qpboc_purchase(pcsc, tmp_path):
    path, prepared = _personalise(tmp_path, "pboc-ec-only-gm")
    env = {**os.environ, "CITYCARD_DATA_DIR": str(tmp_path)}
    serve = [sys.executable, "-m", "citycard.cli.main", "card", "serve", str(path)]
    port = VPCD_PORT + SERVE_SLOT
    serving = subprocess.Popen(
        [*serve, "--port", str(port), "--interface", "contactless"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader = f"Virtual PCD 00 {SERVE_SLOT:02d}"
    try:
        with PcscTransport(reader, card_wait_s=10) as probe:  # wait until pcscd sees the card
            assert (
                probe.transmit(bytes.fromhex("00A404000E325041592E5359532E444446303100"))[-2:] == b"\x90\x00"
            )
        paid = subprocess.run(
            [
                *_terminal_command(),
                "pay",
                "--reader",
                f"pcsc:{reader}",
                "--contactless",
                "--amount",
                "1.50",
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        serving.send_signal(signal.SIGINT)
        serving.communicate(timeout=10)
    assert paid.returncode == 0, paid.stderr + paid.stdout
    result = json.loads(paid.stdout)
    assert result["outcome"] == "approved_offline"
    assert result["balance_fen_after"] == BALANCE_FEN - PURCHASE_FEN
    assert result["batch_record"]["pan"] == prepared.pan
    assert [step["step"] for step in result["steps"]][-3:] == ["FDDA", "exception file", "outcome"]
    # the serving process saved the card: the purchase is in the image
    from citycard.card import load_card
    from citycard.hsm import SoftHSM

    os.environ["CITYCARD_DATA_DIR"] = str(tmp_path)
    try:
        card = load_card(path, hsm=SoftHSM.open())
    finally:
        del os.environ["CITYCARD_DATA_DIR"]
    with InProcessTransport(card) as transport:
        transport.transmit(bytes.fromhex("00A4040008") + prepared.aid + b"\x00")
        assert (
            transport.transmit(bytes.fromhex("80CA9F7900"))[3:-2].hex()
            == f"{BALANCE_FEN - PURCHASE_FEN:012d}"
        )


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_kernel_over_pcsc_in_both_suites(pcsc, tmp_path, suite):
    from citycard.card import load_card
    from citycard.hsm import SoftHSM
    from citycard.kernel.context import Terminal, TerminalProfile
    from citycard.kernel.outcome import Outcome
    from citycard.kernel.params import AidTable, CapkTable
    from citycard.kernel.qpboc import run_qpboc

    hsm = SoftHSM.ephemeral()
    from citycard.cli.bench_card import personalise_card

    profile = {"GM": "pboc-ec-only-gm", "INTL": "pboc-debit-intl"}[suite]
    path, _ = personalise_card(tmp_path, hsm, profile=profile, balance_fen=BALANCE_FEN)
    card = load_card(path, hsm=hsm)
    card.interface = "contactless"
    terminal = Terminal(TerminalProfile.bus_validator(), AidTable.load(), CapkTable.load().with_hsm(hsm))
    with served(card) as (_, reader), PcscTransport(reader) as transport:
        started = time.perf_counter()
        result = run_qpboc(transport, terminal, amount_fen=PURCHASE_FEN)
        elapsed_ms = (time.perf_counter() - started) * 1000
    assert result.kind is Outcome.APPROVED_OFFLINE, result.reasons
    assert result.suite == suite and result.balance_fen_after == BALANCE_FEN - PURCHASE_FEN
    print(f"\nqPBOC tap through pcscd ({suite}): {elapsed_ms:.1f} ms")
    assert elapsed_ms < 400  # the DB31/T 239-2020 gate budget for a whole purchase
