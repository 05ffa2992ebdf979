"""Through a real server with its lifespan on (the blacklist publisher running): one loss report
over HTTP reaches the next blacklist delta with no operator publishing, and a sector's exchange
feed shows events only of cardholders who consented to it (redacted otherwise).

SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa
from tests.api.conftest import Live, active_card, new_key, post, resident_id, serve_live

from citycard.db import read_transaction
from citycard.kernel.params import ExceptionFile
from citycard.platform import tables
from citycard.platform.blacklist_format import apply_delta, decode_delta

PUBLISH_WAIT_S = 30.0
REDACTED = {"redacted": "consent.missing"}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def auto_live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from serve_live(request, tmp_path_factory, name="api-auto", lifespan="on")


def _pan_psn(live: Live, card_id: int) -> tuple[str, str]:
    with read_transaction(live.engine) as conn:
        row = conn.execute(
            sa.select(tables.cards.c.pan, tables.cards.c.psn).where(tables.cards.c.id == card_id)
        ).one()
    return row.pan, f"{row.psn:02d}"


def _wait_for_list(bus: httpx.Client, predicate) -> ExceptionFile:
    deadline = time.monotonic() + PUBLISH_WAIT_S
    while True:
        answer = bus.get("/v1/blacklist/bus")
        assert answer.status_code == 200, answer.text
        listing = ExceptionFile.from_bytes(answer.content)
        if predicate(listing):
            return listing
        assert time.monotonic() < deadline, "the publisher did not publish in time"
        time.sleep(0.1)


def test_a_loss_report_reaches_the_next_delta_without_an_operator(auto_live: Live) -> None:
    live = auto_live
    with live.client("operator") as op:
        card = active_card(live, op)
    key = _pan_psn(live, card["id"])
    with live.client("terminal") as bus:
        # the validator holds a list published by the server itself (the card's issue and
        # activation were drained), without the card
        held = _wait_for_list(bus, lambda listing: listing.version >= 1)
        assert not held.contains(*key)
        with live.client("operator") as op:
            lost = post(op, f"/v1/cards/{card['id']}/report-loss", {"formal": False})
            assert lost.status_code == 200 and lost.json()["state"] == "lost_oral", lost.text
        deadline = time.monotonic() + PUBLISH_WAIT_S
        while True:  # what a validator does at its next sync: ask for the delta from what it holds
            answer = bus.get("/v1/blacklist/bus/delta", params={"from_version": held.version})
            if answer.status_code == 200:
                delta = decode_delta(answer.content)
                if key in delta.added:
                    break
            else:
                assert answer.status_code == 409 and answer.json()["code"] == "blacklist.up_to_date"
            assert time.monotonic() < deadline, "the loss report never reached a delta"
            time.sleep(0.1)
        updated = apply_delta(held, answer.content)  # checksum of the new list verified
        assert updated.contains(*key)
        assert answer.headers["x-blacklist-version"] == str(updated.version)
        assert answer.headers["x-blacklist-sha256"] == updated.body_sha256.hex().upper()
        report = post(
            bus,
            "/v1/terminals/B0000001/blacklist-version",
            {"terminal_class": "bus", "version": updated.version},
        )
        assert report.status_code == 200 and report.json()["version"] == updated.version
    with live.client("operator") as op:
        versions = op.get("/v1/blacklist/bus/versions", params={"limit": 5}).json()["items"]
        assert versions[0]["published_by"] == "blacklist-publisher"  # nobody pressed "publish"
        assert versions[0]["version"] >= updated.version


def test_sector_feeds_carry_only_consenting_cardholders_events(auto_live: Live) -> None:
    live = auto_live
    with live.client("operator") as op:
        name = f"his-{new_key()[-8:]}"
        made = post(
            op,
            "/v1/exchange/subscribers",
            {"name": name, "sector": "health", "kinds": ["card.lost"], "from_now": True},
        )
        assert made.status_code == 201, made.text
        consenting = post(
            op, "/v1/cardholders", {"name": "同意 Yes", "id_number": resident_id(), "kind": "resident"}
        ).json()
        other = post(
            op, "/v1/cardholders", {"name": "不同意 No", "id_number": resident_id(), "kind": "resident"}
        ).json()
        granted = post(
            op, f"/v1/cardholders/{consenting['id']}/consents", {"sector": "health", "scope": "records"}
        )
        assert granted.status_code in (200, 201), granted.text
        cards = [active_card(live, op, holder_id=h["id"]) for h in (consenting, other)]
        for card in cards:
            assert post(op, f"/v1/cards/{card['id']}/report-loss", {"formal": True}).status_code == 200
    with live.client("sector") as health:
        feed = health.get("/v1/exchange/events", params={"subscriber": name})
        assert feed.status_code == 200, feed.text
        items = feed.json()["items"]
        assert [e["kind"] for e in items] == ["card.lost", "card.lost"]
        assert items[0]["card_id"] == cards[0]["id"] and items[0]["cardholder_id"] == consenting["id"]
        assert items[0]["payload"]["formal"] is True
        assert (items[1]["card_id"], items[1]["cardholder_id"], items[1]["payload"]) == (None, None, REDACTED)
        reread = health.get("/v1/exchange/events", params={"subscriber": name, "after": items[0]["seq"] - 1})
        assert reread.json()["items"] == items  # the after= path applies the same filter
        acked = post(health, "/v1/exchange/ack", {"subscriber": name, "seq": items[-1]["seq"]})
        assert acked.status_code == 200 and acked.json()["cursor"] == items[-1]["seq"]
