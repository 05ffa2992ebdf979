"""Helpers for the platform core tests (P1): cardholders with valid GB 11643 numbers, cards brought
to any lifecycle state through the real functions, snapshots for "nothing changed", and an
authorisation request built as a PBOC card would (ARQC from the card keys the HSM derives — the
same keys the personalised card holds), answered by the real issuer host.

Imported by test_cards*.py; it holds no tests itself.
"""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, func, select

from citycard.crypto.cryptogram import generate_ac, pboc_ac_data
from citycard.crypto.iad import build_iad
from citycard.crypto.keys import session_key
from citycard.emv.tlv import TLV, encode
from citycard.host.issuer import IssuerHost, load_issuer_configs
from citycard.host.issuer import tables as issuer_tables
from citycard.hsm import SoftHSM
from citycard.iso8583 import builders
from citycard.ledger import AccountKind, Layer, Line, PostingRequest, journal_counts, open_account, post
from citycard.platform import cardholders, cards, tables
from citycard.platform.identity import check_character

ACTOR = "operator:test"
ISSUER = "citybank"
PROFILES = {"GM": "citizen-card-gm", "INTL": "pboc-debit-intl"}
TERMINAL = builders.Terminal(terminal_id="T0000001", merchant_id="M00000000000001", acquirer_id="01045810")
_serials = itertools.count(1)
_stans = itertools.count(1)


@pytest.fixture(scope="module")
def hsm() -> SoftHSM:
    """An ephemeral HSM with the test issuer's keys (created by the card profiles and the issuer)."""
    hsm = SoftHSM.ephemeral()
    return hsm


def resident_id(birth: str = "19800101", *, region: str = "110105", order: int | None = None) -> str:
    """A valid 18-character ID number (GB 11643) with the given birth date; odd order = male."""
    order = next(_serials) % 1000 if order is None else order
    body = f"{region}{birth}{order:03d}"
    return body + check_character(body)


def new_holder(
    conn: Connection, *, kind: str = "resident", birth: str = "19800101", name: str = "李四"
) -> int:
    holder = cardholders.register(conn, name=name, id_number=resident_id(birth), kind=kind, actor=ACTOR)
    return int(holder["id"])


# How to reach each state from nothing (the real functions, in order).
PATHS: dict[str, tuple[str, ...]] = {
    "applied": (),
    "approved": ("approve",),
    "prepared": ("approve", "prepare"),
    "personalised": ("approve", "prepare", "personalise"),
    "issued": ("approve", "prepare", "personalise", "issue"),
    "active": ("approve", "prepare", "personalise", "issue", "activate"),
    "lost_oral": ("approve", "prepare", "personalise", "issue", "activate", "report_loss_oral"),
    "lost": ("approve", "prepare", "personalise", "issue", "activate", "report_loss_formal"),
    "replaced": ("approve", "prepare", "personalise", "issue", "activate", "replace"),
    "cancelled": ("approve", "prepare", "personalise", "issue", "activate", "cancel"),
}


def act(conn: Connection, card_id: int, action: str, *, hsm: SoftHSM, image_dir: Path) -> Any:
    """Perform one lifecycle action through the public function."""
    if action == "approve":
        return cards.approve(conn, card_id, actor=ACTOR)
    if action == "prepare":
        return cards.prepare(conn, card_id, actor=ACTOR)
    if action == "personalise":
        return cards.personalise(conn, card_id, hsm=hsm, image_dir=image_dir, actor=ACTOR)
    if action == "issue":
        return cards.issue(conn, card_id, hsm=hsm, actor=ACTOR)
    if action == "activate":
        return cards.activate(conn, card_id, actor=ACTOR)
    if action in ("report_loss_oral", "report_loss_formal"):
        return cards.report_loss(conn, card_id, formal=action.endswith("formal"), actor=ACTOR)
    if action == "unblock":
        return cards.unblock(conn, card_id, actor=ACTOR)
    if action == "replace":
        return cards.replace(conn, card_id, hsm=hsm, image_dir=image_dir, actor=ACTOR)
    if action == "cancel":
        return cards.cancel(conn, card_id, actor=ACTOR)
    raise AssertionError(action)


def card_in_state(
    conn: Connection,
    state: str,
    *,
    hsm: SoftHSM,
    image_dir: Path,
    suite: str = "GM",
    holder: int | None = None,
) -> int:
    holder = holder if holder is not None else new_holder(conn)
    card_id = int(cards.apply(conn, holder, profile=PROFILES[suite], issuer=ISSUER, actor=ACTOR)["id"])
    for action in PATHS[state]:
        act(conn, card_id, action, hsm=hsm, image_dir=image_dir)
    assert cards.get(conn, card_id)["state"] == state
    return card_id


