"""The issuer host: ISO 8583 requests in, responses out, one database transaction per batch.

:meth:`IssuerHost.process_batch` takes decoded field dicts (``citycard.iso8583.message.decode``)
and answers each, in order. Per batch: one query for already-answered keys and early reversals,
one for the cards (locked ``FOR UPDATE`` on PostgreSQL, in PAN order so two batches never
deadlock; SQLite writers are serialised by ``BEGIN IMMEDIATE``), one for balances, one for queued
scripts only when a card has some; then the participants (:mod:`.participants`) run in memory;
then one ``post_many`` and executemany writes; then the commit. Responses leave only after the
commit. If the batch attempt fails, each message is retried alone, so one bad message cannot
sink the others. Administration is in :mod:`.admin`, reversals and advices in :mod:`.related`,
field checks and the stored answer in :mod:`.wire`.

Idempotency: a request whose key (F32:F41:F11:F7:MTI) was answered before gets the stored answer
and nothing is applied again; the unique key makes two racing copies safe too.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from psycopg.rows import namedtuple_row
from sqlalchemy import Engine, bindparam, insert, literal, or_, select, union_all, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from citycard.db import write_transaction
from citycard.emv.tlv import encode_one
from citycard.host.issuer import codes, tables
from citycard.host.issuer.admin import PSN_MAX, IssuerAdmin
from citycard.host.issuer.config import SUITES_BY_NAME, IssuerConfig
from citycard.host.issuer.context import Batch, CardState, Message
from citycard.host.issuer.participants import (
    CHECKS,
    DEBIT_KINDS,
    EC_LOAD_KIND,
    Env,
    arpc_and_scripts,
    auth_code,
    request_amount,
)
from citycard.host.issuer.related import EARLY_REVERSAL_WINDOW, RELATED_KINDS, RelatedMessages
from citycard.host.issuer.wire import (
    field_problem,
    format_error_response,
    message_key,
    pack_response,
    unpack_response,
)
from citycard.hsm import SoftHSM
from citycard.iso8583 import builders
from citycard.iso8583.message import Iso8583Error
from citycard.ledger import (
    AccountCache,
    AccountKind,
    LedgerError,
    balances,
    bulk,
    open_account,
    post_many,
    reverse,
)

log = logging.getLogger(__name__)

BATCH_MESSAGES_MAX = 500  # below ledger.POSTINGS_PER_BATCH_MAX; the server batches far fewer
FINANCIAL_KINDS = DEBIT_KINDS | {EC_LOAD_KIND}
NETWORK_KINDS = frozenset({"sign_on", "echo"})
# The card columns a batch writes back; on PostgreSQL in one UPDATE … FROM unnest(…) (ledger.bulk).
CARD_STATE_COLUMNS = ("pin_tries", "atc_max", "ec_balance_fen", "day", "day_total_fen", "scripts_pending")
_PG_CARD_UPDATE = bulk.update_json_sql(tables.cards, "id", CARD_STATE_COLUMNS, prefix="c_")
MESSAGE_LOG_COLUMNS = (
    "issuer", "key", "mti", "kind", "pan", "psn", "terminal_id", "merchant_id", "stan", "batch",
    "amount_fen", "rc", "approved", "ledger_key", "response", "created_at",
)  # fmt: skip
_PG_CARDS_AND_LOG = bulk.together(_PG_CARD_UPDATE, bulk.insert_json_sql(tables.messages, MESSAGE_LOG_COLUMNS))


def _answered_query(*, early: bool) -> Any:
    """Stored answers by key; with ``early``, also the reversals that found no original (see
    :meth:`IssuerHost._load_answered`). The SQLite form; PostgreSQL's is :data:`_PG_ANSWERED_OR_EARLY`."""
    m = tables.messages.c
    columns = (m.key, m.response, m.terminal_id, m.merchant_id, m.stan)
    answered = select(*columns, literal(False).label("early")).where(
        m.key.in_(bindparam("keys", expanding=True))
    )
    if not early:
        return answered
    reversed_first = select(*columns, literal(True).label("early")).where(
        m.issuer == bindparam("issuer"),
        m.mti == "0400",
        m.rc == bindparam("rc"),
        m.terminal_id.in_(bindparam("terminals", expanding=True)),  # all three index columns
        m.merchant_id.in_(bindparam("merchants", expanding=True)),
        m.stan.in_(bindparam("stans", expanding=True)),
        m.created_at >= bindparam("since"),
    )
    return union_all(answered, reversed_first)


