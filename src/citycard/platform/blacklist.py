"""Blacklists: which cards terminals must refuse offline, versioned per terminal class (issue 6 item 4;
EMV Book 3 §10.6.1 exception file; pboc-notes §2.2; docs/platform-exchange.md).

Sources, read at :func:`publish` time (the list is a pure function of them):

* platform cards (``platform_cards``) in state ``lost_oral``, ``lost``, ``replaced`` or ``cancelled``
  — a loss report lands on the next published version;
* cards the issuer host holds ``blocked``/``lost``/``stolen`` (``issuer_cards``: a bank may block a
  card without the platform);
* flags (``platform_blacklist_flags``): fraud, counterfeit and negative electronic-cash balances,
  optionally for one terminal class only, until cleared.

Each publish writes only the change (entries as version intervals, see exchange_tables) and the
SHA-256 of the resulting exception-file body. :func:`publish` reads every source (the full
reconciliation); :func:`publish_changes` reads only the PANs a change touched and derives list N+1
from list N in memory — the path a loss report takes through :mod:`blacklist_outbox`, whose
publisher drains the event log (the outbox) without an operator. A terminal downloads the full list (the kernel's
exception file, :mod:`citycard.kernel.params.exception_file`, so it loads it directly) or the delta
from the version it holds (:mod:`citycard.platform.blacklist_format`), and reports the version it
holds (:func:`report_version`), so :func:`stale` lists terminals behind or silent.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from citycard.host.issuer.tables import cards as issuer_cards
from citycard.kernel.params.exception_file import ExceptionFile, ExceptionFileError, masked_pan
from citycard.platform import events
from citycard.platform.blacklist_format import encode_delta_to
from citycard.platform.errors import Conflict, InvalidInput, NotFound
from citycard.platform.exchange_tables import (
    ACTOR_CHARS_MAX,
    DETAIL_CHARS_MAX,
    FLAG_REASONS,
    blacklist_entries,
    blacklist_flags,
    blacklist_versions,
    terminals,
)
from citycard.platform.tables import cards as platform_cards

# Card states that put a card on every list (platform-contract P1: cards.CardState).
LISTED_CARD_STATES = ("lost_oral", "lost", "replaced", "cancelled")
LISTED_ISSUER_STATUSES = ("blocked", "lost", "stolen")


class TerminalClass:
    """What one class of terminal receives: the most entries it can hold, and how long it may stay
    silent before it is reported stale."""

    __slots__ = ("entries_max", "silent_after")

    def __init__(self, *, entries_max: int, silent_after: timedelta) -> None:
        self.entries_max = entries_max
        self.silent_after = silent_after


# Terminal classes as data. UNCERTAIN: capacities and silence limits are this project's choices, not
# from a CUPS or PBOC document; validators sync nightly, so 26 h covers one missed window.
TERMINAL_CLASSES: dict[str, TerminalClass] = {
    "bus": TerminalClass(entries_max=2_000_000, silent_after=timedelta(hours=26)),
    "metro": TerminalClass(entries_max=2_000_000, silent_after=timedelta(hours=26)),
    "taxi": TerminalClass(entries_max=1_000_000, silent_after=timedelta(hours=26)),
    "pos": TerminalClass(entries_max=1_000_000, silent_after=timedelta(hours=26)),
    "hospital": TerminalClass(entries_max=1_000_000, silent_after=timedelta(hours=12)),
    "campus": TerminalClass(entries_max=1_000_000, silent_after=timedelta(hours=26)),
    "gate": TerminalClass(entries_max=1_000_000, silent_after=timedelta(hours=26)),
}
TERMINAL_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,32}")
STALE_LIST_MAX = 10_000  # terminals in one stale() answer
VERSIONS_LIST_MAX = 1_000
SYSTEM_ACTOR = "system"
PUBLISH_LOCK_SPACE = 0x4343424C  # pg_advisory_xact_lock(space, class index) key space, "CCBL"
FULL_LIST_CACHE_MAX = 8  # built lists kept in memory (11 MB per million entries), least recently used out

CHANGED_PANS_MAX = 10_000  # PANs in one incremental publish (publish_changes); more: run publish()
PAN_QUERY_CHUNK = 500  # PANs per IN (...) list

_full_lists: OrderedDict[tuple[str, str, int, str], ExceptionFile] = OrderedDict()
# The newest list of each class, kept out of the LRU: the incremental publish derives list N+1
# from it (ExceptionFile.apply_delta), so a download of old versions never evicts it.
_latest_lists: dict[tuple[str, str], ExceptionFile] = {}
_cache_lock = threading.Lock()


# --- validation ---------------------------------------------------------------------------------


def check_terminal_class(terminal_class: object) -> TerminalClass:
    """The class's policy, or InvalidInput naming the known classes."""
    if not isinstance(terminal_class, str) or terminal_class not in TERMINAL_CLASSES:
        raise InvalidInput(
            "blacklist.unknown_terminal_class",
            f"terminal class {terminal_class!r} is unknown; known: {', '.join(TERMINAL_CLASSES)}",
            fields={"terminal_class": "unknown"},
        )
    return TERMINAL_CLASSES[terminal_class]


