"""GENERATE AC (first and second), EXTERNAL AUTHENTICATE, and the cryptogram both GAC and qPBOC use.

EMV Book 3 §6.5.5 / §9.3, Book 2 §8 (ARPC), §6.6 (CDA); JR/T 0025.5/.7 as digested in pboc-notes §4.2
(AC input 9F02‖9F03‖9F1A‖95‖5F2A‖9A‖9C‖9F37‖82‖9F36‖CVR) and §2.4 (IAD with the EC balance MAC).

Response format (a choice, documented): without CDA the card answers format 1,
``80 (CID ‖ ATC ‖ AC ‖ IAD)``, as issued PBOC cards do; with CDA (P1 b5, TC or ARQC) format 2,
``77 (9F27, 9F36, 9F4B, 9F10)`` with 9F4B = :func:`citycard.crypto.oda.sign_cda`. CDA is never
applied to an AAC (Book 2 §6.6). A CDOL value missing from the AC input is zero-filled.

Issuer authentication: ARPC method 1 either from EXTERNAL AUTHENTICATE (``00 82 00 00 0A
ARPC‖ARC``; failure → 6300) or from tag 91 (ARPC ‖ ARC, 10 bytes) in the CDOL2 data; the result goes
in the CVR, and a failure sets the persistent "issuer authentication failed" flag.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from citycard.card import sw
from citycard.card.apdu import Command, Response
from citycard.card.application import CardContext
from citycard.card.pboc import logs
from citycard.card.pboc.data import AIDS, fen, n12
from citycard.card.pboc.risk import (
    Ac,
    Decision,
    OnlineResult,
    RiskInput,
    first_generate_ac,
    second_generate_ac,
)
from citycard.card.pboc.state import Stage, Transaction
from citycard.card.sw import CardError
from citycard.crypto import keys, oda
from citycard.crypto.cryptogram import generate_ac, pboc_ac_data, verify_arpc
from citycard.crypto.iad import build_iad
from citycard.emv.bits import AIP, TVR
from citycard.emv.dol import DOLError, fit, split_dol_data
from citycard.emv.tags import tag_info
from citycard.emv.tlv import encode_one

if TYPE_CHECKING:
    from citycard.card.pboc.application import PbocApplication

AUTHENTICATION_FAILED = 0x6300  # EXTERNAL AUTHENTICATE: issuer authentication failed (Book 3 §6.5.4.4)
KEY_AC, KEY_MAC, KEY_ENC = 0, 1, 2
AC_INPUT = (("9F02", 6), ("9F03", 6), ("9F1A", 2), ("95", 5), ("5F2A", 2), ("9A", 3), ("9C", 1), ("9F37", 4))
ICC_DYNAMIC_NUMBER_BYTES = 8


# --- shared by GENERATE AC and the qPBOC GPO ---------------------------------------------------


def session_key(app: PbocApplication, txn: Transaction, which: int) -> bytes:
    """The AC, MAC or ENC session key of this transaction (PBOC process key, pboc-notes §4.1)."""
    if txn.suite is None:
        raise AssertionError("a session key before GET PROCESSING OPTIONS chose the suite")
    card_key = app.secrets.keys[txn.suite.name][which]
    return keys.session_key(card_key, tag_9f36=txn.atc, suite=txn.suite)


def cryptogram(
    app: PbocApplication, txn: Transaction, *, cvr: bytes, balance_fen: int | None
) -> tuple[bytes, bytes]:
    """(AC, IAD) over this transaction's terminal data; ``balance_fen`` is the EC balance to report."""
    if txn.suite is None:
        raise AssertionError("a cryptogram before GET PROCESSING OPTIONS chose the suite")
    given = {tag: fit(txn.values.get(tag, b""), size, tag_info(tag).format) for tag, size in AC_INPUT}
    data = pboc_ac_data(
        tag_9f02=given["9F02"],
        tag_9f03=given["9F03"],
        tag_9f1a=given["9F1A"],
        tag_95=given["95"],
        tag_5f2a=given["5F2A"],
        tag_9a=given["9A"],
        tag_9c=given["9C"],
        tag_9f37=given["9F37"],
        tag_82=txn.aip,
        tag_9f36=txn.atc,
        cvr=b"\x03" + cvr,
    )
    ac = generate_ac(session_key(app, txn, KEY_AC), data, suite=txn.suite)
    template = app.data.tag("9F10") or b""  # optional 0D01 template: DKI and CVN
    dki, cvn = (template[1], template[2]) if len(template) >= 3 else (0x01, 0x01)
    iad = build_iad(
        dki=dki,
        cvn=cvn,
        cvr=cvr,
        suite=txn.suite,
        ec_balance_fen=balance_fen,
        mac_session_key=session_key(app, txn, KEY_MAC) if balance_fen is not None else None,
        tag_9f36=txn.atc,
    )
    return ac, iad


