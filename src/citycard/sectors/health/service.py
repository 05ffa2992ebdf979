"""The platform health service (issue 8 items 2–3; docs/health.md).

Functions take a ``Connection`` inside the caller's transaction (the API's idempotent write, the
desk, the CLI) and raise :mod:`citycard.platform.errors` for expected errors; a function that
raises has changed nothing. Every read of a patient's records by an institution goes through
:func:`read_records`, which writes one ``health_access_audit`` row (allowed or refused) — the
refused attempt is committed on its own, before the 403 is raised.

Money: the self-pay part is paid by the patient's bank account through the online authorisation
(the issuer posts it: ``<issuer>:card:<PAN>:<PSN>`` → ``<issuer>:merchant:<hospital's merchant>``);
the insurance share is posted here once per visit, ``insurer:<scheme>`` → ``hospital:<id>``, under
the posting key ``health:settle:<visit id>`` (the ledger's idempotency key).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from citycard import ledger
from citycard.card.health.records import HealthRecordError, RecordSignatureError, VisitRecord, verify_record
from citycard.crypto import record_signature
from citycard.db import utc_now, write_transaction
from citycard.platform import cardholders as platform_cardholders
from citycard.platform import cards as platform_cards
from citycard.platform import tables as platform_tables
from citycard.platform.errors import Conflict, Forbidden, InvalidInput, NotFound
from citycard.sectors.health import tables
from citycard.sectors.health.rules import Rules, load_rules

INSTITUTION_ID_PATTERN = re.compile(r"^H[0-9A-Z]{3,15}$")
MERCHANT_ID_PATTERN = re.compile(r"^[0-9A-Z]{15}$")
FILE_NO_PATTERN = re.compile(r"^[0-9A-Za-z-]{1,32}$")
VISIT_NO_PATTERN = re.compile(r"^[0-9A-Za-z-]{1,32}$")
DEPARTMENT_PATTERN = re.compile(r"^[^\x00-\x1f]{1,32}$")
DIAGNOSIS_PATTERN = re.compile(r"^[0-9A-Z.]{1,16}$")  # an ICD-10 code, e.g. J06.9
LIST_LIMIT_MAX = 200
AUDIT_LIMIT_MAX = 500
HOSPITAL_ACCOUNT = "hospital:{}"
SETTLE_KEY = "health:settle:{}"

_I = tables.institutions.c
_P = tables.patients.c
_R = tables.registrations.c
_A = tables.appointments.c
_C = tables.consents.c
_U = tables.access_audit.c
_V = tables.visits.c
_PAY = tables.payments.c
_S = tables.settlements.c


def _check(pattern: re.Pattern[str], value: Any, field: str, code: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidInput(
            code, f"{field} {value!r} must match {pattern.pattern}", fields={field: "bad format"}
        )
    return value


def _utc(moment: dt.datetime, field: str) -> dt.datetime:
    """``moment`` in UTC; 422 for a time that leaves the calendar when moved there (year 1 or 9999)."""
    try:
        return moment.astimezone(dt.UTC)
    except OverflowError:
        raise InvalidInput(
            "health.bad_time", f"{field} out of range", fields={field: "out of range"}
        ) from None


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --- institutions ------------------------------------------------------------------------------------


def _institution_view(row: Any) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "merchant_id": row.merchant_id, "suite": row.suite,
            "key_id": row.key_id, "has_public_key": bool(row.public_key_hex), "public_key_hex": row.public_key_hex,
            "account": HOSPITAL_ACCOUNT.format(row.id), "created_at": _iso(row.created_at)}  # fmt: skip


def create_institution(
    conn: Connection,
    *,
    institution_id: str,
    name: str,
    merchant_id: str,
    suite: str,
    public_key_hex: str | None = None,
    key_id: str | None = None,
    actor: str,
) -> dict[str, Any]:
    """A hospital with its ledger account ``hospital:<id>``; Conflict if the id is taken.

    ``public_key_hex`` is the key its visit records are verified with (SM2 ``04||X||Y`` for GM; for
    INTL the RSA public key as :mod:`citycard.crypto.record_signature` encodes it)."""
    _check(INSTITUTION_ID_PATTERN, institution_id, "institution_id", "health.bad_institution_id")
    _check(MERCHANT_ID_PATTERN, merchant_id, "merchant_id", "health.bad_merchant_id")
    if not isinstance(name, str) or not 1 <= len(name) <= tables.NAME_CHARS or not name.isprintable():
        raise InvalidInput("health.bad_name", f"name must be 1…{tables.NAME_CHARS} printable characters",
                           fields={"name": "bad"})  # fmt: skip
    if suite not in tables.SUITES:
        raise InvalidInput(
            "health.bad_suite", f"suite must be one of {tables.SUITES}", fields={"suite": "bad"}
        )
    if public_key_hex is not None:
        if len(public_key_hex) > tables.PUBLIC_KEY_HEX_CHARS or not re.fullmatch(
            r"(?:[0-9A-Fa-f]{2})+", public_key_hex
        ):
            raise InvalidInput("health.bad_public_key", "public_key_hex must be hex bytes",
                               fields={"public_key_hex": "bad"})  # fmt: skip
        public_key_hex = public_key_hex.upper()
        _check_public_key(bytes.fromhex(public_key_hex), suite)
    if conn.execute(select(_I.id).where(_I.id == institution_id)).first() is not None:
        raise Conflict("health.institution_exists", f"institution {institution_id} already exists")
    conn.execute(insert(tables.institutions).values(
        id=institution_id, name=name, merchant_id=merchant_id, suite=suite, public_key_hex=public_key_hex,
        key_id=key_id, created_by=actor, created_at=utc_now()))  # fmt: skip
    ledger.open_account(conn, HOSPITAL_ACCOUNT.format(institution_id), ledger.AccountKind.OPERATOR,
                        name=f"hospital {institution_id}")  # fmt: skip
    return get_institution(conn, institution_id)


def _check_public_key(public_key: bytes, suite: str) -> None:
    """An SM2 point on the curve (GM, x‖y) or an RSA 2048…4096 DER SubjectPublicKeyInfo (INTL)."""
    from citycard.crypto import sm2

    try:
        if suite == "GM":
            if len(public_key) != 64 or not sm2.is_on_curve(b"\x04" + public_key):
                raise record_signature.SignatureError("not an SM2 point x‖y on the curve")
        else:
            record_signature.key_id(public_key, algorithm=record_signature.RSA_PKCS1_SHA256)
    except (record_signature.SignatureError, ValueError) as exc:
        raise InvalidInput("health.bad_public_key", f"{suite} record key: {exc}",
                           fields={"public_key_hex": "not a key of the suite"}) from None  # fmt: skip


def _institution_row(conn: Connection, institution_id: str) -> Any:
    row = conn.execute(select(tables.institutions).where(_I.id == institution_id)).first()
    if row is None:
        raise NotFound("health.institution_not_found", f"no institution {institution_id!r}")
    return row


def get_institution(conn: Connection, institution_id: str) -> dict[str, Any]:
    return _institution_view(_institution_row(conn, institution_id))


def list_institutions(conn: Connection) -> list[dict[str, Any]]:
    return [
        _institution_view(r)
        for r in conn.execute(select(tables.institutions).order_by(_I.id).limit(LIST_LIMIT_MAX))
    ]


def institution_public_key(conn: Connection, institution_id: str) -> tuple[str, bytes | None]:
    row = _institution_row(conn, institution_id)
    return row.suite, bytes.fromhex(row.public_key_hex) if row.public_key_hex else None


def bind_principal(conn: Connection, *, principal: str, institution_id: str, actor: str) -> dict[str, Any]:
    """Let ``principal`` (``key:<id>`` of a sector API key, or ``user:<id>`` of a desk login) act for
    the institution. Rebinding to another institution is a Conflict (unbind first: not offered)."""
    if not isinstance(principal, str) or not re.fullmatch(r"^(key|user):[0-9]{1,19}$", principal):
        raise InvalidInput("health.bad_principal", "principal must be key:<id> or user:<id>",
                           fields={"principal": "bad format"})  # fmt: skip
    _institution_row(conn, institution_id)
    found = conn.execute(
        select(tables.institution_keys).where(tables.institution_keys.c.principal == principal)
    ).first()
    if found is not None:
        if found.institution_id != institution_id:
            raise Conflict("health.principal_bound", f"{principal} already acts for {found.institution_id}")
    else:
        conn.execute(insert(tables.institution_keys).values(principal=principal, institution_id=institution_id,
                                                            created_by=actor, created_at=utc_now()))  # fmt: skip
    return {"principal": principal, "institution_id": institution_id}


def institution_of(conn: Connection, principal: str) -> str | None:
    """The institution a principal acts for, or None."""
    return conn.execute(
        select(tables.institution_keys.c.institution_id).where(
            tables.institution_keys.c.principal == principal
        )
    ).scalar_one_or_none()


# --- patient index -----------------------------------------------------------------------------------


def find_card(conn: Connection, *, card_id: int | None = None, pan: str | None = None,
              psn: int | None = None, health_card_no: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The platform card shown at the desk: by platform card id, by PAN + PSN (the debit
    application), or by the health application's card number (DDF1 EF05 ``card_no``, the holder's
    resident ID number: the holder's newest active card)."""
    if card_id is not None:
        return platform_cards.get(conn, card_id)
    if health_card_no is not None:
        if not re.fullmatch(r"^[0-9]{17}[0-9Xx]$", health_card_no):
            raise InvalidInput("health.bad_card_no", "health_card_no is an 18-character resident ID number",
                               fields={"health_card_no": "bad format"})  # fmt: skip
        holder = conn.execute(select(platform_tables.cardholders.c.id).where(
            platform_tables.cardholders.c.id_number == health_card_no.upper())).scalar_one_or_none()  # fmt: skip
        if holder is None:
            raise NotFound("card.not_found", "no cardholder with that health card number")
        active = [c for c in platform_cards.list_for_cardholder(conn, int(holder)) if c["state"] == "active"]
        if not active:
            raise NotFound("card.not_found", f"cardholder {holder} has no active card")
        return active[0]
    if pan is None or psn is None:
        raise InvalidInput(
            "health.card_missing", "give card_id, or pan and psn", fields={"card_id": "missing"}
        )
    if not re.fullmatch(r"^[0-9]{13,19}$", pan):
        raise InvalidInput("health.bad_pan", "pan must be 13…19 digits", fields={"pan": "bad format"})
    return platform_cards.by_pan(conn, pan, psn)


