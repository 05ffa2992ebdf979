"""Sector applications on issued cards: load, unload, reload on a replacement (issue 6 item 3).

A sector application (health, social security, campus, transit, driver, tourism — the catalogue,
:mod:`.application_catalogue`) is one PBOC Part 14 record in one of the citizen card's
extended-application files (pboc-notes §7; docs/applications.md). Loading it is **really done on
the card** (:mod:`.application_desk`): GPO, then APPEND RECORD ``04 E2`` with the MAC under the
file's opening key, carrying the sector's record key enciphered under it, all built in the HSM —
and only when the card answers 9000 (and reads the record back) does the platform record it in
``platform_card_applications`` and emit ``application.loaded``, in the caller's transaction.
Unloading rewrites the record as invalid (status 00, data erased) with the issuer update
``84 DE`` under the opening key, then records it and emits ``application.unloaded``.

Order and recovery: the card is written first, the database last. If the card refuses, nothing
is recorded (the error carries the card's status word). If the card accepted but the caller's
transaction then rolls back, the card holds a record the platform does not know: the next load
finds it (APPEND answers 6A80, "already opened") and rewrites it with the issuer update instead,
so a retry always converges. The card row is locked (``FOR UPDATE`` on PostgreSQL; SQLite writers
are serialised) so two desks never write one card image at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Row

from citycard.db import utc_now
from citycard.platform import events, tables
from citycard.platform.application_catalogue import (
    Application,
    RecordError,
    catalogue,
    check_values,
    decode_record,
    encode_record,
    invalid_record,
)
from citycard.platform.application_desk import (
    SW_ALREADY_OPENED,
    SW_NOT_READABLE,
    SW_OK,
    DeskError,
    DeskSession,
    desk_session,
    read_record,
)
from citycard.platform.application_tables import card_applications
from citycard.platform.errors import Conflict, InvalidInput, NotFound

__all__ = [
    "LOADABLE_STATES",
    "CardRefused",
    "catalogue_entries",
    "get_application",
    "load",
    "on_card",
    "read_from_card",
    "reload_all",
    "unload",
]

LOADABLE_STATES = frozenset({"active"})  # a card in the holder's hands, in use
RELOAD_TARGET_STATES = frozenset({"issued", "active"})  # a replacement gets its applications at the desk
ACTOR_CHARS = 64
SW_RECORD_NOT_FOUND = 0x6A83
RECORD_KEY_TYPE = "IMK-ENC"  # a master from which each card's key is derived (option A), as imk-capp


class CardRefused(Conflict):
    """The card answered a status word other than 9000: ``sw`` holds it; nothing was recorded."""

    def __init__(self, error: DeskError):
        super().__init__("application.card_refused", str(error))
        self.sw = error.sw


# --- catalogue ------------------------------------------------------------------------------------


def catalogue_entries() -> list[dict[str, Any]]:
    """Every application of the catalogue as JSON (ids, names zh/en, file, layout, key labels)."""
    return [app.public() for app in catalogue().values()]


def get_application(app_id: str) -> Application:
    app = catalogue().get(app_id) if isinstance(app_id, str) else None
    if app is None:
        raise NotFound("application.unknown", f"no application {app_id!r} in the catalogue")
    return app


# --- helpers --------------------------------------------------------------------------------------


def _actor(actor: str) -> str:
    if not isinstance(actor, str) or not 0 < len(actor) <= ACTOR_CHARS:
        raise InvalidInput("application.actor", f"actor must be 1..{ACTOR_CHARS} characters")
    return actor


def _card_row(conn: Connection, card_id: int, states: frozenset[str]) -> Row[Any]:
    if isinstance(card_id, bool) or not isinstance(card_id, int):
        raise InvalidInput("card.id", f"card id must be an integer, got {card_id!r}")
    row = conn.execute(select(tables.cards).where(tables.cards.c.id == card_id).with_for_update()).first()
    if row is None:
        raise NotFound("card.not_found", f"no card {card_id}")
    if row.state not in states:
        raise Conflict(
            "card.not_active",
            f"card {card_id} is {row.state}; applications are loaded on a card that is "
            + " or ".join(sorted(states)),
        )
    if row.pan is None or row.psn is None or row.suite is None:
        raise Conflict("card.not_prepared", f"card {card_id} has no PAN/PSN/suite yet")
    return row


def _identity(row: Row[Any]) -> tuple[str, str, str]:
    suite = str(row.suite).upper()
    if suite not in ("GM", "INTL"):
        raise Conflict("card.suite", f"card {row.id}: unknown algorithm suite {row.suite!r}")
    return suite, row.pan, f"{int(row.psn):02d}"


def _card_object(row: Row[Any], card: Any, hsm: Any) -> Any:
    """The card to write: the one given (at the desk), else the virtual card's image file."""
    if card is not None:
        return card
    if not row.image_path:
        raise Conflict(
            "application.no_card", f"card {row.id} has no virtual card image; present the card at a desk"
        )
    from citycard.card import ImageError, load_card

    try:
        return load_card(Path(row.image_path), hsm=hsm)
    except (ImageError, OSError) as exc:
        raise Conflict("application.no_card", f"card {row.id}: image cannot be opened: {exc}") from None