def _check_actor(actor: object) -> str:
    if not isinstance(actor, str) or not 1 <= len(actor) <= ACTOR_CHARS_MAX:
        raise InvalidInput(
            "blacklist.invalid_actor",
            f"actor must be 1 to {ACTOR_CHARS_MAX} characters",
            fields={"actor": "length"},
        )
    return actor


def _check_card(pan: object, psn: object) -> tuple[str, str | None]:
    """(PAN, PSN) as the exception file holds them; PSN None = every PSN of the PAN."""
    try:
        ExceptionFile.build([(pan, psn)], version=0)  # type: ignore[list-item]
    except ExceptionFileError as exc:
        raise InvalidInput(
            "blacklist.invalid_card", str(exc).removeprefix("entry 1: "), fields={"pan": "invalid"}
        ) from None
    return str(pan), None if psn is None else str(psn).zfill(2)


def _check_time(at: object, what: str) -> datetime:
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInput(
            "blacklist.invalid_time", f"{what} must be an aware datetime", fields={what: "naive"}
        )
    return at


def _check_version(version: object, what: str = "version") -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise InvalidInput(
            "blacklist.invalid_version",
            f"{what} must be an integer ≥ 0, got {version!r}",
            fields={what: "invalid"},
        )
    return version


# --- flags --------------------------------------------------------------------------------------


def flag(
    conn: Connection,
    *,
    pan: str,
    psn: str | None,
    reason: str,
    detail: str,
    actor: str,
    at: datetime,
    terminal_class: str | None = None,
    amount_fen: int | None = None,
) -> int:
    """Raise a flag against a card (every PSN of the PAN when ``psn`` is None); it is on the next
    published list of ``terminal_class`` (every class when None). Returns the flag id.

    ``reason``: fraud, counterfeit or negative_balance (then ``amount_fen`` < 0 is the balance found,
    e.g. by clearing when offline spending exceeds the issuer's shadow balance).
    """
    pan, psn = _check_card(pan, psn)
    if reason not in FLAG_REASONS:
        raise InvalidInput(
            "blacklist.invalid_reason",
            f"flag reason {reason!r} is unknown; known: {', '.join(FLAG_REASONS)}",
            fields={"reason": "unknown"},
        )
    if terminal_class is not None:
        check_terminal_class(terminal_class)
    if reason == "negative_balance":
        if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or amount_fen >= 0:
            raise InvalidInput(
                "blacklist.invalid_amount",
                f"a negative_balance flag needs amount_fen < 0, got {amount_fen!r}",
                fields={"amount_fen": "not negative"},
            )
    elif amount_fen is not None:
        raise InvalidInput(
            "blacklist.invalid_amount",
            f"amount_fen is only for negative_balance, not {reason}",
            fields={"amount_fen": "unexpected"},
        )
    if not isinstance(detail, str) or len(detail) > DETAIL_CHARS_MAX:
        raise InvalidInput(
            "blacklist.invalid_detail",
            f"detail must be at most {DETAIL_CHARS_MAX} characters",
            fields={"detail": "length"},
        )
    row = conn.execute(
        blacklist_flags.insert().returning(blacklist_flags.c.id),
        {
            "pan": pan,
            "psn": psn,
            "reason": reason,
            "terminal_class": terminal_class,
            "amount_fen": amount_fen,
            "detail": detail,
            "flagged_by": _check_actor(actor),
            "flagged_at": _check_time(at, "at"),
        },
    ).one()
    # The outbox of the incremental publish (blacklist_outbox): no PAN in the event, sectors read it.
    events.emit(
        conn, "blacklist.flagged", at=at,
        payload={"flag_id": int(row.id), "reason": reason, "terminal_class": terminal_class},
    )  # fmt: skip
    return int(row.id)


