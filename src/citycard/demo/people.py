"""The demo's citizens: cardholders registered and cards issued through the platform.

Each citizen goes through the platform's real lifecycle (register → apply → approve → prepare →
personalise a virtual card image → issue, which enrols the card at citybank and registers it with
clearing → activate); GM citizen cards then get the transit application loaded (the Part 14 trip
record opened with its concession code). Their bank account at citybank is funded by a cash deposit
at the bank counter (a ledger posting), so the 圈存 top-up has money to move.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from citycard.db import write_transaction
from citycard.ledger import AccountKind, Layer, Line, PostingRequest, open_account, post
from citycard.platform import applications, cardholders, cards
from citycard.platform.identity import check_character
from citycard.platform.tables import cards as card_rows

ISSUER = "citybank"
DESK = "desk:demo"
REGION = "510402"  # 攀枝花市东区 (GB/T 2260)
BANK_DEPOSIT_FEN = 50_000  # 500 yuan in each citizen's bank account
CITY_CODE = "5104"
CONCESSION_CODES = {"resident": "00", "student": "01", "elderly": "02", "disabled": "03", "child": "04"}


@dataclass(frozen=True)
class Citizen:
    """Who rides in the demo (``role`` says what the scenario does with them)."""

    name: str
    kind: str  # platform cardholder kind
    birth: dt.date
    profile: str
    role: str = "rider"


@dataclass
class Holder:
    citizen: Citizen
    cardholder_id: int
    card_id: int
    pan: str
    psn: str
    suite: str
    image_path: Path
    transit: bool  # the transit application (Part 14 trip record) is on the card


CAST = (
    Citizen("张伟", "resident", dt.date(1985, 3, 7), "citizen-card-gm"),
    Citizen("王芳", "elderly", dt.date(1950, 12, 31), "citizen-card-gm"),
    Citizen("李娜", "student", dt.date(2005, 9, 1), "citizen-card-gm"),
    Citizen("刘洋", "resident", dt.date(1990, 6, 15), "citizen-card-gm", role="lost"),
    Citizen("陈静", "resident", dt.date(1978, 1, 20), "citizen-card-gm"),
    Citizen("Mark Chen", "resident", dt.date(1982, 4, 2), "citizen-card-intl", role="taxi"),
)


def platform_profiles() -> tuple[str, ...]:
    from citycard.platform import card_rules

    return card_rules.rules().profiles


def cast() -> tuple[Citizen, ...]:
    """The cast, with the INTL rider on the shipped INTL debit card when the platform issues no INTL
    citizen card (one without the Part 14 trip file: validators decline it)."""
    import dataclasses

    issued = platform_profiles()
    return tuple(
        c if c.profile in issued else dataclasses.replace(c, profile="pboc-debit-intl") for c in CAST
    )


def id_number(birth: dt.date, serial: int, *, female: bool) -> str:
    """A valid GB 11643 number: region, birth date, an order code odd for men, the check character."""
    order = serial * 2 + (0 if female else 1)
    first17 = f"{REGION}{birth:%Y%m%d}{order:03d}"
    return first17 + check_character(first17)


def issue(
    engine: Any,
    hsm: Any,
    image_dir: Path,
    citizen: Citizen,
    serial: int,
    rng: random.Random,
    *,
    effective: dt.date | None = None,
) -> Holder:
    """One citizen through the platform to an active card (module note). ``effective``: the card's
    effective date (5F25) when it was prepared before today (the demo's day is in the past)."""
    with write_transaction(engine) as conn:
        holder = cardholders.register(
            conn,
            name=citizen.name,
            id_number=id_number(citizen.birth, serial, female=rng.random() < 0.5),
            kind=citizen.kind,
            actor=DESK,
        )
        card_id = cards.apply(conn, holder["id"], profile=citizen.profile, issuer=ISSUER, actor=DESK)["id"]
        cards.approve(conn, card_id, actor=DESK)
        cards.prepare(conn, card_id, hsm=hsm, actor=DESK)
        if effective is not None:  # demo set-up: data preparation happened on ``effective``
            conn.execute(card_rows.update().where(card_rows.c.id == card_id).values(effective=effective))
        cards.personalise(conn, card_id, hsm=hsm, image_dir=image_dir, actor=DESK)
        cards.issue(conn, card_id, hsm=hsm, actor=DESK)
        cards.activate(conn, card_id, actor=DESK)
        transit = citizen.profile.startswith("citizen-card")
        if transit:
            applications.load(
                conn,
                card_id,
                "transit",
                hsm=hsm,
                data={"city_code": CITY_CODE, "concession": CONCESSION_CODES[citizen.kind]},
                actor=DESK,
            )
        row = conn.execute(sa.select(card_rows).where(card_rows.c.id == card_id)).one()
        pan, psn = row.pan, f"{int(row.psn):02d}"
        funding, account = f"{ISSUER}:funding", f"{ISSUER}:card:{pan}:{psn}"
        open_account(conn, funding, AccountKind.FUNDING, allow_negative=True)
        post(
            conn,
            PostingRequest(
                f"deposit-cash:{pan}:{psn}",
                (Line(funding, debit_fen=BANK_DEPOSIT_FEN), Line(account, credit_fen=BANK_DEPOSIT_FEN)),
                Layer.SETTLED,
                "cash deposit at the bank counter",
            ),
        )
    return Holder(
        citizen, holder["id"], card_id, pan, psn, str(row.suite).upper(), Path(row.image_path), transit
    )
