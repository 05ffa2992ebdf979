"""READ RECORD, GET DATA, VERIFY, GET CHALLENGE, INTERNAL AUTHENTICATE (EMV Book 3 §6.5; JR/T 0025.5).

Choices (documented): READ RECORD is allowed before GPO — terminals read the transaction and load
logs (9F4D/DF4D) right after SELECT (JR/T 0025.13 log reading) — and serves the personalised
records, the log files and the cyclic Part 14 files; a record rewritten for this transaction (9F69
for fDDA 01) is served as rewritten. VERIFY (plaintext PIN, P2 80) is taken between GPO and the first
GENERATE AC; an enciphered PIN (P2 88) is not supported (6A86). INTERNAL AUTHENTICATE is taken
before the first GENERATE AC, in the transaction's suite or, before GPO, the card's default suite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from citycard.card import sw
from citycard.card.apdu import Command, Response
from citycard.card.application import CardContext
from citycard.card.pboc.capp import CYCLIC, RIGHT_FREE
from citycard.card.pboc.data import GET_DATA_TAGS, n12
from citycard.card.pboc.gpo import choose_suite
from citycard.card.pboc.state import Stage
from citycard.card.sw import CardError, pin_tries_left
from citycard.crypto import oda
from citycard.emv.tlv import encode_one

if TYPE_CHECKING:
    from citycard.card.pboc.application import PbocApplication

CHALLENGE_BYTES = 8
ICC_DYNAMIC_NUMBER_BYTES = 8
DDOL_DATA_BYTES_MAX = 128


def read_record(app: PbocApplication, command: Command, ctx: CardContext) -> Response:
    """00 B2 rec (SFI<<3)|04: a record of an AEF, a log file or a cyclic Part 14 file."""
    if command.p2 & 0x07 != 0x04 or command.p1 == 0:
        raise CardError(sw.INCORRECT_P1_P2, "READ RECORD takes P1 = record (≥ 1) and P2 = SFI << 3 | 4")
    sfi, number = command.p2 >> 3, command.p1
    patched = app.txn.patched_records.get((sfi, number))
    if patched is not None:
        return Response(patched)
    record = app.data.records.get((sfi, number))
    if record is not None:
        return Response(record)
    if any(s == sfi for s, _ in app.data.records):
        raise CardError(sw.RECORD_NOT_FOUND, f"SFI {sfi} has no record {number}")
    log = app.logs.file(sfi)
    if log is not None:
        entry = log.record(number)
        if entry is None:
            raise CardError(sw.RECORD_NOT_FOUND, f"log SFI {sfi} holds {len(log.entries)} records")
        return Response(entry)
    file = app.capp.files.get(sfi)
    if file is not None and file.kind == CYCLIC:
        if file.read_right != RIGHT_FREE:
            raise CardError(sw.SECURITY_STATUS_NOT_SATISFIED, f"SFI {sfi:02X} is not freely readable")
        if not 1 <= number <= len(file.cyclic):
            raise CardError(sw.RECORD_NOT_FOUND, f"cyclic SFI {sfi:02X} holds {len(file.cyclic)} records")
        return Response(file.cyclic[number - 1])
    raise CardError(sw.FILE_NOT_FOUND, f"no file with SFI {sfi}")


def get_data(app: PbocApplication, command: Command, ctx: CardContext) -> Response:
    """80 CA P1P2: ``tag L value`` for the objects of :data:`~citycard.card.pboc.data.GET_DATA_TAGS`."""
    tag = f"{command.p1:02X}{command.p2:02X}"
    if tag not in GET_DATA_TAGS:
        raise CardError(sw.REFERENCED_DATA_NOT_FOUND, f"GET DATA {tag}: not an object this card answers")
    counters = app.counters
    state = {
        "9F36": counters.atc.to_bytes(2, "big"),
        "9F13": counters.last_online_atc.to_bytes(2, "big"),
        "9F17": bytes([counters.pin_tries_left]),
        "9F79": None if counters.ec_balance_fen is None else n12(counters.ec_balance_fen),
    }
    value = state[tag] if tag in state else app.data.tag(tag)
    if value is None:
        raise CardError(sw.REFERENCED_DATA_NOT_FOUND, f"GET DATA {tag}: not personalised on this card")
    return Response(encode_one(tag, value))


def verify(app: PbocApplication, command: Command, ctx: CardContext) -> Response:
    """00 20 00 80 08 PIN block (ISO 9564 format 2): offline plaintext PIN with the try counter."""
    if command.p1 != 0 or command.p2 != 0x80:
        raise CardError(
            sw.INCORRECT_P1_P2, "VERIFY takes P1 00 and P2 80 (plaintext PIN; 88 is not supported)"
        )
    if len(command.data) != 8:
        raise CardError(sw.WRONG_LENGTH, f"VERIFY data is the 8-byte PIN block, got {len(command.data)}")
    txn, counters, secrets = app.txn, app.counters, app.secrets
    if secrets.pin_block is None:
        raise CardError(sw.REFERENCED_DATA_NOT_FOUND, "this card has no offline PIN")
    if txn.stage != Stage.PROCESSING:
        raise CardError(sw.CONDITIONS_NOT_SATISFIED, "VERIFY between GPO and the first GENERATE AC")
    if counters.pin_tries_left == 0:
        raise CardError(sw.AUTHENTICATION_METHOD_BLOCKED, "PIN try limit exceeded")
    if command.data[0] >> 4 != 0x2:
        raise CardError(sw.WRONG_DATA, "PIN block must be ISO 9564 format 2 (control nibble 2)")
    txn.offline_pin_performed = True
    if command.data == secrets.pin_block:
        txn.offline_pin_failed = False
        counters.pin_tries_left = counters.pin_try_limit
        ctx.save()
        return Response()
    txn.offline_pin_failed = True
    counters.pin_tries_left -= 1
    ctx.save()
    raise CardError(pin_tries_left(counters.pin_tries_left), "wrong PIN")


def get_challenge(app: PbocApplication, command: Command, ctx: CardContext) -> Response:
    """00 84 00 00 00|08: an 8-byte card random."""
    if command.p1 or command.p2:
        raise CardError(sw.INCORRECT_P1_P2, "GET CHALLENGE takes P1 P2 = 00 00")
    if command.data or command.le not in (None, CHALLENGE_BYTES, 256):
        raise CardError(sw.WRONG_LENGTH, "GET CHALLENGE answers 8 bytes (Le 00 or 08, no data)")
    app.txn.challenge = ctx.random_bytes(CHALLENGE_BYTES)
    return Response(app.txn.challenge)


def internal_authenticate(app: PbocApplication, command: Command, ctx: CardContext) -> Response:
    """00 88 00 00 Lc DDOL-data: DDA, answered in format 1 ``80 L 9F4B-value``."""
    if command.p1 or command.p2:
        raise CardError(sw.INCORRECT_P1_P2, "INTERNAL AUTHENTICATE takes P1 P2 = 00 00")
    if not 1 <= len(command.data) <= DDOL_DATA_BYTES_MAX:
        raise CardError(sw.WRONG_LENGTH, f"DDOL data must be 1 to {DDOL_DATA_BYTES_MAX} bytes")
    txn = app.txn
    if txn.stage not in (Stage.SELECTED, Stage.PROCESSING):
        raise CardError(sw.CONDITIONS_NOT_SATISFIED, "INTERNAL AUTHENTICATE before the first GENERATE AC")
    suite = txn.suite or choose_suite(app.secrets.suites(), None)
    key = app.secrets.icc_key(suite)
    if key is None:
        raise CardError(sw.CONDITIONS_NOT_SATISFIED, f"no ICC private key for the {suite.name} suite")
    dynamic = oda.icc_dynamic_data(ctx.random_bytes(ICC_DYNAMIC_NUMBER_BYTES))
    signature = oda.sign_dynamic_data(key, dynamic, command.data, suite=suite)
    txn.dda_performed = True
    return Response(encode_one("80", signature))
