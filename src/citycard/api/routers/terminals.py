"""Validators and taxi terminals ↔ platform (issue 7 item 2; docs/validators.md).

* ``POST /v1/clearing/uploads`` — a store-and-forward batch of approved offline taps →
  :func:`citycard.clearing.store.intake`. The batch id is the ``Idempotency-Key`` (they must be
  equal, and the id starts with ``<terminal_id>:``): a replay returns the first summary with
  ``Idempotent-Replayed: true`` and changes nothing; the same id with other records is 422
  ``idempotency.mismatch``. Records are checked with pydantic first (422 with field errors), then
  by clearing (a record it cannot trust becomes an exception with its reason, not an HTTP error).
* ``GET /v1/terminals/{terminal_id}/parameters?fares=&blacklist=&capks=&terminal_class=`` — what
  the terminal lacks: the fare table (name, version, TOML text) when newer than ``fares``, the
  blacklist as a delta from ``blacklist`` (or the full list when it holds none or the delta cannot
  be made), the CAPK set when newer than ``capks``.
* ``POST /v1/terminals/{terminal_id}/versions`` — the terminal reports what it holds: the blacklist
  version through :func:`citycard.platform.blacklist.report_version` (so ``/v1/blacklist-stale``
  sees it), fares and CAPKs in ``terminal_parameters``; the answer says what is stale.
* ``GET /v1/terminals/{terminal_id}/versions`` — the same view for the operator's console.

A terminal key (role ``terminal``) acts only for its own terminal id (403 ``auth.other_terminal``).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import threading
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt

from citycard.api.auth import Caller, Principal, authorize
from citycard.api.deps import reading
from citycard.api.idempotency import REPLAYED_HEADER, IdempotencyKey, idempotent_write
from citycard.api.problems import Unprocessable
from citycard.api.roles import Role
from citycard.clearing.store import ClearingError, intake
from citycard.clearing.verify import HsmVerifier, SuiteLabels
from citycard.db import read_transaction, utc_now
from citycard.platform import blacklist
from citycard.platform.errors import Conflict, Forbidden, InvalidInput, NotFound
from citycard.platform.exchange_tables import terminals as platform_terminals
from citycard.platform.terminal_tables import terminal_parameters

router = APIRouter(prefix="/v1", tags=["terminals"], dependencies=[Depends(authorize)])

UPLOAD_RECORDS_MAX = 5_000  # records in one batch (the body limit of 1 MB holds ~1,000 in practice)
TEXT = r"^[A-Za-z0-9_.\-]{1,32}$"
TerminalId = Annotated[str, Path(pattern=TEXT)]
Version = Annotated[int, Query(ge=0, le=2**31 - 1)]
FEN_MAX = 999_999_999_999

Fen = Annotated[StrictInt, Field(ge=0, le=FEN_MAX)]
Text = Annotated[str, Field(pattern=TEXT)]


class TransitIn(BaseModel):
    """The validator's fare decision (``citycard.clearing.transit``; clearing checks it again)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["entry", "exit", "flat", "taxi"]
    line: Text
    stop: Text | None
    fare_fen: Annotated[StrictInt, Field(ge=0, le=100_000)]
    refund_fen: Annotated[StrictInt, Field(ge=0, le=100_000)]
    reasons: Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,48}$")]], Field(max_length=8)]
    holder_kind: Text


class RecordIn(BaseModel):
    """One approved offline tap (``citycard.clearing.record.upload_dict`` + ``transit``)."""

    model_config = ConfigDict(extra="forbid")
    pan: Annotated[str, Field(pattern=r"^[0-9]{12,19}$")]
    psn: Annotated[str, Field(pattern=r"^[0-9]{2}$")]
    amount_fen: Fen
    balance_fen_after: Fen
    field55: Annotated[str, Field(pattern=r"^(?:[0-9A-Fa-f]{2}){1,255}$")]
    terminal_id: Text
    operator: Text
    route: Text
    vehicle: Text
    tap_at: AwareDatetime
    transit: TransitIn | None = None


class UploadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    terminal_id: Text
    batch_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{8,64}$")]
    records: Annotated[list[RecordIn], Field(min_length=1, max_length=UPLOAD_RECORDS_MAX)]


class FaresHeld(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,64}$")]
    version: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]


class VersionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    terminal_class: Annotated[str, Field(pattern=r"^[a-z]{1,16}$")]
    fares: FaresHeld
    blacklist: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]
    capks: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]


def _own_terminal(principal: Principal, terminal_id: str) -> None:
    if principal.role is Role.terminal and principal.subject != terminal_id:
        raise Forbidden(
            "auth.other_terminal", f"this key belongs to terminal {principal.subject}, not {terminal_id}"
        )


_verifier_lock = threading.Lock()