def amount_fen(txn: Transaction) -> int:
    value = txn.values.get("9F02")
    return 0 if value is None else fen(value, tag="9F02")


def risk_input(app: PbocApplication, txn: Transaction, requested: Ac) -> RiskInput:
    """The plain values card risk management looks at, from the state and the transaction."""
    counters, data = app.counters, app.data
    currency, app_currency = txn.values.get("5F2A"), data.tag("9F51")
    return RiskInput(
        requested=requested,
        amount_fen=amount_fen(txn),
        currency_matches=currency is None or app_currency is None or currency == app_currency,
        flags=frozenset(counters.flags),
        new_card=counters.last_online_atc == 0,
        pin_tries_left=counters.pin_tries_left,
        offline_pin_performed=txn.offline_pin_performed,
        offline_pin_failed=txn.offline_pin_failed,
        dda_performed=txn.dda_performed,
        script_counter=counters.script_counter,
        consecutive_offline=counters.consecutive_offline,
        cumulative_offline_fen=counters.cumulative_offline_fen,
        lower_consecutive_limit=data.byte("9F58"),
        upper_consecutive_limit=data.byte("9F59"),
        cumulative_limit_fen=data.money("9F54"),
        upper_cumulative_limit_fen=data.money("9F5C"),
        application_blocked=counters.application_blocked,
        ec_requested=txn.ec_requested,
        ec_only=AIDS[app.aid] == "electronic cash",
        ec_balance_fen=counters.ec_balance_fen,
        ec_single_limit_fen=data.money("9F78"),
        ec_reset_threshold_fen=data.money("9F6D") or 0,
    )


def write_log(app: PbocApplication, txn: Transaction, *, cid: int, ac: bytes) -> None:
    """One 9F4D record for an approved transaction (logs module note)."""
    log, fmt = app.logs.transaction, app.data.tag("9F4F")
    if log is None or fmt is None:
        return
    card_values = {"9F36": txn.atc, "9F27": bytes([cid]), "9F26": ac, "82": txn.aip}
    if app.counters.ec_balance_fen is not None:
        card_values["9F79"] = n12(app.counters.ec_balance_fen)
    log.append(logs.transaction_entry(fmt, {**txn.values, **card_values}))


def count_offline_approval(app: PbocApplication, txn: Transaction, risk: RiskInput) -> None:
    app.counters.consecutive_offline += 1
    if risk.currency_matches:
        app.counters.cumulative_offline_fen += risk.amount_fen


def note_offline_decline(app: PbocApplication, txn: Transaction) -> None:
    """An offline AAC with SDA/DDA/CDA failed in the TVR: report it next time (VIS-style flags)."""
    tvr = txn.values.get("95")
    if tvr is None or len(tvr) != 5:
        return
    bits = TVR.new(tvr)
    if bits.is_set("sda_failed"):
        app.counters.flags.add("sda_failed_last")
    if bits.is_set("dda_failed") or bits.is_set("cda_failed"):
        app.counters.flags.add("dda_failed_last")


def _p1(command: Command) -> tuple[Ac, bool]:
    if command.p2 != 0 or command.p1 & 0x2F:
        raise CardError(sw.INCORRECT_P1_P2, f"GENERATE AC P1 {command.p1:02X} P2 {command.p2:02X}")
    try:
        return Ac.from_p1(command.p1), bool(command.p1 & 0x10)
    except ValueError as exc:
        raise CardError(sw.INCORRECT_P1_P2, str(exc)) from exc


def _split(dol_tag: str, dol: bytes | None, data: bytes) -> dict[str, bytes]:
    try:
        return split_dol_data(dol or b"", data)
    except DOLError as exc:
        raise CardError(sw.WRONG_LENGTH, f"{dol_tag} data: {exc}") from exc


