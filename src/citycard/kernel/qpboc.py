"""qPBOC: the contactless quick flow with electronic cash (JR/T 0025.12/.13; pboc-notes §5, §6).

Steps, in order (each a small function over the :class:`Transaction`):

1. **Pre-processing** per AID row (EMV Book B §3.1.1 as qPBOC uses it), before the card is
   touched: amount ≥ contactless transaction limit (DF20) → that AID is not allowed contactless;
   electronic cash is used when the terminal supports it and the amount ≤ the EC terminal limit
   (9F7B) — then 9F7A = 01 and 9F7B stands for the floor limit — otherwise 9F7A = 00 and the
   contactless floor limit (DF19) applies; amount above it → TTQ "online cryptogram required";
   amount ≥ contactless CVM limit (DF21) → TTQ "CVM required". An offline-only reader cannot go
   online, so such an AID is not allowed either. No AID allowed → TRY_ANOTHER_INTERFACE.
2. **Selection**: PPSE, candidates by priority, final SELECT (:mod:`.selection`).
3. **GPO** with the PDOL data (TTQ, amount, country, currency, date, type, UN, 9F7A, DF69 = the
   terminal's suite, DF60 = 01 only for a Part 14 transaction). 6985 → TRY_ANOTHER_INTERFACE;
   another status word, a template other than 77, a duplicate or a missing 82/9F36/9F26/9F10 →
   END_APPLICATION. The card decides inside GPO: CID 9F27, or when absent the CVR's first-GAC bits
   in the IAD (pboc-notes §4.2). AAC → DECLINED. ARQC → ONLINE_REQUEST on an online-capable
   reader (or an online authorisation when an :class:`AcquirerLink` is given), DECLINED on an
   offline-only one.
4. On a TC: **read records** (:mod:`.records`), mandatory PAN (5A or 57) and expiry (5F24),
   **processing restrictions** (expired → CTQ "go online if expired" decides online or decline;
   not yet effective → decline), **fDDA** (:mod:`.oda`; on failure the CTQ decides: "go online if
   ODA fails" on an online-capable reader → ONLINE_REQUEST, else "switch interface if ODA
   fails" on a reader with contact → TRY_ANOTHER_INTERFACE, else DECLINED), the **exception
   file** (PAN + PSN → TVR "card on exception file", DECLINED), then APPROVED_OFFLINE with the
   batch record. CTQ "signature required" records a signature CVM in 9F34.

Part 14 (:mod:`.capp`): with a terminal file and a record to write (``capp``) and a card that offers
Part 14, READ CAPP DATA runs before GPO (DF60 = 01 then) and UPDATE CAPP DATA CACHE after every
offline check has passed, so the trip record and the fare commit together or not at all.
With ``CappWrite(..., price=f)`` the amount is priced from the record read (``f(read) → (amount,
record)``, between READ CAPP DATA and GPO; 0 fen allowed): 9F02 and the AID row's indicators follow
the priced amount; a refusal declines before GPO with nothing changed on the card.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from citycard.crypto.iad import parse_iad
from citycard.emv.bits import CTQ, CVR, TTQ, Bits
from citycard.emv.dol import DOLError
from citycard.kernel import capp as part14
from citycard.kernel import oda, records, selection
from citycard.kernel.card_link import CardGoneError, CardLink, CardLinkError, parse_template
from citycard.kernel.context import Terminal, Transaction, fen, n12
from citycard.kernel.online import AcquirerLink, OnlineError, parse_issuer_response
from citycard.kernel.outcome import BATCH_TAGS, BatchRecord, Outcome, Result, Stop, field55
from citycard.kernel.params import AidParameters, ExceptionFileError
from citycard.reader.transport import Transport, TransportError

GPO_MANDATORY = ("82", "9F36", "9F26", "9F10")
TC_MANDATORY = ("5F24",)
SW_CONDITIONS_NOT_SATISFIED = 0x6985
CID_TC, CID_ARQC, CID_AAC = 0x40, 0x80, 0x00
CVM_SIGNATURE = bytes.fromhex("1E0000")  # 9F34: signature, always, result unknown (Book 4 A4)
CVM_ONLINE_PIN = bytes.fromhex("020000")  # 9F34: enciphered PIN online
CVR_FIRST_GAC = {"first_gac_returned_aac": CID_AAC, "first_gac_returned_tc": CID_TC}


@dataclass(frozen=True, slots=True)
class Allowed:
    """The pre-processing result of one AID row (Book B §3.1.1 indicators)."""

    params: AidParameters
    ec: bool  # 9F7A = 01
    online_required: bool
    cvm_required: bool


def pre_processing(tx: Transaction, row: AidParameters) -> Allowed | None:
    """Step 1 for one AID row; None when the row may not be used contactless for this amount."""
    amount = tx.amount_fen
    if amount >= row.contactless_transaction_limit_fen:
        return None
    ec = row.ec_supported and amount <= row.ec_terminal_limit_fen
    floor = row.ec_terminal_limit_fen if ec else row.contactless_offline_floor_limit_fen
    online_required = amount > floor
    if online_required and not tx.profile.online_capable(row):
        return None
    return Allowed(row, ec, online_required, amount >= row.contactless_cvm_limit_fen)


def _pre_process_all(tx: Transaction, terminal: Terminal) -> dict[bytes, Allowed]:
    allowed: dict[bytes, Allowed] = {}
    for row in terminal.aids:
        result = pre_processing(tx, row)
        if result is not None:
            allowed[row.aid] = result
    if not allowed:
        raise Stop(
            Outcome.TRY_ANOTHER_INTERFACE,
            f"amount {tx.amount_fen} fen is not allowed contactless by any AID (limits DF20/9F7B/DF19)",
        )
    tx.log(
        "pre-processing",
        ", ".join(f"{aid.hex().upper()}{' EC' if a.ec else ''}" for aid, a in allowed.items()),
    )
    return allowed


def _select(link: CardLink, tx: Transaction, terminal: Terminal, allowed: dict[bytes, Allowed]) -> Allowed:
    def match(card_aid: bytes) -> AidParameters | None:
        row = terminal.aids.match(card_aid)
        return row if row is not None and row.aid in allowed else None

    candidates = selection.ppse_candidates(link, tx, match)
    for candidate in candidates:
        if selection.final_select(link, tx, candidate):
            return allowed[candidate.params.aid]
    raise Stop(Outcome.TRY_ANOTHER_INTERFACE, "no candidate application could be selected")


def _terminal_data(tx: Transaction, chosen: Allowed) -> None:
    """The per-transaction terminal data over the AID row's (Transaction.apply_aid)."""
    ttq = TTQ.new(tx.profile.ttq_for(chosen.params))  # from the row again: a repricing may clear bits
    for wanted, bit in (
        (chosen.online_required, "online_cryptogram_required"),
        (chosen.cvm_required, "cvm_required"),
    ):
        if wanted:
            ttq.set(bit)
    tx.terminal["9F66"] = bytes(ttq)
    tx.terminal["9F7A"] = b"\x01" if chosen.ec else b"\x00"
    capp = tx.profile.capp and bool(tx.card.get("DF61"))  # Part 14 only with a card that offers it
    tx.terminal["DF60"] = b"\x01" if capp else b"\x00"
    tx.terminal["9F7B"] = n12(chosen.params.ec_terminal_limit_fen)