def clear_flag(conn: Connection, flag_id: int, *, actor: str, at: datetime) -> None:
    """Clear a flag (kept for the audit trail); the card leaves the next list unless another source
    still lists it. Clearing a cleared flag is a Conflict."""
    _check_actor(actor)
    _check_time(at, "at")
    row = conn.execute(sa.select(blacklist_flags.c.cleared_at).where(blacklist_flags.c.id == flag_id)).first()
    if row is None:
        raise NotFound("blacklist.flag_not_found", f"no blacklist flag {flag_id}")
    if row.cleared_at is not None:
        raise Conflict(
            "blacklist.flag_cleared", f"flag {flag_id} was cleared at {row.cleared_at.isoformat()}"
        )
    conn.execute(
        blacklist_flags.update()
        .where(blacklist_flags.c.id == flag_id)
        .values(cleared_by=actor, cleared_at=at)
    )
    events.emit(conn, "blacklist.flag_cleared", at=at, payload={"flag_id": int(flag_id)})


def record_ec_balance(
    conn: Connection, *, pan: str, psn: str, balance_fen: int, actor: str, at: datetime
) -> int | None:
    """The clearing's report of a card's electronic-cash balance as the platform computes it.

    Negative (offline spending beyond what was loaded: a cloned card or a replayed balance) → the
    card gets one active ``negative_balance`` flag (its amount updated on later reports); zero or
    positive → that flag is cleared. Returns the active flag's id, or None. Idempotent.

    UNCERTAIN: the issuer's shadow (issuer_cards.ec_balance_fen) and the ledger's EC accounts may not
    go negative, so the negative figure can only come from clearing the offline transactions
    themselves (the transit issue); this is the hook it calls.
    """
    pan, psn_key = _check_card(pan, psn)
    if isinstance(balance_fen, bool) or not isinstance(balance_fen, int):
        raise InvalidInput(
            "blacklist.invalid_amount", f"balance_fen must be an integer, got {balance_fen!r}",
            fields={"balance_fen": "type"},
        )  # fmt: skip
    f = blacklist_flags.c
    active = conn.execute(
        sa.select(f.id).where(
            f.pan == pan, f.psn == psn_key if psn_key is not None else f.psn.is_(None),
            f.reason == "negative_balance", f.cleared_at.is_(None),
        )
    ).first()  # fmt: skip
    if balance_fen >= 0:
        if active is not None:
            clear_flag(conn, int(active.id), actor=actor, at=at)
        return None
    if active is not None:
        conn.execute(blacklist_flags.update().where(f.id == active.id).values(amount_fen=balance_fen))
        return int(active.id)
    return flag(
        conn, pan=pan, psn=psn_key, reason="negative_balance", detail="EC balance below zero in clearing",
        actor=actor, at=at, amount_fen=balance_fen,
    )  # fmt: skip


def flags(conn: Connection, *, pan: str | None = None, active_only: bool = True) -> list[dict[str, Any]]:
    """Flags, newest first (PAN masked in the answer)."""
    query = sa.select(blacklist_flags).order_by(blacklist_flags.c.id.desc()).limit(VERSIONS_LIST_MAX)
    if pan is not None:
        query = query.where(blacklist_flags.c.pan == pan)
    if active_only:
        query = query.where(blacklist_flags.c.cleared_at.is_(None))
    return [{**row._asdict(), "pan": masked_pan(row.pan)} for row in conn.execute(query)]


# --- the list's sources -------------------------------------------------------------------------

Key = tuple[str, str | None]


def wanted_entries(conn: Connection, terminal_class: str) -> dict[Key, str]:
    """Every card the class's list must hold now: (PAN, PSN or None) → reason. First source wins."""
    check_terminal_class(terminal_class)
    wanted: dict[Key, str] = {}
    cards = conn.execute(
        sa.select(platform_cards.c.pan, platform_cards.c.psn, platform_cards.c.state).where(
            platform_cards.c.state.in_(LISTED_CARD_STATES), platform_cards.c.pan.is_not(None)
        )
    )
    for row in cards:
        wanted.setdefault((row.pan, None if row.psn is None else f"{row.psn:02d}"), f"card_{row.state}")
    blocked = conn.execute(
        sa.select(issuer_cards.c.pan, issuer_cards.c.psn, issuer_cards.c.status).where(
            issuer_cards.c.status.in_(LISTED_ISSUER_STATUSES)
        )
    )
    for row in blocked:
        wanted.setdefault((row.pan, f"{row.psn:02d}"), f"issuer_{row.status}")
    flagged = conn.execute(
        sa.select(blacklist_flags.c.pan, blacklist_flags.c.psn, blacklist_flags.c.reason)
        .where(blacklist_flags.c.cleared_at.is_(None))
        .where(
            sa.or_(
                blacklist_flags.c.terminal_class.is_(None), blacklist_flags.c.terminal_class == terminal_class
            )
        )
        .order_by(blacklist_flags.c.id)
    )
    for row in flagged:
        wanted.setdefault((row.pan, row.psn), row.reason)
    return wanted


