"""Applications, blacklists, terminals and the exchange through the real server (success paths and
the per-principal limits: a sector loads only its own applications, a terminal reports only for
itself, a sector reads only its own subscribers)."""

from __future__ import annotations

from tests.api.conftest import Live, active_card, new_key, post

CAMPUS = {"school_code": "1033500001", "member_no": "2026A0042", "role": "01", "faculty": "计算机学院",
          "valid_until": "2030-07-31"}  # fmt: skip


def test_load_and_unload_an_application_on_the_card(live: Live) -> None:
    with live.client("operator") as op:
        catalogue = {a["id"]: a for a in op.get("/v1/applications").json()["items"]}
        assert {"health", "campus", "transit"} <= set(catalogue)
        card = active_card(live, op)
        bad = post(
            op, f"/v1/cards/{card['id']}/applications", {"app_id": "campus", "data": CAMPUS | {"role": "1x"}}
        )
        assert bad.status_code == 422 and bad.json()["code"].startswith("application."), bad.text
        loaded = post(op, f"/v1/cards/{card['id']}/applications", {"app_id": "campus", "data": CAMPUS})
        assert loaded.status_code == 201, loaded.text
        assert loaded.json()["app_id"] == "campus" and loaded.json()["state"] == "loaded"
        on_card = op.get(f"/v1/cards/{card['id']}/applications").json()["items"]
        assert [a["app_id"] for a in on_card] == ["campus"]
        twice = post(op, f"/v1/cards/{card['id']}/applications", {"app_id": "campus", "data": CAMPUS})
        assert twice.status_code == 409 and twice.json()["code"] == "application.already_loaded"
        with live.client("sector") as health:  # the health system may not touch the campus application
            refused = post(
                health, f"/v1/cards/{card['id']}/applications", {"app_id": "campus", "data": CAMPUS}
            )
            assert refused.status_code == 403 and refused.json()["code"] == "application.other_sector"
        gone = op.delete(
            f"/v1/cards/{card['id']}/applications/campus", headers={"Idempotency-Key": new_key()}
        )
        assert gone.status_code == 200 and gone.json()["state"] == "unloaded", gone.text
        assert op.get(f"/v1/cards/{card['id']}/applications").json()["items"] == []
        kinds = [e["kind"] for e in op.get(f"/v1/cards/{card['id']}/timeline").json()["items"]]
        assert "application.loaded" in kinds and "application.unloaded" in kinds


def test_terminal_reports_its_version_and_stale_terminals_are_listed(live: Live) -> None:
    with live.client("operator") as op:
        version = post(op, "/v1/blacklist/bus/publish").json()["version"]
        versions = op.get("/v1/blacklist/bus/versions").json()["items"]
        assert versions == [] if version == 0 else versions[0]["version"] == version
    with live.client("terminal") as bus:
        listing = bus.get("/v1/blacklist/bus")
        assert listing.status_code == 200 and listing.headers["content-type"] == "application/octet-stream"
        held = int(listing.headers["x-blacklist-version"])
        report = post(
            bus, "/v1/terminals/B0000001/blacklist-version", {"terminal_class": "bus", "version": held}
        )
        assert report.status_code == 200, report.text
        assert report.json()["behind"] == 0 and report.json()["version"] == held
        other = post(
            bus, "/v1/terminals/B0000002/blacklist-version", {"terminal_class": "bus", "version": held}
        )
        assert other.status_code == 403 and other.json()["code"] == "auth.other_terminal"
    with live.client("operator") as op:
        card = active_card(live, op)
        assert post(op, f"/v1/cards/{card['id']}/report-loss").status_code == 200
        newer = post(op, "/v1/blacklist/bus/publish").json()["version"]
        assert newer > held
        stale = {t["terminal_id"]: t for t in op.get("/v1/blacklist-stale").json()["items"]}
        assert (
            stale["B0000001"]["versions_behind"] == newer - held and "behind" in stale["B0000001"]["reasons"]
        )
        # the oral report is lifted: unblock makes the card active again
        lifted = post(op, f"/v1/cards/{card['id']}/unblock", {"reason": "found in a coat pocket"})
        assert lifted.status_code == 200 and lifted.json()["state"] == "active", lifted.text


def test_exchange_rereads_with_after_and_keeps_sectors_apart(live: Live) -> None:
    with live.client("operator") as op:
        assert (
            post(op, "/v1/exchange/subscribers", {"name": "campus-feed", "sector": "campus"}).status_code
            == 201
        )
        assert post(op, "/v1/exchange/subscribers", {"name": "health", "sector": "health"}).status_code == 201
        everything = op.get("/v1/exchange/events", params={"subscriber": "health", "limit": 5}).json()
        assert everything["cursor"] == 0 and len(everything["items"]) == 5
        seqs = [e["seq"] for e in everything["items"]]
        assert seqs == sorted(seqs)
        later = op.get(
            "/v1/exchange/events", params={"subscriber": "health", "after": seqs[1], "limit": 2}
        ).json()
        assert [e["seq"] for e in later["items"]] == seqs[2:4]
    with live.client("sector") as health:
        own = health.get(
            "/v1/exchange/events", params={"limit": 3}
        )  # default subscriber: the key's sector name
        assert own.status_code == 200 and own.json()["subscriber"] == "health"
        foreign = health.get("/v1/exchange/events", params={"subscriber": "campus-feed"})
        assert foreign.status_code == 403 and foreign.json()["code"] == "exchange.other_sector"
        not_acked = post(health, "/v1/exchange/ack", {"subscriber": "campus-feed", "seq": 1})
        assert not_acked.status_code == 403
