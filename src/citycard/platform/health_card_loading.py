"""Loading the health DDF1 with the catalogue's ``health`` application (docs/health-card.md §4).

``applications.load(conn, card_id, "health", …)`` writes the Part 14 emergency record as before and,
because ``health.toml`` says ``[ddf1] install = true``, then calls :func:`install_health_ddf1`: the
resident health application is installed on the chip beside the PBOC application and personalised
by STORE DATA (a bureau-style secured load, :mod:`citycard.card.health.perso`) with the health
keys of the card's suite (SM4 for GM, 3DES for INTL; diversified in the HSM, enciphered under the
perso transport key) and the identity files written from the cardholder record.

Order: the card first, the database last (as for every application). A card that already holds the
DDF1 (a retry after a rolled-back transaction, or a load after an unload) keeps it: nothing is
written again — the identity on it came from the same cardholder record. Unloading ``health``
invalidates the Part 14 record but leaves the DDF1 (a card has no DELETE here; UNCERTAIN).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Row

from citycard.card.health import HealthApplication
from citycard.card.health.perso import HealthLoadError, load_health_application
from citycard.card.health.records import SEX_CODES
from citycard.crypto.suite import GM, INTL
from citycard.hsm.health import KEY_NAMES, master_label
from citycard.platform import tables
from citycard.platform.errors import Conflict

CARD_TYPE_FINANCIAL = "2"  # 金融健康卡: the health card co-issued on a bank card (UNCERTAIN code)
SPEC_VERSION = "0100"
ISSUER_NAME = "citycard"
ADDRESS_BYTES_MAX = 90


def _fit(text: str | None, size: int) -> str | None:
    """``text`` cut at a character boundary to at most ``size`` UTF-8 bytes (None stays None)."""
    if not text:
        return None
    raw = text.encode("utf-8")[:size]
    return raw.decode("utf-8", errors="ignore") or None


def identity_records(
    holder: Row[Any], card: Row[Any], values: Mapping[str, Any], *, today: dt.date
) -> dict[str, list[dict[str, Any]]]:
    """The health files written at loading, from the cardholder and card rows and the catalogue
    values of the ``health`` application (health record no., ABO/Rh, alert bits)."""
    records: dict[str, list[dict[str, Any]]] = {
        "DDF1/EF05": [
            {
                "card_type": CARD_TYPE_FINANCIAL,
                "spec_version": SPEC_VERSION,
                "issuer_name": ISSUER_NAME,
                "issuer_code": str(card.issuer)[:22],
                "issue_date": today,
                "card_no": holder.id_number,  # the health card number is the ID number (pboc-notes §8.1)
                "city_code": holder.region_code,
            }
        ],
        "DDF1/EF06": [
            {
                "name": _fit(holder.name, 30),
                "sex": SEX_CODES.get(holder.sex, "9"),
                "birth_date": holder.birth_date,
                "id_number": holder.id_number,
            }
        ],
        "DF02/EF05": [
            {
                "blood_abo": str(values.get("blood_abo", "5"))[-1],
                "blood_rh": str(values.get("blood_rh", "3"))[-1],
                "alerts": str(values.get("alerts", "0000")),
            }
        ],
    }
    expiry = {"expiry": card.expiry, "phone1": holder.phone}
    if any(expiry.values()):
        records["DDF1/EF08"] = [expiry]
    if holder.photo_ref:
        records["DDF1/EF07"] = [{"photo_ref": str(holder.photo_ref)[:64]}]
    if holder.address:
        records["DF01/EF05"] = [{"address1": _fit(holder.address, ADDRESS_BYTES_MAX)}]
    if values.get("health_record_no"):
        records["DF01/EF08"] = [{"health_record_no": str(values["health_record_no"])}]
    return records


def _masters(hsm: Any, suite_name: str, *, create_missing: bool) -> None:
    suite = GM if suite_name == "GM" else INTL
    present = {info.label for info in hsm.list_keys()}
    missing = [label for name in KEY_NAMES if (label := master_label(suite, *name.split("-"))) not in present]
    if missing and not create_missing:
        raise Conflict("application.key_missing", f"the HSM holds no health key master {missing[0]!r}")
    if missing:
        hsm.create_health_masters(suite)


def install_health_ddf1(
    conn: Connection,
    card_row: Row[Any],
    card: Any,
    *,
    hsm: Any,
    values: Mapping[str, Any],
    create_missing_keys: bool,
    today: dt.date | None = None,
) -> bool:
    """Install and personalise the health DDF1 on ``card`` (a :class:`citycard.card.Card`) unless it
    holds one; True when it was installed now. 409 ``application.card_refused`` (with ``sw``) when
    the card refuses a step, 409 ``application.key_missing`` without the health key masters."""
    if any(isinstance(app, HealthApplication) for app in card.applications):
        return False
    suite_name = str(card_row.suite).upper()
    _masters(hsm, suite_name, create_missing=create_missing_keys)
    holder = conn.execute(
        select(tables.cardholders).where(tables.cardholders.c.id == card_row.cardholder_id)
    ).first()
    if holder is None:
        raise Conflict("card.no_cardholder", f"card {card_row.id} has no cardholder record")
    records = identity_records(holder, card_row, values, today=today or dt.datetime.now(dt.UTC).date())
    try:
        load_health_application(card, hsm, GM if suite_name == "GM" else INTL, records=records)
    except HealthLoadError as exc:
        error = Conflict("application.card_refused", f"health DDF1 {exc}")
        error.sw = exc.sw  # type: ignore[attr-defined]
        raise error from None
    except ValueError as exc:  # the card's application table (full, a name clash) or a record value
        raise Conflict("application.card_refused", f"health DDF1: {exc}") from None
    return True