# --- publishing ---------------------------------------------------------------------------------


def latest_version(conn: Connection, terminal_class: str) -> int:
    """The newest published version of the class's list; 0 = never published (the empty list)."""
    check_terminal_class(terminal_class)
    value = conn.execute(
        sa.select(sa.func.max(blacklist_versions.c.version)).where(
            blacklist_versions.c.terminal_class == terminal_class
        )
    ).scalar()
    return int(value or 0)


def _check_pan(pan: object) -> str:
    return _check_card(pan, None)[0]


def _chunks(pans: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(pans), PAN_QUERY_CHUNK):
        yield pans[start : start + PAN_QUERY_CHUNK]


def _wanted_by_class(conn: Connection, pans: list[str]) -> dict[str, dict[Key, str]]:
    """:func:`wanted_entries` of every class restricted to ``pans``: three indexed look-ups for all
    classes at once (cards and issuer rows list a card everywhere; a flag for every class or one).
    Same sources in the same order as wanted_entries, so the same reasons."""
    found: list[tuple[int, Key, str, str | None]] = []  # (rank, key, reason, class): first source wins
    c, i, f = platform_cards.c, issuer_cards.c, blacklist_flags.c
    for chunk in _chunks(pans):
        rows = conn.execute(
            sa.select(c.pan, c.psn, c.state).where(c.pan.in_(chunk), c.state.in_(LISTED_CARD_STATES))
        )
        found.extend(
            (0, (r.pan, None if r.psn is None else f"{r.psn:02d}"), f"card_{r.state}", None) for r in rows
        )
        rows = conn.execute(
            sa.select(i.pan, i.psn, i.status).where(i.pan.in_(chunk), i.status.in_(LISTED_ISSUER_STATUSES))
        )
        found.extend((1, (r.pan, f"{r.psn:02d}"), f"issuer_{r.status}", None) for r in rows)
        rows = conn.execute(
            sa.select(f.id, f.pan, f.psn, f.reason, f.terminal_class).where(
                f.pan.in_(chunk), f.cleared_at.is_(None)
            )
        )
        found.extend((2 + int(r.id), (r.pan, r.psn), r.reason, r.terminal_class) for r in rows)
    found.sort(key=lambda item: item[0])
    wanted: dict[str, dict[Key, str]] = {name: {} for name in TERMINAL_CLASSES}
    for _, key, reason, only in found:
        for name in TERMINAL_CLASSES if only is None else (only,):
            if name in wanted:
                wanted[name].setdefault(key, reason)
    return wanted


def _listed_by_class(conn: Connection, pans: list[str]) -> dict[str, dict[Key, int]]:
    """The current entries of ``pans`` in every class (one indexed look-up per chunk of PANs)."""
    e = blacklist_entries.c
    listed: dict[str, dict[Key, int]] = {name: {} for name in TERMINAL_CLASSES}
    for chunk in _chunks(pans):
        rows = conn.execute(
            sa.select(e.id, e.terminal_class, e.pan, e.psn).where(
                e.pan.in_(chunk), e.removed_version.is_(None)
            )
        )
        for row in rows:
            listed.setdefault(row.terminal_class, {})[(row.pan, row.psn)] = int(row.id)
    return listed


def _latest_versions(conn: Connection) -> dict[str, int]:
    """Every class's newest version (0 = never published), one query."""
    v = blacklist_versions.c
    found = dict(
        conn.execute(sa.select(v.terminal_class, sa.func.max(v.version)).group_by(v.terminal_class)).all()
    )
    return {name: int(found.get(name) or 0) for name in TERMINAL_CLASSES}


def _listed(conn: Connection, terminal_class: str) -> dict[Key, int]:
    rows = conn.execute(
        sa.select(blacklist_entries.c.id, blacklist_entries.c.pan, blacklist_entries.c.psn).where(
            blacklist_entries.c.terminal_class == terminal_class,
            blacklist_entries.c.removed_version.is_(None),
        )
    )
    return {(row.pan, row.psn): int(row.id) for row in rows}


