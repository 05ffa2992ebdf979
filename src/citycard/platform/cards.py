"""Cards through their whole life (issue 6 item 2; platform-contract P1).

apply → approve → prepare (PAN/PSN/expiry allocated under the issuer's BIN) → personalise (a
virtual card image, or a STORE DATA script for a bureau) → issue (enrolled at the issuer, deposit
collected) → activate → report_loss (oral, then formal: blocked at the issuer at once, the report
minute recorded) → unblock → replace (a new card for the same holder; the EC balance moved once
in the ledger; sector applications reloaded) → cancel (EC balance and deposit refunded) — and
:func:`check_dormancy`, which only warns.

Every function takes a ``Connection`` inside the caller's transaction: the state change, its audit
row (:mod:`.lifecycle`), the issuer's status row (:mod:`.issuers`, a SAVEPOINT on the same
connection), the ledger postings (:mod:`.card_money`) and the events (:mod:`.events`) commit
together or not at all. A refused call raises a :class:`~citycard.platform.errors.PlatformError`
and, once the caller rolls back, nothing has changed. Files (card images) are written before the
commit; a crash can leave an orphan image, never a database row pointing at a missing one.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from citycard.card.perso import mask_pan
from citycard.clearing import store as clearing_store
from citycard.crypto.suite import GM, INTL
from citycard.db import utc_now
from citycard.hsm import SoftHSM
from citycard.platform import card_money, card_perso, events, lifecycle, tables
from citycard.platform.card_rules import rules
from citycard.platform.errors import Conflict, InvalidInput, NotFound
from citycard.platform.identity import CHINA_TIME
from citycard.platform.issuers import ISSUER_STATUS, config_of, issuer_port
from citycard.platform.lifecycle import ENROLLED_STATES, LOSS_STATES, CardState

__all__ = [
    "CardState",
    "activate",
    "apply",
    "approve",
    "by_pan",
    "cancel",
    "check_dormancy",
    "get",
    "issue",
    "list_for_cardholder",
    "personalise",
    "prepare",
    "record",
    "replace",
    "report_loss",
    "timeline",
    "unblock",
]

SUITES = {"GM": GM, "INTL": INTL}
LIST_LIMIT_MAX = 200
TIMELINE_EVENTS_MAX = 1_000
DORMANCY_BATCH_MAX = 1_000  # cards flagged per check_dormancy call; the next call continues
ACTIVITY_KINDS = ("payment", "visit")  # events that show a card is used
REPORT_CLOCK_SKEW = dt.timedelta(minutes=5)  # a loss report time this far ahead of now is refused

_K = tables.cards.c
_A = tables.card_audit.c


# --- reading -------------------------------------------------------------------------------------


def view(row: Any) -> dict[str, Any]:
    """The public view of a card row: the PAN masked, the image path left out."""
    return {
        "id": int(row.id),
        "cardholder_id": int(row.cardholder_id),
        "profile": row.profile,
        "issuer": row.issuer,
        "state": row.state,
        "dormant": bool(row.dormant),
        "pan_masked": mask_pan(row.pan) if row.pan else None,
        "psn": row.psn,
        "suite": row.suite,
        "expiry": row.expiry.isoformat() if row.expiry else None,
        "deposit_fen": int(row.deposit_fen),
        "lost_at": row.lost_at.isoformat() if row.lost_at else None,
        "replaces_id": row.replaces_id,
        "replaced_by_id": row.replaced_by_id,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "actions": lifecycle.allowed_actions(row.state),
    }


def record(conn: Connection, card_id: int, *, lock: bool = False) -> Any:
    """The full ``platform_cards`` row (PAN, image path…) for other platform modules; :class:`NotFound`.

    ``lock`` takes the row lock (``FOR UPDATE`` on PostgreSQL; SQLite writers are serialised anyway).
    """
    if isinstance(card_id, bool) or not isinstance(card_id, int):
        raise InvalidInput("card.id", f"card id must be an integer, got {card_id!r}")
    statement = select(tables.cards).where(_K.id == card_id)
    if lock:
        statement = statement.with_for_update()
    row = conn.execute(statement).first()
    if row is None:
        raise NotFound("card.not_found", f"no card {card_id}")
    return row


def get(conn: Connection, card_id: int) -> dict[str, Any]:
    return view(record(conn, card_id))


def by_pan(conn: Connection, pan: str, psn: int | str) -> dict[str, Any]:
    """The card with this PAN and PSN, or :class:`NotFound`."""
    try:
        psn_value = int(psn)
    except (TypeError, ValueError):
        raise InvalidInput("card.psn", f"PSN must be a number, got {psn!r}", fields={"psn": "bad"}) from None
    row = conn.execute(select(tables.cards).where(_K.pan == pan, _K.psn == psn_value)).first()
    if row is None:
        raise NotFound("card.not_found", f"no card {mask_pan(str(pan))}/{psn_value:02d}")
    return view(row)


def list_for_cardholder(conn: Connection, cardholder_id: int, *, limit: int = 50) -> list[dict[str, Any]]:
    """The cardholder's cards, newest first."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIST_LIMIT_MAX:
        raise InvalidInput(
            "page.limit", f"limit must be 1..{LIST_LIMIT_MAX}", fields={"limit": "out of range"}
        )
    _cardholder(conn, cardholder_id)
    rows = conn.execute(
        select(tables.cards).where(_K.cardholder_id == cardholder_id).order_by(_K.id.desc()).limit(limit)
    )
    return [view(row) for row in rows]


