"""qPBOC: the card decides inside GET PROCESSING OPTIONS (JR/T 0025.12; pboc-notes §5, §6).

Response template 77, in this order: 82 AIP and 94 AFL (DGI 9105, or 9107 when the transaction
runs in GM on a card with both suites; docs/card.md §3), 9F36 ATC, 9F26 AC, 9F27 CID (kept although
kernels may infer the type from the IAD, pboc-notes §4.2), 9F10 IAD (EC balance after the
transaction, with its MAC), 9F6C CTQ, 57 track 2, 5F34 PSN; then on an offline approval (TC) 9F5D
(available offline amount = balance after) and 9F4B (fDDA, signed with the ICC key of the
transaction's suite), otherwise 9F63 when personalised.

fDDA: ICC dynamic data = a fresh 4-byte card random 9F4C. Version 01 when the TTQ supports it
(byte 4 b8) and a record holds 9F69: the card then rewrites that record's 9F69 for this transaction
as 01 ‖ 9F4C ‖ CTQ ‖ (personalised bytes 8…) — the VCPS-style layout of pboc-notes §2.1, UNCERTAIN
beyond byte 7 — and signs 9F37 ‖ 9F02 ‖ 5F2A ‖ 9F69; otherwise version 00 signs 9F37.

CTQ (UNCERTAIN, card side of pboc-notes §5.1): the personalised 9F6C with byte 1 b8/b7 decided
per transaction: CVM is needed when the TTQ asks (byte 2 b7) or the amount exceeds the card CVM
limit 9F6B; then online PIN on an ARQC when the reader supports it, else signature if supported.

Part 14 (DF60 = 01 on a card with extended-application files): an offline approval is *pending*
— ATC saved, cryptogram answered, balance and log untouched — until UPDATE CAPP DATA CACHE commits
the fare and the trip record in one save (:mod:`citycard.card.pboc.capp`); see its note.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from citycard.card import sw
from citycard.card.apdu import Response
from citycard.card.application import CardContext
from citycard.card.pboc.data import n12
from citycard.card.pboc.generate_ac import cryptogram, risk_input, write_log
from citycard.card.pboc.risk import Ac, QpbocInput, qpboc_decision
from citycard.card.pboc.state import Stage, Transaction
from citycard.card.sw import CardError
from citycard.crypto import oda
from citycard.crypto.suite import Suite
from citycard.emv.bits import CTQ, TTQ
from citycard.emv.tlv import TLV, decode_one, encode, encode_one

if TYPE_CHECKING:
    from citycard.card.pboc.application import PbocApplication

CARD_RANDOM_BYTES = 4  # 9F4C in fDDA (and inside 9F69)
TAG_9F69_PATCHED_BYTES = 7  # version ‖ card random (4) ‖ CTQ (2)


@dataclass(frozen=True, slots=True)
class Pending:
    """An approved qPBOC purchase waiting for its Part 14 record (nothing of it is saved yet)."""

    balance_fen_after: int
    cid: int
    ac: bytes


def commit(app: PbocApplication, txn: Transaction) -> None:
    """Apply a pending purchase to the state (the caller saves, together with its record)."""
    pending = txn.pending
    if pending is None:
        return
    app.counters.ec_balance_fen = pending.balance_fen_after
    write_log(app, txn, cid=pending.cid, ac=pending.ac)
    txn.pending = None


def qpboc_ctq(
    personalised: bytes, *, ttq: bytes, ac: Ac, amount_fen: int, cvm_limit_fen: int | None
) -> bytes:
    """The CTQ answered in this GPO (module note)."""
    ctq, reader = CTQ.new(personalised), TTQ.new(ttq)
    ctq.clear("online_pin_required")
    ctq.clear("signature_required")
    cvm = reader.is_set("cvm_required") or (cvm_limit_fen is not None and amount_fen > cvm_limit_fen)
    if cvm and ac == Ac.ARQC and reader.is_set("online_pin_supported"):
        ctq.set("online_pin_required")
    elif cvm and reader.is_set("signature_supported"):
        ctq.set("signature_required")
    return bytes(ctq)


def _patched_9f69(app: PbocApplication, txn: Transaction, tag_9f4c: bytes, ctq: bytes) -> bytes | None:
    """Rewrite the record holding 9F69 for this transaction; return the new 9F69 (None: no 9F69)."""
    where = app.data.record_holding("9F69")
    if where is None:
        return None
    record = decode_one(app.data.records[where])
    children = list(record.children or ())
    index = next(i for i, obj in enumerate(children) if obj.tag == "9F69")
    value = children[index].value
    if len(value) < TAG_9F69_PATCHED_BYTES:
        return None
    value = b"\x01" + tag_9f4c + ctq + value[TAG_9F69_PATCHED_BYTES:]
    children[index] = TLV("9F69", value)
    txn.patched_records[where] = encode([TLV("70", children=children)])
    return value


def _fdda(app: PbocApplication, txn: Transaction, ctx: CardContext, ctq: bytes) -> bytes:
    if txn.suite is None:
        raise AssertionError("fDDA before the suite was chosen")
    tag_9f4c = ctx.random_bytes(CARD_RANDOM_BYTES)
    tag_9f69 = None
    if TTQ.new(txn.values["9F66"]).is_set("fdda_version_01_supported"):
        tag_9f69 = _patched_9f69(app, txn, tag_9f4c, ctq)
    if tag_9f69 is None:
        terminal = oda.fdda_terminal_dynamic_data(version=0, tag_9f37=txn.values["9F37"])
    else:
        terminal = oda.fdda_terminal_dynamic_data(
            version=1,
            tag_9f37=txn.values["9F37"],
            tag_9f02=txn.values["9F02"],
            tag_5f2a=txn.values["5F2A"],
            tag_9f69=tag_9f69,
        )
    key = app.secrets.icc_key(txn.suite)
    return oda.sign_dynamic_data(key, oda.icc_dynamic_data(tag_9f4c), terminal, suite=txn.suite)


def qpboc_gpo(app: PbocApplication, txn: Transaction, ctx: CardContext) -> Response:
    """The qPBOC half of GPO: decide, build 77, apply (or hold) the debit, save, answer."""
    ttq = TTQ.new(txn.values["9F66"])
    risk = dataclasses.replace(risk_input(app, txn, Ac.TC), ec_requested=True)
    signing = (
        txn.suite is not None
        and app.secrets.icc_key(txn.suite) is not None
        and len(txn.values.get("9F37", b"")) == 4
        and all(len(txn.values.get(tag, b"")) == size for tag, size in (("9F02", 6), ("5F2A", 2)))
    )
    decision = qpboc_decision(
        risk,
        QpbocInput(
            online_capable=not ttq.is_set("offline_only_reader"),
            online_cryptogram_required=ttq.is_set("online_cryptogram_required"),
            cash=txn.values.get("9C") == b"\x01",
            offline_signing_possible=signing,
        ),
    )
    balance = app.counters.ec_balance_fen
    if decision.ac == Ac.TC and balance is not None:
        balance -= risk.amount_fen
    ctq = qpboc_ctq(
        app.data.tag("9F6C") or b"\x00\x00",
        ttq=bytes(ttq),
        ac=decision.ac,
        amount_fen=risk.amount_fen,
        cvm_limit_fen=app.data.money("9F6B"),
    )
    ac, iad = cryptogram(app, txn, cvr=decision.cvr, balance_fen=balance)
    items = [
        ("82", txn.aip),
        ("94", txn.afl),
        ("9F36", txn.atc),
        ("9F26", ac),
        ("9F27", bytes([decision.ac.cid])),
        ("9F10", iad),
        ("9F6C", ctq),
        ("57", app.data.tag("57")),
        ("5F34", app.data.tag("5F34")),
    ]
    if decision.ac == Ac.TC:
        if balance is not None:
            items.append(("9F5D", n12(balance)))
        items.append(("9F4B", _fdda(app, txn, ctx, ctq)))
        if txn.capp:
            txn.pending = Pending(balance if balance is not None else 0, decision.ac.cid, ac)
            txn.capp_approved = True
        else:
            app.counters.ec_balance_fen = balance
            write_log(app, txn, cid=decision.ac.cid, ac=ac)
    else:
        items.append(("9F63", app.data.tag("9F63")))
        if decision.ac == Ac.ARQC:
            txn.arqc = ac
    txn.first_cvr = decision.cvr
    txn.stage = Stage.COMPLETED
    body = b"".join(encode_one(tag, value) for tag, value in items if value is not None)
    ctx.save()
    return Response(encode_one("77", body))


def check_ready(app: PbocApplication, suite: Suite) -> None:
    """qPBOC needs the contactless GPO data of the transaction's suite (9105, or 9107)."""
    if app.gpo_data("contactless", suite) is None:
        raise CardError(
            sw.CONDITIONS_NOT_SATISFIED,
            f"qPBOC requested but the card has no contactless AFL (9105/9107) for the {suite.name} suite",
        )