def _lock_class(conn: Connection, terminal_class: str) -> None:
    """One publisher per class at a time (released at commit); the next one then sees the new
    version under READ COMMITTED and finds nothing to publish. SQLite's BEGIN IMMEDIATE serialises
    writers already."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(:space, :item)"),
            {"space": PUBLISH_LOCK_SPACE, "item": list(TERMINAL_CLASSES).index(terminal_class)},
        )


def publish(conn: Connection, *, terminal_class: str, actor: str = SYSTEM_ACTOR, at: datetime) -> int:
    """Publish the class's list as it stands now (every source read: the full reconciliation);
    returns its version.

    When nothing changed since the latest version, that version is returned and nothing is written
    (a terminal holding it is up to date). Emits ``blacklist.published`` with the counts.
    Publishers of one class run one at a time (the second finds nothing new); Conflict
    ``blacklist.concurrent_publish`` remains as the guard of the unique (class, version).
    The incremental path, for a known set of changed cards, is :func:`publish_changes`.
    """
    policy = check_terminal_class(terminal_class)
    _check_actor(actor)
    _check_time(at, "at")
    _lock_class(conn, terminal_class)
    latest = latest_version(conn, terminal_class)
    wanted = wanted_entries(conn, terminal_class)
    listed = _listed(conn, terminal_class)
    added = [key for key in wanted if key not in listed]
    removed = [key for key in listed if key not in wanted]
    if latest and not added and not removed:
        return latest
    if len(wanted) > policy.entries_max:
        raise Conflict(
            "blacklist.too_large",
            f"the {terminal_class} list would hold {len(wanted):,} entries; its terminals hold "
            f"{policy.entries_max:,} at most",
        )
    previous = _cached_latest(conn, terminal_class, latest) if latest else None
    if previous is not None and len(added) + len(removed) <= len(wanted) // 4:
        full = previous.apply_delta(added, removed, latest + 1)  # a copy, no sort of a million keys
    else:
        full = ExceptionFile.build(wanted, version=latest + 1)
    _write_version(conn, terminal_class, full, added=added, removed=removed, reasons=wanted,
                   listed=listed, actor=actor, at=at, incremental=False)  # fmt: skip
    return full.version


def publish_changes(
    conn: Connection, *, pans: Iterable[str], actor: str = SYSTEM_ACTOR, at: datetime
) -> dict[str, int]:
    """The incremental publish: a new version of every class whose list changes for ``pans`` (the
    cards a loss report, an unblock, a flag... touched), computed from those PANs' sources only and
    derived from the class's previous list in memory; class → its latest version.

    Cost O(changes) in the database: indexed look-ups of the PANs' card rows, issuer rows, flags
    and listed entries, and one version row; list N+1 is list N (cached, built once from the stored
    intervals after a restart) plus the change, whose SHA-256 the version row carries. A class never
    published gets its first version from :func:`publish` (every source). Changes the platform was
    not told about (a bank blocking a card in its own host) reach the list at the next
    :func:`publish`/:func:`publish_all` (the scheduled reconciliation).
    """
    _check_actor(actor)
    _check_time(at, "at")
    wanted_pans = sorted({_check_pan(pan) for pan in pans})
    if len(wanted_pans) > CHANGED_PANS_MAX:
        raise InvalidInput(
            "blacklist.too_many_changes",
            f"{len(wanted_pans):,} changed PANs in one incremental publish, at most {CHANGED_PANS_MAX:,}: "
            "run a full publish",
            fields={"pans": "count"},
        )
    for terminal_class in TERMINAL_CLASSES:  # always in this order: no deadlock between publishers
        _lock_class(conn, terminal_class)
    latest_all = _latest_versions(conn)
    wanted_all = _wanted_by_class(conn, wanted_pans) if wanted_pans else {}
    listed_all = _listed_by_class(conn, wanted_pans) if wanted_pans else {}
    result: dict[str, int] = {}
    for terminal_class, policy in TERMINAL_CLASSES.items():
        latest = latest_all[terminal_class]
        if latest == 0:
            result[terminal_class] = publish(conn, terminal_class=terminal_class, actor=actor, at=at)
            continue
        wanted = wanted_all.get(terminal_class, {})
        listed = listed_all.get(terminal_class, {})
        added = [key for key in wanted if key not in listed]
        removed = [key for key in listed if key not in wanted]
        if not added and not removed:
            result[terminal_class] = latest
            continue
        previous = full_list(conn, terminal_class=terminal_class, version=latest)
        count = len(previous) + len(added) - len(removed)
        if count > policy.entries_max:
            raise Conflict(
                "blacklist.too_large",
                f"the {terminal_class} list would hold {count:,} entries; its terminals hold "
                f"{policy.entries_max:,} at most",
            )
        full = previous.apply_delta(added, removed, latest + 1)
        _write_version(conn, terminal_class, full, added=added, removed=removed, reasons=wanted,
                       listed=listed, actor=actor, at=at, incremental=True)  # fmt: skip
        result[terminal_class] = full.version
    return result


def _write_version(
    conn: Connection,
    terminal_class: str,
    full: ExceptionFile,
    *,
    added: list[Key],
    removed: list[Key],
    reasons: dict[Key, str],
    listed: dict[Key, int],
    actor: str,
    at: datetime,
    incremental: bool,
) -> None:
    """Store version ``full.version``: its row, the added intervals, the closed ones, the event."""
    version = full.version
    try:
        conn.execute(
            blacklist_versions.insert(),
            {
                "terminal_class": terminal_class,
                "version": version,
                "entry_count": len(full),
                "added_count": len(added),
                "removed_count": len(removed),
                "body_sha256": full.body_sha256.hex().upper(),
                "published_by": actor,
                "published_at": at,
            },
        )
    except IntegrityError:
        raise Conflict(
            "blacklist.concurrent_publish", f"{terminal_class} list version {version} was published meanwhile"
        ) from None
    if added:
        conn.execute(
            blacklist_entries.insert(),
            [
                {
                    "terminal_class": terminal_class,
                    "pan": pan,
                    "psn": psn,
                    "reason": reasons[(pan, psn)],
                    "added_version": version,
                    "removed_version": None,
                }
                for pan, psn in added
            ],
        )
    if removed:
        conn.execute(
            blacklist_entries.update()
            .where(blacklist_entries.c.id == sa.bindparam("entry_id"))
            .values(removed_version=version),
            [{"entry_id": listed[key]} for key in removed],
        )
    _remember(conn, terminal_class, full, latest=True)
    events.emit(
        conn,
        "blacklist.published",
        payload={
            "terminal_class": terminal_class,
            "version": version,
            "entries": len(full),
            "added": len(added),
            "removed": len(removed),
            "body_sha256": full.body_sha256.hex().upper(),
            "incremental": incremental,
        },
    )


def publish_all(conn: Connection, *, actor: str = SYSTEM_ACTOR, at: datetime) -> dict[str, int]:
    """:func:`publish` for every terminal class (the periodic job): class → its version."""
    return {name: publish(conn, terminal_class=name, actor=actor, at=at) for name in TERMINAL_CLASSES}


def _version_row(conn: Connection, terminal_class: str, version: int) -> Any:
    row = conn.execute(
        sa.select(blacklist_versions).where(
            blacklist_versions.c.terminal_class == terminal_class, blacklist_versions.c.version == version
        )
    ).first()
    if row is None:
        raise NotFound("blacklist.version_not_found", f"the {terminal_class} list has no version {version}")
    return row


def _members(conn: Connection, terminal_class: str, version: int) -> list[Key]:
    e = blacklist_entries.c
    rows = conn.execute(
        sa.select(e.pan, e.psn).where(
            e.terminal_class == terminal_class,
            e.added_version <= version,
            sa.or_(e.removed_version.is_(None), e.removed_version > version),
        )
    )
    return [(row.pan, row.psn) for row in rows]


def full_list(conn: Connection, *, terminal_class: str, version: int | None = None) -> ExceptionFile:
    """The class's list at ``version`` (default: the latest) as the kernel's exception file.
    Version 0 is the empty list every terminal starts from."""
    check_terminal_class(terminal_class)
    latest = latest_version(conn, terminal_class)
    version = latest if version is None else _check_version(version)
    if version == 0:
        return ExceptionFile.build([], version=0)
    row = _version_row(conn, terminal_class, version)
    cached = _cached(conn, terminal_class, version, row.body_sha256)
    if cached is not None:
        return cached
    result = ExceptionFile.build(_members(conn, terminal_class, version), version=version)
    # The stored intervals must give back the list that was published (an invariant, not input).
    assert result.body_sha256.hex().upper() == row.body_sha256, f"{terminal_class} v{version} checksum"
    _remember(conn, terminal_class, result, latest=version == latest)
    return result


def version_info(conn: Connection, *, terminal_class: str, version: int | None = None) -> dict[str, Any]:
    """The stored facts of a version (default the latest): ``version``, ``entry_count``,
    ``body_sha256`` (hex) — what a download's headers carry, without building the list."""
    check_terminal_class(terminal_class)
    latest = latest_version(conn, terminal_class)
    version = latest if version is None else _check_version(version)
    if version == 0:
        empty = ExceptionFile.build([], version=0)
        return {"version": 0, "entry_count": 0, "body_sha256": empty.body_sha256.hex().upper()}
    row = _version_row(conn, terminal_class, version)
    return {"version": version, "entry_count": int(row.entry_count), "body_sha256": row.body_sha256}