def timeline(conn: Connection, card_id: int, *, limit: int = TIMELINE_EVENTS_MAX) -> list[dict[str, Any]]:
    """The card's events across all sectors (lifecycle, applications, payments, visits), in order."""
    record(conn, card_id)
    return [e.as_dict() for e in events.read(conn, card_id=card_id, limit=limit)]


def audit_trail(conn: Connection, card_id: int) -> list[dict[str, Any]]:
    """The card's audit rows (actor, from, to, action, reason, at), oldest first."""
    record(conn, card_id)
    rows = conn.execute(select(tables.card_audit).where(_A.card_id == card_id).order_by(_A.id))
    return [
        {
            "action": r.action, "from": r.from_state, "to": r.to_state, "actor": r.actor,
            "reason": r.reason, "at": r.at.isoformat(),
        }
        for r in rows
    ]  # fmt: skip


# --- the lifecycle -------------------------------------------------------------------------------


def apply(
    conn: Connection, cardholder_id: int, *, profile: str, issuer: str, actor: str, reason: str = ""
) -> dict[str, Any]:
    """A card application for a cardholder: checks the profile is one the platform issues and that
    its BIN belongs to ``issuer``."""
    return view(_apply(conn, cardholder_id, profile=profile, issuer=issuer, actor=actor, reason=reason))


def approve(conn: Connection, card_id: int, *, actor: str, reason: str = "") -> dict[str, Any]:
    card = record(conn, card_id, lock=True)
    at = utc_now()
    lifecycle.transition(conn, card, "approve", actor=actor, reason=reason, at=at)
    _emit(conn, "card.approved", card, at=at, actor=actor)
    return get(conn, card_id)


def prepare(
    conn: Connection, card_id: int, *, hsm: SoftHSM | None = None, actor: str, reason: str = ""
) -> dict[str, Any]:
    """Data preparation: PAN (next serial under the BIN), PSN (the profile's), effective date
    (today, China) and expiry. The keys are derived at personalisation, in the HSM."""
    card = record(conn, card_id, lock=True)
    lifecycle.target("prepare", card.state)  # refuse before allocating a PAN
    chosen = card_perso.profile_of(card.profile)
    pan = card_perso.allocate_pan(conn, chosen)
    effective = dt.datetime.now(CHINA_TIME).date()
    at = utc_now()
    lifecycle.transition(
        conn, card, "prepare", actor=actor, reason=reason, at=at, pan=pan, psn=int(chosen.card.psn),
        suite=chosen.suites[0], effective=effective, expiry=card_perso.expiry_for(chosen, effective),
    )  # fmt: skip
    _emit(conn, "card.prepared", record(conn, card_id), at=at, actor=actor)
    return get(conn, card_id)