def _patient_view(row: Any) -> dict[str, Any]:
    return {"patient_id": int(row.id), "cardholder_id": int(row.cardholder_id), "scheme": row.scheme,
            "created_at": _iso(row.created_at)}  # fmt: skip


def patient_for_cardholder(conn: Connection, cardholder_id: int, *, create: bool = False) -> Any:
    row = conn.execute(select(tables.patients).where(_P.cardholder_id == cardholder_id)).first()
    if row is None and create:
        conn.execute(insert(tables.patients).values(cardholder_id=cardholder_id, created_at=utc_now()))
        row = conn.execute(select(tables.patients).where(_P.cardholder_id == cardholder_id)).one()
    if row is None:
        raise NotFound("health.patient_not_found", f"cardholder {cardholder_id} is not in the patient index")
    return row


def register(
    conn: Connection,
    *,
    institution_id: str,
    file_no: str,
    scheme: str | None = None,
    card_id: int | None = None,
    pan: str | None = None,
    psn: int | None = None,
    health_card_no: str | None = None,
    actor: str,
    rules: Rules | None = None,
) -> dict[str, Any]:
    """A patient file at ``institution_id`` for the card's holder (into the index on first sight).

    The card must be active. ``scheme`` (the patient's insurance, a rules-table key) is recorded on
    the patient. Registering the same patient again at the same hospital is a Conflict.
    """
    _institution_row(conn, institution_id)
    _check(FILE_NO_PATTERN, file_no, "file_no", "health.bad_file_no")
    card = find_card(conn, card_id=card_id, pan=pan, psn=psn, health_card_no=health_card_no)
    if card["state"] != "active":
        raise Conflict("health.card_not_active", f"card {card['id']} is {card['state']}, not active")
    if scheme is not None:
        (rules or load_rules()).scheme(scheme)
    patient = patient_for_cardholder(conn, card["cardholder_id"], create=True)
    if scheme is not None and patient.scheme != scheme:
        conn.execute(update(tables.patients).where(_P.id == patient.id).values(scheme=scheme))
    existing = conn.execute(select(tables.registrations).where(
        _R.patient_id == patient.id, _R.institution_id == institution_id)).first()  # fmt: skip
    if existing is not None:
        raise Conflict("health.already_registered",
                       f"patient {patient.id} already has file {existing.file_no} at {institution_id}")  # fmt: skip
    if conn.execute(select(_R.id).where(_R.institution_id == institution_id, _R.file_no == file_no)).first():
        raise Conflict("health.file_no_taken", f"file number {file_no} is taken at {institution_id}")
    conn.execute(insert(tables.registrations).values(
        patient_id=patient.id, institution_id=institution_id, file_no=file_no, card_id=card["id"],
        registered_by=actor, registered_at=utc_now()))  # fmt: skip
    return lookup(conn, institution_id=institution_id, card_id=card["id"])