def _cached(conn: Connection, terminal_class: str, version: int, sha256_hex: str) -> ExceptionFile | None:
    """A built list from memory. A published version never changes, and the match includes its
    checksum: a cached list is the list."""
    key = _cache_key(conn, terminal_class, version, sha256_hex)
    with _cache_lock:
        pinned = _latest_lists.get(key[:2])
        if (
            pinned is not None
            and pinned.version == version
            and pinned.body_sha256.hex().upper() == sha256_hex
        ):
            return pinned
        cached = _full_lists.get(key)
        if cached is not None:
            _full_lists.move_to_end(key)
        return cached


def _cached_latest(conn: Connection, terminal_class: str, latest: int) -> ExceptionFile | None:
    """The class's list at ``latest`` if it is in memory (never built here)."""
    return _cached(conn, terminal_class, latest, _version_row(conn, terminal_class, latest).body_sha256)


def _remember(conn: Connection, terminal_class: str, listing: ExceptionFile, *, latest: bool = False) -> None:
    """Keep a built list for downloads (``latest``: also as the class's newest, for the next
    incremental publish). Safe even if the publishing transaction rolls back: a cached list only
    ever answers for a version with exactly its checksum."""
    key = _cache_key(conn, terminal_class, listing.version, listing.body_sha256.hex().upper())
    with _cache_lock:
        if latest:
            pinned = _latest_lists.get(key[:2])
            if pinned is None or pinned.version <= listing.version:
                _latest_lists[key[:2]] = listing
        _full_lists[key] = listing
        _full_lists.move_to_end(key)
        while len(_full_lists) > FULL_LIST_CACHE_MAX:
            _full_lists.popitem(last=False)