_ANSWERED = _answered_query(early=False)
_ANSWERED_OR_EARLY = _answered_query(early=True)
# PostgreSQL: keys as one array, and the early reversals found by joining the batch's exact
# (F41, F42, F11) triples to the (terminal_id, merchant_id, stan) index through LATERAL: one index
# probe per triple, whatever the planner estimates. (With the middle index column left open, the old
# IN lists read every logged message of the batch's terminals: a cost that grew with the log.) Sent
# unprepared: see IssuerHost._load_answered.
_PG_ANSWERED = (
    "SELECT key, response, terminal_id, merchant_id, stan, false AS early "
    "FROM issuer_messages WHERE key = ANY(%(keys)s::TEXT[])"
)
_PG_ANSWERED_OR_EARLY = (
    _PG_ANSWERED + " UNION ALL "
    "SELECT m.key, m.response, m.terminal_id, m.merchant_id, m.stan, true AS early "
    "FROM unnest(%(terminals)s::TEXT[], %(merchants)s::TEXT[], %(stans)s::TEXT[]) "
    "AS t(terminal_id, merchant_id, stan) "
    "CROSS JOIN LATERAL (SELECT key, response, terminal_id, merchant_id, stan FROM issuer_messages "
    "WHERE terminal_id = t.terminal_id AND merchant_id = t.merchant_id AND stan = t.stan "
    "AND issuer = %(issuer)s AND mti = '0400' AND rc = %(rc)s AND created_at >= %(since)s) AS m"
)


def _cards_query(member: bulk.Member, *, by_id: bool, by_pan: bool) -> Any:
    c = tables.cards.c
    wanted = (
        or_(member(c.id, "ids"), member(c.pan, "pans"))
        if by_id and by_pan
        else member(c.id, "ids")
        if by_id
        else member(c.pan, "pans")
    )
    return (
        select(tables.cards)
        .where(c.issuer == bindparam("issuer"), wanted)
        .order_by(c.pan, c.psn)  # the lock order: two batches never deadlock on cards
        .with_for_update()
    )


# Three forms, so the common batch (every card seen before) is a plain primary-key lookup: on
# PostgreSQL the OR form costs ≈ 0.5 ms of planning a batch, the single forms ≈ 0.06 ms.
_CARDS = {
    (by_id, by_pan): bulk.per_backend(
        lambda member, i=by_id, p=by_pan: _cards_query(member, by_id=i, by_pan=p)
    )
    for by_id, by_pan in ((True, True), (True, False), (False, True))
}
CARD_IDS_MAX = 2_000_000  # (PAN, PSN) → card row id kept per lane (ids never change); then it starts over