def personalise(
    conn: Connection, card_id: int, *, hsm: SoftHSM, image_dir: Path | None, actor: str, reason: str = ""
) -> dict[str, Any]:
    """A virtual card image in ``image_dir`` (``image_dir=None``: the STORE DATA script for a card
    bureau, returned under ``"perso_script"``; enciphered DGIs and KCVs, no clear key)."""
    card = record(conn, card_id, lock=True)
    lifecycle.target("personalise", card.state)
    directory = card_perso.check_image_dir(image_dir)
    at = utc_now()
    script: dict[str, Any] | None = None
    if directory is None:
        script = card_perso.bureau_script(card, hsm).to_json()
        image_path = None
    else:
        path, _ = card_perso.personalise_image(card, hsm, directory)
        image_path = str(path)
    lifecycle.transition(conn, card, "personalise", actor=actor, reason=reason, at=at, image_path=image_path)
    _emit(conn, "card.personalised", card, at=at, actor=actor, bureau=directory is None)
    result = get(conn, card_id)
    if script is not None:
        result["perso_script"] = script
    return result


def issue(
    conn: Connection, card_id: int, *, hsm: SoftHSM | None = None, actor: str, reason: str = ""
) -> dict[str, Any]:
    """Enrol the card at its issuer (status blocked until activation) and collect the deposit."""
    card = record(conn, card_id, lock=True)
    _issue(conn, card, hsm=hsm, actor=actor, reason=reason, deposit_fen=rules().deposit_fen)
    return get(conn, card_id)


def activate(conn: Connection, card_id: int, *, actor: str, reason: str = "") -> dict[str, Any]:
    """The cardholder has the card: the issuer accepts it from now on."""
    card = record(conn, card_id, lock=True)
    _activate(conn, card, actor=actor, reason=reason)
    return get(conn, card_id)


def report_loss(
    conn: Connection,
    card_id: int,
    *,
    formal: bool,
    actor: str,
    at: dt.datetime | None = None,
    reason: str = "",
) -> dict[str, Any]:
    """A loss report: the card is blocked at the issuer in this transaction, ``lost_at`` records the
    report minute (the first report's; no cardholder liability from that minute on), ``card.lost``
    is emitted. ``formal=False`` is the oral report (口头挂失), ``True`` the formal one (正式挂失)."""
    if not isinstance(formal, bool):
        raise InvalidInput("card.formal", "formal must be true or false", fields={"formal": "not a boolean"})
    card = record(conn, card_id, lock=True)
    action = "report_loss_formal" if formal else "report_loss_oral"
    lifecycle.target(action, card.state)
    now = utc_now()
    reported = _check_time(at, now) if at is not None else now
    minute = reported.replace(second=0, microsecond=0)
    lost_at = card.lost_at if card.lost_at is not None else minute  # an oral report's minute stands
    issuer_port(conn, card.issuer).set_card_status(pan=card.pan, psn=card.psn, status=ISSUER_STATUS["lost"])
    # clearing refunds the card's offline taps from this minute on (no liability after the report)
    clearing_store.report_loss(conn, pan=card.pan, psn=_psn_text(card.psn), lost_at=lost_at)
    lifecycle.transition(conn, card, action, actor=actor, reason=reason, at=now, lost_at=lost_at)
    _emit(conn, "card.lost", card, at=now, actor=actor, formal=formal, lost_at=lost_at.isoformat())
    return get(conn, card_id)


def unblock(conn: Connection, card_id: int, *, actor: str, reason: str = "") -> dict[str, Any]:
    """Lift a loss report (the card was found): active again at the issuer."""
    card = record(conn, card_id, lock=True)
    lifecycle.target("unblock", card.state)
    at = utc_now()
    issuer_port(conn, card.issuer).set_card_status(pan=card.pan, psn=card.psn, status=ISSUER_STATUS["active"])
    clearing_store.report_loss(conn, pan=card.pan, psn=_psn_text(card.psn), lost_at=None)
    lifecycle.transition(conn, card, "unblock", actor=actor, reason=reason, at=at, lost_at=None)
    _emit(conn, "card.unblocked", card, at=at, actor=actor)
    return get(conn, card_id)