def clear_cache() -> None:
    """Forget the built lists (tests use it to rebuild lists from the stored intervals)."""
    with _cache_lock:
        _full_lists.clear()
        _latest_lists.clear()


def _cache_key(
    conn: Connection, terminal_class: str, version: int, sha256_hex: str
) -> tuple[str, str, int, str]:
    return (conn.engine.url.render_as_string(hide_password=True), terminal_class, version, sha256_hex)


def delta(
    conn: Connection, *, terminal_class: str, from_version: int, to_version: int | None = None
) -> bytes:
    """The delta file (blacklist_format "CCXD") from ``from_version`` (0 = the empty list) to
    ``to_version`` (default: the latest). Conflict ``blacklist.up_to_date`` when they are equal."""
    check_terminal_class(terminal_class)
    _check_version(from_version, "from_version")
    latest = latest_version(conn, terminal_class)
    to_version = latest if to_version is None else _check_version(to_version, "to_version")
    if to_version > latest or from_version > to_version:
        raise InvalidInput(
            "blacklist.invalid_version",
            f"no delta from {from_version} to {to_version}: the {terminal_class} list is at version {latest}",
            fields={"from_version": "out of range"},
        )
    if from_version == to_version:
        raise Conflict(
            "blacklist.up_to_date",
            f"version {from_version} is the {terminal_class} list's version {to_version}",
        )
    e = blacklist_entries.c
    in_range = sa.and_(e.terminal_class == terminal_class)
    added = conn.execute(
        sa.select(e.pan, e.psn).where(
            in_range,
            e.added_version > from_version,
            e.added_version <= to_version,
            sa.or_(e.removed_version.is_(None), e.removed_version > to_version),
        )
    )
    removed = conn.execute(
        sa.select(e.pan, e.psn).where(
            in_range,
            e.added_version <= from_version,
            e.removed_version > from_version,
            e.removed_version <= to_version,
        )
    )
    added_keys = {(row.pan, row.psn) for row in added}
    removed_keys = {(row.pan, row.psn) for row in removed}
    # A card listed at both ends but removed and listed again in between has one row removed and one
    # added inside (N, M]: it is no change for the terminal.
    both = added_keys & removed_keys
    added_keys -= both
    removed_keys -= both
    # The header needs list M's entry count and checksum: stored with its version row, so a delta
    # costs its two indexed range queries, never a build of the full list.
    row = _version_row(conn, terminal_class, to_version)
    return encode_delta_to(
        added=added_keys, removed=removed_keys, from_version=from_version, to_version=to_version,
        result_count=int(row.entry_count), result_sha256=bytes.fromhex(row.body_sha256),
    )  # fmt: skip