def _reprice(tx: Transaction, chosen: Allowed, amount_fen: int) -> None:
    """The amount the caller priced after READ CAPP DATA (:func:`.capp.price`) replaces the
    pre-processing amount: 9F02 and the chosen row's indicators (EC, floor, CVM) follow it."""
    tx.amount_fen = amount_fen
    tx.terminal["9F02"] = n12(amount_fen)
    allowed = pre_processing(tx, chosen.params)
    if allowed is None:
        raise Stop(
            Outcome.TRY_ANOTHER_INTERFACE,
            f"priced amount {amount_fen} fen is not allowed contactless by AID {chosen.params.aid.hex().upper()}",
        )
    _terminal_data(tx, allowed)


def _cid(tx: Transaction) -> int:
    """9F27, or the AC type of the CVR in the PBOC IAD when the card leaves 9F27 out (pboc-notes §4.2)."""
    cid = tx.card.get("9F27")
    if cid is not None:
        if len(cid) != 1:
            raise Stop(Outcome.END_APPLICATION, f"CID (9F27) must be 1 byte, got {len(cid)}")
        return cid[0] & 0xC0
    cvr = CVR.new(parse_iad(tx.card["9F10"]).cvr)
    for option, value in CVR_FIRST_GAC.items():
        if cvr.is_set(option):
            return value
    return CID_ARQC if cvr.is_set("first_gac_returned_arqc") else -1