def replace(
    conn: Connection, card_id: int, *, hsm: SoftHSM, image_dir: Path | None, actor: str, reason: str = ""
) -> dict[str, Any]:
    """A new card for the same cardholder; returns the new card's view.

    Order (one transaction): a new card is applied, approved, prepared, personalised with the old
    card's EC balance as its chip balance, issued and activated (the holder is at the desk; the
    deposit carries over); then the EC balance moves in the ledger (key ``replace:<old id>``, so
    it moves exactly once) and both issuer shadows follow; the old card becomes ``replaced`` and
    stays blocked at the issuer; sector applications are reloaded; ``card.replaced`` is emitted.
    A second call finds the old card replaced: :class:`Conflict`, nothing more moves.
    """
    old = record(conn, card_id, lock=True)
    lifecycle.target("replace", old.state)
    directory = card_perso.check_image_dir(image_dir)
    port = issuer_port(conn, old.issuer, hsm)
    old_ec = port.ec_account(pan=old.pan, psn=old.psn)
    balance_fen = card_money.ec_balance_fen(conn, old_ec)
    why = reason or f"replaces card {old.id}"
    new = _apply(
        conn, old.cardholder_id, profile=old.profile, issuer=old.issuer, actor=actor, reason=why,
        replaces_id=old.id, ec_initial_fen=max(balance_fen, 0),
    )  # fmt: skip
    approve(conn, new.id, actor=actor, reason=why)
    prepare(conn, new.id, actor=actor, reason=why)
    personalised = personalise(conn, new.id, hsm=hsm, image_dir=directory, actor=actor, reason=why)
    _issue(conn, record(conn, new.id), hsm=hsm, actor=actor, reason=why, deposit_fen=0)
    new = record(conn, new.id)
    conn.execute(update(tables.cards).where(_K.id == new.id).values(deposit_fen=old.deposit_fen))
    _activate(conn, record(conn, new.id), actor=actor, reason=why)
    new_ec = port.ec_account(pan=new.pan, psn=new.psn)
    moved = card_money.move_ec_balance(
        conn, old_card_id=old.id, old_ec_account=old_ec, new_ec_account=new_ec, amount_fen=new.ec_initial_fen
    )
    left_fen = card_money.ec_balance_fen(conn, old_ec)
    if left_fen > 0:  # moved since we read it (a clearing on another connection): start again
        raise Conflict(
            "card.balance_changed", f"card {old.id}: the EC balance changed during the replacement"
        )
    port.set_ec_shadow(pan=old.pan, psn=old.psn, ec_balance_fen=max(left_fen, 0))
    port.set_ec_shadow(pan=new.pan, psn=new.psn, ec_balance_fen=card_money.ec_balance_fen(conn, new_ec))
    if old.state not in LOSS_STATES:  # a lost card stays "lost" at the issuer
        port.set_card_status(pan=old.pan, psn=old.psn, status=ISSUER_STATUS["replaced"])
    at = utc_now()
    lifecycle.transition(
        conn,
        old,
        "replace",
        actor=actor,
        reason=why,
        at=at,
        replaced_by_id=new.id,
        deposit_fen=0,
        dormant=False,
    )
    reloaded = _reload_applications(conn, old.id, new.id, hsm=hsm, actor=actor)
    _emit(
        conn, "card.replaced", old, at=at, actor=actor, new_card_id=int(new.id), ec_moved_fen=moved,
        applications_reloaded=reloaded,
    )  # fmt: skip
    result = get(conn, new.id)
    if "perso_script" in personalised:  # a bureau card: the desk hands the script to the bureau
        result["perso_script"] = personalised["perso_script"]
    return result


def cancel(conn: Connection, card_id: int, *, actor: str, reason: str = "") -> int:
    """Close the card: the EC balance (the ledger's shadow of the chip) and the deposit are paid
    back at the desk (one posting, key ``refund:<card id>``), the issuer blocks the card. Returns
    the refund in fen."""
    card = record(conn, card_id, lock=True)
    lifecycle.target("cancel", card.state)
    ec_account = None
    if card.state in ENROLLED_STATES:
        port = issuer_port(conn, card.issuer)
        ec_account = port.ec_account(pan=card.pan, psn=card.psn)
    refund_fen = card_money.refund(
        conn, card_id=card.id, ec_account=ec_account, deposit_fen=int(card.deposit_fen)
    )
    if ec_account is not None:
        port.set_ec_shadow(
            pan=card.pan, psn=card.psn, ec_balance_fen=card_money.ec_balance_fen(conn, ec_account)
        )
        port.set_card_status(pan=card.pan, psn=card.psn, status=ISSUER_STATUS["cancelled"])
    at = utc_now()
    lifecycle.transition(conn, card, "cancel", actor=actor, reason=reason, at=at, deposit_fen=0)
    _emit(conn, "card.cancelled", card, at=at, actor=actor, refund_fen=refund_fen)
    return refund_fen