def versions(conn: Connection, *, terminal_class: str, limit: int = 20) -> list[dict[str, Any]]:
    """The class's published versions, newest first."""
    check_terminal_class(terminal_class)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= VERSIONS_LIST_MAX:
        raise InvalidInput(
            "blacklist.invalid_limit", f"limit must be 1 to {VERSIONS_LIST_MAX}", fields={"limit": "range"}
        )
    rows = conn.execute(
        sa.select(blacklist_versions)
        .where(blacklist_versions.c.terminal_class == terminal_class)
        .order_by(blacklist_versions.c.version.desc())
        .limit(limit)
    )
    return [{k: v for k, v in row._asdict().items() if k != "id"} for row in rows]


# --- terminals ----------------------------------------------------------------------------------


def report_version(
    conn: Connection, terminal_id: str, terminal_class: str, version: int, at: datetime
) -> dict[str, Any]:
    """Record that ``terminal_id`` (of ``terminal_class``) holds list ``version`` at ``at``.

    A version never published is refused (InvalidInput); a terminal changes class only through a new
    id (Conflict). Returns the terminal's row plus the class's ``latest`` and ``behind``.
    """
    if not isinstance(terminal_id, str) or not TERMINAL_ID_PATTERN.fullmatch(terminal_id):
        raise InvalidInput(
            "blacklist.invalid_terminal_id",
            "terminal id must be 1 to 32 characters of A-Z a-z 0-9 . _ -",
            fields={"terminal_id": "pattern"},
        )
    check_terminal_class(terminal_class)
    _check_version(version)
    _check_time(at, "at")
    latest = latest_version(conn, terminal_class)
    if version > latest:
        raise InvalidInput(
            "blacklist.invalid_version",
            f"the {terminal_class} list has no version {version} (latest {latest})",
            fields={"version": "not published"},
        )
    known = conn.execute(sa.select(terminals).where(terminals.c.terminal_id == terminal_id)).first()
    if known is None:
        conn.execute(
            terminals.insert(),
            {"terminal_id": terminal_id, "terminal_class": terminal_class, "version": version,
             "reported_at": at, "first_seen_at": at},
        )  # fmt: skip
    elif known.terminal_class != terminal_class:
        raise Conflict(
            "blacklist.terminal_class_mismatch",
            f"terminal {terminal_id} is registered as {known.terminal_class}, not {terminal_class}",
        )
    elif at >= known.reported_at:  # a late, older report must not hide a newer one
        conn.execute(
            terminals.update()
            .where(terminals.c.terminal_id == terminal_id)
            .values(version=version, reported_at=at)
        )
    row = conn.execute(sa.select(terminals).where(terminals.c.terminal_id == terminal_id)).one()
    return {**row._asdict(), "latest": latest, "behind": latest - row.version}


def stale(conn: Connection, *, now: datetime) -> list[dict[str, Any]]:
    """Terminals behind their class's latest version or silent longer than the class allows, worst
    first: each with ``reasons`` (``behind``, ``silent``), ``versions_behind`` and ``silent_s``."""
    _check_time(now, "now")
    latest = {
        row.terminal_class: int(row.latest)
        for row in conn.execute(
            sa.select(
                blacklist_versions.c.terminal_class, sa.func.max(blacklist_versions.c.version).label("latest")
            ).group_by(blacklist_versions.c.terminal_class)
        )
    }
    found: list[dict[str, Any]] = []
    for row in conn.execute(sa.select(terminals).order_by(terminals.c.terminal_id)):
        policy = TERMINAL_CLASSES.get(row.terminal_class)
        behind = latest.get(row.terminal_class, 0) - row.version
        silent_s = (now - row.reported_at).total_seconds()
        reasons = []
        if behind > 0:
            reasons.append("behind")
        if policy is not None and silent_s > policy.silent_after.total_seconds():
            reasons.append("silent")
        if reasons:
            found.append(
                {**row._asdict(), "reasons": reasons, "versions_behind": behind, "silent_s": int(silent_s)}
            )
            if len(found) >= STALE_LIST_MAX:
                break
    found.sort(key=lambda t: (-t["versions_behind"], -t["silent_s"]))
    return found


def entries(conn: Connection, *, terminal_class: str, pan: str) -> list[dict[str, Any]]:
    """The list history of one PAN in a class (when it was added/removed, why): for the console."""
    check_terminal_class(terminal_class)
    e = blacklist_entries.c
    rows = conn.execute(
        sa.select(e.psn, e.reason, e.added_version, e.removed_version)
        .where(e.terminal_class == terminal_class, e.pan == pan)
        .order_by(e.id)
    )
    return [{**row._asdict(), "pan": masked_pan(pan)} for row in rows]


def classes() -> Iterable[str]:
    """The known terminal classes."""
    return tuple(TERMINAL_CLASSES)
