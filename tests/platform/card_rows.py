"""A card row in platform_cards for a copy of a personalised image, written straight to the table
(the tests that need a card in a given state without walking the lifecycle)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from citycard.platform import tables


def insert_card_row(
    conn: Connection, *, cardholder_id: int, source: tuple[Path, Any], directory: Path, now: dt.datetime,
    state: str = "active",
) -> int:  # fmt: skip
    """Copy the image of ``source`` (path, prepared card) into ``directory`` and insert its row."""
    path, prepared = source
    image = directory / f"card-{prepared.pan}.json"
    shutil.copyfile(path, image)
    return conn.execute(
        insert(tables.cards)
        .values(
            cardholder_id=cardholder_id,
            profile=prepared.profile,
            issuer="citybank",
            state=state,
            dormant=False,
            pan=prepared.pan,
            psn=int(prepared.psn),
            suite=prepared.suites[0].name,
            expiry=prepared.expiry,
            effective=prepared.effective,
            image_path=str(image),
            deposit_fen=0,
            ec_initial_fen=0,
            created_at=now,
            updated_at=now,
        )
        .returning(tables.cards.c.id)
    ).scalar_one()