def _answer(
    app: PbocApplication, txn: Transaction, ctx: CardContext, *, ac_type: Ac, ac: bytes, iad: bytes, cda: bool
) -> Response:
    cid = bytes([ac_type.cid])
    if not cda or ac_type == Ac.AAC:
        return Response(encode_one("80", cid + txn.atc + ac + iad))
    if txn.suite is None:
        raise AssertionError("CDA before GET PROCESSING OPTIONS")
    tlvs = encode_one("9F27", cid) + encode_one("9F36", txn.atc) + encode_one("9F10", iad)
    signature = oda.sign_cda(
        app.secrets.icc_key(txn.suite),
        tag_9f4c=ctx.random_bytes(ICC_DYNAMIC_NUMBER_BYTES),
        tag_9f27=cid,
        tag_9f26=ac,
        tag_9f37=txn.values["9F37"],
        pdol_data=txn.pdol_data,
        cdol1_data=txn.cdol1_data,
        cdol2_data=txn.cdol2_data,
        response_tlvs=tlvs,
        suite=txn.suite,
    )
    body = encode_one("9F27", cid) + encode_one("9F36", txn.atc) + encode_one("9F4B", signature)
    return Response(encode_one("77", body + encode_one("9F10", iad)))


def _check_cda(app: PbocApplication, txn: Transaction, cda: bool) -> None:
    if not cda:
        return
    if (
        txn.suite is None
        or app.secrets.icc_key(txn.suite) is None
        or not AIP.new(txn.aip).is_set("cda_supported")
    ):
        raise CardError(sw.CONDITIONS_NOT_SATISFIED, "CDA requested but the card does not support it")
    if len(txn.values.get("9F37", b"")) != 4:
        raise CardError(sw.CONDITIONS_NOT_SATISFIED, "CDA needs the unpredictable number 9F37 in the CDOL")


# --- the commands ------------------------------------------------------------------------------


def generate_ac_command(app: PbocApplication, command: Command, ctx: CardContext) -> Response:
    """80 AE: first GENERATE AC after GPO, second after an ARQC; any other time 6985."""
    txn = app.txn
    requested, cda = _p1(command)
    if txn.stage == Stage.PROCESSING and txn.path == "contact":
        return _first(app, txn, command, ctx, requested, cda)
    if txn.stage == Stage.FIRST_AC:
        return _second(app, txn, command, ctx, requested, cda)
    raise CardError(
        sw.CONDITIONS_NOT_SATISFIED,
        f"GENERATE AC not expected now ({txn.stage.name}, {txn.path or 'no GPO'})",
    )


def _first(
    app: PbocApplication, txn: Transaction, command: Command, ctx: CardContext, requested: Ac, cda: bool
) -> Response:
    values = _split("CDOL1", app.data.tag("8C"), command.data)
    txn.cdol1_data = command.data
    txn.values.update(values)
    _check_cda(app, txn, cda)
    risk = risk_input(app, txn, requested)
    decision = first_generate_ac(risk)
    counters = app.counters
    balance = counters.ec_balance_fen
    if decision.ec_approved and balance is not None:
        balance -= risk.amount_fen
    ac, iad = cryptogram(app, txn, cvr=decision.cvr, balance_fen=balance)
    response = _answer(app, txn, ctx, ac_type=decision.ac, ac=ac, iad=iad, cda=cda)
    if decision.ac == Ac.TC:
        if decision.ec_approved:
            counters.ec_balance_fen = balance
        else:
            count_offline_approval(app, txn, risk)
        write_log(app, txn, cid=decision.ac.cid, ac=ac)
        txn.stage = Stage.COMPLETED
    elif decision.ac == Ac.ARQC:
        counters.flags.add("online_not_completed")
        txn.arqc, txn.first_cvr, txn.stage = ac, decision.cvr, Stage.FIRST_AC
    else:
        note_offline_decline(app, txn)
        txn.stage = Stage.COMPLETED
    ctx.save()
    return response


def _issuer_auth(app: PbocApplication, txn: Transaction, values: dict[str, bytes]) -> str:
    if txn.issuer_auth:
        return txn.issuer_auth
    data = values.get("91", b"")
    if len(data) < 10 or not any(data) or txn.arqc is None or txn.suite is None:
        return ""
    good = verify_arpc(
        session_key(app, txn, KEY_AC), tag_9f26=txn.arqc, tag_8a=data[8:10], arpc=data[:8], suite=txn.suite
    )
    return "passed" if good else "failed"


