"""Messages related to earlier ones: 0400 reversals, 0220 advices (stand-in approvals, DF31 script
results, offline TC uploads) and 0500 settlement totals.

A mixin of :class:`citycard.host.issuer.IssuerHost`, run inside the host's batch transaction:
:meth:`_reversal` and :meth:`_advice` during the participants, :meth:`_finish_pending` after
them, once the batch's own originals are known and before the writes.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.engine import Connection

from citycard.host.issuer import codes, tables
from citycard.host.issuer.config import IssuerConfig
from citycard.host.issuer.context import Batch, Message
from citycard.host.issuer.participants import ledger_key, merchant_account, primitive_tags, suspense_account
from citycard.iso8583 import builders
from citycard.iso8583.message import Iso8583Error
from citycard.ledger import AccountKind, Layer, Line, PostingRequest

ORIGINAL_MTIS = ("0100", "0200")
RELATED_KINDS = ("reversal", "advice", "settlement")
EARLY_REVERSAL_WINDOW = dt.timedelta(days=1)  # a reversal that found nothing blocks its original this long
DF31_ENTRY_BYTES = 5  # result byte ‖ 9F18 script id (4)


class RelatedMessages:
    """Reversal and advice handling of :class:`~citycard.host.issuer.IssuerHost` (a mixin)."""

    config: IssuerConfig

    def _reversal(self, msg: Message, batch: Batch) -> None:
        """0400: the original by F41/F42/F11 (F61 when present); reversed in the ledger once; 25 if unknown.

        An original earlier in this batch is found in memory, a stored one after the participants
        ran (:meth:`_finish_pending`, one query per reversal: reversals are rare).
        """
        request = msg.request
        stan, batch_no = request["11"], None
        f61 = request.get("61")
        if isinstance(f61, str) and len(f61) >= 12:  # F61: original batch (6) ‖ STAN (6) ‖ … (UNCERTAIN)
            batch_no, stan = f61[:6], f61[6:12]
        original = batch.originals.get((request["41"], request["42"], stan))
        if original is not None and (batch_no is None or original.request["60"][2:8] == batch_no):
            self._reverse_in_batch(msg, batch, original)
        else:
            msg.pending_reversal = (request["41"], request["42"], stan, batch_no)
            batch.early_reversals.add((request["41"], request["42"], stan))  # a later original: 22

    def _reverse_in_batch(self, msg: Message, batch: Batch, original: Message) -> None:
        if msg.pan is not None and original.pan != msg.pan:
            msg.decline(codes.NO_SUCH_CARD, "the original has another PAN")
            return
        msg.rc = codes.APPROVED
        key = original.ledger_key if original.rc == codes.APPROVED else None
        if key is None or key in batch.reversed_keys:
            msg.reason = "nothing to reverse"
            return
        batch.reversed_keys.add(key)
        msg.reason, msg.reverse_key = "reversed", key
        card, amount = original.card, original.amount_fen
        assert card is not None
        batch.balances[card.account] = batch.balances.get(card.account, 0) + amount
        if key.startswith("ecload:"):
            card.ec_balance_fen = max(card.ec_balance_fen - amount, 0)
        card.day_total_fen = max(card.day_total_fen - amount, 0)
        card.touch()

    def _advice(self, msg: Message, batch: Batch) -> None:
        """0220: DF31 script results or an offline TC upload, recorded as received; answered 00."""
        f55 = msg.request.get("55")
        try:
            ic = primitive_tags(bytes(f55)) if isinstance(f55, bytes | bytearray) else None
        except Iso8583Error as exc:
            msg.decline(codes.FORMAT_ERROR, str(exc))
            return
        if ic is None or msg.pan is None:
            msg.decline(codes.FORMAT_ERROR, "advice without field 55 or PAN")
            return
        if msg.request.get("39") is not None:  # the switch stood in for the issuer: book its approval
            self._standin_advice(msg, batch)
            return
        results = ic.get("DF31", b"")
        if len(results) % DF31_ENTRY_BYTES:
            msg.decline(codes.FORMAT_ERROR, "DF31 is not a list of 5-byte script results")
            return
        for offset in range(0, len(results), DF31_ENTRY_BYTES):
            entry = results[offset : offset + DF31_ENTRY_BYTES]
            msg.script_results.append((entry[1:].hex().upper(), entry[0]))
        msg.advice_kind = "script_result" if results else "tc_upload"
        msg.rc = codes.APPROVED

    def _standin_advice(self, msg: Message, batch: Batch) -> None:
        """A 0220 with F39: the switch approved the original while the issuer was unreachable.

        Booked under the original's own ledger key, so an original the issuer also processed
        (late) and the advice post once; if the original is not booked yet, the advice posts
        cardholder → merchant, or suspense → merchant when the account cannot cover it (the
        stand-in approval binds the bank). The ATC is left alone: the cryptogram was not checked here.
        """
        msg.advice_kind, msg.rc = "standin", codes.APPROVED
        if msg.request.get("39") != codes.APPROVED:
            msg.reason = "stand-in decline: recorded"
            return
        card = batch.cards.get((msg.pan or "", msg.psn if msg.psn is not None else -1))
        if card is None:
            msg.reason = "stand-in approval for an unknown card: recorded, not booked"
            return
        msg.card = card
        msg.ledger_key = ledger_key("auth", self.config.name, msg.request)
        msg.pending_standin = True

    def _book_standin(self, conn: Connection, batch: Batch, msg: Message) -> None:
        """Post a stand-in approval unless its original was booked (in this batch or before)."""
        assert msg.card is not None and msg.ledger_key is not None
        key, card, amount = msg.ledger_key, msg.card, msg.amount_fen
        in_batch = any(
            other.ledger_key == key and other.rc == codes.APPROVED and other.posting is not None
            for other in batch.originals.values()
        )
        m = tables.messages.c
        stored = conn.execute(select(m.id).where(m.ledger_key == key, m.approved)).first() is not None
        if in_batch or stored or amount <= 0:
            msg.reason = "stand-in approval: the original is booked already"
            return
        merchant = merchant_account(self.config.name, msg.request["42"])
        source = card.account
        if batch.balances.get(card.account, 0) < amount:
            source = suspense_account(self.config.name)
            batch.new_accounts[source] = AccountKind.SUSPENSE
            msg.reason = "stand-in approval booked to suspense (insufficient funds)"
        else:
            msg.reason = "stand-in approval booked"
        batch.new_accounts[merchant] = AccountKind.MERCHANT
        msg.posting = PostingRequest(
            key=key,
            lines=(Line(source, debit_fen=amount), Line(merchant, credit_fen=amount)),
            layer=Layer.PENDING,
            memo=f"stand-in {msg.request['41']} {msg.request['11']}",
        )
        batch.balances[source] = batch.balances.get(source, 0) - amount
        if card.day != batch.today:
            card.day, card.day_total_fen = batch.today, 0
        card.day_total_fen += amount
        card.touch()

    def _finish_pending(self, conn: Connection, batch: Batch, messages: list[Message]) -> None:
        """Stand-in advices (booked unless their original was), and reversals whose original was not in
        this batch (looked up in the message log)."""
        m = tables.messages.c
        for msg in messages:
            if msg.pending_standin:
                self._book_standin(conn, batch, msg)
            if msg.pending_settlement:
                self._settle(conn, batch, msg)
            if msg.pending_reversal is None:
                continue
            terminal_id, merchant_id, stan, batch_no = msg.pending_reversal
            query = (
                select(m.ledger_key, m.amount_fen, m.approved, m.batch, m.pan, m.psn)
                .where(m.terminal_id == terminal_id, m.merchant_id == merchant_id, m.stan == stan)
                .where(m.mti.in_(ORIGINAL_MTIS), m.issuer == self.config.name)
                .order_by(m.id.desc())
            )
            rows = [row for row in conn.execute(query) if batch_no is None or row.batch == batch_no]
            if not rows:
                msg.decline(codes.ORIGINAL_NOT_FOUND, "no original with this F41/F42/F11")
                continue
            row = rows[0]
            if msg.pan is not None and row.pan not in (None, msg.pan):
                msg.decline(codes.NO_SUCH_CARD, "the original has another PAN")
                continue
            msg.rc = codes.APPROVED
            key = row.ledger_key if row.approved else None
            if key is None or key in batch.reversed_keys:
                msg.reason = "nothing to reverse"
                continue
            batch.reversed_keys.add(key)
            msg.reason, msg.reverse_key = "reversed", key
            self._reverse_card_state(conn, batch, key, row.pan, row.psn, row.amount_fen)

    def _reverse_card_state(
        self, conn: Connection, batch: Batch, ledger_key: str, pan: str, psn: int, amount: int
    ) -> None:
        """The original's card follows a first reversal: EC shadow (a load) and the day total."""
        m = tables.messages.c
        if conn.execute(select(m.id).where(m.ledger_key == f"rev:{ledger_key}")).first() is not None:
            return  # reversed by an earlier message: the ledger's reverse is a no-op too
        card = batch.cards.get((pan, psn))
        if card is None:
            return
        batch.balances[card.account] = batch.balances.get(card.account, 0) + amount
        if ledger_key.startswith("ecload:"):
            card.ec_balance_fen = max(card.ec_balance_fen - amount, 0)
        card.day_total_fen = max(card.day_total_fen - amount, 0)
        card.touch()

    def _settle(self, conn: Connection, batch: Batch, msg: Message) -> None:
        """0500: the issuer's totals of the terminal's batch (F41 + F42 + F60.2) — approved debits
        (purchase, authorisation, pre-authorisation, EC load) not reversed, stored or in this batch —
        in F63; 00 when the terminal's F63 agrees, 95 (ISO 8583 "reconcile error") when not.
        Credits (refunds) do not exist yet. 95 and the F63 layout are UNCERTAIN for CUPS (it answers
        a 批结算 balance flag in F48, which this spec does not carry)."""
        request = msg.request
        try:
            theirs = builders.parse_settlement_totals(request)
        except Iso8583Error as exc:
            msg.decline(codes.FORMAT_ERROR, str(exc))
            return
        terminal_id, merchant_id, batch_no = request["41"], request["42"], request["60"][2:8]
        m = tables.messages.c
        rows = conn.execute(
            select(m.mti, m.ledger_key, m.amount_fen).where(
                m.issuer == self.config.name,
                m.terminal_id == terminal_id,
                m.merchant_id == merchant_id,
                m.batch == batch_no,
                m.ledger_key.is_not(None),
            )
        ).all()
        # originals and stand-in advices (0220 rows carry a ledger key only when they posted)
        posted = {row.ledger_key: row.amount_fen for row in rows if row.mti in (*ORIGINAL_MTIS, "0220")}
        reversed_keys = {row.ledger_key.removeprefix("rev:") for row in rows if row.mti == "0400"}
        for other in batch.originals.values():
            same = (other.request["41"], other.request["42"], other.request["60"][2:8])
            if same == (terminal_id, merchant_id, batch_no) and other.posting is not None:
                posted[other.posting.key] = other.amount_fen
        reversed_keys |= batch.reversed_keys
        amounts = [amount for key, amount in posted.items() if key not in reversed_keys]
        ours = {"debit_count": len(amounts), "debit_fen": sum(amounts), "credit_count": 0, "credit_fen": 0}
        count_max = builders.SETTLEMENT_COUNT_MAX
        msg.extra["f63"] = builders.settlement_totals(
            debit_count=min(ours["debit_count"], count_max), debit_fen=ours["debit_fen"]
        )
        if ours == theirs:
            msg.rc, msg.reason = codes.APPROVED, "totals agree"
        else:
            msg.rc, msg.reason = codes.RECONCILE_ERROR, f"totals differ: ours {ours}, the terminal's {theirs}"