def lookup(conn: Connection, *, institution_id: str, card_id: int | None = None, pan: str | None = None,
           psn: int | None = None, health_card_no: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The patient index entry for the card, as the institution sees it: patient and cardholder ids,
    scheme, the card's state and this institution's file (or None). No records: those need consent."""
    card = find_card(conn, card_id=card_id, pan=pan, psn=psn, health_card_no=health_card_no)
    row = conn.execute(select(tables.patients).where(_P.cardholder_id == card["cardholder_id"])).first()
    registration = None
    if row is not None:
        reg = conn.execute(select(tables.registrations).where(
            _R.patient_id == row.id, _R.institution_id == institution_id)).first()  # fmt: skip
        if reg is not None:
            registration = {"file_no": reg.file_no, "registered_at": _iso(reg.registered_at)}
    return {
        "patient_id": int(row.id) if row is not None else None,
        "cardholder_id": int(card["cardholder_id"]),
        "card_id": int(card["id"]),
        "card_state": card["state"],
        "scheme": row.scheme if row is not None else None,
        "institution_id": institution_id,
        "registration": registration,
    }


def patient(conn: Connection, cardholder_id: int) -> dict[str, Any]:
    """The index entry of a cardholder, with every hospital file they have."""
    row = patient_for_cardholder(conn, cardholder_id)
    files = conn.execute(select(tables.registrations).where(_R.patient_id == row.id).order_by(_R.id)).all()
    return {**_patient_view(row),
            "registrations": [{"institution_id": r.institution_id, "file_no": r.file_no,
                               "registered_at": _iso(r.registered_at)} for r in files]}  # fmt: skip


# --- appointments ------------------------------------------------------------------------------------


def _appointment_view(row: Any) -> dict[str, Any]:
    return {"id": int(row.id), "patient_id": int(row.patient_id), "institution_id": row.institution_id,
            "department": row.department, "starts_at": _iso(row.starts_at), "state": row.state,
            "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at)}  # fmt: skip


def book(conn: Connection, *, institution_id: str, cardholder_id: int, department: str,
         starts_at: dt.datetime, actor: str) -> dict[str, Any]:  # fmt: skip
    """An appointment for a patient registered at the institution."""
    _check(DEPARTMENT_PATTERN, department, "department", "health.bad_department")
    if not isinstance(starts_at, dt.datetime) or starts_at.tzinfo is None:
        raise InvalidInput(
            "health.bad_time", "starts_at must be an aware datetime", fields={"starts_at": "naive"}
        )
    row = patient_for_cardholder(conn, cardholder_id)
    if (
        conn.execute(
            select(_R.id).where(_R.patient_id == row.id, _R.institution_id == institution_id)
        ).first()
        is None
    ):
        raise Conflict("health.not_registered", f"cardholder {cardholder_id} has no file at {institution_id}")
    starts_at = _utc(starts_at, "starts_at")
    now = utc_now()
    new_id = conn.execute(insert(tables.appointments).values(
        patient_id=row.id, institution_id=institution_id, department=department,
        starts_at=starts_at, state="booked", created_by=actor, created_at=now, updated_at=now,
    )).inserted_primary_key[0]  # fmt: skip
    return _appointment_view(conn.execute(select(tables.appointments).where(_A.id == new_id)).one())


def set_appointment_state(
    conn: Connection, *, institution_id: str, appointment_id: int, state: str
) -> dict[str, Any]:
    """Cancel or mark attended a booked appointment of this institution."""
    if state not in ("cancelled", "attended"):
        raise InvalidInput("health.bad_state", "state must be cancelled or attended", fields={"state": "bad"})
    row = conn.execute(select(tables.appointments).where(
        _A.id == appointment_id, _A.institution_id == institution_id)).first()  # fmt: skip
    if row is None:
        raise NotFound("health.appointment_not_found", f"no appointment {appointment_id} at {institution_id}")
    if row.state != "booked":
        raise Conflict("health.appointment_closed", f"appointment {appointment_id} is {row.state}")
    conn.execute(update(tables.appointments).where(_A.id == row.id).values(state=state, updated_at=utc_now()))
    return _appointment_view(conn.execute(select(tables.appointments).where(_A.id == row.id)).one())


def appointments(conn: Connection, *, institution_id: str, limit: int = 50, after: int | None = None
                 ) -> tuple[list[dict[str, Any]], int | None]:  # fmt: skip
    statement = select(tables.appointments).where(_A.institution_id == institution_id)
    if after is not None:
        statement = statement.where(_A.id > int(after))
    rows = conn.execute(statement.order_by(_A.id).limit(limit + 1)).all()
    items = [_appointment_view(r) for r in rows[:limit]]
    return items, (items[-1]["id"] if len(rows) > limit else None)


# --- consent and the access audit --------------------------------------------------------------------


def _consent_view(row: Any) -> dict[str, Any]:
    return {"id": int(row.id), "institution_id": row.institution_id, "scope": row.scope,
            "granted_by": row.granted_by, "granted_at": _iso(row.granted_at),
            "revoked_by": row.revoked_by, "revoked_at": _iso(row.revoked_at)}  # fmt: skip


def _scope(scope: str) -> str:
    if scope not in tables.SCOPES:
        raise InvalidInput("health.bad_scope", f"scope must be one of {', '.join(tables.SCOPES)}",
                           fields={"scope": "unknown"})  # fmt: skip
    return scope


def _active_consent(conn: Connection, patient_id: int, institution_id: str, scope: str) -> Any:
    return conn.execute(select(tables.consents).where(
        _C.patient_id == patient_id, _C.institution_id == institution_id, _C.scope == scope,
        _C.revoked_at.is_(None))).first()  # fmt: skip


def grant(
    conn: Connection, *, cardholder_id: int, institution_id: str, scope: str, actor: str
) -> dict[str, Any]:
    """The patient lets ``institution_id`` read ``scope``; granting an active consent again is a no-op."""
    _scope(scope)
    _institution_row(conn, institution_id)
    platform_cardholders.get(conn, cardholder_id)  # 404 cardholder.not_found before the index entry
    row = patient_for_cardholder(conn, cardholder_id, create=True)
    active = _active_consent(conn, row.id, institution_id, scope)
    if active is None:
        conn.execute(insert(tables.consents).values(patient_id=row.id, institution_id=institution_id, scope=scope,
                                                    granted_by=actor, granted_at=utc_now()))  # fmt: skip
        active = _active_consent(conn, row.id, institution_id, scope)
    return _consent_view(active)


def revoke(
    conn: Connection, *, cardholder_id: int, institution_id: str, scope: str, actor: str
) -> dict[str, Any]:
    """Withdraw an active consent (the row stays, marked revoked); NotFound if none is active."""
    _scope(scope)
    row = patient_for_cardholder(conn, cardholder_id)
    active = _active_consent(conn, row.id, institution_id, scope)
    if active is None:
        raise NotFound("health.consent_not_found",
                       f"no active consent {institution_id}/{scope} for cardholder {cardholder_id}")  # fmt: skip
    conn.execute(
        update(tables.consents).where(_C.id == active.id).values(revoked_by=actor, revoked_at=utc_now())
    )
    return _consent_view(conn.execute(select(tables.consents).where(_C.id == active.id)).one())


def consents(conn: Connection, cardholder_id: int, *, include_revoked: bool = True) -> list[dict[str, Any]]:
    row = conn.execute(select(tables.patients).where(_P.cardholder_id == cardholder_id)).first()
    if row is None:
        return []
    statement = select(tables.consents).where(_C.patient_id == row.id).order_by(_C.id)
    if not include_revoked:
        statement = statement.where(_C.revoked_at.is_(None))
    return [_consent_view(r) for r in conn.execute(statement)]


def _audit(conn: Connection, *, actor: str, institution_id: str | None, patient_id: int, scope: str,
           allowed: bool, reason: str) -> None:  # fmt: skip
    conn.execute(insert(tables.access_audit).values(at=utc_now(), actor=actor[: tables.ACTOR_CHARS],
                 institution_id=institution_id, patient_id=patient_id, scope=scope, allowed=allowed,
                 reason=reason[:200]))  # fmt: skip


def audit_trail(conn: Connection, cardholder_id: int, *, limit: int = 100, after: int | None = None
                ) -> tuple[list[dict[str, Any]], int | None]:  # fmt: skip
    """Who read (or tried to read) what about the patient, newest first."""
    row = conn.execute(select(tables.patients).where(_P.cardholder_id == cardholder_id)).first()
    if row is None:
        return [], None
    statement = select(tables.access_audit).where(_U.patient_id == row.id)
    if after is not None:
        statement = statement.where(_U.id < int(after))
    rows = conn.execute(statement.order_by(_U.id.desc()).limit(limit + 1)).all()
    items = [{"id": int(r.id), "at": _iso(r.at), "actor": r.actor, "institution_id": r.institution_id,
              "scope": r.scope, "allowed": bool(r.allowed), "reason": r.reason} for r in rows[:limit]]  # fmt: skip
    return items, (items[-1]["id"] if len(rows) > limit else None)


def read_records(
    engine: Engine,
    *,
    actor: str,
    institution_id: str | None,
    cardholder_id: int,
    scope: str,
    reader: Callable[[Connection, int], Any],
    self_access: bool = False,
) -> Any:
    """THE consent gate: ``reader(conn, patient_id)`` runs only if ``institution_id`` holds an active
    consent for ``scope`` (or the caller is the patient / a regulator: ``self_access``). One audit
    row either way; a refusal is committed, then :class:`Forbidden` ``health.consent_missing``."""
    _scope(scope)
    with write_transaction(engine) as conn:
        platform_cardholders.get(conn, cardholder_id)  # 404 for nobody; anyone else gets an index entry
        row = patient_for_cardholder(conn, cardholder_id, create=True)  # so a refusal is audited too
        if self_access:
            allowed, reason = True, "patient or regulator"
        elif institution_id is None:
            allowed, reason = False, "caller acts for no institution"
        elif _active_consent(conn, row.id, institution_id, scope) is not None:
            allowed, reason = True, f"consent {scope}"
        else:
            allowed, reason = False, f"no consent {scope}"
        _audit(conn, actor=actor, institution_id=institution_id, patient_id=row.id, scope=scope,
               allowed=allowed, reason=reason)  # fmt: skip
        result = reader(conn, int(row.id)) if allowed else None
    if not allowed:
        raise Forbidden("health.consent_missing",
                        f"{institution_id or actor} has no consent to read {scope} of cardholder {cardholder_id}")  # fmt: skip
    return result


# --- visits, payment, settlement ---------------------------------------------------------------------


def _visit_view(row: Any, *, with_record: bool = True) -> dict[str, Any]:
    view = {"id": int(row.id), "patient_id": int(row.patient_id), "institution_id": row.institution_id,
            "visit_no": row.visit_no, "card_id": row.card_id, "kind": row.kind, "department": row.department,
            "diagnosis_code": row.diagnosis_code, "visit_at": _iso(row.visit_at),
            "amount_fen": int(row.amount_fen), "insurance_fen": int(row.insurance_fen),
            "self_pay_fen": int(row.amount_fen) - int(row.insurance_fen), "created_at": _iso(row.created_at)}  # fmt: skip
    if with_record:
        view["record"] = json.loads(row.record) if row.record else None
        view["signature_hex"] = row.signature_hex
    return view


def year_settled_fen(conn: Connection, patient_id: int, scheme: str, year: int) -> int:
    """What the scheme has paid for the patient's visits of that (UTC) calendar year."""
    start = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC)
    total = conn.execute(
        select(func.coalesce(func.sum(_S.insurance_fen), 0))
        .select_from(tables.settlements.join(tables.visits, _V.id == _S.visit_id))
        .where(_V.patient_id == patient_id, _S.scheme == scheme, _V.visit_at >= start, _V.visit_at < end)
    ).scalar_one()
    return int(total)