def gpo(link: CardLink, tx: Transaction) -> int:
    """Step 3: GET PROCESSING OPTIONS; store the 77 answer; return the CID (TC, ARQC, AAC)."""
    pdol = tx.card.get("9F38", b"")
    try:
        tx.pdol_data = tx.dol_data(pdol) if pdol else b""
    except DOLError as exc:
        raise Stop(Outcome.END_APPLICATION, f"PDOL (9F38): {exc}") from None
    reply = link.get_processing_options(tx.pdol_data)
    if reply.sw == SW_CONDITIONS_NOT_SATISFIED:
        tx.log("GPO", "6985: conditions of use not satisfied")
        raise Stop(Outcome.TRY_ANOTHER_INTERFACE, "GPO answered 6985 (conditions of use not satisfied)")
    if not reply.ok:
        raise Stop(Outcome.END_APPLICATION, f"GPO: card answered {reply.sw:04X}")
    try:
        template = parse_template(reply.data, "GET PROCESSING OPTIONS", "77", "80")
    except CardLinkError as exc:
        raise Stop(Outcome.END_APPLICATION, str(exc)) from None
    if template.tag == "80":
        raise Stop(Outcome.END_APPLICATION, "the card chose the full PBOC path (80): not a qPBOC answer")
    records.store(tx, template.children or [], "GPO")
    missing = [tag for tag in GPO_MANDATORY if not tx.card.get(tag)]
    if missing:
        tx.tvr.set("icc_data_missing")
        raise Stop(Outcome.END_APPLICATION, f"GPO answer lacks {', '.join(missing)}")
    try:
        iad = parse_iad(tx.card["9F10"])
        tx.suite = iad.suite
    except ValueError as exc:
        if "9F27" not in tx.card:
            raise Stop(Outcome.END_APPLICATION, f"no CID (9F27) and the IAD cannot be read: {exc}") from None
    cid = _cid(tx)
    names = {CID_TC: "TC", CID_ARQC: "ARQC", CID_AAC: "AAC"}
    if cid not in names:
        raise Stop(Outcome.END_APPLICATION, f"the card's cryptogram type is not TC, ARQC or AAC ({cid:02X})")
    suite = tx.suite.name if tx.suite else "?"
    tx.log("GPO", f"{names[cid]}, ATC {tx.card['9F36'].hex().upper()}, suite {suite}")
    return cid


def _ctq(tx: Transaction) -> Bits:
    value = tx.card.get("9F6C", b"\x00\x00")
    return CTQ.new(value if len(value) == 2 else b"\x00\x00")


def _online_or(tx: Transaction, ctq_bit: str, why: str) -> None:
    """An offline problem the CTQ may send online (or to the contact interface); else decline."""
    ctq = _ctq(tx)
    if ctq.is_set(ctq_bit) and tx.online_capable:
        raise Stop(Outcome.ONLINE_REQUEST, f"{why}: the card asks to go online")
    oda_problem = ctq_bit == "go_online_if_oda_fails"
    if oda_problem and ctq.is_set("switch_interface_if_oda_fails") and tx.contact_supported:
        raise Stop(Outcome.TRY_ANOTHER_INTERFACE, f"{why}: the card asks for the contact interface")
    raise Stop(Outcome.DECLINED, why)


def _date(value: bytes) -> dt.date | None:
    text = value.hex()
    if len(value) != 3 or not text.isdigit():
        return None
    try:
        return dt.date(2000 + int(text[:2]), int(text[2:4]), int(text[4:6]))
    except ValueError:
        return None


def processing_restrictions(tx: Transaction) -> None:
    """qPBOC processing restrictions: expiry (5F24) and effective date (5F25)."""
    expiry = _date(tx.card["5F24"])
    if expiry is None:
        raise Stop(Outcome.END_APPLICATION, f"expiry date (5F24) {tx.card['5F24'].hex()} is not YYMMDD")
    effective = _date(tx.card.get("5F25", b"")) if "5F25" in tx.card else None
    if effective is not None and effective > tx.today:
        tx.tvr.set("application_not_yet_effective")
        raise Stop(Outcome.DECLINED, f"application not yet effective (5F25 {effective})")
    if expiry < tx.today:
        tx.tvr.set("expired_application")
        _online_or(tx, "go_online_if_application_expired", f"application expired on {expiry}")
    tx.log("processing restrictions", f"valid to {expiry}")


def exception_file(tx: Transaction, terminal: Terminal) -> None:
    """The blacklist: PAN + PSN on the exception file → TVR bit, declined offline."""
    pan = tx.pan
    if terminal.exceptions is None or pan is None:
        tx.log("exception file", "none loaded" if terminal.exceptions is None else "no PAN")
        return
    tx.tsi.set("terminal_risk_management_performed")
    try:
        listed = terminal.exceptions.contains(pan, tx.psn)
    except ExceptionFileError as exc:  # a PAN or PSN the list cannot hold is not on it
        tx.log("exception file", f"not checked: {exc}")
        return
    if listed:
        tx.tvr.set("card_on_exception_file")
        tx.log("exception file", "card listed")
        raise Stop(Outcome.DECLINED, "card on the exception file (blacklist)")
    tx.log("exception file", "not listed")


