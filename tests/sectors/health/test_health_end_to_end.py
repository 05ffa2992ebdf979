"""Issue 8 acceptance, end to end, on SQLite and PostgreSQL, with every wire real:

a citizen card made by the platform (API: apply … activate), the health application loaded onto
it through the platform (API: applications.load "health"), an issuer host on TCP (ISO 8583, signed
on, MACed) in front of the same database, the API server over HTTP, and two hospital desks.

The patient visits hospital 1 (registered with a rural co-operative scheme): the desk reads the
identity from the health application, pays the self-pay part online (ARQC → issuer → ARPC → TC),
writes the signed visit to the card and pushes the same record to the platform, which settles the
insurance share. At hospital 2 the record is invisible (403, audited) until the patient consents.
The card's records and the platform's agree; the ledger's invariants hold; a forged record is
refused by the platform. Institution record keys in both suites (SM2/SM3 and RSA/SHA-256).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.api.conftest import Live, active_card, new_key
from tests.host.test_server import RunningServer

from citycard import ledger
from citycard.card import load_card
from citycard.crypto.suite import GM, INTL
from citycard.db import read_transaction, write_transaction
from citycard.host.issuer import IssuerHost, load_issuer_configs
from citycard.host.server import HostServer, threaded
from citycard.iso8583 import builders
from citycard.kernel.context import Terminal, TerminalProfile
from citycard.kernel.params import AidTable, CapkTable
from citycard.platform import cards as platform_cards
from citycard.reader import InProcessTransport
from citycard.terminals.acquirer_link import Iso8583AcquirerLink, connect
from citycard.terminals.hospital_desk import DeskError, HisClient, HospitalDesk, compare_visits
from citycard.terminals.store import TerminalStore

HEALTH = {"health_record_no": "HR3301002026", "blood_abo": "1", "blood_rh": "1", "alerts": "C000",
          "valid_until": "2036-01-01"}  # fmt: skip
ACCOUNT_FEN = 100_000


@pytest.fixture(scope="module")
def issuer(live: Live) -> Iterator[RunningServer]:
    """The issuer host citybank on TCP, on the platform's database and HSM."""
    config = load_issuer_configs()["citybank"]
    host = IssuerHost(config, engine=live.engine, hsm=live.hsm)
    host.provision_keys()
    pin_keys = {name: labels.pin_key for name, labels in config.keys.items()}
    running = RunningServer(HostServer(threaded(host), hsm=live.hsm, institution_id=config.institution_id,
                                       pin_keys=pin_keys))  # fmt: skip
    yield running
    running.shutdown()


def _hospital(live: Live, suite: Any) -> dict[str, Any]:
    """A hospital: its record key in the HSM (the SAM), the institution with that public key, a
    sector API key bound to it, and a desk terminal with its TMK."""
    institution_id = "H" + secrets.token_hex(3).upper()
    merchant_id = f"8985{secrets.randbelow(10**11):011d}"
    live.hsm.create_institution_key(institution_id, suite)
    public = live.hsm.institution_public_key(institution_id, suite)
    with live.client("operator") as op:
        made = op.post("/v1/healthcare/institutions", headers={"Idempotency-Key": new_key()}, json={
            "institution_id": institution_id, "name": f"医院 {institution_id}", "merchant_id": merchant_id,
            "suite": suite.name, "public_key_hex": public.hex()})  # fmt: skip
        assert made.status_code == 201, made.text
        key = op.post("/v1/auth/api-keys", headers={"Idempotency-Key": new_key()},
                      json={"name": f"his-{institution_id.lower()}", "role": "sector", "subject": "health"})  # fmt: skip
        bound = op.post("/v1/healthcare/institutions/bindings", headers={"Idempotency-Key": new_key()},
                        json={"institution_id": institution_id, "principal": f"key:{key.json()['id']}"})  # fmt: skip
        assert bound.status_code == 201, bound.text
    terminal_id = "D" + secrets.token_hex(4).upper()[:7]
    live.hsm.generate_key(f"tmk:{terminal_id}", "TMK", GM)
    return {"id": institution_id, "merchant_id": merchant_id, "api_key": key.json()["key"],
            "terminal_id": terminal_id}  # fmt: skip