def check_dormancy(conn: Connection, *, now: dt.datetime, actor: str = "system") -> list[dict[str, Any]]:
    """Flag active cards unused for ``dormancy_days`` (cards.toml) and emit ``card.dormant_warning``.

    Never a lock: the state stays ``active`` and the issuer is not told. Use = the activation, or a
    ``payment``/``visit`` event for the card. A flagged card that is used again loses the flag.
    Returns the warnings issued by this call (at most :data:`DORMANCY_BATCH_MAX`).
    """
    now = _check_time(now, None)
    cutoff = now - dt.timedelta(days=rules().dormancy_days)
    e = tables.events.c
    used = (
        select(e.card_id, func.max(e.at).label("last_use"))
        .where(e.kind.in_(ACTIVITY_KINDS), e.card_id.is_not(None))
        .group_by(e.card_id)
        .subquery()
    )
    last = func.coalesce(used.c.last_use, _K.last_activity_at, _K.updated_at)
    # Cards used since they were flagged: the flag goes, silently (the warning stays in the log).
    woken = select(_K.id).outerjoin(used, used.c.card_id == _K.id).where(_K.dormant.is_(True), last >= cutoff)
    woken_ids = [row.id for row in conn.execute(woken)]
    if woken_ids:
        conn.execute(update(tables.cards).where(_K.id.in_(woken_ids)).values(dormant=False))
    candidates = conn.execute(
        select(tables.cards, last.label("last_use"))
        .outerjoin(used, used.c.card_id == _K.id)
        .where(_K.state == CardState.ACTIVE.value, _K.dormant.is_(False), last < cutoff)
        .order_by(_K.id)
        .limit(DORMANCY_BATCH_MAX)
    ).all()
    warnings = []
    for card in candidates:
        conn.execute(update(tables.cards).where(_K.id == card.id).values(dormant=True))
        lifecycle.audit(
            conn, card.id, "dormant_warning", from_state=card.state, to_state=card.state, actor=actor,
            reason=f"no use since {card.last_use.isoformat()}", at=now,
        )  # fmt: skip
        seq = _emit(
            conn, "card.dormant_warning", card, at=now, actor=actor, last_use=card.last_use.isoformat()
        )
        warnings.append({"card_id": int(card.id), "last_use": card.last_use.isoformat(), "seq": seq})
    return warnings


# --- helpers -------------------------------------------------------------------------------------


def _apply(
    conn: Connection,
    cardholder_id: int,
    *,
    profile: str,
    issuer: str,
    actor: str,
    reason: str,
    replaces_id: int | None = None,
    ec_initial_fen: int = 0,
) -> Any:
    actor, reason = lifecycle.check_actor(actor), lifecycle.check_reason(reason)
    _cardholder(conn, cardholder_id)
    if not isinstance(profile, str) or profile not in rules().profiles:
        raise InvalidInput(
            "card.profile", f"profile must be one of {', '.join(rules().profiles)}, got {profile!r}",
            fields={"profile": "unknown"},
        )  # fmt: skip
    if not isinstance(issuer, str):
        raise InvalidInput("card.issuer", "issuer must be a name", fields={"issuer": "bad"})
    config = config_of(issuer)
    chosen = card_perso.profile_of(profile)
    if not config.owns(chosen.card.bin):  # the issuer's BIN prefixes cover the profile's BIN
        raise InvalidInput(
            "card.bin_mismatch", f"profile {profile} issues BIN {chosen.card.bin}, not a BIN of {issuer}",
            fields={"issuer": "does not own the profile's BIN"},
        )  # fmt: skip
    if chosen.suites[0] not in config.keys:
        raise InvalidInput("card.suite", f"issuer {issuer} has no keys for suite {chosen.suites[0]}")
    at = utc_now()
    card_id = conn.execute(
        insert(tables.cards)
        .values(
            cardholder_id=cardholder_id, profile=profile, issuer=issuer, state=CardState.APPLIED.value,
            dormant=False, deposit_fen=0, ec_initial_fen=ec_initial_fen, replaces_id=replaces_id,
            created_at=at, updated_at=at,
        )
        .returning(_K.id)
    ).scalar_one()  # fmt: skip
    lifecycle.audit(
        conn, card_id, "apply", from_state=None, to_state="applied", actor=actor, reason=reason, at=at
    )
    card = record(conn, int(card_id))
    _emit(conn, "card.applied", card, at=at, actor=actor, profile=profile, issuer=issuer)
    return card