def snapshot(conn: Connection, card_id: int) -> dict[str, Any]:
    """Everything a lifecycle call may change, for "nothing changed" checks."""
    row = cards.record(conn, card_id)
    issuer_rows = conn.execute(
        select(issuer_tables.cards.c.pan, issuer_tables.cards.c.status, issuer_tables.cards.c.ec_balance_fen)
        .order_by(issuer_tables.cards.c.id)
    ).all()  # fmt: skip
    return {
        "card": dict(row._mapping),
        "cards": conn.execute(select(func.count()).select_from(tables.cards)).scalar_one(),
        "audit": conn.execute(select(func.count()).select_from(tables.card_audit)).scalar_one(),
        "events": conn.execute(select(func.count()).select_from(tables.events)).scalar_one(),
        "issuer": [tuple(r) for r in issuer_rows],
        "ledger": journal_counts(conn),
    }


def fund_ec(conn: Connection, card_id: int, amount_fen: int) -> str:
    """Put ``amount_fen`` on the card's EC account as a 圈存 load would (ledger + issuer shadow)."""
    row = cards.record(conn, card_id)
    ec_account = f"{row.issuer}:ec:{row.pan}:{row.psn:02d}"
    open_account(conn, f"{row.issuer}:funding", AccountKind.FUNDING, allow_negative=True)
    post(conn, PostingRequest(
        key=f"test-load:{card_id}", layer=Layer.SETTLED,
        lines=(Line(f"{row.issuer}:funding", debit_fen=amount_fen), Line(ec_account, credit_fen=amount_fen)),
    ))  # fmt: skip
    c = issuer_tables.cards.c
    conn.execute(
        issuer_tables.cards.update()
        .where(c.pan == row.pan, c.psn == row.psn)
        .values(ec_balance_fen=amount_fen)
    )
    return ec_account


def fund_account(conn: Connection, card_id: int, amount_fen: int) -> None:
    """Money on the cardholder's bank account behind the debit application."""
    row = cards.record(conn, card_id)
    account = f"{row.issuer}:card:{row.pan}:{row.psn:02d}"
    open_account(conn, f"{row.issuer}:funding", AccountKind.FUNDING, allow_negative=True)
    post(conn, PostingRequest(
        key=f"test-fund:{card_id}", layer=Layer.SETTLED,
        lines=(Line(f"{row.issuer}:funding", debit_fen=amount_fen), Line(account, credit_fen=amount_fen)),
    ))  # fmt: skip


def issuer_host(engine: Any, hsm: SoftHSM) -> IssuerHost:
    host = IssuerHost(load_issuer_configs()[ISSUER], engine=engine, hsm=hsm)
    host.provision_keys()
    return host


def purchase_request(host: IssuerHost, card: Any, *, amount_fen: int, atc: int) -> dict[str, Any]:
    """An online purchase (0200) with field 55 as the card computes it: ARQC over the PBOC CDOL1
    layout under the card's AC session key, IAD with the EC MAC (pboc-notes §4)."""
    suite = cards.SUITES[card.suite]
    labels = host.config.labels(suite)
    keys = host.hsm.export_card_keys_for_personalisation(
        {"AC": labels.imk_ac, "MAC": labels.imk_mac}, tag_5a=card.pan, tag_5f34=f"{card.psn:02d}", suite=suite
    )
    tag_9f36 = atc.to_bytes(2, "big")
    cvr = bytes.fromhex("A00000")
    iad = build_iad(
        dki=1, cvn=1, cvr=cvr, suite=suite, ec_balance_fen=0,
        mac_session_key=session_key(keys["MAC"], tag_9f36=tag_9f36, suite=suite), tag_9f36=tag_9f36,
    )  # fmt: skip
    values = {
        "9F27": b"\x80", "9F10": iad, "9F37": bytes.fromhex("1A2B3C4D"), "9F36": tag_9f36,
        "95": bytes(5), "9A": bytes.fromhex("261127"), "9C": b"\x00",
        "9F02": bytes.fromhex(f"{amount_fen:012d}"), "5F2A": bytes.fromhex("0156"),
        "82": bytes.fromhex("7C00"), "9F1A": bytes.fromhex("0156"), "9F03": bytes(6),
    }  # fmt: skip
    data = pboc_ac_data(
        tag_9f02=values["9F02"], tag_9f03=values["9F03"], tag_9f1a=values["9F1A"], tag_95=values["95"],
        tag_5f2a=values["5F2A"], tag_9a=values["9A"], tag_9c=values["9C"], tag_9f37=values["9F37"],
        tag_82=values["82"], tag_9f36=tag_9f36, cvr=b"\x03" + cvr,
    )  # fmt: skip
    arqc = generate_ac(session_key(keys["AC"], tag_9f36=tag_9f36, suite=suite), data, suite=suite)
    field55 = encode([TLV(tag, value) for tag, value in {"9F26": arqc, **values}.items()])
    return builders.financial(
        "purchase",
        terminal=TERMINAL,
        card=builders.Card(pan=card.pan, psn=card.psn, expiry_yymm=card.expiry.strftime("%y%m")),
        amount_fen=amount_fen,
        stan=next(_stans),
        when=dt.datetime.now(dt.UTC),
        ic=field55,
    )


def rules_deposit() -> int:
    """The deposit the shipped rules charge (cards.toml)."""
    from citycard.platform.card_rules import rules

    return rules().deposit_fen
