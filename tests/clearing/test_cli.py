"""`citycard clearing …` as a real process on a real database and HSM: intake, queue, settle, reconcile."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

from .conftest import CHINA
from .test_scale import NOW, synthetic_batch


def run(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from citycard.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_clearing_commands_end_to_end(engine, spec, tmp_path) -> None:  # type: ignore[no-untyped-def]
    uploads = synthetic_batch(engine, spec, cards=5, records=30)
    uploads.append(dict(uploads[0]))  # a duplicate
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps(uploads), encoding="utf-8")
    url = engine.url.render_as_string(hide_password=False)
    common = ["--db", url, "--hsm", str(spec.hsm_path), "--master-key", str(spec.master_key_file)]
    done = run("clearing", "intake", str(batch), "--batch-id", "T1-1", *common)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) | {} == {
        "batch_id": "T1-1", "records": 31, "accepted": 30, "exceptions": 1, "replayed": False,
    }  # fmt: skip
    again = run("clearing", "intake", str(batch), "--batch-id", "T1-1", *common)
    assert json.loads(again.stdout)["replayed"] is True
    queue = json.loads(run("clearing", "exceptions", "--db", url).stdout)
    assert [(q["reason"], q["status"]) for q in queue] == [("duplicate", "open")]
    refused = run(
        "clearing", "handle", str(queue[0]["id"]), "--action", "accept", "--operator", "ann", "--db", url
    )
    assert refused.returncode == 2 and "can only be rejected" in refused.stderr
    handled = run(
        "clearing", "handle", str(queue[0]["id"]), "--action", "reject", "--operator", "ann", "--db", url
    )
    assert json.loads(handled.stdout) == {"id": queue[0]["id"], "status": "rejected"}
    day = (NOW + dt.timedelta(days=1)).astimezone(CHINA).date().isoformat()
    settled = run("clearing", "settle", "--day", day, "--out-dir", str(tmp_path), "--db", url)
    assert settled.returncode == 0, settled.stderr
    lines = json.loads(settled.stdout)
    assert sum(line["gross_fen"] for line in lines) == sum(u["amount_fen"] for u in uploads[:30])
    assert (tmp_path / f"settlement-{day}.csv").read_text().startswith("operator,day,taps,gross_fen")
    report = run("clearing", "reconcile", "--db", url)
    assert report.returncode == 0, report.stdout
    assert json.loads(report.stdout)["ledger_balanced"] is True
    bad = run("clearing", "intake", str(tmp_path / "missing.json"), "--batch-id", "x", "--db", url)
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