def _issue(
    conn: Connection, card: Any, *, hsm: SoftHSM | None, actor: str, reason: str, deposit_fen: int
) -> None:
    lifecycle.target("issue", card.state)
    port = issuer_port(conn, card.issuer, hsm)
    # Enrolled with a zero EC balance: a replacement's balance arrives by the ledger move.
    port.enrol_card(
        pan=card.pan,
        psn=card.psn,
        expiry=card.expiry,
        suite=SUITES[card.suite],
        status=ISSUER_STATUS["issued"],
    )
    # clearing must know the card (and its issuer's EC account) before its first offline tap arrives
    clearing_store.register_card(conn, pan=card.pan, psn=_psn_text(card.psn), issuer=card.issuer)
    card_money.collect_deposit(conn, card.id, deposit_fen)
    at = utc_now()
    lifecycle.transition(conn, card, "issue", actor=actor, reason=reason, at=at, deposit_fen=deposit_fen)
    _emit(conn, "card.issued", card, at=at, actor=actor, pan_masked=mask_pan(card.pan), psn=card.psn)


def _psn_text(psn: int | None) -> str:
    """The PSN as clearing and the kernel's batch record write it (5F34 as two digits)."""
    return f"{psn or 0:02d}"


def _activate(conn: Connection, card: Any, *, actor: str, reason: str) -> None:
    lifecycle.target("activate", card.state)
    issuer_port(conn, card.issuer).set_card_status(pan=card.pan, psn=card.psn, status=ISSUER_STATUS["active"])
    at = utc_now()
    lifecycle.transition(conn, card, "activate", actor=actor, reason=reason, at=at, last_activity_at=at)
    _emit(conn, "card.activated", card, at=at, actor=actor)


def _reload_applications(
    conn: Connection, old_id: int, new_id: int, *, hsm: SoftHSM, actor: str
) -> list[Any]:
    """P4's ``applications.reload_all``: the sector applications of the old card written onto the
    new chip (it records them and emits ``application.loaded`` itself); their views go into the
    ``card.replaced`` event. Imported here, not at the top: applications builds on this module's
    tables and must not be loaded just to read a card."""
    from citycard.platform import applications

    return list(applications.reload_all(conn, old_id, new_id, hsm=hsm, actor=actor))


def _emit(conn: Connection, kind: str, card: Any, *, at: dt.datetime, actor: str, **payload: Any) -> int:
    return events.emit(
        conn, kind, card_id=int(card.id), cardholder_id=int(card.cardholder_id), at=at,
        payload={"actor": actor, **payload},
    )  # fmt: skip


def _cardholder(conn: Connection, cardholder_id: int) -> None:
    if isinstance(cardholder_id, bool) or not isinstance(cardholder_id, int):
        raise InvalidInput("cardholder.id", f"cardholder id must be an integer, got {cardholder_id!r}")
    h = tables.cardholders.c
    if conn.execute(select(h.id).where(h.id == cardholder_id)).first() is None:
        raise NotFound("cardholder.not_found", f"no cardholder {cardholder_id}")


def _check_time(at: Any, now: dt.datetime | None) -> dt.datetime:
    if not isinstance(at, dt.datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInput("card.time", "times must be aware datetimes (UTC inside)", fields={"at": "naive"})
    at = at.astimezone(dt.UTC)
    if now is not None and at > now + REPORT_CLOCK_SKEW:
        raise InvalidInput(
            "card.time", f"report time {at.isoformat()} is in the future", fields={"at": "future"}
        )
    return at