def _desk(
    live: Live, hospital: dict[str, Any], suite: Any, issuer: RunningServer, store_dir: Path
) -> HospitalDesk:
    terminal = Terminal(TerminalProfile(terminal_id=hospital["terminal_id"].encode(),
                                        merchant_id=hospital["merchant_id"].encode()),
                        AidTable.load(), CapkTable.load().with_hsm(live.hsm))  # fmt: skip

    def acquirer() -> Iso8583AcquirerLink:
        client = connect("127.0.0.1", issuer.port, hsm=live.hsm, tmk_label=f"tmk:{hospital['terminal_id']}")
        client.sign_on(terminal_id=hospital["terminal_id"], merchant_id=hospital["merchant_id"])
        return Iso8583AcquirerLink(client, TerminalStore(store_dir, hospital["terminal_id"]),
                                   builders.Terminal(terminal_id=hospital["terminal_id"],
                                                     merchant_id=hospital["merchant_id"]))  # fmt: skip

    return HospitalDesk(hospital["id"], suite, live.hsm, HisClient(live.base_url, hospital["api_key"]),
                        terminal=terminal, acquirer_for=acquirer)  # fmt: skip


def _card_with_health(live: Live) -> tuple[dict[str, Any], Any]:
    with live.client("operator") as op:
        card = active_card(live, op)
        loaded = op.post(f"/v1/cards/{card['id']}/applications", headers={"Idempotency-Key": new_key()},
                         json={"app_id": "health", "data": HEALTH})  # fmt: skip
        assert loaded.status_code == 201, loaded.text
    with write_transaction(live.engine) as conn:
        row = platform_cards.record(conn, card["id"])
        from tests.platform.test_cards_support import fund_account

        fund_account(conn, card["id"], ACCOUNT_FEN)
    return card, (row, load_card(Path(row.image_path), hsm=live.hsm))


@pytest.mark.parametrize("record_suite", ["GM", "INTL"])
def test_a_citizen_card_visits_two_hospitals(live: Live, issuer: RunningServer, tmp_path: Path,
                                             record_suite: str) -> None:  # fmt: skip
    suite = {"GM": GM, "INTL": INTL}[record_suite]
    first, second = _hospital(live, suite), _hospital(live, suite)
    card, (row, chip) = _card_with_health(live)
    transport = InProcessTransport(chip)
    desk1, desk2 = _desk(live, first, suite, issuer, tmp_path), _desk(live, second, suite, issuer, tmp_path)
    holder = card["cardholder_id"]

    # hospital 1: identity from the health application, a file with the rural co-operative scheme
    registered = desk1.register(transport, file_no="MZ-0001", scheme="ncms")
    assert registered["registration"]["file_no"] == "MZ-0001" and registered["cardholder_id"] == holder
    identity = desk1.identify(transport)["identity"]
    with live.client("operator") as op:
        assert identity["name"] == op.get(f"/v1/cardholders/{holder}").json()["name"]

    # a visit: 120.00 yuan, ncms outpatient pays 50 % = 60.00; the patient pays 60.00 online
    done = desk1.visit(
        transport, visit_no="V0001", department="内科", diagnosis_code="J06.9", amount_fen=12_000
    )
    assert done.quote["insurance_fen"] == 6_000 and done.quote["self_pay_fen"] == 6_000
    assert done.payment is not None and done.payment["response_code"] == "00"
    assert done.settlement["insurance_fen"] == 6_000 and done.settlement["from_account"] == "insurer:ncms"
    assert done.platform_visit["record"] == done.record.to_dict()
    assert set(done.step_ms) >= {"identify", "quote", "pay online", "sign", "push visit", "write card"}
    print(f"desk visit step_ms ({record_suite}): {done.step_ms}")  # figures for docs/health.md (pytest -s)

    # the card and the platform agree, record for record, byte for byte
    on_card = desk1.card_visits(transport)
    assert [v.visit_no for v in on_card] == ["V0001"]
    assert compare_visits(on_card, desk1.own_platform_visits()) == []

    # money: the bank account paid the self-pay part (issuer), the insurer paid the hospital
    with read_transaction(live.engine) as conn:
        account = f"citybank:card:{row.pan}:{row.psn:02d}"
        assert ledger.balance_fen(conn, account) == ACCOUNT_FEN - 6_000
        assert ledger.balance_fen(conn, f"citybank:merchant:{first['merchant_id']}") == 6_000
        assert ledger.balance_fen(conn, f"hospital:{first['id']}") == 6_000
        assert ledger.check_invariants(conn) == []

    # hospital 2: its own file, but the first visit is invisible without consent (403, audited)
    desk2.register(transport, file_no="B-77")
    with pytest.raises(DeskError) as refused:
        desk2.his.call("read", "GET", f"/v1/healthcare/cardholders/{holder}/visits")
    assert (refused.value.status, refused.value.code) == (403, "health.consent_missing")
    with live.client("operator") as op:  # the patient consents at the desk's operator (or online)
        granted = op.post(f"/v1/healthcare/cardholders/{holder}/consents", headers={"Idempotency-Key": new_key()},
                          json={"institution_id": second["id"], "scope": "visits"})  # fmt: skip
        assert granted.status_code == 201, granted.text
    seen = desk2.his.call("read", "GET", f"/v1/healthcare/cardholders/{holder}/visits")["items"]
    assert [v["record"] for v in seen] == [done.record.to_dict()]
    # hospital 2 checks hospital 1's record on the card with hospital 1's key, as the platform did
    assert compare_visits(desk2.card_visits(transport), seen) == []
    with live.client("operator") as op:
        trail = op.get(f"/v1/healthcare/cardholders/{holder}/audit").json()["items"]
    assert [(a["institution_id"], a["allowed"]) for a in reversed(trail)] == [
        (second["id"], False),
        (second["id"], True),
    ]

    # a forged record (the card's record with another amount) is refused by the platform
    forged = dict(done.record.to_dict(), amount_fen=99_999, visit_no="V0002")
    with pytest.raises(DeskError) as bad:
        desk1.his.call("push", "POST", "/v1/healthcare/visits", key=new_key(),
                       body={"cardholder_id": holder, "kind": "outpatient", "record": forged})  # fmt: skip
    assert (bad.value.status, bad.value.code) == (422, "health.bad_signature")

    # running the same visit again (a desk that crashed after settling) replays: nothing twice
    with read_transaction(live.engine) as conn:
        before = ledger.balance_fen(conn, f"hospital:{first['id']}")
    again = desk1.his.call("settle", "POST", "/v1/healthcare/settlements", body={"visit_no": "V0001"},
                           key=f"{first['id']}:settle:V0001")  # fmt: skip
    assert again == done.settlement
    with read_transaction(live.engine) as conn:
        assert ledger.balance_fen(conn, f"hospital:{first['id']}") == before
        from citycard.sectors.health import tables

        stored = conn.execute(select(tables.visits.c.record).where(tables.visits.c.visit_no == "V0001",
                                                                    tables.visits.c.institution_id == first["id"])).scalar_one()  # fmt: skip
    assert '"visit_no":"V0001"' in stored


