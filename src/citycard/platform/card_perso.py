"""Data preparation and personalisation for the platform's cards (issue 6 item 2).

* :func:`allocate_pan` — the next PAN under the issuer's BIN: BIN ‖ serial ‖ Luhn digit, serial
  from ``platform_pan_counters`` (a row per BIN, incremented in the caller's transaction), skipping
  any PAN the issuer already knows.
* :func:`personalise_image` — data preparation in the HSM (:func:`citycard.card.perso.prepare_card`)
  and the STORE DATA script run against a new virtual card, saved as a sealed image; the EC
  balance the chip starts with is the card's ``ec_initial_fen`` (non-zero for a replacement).
* :func:`bureau_script` — the same STORE DATA script for a card bureau (enciphered DGIs, KCVs, no
  clear key).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite

from citycard.card.perso import (
    PersoScript,
    PreparedCard,
    Profile,
    ProfileError,
    load_profile,
    luhn_check_digit,
    perso_script,
    prepare_card,
)
from citycard.card.perso.prepare import add_months_last_day
from citycard.host.issuer import tables as issuer_tables
from citycard.hsm import SoftHSM
from citycard.platform import tables
from citycard.platform.errors import Conflict, InvalidInput

PAN_ALLOCATION_TRIES_MAX = 16  # PANs skipped because the issuer already has them (cards made elsewhere)
IMAGE_SUFFIX = ".json"


def profile_of(name: str) -> Profile:
    try:
        return load_profile(name)
    except (ProfileError, FileNotFoundError, ValueError) as exc:
        raise InvalidInput(
            "card.profile", f"card profile {name!r}: {exc}", fields={"profile": "unknown"}
        ) from None


def expiry_for(profile: Profile, effective: dt.date) -> dt.date:
    """5F24 as data preparation computes it: the last day of the month, validity_months later."""
    return add_months_last_day(profile.card.effective_date or effective, profile.card.validity_months)


def allocate_pan(conn: Connection, profile: Profile) -> str:
    """The next free PAN of the profile's BIN (see the module note)."""
    bin_ = profile.card.bin
    serial_digits = profile.card.pan_length - len(bin_) - 1
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(tables.pan_counters).values(bin=bin_, next_serial=1).on_conflict_do_nothing())
    c = tables.pan_counters.c
    for _ in range(PAN_ALLOCATION_TRIES_MAX):
        serial = conn.execute(
            update(tables.pan_counters)
            .where(c.bin == bin_)
            .values(next_serial=c.next_serial + 1)
            .returning(c.next_serial)
        ).scalar_one() - 1  # fmt: skip
        if serial >= 10**serial_digits:
            raise Conflict("card.pan_exhausted", f"BIN {bin_}: all {serial_digits}-digit serials are used")
        body = f"{bin_}{serial:0{serial_digits}d}"
        pan = body + luhn_check_digit(body)
        taken = conn.execute(select(issuer_tables.cards.c.id).where(issuer_tables.cards.c.pan == pan)).first()
        taken = taken or conn.execute(select(tables.cards.c.id).where(tables.cards.c.pan == pan)).first()
        if taken is None:
            return pan
    raise Conflict(
        "card.pan_exhausted", f"BIN {bin_}: {PAN_ALLOCATION_TRIES_MAX} PANs in a row already taken"
    )


def prepared_card(card: Any, hsm: SoftHSM) -> PreparedCard:
    """Data preparation for ``card`` (a ``platform_cards`` row after ``prepare``) in ``hsm``."""
    profile = profile_of(card.profile)
    limits = profile.limits.model_copy(update={"ec_initial_balance_fen": int(card.ec_initial_fen)})
    profile = profile.model_copy(update={"limits": limits})
    prepared = prepare_card(profile, hsm, pan=card.pan, psn=f"{card.psn:02d}", today=card.effective)
    # The issuer was (or will be) told this expiry: the chip must carry the same 5F24.
    assert prepared.expiry == card.expiry, (prepared.expiry, card.expiry)
    return prepared


def personalise_image(card: Any, hsm: SoftHSM, image_dir: Path) -> tuple[Path, PreparedCard]:
    """A personalised virtual card image for ``card`` in ``image_dir`` (written atomically)."""
    from citycard.card import new_card, save_card
    from citycard.card.pboc import PbocApplication

    prepared = prepared_card(card, hsm)
    directory = Path(image_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{card.pan}-{card.psn:02d}{IMAGE_SUFFIX}"
    chip = new_card(
        [PbocApplication(prepared.aid)], hsm=hsm, image_path=path, perso_suite=prepared.perso_suite
    )
    chip.power_on()
    for apdu in perso_script(prepared).apdus:
        response = chip.process(apdu)
        if response[-2:] != b"\x90\x00":
            raise RuntimeError(
                f"personalisation: the card answered {response[-2:].hex().upper()} to {apdu[:4].hex()}"
            )
    save_card(chip)
    return path, prepared


def bureau_script(card: Any, hsm: SoftHSM) -> PersoScript:
    """The STORE DATA script a card bureau runs (enciphered DGIs under the transport key, KCVs)."""
    return perso_script(prepared_card(card, hsm))


def check_image_dir(image_dir: Any) -> Path | None:
    if image_dir is None:
        return None
    if not isinstance(image_dir, str | Path):
        raise InvalidInput("card.image_dir", "image_dir must be a path", fields={"image_dir": "bad"})
    return Path(image_dir)