def _labels(app: Application, suite: str, hsm: Any) -> tuple[str, str]:
    """(opening-key master, record-key master) in the HSM; a missing record master is created for
    the test issuer (``create_missing``), a missing opening master is an error (personalisation
    made it)."""
    opening, record = app.opening_label(suite), app.record_label(suite)
    present = {info.label for info in hsm.list_keys()}
    if opening not in present:
        raise Conflict("application.key_missing", f"the HSM holds no opening-key master {opening!r}")
    if record not in present:
        if not app.create_missing_keys:
            raise Conflict("application.key_missing", f"the HSM holds no record-key master {record!r}")
        from citycard.crypto.suite import GM, INTL

        hsm.generate_key(record, RECORD_KEY_TYPE, GM if suite == "GM" else INTL)
    return opening, record


def _checked_record(app: Application, data: Mapping[str, Any]) -> tuple[bytes, dict[str, Any]]:
    if not isinstance(data, Mapping):
        raise InvalidInput("application.data", "data must be an object of field values")
    try:
        values = check_values(app, dict(data))
        return encode_record(app, values), values
    except RecordError as exc:
        raise InvalidInput("application.data", f"{app.id}: {exc}", fields={exc.field: exc.reason}) from None


def _write(
    session: DeskSession,
    app: Application,
    record: bytes,
    *,
    hsm: Any,
    suite: str,
    pan: str,
    psn: str,
    open_first: bool,
) -> None:
    """Open the record (APPEND RECORD) or rewrite it (issuer update), falling back to the other
    when the card says the record already is / is not open (module note: recovery)."""
    opening, record_master = app.opening_label(suite), app.record_label(suite)
    common = {"tag_5a": pan, "tag_5f34": psn, "tag_9f36": session.atc, "sfi": app.sfi, "record": record}

    def append() -> tuple[str, int]:
        apdu = hsm.capp_append_command(opening, record_master, **common)
        return "APPEND RECORD", session.send(apdu).sw

    def rewrite() -> tuple[str, int]:
        return "UPDATE CAPP DATA CACHE", session.send(hsm.capp_update_command(opening, **common)).sw

    first, second, retry_sw = (
        (append, rewrite, SW_ALREADY_OPENED) if open_first else (rewrite, append, SW_RECORD_NOT_FOUND)
    )
    step, sw = first()
    if sw == retry_sw:
        step, sw = second()
    if sw != SW_OK:
        raise DeskError(f"{step} SFI {app.sfi:02X} record {app.record_id.hex().upper()}", sw)
    reply = session.read_capp(app.sfi, app.record_id)
    if reply.sw == SW_NOT_READABLE:
        return  # a file that is not freely readable: the 9000 of the write is the evidence
    if reply.sw != SW_OK:
        raise DeskError("READ CAPP DATA after the write", reply.sw)
    if reply.data != record:
        raise Conflict("application.card_mismatch", f"the card reads back another {app.id} record")


def _on_card(row: Row[Any], card: Any, app: Application, record: bytes, *, hsm: Any, open_first: bool) -> int:
    suite, pan, psn = _identity(row)
    _labels(app, suite, hsm)  # before the card is touched: a missing key spends no ATC
    target = _card_object(row, card, hsm)
    try:
        with desk_session(target, suite_name=suite) as session:
            _write(session, app, record, hsm=hsm, suite=suite, pan=pan, psn=psn, open_first=open_first)
            return int.from_bytes(session.atc, "big")
    except DeskError as exc:
        raise CardRefused(exc) from None
    except ValueError as exc:  # the HSM refused to build the command (label, suite, lengths)
        raise InvalidInput("application.command", f"{app.id}: {exc}") from None


def _existing(conn: Connection, card_id: int, app_id: str) -> Row[Any] | None:
    t = card_applications
    return conn.execute(select(t).where(t.c.card_id == card_id, t.c.app_id == app_id)).first()


