"""A card process killed at random moments (SIGKILL, mid-transaction or mid-save) leaves an image that
loads, whose ATC never repeats and whose EC balance matches the purchases the card approved.

The child runs qPBOC offline EC purchases in a loop through the real OS, application and sealed image
file and reports each approved answer on stdout; the parent kills it and checks the image.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from citycard.cli.main import app  # noqa: F401 - the package must import before we fork children

PRICE_FEN = 1  # 50,000 purchases of balance: far more than four rounds of ~1 s make (~2,000 taps/s)
INITIAL_FEN = 50_000

CHILD = textwrap.dedent(
    """
    import sys
    from citycard.card import load_card
    from citycard.hsm import SoftHSM

    h = bytes.fromhex
    card = load_card(sys.argv[1], hsm=SoftHSM.open())
    aid = h("A000000333010101")
    # qPBOC PDOL of citizen-card-gm: TTQ, 9F02, 9F03, 9F1A, 95, 5F2A, 9A, 9C, 9F37, DF60, DF69
    for n in range(100000):
        card.interface = "contactless"
        card.power_on()
        assert card.process(h("00A404000E325041592E5359532E444446303100"))[-2:] == h("9000")
        assert card.process(h("00A4040008") + aid + h("00"))[-2:] == h("9000")
        data = (h("28000000") + h(sys.argv[2]) + h("000000000000") + h("0156") + h("0000000000") + h("0156")
                + h("261127") + h("00") + n.to_bytes(4, "big") + h("00") + h("01"))
        rapdu = card.process(h("80A8000025") + h("8323") + data + h("00"))
        print(rapdu[-2:].hex(), flush=True)
    """
)


def _get_data(card, tag: str) -> bytes:
    rapdu = card.process(bytes.fromhex("80CA" + tag + "00"))
    assert rapdu[-2:] == b"\x90\x00", rapdu.hex()
    return rapdu[3:-2]


@pytest.fixture
def funded_card(tmp_path, monkeypatch):
    monkeypatch.setenv("CITYCARD_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CITYCARD_HSM_MASTER_KEY", raising=False)
    profile = Path(__file__).parents[2] / "src/citycard/data/profiles/citizen-card-gm.toml"
    text = profile.read_text(encoding="utf-8").replace(
        "ec_initial_balance_fen = 0 ", f"ec_initial_balance_fen = {INITIAL_FEN} "
    )
    assert f"ec_initial_balance_fen = {INITIAL_FEN}" in text
    funded = tmp_path / "funded.toml"
    funded.write_text(text.replace('name = "citizen-card-gm"', 'name = "funded"'), encoding="utf-8")
    image = tmp_path / "card.json"
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "citycard.cli.main",
            "card",
            "new",
            "--profile",
            str(funded),
            "--out",
            str(image),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "CITYCARD_DATA_DIR": str(tmp_path)},
        check=False,
    )
    assert made.returncode == 0, made.stderr
    return image


def test_sigkill_at_random_moments_keeps_the_image_consistent(funded_card, tmp_path):
    from citycard.card import load_card
    from citycard.hsm import SoftHSM

    rng = random.Random(20261127)
    env = {**os.environ, "CITYCARD_DATA_DIR": str(tmp_path)}
    approved_total = 0
    last_atc = 0
    for _round in range(4):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(funded_card), f"{PRICE_FEN:012d}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        time.sleep(rng.uniform(0.8, 1.6))  # imports take ~0.5 s; then it is deep in its purchase loop
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=30)
        answers = out.split()
        assert child.returncode == -signal.SIGKILL, err
        assert answers, f"the child approved nothing before the kill: {err[-2000:]}"
        assert set(answers) <= {"9000"}, answers[:5]
        approved_total += len(answers)

        card = load_card(funded_card, hsm=SoftHSM.open())
        card.interface = "contactless"
        card.power_on()
        card.process(bytes.fromhex("00A4040008A00000033301010100"))
        atc = int.from_bytes(_get_data(card, "9F36"), "big")
        balance = int(_get_data(card, "9F79").hex())
        # every answer that left the card was saved first; a purchase saved but killed before its
        # answer left may count on the card without being reported, never the other way round
        spent = INITIAL_FEN - balance
        assert spent % PRICE_FEN == 0
        assert approved_total <= spent // PRICE_FEN <= approved_total + 1
        approved_total = spent // PRICE_FEN
        assert atc >= approved_total and atc > last_atc, (atc, last_atc)
        last_atc = atc
        leftovers = [
            p
            for p in funded_card.parent.iterdir()
            if p.name.startswith(funded_card.name) and p != funded_card
        ]
        json.loads(funded_card.read_text())  # the image file itself is whole
        assert len(leftovers) <= 1  # at most one temp file from the killed write, ignored on load
