"""The exchange's consent filter (issue 6 items 1 and 5): an event that carries a cardholder's data
reaches a sector only when that cardholder consented to the sector; otherwise it is redacted.
SQLite and PostgreSQL (the ``engine`` fixture); the NATS relay's side is in test_nats_relay.py,
the HTTP side in tests/api/test_exchange_consent_api.py."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.platform.test_blacklist import add_card

from citycard.db import write_transaction
from citycard.platform import cardholders, events, exchange
from citycard.platform.tables import cards as platform_cards

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
REDACTED = {"redacted": "consent.missing"}


def holder_of(conn, card_id: int) -> int:
    row = conn.execute(platform_cards.select().where(platform_cards.c.id == card_id)).one()
    return int(row.cardholder_id)


def test_each_sector_sees_full_events_only_of_cardholders_who_consented(engine) -> None:
    with write_transaction(engine) as conn:
        yes = add_card(conn, pan="6235481000000013", psn=1, serial=31)
        no = add_card(conn, pan="6235481000000021", psn=1, serial=32)
        yes_holder, no_holder = holder_of(conn, yes), holder_of(conn, no)
        cardholders.grant_consent(conn, yes_holder, sector="health", scope="records", actor="desk:1")
        cardholders.grant_consent(conn, no_holder, sector="campus", scope="records", actor="desk:1")
        for name, sector in (("his", "health"), ("tsp", "transit")):
            exchange.subscribe(
                conn, name=name, sector=sector, kinds=["card.lost", "visit"], from_now=True, at=T0
            )
        seqs = [
            events.emit(conn, "card.lost", card_id=yes, cardholder_id=yes_holder, payload={"formal": True}),
            events.emit(conn, "card.lost", card_id=no, cardholder_id=no_holder, payload={"formal": False}),
            events.emit(
                conn, "visit", card_id=no, sector="health", payload={"dept": "cardiology"}
            ),  # card only
            events.emit(
                conn, "visit", card_id=999_999, sector="health", payload={"dept": "x"}
            ),  # no known holder
        ]
    with write_transaction(engine) as conn:
        health = exchange.read_for(conn, "his")
        assert [e.seq for e in health] == seqs  # nothing skipped: the sequence has no holes
        assert (health[0].card_id, health[0].cardholder_id, health[0].payload) == (
            yes,
            yes_holder,
            {"formal": True},
        )
        for event in health[1:3]:  # the holder consented to campus, not health
            assert (event.card_id, event.cardholder_id, event.payload) == (None, None, REDACTED)
        assert health[2].kind == "visit" and health[2].sector == "health"
        assert health[3].payload == {"dept": "x"} and health[3].card_id == 999_999
        transit = exchange.read_for(conn, "tsp")
        assert [e.payload for e in transit] == [REDACTED, REDACTED, REDACTED, {"dept": "x"}]
        assert exchange.ack(conn, "his", seqs[-1], at=T0) == seqs[-1]  # acks work across redactions
        # the consent withdrawn: the same events re-read are redacted from now on
        cardholders.revoke_consent(conn, yes_holder, sector="health", scope="records", actor="holder")
        again = exchange.read_after(conn, "his", after=0)
        assert [e.payload for e in again] == [REDACTED, REDACTED, REDACTED, {"dept": "x"}]
        # granted to the transit sector: its feed shows that holder's event in full
        cardholders.grant_consent(conn, yes_holder, sector="transit", scope="trips", actor="holder")
        assert exchange.read_after(conn, "tsp", after=0)[0].payload == {"formal": True}


def test_the_redaction_is_a_pure_view_and_the_log_keeps_everything(engine) -> None:
    with write_transaction(engine) as conn:
        card = add_card(conn, pan="6235481000000039", psn=0, serial=33)
        holder = holder_of(conn, card)
        seq = events.emit(conn, "card.lost", card_id=card, cardholder_id=holder, payload={"formal": False})
        [stored] = events.read(conn, after=seq - 1)
        [shown] = exchange.consent_view(conn, "bills", [stored])
        assert shown == exchange.redact(stored) and shown.seq == stored.seq and shown.kind == "card.lost"
        [kept] = events.read(conn, after=seq - 1)  # the log itself is unchanged
        assert kept.payload == {"formal": False} and kept.cardholder_id == holder