def quote(conn: Connection, *, cardholder_id: int, kind: str, amount_fen: int, visit_at: dt.datetime | None = None,
          rules: Rules | None = None) -> dict[str, Any]:  # fmt: skip
    """The insurance share of a visit by this patient from the rules table (scheme from the index)."""
    row = patient_for_cardholder(conn, cardholder_id)
    scheme = row.scheme or "self_pay"
    year = _utc(visit_at or utc_now(), "visit_at").year
    share = (rules or load_rules()).share(scheme=scheme, kind=kind, amount_fen=amount_fen,
                                          settled_this_year_fen=year_settled_fen(conn, row.id, scheme, year))  # fmt: skip
    return share.to_dict()


def push_visit(
    conn: Connection,
    *,
    institution_id: str,
    kind: str,
    record: dict[str, Any],
    cardholder_id: int,
    card_id: int | None = None,
    actor: str,
    rules: Rules | None = None,
) -> dict[str, Any]:
    """Store a visit record signed by ``institution_id`` — the same record the desk wrote to the card.

    ``record`` is :meth:`citycard.card.health.records.VisitRecord.to_dict` (signature, algorithm and
    key id inside); its ``institution_id`` must be the caller's and its signature must verify with
    the institution's registered key (422 ``health.bad_signature`` otherwise, naming why). The
    insurance share must be the rules table's. Pushing the same record again returns the stored
    visit; another record under the same visit number is a Conflict.
    """
    inst = _institution_row(conn, institution_id)
    if kind not in tables.VISIT_KINDS:
        raise InvalidInput(
            "health.bad_visit_kind", f"kind must be one of {tables.VISIT_KINDS}", fields={"kind": "bad"}
        )
    try:
        visit = VisitRecord.from_dict(record)
    except HealthRecordError as exc:
        raise InvalidInput(
            "health.bad_record", f"visit record: {exc}", fields={"record": exc.field}
        ) from None
    except OverflowError:  # a time at the edge of the calendar moved to UTC
        raise InvalidInput(
            "health.bad_time", "visit_at out of range", fields={"record": "visit_at"}
        ) from None
    if visit.institution_id != institution_id:
        raise Forbidden("health.wrong_institution",
                        f"the record names institution {visit.institution_id!r}, not {institution_id}")  # fmt: skip
    if not inst.public_key_hex:
        raise Conflict("health.no_public_key", f"institution {institution_id} has no registered record key")
    if (visit.signature_alg == "SM2-SM3") != (inst.suite == "GM"):
        raise InvalidInput("health.bad_signature", f"{visit.signature_alg or 'no'} signature from a {inst.suite} "
                           "institution", fields={"record": "signature_alg"})  # fmt: skip
    try:
        verify_record(visit, bytes.fromhex(inst.public_key_hex))
    except (RecordSignatureError, record_signature.SignatureError) as exc:
        raise InvalidInput("health.bad_signature", f"visit record signature rejected: {exc}",
                           fields={"record": "signature"}) from None  # fmt: skip
    _check(VISIT_NO_PATTERN, visit.visit_no, "visit_no", "health.bad_visit_no")
    department = _check(DEPARTMENT_PATTERN, visit.department, "department", "health.bad_department")
    diagnosis = _check(DIAGNOSIS_PATTERN, visit.diagnosis_code, "diagnosis_code", "health.bad_diagnosis")
    canonical = json.dumps(visit.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    existing = conn.execute(
        select(tables.visits).where(_V.institution_id == institution_id, _V.visit_no == visit.visit_no)
    ).first()
    if existing is not None:
        if existing.record == canonical and existing.kind == kind:
            return _visit_view(existing)
        raise Conflict("health.visit_exists",
                       f"visit {visit.visit_no} at {institution_id} was pushed with another record")  # fmt: skip
    holder = patient_for_cardholder(conn, cardholder_id)
    if (
        conn.execute(
            select(_R.id).where(_R.patient_id == holder.id, _R.institution_id == institution_id)
        ).first()
        is None
    ):
        raise Conflict("health.not_registered", f"cardholder {cardholder_id} has no file at {institution_id}")
    expected = quote(conn, cardholder_id=cardholder_id, kind=kind, amount_fen=visit.amount_fen,
                     visit_at=visit.visit_at, rules=rules)  # fmt: skip
    if expected["insurance_fen"] != visit.insurance_fen:
        raise InvalidInput("health.insurance_mismatch",
                           f"insurance_fen {visit.insurance_fen} differs from the rules table's "
                           f"{expected['insurance_fen']} ({expected['scheme']}, {expected['rule']})",
                           fields={"insurance_fen": "mismatch"})  # fmt: skip
    new_id = conn.execute(insert(tables.visits).values(
        patient_id=holder.id, institution_id=institution_id, visit_no=visit.visit_no, card_id=card_id, kind=kind,
        department=department, diagnosis_code=diagnosis, visit_at=visit.visit_at, amount_fen=visit.amount_fen,
        insurance_fen=visit.insurance_fen, record=canonical, signature_hex=visit.signature.hex().upper(),
        created_by=actor, created_at=utc_now())).inserted_primary_key[0]  # fmt: skip
    return _visit_view(conn.execute(select(tables.visits).where(_V.id == new_id)).one())


def _visit_row(conn: Connection, institution_id: str, visit_no: str) -> Any:
    row = conn.execute(
        select(tables.visits).where(_V.institution_id == institution_id, _V.visit_no == visit_no)
    ).first()
    if row is None:
        raise NotFound("health.visit_not_found", f"no visit {visit_no!r} at {institution_id}")
    return row


def visits_of_patient(conn: Connection, patient_id: int, *, limit: int = 50, after: int | None = None
                      ) -> tuple[list[dict[str, Any]], int | None]:  # fmt: skip
    statement = select(tables.visits).where(_V.patient_id == patient_id)
    if after is not None:
        statement = statement.where(_V.id > int(after))
    rows = conn.execute(statement.order_by(_V.id).limit(limit + 1)).all()
    items = [_visit_view(r) for r in rows[:limit]]
    return items, (items[-1]["id"] if len(rows) > limit else None)


def visits_of_institution(conn: Connection, institution_id: str, *, limit: int = 50, after: int | None = None
                          ) -> tuple[list[dict[str, Any]], int | None]:  # fmt: skip
    """The institution's own visits (no consent needed: it wrote them)."""
    statement = select(tables.visits).where(_V.institution_id == institution_id)
    if after is not None:
        statement = statement.where(_V.id > int(after))
    rows = conn.execute(statement.order_by(_V.id).limit(limit + 1)).all()
    items = [_visit_view(r) for r in rows[:limit]]
    return items, (items[-1]["id"] if len(rows) > limit else None)


def record_payment(
    conn: Connection,
    *,
    institution_id: str,
    visit_no: str,
    amount_fen: int,
    pan_masked: str,
    psn: int,
    terminal_id: str,
    stan: str,
    response_code: str,
    authorisation_code: str | None,
    paid_at: dt.datetime,
    actor: str,
) -> dict[str, Any]:
    """The record of the online authorisation that paid the visit's self-pay part (approved, 00).

    The money moved at the issuer (the authorisation); this is the hospital's evidence of it, once
    per visit. The amount must be the visit's self-pay part."""
    visit = _visit_row(conn, institution_id, visit_no)
    self_pay = int(visit.amount_fen) - int(visit.insurance_fen)
    if amount_fen != self_pay:
        raise InvalidInput("health.payment_amount", f"payment {amount_fen} fen ≠ the visit's self-pay part {self_pay} fen",
                           fields={"amount_fen": "mismatch"})  # fmt: skip
    if response_code != "00":
        raise InvalidInput("health.payment_declined", f"response code {response_code}: not an approval",
                           fields={"response_code": "not 00"})  # fmt: skip
    if not re.fullmatch(r"^[0-9]{6}$", stan) or not re.fullmatch(r"^[0-9A-Za-z]{8}$", terminal_id):
        raise InvalidInput(
            "health.bad_payment", "stan is 6 digits, terminal_id 8 letters/digits", fields={"stan": "bad"}
        )
    found = conn.execute(select(tables.payments).where(_PAY.visit_id == visit.id)).first()
    if found is not None:
        raise Conflict("health.already_paid", f"visit {visit_no} is already paid (STAN {found.stan})")
    conn.execute(insert(tables.payments).values(
        visit_id=visit.id, amount_fen=amount_fen, pan_masked=pan_masked[:24], psn=psn, terminal_id=terminal_id,
        stan=stan, response_code=response_code, authorisation_code=authorisation_code, paid_at=paid_at,
        created_by=actor))  # fmt: skip
    return {"visit_no": visit_no, "institution_id": institution_id, "amount_fen": amount_fen, "stan": stan,
            "terminal_id": terminal_id, "response_code": response_code, "paid_at": _iso(paid_at)}  # fmt: skip


def settle(conn: Connection, *, institution_id: str, visit_no: str, actor: str, rules: Rules | None = None
           ) -> dict[str, Any]:  # fmt: skip
    """Post the visit's insurance share once: ``insurer:<scheme>`` → ``hospital:<id>`` (ledger key
    ``health:settle:<visit id>``). Settling again returns the same settlement (idempotent per visit)."""
    visit = _visit_row(conn, institution_id, visit_no)
    found = conn.execute(select(tables.settlements).where(_S.visit_id == visit.id)).first()
    if found is None:
        holder = conn.execute(select(tables.patients).where(_P.id == visit.patient_id)).one()
        scheme_code = holder.scheme or "self_pay"
        scheme = (rules or load_rules()).scheme(scheme_code)
        insurance = int(visit.insurance_fen)
        key = SETTLE_KEY.format(visit.id)
        if insurance:
            ledger.open_account(conn, scheme.insurer_account, ledger.AccountKind.FUNDING, allow_negative=True,
                                name=f"insurer {scheme_code}")  # fmt: skip
            try:
                ledger.post(conn, ledger.PostingRequest(key=key, lines=(
                    ledger.Line(scheme.insurer_account, debit_fen=insurance),
                    ledger.Line(HOSPITAL_ACCOUNT.format(institution_id), credit_fen=insurance),
                ), memo=f"insurance share of visit {visit_no} at {institution_id}"))  # fmt: skip
            except ledger.LedgerError as exc:
                raise Conflict("health.settlement_failed", str(exc)) from None
        try:
            conn.execute(insert(tables.settlements).values(visit_id=visit.id, scheme=scheme_code,
                         insurance_fen=insurance, posting_key=key, settled_by=actor, settled_at=utc_now()))  # fmt: skip
        except (
            IntegrityError
        ):  # pragma: no cover — a concurrent settle of the same visit won; ours rolls back
            raise Conflict(
                "health.settlement_race", f"visit {visit_no} was settled concurrently; retry"
            ) from None
        found = conn.execute(select(tables.settlements).where(_S.visit_id == visit.id)).one()
    return {"visit_no": visit_no, "institution_id": institution_id, "scheme": found.scheme,
            "insurance_fen": int(found.insurance_fen), "posting_key": found.posting_key,
            "from_account": (rules or load_rules()).scheme(found.scheme).insurer_account or None,
            "to_account": HOSPITAL_ACCOUNT.format(institution_id), "settled_at": _iso(found.settled_at)}  # fmt: skip