def _online(tx: Transaction, acquirer: AcquirerLink | None, why: str) -> None:
    if not tx.online_capable:
        raise Stop(Outcome.DECLINED, f"{why}, but the reader is offline-only")
    if acquirer is None:
        raise Stop(Outcome.ONLINE_REQUEST, why)
    pan = tx.pan
    if pan is None:
        raise Stop(Outcome.END_APPLICATION, "online request without a PAN (5A or 57)")
    try:
        arc, ic_data = acquirer.authorise(
            field55(_field55_values(tx)),
            pan=pan,
            psn=tx.psn,
            amount_fen=tx.amount_fen,
            tag_5f24=tx.card.get("5F24"),
            tag_57=tx.card.get("57"),
        )
        response = parse_issuer_response(arc, ic_data)
    except OnlineError as exc:
        raise Stop(Outcome.DECLINED, f"{why}; unable to go online: {exc}") from None
    except ValueError as exc:
        raise Stop(Outcome.DECLINED, f"{why}; unusable issuer response: {exc}") from None
    tx.terminal["8A"] = response.arc
    tx.log("online", f"ARC {response.arc.decode('ascii', 'replace')}")
    if response.approved:
        raise Stop(
            Outcome.APPROVED_ONLINE, f"approved by the issuer ({response.arc.decode('ascii', 'replace')})"
        )
    raise Stop(Outcome.DECLINED, f"declined by the issuer ({response.arc.decode('ascii', 'replace')})")


def _cvm(tx: Transaction, cid: int) -> None:
    ctq = _ctq(tx)
    if cid == CID_ARQC and ctq.is_set("online_pin_required"):
        tx.cvm_results = CVM_ONLINE_PIN
    elif ctq.is_set("signature_required"):
        tx.cvm_results = CVM_SIGNATURE
    else:
        return
    tx.tsi.set("cardholder_verification_performed")


def _field55_values(tx: Transaction) -> dict[str, bytes]:
    values = tx.dol_values()
    if "9F27" not in values and "9F26" in values:
        try:
            cid = _cid(tx)
        except (Stop, ValueError):
            cid = -1
        if cid >= 0:
            values["9F27"] = bytes([cid])
    values["84"] = tx.aid or values.get("84", b"")
    return values


def _flow(
    link: CardLink,
    tx: Transaction,
    terminal: Terminal,
    acquirer: AcquirerLink | None,
    capp: tuple[part14.CappWrite, part14.CappSigner] | None,
) -> None:
    allowed = _pre_process_all(tx, terminal)
    chosen = _select(link, tx, terminal, allowed)
    _terminal_data(tx, chosen)
    if capp is not None and capp[0].price is not None and not part14.offered(tx):
        raise Stop(
            Outcome.END_APPLICATION, "the card offers no Part 14 file (DF61): the tap cannot be priced"
        )
    if capp is not None and part14.offered(tx):
        part14.read_capp_data(link, tx, capp[0])
        priced = part14.price(tx, capp[0])
        if priced is not None:
            _reprice(tx, chosen, priced)
    cid = gpo(link, tx)
    _cvm(tx, cid)
    if cid == CID_AAC:
        raise Stop(Outcome.DECLINED, "the card declined offline (AAC)")
    if cid == CID_ARQC:
        _online(tx, acquirer, "the card asks for online authorisation (ARQC)")
    records.require(tx, ("94",), "reading the records (AFL)")
    records.read_records(link, tx, tx.card["94"], equal_repeats_of=("GPO",))
    if tx.pan is None:
        tx.tvr.set("icc_data_missing")
        raise Stop(Outcome.END_APPLICATION, "missing mandatory data: PAN (5A or 57)")
    records.require(tx, TC_MANDATORY, "an offline approval")
    processing_restrictions(tx)
    if not oda.fdda(tx, terminal.capks):
        _online_or(tx, "go_online_if_oda_fails", "fDDA failed")
    exception_file(tx, terminal)
    if tx.terminal["DF60"] == b"\x01":
        if capp is None:
            raise AssertionError("DF60 = 01 without a Part 14 record to write")
        part14.update_capp_data_cache(link, tx, *capp)  # last: the card commits here
        raise Stop(
            Outcome.APPROVED_OFFLINE, "approved offline by the card (TC), fDDA passed, trip record written"
        )
    raise Stop(Outcome.APPROVED_OFFLINE, "approved offline by the card (TC), fDDA passed")