def _verifier(request: Request) -> HsmVerifier:
    """The clearing HSM verifier: the settings' HSM file (``clearing_hsm``) or the app's HSM."""
    state = request.app.state
    with _verifier_lock:
        verifier = getattr(state, "clearing_verifier", None)
        if verifier is None:
            settings = state.settings
            labels = {suite: SuiteLabels(*pair) for suite, pair in settings.clearing_labels.items()}
            hsm = state.hsm
            if settings.clearing_hsm is not None:
                from citycard.hsm import SoftHSM

                hsm = SoftHSM.open(settings.clearing_hsm, master_key_file=settings.clearing_master_key)
            verifier = state.clearing_verifier = HsmVerifier(hsm, labels)
    return verifier


@router.post("/clearing/uploads", name="clearing.uploads",
             summary="A validator's batch of approved offline taps, cleared once (batch id = Idempotency-Key)")  # fmt: skip
def upload(request: Request, body: UploadIn, principal: Caller, key: IdempotencyKey) -> Response:
    _own_terminal(principal, body.terminal_id)
    if key != body.batch_id:
        raise Unprocessable(
            "idempotency.batch_id", f"Idempotency-Key {key!r} must equal the batch id {body.batch_id!r}",
            fields={"header.Idempotency-Key": "must equal body.batch_id"},
        )  # fmt: skip
    if not body.batch_id.startswith(f"{body.terminal_id}:"):
        raise Unprocessable(
            "clearing.batch_id", f"batch id must start with the terminal id and a colon ({body.terminal_id}:)",
            fields={"body.batch_id": "prefix"},
        )  # fmt: skip
    for index, record in enumerate(body.records):
        if record.terminal_id != body.terminal_id:
            raise Unprocessable(
                "clearing.other_terminal", f"record {index} was tapped on {record.terminal_id}, not {body.terminal_id}",
                fields={f"body.records.{index}.terminal_id": "must equal body.terminal_id"},
            )  # fmt: skip
    records = [_as_upload(record) for record in body.records]
    try:
        now = getattr(request.app.state, "clock", utc_now)()  # a test may set the platform's clock
        result = intake(request.app.state.engine, body.batch_id, records, keys=_verifier(request), now=now)
    except ClearingError as exc:
        if "other records" in str(exc):
            raise Unprocessable(
                "idempotency.mismatch", f"batch {body.batch_id!r} was uploaded before with other records"
            ) from None
        raise Unprocessable("clearing.refused", str(exc)) from None
    answer = {"batch_id": result.batch_id, "records": result.records, "accepted": result.accepted,
              "exceptions": result.exceptions, "replayed": result.replayed}  # fmt: skip
    headers = {REPLAYED_HEADER: "true"} if result.replayed else {}
    return Response(json.dumps(answer), media_type="application/json", headers=headers)


def _as_upload(record: RecordIn) -> dict[str, Any]:
    """The record back in the validator's upload form (what its digest was computed over)."""
    upload: dict[str, Any] = record.model_dump(mode="json", exclude={"tap_at", "transit"})
    upload["tap_at"] = record.tap_at.astimezone(dt.UTC).isoformat()
    if record.transit is not None:
        upload["transit"] = record.transit.model_dump(mode="json")
    return upload


# --- parameters -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _fare_table(name: str, directory: str | None) -> tuple[int, str]:
    """(version, text) of the fare table the platform distributes (shipped, or from a directory)."""
    from importlib import resources
    from pathlib import Path as FsPath

    from citycard.sectors.transit import parse_table

    source = (
        FsPath(directory) / f"{name}.toml"
        if directory
        else resources.files("citycard.data") / "transit" / f"{name}.toml"
    )
    text = source.read_text(encoding="utf-8")
    return parse_table(text).version, text


def _capk_set(request: Request) -> list[dict[str, Any]]:
    """The CAPKs the platform distributes beyond the shipped table: the HSM's CAs (checksummed)."""
    from citycard.crypto.capk import capk_checksum

    keys = []
    for capk in request.app.state.hsm.list_capks():
        keys.append({
            "rid": capk.rid.hex().upper(), "index": capk.index, "suite": capk.suite.name,
            "key": capk.key.hex().upper(), "exponent": capk.exponent.hex().upper(),
            "expiry": capk.expiry.isoformat() if capk.expiry else None,
            "checksum": capk_checksum(capk.rid, capk.index, capk.key, capk.exponent).hex().upper(),
        })  # fmt: skip
    return keys


def _blacklist_part(conn: Any, terminal_class: str, held: int) -> dict[str, Any]:
    latest = blacklist.latest_version(conn, terminal_class)
    part: dict[str, Any] = {"terminal_class": terminal_class, "version": latest, "delta": None, "full": None}
    if latest == 0 or held == latest:
        return part
    if 0 < held < latest:
        try:
            part["delta"] = base64.b64encode(
                blacklist.delta(conn, terminal_class=terminal_class, from_version=held)
            ).decode("ascii")
            return part
        except (InvalidInput, Conflict):
            pass
    listing = blacklist.full_list(conn, terminal_class=terminal_class)
    part["full"] = base64.b64encode(listing.to_bytes()).decode("ascii")
    part["sha256"] = listing.body_sha256.hex().upper()
    return part