def _cli(live: Live, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CITYCARD_DATA_DIR": str(live.data_dir)}
    return subprocess.run([sys.executable, "-m", "citycard.cli.main", "health", *args], env=env,
                          capture_output=True, text=True, timeout=180, check=False)  # fmt: skip


def test_the_desk_command_registers_and_runs_a_visit(live: Live, issuer: RunningServer) -> None:
    """`citycard health desk …` in its own process: the same HSM (data dir), the platform over HTTP,
    the issuer over TCP; the card image on disk carries the visit afterwards."""
    hospital = _hospital(live, GM)
    _, (row, _) = _card_with_health(live)
    common = ["--card", row.image_path, "--his", live.base_url, "--api-key", hospital["api_key"],
              "--institution", hospital["id"]]  # fmt: skip
    done = _cli(
        live, "desk", "register", *common, "--file-no", "CLI-1", "--scheme", "urban_employee", "--json"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["registration"]["file_no"] == "CLI-1"
    done = _cli(live, "desk", "visit", *common, "--visit-no", "CLI-V1", "--department", "外科", "--diagnosis",
                "S61.0", "--amount", "50.00", "--online", f"127.0.0.1:{issuer.port}", "--merchant-id",
                hospital["merchant_id"], "--terminal-id", hospital["terminal_id"], "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # urban employee outpatient: (50.00 − 18.00) × 70 % = 22.40 insured, 27.60 paid online
    assert result["quote"]["insurance_fen"] == 2_240 and result["payment"]["amount_fen"] == 2_760
    assert result["settlement"]["insurance_fen"] == 2_240
    chip = load_card(Path(row.image_path), hsm=live.hsm)  # the image the command saved
    desk = _desk(live, hospital, GM, issuer, live.data_dir)
    on_card = desk.card_visits(InProcessTransport(chip))
    assert [v.visit_no for v in on_card] == ["CLI-V1"]
    assert compare_visits(on_card, desk.own_platform_visits()) == []
    bad = _cli(live, "desk", "visit", *common, "--visit-no", "CLI-V2", "--department", "外科", "--diagnosis",
               "S61.0", "--amount", "abc", "--online", "127.0.0.1:1", "--merchant-id", hospital["merchant_id"])  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: --amount")
