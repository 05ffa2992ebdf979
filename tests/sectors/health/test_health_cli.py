"""`citycard health` in its own processes on a fresh data dir (SQLite, the data dir's HSM): rules,
quotes, a hospital with its record key made in the HSM, a binding, consents and the audit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from citycard.api import auth as api_auth
from citycard.api.roles import Role
from citycard.db import database_url, make_engine, upgrade, write_transaction
from citycard.platform import cardholders
from citycard.platform.errors import Forbidden
from citycard.platform.identity import check_character
from citycard.sectors.health import service


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CITYCARD_DATA_DIR": str(data_dir)}
    env.pop("CITYCARD_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "citycard.cli.main", "health", *args], env=env,
                          capture_output=True, text=True, timeout=180, check=False)  # fmt: skip


def test_rules_and_quotes() -> None:
    done = run(Path("/nonexistent-not-used"), "rules", "--json")
    rows = json.loads(done.stdout)["rules"]
    assert len(rows) == 12 and {r["scheme"] for r in rows} == {
        "ncms",
        "urban_employee",
        "urban_resident",
        "self_pay",
    }
    done = run(Path("/nonexistent-not-used"), "quote", "--scheme", "ncms", "--kind", "inpatient", "--amount",
               "3000.00", "--json")  # fmt: skip
    # (3000 − 500) × 70 % = 1750.00
    assert json.loads(done.stdout) == {"scheme": "ncms", "kind": "inpatient", "amount_fen": 300_000,
                                       "insurance_fen": 175_000, "self_pay_fen": 125_000, "rule": "share"}  # fmt: skip
    for args, message in ((("--scheme", "nope", "--amount", "1"), "error: unknown insurance scheme 'nope'"),
                          (("--scheme", "ncms", "--amount", "1.234"), "error: --amount")):  # fmt: skip
        done = run(Path("/nonexistent-not-used"), "quote", *args)
        assert done.returncode == 2 and done.stderr.startswith(message), done.stderr


def test_institution_binding_consent_and_audit(tmp_path: Path) -> None:
    done = run(tmp_path, "institution", "add", "--id", "H001", "--name", "第一人民医院", "--merchant-id",
               "898510141110001", "--suite", "intl", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert made["suite"] == "INTL" and made["has_public_key"] and made["account"] == "hospital:H001"
    again = run(
        tmp_path, "institution", "add", "--id", "H001", "--name", "x", "--merchant-id", "898510141110001"
    )
    assert again.returncode == 2 and "already exists" in again.stderr
    engine = make_engine(database_url(tmp_path))
    try:
        upgrade(engine)
        with write_transaction(engine) as conn:
            body = "11010519800101001"
            holder = cardholders.register(conn, name="李四", id_number=body + check_character(body), kind="resident",
                                          actor="test")["id"]  # fmt: skip
            key = api_auth.create_api_key(conn, name="his-h001", role=Role.sector, subject="health")["id"]
            other = api_auth.create_api_key(conn, name="bus-1", role=Role.terminal, subject="B0000001")["id"]
        done = run(tmp_path, "institution", "bind", "--id", "H001", "--api-key-id", str(key), "--json")
        assert done.returncode == 0 and json.loads(done.stdout) == {
            "principal": f"key:{key}",
            "institution_id": "H001",
        }
        refused = run(tmp_path, "institution", "bind", "--id", "H001", "--api-key-id", str(other))
        assert refused.returncode == 2 and "not a live API key of role sector" in refused.stderr
        listed = json.loads(run(tmp_path, "institution", "list", "--json").stdout)
        assert [i["id"] for i in listed] == ["H001"]
        assert (
            run(tmp_path, "consent", "grant", "--cardholder", str(holder), "--institution", "H001").returncode
            == 0
        )
        service.read_records(engine, actor=f"key:{key}:his-h001", institution_id="H001", cardholder_id=holder,
                             scope="visits", reader=lambda c, p: [])  # fmt: skip
        assert (
            run(
                tmp_path, "consent", "revoke", "--cardholder", str(holder), "--institution", "H001"
            ).returncode
            == 0
        )
        with pytest.raises(Forbidden):
            service.read_records(engine, actor=f"key:{key}:his-h001", institution_id="H001", cardholder_id=holder,
                                 scope="visits", reader=lambda c, p: [])  # fmt: skip
        consents = json.loads(run(tmp_path, "consent", "list", "--cardholder", str(holder), "--json").stdout)
        assert len(consents) == 1 and consents[0]["revoked_at"] is not None
        audit = json.loads(run(tmp_path, "audit", "--cardholder", str(holder), "--json").stdout)
        assert [a["allowed"] for a in audit] == [False, True]  # newest first
        text = run(tmp_path, "audit", "--cardholder", str(holder)).stdout
        assert "REFUSED" in text and "ALLOWED" in text
        missing = run(tmp_path, "consent", "revoke", "--cardholder", str(holder), "--institution", "H001")
        assert missing.returncode == 2 and "health.consent_not_found" in missing.stderr
    finally:
        engine.dispose()