def _second(
    app: PbocApplication, txn: Transaction, command: Command, ctx: CardContext, requested: Ac, cda: bool
) -> Response:
    if requested == Ac.ARQC:
        raise CardError(sw.INCORRECT_P1_P2, "the second GENERATE AC asks for a TC or an AAC, not an ARQC")
    values = _split("CDOL2", app.data.tag("8D"), command.data)
    txn.cdol2_data = command.data
    txn.values.update(values)
    _check_cda(app, txn, cda)
    issuer_auth = _issuer_auth(app, txn, values)
    online = OnlineResult(
        requested=requested,
        tag_8a=values.get("8A", b"\x00\x00"),
        issuer_auth=issuer_auth,
        issuer_auth_supported=AIP.new(txn.aip).is_set("issuer_authentication_supported"),
        issuer_auth_mandatory=bool((app.data.byte("9F56") or 0) & 0x80),
    )
    risk = risk_input(app, txn, requested)
    decision = second_generate_ac(txn.first_cvr, risk, online)
    ac, iad = cryptogram(app, txn, cvr=decision.cvr, balance_fen=app.counters.ec_balance_fen)
    response = _answer(app, txn, ctx, ac_type=decision.ac, ac=ac, iad=iad, cda=cda)
    _after_second(app, txn, risk, online, decision, ac)
    txn.stage = Stage.COMPLETED
    ctx.save()
    return response


def _after_second(
    app: PbocApplication,
    txn: Transaction,
    risk: RiskInput,
    online: OnlineResult,
    decision: Decision,
    ac: bytes,
) -> None:
    """State changes of the second GENERATE AC (reset of the online counters on an online approval)."""
    counters = app.counters
    counters.flags.discard("online_not_completed")
    mandatory_missing = (
        online.issuer_auth == "" and online.issuer_auth_supported and online.issuer_auth_mandatory
    )
    if online.issuer_auth == "failed" or (mandatory_missing and online.tag_8a not in {b"Y3", b"Z3"}):
        counters.flags.add("issuer_auth_failed_last")
    unable = online.tag_8a in {b"Y3", b"Z3"}
    if decision.ac == Ac.TC and not unable:
        counters.last_online_atc = int.from_bytes(txn.atc, "big")
        counters.consecutive_offline = counters.cumulative_offline_fen = 0
        counters.flags -= {"sda_failed_last", "dda_failed_last"}
        if online.issuer_auth == "passed":
            counters.flags -= {"issuer_auth_failed_last", "script_failed_last"}
            counters.script_counter = 0
    if decision.ac == Ac.TC:
        if unable:
            count_offline_approval(app, txn, risk)
        write_log(app, txn, cid=decision.ac.cid, ac=ac)
    elif unable:
        note_offline_decline(app, txn)


def external_authenticate(app: PbocApplication, command: Command, ctx: CardContext) -> Response:
    """00 82 00 00 0A ARPC ‖ ARC: issuer authentication before the second GENERATE AC."""
    if command.p1 or command.p2:
        raise CardError(sw.INCORRECT_P1_P2, "EXTERNAL AUTHENTICATE takes P1 P2 = 00 00")
    if len(command.data) != 10:
        raise CardError(
            sw.WRONG_LENGTH, f"EXTERNAL AUTHENTICATE data is ARPC (8) ‖ ARC (2), got {len(command.data)}"
        )
    txn = app.txn
    if txn.stage != Stage.FIRST_AC or txn.issuer_auth or txn.arqc is None or txn.suite is None:
        raise CardError(sw.CONDITIONS_NOT_SATISFIED, "EXTERNAL AUTHENTICATE only once, after an ARQC")
    good = verify_arpc(
        session_key(app, txn, KEY_AC),
        tag_9f26=txn.arqc,
        tag_8a=command.data[8:10],
        arpc=command.data[:8],
        suite=txn.suite,
    )
    txn.issuer_auth = "passed" if good else "failed"
    if not good:
        app.counters.flags.add("issuer_auth_failed_last")
        ctx.save()
        raise CardError(AUTHENTICATION_FAILED, "ARPC does not verify")
    return Response()