class IssuerHost(IssuerAdmin, RelatedMessages):
    """One bank's issuer host over a database engine and an HSM (see the module note)."""

    def __init__(self, config: IssuerConfig, *, engine: Engine, hsm: SoftHSM):
        self.config = config
        self.engine = engine
        self.hsm = hsm
        self._env = Env(config, hsm)
        self._known_accounts: set[str] = set()  # ledger accounts known to exist (after a commit)
        self._account_cache = AccountCache()  # their ledger rows, so posting needs no lookup
        # card row ids by (PAN, PSN): a known card is read by its primary key, not by a text PAN
        self._card_ids: dict[tuple[str, int], int] = {}

    def __repr__(self) -> str:
        return f"IssuerHost({self.config.name}, bins={','.join(self.config.bins)})"

    # --- the pipeline ---------------------------------------------------------------------------
    def process_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Answer ``requests`` in order, one database transaction for all (see the module note)."""
        if len(requests) > BATCH_MESSAGES_MAX:
            raise ValueError(f"a batch holds at most {BATCH_MESSAGES_MAX} messages, got {len(requests)}")
        if not requests:
            return []
        try:
            return self._attempt(requests)
        except Exception as exc:  # noqa: BLE001 — whatever sank the batch, each message gets its own try
            if len(requests) == 1:
                return [self._failed(requests[0], exc)]
            log.warning(
                "issuer %s: batch of %d failed (%s: %s); retrying one by one",
                self.config.name,
                len(requests),
                type(exc).__name__,
                exc,
            )
        return [self._attempt_one(request) for request in requests]

    def _attempt_one(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._attempt([request])[0]
        except Exception as exc:  # noqa: BLE001 — the server must get an answer for every request
            return self._failed(request, exc)

    def _failed(self, request: dict[str, Any], exc: Exception) -> dict[str, Any]:
        expected = isinstance(exc, SQLAlchemyError | LedgerError)  # the database or a ledger refusal
        (log.warning if expected else log.exception)(
            "issuer %s: message %s failed: %s: %s",
            self.config.name,
            message_key(request),
            type(exc).__name__,
            exc,
        )
        return self._system_error(request)

    def _system_error(self, request: dict[str, Any]) -> dict[str, Any]:
        """RC 96, stored nowhere: the acquirer may send the request again."""
        try:
            return builders.response(request, codes.SYSTEM_MALFUNCTION)
        except Iso8583Error:
            return format_error_response(request)

    def _attempt(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        batch = Batch(now=dt.datetime.now(dt.UTC))
        messages = [self._parse(i, request) for i, request in enumerate(requests)]
        try:
            with write_transaction(self.engine) as conn:
                self._load_answered(conn, messages)
                live = [m for m in messages if not m.duplicate and m.response is None]
                self._load_cards(conn, batch, live)
                for msg in live:
                    self._run(msg, batch)
                self._finish_pending(conn, batch, live)
                for msg in live:
                    self._respond(msg)
                self._write(conn, batch, messages)
        except BaseException:
            self._account_cache.rolled_back()
            raise
        self._account_cache.committed()
        self._known_accounts |= set(batch.new_accounts)
        for msg in messages:
            if msg.duplicate_of is not None:
                msg.response = msg.duplicate_of.response
        return [msg.response for msg in messages]  # type: ignore[misc]

    # --- before: parse, answered keys, cards ------------------------------------------------------
    def _parse(self, index: int, request: dict[str, Any]) -> Message:
        msg = Message(index, request)
        try:
            problem = field_problem(request)
            if problem is not None:
                raise Iso8583Error(problem)
            msg.kind = builders.classify(request)
        except Iso8583Error as exc:
            msg.decline(codes.FORMAT_ERROR, str(exc))
            msg.store = False
            msg.response = format_error_response(request)
            return msg
        if msg.kind.mti != request["t"]:
            msg.decline(codes.FORMAT_ERROR, "a response is not a request")
            msg.store = False
            msg.response = format_error_response(request)
            return msg
        msg.key = message_key(request)
        if msg.kind.name in NETWORK_KINDS or msg.kind.name not in (*FINANCIAL_KINDS, *RELATED_KINDS):
            msg.store = False
            rc = codes.APPROVED if msg.kind.name in NETWORK_KINDS else codes.INVALID_TRANSACTION
            msg.decline(rc, f"{msg.kind.name} is not the issuer's to answer")
            msg.response = builders.response(request, rc)
            return msg
        if msg.kind.name in FINANCIAL_KINDS:
            msg.triple = (request["41"], request["42"], request["11"])
        pan = request.get("2")
        if isinstance(pan, str) and pan.isdigit():
            msg.pan = pan
        psn = request.get("23")
        if isinstance(psn, str) and psn.isdigit() and int(psn) <= PSN_MAX:
            msg.psn = int(psn)
        if msg.kind.name in FINANCIAL_KINDS and msg.psn is None:
            msg.decline(codes.FORMAT_ERROR, "field 23 (PSN) missing")
        if msg.kind.name in (*FINANCIAL_KINDS, "advice"):
            request_amount(msg)
        return msg

    def _load_answered(self, conn: Connection, messages: list[Message]) -> None:
        """One query for two things: requests answered before (they get the stored answer) and
        reversals that found no original (their late original is declined 22, so an authorisation
        the acquirer gave up on is never approved behind its reversal). A second copy inside the
        batch gets the first copy's answer."""
        keys = sorted({m.key for m in messages if m.key is not None and m.store})
        if not keys:
            return
        triples = sorted({msg.triple for msg in messages if msg.triple is not None})
        params: dict[str, Any] = {"keys": keys}
        if triples:
            params.update(
                issuer=self.config.name,
                rc=codes.ORIGINAL_NOT_FOUND,
                since=dt.datetime.now(dt.UTC) - EARLY_REVERSAL_WINDOW,
            )
        if bulk.is_postgresql(conn):
            if triples:
                terminals, merchants, stans = (list(column) for column in zip(*triples, strict=True))
                params.update(terminals=terminals, merchants=merchants, stans=stans)
            # Never a server-side prepared statement: PostgreSQL would keep a generic plan made
            # while the log was small, and this lookup then grew with the log (≈ 5 ms a batch after
            # 16,000 messages, against ≈ 1 ms planned per call). Same connection, same transaction.
            cursor = conn.connection.driver_connection.cursor(row_factory=namedtuple_row)
            rows: Any = cursor.execute(
                _PG_ANSWERED_OR_EARLY if triples else _PG_ANSWERED, params, prepare=False
            )
        else:
            if triples:
                params.update(
                    terminals=sorted({t[0] for t in triples}),
                    merchants=sorted({t[1] for t in triples}),
                    stans=sorted({t[2] for t in triples}),
                )
            rows = conn.execute(_ANSWERED_OR_EARLY if triples else _ANSWERED, params)
        stored: dict[str, bytes] = {}
        reversed_first: set[tuple[str, str, str]] = set()
        for row in rows:
            if row.early:
                reversed_first.add((row.terminal_id, row.merchant_id, row.stan))
            else:
                stored[row.key] = bytes(row.response)
        first: dict[str, Message] = {}
        for msg in messages:
            if msg.key is None or not msg.store:
                continue
            if msg.key in stored:
                msg.duplicate, msg.store = True, False
                msg.response_bytes = stored[msg.key]
                msg.response = unpack_response(stored[msg.key])
            elif msg.key in first:
                msg.duplicate, msg.store = True, False
                msg.duplicate_of = first[msg.key]
            else:
                first[msg.key] = msg
                if msg.triple in reversed_first:
                    msg.decline(codes.REVERSED_BEFORE, "its reversal arrived first")

    def _load_cards(self, conn: Connection, batch: Batch, messages: list[Message]) -> None:
        """The batch's cards, locked in (PAN, PSN) order: by row id when a financial request names
        a card seen before, else by PAN (every PSN of it: reversals and advices find their original's
        card by the logged PAN and PSN)."""
        ids: set[int] = set()
        pans: set[str] = set()
        card_ids = self._card_ids
        for m in messages:
            if m.pan is None:
                continue
            known = None
            if m.psn is not None and m.kind is not None and m.kind.name in FINANCIAL_KINDS:
                known = card_ids.get((m.pan, m.psn))
            if known is None:
                pans.add(m.pan)
            else:
                ids.add(known)
        if not ids and not pans:
            return
        params = {"issuer": self.config.name, "ids": sorted(ids), "pans": sorted(pans)}
        query = _CARDS[(bool(ids), bool(pans))]
        rows = (  # unprepared on PostgreSQL: see ledger.bulk.custom_plan_rows
            bulk.custom_plan_rows(conn, query[True], params)
            if bulk.is_postgresql(conn)
            else conn.execute(query[False], params)
        )
        for row in rows:
            batch.cards[(row.pan, row.psn)] = CardState(
                id=row.id, pan=row.pan, psn=row.psn, expiry=row.expiry, suite=SUITES_BY_NAME[row.suite],
                status=row.status, pvv=row.pvv, pin_tries=row.pin_tries, atc_max=row.atc_max,
                ec_balance_fen=row.ec_balance_fen, account=row.account, ec_account=row.ec_account,
                day=row.day, day_total_fen=row.day_total_fen, scripts_pending=row.scripts_pending,
            )  # fmt: skip
            if len(card_ids) >= CARD_IDS_MAX:
                card_ids.clear()
            card_ids[(row.pan, row.psn)] = row.id  # a committed row (locked): its id is for good
        if not batch.cards:
            return
        accounts = sorted(card.account for card in batch.cards.values())
        batch.balances.update(balances(conn, accounts, account_cache=self._account_cache))
        waiting = sorted({card.pan for card in batch.cards.values() if card.scripts_pending})
        if not waiting:
            return  # the common case: no script queued for any card of the batch, no query
        s = tables.scripts.c
        queued = conn.execute(
            select(s.id, s.pan, s.psn, s.kind)
            .where(s.issuer == self.config.name, s.pan.in_(waiting), s.delivered_key.is_(None))
            .order_by(s.id)
        )
        for row in queued:
            batch.queued.setdefault((row.pan, row.psn), []).append((row.id, row.kind))

    # --- the participants -------------------------------------------------------------------------
    def _run(self, msg: Message, batch: Batch) -> None:
        assert msg.kind is not None
        if msg.triple is not None and msg.triple in batch.early_reversals:
            msg.decline(codes.REVERSED_BEFORE, "its reversal came earlier in this batch")
        # An exception here (an HSM refusal, a slip) fails the whole attempt: the batch is retried
        # message by message and the failing one alone answers 96 with nothing written, so no
        # half-applied message (card state moved, posting dropped) can ever be committed.
        if msg.kind.name == "reversal":
            self._reversal(msg, batch)
        elif msg.kind.name == "advice":
            self._advice(msg, batch)
        elif msg.kind.name == "settlement":
            msg.pending_settlement = True  # totals are read after the batch's own messages ran
        else:
            for participant in CHECKS:
                if msg.stopped:
                    break
                participant(msg, batch, self._env)
            arpc_and_scripts(msg, batch, self._env)
            if msg.rc is None:
                msg.rc, msg.reason = codes.APPROVED, "approved"
        if msg.kind.name in FINANCIAL_KINDS:
            batch.originals[(msg.request["41"], msg.request["42"], msg.request["11"])] = msg

    # --- after: responses and writes -------------------------------------------------------------
    def _respond(self, msg: Message) -> None:
        rc = msg.rc or codes.APPROVED
        msg.rc = rc
        extra: dict[str, Any] = {}
        if rc == codes.APPROVED and msg.kind is not None and msg.kind.name in FINANCIAL_KINDS:
            assert msg.key is not None
            extra["f38"] = auth_code(msg.key)
        ic = b""
        if msg.tag_91 is not None:
            ic += encode_one("91", msg.tag_91)
        ic += b"".join(msg.scripts_71) + b"".join(msg.scripts_72)
        if ic:
            extra["f55"] = ic
        extra.update(msg.extra)
        msg.response = builders.response(msg.request, rc, kind=msg.kind, **extra)

    def _write(self, conn: Connection, batch: Batch, messages: list[Message]) -> None:
        for account in sorted(set(batch.new_accounts) - self._known_accounts):
            kind = batch.new_accounts[account]
            open_account(
                conn, account, kind, allow_negative=kind == AccountKind.SUSPENSE, name=f"{kind.value} account"
            )
        postings = [m.posting for m in messages if m.posting is not None and m.rc == codes.APPROVED]
        if postings:
            post_many(conn, postings, account_cache=self._account_cache)
        for msg in messages:
            if msg.reverse_key:
                reverse(
                    conn, key=f"rev:{msg.reverse_key}", original_key=msg.reverse_key, memo="0400 reversal"
                )
        dirty = [card for card in batch.cards.values() if card.dirty]
        card_params: dict[str, Any] | None = None
        if dirty:
            rows = [
                {"card_id": card.id, "pin_tries": card.pin_tries, "atc_max": card.atc_max,
                 "ec_balance_fen": card.ec_balance_fen, "day": card.day,
                 "day_total_fen": card.day_total_fen, "scripts_pending": card.scripts_pending}
                for card in dirty
            ]  # fmt: skip
            if bulk.is_postgresql(conn):  # one UPDATE … FROM unnest, sent with the log insert
                rows = [{**row, "id": row.pop("card_id")} for row in rows]
                card_params = bulk.json_rows(rows, ("id", *CARD_STATE_COLUMNS), "c_")
            else:
                c = tables.cards.c
                conn.execute(update(tables.cards).where(c.id == bindparam("card_id")), rows)
        self._write_log(conn, batch, messages, card_params)

    def _write_log(
        self, conn: Connection, batch: Batch, messages: list[Message], card_params: dict[str, Any] | None
    ) -> None:
        """The message log (and script results, advices, delivered scripts). On PostgreSQL the cards'
        update (``card_params``) and the log insert go as ONE statement (ledger.bulk.together): they
        touch different tables, and the card rows are already locked by this transaction."""
        now = batch.now
        log_rows, results, advice_rows, delivered = [], [], [], []
        for msg in messages:
            if not msg.store or msg.key is None:
                continue
            assert msg.response is not None and msg.kind is not None
            msg.response_bytes = pack_response(msg.response)
            request = msg.request
            # the key of what this message posted (None: nothing), so the log and the ledger agree
            ledger_key = msg.posting.key if msg.posting is not None and msg.rc == codes.APPROVED else None
            if msg.reverse_key:
                ledger_key = f"rev:{msg.reverse_key}"
            f60 = request.get("60", "")
            log_rows.append(
                {"issuer": self.config.name, "key": msg.key, "mti": request["t"], "kind": msg.kind.name,
                 "pan": msg.pan, "psn": msg.psn, "terminal_id": request["41"], "merchant_id": request["42"],
                 "stan": request["11"], "batch": f60[2:8] if len(f60) >= 8 else None,
                 "amount_fen": msg.amount_fen, "rc": msg.rc, "approved": msg.rc == codes.APPROVED,
                 "ledger_key": ledger_key, "response": msg.response_bytes, "created_at": now}
            )  # fmt: skip
            for script_id, result in msg.script_results:
                results.append(
                    {"issuer": self.config.name, "pan": msg.pan, "psn": msg.psn if msg.psn is not None else 0,
                     "message_key": msg.key, "script_id": script_id, "result": result, "created_at": now}
                )  # fmt: skip
            if msg.advice_kind is not None:
                advice_rows.append(
                    {"issuer": self.config.name, "message_key": msg.key, "pan": msg.pan, "psn": msg.psn,
                     "kind": msg.advice_kind, "amount_fen": msg.amount_fen, "ic_data": bytes(request["55"]),
                     "created_at": now}
                )  # fmt: skip
            delivered += [{"script_id": i, "d_key": msg.key, "d_at": now} for i in msg.delivered_script_ids]
        if card_params is not None and log_rows:
            log_params = bulk.json_rows(log_rows, MESSAGE_LOG_COLUMNS)
            bulk.driver_execute(conn, _PG_CARDS_AND_LOG, card_params | log_params)
        elif card_params is not None:
            bulk.driver_execute(conn, _PG_CARD_UPDATE, card_params)
        else:
            bulk.insert_rows(conn, tables.messages, log_rows)
        if results:
            conn.execute(insert(tables.script_results), results)
        if advice_rows:
            conn.execute(insert(tables.advices), advice_rows)
        if delivered:
            s = tables.scripts.c
            conn.execute(
                update(tables.scripts)
                .where(s.id == bindparam("script_id"))
                .values(delivered_key=bindparam("d_key"), delivered_at=bindparam("d_at")),
                delivered,
            )