@router.get("/terminals/{terminal_id}/parameters", name="terminals.parameters",
            summary="The fare table, blacklist delta and CAPK set newer than what the terminal holds")  # fmt: skip
def parameters(
    request: Request,
    terminal_id: TerminalId,
    principal: Caller,
    fares: Version = 0,
    blacklist_version: Annotated[int, Query(alias="blacklist", ge=0, le=2**31 - 1)] = 0,
    capks: Version = 0,
    terminal_class: Annotated[str, Query(pattern=r"^[a-z]{1,16}$")] = "bus",
) -> dict[str, Any]:
    _own_terminal(principal, terminal_id)
    blacklist.check_terminal_class(terminal_class)
    settings = request.app.state.settings
    name = settings.fare_table
    version, text = _fare_table(name, str(settings.fares_dir) if settings.fares_dir else None)
    with reading(request) as conn:
        listing = _blacklist_part(conn, terminal_class, blacklist_version)
    return {
        "terminal_id": terminal_id,
        "fares": {"name": name, "version": version, "text": text if version > fares else None},
        "blacklist": listing,
        "capks": {"version": settings.capks_version,
                  "keys": _capk_set(request) if settings.capks_version > capks else None},
    }  # fmt: skip


def _status(conn: Any, request: Request, terminal_id: str) -> dict[str, Any]:
    settings = request.app.state.settings
    held = conn.execute(
        sa.select(terminal_parameters).where(terminal_parameters.c.terminal_id == terminal_id)
    ).first()
    listed = conn.execute(
        sa.select(platform_terminals).where(platform_terminals.c.terminal_id == terminal_id)
    ).first()
    if held is None and listed is None:
        raise NotFound("terminal.not_found", f"terminal {terminal_id} has never reported its versions")
    version, _ = _fare_table(settings.fare_table, str(settings.fares_dir) if settings.fares_dir else None)
    fares_held = held.fares_version if held is not None else 0
    fares_stale = held is None or held.fares_name != settings.fare_table or fares_held < version
    capks_held = held.capks_version if held is not None else 0
    bl_latest = blacklist.latest_version(conn, listed.terminal_class) if listed is not None else 0
    bl_held = listed.version if listed is not None else 0
    reasons = []  # as platform.blacklist.stale() says them, for this one terminal
    if listed is not None:
        if bl_held < bl_latest:
            reasons.append("behind")
        policy = blacklist.TERMINAL_CLASSES.get(listed.terminal_class)
        if policy is not None and utc_now() - listed.reported_at > policy.silent_after:
            reasons.append("silent")
    out = {
        "terminal_id": terminal_id,
        "reported_at": held.reported_at if held is not None else None,
        "fares": {"name": held.fares_name if held else None, "held": fares_held, "latest": version,
                  "stale": fares_stale},
        "blacklist": {"terminal_class": listed.terminal_class if listed else None, "held": bl_held,
                      "latest": bl_latest, "stale": bool(reasons),
                      "reasons": reasons},
        "capks": {"held": capks_held, "latest": settings.capks_version,
                  "stale": capks_held < settings.capks_version},
    }  # fmt: skip
    out["stale"] = out["fares"]["stale"] or out["blacklist"]["stale"] or out["capks"]["stale"]
    return jsonable_encoder(out)


@router.post("/terminals/{terminal_id}/versions", name="terminals.report_versions",
             summary="A terminal reports the fare table, blacklist and CAPK versions it holds")  # fmt: skip
def report_versions(
    request: Request, terminal_id: TerminalId, body: VersionsIn, principal: Caller, key: IdempotencyKey
) -> Response:
    _own_terminal(principal, terminal_id)

    blacklist.check_terminal_class(body.terminal_class)

    def action(conn: Any) -> dict[str, Any]:
        now = utc_now()
        blacklist.report_version(conn, terminal_id, body.terminal_class, body.blacklist, now)
        values = {"fares_name": body.fares.name, "fares_version": body.fares.version,
                  "capks_version": body.capks, "reported_at": now}  # fmt: skip
        updated = conn.execute(
            terminal_parameters.update()
            .where(terminal_parameters.c.terminal_id == terminal_id)
            .values(**values)
        ).rowcount
        if not updated:
            conn.execute(terminal_parameters.insert().values(terminal_id=terminal_id, **values))
        return _status(conn, request, terminal_id)

    payload = {"terminal_id": terminal_id, **body.model_dump(mode="json")}
    return idempotent_write(request, principal, key, payload, action)


@router.get("/terminals/{terminal_id}/versions", name="terminals.versions",
            summary="What a terminal last reported holding, against the latest, and whether it is stale")  # fmt: skip
def versions(request: Request, terminal_id: TerminalId, principal: Caller) -> dict[str, Any]:
    _own_terminal(principal, terminal_id)
    with read_transaction(request.app.state.engine) as conn:
        return _status(conn, request, terminal_id)
