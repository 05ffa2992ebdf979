"""HostServer in front of the real IssuerHost over TCP (SQLite and PostgreSQL): purchase, forged
ARQC, online PIN translated from the terminal's session PIK to the issuer's PIN key, reversal ×3."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime

import pytest
from tests.host.test_server import RunningServer

from citycard.crypto import GM, INTL
from citycard.host.client import HostClient
from citycard.host.issuer import IssuerHost, load_issuer_configs
from citycard.host.loadgen import test_card
from citycard.host.server import HostServer, threaded
from citycard.hsm import SoftHSM
from citycard.iso8583 import builders
from citycard.ledger import balance_fen, check_invariants

PAN_INTL, PAN_GM = "6235480000000016", "6235480000000024"
TERMINAL = builders.Terminal(terminal_id="I0000001", merchant_id="M00000000000077")
BALANCE_FEN = 100_000


@pytest.fixture
def bank(engine) -> Iterator[tuple[RunningServer, IssuerHost, SoftHSM]]:
    config = load_issuer_configs()["citybank"]
    hsm = SoftHSM.ephemeral()
    issuer = IssuerHost(config, engine=engine, hsm=hsm)
    issuer.provision_keys()
    for pan, suite in ((PAN_INTL, INTL), (PAN_GM, GM)):
        issuer.enrol_card(pan=pan, psn=1, expiry=date(2030, 12, 31), suite=suite, pin="1234",
                          account_balance_fen=BALANCE_FEN)  # fmt: skip
    hsm.generate_key(f"tmk:{TERMINAL.terminal_id}", "TMK", INTL)
    pin_keys = {name: labels.pin_key for name, labels in config.keys.items()}
    running = RunningServer(HostServer(threaded(issuer), hsm=hsm, institution_id=config.institution_id,
                                       pin_keys=pin_keys))  # fmt: skip
    yield running, issuer, hsm
    running.shutdown()


def _card(hsm: SoftHSM, pan: str, suite):  # type: ignore[no-untyped-def]
    return test_card(hsm, load_issuer_configs()["citybank"].labels(suite).imk_ac, pan=pan, psn=1, suite=suite)


def test_purchase_forgery_pin_and_reversal_over_tcp(bank) -> None:
    running, issuer, hsm = bank
    intl, gm = _card(hsm, PAN_INTL, INTL), _card(hsm, PAN_GM, GM)
    now = datetime.now(UTC)
    with HostClient("127.0.0.1", running.port, hsm=hsm) as client:  # one HSM, separate labels per side
        client.sign_on(terminal_id=TERMINAL.terminal_id, merchant_id=TERMINAL.merchant_id)
        approved = client.exchange(
            gm.request("purchase", terminal=TERMINAL, stan=1, amount_fen=500, when=now)
        )
        assert approved["39"] == "00" and approved["4"] == "000000000500"
        forged = client.exchange(gm.request("purchase", terminal=TERMINAL, stan=2, amount_fen=700, when=now,
                                            tamper=True))  # fmt: skip
        assert forged["39"] == "05"  # the issuer's cryptogram-failure code (docs/issuer.md)

        def with_pin(stan: int, pin: str) -> dict:
            fields = intl.request("authorisation", terminal=TERMINAL, stan=stan, amount_fen=300, when=now)
            fields.update({"52": client.pin_block(terminal_id=TERMINAL.terminal_id, pin=pin, pan=PAN_INTL),
                           "26": "12", "22": "051"})  # fmt: skip
            return fields

        assert client.exchange(with_pin(3, "9999"))["39"] == "55"  # translated to the ZPK, wrong PIN
        pin_ok = with_pin(4, "1234")
        assert client.exchange(pin_ok)["39"] == "00"
        for _ in range(3):
            reversed_ = client.exchange(builders.reversal(pin_ok))
            assert (reversed_["t"], reversed_["39"]) == ("0410", "00")
    with issuer.engine.connect() as conn:
        assert balance_fen(conn, f"citybank:card:{PAN_GM}:01") == BALANCE_FEN - 500
        assert balance_fen(conn, f"citybank:card:{PAN_INTL}:01") == BALANCE_FEN  # reversed once
        assert balance_fen(conn, f"citybank:merchant:{TERMINAL.merchant_id}") == 500
        assert check_invariants(conn) == []


GM_TERMINAL = builders.Terminal(terminal_id="G0000001", merchant_id="M00000000000078")


@pytest.mark.parametrize("card_suite", [INTL, GM], ids=["INTL card", "GM card"])
@pytest.mark.parametrize("terminal_suite", [INTL, GM], ids=["INTL terminal", "GM terminal"])
def test_online_pin_from_terminals_of_both_suites(bank, terminal_suite, card_suite) -> None:
    """A GM terminal's PIK is SM4: its PIN block is 16 bytes and travels in F57 (F52 is b64); an INTL
    terminal's 8-byte block in F52. The server translates either to the issuer's PIN key of the PIK's
    suite; the issuer checks it against the PVV under the card's PVK."""
    running, issuer, hsm = bank
    terminal = GM_TERMINAL if terminal_suite is GM else TERMINAL
    if terminal_suite is GM:
        hsm.generate_key(f"tmk:{terminal.terminal_id}", "TMK", GM)
    pan = PAN_GM if card_suite is GM else PAN_INTL
    card = _card(hsm, pan, card_suite)
    now = datetime.now(UTC)
    with HostClient("127.0.0.1", running.port, hsm=hsm) as client:
        client.sign_on(terminal_id=terminal.terminal_id, merchant_id=terminal.merchant_id)

        def with_pin(stan: int, pin: str) -> dict:
            block = client.pin_block(terminal_id=terminal.terminal_id, pin=pin, pan=pan)
            assert len(block) == terminal_suite.block_bytes
            fields = card.request("authorisation", terminal=terminal, stan=stan, amount_fen=300, when=now)
            fields.update({builders.pin_field(block): block, "26": "12", "22": "051"})
            return fields

        wrong = with_pin(1, "9999")
        assert ("57" in wrong) is (terminal_suite is GM) and ("52" in wrong) is (terminal_suite is INTL)
        assert client.exchange(wrong)["39"] == "55"
        assert client.exchange(with_pin(2, "1234"))["39"] == "00"
        garbled = with_pin(3, "1234")
        field = builders.pin_field(garbled.get("52", garbled.get("57")))
        garbled[field] = bytes(b ^ 0x5A for b in garbled[field])
        # 3DES: any 8 bytes translate and fail the PVV (55); SM4: the padding check fails (A7)
        assert client.exchange(garbled)["39"] == ("A7" if terminal_suite is GM else "55")
        swapped = with_pin(4, "1234")  # the 3DES block in F57, or half the SM4 block in F52
        block = swapped.pop(field)
        swapped["57" if field == "52" else "52"] = block[:8]
        assert client.exchange(swapped)["39"] == "A7"
    with issuer.engine.connect() as conn:
        assert balance_fen(conn, f"citybank:card:{pan}:01") == BALANCE_FEN - 300
        assert check_invariants(conn) == []
