"""``/v1/healthcare``: the platform health service for a hospital information system (issue 8 item 3).

A HIS calls with an API key of role ``sector`` bound to its institution (``POST
/v1/healthcare/institutions/bindings``, operator); a key bound to no institution gets 403
``health.no_institution``. Reading a patient's records (``GET …/cardholders/{id}/visits``) needs
the patient's consent for that scope; every such read is audited, and a refused one is committed in
the audit before the 403 ``health.consent_missing``. Writes carry an ``Idempotency-Key``.
(``/health`` — the liveness route — is :mod:`citycard.api.routers.health`, a different thing.)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import Connection

from citycard.api.auth import Caller, Principal, authorize
from citycard.api.deps import check_cardholder, reading
from citycard.api.idempotency import IdempotencyKey, idempotent_write
from citycard.api.pagination import Cursor, Limit, decode_cursor, page
from citycard.api.roles import Role
from citycard.platform.errors import Forbidden, InvalidInput
from citycard.sectors.health import service
from citycard.sectors.health import tables as health_tables

router = APIRouter(prefix="/v1/healthcare", tags=["healthcare"], dependencies=[Depends(authorize)])

CardholderId = Annotated[int, Path(ge=1, le=2**63 - 1)]
INSTITUTION_PATTERN = r"^H[0-9A-Z]{3,15}$"
Scope = Literal["identity", "visits", "alerts", "allergies", "immunisations"]
VisitKind = Literal["outpatient", "inpatient", "emergency"]
RECORD_FIELDS_MAX = 32


def institution_for(request: Request, principal: Principal) -> str:
    """The institution the calling sector system acts for; 403 ``health.no_institution`` if none."""
    with reading(request) as conn:
        found = service.institution_of(conn, principal.ref)
    if found is None:
        raise Forbidden("health.no_institution", f"{principal.ref} ({principal.name}) acts for no institution; "
                        "an operator binds it with POST /v1/healthcare/institutions/bindings")  # fmt: skip
    return found


# --- bodies ------------------------------------------------------------------------------------------
class NewInstitution(BaseModel):
    model_config = ConfigDict(extra="forbid")
    institution_id: str = Field(pattern=INSTITUTION_PATTERN, description="e.g. H001")
    name: str = Field(min_length=1, max_length=health_tables.NAME_CHARS)
    merchant_id: str = Field(
        pattern=r"^[0-9A-Z]{15}$", description="the acquiring merchant id (F42) of its windows"
    )
    suite: Literal["GM", "INTL"] = "GM"
    public_key_hex: str | None = Field(default=None, pattern=r"^(?:[0-9A-Fa-f]{2}){1,600}$",
                                       description="the key its visit records are verified with")  # fmt: skip
    key_id: str | None = Field(default=None, pattern=r"^[0-9A-Fa-f]{1,64}$")


class Binding(BaseModel):
    model_config = ConfigDict(extra="forbid")
    institution_id: str = Field(pattern=INSTITUTION_PATTERN)
    principal: str = Field(
        pattern=r"^(key|user):[0-9]{1,19}$", description="key:<API key id> or user:<user id>"
    )


class CardRef(BaseModel):
    """The card shown at the desk: the platform card id, PAN + PSN (the debit application), or the
    health card number (the health application)."""

    model_config = ConfigDict(extra="forbid")
    card_id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    pan: str | None = Field(default=None, pattern=r"^[0-9]{13,19}$")
    psn: int | None = Field(default=None, ge=0, le=99)
    health_card_no: str | None = Field(default=None, pattern=r"^[0-9]{17}[0-9Xx]$",
                                       description="the health application's card number (DDF1 EF05)")  # fmt: skip


class Registration(CardRef):
    file_no: str = Field(pattern=r"^[0-9A-Za-z-]{1,32}$", description="the hospital's patient file number")
    scheme: str | None = Field(
        default=None, pattern=r"^[a-z_]{2,24}$", description="insurance scheme (rules table)"
    )


class Appointment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cardholder_id: int = Field(ge=1, le=2**63 - 1)
    department: str = Field(min_length=1, max_length=health_tables.DEPARTMENT_CHARS)
    starts_at: AwareDatetime


class AppointmentState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    appointment_id: int = Field(ge=1, le=2**63 - 1)
    state: Literal["cancelled", "attended"]


class Quote(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cardholder_id: int = Field(ge=1, le=2**63 - 1)
    kind: VisitKind = "outpatient"
    amount_fen: int = Field(ge=0, le=10**10)
    visit_at: AwareDatetime | None = None


class Visit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cardholder_id: int = Field(ge=1, le=2**63 - 1)
    card_id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    kind: VisitKind = "outpatient"
    record: dict[str, Any] = Field(description="the signed visit record as written to the card "
                                   "(VisitRecord.to_dict(): institution_id, visit_at, department, diagnosis_code, "
                                   "amount_fen, insurance_fen, visit_no, signature_alg, key_id, signature)")  # fmt: skip


class Payment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    visit_no: str = Field(pattern=r"^[0-9A-Za-z-]{1,32}$")
    amount_fen: int = Field(ge=0, le=10**10)
    pan_masked: str = Field(min_length=4, max_length=24, pattern=r"^[0-9*]+$")
    psn: int = Field(ge=0, le=99)
    terminal_id: str = Field(pattern=r"^[0-9A-Za-z]{8}$")
    stan: str = Field(pattern=r"^[0-9]{6}$")
    response_code: str = Field(pattern=r"^[0-9A-Z]{2}$")
    authorisation_code: str | None = Field(default=None, pattern=r"^[0-9A-Za-z ]{1,6}$")
    paid_at: AwareDatetime


class Settlement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    visit_no: str = Field(pattern=r"^[0-9A-Za-z-]{1,32}$")


class Consent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    institution_id: str = Field(pattern=INSTITUTION_PATTERN)
    scope: Scope = "visits"


# --- institutions (operator) -------------------------------------------------------------------------
@router.post("/institutions", name="healthcare.create_institution", status_code=201, summary="Add a hospital")
def create_institution(
    request: Request, body: NewInstitution, principal: Caller, key: IdempotencyKey
) -> Response:
    return idempotent_write(
        request, principal, key, body.model_dump(mode="json"),
        lambda conn: service.create_institution(conn, **body.model_dump(), actor=principal.actor),
        status_code=201,
    )  # fmt: skip


@router.get("/institutions", name="healthcare.institutions", summary="The hospitals")
def institutions(request: Request) -> dict[str, Any]:
    with reading(request) as conn:
        return page(service.list_institutions(conn), None)


@router.post("/institutions/bindings", name="healthcare.bind", status_code=201,
             summary="Let an API key (or a desk login) act for a hospital")  # fmt: skip
def bind(request: Request, body: Binding, principal: Caller, key: IdempotencyKey) -> Response:
    def action(conn: Connection) -> dict[str, Any]:
        check_desk_principal(conn, body.principal)
        return service.bind_principal(conn, principal=body.principal, institution_id=body.institution_id,
                                      actor=principal.actor)  # fmt: skip

    return idempotent_write(request, principal, key, body.model_dump(), action, status_code=201)


def check_desk_principal(conn: Connection, principal: str) -> None:
    """``key:<id>`` / ``user:<id>`` must name a live API key or login of role ``sector`` (422 otherwise):
    only sector systems and desk staff act for a hospital."""
    import sqlalchemy as sa

    from citycard.api.tables import api_keys, users

    kind, _, number = principal.partition(":")
    table = api_keys if kind == "key" else users
    row = None
    if int(number) < 2**63:  # a larger number names no row (and would overflow BIGINT)
        row = conn.execute(sa.select(table).where(table.c.id == int(number))).first()
    gone = row is None or (kind == "key" and row.revoked_at is not None) or (kind == "user" and row.disabled)
    if gone or row.role != Role.sector.value:
        raise InvalidInput("health.bad_principal", f"{principal} is not a live {'API key' if kind == 'key' else 'login'} "
                           "of role sector", fields={"principal": "not a sector key or login"})  # fmt: skip


# --- the desk: patient index, registration, appointments (sector) ------------------------------------
@router.post("/patients/lookup", name="healthcare.lookup",
             summary="Find the patient of a card (a read: PAN in the body, not the URL)")  # fmt: skip
def lookup(request: Request, body: CardRef, principal: Caller) -> dict[str, Any]:
    institution = institution_for(request, principal)
    with reading(request) as conn:
        return service.lookup(conn, institution_id=institution, **body.model_dump())


@router.post("/registrations", name="healthcare.register", status_code=201, summary="Open a patient file")
def register(request: Request, body: Registration, principal: Caller, key: IdempotencyKey) -> Response:
    institution = institution_for(request, principal)
    return idempotent_write(
        request, principal, key, body.model_dump(),
        lambda conn: service.register(conn, institution_id=institution, **body.model_dump(), actor=principal.actor),
        status_code=201,
    )  # fmt: skip


@router.post("/appointments", name="healthcare.book", status_code=201, summary="Book an appointment")
def book(request: Request, body: Appointment, principal: Caller, key: IdempotencyKey) -> Response:
    institution = institution_for(request, principal)
    return idempotent_write(
        request, principal, key, body.model_dump(mode="json"),
        lambda conn: service.book(conn, institution_id=institution, **body.model_dump(), actor=principal.actor),
        status_code=201,
    )  # fmt: skip


@router.get(
    "/appointments", name="healthcare.appointments", summary="This hospital's appointments; paginated"
)
def appointments(
    request: Request, principal: Caller, limit: Limit = 50, cursor: Cursor = None
) -> dict[str, Any]:
    institution = institution_for(request, principal)
    after = _int_cursor(cursor)
    with reading(request) as conn:
        items, after = service.appointments(conn, institution_id=institution, limit=limit, after=after)
    return page(items, after)


@router.post("/appointments/state", name="healthcare.appointment_state",
             summary="Cancel an appointment or mark it attended")  # fmt: skip
def appointment_state(
    request: Request, body: AppointmentState, principal: Caller, key: IdempotencyKey
) -> Response:
    institution = institution_for(request, principal)
    return idempotent_write(
        request, principal, key, body.model_dump(),
        lambda conn: service.set_appointment_state(conn, institution_id=institution, **body.model_dump()),
    )  # fmt: skip


# --- money and visit records (sector) ----------------------------------------------------------------
@router.post("/quotes", name="healthcare.quote", summary="The insurance share of a visit (a read)")
def quote(request: Request, body: Quote, principal: Caller) -> dict[str, Any]:
    institution_for(request, principal)
    with reading(request) as conn:
        return service.quote(conn, **body.model_dump())


@router.post("/visits", name="healthcare.push_visit", status_code=201,
             summary="Push a signed visit record (the one written to the card)")  # fmt: skip
def push_visit(request: Request, body: Visit, principal: Caller, key: IdempotencyKey) -> Response:
    institution = institution_for(request, principal)
    if len(body.record) > RECORD_FIELDS_MAX:
        raise InvalidInput("health.record_too_large", f"a record has at most {RECORD_FIELDS_MAX} fields")
    return idempotent_write(
        request, principal, key, body.model_dump(),
        lambda conn: service.push_visit(
            conn, institution_id=institution, kind=body.kind, record=body.record, card_id=body.card_id,
            cardholder_id=body.cardholder_id, actor=principal.actor,
        ),
        status_code=201,
    )  # fmt: skip


@router.get("/visits", name="healthcare.own_visits", summary="The visits this hospital recorded; paginated")
def own_visits(
    request: Request, principal: Caller, limit: Limit = 50, cursor: Cursor = None
) -> dict[str, Any]:
    institution = institution_for(request, principal)
    with reading(request) as conn:
        items, after = service.visits_of_institution(
            conn, institution, limit=limit, after=_int_cursor(cursor)
        )
    return page(items, after)


@router.post("/payments", name="healthcare.record_payment", status_code=201,
             summary="Record the online authorisation that paid a visit's self-pay part")  # fmt: skip
def record_payment(request: Request, body: Payment, principal: Caller, key: IdempotencyKey) -> Response:
    institution = institution_for(request, principal)
    return idempotent_write(
        request, principal, key, body.model_dump(mode="json"),
        lambda conn: service.record_payment(conn, institution_id=institution, **body.model_dump(),
                                            actor=principal.actor),
        status_code=201,
    )  # fmt: skip


@router.post("/settlements", name="healthcare.settle", summary="Settle a visit's insurance share (once)")
def settle(request: Request, body: Settlement, principal: Caller, key: IdempotencyKey) -> Response:
    institution = institution_for(request, principal)
    return idempotent_write(
        request, principal, key, body.model_dump(),
        lambda conn: service.settle(conn, institution_id=institution, visit_no=body.visit_no, actor=principal.actor),
    )  # fmt: skip


# --- the patient: records with consent, consents, the audit -----------------------------------------
@router.get(
    "/cardholders/{cardholder_id}", name="healthcare.patient", summary="A patient's index entry and files"
)
def patient(request: Request, cardholder_id: CardholderId, principal: Caller) -> dict[str, Any]:
    check_cardholder(principal, cardholder_id)
    with reading(request) as conn:
        return service.patient(conn, cardholder_id)


@router.get("/cardholders/{cardholder_id}/visits", name="healthcare.patient_visits",
            summary="A patient's visits at every hospital (a hospital needs the patient's consent; audited)")  # fmt: skip
def patient_visits(
    request: Request, cardholder_id: CardholderId, principal: Caller, limit: Limit = 50, cursor: Cursor = None
) -> dict[str, Any]:
    check_cardholder(principal, cardholder_id)
    after = _int_cursor(cursor)
    institution = None
    if principal.role is Role.sector:
        with reading(request) as conn:
            institution = service.institution_of(conn, principal.ref)
    items, next_position = service.read_records(
        request.app.state.engine, actor=principal.actor, institution_id=institution, cardholder_id=cardholder_id,
        scope="visits", self_access=principal.role is not Role.sector,
        reader=lambda conn, patient_id: service.visits_of_patient(conn, patient_id, limit=limit, after=after),
    )  # fmt: skip
    return page(items, next_position)


@router.get("/cardholders/{cardholder_id}/consents", name="healthcare.consents",
            summary="The hospitals a patient lets read their records (revoked ones too)")  # fmt: skip
def consents(request: Request, cardholder_id: CardholderId, principal: Caller) -> dict[str, Any]:
    check_cardholder(principal, cardholder_id)
    with reading(request) as conn:
        return page(service.consents(conn, cardholder_id), None)


@router.post("/cardholders/{cardholder_id}/consents", name="healthcare.grant", status_code=201,
             summary="Let a hospital read a scope of the patient's records")  # fmt: skip
def grant(request: Request, cardholder_id: CardholderId, body: Consent, principal: Caller,
          key: IdempotencyKey) -> Response:  # fmt: skip
    check_cardholder(principal, cardholder_id)
    return idempotent_write(
        request, principal, key, {"cardholder_id": cardholder_id, **body.model_dump()},
        lambda conn: service.grant(conn, cardholder_id=cardholder_id, institution_id=body.institution_id,
                                   scope=body.scope, actor=principal.actor),
        status_code=201,
    )  # fmt: skip


@router.delete(
    "/cardholders/{cardholder_id}/consents", name="healthcare.revoke", summary="Withdraw a consent"
)
def revoke(
    request: Request,
    cardholder_id: CardholderId,
    principal: Caller,
    key: IdempotencyKey,
    institution_id: Annotated[str, Query(pattern=INSTITUTION_PATTERN)],
    scope: Annotated[Scope, Query()] = "visits",
) -> Response:
    check_cardholder(principal, cardholder_id)
    return idempotent_write(
        request, principal, key, {"cardholder_id": cardholder_id, "institution_id": institution_id, "scope": scope},
        lambda conn: service.revoke(conn, cardholder_id=cardholder_id, institution_id=institution_id, scope=scope,
                                    actor=principal.actor),
    )  # fmt: skip


@router.get("/cardholders/{cardholder_id}/audit", name="healthcare.audit",
            summary="Who read (or tried to read) the patient's records; newest first, paginated")  # fmt: skip
def audit(request: Request, cardholder_id: CardholderId, principal: Caller, limit: Limit = 50,
          cursor: Cursor = None) -> dict[str, Any]:  # fmt: skip
    check_cardholder(principal, cardholder_id)
    with reading(request) as conn:
        items, after = service.audit_trail(conn, cardholder_id, limit=limit, after=_int_cursor(cursor))
    return page(items, after)


def _int_cursor(cursor: str | None) -> int | None:
    position = decode_cursor(cursor)
    if position is None:
        return None
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < 2**63:
        from citycard.api.problems import Unprocessable

        raise Unprocessable("pagination.bad_cursor", "cursor is not one this API handed out")
    return position