def _view(row: Row[Any], *, include_data: bool = False) -> dict[str, Any]:
    app = catalogue().get(row.app_id)
    out: dict[str, Any] = {
        "card_id": row.card_id,
        "app_id": row.app_id,
        "name": {"zh": app.name_zh, "en": app.name_en} if app else None,
        "sector": row.sector,
        "sfi": row.sfi,
        "record_id": row.record_id,
        "suite": row.suite,
        "state": row.state,
        "atc": row.atc,
        "record_sha256": row.record_sha256,
        "loaded_by": row.loaded_by,
        "loaded_at": row.loaded_at.isoformat(),
        "unloaded_by": row.unloaded_by,
        "unloaded_at": row.unloaded_at.isoformat() if row.unloaded_at else None,
    }
    if include_data:
        out["data"] = json.loads(row.data)
    return out


def _payload(app: Application, record_row: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """Event payload: where the record is, never its personal data (sectors read it by consent)."""
    return {
        "app_id": app.id,
        "sfi": app.sfi,
        "record_id": app.record_id.hex().upper(),
        "suite": record_row["suite"],
        "atc": record_row["atc"],
        **extra,
    }


# --- operations -----------------------------------------------------------------------------------


def load(
    conn: Connection,
    card_id: int,
    app_id: str,
    *,
    hsm: Any,
    data: Mapping[str, Any],
    actor: str,
    card: Any = None,
    at: datetime | None = None,
    _states: frozenset[str] = LOADABLE_STATES,
    _extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Load ``app_id`` onto card ``card_id`` with the field values ``data`` (module note).

    ``card`` is the card at the desk (a :class:`citycard.card.Card`); without it the card's virtual
    image (``platform_cards.image_path``) is opened and written. Refused, with nothing changed: an
    unknown application (404 ``application.unknown``), a card not active (409 ``card.not_active``),
    an application already loaded (409 ``application.already_loaded``), bad values (422
    ``application.data`` naming the field), a card that refuses (409 ``application.card_refused``
    with its status word, e.g. 6988 when the MAC does not verify, 6A82 when the card lacks the file).
    """
    actor = _actor(actor)
    app = get_application(app_id)
    row = _card_row(conn, card_id, _states)
    existing = _existing(conn, card_id, app.id)
    if existing is not None and existing.state == "loaded":
        raise Conflict("application.already_loaded", f"{app.id} is already loaded on card {card_id}")
    record, values = _checked_record(app, data)
    atc = _on_card(row, card, app, record, hsm=hsm, open_first=existing is None)
    if app.installs_ddf1:  # the resident health DDF1 beside the PBOC application (docs/health-card.md §4)
        from citycard.platform.health_card_loading import install_health_ddf1

        target = _card_object(row, card, hsm)
        install_health_ddf1(
            conn, row, target, hsm=hsm, values=values, create_missing_keys=app.create_missing_keys
        )
    now = at or utc_now()
    fields = {
        "sector": app.sector,
        "sfi": app.sfi,
        "record_id": app.record_id.hex().upper(),
        "suite": _identity(row)[0],
        "state": "loaded",
        "data": json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
        "record_sha256": hashlib.sha256(record).hexdigest(),
        "atc": atc,
        "loaded_by": actor,
        "loaded_at": now,
        "unloaded_by": None,
        "unloaded_at": None,
    }
    t = card_applications
    if existing is None:
        conn.execute(insert(t).values(card_id=card_id, app_id=app.id, **fields))
    else:
        conn.execute(update(t).where(t.c.id == existing.id).values(**fields))
    events.emit(
        conn,
        "application.loaded",
        card_id=card_id,
        cardholder_id=row.cardholder_id,
        sector=app.sector,
        payload=_payload(app, fields, **dict(_extra or {})),
        at=now,
    )
    stored = _existing(conn, card_id, app.id)
    assert stored is not None
    return _view(stored, include_data=True)


def unload(
    conn: Connection,
    card_id: int,
    app_id: str,
    *,
    hsm: Any,
    actor: str,
    card: Any = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """Mark ``app_id``'s record invalid on the card (status 00, the sector's data erased) with the
    issuer update under the opening key, then record it and emit ``application.unloaded``.
    Refused: unknown application, card not active, not loaded (409 ``application.not_loaded``), a
    card that refuses (409 ``application.card_refused``)."""
    actor = _actor(actor)
    app = get_application(app_id)
    row = _card_row(conn, card_id, LOADABLE_STATES)
    existing = _existing(conn, card_id, app.id)
    if existing is None or existing.state != "loaded":
        raise Conflict("application.not_loaded", f"{app.id} is not loaded on card {card_id}")
    atc = _on_card(row, card, app, invalid_record(app), hsm=hsm, open_first=False)
    now = at or utc_now()
    t = card_applications
    conn.execute(
        update(t).where(t.c.id == existing.id).values(state="unloaded", unloaded_by=actor, unloaded_at=now)
    )
    events.emit(
        conn,
        "application.unloaded",
        card_id=card_id,
        cardholder_id=row.cardholder_id,
        sector=app.sector,
        payload=_payload(app, {"suite": existing.suite, "atc": atc}, reason="unloaded"),
        at=now,
    )
    stored = _existing(conn, card_id, app.id)
    assert stored is not None
    return _view(stored)


def on_card(
    conn: Connection, card_id: int, *, include_data: bool = False, all_states: bool = False
) -> list[dict[str, Any]]:
    """The applications the platform has loaded on ``card_id`` (with their history when ``all_states``)."""
    t = card_applications
    query = select(t).where(t.c.card_id == card_id).order_by(t.c.app_id)
    if not all_states:
        query = query.where(t.c.state == "loaded")
    return [_view(r, include_data=include_data) for r in conn.execute(query)]


def reload_all(
    conn: Connection,
    old_card_id: int,
    new_card_id: int,
    *,
    hsm: Any,
    actor: str,
    card: Any = None,
    at: datetime | None = None,
) -> list[dict[str, Any]]:
    """Replacement (DESIGN.md §4 flow 3): every application loaded on ``old_card_id`` is loaded on
    ``new_card_id`` (issued or active) with the same values, and the old rows become
    ``transferred`` (the old chip is lost or surrendered: nothing is written on it) with an
    ``application.unloaded`` event each. ``card`` is the new card at the desk (else its image);
    a new card with neither (a bureau card still on its way) moves nothing and returns ``[]`` —
    the old rows stay ``loaded`` until a desk calls this again with the card. Returns the new
    rows' views without their data (``cards.replace`` puts them in the ``card.replaced`` event)."""
    actor = _actor(actor)
    if old_card_id == new_card_id:
        raise InvalidInput("application.reload", "the old and the new card are the same card")
    t = card_applications
    rows = conn.execute(
        select(t).where(t.c.card_id == old_card_id, t.c.state == "loaded").order_by(t.c.app_id)
    ).all()
    if not rows:
        return []
    new_row = _card_row(conn, new_card_id, RELOAD_TARGET_STATES)
    if card is None and not new_row.image_path:
        return []  # a bureau card not at a desk yet: the old rows stay, a later call moves them
    target = _card_object(new_row, card, hsm)  # one card object for every application
    old_row = conn.execute(select(tables.cards).where(tables.cards.c.id == old_card_id)).first()
    now = at or utc_now()
    out = []
    for r in rows:
        app = get_application(r.app_id)
        view = load(
            conn,
            new_card_id,
            app.id,
            hsm=hsm,
            data=json.loads(r.data),
            actor=actor,
            card=target,
            at=now,
            _states=RELOAD_TARGET_STATES,
            _extra={"replaces_card_id": old_card_id},
        )
        conn.execute(
            update(t).where(t.c.id == r.id).values(state="transferred", unloaded_by=actor, unloaded_at=now)
        )
        events.emit(
            conn,
            "application.unloaded",
            card_id=old_card_id,
            cardholder_id=old_row.cardholder_id if old_row is not None else None,
            sector=app.sector,
            payload=_payload(
                app, {"suite": r.suite, "atc": r.atc}, reason="replaced", new_card_id=new_card_id
            ),
            at=now,
        )
        out.append({k: v for k, v in view.items() if k != "data"})  # no personal data in the answer
    return out


def read_from_card(card: Any, app_id: str) -> dict[str, Any]:
    """What the card holds for ``app_id``, decoded (READ CAPP DATA; no GPO, nothing written).
    ``{"valid": False, …}`` after an unload; 409 ``application.card_refused`` with the card's
    status word when it has no such record (6A83) or file (6A82)."""
    app = get_application(app_id)
    try:
        record = read_record(card, app.sfi, app.record_id)
    except DeskError as exc:
        raise CardRefused(exc) from None
    try:
        return decode_record(app, record)
    except RecordError as exc:
        raise Conflict("application.card_mismatch", f"{app.id}: {exc}") from None