def run_qpboc(
    transport: Transport,
    terminal: Terminal,
    *,
    amount_fen: int,
    when: dt.datetime | None = None,
    unpredictable_number: bytes | None = None,
    transaction_type: int = 0x00,
    acquirer: AcquirerLink | None = None,
    capp: part14.CappWrite | None = None,
    capp_signer: part14.CappSigner | None = None,
) -> Result:
    """One qPBOC transaction with the card behind ``transport`` (see the module note).

    ``capp`` (the Part 14 file, record ID and the record to write) and ``capp_signer`` (the
    operator's MAC) make a Part 14 tap (:mod:`.capp`). A Part 14 terminal (``profile.capp``) must
    give both: with DF60 = 01 the card holds the purchase until its cache is updated
    (docs/card.md §5), so an approval without the update would be one the card never made.
    """
    if terminal.profile.capp and (capp is None or capp_signer is None):
        raise ValueError("a Part 14 terminal (profile.capp) needs capp (file, record) and capp_signer")
    if (capp is None) != (capp_signer is None):
        raise ValueError("give capp and capp_signer together")
    tx = Transaction.new(
        terminal.profile,
        amount_fen=amount_fen,
        interface="contactless",
        when=when,
        transaction_type=transaction_type,
        unpredictable_number=unpredictable_number,
    )
    link = CardLink(transport)
    try:
        transport.connect()
        _flow(link, tx, terminal, acquirer, (capp, capp_signer) if capp and capp_signer else None)
    except Stop as stop:
        return finish(tx, stop)
    except CardGoneError as exc:
        return finish(tx, Stop(Outcome.END_APPLICATION, f"card lost: {exc}"))
    except CardLinkError as exc:
        return finish(tx, Stop(Outcome.END_APPLICATION, str(exc)))
    except TransportError as exc:
        return finish(tx, Stop(Outcome.END_APPLICATION, f"reader: {exc}"))
    raise AssertionError("the qPBOC flow ended without an outcome")


def _batch_record(tx: Transaction, values: dict[str, bytes], ic_data: bytes) -> BatchRecord:
    pan, psn = tx.pan, tx.psn
    if pan is None:
        raise AssertionError("an offline approval without a PAN")
    fields = {name: values.get(tag, b"").hex().upper() for name, tag in BATCH_TAGS}
    return BatchRecord(
        pan=pan,
        psn=psn or "00",
        **fields,
        amount_fen=tx.amount_fen,
        balance_fen_after=_amount(values.get("9F5D")),
        field55=ic_data.hex().upper(),
    )


def _amount(tag_n12: bytes | None) -> int | None:
    if tag_n12 is None:
        return None
    try:
        return fen(tag_n12)
    except ValueError:
        return None


def finish(tx: Transaction, stop: Stop) -> Result:
    """The :class:`Result` of a transaction that reached ``stop``."""
    tx.reasons.append(stop.reason)
    tx.log("outcome", f"{stop.kind.value}: {stop.reason}")
    values = _field55_values(tx) if "9F26" in tx.card else tx.dol_values()
    ic_data = field55(values) if "9F26" in tx.card else b""
    batch = _batch_record(tx, values, ic_data) if stop.kind is Outcome.APPROVED_OFFLINE else None
    cid = values.get("9F27")
    # A Part 14 purchase the card never committed (no cache update): its 9F5D did not happen.
    uncommitted = tx.terminal.get("DF60") == b"\x01" and tx.capp_written is None
    return Result(
        kind=stop.kind,
        reasons=tuple(tx.reasons),
        tvr=bytes(tx.tvr),
        tsi=bytes(tx.tsi),
        cvm_results=tx.cvm_results,
        steps=tuple(tx.steps),
        interface=tx.interface,
        suite=tx.suite.name if tx.suite else None,
        aid=tx.aid,
        pan=tx.pan,
        psn=tx.psn,
        amount_fen=tx.amount_fen,
        cid=cid[0] if cid else None,
        field55=ic_data,
        batch_record=batch,
        balance_fen_after=None if uncommitted else _amount(tx.card.get("9F5D")),
        authorisation_response_code=tx.terminal.get("8A"),
        script_results=tx.terminal.get("DF31", b""),
        capp_record_read=tx.capp_read,
        capp_record_written=tx.capp_written,
        data=values,
    )
