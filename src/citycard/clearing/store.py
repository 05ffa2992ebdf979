"""The persistent shell around :func:`~citycard.clearing.batch.clear_batch` (issue 7 item 3).

- :func:`intake` — one uploaded batch in ONE write transaction: the batch id is the idempotency key
  (a replay with the same records returns the stored summary and changes nothing; other records
  under the same id are refused), state is read from the database, the pure function runs (in
  ``workers`` processes for big batches), then postings (``tc:PAN:PSN:ATC``, ledger ``post_many``),
  taps, card chains and exceptions are written. A crash (even ``kill -9``) before the commit leaves
  nothing; a rerun then does the whole batch exactly once.
- :func:`handle_exception` — the operator's accept / reject / refund of a queued exception, audited.
- :func:`settle` — per operator and settlement day: unsettled taps → gross, fee (rate as data in
  ``fees.toml``), net → one settlement posting and a row; :func:`settlement_csv`/``_json`` files.
- :func:`reconcile` — expected vs collected per operator, ledger invariants, EC chip vs ledger.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from citycard.clearing.batch import (
    CardState,
    Cleared,
    ClearingException,
    Known,
    clear_batch,
    ec_account,
    operator_account,
    postings_for,
)
from citycard.clearing.record import CHINA_TIME, MalformedRecord, parse_record, record_key
from citycard.clearing.tables import Batch, Card, ExceptionItem, Settlement, Tap
from citycard.clearing.verify import Verifier, VerifierSpec
from citycard.db import utc_now, write_transaction
from citycard.ledger import (
    POSTINGS_PER_BATCH_MAX,
    AccountKind,
    Layer,
    Line,
    PostingRequest,
    balances,
    check_invariants,
    open_account,
    post_many,
)
from citycard.ledger.tables import ledger_accounts

RECORDS_PER_BATCH_MAX = 2_000_000  # one upload; ~ four days of a mid-size city's buses
KEYS_PER_QUERY_MAX = 500
HANDLEABLE = {  # reason → the handlings an operator may choose (forged/malformed/duplicate: reject only)
    "out_of_order": {"accept", "reject", "refund"},
    "balance_chain": {"accept", "reject", "refund"},
    "late": {"accept", "reject", "refund"},
    "forged": {"reject"},
    "malformed": {"reject"},
    "duplicate": {"reject"},
    "unknown_card": {"reject"},
}
FEES_ACCOUNT = "clearing:fees"


class ClearingError(Exception):
    """A request clearing refuses; nothing was changed."""


@dataclass(frozen=True)
class IntakeResult:
    batch_id: str
    records: int
    accepted: int
    exceptions: int
    replayed: bool


def payable_account(operator: str) -> str:
    return f"operator:{operator}:payable"


def digest_of(records: Sequence[Mapping[str, Any]]) -> str:
    text = json.dumps(list(records), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def register_card(conn: Connection, *, pan: str, psn: str, issuer: str) -> None:
    """Make a card known to clearing (idempotent): its issuer names its EC ledger account."""
    card = f"{pan}:{psn}"
    if conn.execute(sa.select(Card.card).where(Card.card == card)).first() is None:
        conn.execute(sa.insert(Card).values(card=card, issuer=issuer))


def report_loss(conn: Connection, *, pan: str, psn: str, lost_at: dt.datetime | None) -> None:
    """Record the card's loss-report minute (platform cards.lost_at): later taps are refunded.
    ``None`` lifts it (the report was withdrawn: the card was found)."""
    minute = None
    if lost_at is not None:
        if lost_at.tzinfo is None:
            raise ClearingError("lost_at must be an aware UTC time")
        minute = lost_at.astimezone(dt.UTC).replace(second=0, microsecond=0)
    done = conn.execute(sa.update(Card).where(Card.card == f"{pan}:{psn}").values(lost_at=minute))
    if done.rowcount != 1:
        raise ClearingError(f"card {pan}:{psn} is not known to clearing")


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def load_known(conn: Connection, uploads: Sequence[Mapping[str, Any]], now: dt.datetime) -> Known:
    """The state :func:`clear_batch` needs for these uploads, read in chunks of IN-lists."""
    keys = [record_key(upload) for upload in uploads]
    cards = sorted({key.rsplit(":", 1)[0] for key in keys})
    seen: set[str] = set()
    for chunk in _chunks(sorted(set(keys)), KEYS_PER_QUERY_MAX):
        seen.update(conn.execute(sa.select(Tap.key).where(Tap.key.in_(chunk))).scalars())
    states: dict[str, CardState] = {}
    for chunk in _chunks(cards, KEYS_PER_QUERY_MAX):
        for row in conn.execute(sa.select(Card).where(Card.card.in_(chunk))):
            states[row.card] = CardState(row.issuer, row.last_atc, row.last_balance_fen, row.lost_at)
    # A card whose EC ledger account was never opened would fail the whole batch in post_many
    # (UnknownAccount); leaving it out of Known makes its taps "unknown_card" exceptions instead.
    codes = {ec_account(state.issuer, *card.split(":")): card for card, state in states.items()}
    opened: set[str] = set()
    for chunk in _chunks(sorted(codes), KEYS_PER_QUERY_MAX):
        accounts = ledger_accounts.c
        opened.update(conn.execute(sa.select(accounts.code).where(accounts.code.in_(chunk))).scalars())
    return Known({card: states[card] for code, card in codes.items() if code in opened}, seen, now)


def _day(moment: dt.datetime) -> str:
    return moment.astimezone(CHINA_TIME).date().isoformat()


def _write_postings(conn: Connection, postings: Sequence[PostingRequest]) -> None:
    for operator in sorted(
        {line.account for p in postings for line in p.lines if line.account.startswith("operator:")}
    ):
        open_account(conn, operator, AccountKind.OPERATOR)
    for chunk in _chunks(postings, POSTINGS_PER_BATCH_MAX):
        post_many(conn, chunk)


def _tap_row(record: Any, batch_id: str, refunded: bool) -> dict[str, Any]:
    return {
        "key": record.key, "card": record.card, "atc": record.atc, "batch_id": batch_id,
        "operator": record.operator, "route": record.route, "vehicle": record.vehicle,
        "terminal_id": record.terminal_id, "tap_at": record.tap_at, "day": _day(record.tap_at),
        "amount_fen": record.amount_fen, "balance_after_fen": record.balance_after_fen, "refunded": refunded,
    }  # fmt: skip


def _write_result(
    conn: Connection,
    batch_id: str,
    cleared: Sequence[tuple[Cleared, bool]],
    exceptions: Sequence[ClearingException],
    known: Known,
) -> None:
    postings = [
        posting
        for tap, refunded in cleared
        for posting in postings_for(tap, known.cards[tap.card].issuer, refunded=refunded)
    ]
    _write_postings(conn, postings)
    rows = [_tap_row(tap, batch_id, refunded) for tap, refunded in cleared]
    if rows:
        conn.execute(sa.insert(Tap), rows)
    last: dict[str, tuple[int, int]] = {}
    for tap, _ in cleared:  # per card, the highest ATC accepted is the chain's new end
        if tap.card not in last or tap.atc > last[tap.card][0]:
            last[tap.card] = (tap.atc, tap.balance_after_fen)
    for card, (atc, balance) in sorted(last.items()):
        conn.execute(sa.update(Card).where(Card.card == card).values(last_atc=atc, last_balance_fen=balance))
    now = utc_now()
    items = [
        {
            "batch_id": batch_id,
            "position": item.position,
            "key": item.key[:32],
            "reason": item.reason,
            "detail": item.detail[:200],
            "status": "open",
            "created_at": now,
            "upload": json.dumps(item.upload, sort_keys=True, default=str),
        }
        for item in exceptions
    ]
    if items:
        conn.execute(sa.insert(ExceptionItem), items)


def intake(
    engine: Engine,
    batch_id: str,
    uploads: Sequence[Mapping[str, Any]],
    *,
    keys: Verifier | VerifierSpec,
    now: dt.datetime | None = None,
    workers: int = 1,
) -> IntakeResult:
    """Clear one uploaded batch exactly once (see the module note)."""
    if not isinstance(batch_id, str) or not 1 <= len(batch_id) <= 64 or not batch_id.isprintable():
        raise ClearingError(f"batch id {batch_id!r} must be 1…64 printable characters")
    if len(uploads) > RECORDS_PER_BATCH_MAX:
        raise ClearingError(f"{len(uploads)} records in one batch; limit {RECORDS_PER_BATCH_MAX}")
    now = now or utc_now()
    digest = digest_of(uploads)
    with write_transaction(engine) as conn:
        stored = conn.execute(sa.select(Batch).where(Batch.batch_id == batch_id)).first()
        if stored is not None:
            if stored.digest != digest:
                raise ClearingError(f"batch {batch_id!r} was uploaded before with other records")
            return IntakeResult(batch_id, stored.records, stored.accepted, stored.exceptions, True)
        known = load_known(conn, uploads, now)
        if workers > 1:
            from citycard.clearing.parallel import clear_parallel_parts

            if not isinstance(keys, VerifierSpec):
                raise ClearingError("--workers needs a VerifierSpec (each worker opens the HSM itself)")
            parts = clear_parallel_parts(uploads, spec=keys, known=known, workers=workers)
        else:
            verifier = keys.build() if isinstance(keys, VerifierSpec) else keys
            result = clear_batch(uploads, keys=verifier, known=known)
            parts = iter([([(Cleared.of(a.record), a.refunded) for a in result.accepted], result.exceptions)])
        accepted = exceptions = 0
        for cleared, rejected in parts:  # partitions are by card: each one's chains are complete
            _write_result(conn, batch_id, cleared, rejected, known)
            accepted, exceptions = accepted + len(cleared), exceptions + len(rejected)
        conn.execute(
            sa.insert(Batch).values(
                batch_id=batch_id, digest=digest, received_at=now, records=len(uploads),
                accepted=accepted, exceptions=exceptions,
            )
        )  # fmt: skip
    return IntakeResult(batch_id, len(uploads), accepted, exceptions, False)


def handle_exception(
    engine: Engine,
    exception_id: int,
    *,
    action: str,
    operator: str,
    note: str = "",
    now: dt.datetime | None = None,
) -> str:
    """The operator's decision on a queued exception, once: ``accept`` clears the tap (posting
    ``tc:…``), ``refund`` clears it and refunds it, ``reject`` posts nothing. Audited in the row."""
    if action not in ("accept", "reject", "refund"):
        raise ClearingError(f"action {action!r} must be accept, reject or refund")
    if not operator or len(operator) > 32 or len(note) > 200:
        raise ClearingError("operator must be 1…32 characters and the note at most 200")
    with write_transaction(engine) as conn:
        item = conn.execute(sa.select(ExceptionItem).where(ExceptionItem.id == exception_id)).first()
        if item is None:
            raise ClearingError(f"no exception {exception_id}")
        if item.status != "open":
            raise ClearingError(f"exception {exception_id} was already handled ({item.status})")
        if action not in HANDLEABLE.get(item.reason, {"reject"}):
            raise ClearingError(f"a {item.reason} exception can only be rejected")
        status = {"accept": "accepted", "reject": "rejected", "refund": "refunded"}[action]
        if action != "reject":
            try:
                record = parse_record(json.loads(item.upload))
            except MalformedRecord as exc:
                raise ClearingError(f"exception {exception_id}: {exc}") from None
            if conn.execute(sa.select(Tap.key).where(Tap.key == record.key)).first() is not None:
                raise ClearingError(f"tap {record.key} is already cleared")
            card = conn.execute(sa.select(Card).where(Card.card == record.card)).one()
            refunded = action == "refund"
            _write_postings(conn, postings_for(record, card.issuer, refunded=refunded))
            # The chain is not moved: an accepted exception is outside the card's ATC order.
            conn.execute(sa.insert(Tap).values(**_tap_row(record, item.batch_id, refunded)))
        conn.execute(
            sa.update(ExceptionItem)
            .where(ExceptionItem.id == exception_id)
            .values(status=status, handled_by=operator, handled_at=now or utc_now(), note=note)
        )
    return status


def fee_rates(text: str | None = None) -> tuple[int, dict[str, int]]:
    """(default rate, per-operator rates) in basis points, from ``fees.toml`` or ``text``."""
    if text is None:
        text = resources.files("citycard.clearing").joinpath("fees.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    default, per = data.get("default_rate_bp"), data.get("operators", {})
    for name, rate in [("default_rate_bp", default), *per.items()]:
        if not isinstance(rate, int) or not 0 <= rate <= 10_000:
            raise ClearingError(f"fee rate {name} = {rate!r} must be 0…10000 basis points")
    return default, dict(per)


def fee_fen(gross_fen: int, rate_bp: int) -> int:
    """The fee, rounded half up to the fen (UNCERTAIN: contracts may round otherwise).

    >>> fee_fen(10_000, 60), fee_fen(125, 60), fee_fen(0, 60)
    (60, 1, 0)
    """
    return (gross_fen * rate_bp + 5_000) // 10_000


@dataclass(frozen=True)
class SettlementLine:
    operator: str
    day: str
    taps: int
    gross_fen: int
    fee_rate_bp: int
    fee_fen: int
    net_fen: int


def settle(
    engine: Engine, day: str, *, rates: tuple[int, dict[str, int]] | None = None
) -> list[SettlementLine]:
    """Settle every operator's unsettled, unrefunded taps of ``day`` or before (Asia/Shanghai days).

    Once per operator and day: a second call finds the row and returns it again. The posting
    ``settle:OPERATOR:DAY`` moves the gross from the operator's cleared account to its payable
    account (net) and the fees account (fee), in the settled layer.
    """
    dt.date.fromisoformat(day)
    default, per = rates or fee_rates()
    lines: list[SettlementLine] = []
    with write_transaction(engine) as conn:
        open_account(conn, FEES_ACCOUNT, AccountKind.FEES)
        pending = conn.execute(
            sa.select(Tap.operator, sa.func.count(), sa.func.coalesce(sa.func.sum(Tap.amount_fen), 0))
            .where(Tap.settlement_key.is_(None), Tap.refunded.is_(False), Tap.day <= day)
            .group_by(Tap.operator)
            .order_by(Tap.operator)
        ).all()
        operators = {row[0] for row in pending} | set(
            conn.execute(sa.select(Settlement.operator).where(Settlement.day == day)).scalars()
        )
        for operator in sorted(operators):
            done = conn.execute(
                sa.select(Settlement).where(Settlement.operator == operator, Settlement.day == day)
            ).first()
            if done is not None:
                lines.append(
                    SettlementLine(
                        operator, day, done.taps, done.gross_fen, done.fee_rate_bp, done.fee_fen, done.net_fen
                    )
                )
                continue
            taps, gross = next((int(r[1]), int(r[2])) for r in pending if r[0] == operator)
            rate = per.get(operator, default)
            fee = fee_fen(gross, rate)
            key = f"settle:{operator}:{day}"
            if gross:
                open_account(conn, payable_account(operator), AccountKind.OPERATOR)
                account = operator_account(operator)
                request_lines = [
                    Line(account, debit_fen=gross),
                    Line(payable_account(operator), credit_fen=gross - fee),
                ]
                if fee:
                    request_lines.append(Line(FEES_ACCOUNT, credit_fen=fee))
                post_many(
                    conn, [PostingRequest(key, tuple(request_lines), Layer.SETTLED, f"settlement {day}")]
                )
            conn.execute(
                sa.update(Tap)
                .where(
                    Tap.operator == operator,
                    Tap.settlement_key.is_(None),
                    Tap.refunded.is_(False),
                    Tap.day <= day,
                )
                .values(settlement_key=key)
            )
            conn.execute(
                sa.insert(Settlement).values(
                    operator=operator, day=day, taps=taps, gross_fen=gross, fee_rate_bp=rate, fee_fen=fee,
                    net_fen=gross - fee, posting_key=key if gross else None, created_at=utc_now(),
                )
            )  # fmt: skip
            lines.append(SettlementLine(operator, day, taps, gross, rate, fee, gross - fee))
    return lines


SETTLEMENT_COLUMNS = ("operator", "day", "taps", "gross_fen", "fee_rate_bp", "fee_fen", "net_fen")


def settlement_csv(lines: Sequence[SettlementLine]) -> str:
    rows = [",".join(SETTLEMENT_COLUMNS)]
    rows += [",".join(str(getattr(line, c)) for c in SETTLEMENT_COLUMNS) for line in lines]
    return "\n".join(rows) + "\n"


def settlement_json(lines: Sequence[SettlementLine]) -> str:
    return json.dumps([asdict(line) for line in lines], indent=2) + "\n"


def reconcile(engine: Engine) -> dict[str, Any]:
    """Expected (cleared fares) vs collected (operator ledger accounts + fees) per operator, the
    ledger invariants, and per card the chip's last EC balance vs the ledger's EC account.

    The EC comparison holds as of each card's last cleared tap: the ledger's EC balance minus the
    refunds credited after a loss report must equal the balance the chip reported (MACed in the
    IAD). A top-up after the last cleared tap shows as a difference until the next tap clears.
    """
    with engine.connect() as conn:
        expected = dict(
            conn.execute(
                sa.select(Tap.operator, sa.func.sum(Tap.amount_fen))
                .where(Tap.refunded.is_(False))
                .group_by(Tap.operator)
            ).all()
        )
        fees = dict(
            conn.execute(
                sa.select(Settlement.operator, sa.func.sum(Settlement.fee_fen)).group_by(Settlement.operator)
            ).all()
        )
        accounts = [a for op in expected for a in (operator_account(op), payable_account(op))]
        held = _existing_balances(conn, accounts)
        operators = {}
        for op, fen in sorted(expected.items()):
            collected = (
                held.get(operator_account(op), 0) + held.get(payable_account(op), 0) + int(fees.get(op) or 0)
            )
            operators[op] = {
                "expected_fen": int(fen),
                "collected_fen": collected,
                "equal": int(fen) == collected,
            }
        problems = check_invariants(conn)
        refunds = dict(
            conn.execute(
                sa.select(Tap.card, sa.func.sum(Tap.amount_fen))
                .where(Tap.refunded.is_(True))
                .group_by(Tap.card)
            ).all()
        )
        cards = conn.execute(sa.select(Card).where(Card.last_atc.is_not(None))).all()
        codes = {row.card: ec_account(row.issuer, *row.card.split(":")) for row in cards}
        ledger_ec = _existing_balances(conn, list(codes.values()))
        ec_differences = {
            row.card: {"chip_fen": row.last_balance_fen, "ledger_fen": ledger_ec.get(codes[row.card], 0)}
            for row in cards
            if ledger_ec.get(codes[row.card], 0) - int(refunds.get(row.card) or 0) != row.last_balance_fen
        }
    return {
        "operators": operators,
        "expected_fen": sum(o["expected_fen"] for o in operators.values()),
        "collected_fen": sum(o["collected_fen"] for o in operators.values()),
        "ledger_balanced": problems == [],
        "ledger_problems": problems,
        "ec_reconciled": not ec_differences,
        "ec_differences": ec_differences,
    }


def _existing_balances(conn: Connection, codes: Sequence[str]) -> dict[str, int]:
    from citycard.ledger import UnknownAccount

    found: dict[str, int] = {}
    for code in codes:  # small lists (operators, cards of a reconciliation); unknown → no money yet
        try:
            found.update(balances(conn, [code]))
        except (UnknownAccount, KeyError):
            continue
    return found
