"""Parameter download against a real platform server: the fare table when newer, the blacklist as
a full list then as a delta (the listed card is then refused at the validator), the CAPK set; the
versions reported back and visible as stale / not stale (also in /v1/blacklist-stale)."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from citycard.db import utc_now, write_transaction
from citycard.platform import blacklist
from citycard.terminals.parameters import ParameterError, download_parameters

from .validators import MORNING, Platform, make_validator, open_transit, tap


@pytest.fixture
def platform(engine, hsm):
    p = Platform(engine, hsm)
    p.start()
    yield p
    p.stop()


def publish_flag(platform: Platform, pan: str, psn: str | None) -> int:
    with write_transaction(platform.engine) as conn:
        blacklist.flag(conn, pan=pan, psn=psn, reason="fraud", detail="test", actor="test", at=utc_now())
        return blacklist.publish(conn, terminal_class="bus", at=utc_now())


def status(
    platform: Platform, terminal_id: str, role: str = "operator", owner: str | None = None
) -> httpx.Response:
    key = platform.key_for("ops" if role == "operator" else owner or terminal_id, role)
    with httpx.Client(base_url=platform.base_url) as client:
        return client.get(f"/v1/terminals/{terminal_id}/versions", headers={"X-API-Key": key})


def test_download_apply_report_and_stale(platform, new_card, hsm, capks, tmp_path):
    card = new_card("CITIZEN")
    open_transit(card, hsm, capks, "CITIZEN")
    v = make_validator(
        hsm, capks, tmp_path / "journal.db", terminal_id="BUS-K1-020", line="3", vehicle="D30020"
    )
    first = tap(v, card, tap_kind="flat", now=MORNING)
    assert first.approved
    key = platform.key_for("BUS-K1-020")
    assert status(platform, "BUS-K1-020").status_code == 404  # never reported

    # nothing published yet: fares current (version 1 shipped), CAPKs new, no list
    v1 = publish_flag(platform, "6235480000000000017", None)
    report = download_parameters(v, base_url=platform.base_url, api_key=key)
    assert report.changed == ("blacklist", "capks")
    assert report.versions == {"fares": 1, "blacklist": v1, "capks": 1}
    assert report.status["stale"] is False
    assert report.status["blacklist"] == {"terminal_class": "bus", "held": v1, "latest": v1, "stale": False,
                                          "reasons": []}  # fmt: skip
    assert len(v.terminal.exceptions) == 1

    # the card is listed: the next download is a delta, and the validator refuses the card
    v2 = publish_flag(platform, first.result.pan, first.result.psn)
    seen = status(platform, "BUS-K1-020").json()
    assert (
        seen["stale"] is True
        and seen["blacklist"]["stale"] is True
        and seen["blacklist"]["reasons"] == ["behind"]
    )
    with httpx.Client(base_url=platform.base_url) as client:
        stale = client.get(
            "/v1/blacklist-stale", headers={"X-API-Key": platform.key_for("ops", "operator")}
        ).json()
    assert [t["terminal_id"] for t in stale["items"]] == ["BUS-K1-020"]
    report = download_parameters(v, base_url=platform.base_url, api_key=key)
    assert report.changed == ("blacklist",) and report.versions["blacklist"] == v2
    assert report.status["stale"] is False
    assert len(v.terminal.exceptions) == 2
    refused = tap(v, card, tap_kind="flat", now=MORNING + dt.timedelta(minutes=5))
    assert not refused.approved and refused.reason == "card on the exception file (blacklist)"
    assert status(platform, "BUS-K1-020", role="terminal").json()["stale"] is False
    other = status(platform, "BUS-K1-021", role="terminal", owner="BUS-K1-020")  # another terminal's
    assert other.status_code == 403 and other.json()["code"] == "auth.other_terminal"
    again = download_parameters(v, base_url=platform.base_url, api_key=key)
    assert again.changed == ()  # nothing newer


def test_a_newer_fare_table_is_applied_and_a_bad_one_refused(platform, hsm, capks, tmp_path):
    from importlib import resources

    text = (resources.files("citycard.data") / "transit" / "panzhihua.toml").read_text(encoding="utf-8")
    fares_dir = tmp_path / "fares"
    fares_dir.mkdir()
    (fares_dir / "panzhihua.toml").write_text(
        text.replace("version = 1\n", "version = 4\n", 1), encoding="utf-8"
    )
    import dataclasses

    platform.app.state.settings = dataclasses.replace(platform.app.state.settings, fares_dir=fares_dir)
    v = make_validator(hsm, capks, tmp_path / "journal.db", terminal_id="BUS-K1-030")
    key = platform.key_for("BUS-K1-030")
    report = download_parameters(v, base_url=platform.base_url, api_key=key)
    assert "fares" in report.changed and report.versions["fares"] == 4
    assert report.status["fares"] == {"name": "panzhihua", "held": 4, "latest": 4, "stale": False}
    (fares_dir / "panzhihua.toml").write_text(
        text.replace("version = 1\n", "version = 5\n", 1).replace('id = "K1"', 'id = "K7"'), encoding="utf-8"
    )
    from citycard.api.routers import terminals as router

    router._fare_table.cache_clear()
    with pytest.raises(
        ParameterError, match="fares panzhihua version 5: fare table version 5 has no line 'K1'"
    ):
        download_parameters(v, base_url=platform.base_url, api_key=key)
    assert v.versions["fares"] == 4
    router._fare_table.cache_clear()


def test_parameters_kept_on_the_device_survive_a_restart(platform, hsm, capks, tmp_path):
    from citycard.terminals.parameters import load_parameters

    v1 = publish_flag(platform, "6235480000000000025", "01")
    store = tmp_path / "params"
    v = make_validator(hsm, capks, tmp_path / "journal.db", terminal_id="BUS-K1-040")
    key = platform.key_for("BUS-K1-040")
    download_parameters(v, base_url=platform.base_url, api_key=key, store_dir=store)
    assert sorted(p.name for p in store.iterdir()) == ["blacklist.ccxf", "capks.json", "versions.json"]
    restarted = make_validator(hsm, capks, tmp_path / "journal.db", terminal_id="BUS-K1-040")
    assert restarted.versions == {"fares": 1, "blacklist": 0, "capks": 0}
    assert load_parameters(restarted, store) == {"fares": 1, "blacklist": v1, "capks": 1}
    assert restarted.terminal.exceptions.contains("6235480000000000025", "01")
    (store / "blacklist.ccxf").write_bytes(b"CCXF" + bytes(40))
    with pytest.raises(ParameterError, match="params"):
        load_parameters(make_validator(hsm, capks, tmp_path / "journal.db", terminal_id="BUS-K1-040"), store)


def test_the_params_command_downloads_keeps_and_reports(platform, tmp_path, monkeypatch):
    import json
    import subprocess
    import sys

    monkeypatch.setenv("CITYCARD_DATA_DIR", str(tmp_path / "device"))
    monkeypatch.delenv("CITYCARD_HSM_MASTER_KEY", raising=False)
    v1 = publish_flag(platform, "6235480000000000033", None)
    command = [sys.executable, "-m", "citycard.cli.main", "validator", "params", "--params-dir", str(tmp_path / "p"),
               "--journal", str(tmp_path / "j.db"), "--url", platform.base_url, "--api-key",
               platform.key_for("BUS-K1-050"), "--terminal-id", "BUS-K1-050", "--line", "K1", "--json"]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"versions": {"fares": 1, "blacklist": v1, "capks": 1},
                                        "changed": ["blacklist", "capks"], "stale": False}  # fmt: skip
    again = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert json.loads(again.stdout)["changed"] == []  # loaded from the device, nothing newer
    assert status(platform, "BUS-K1-050").json()["stale"] is False
