"""Issuer script commands with secure messaging (EMV Book 3 §6.5; JR/T 0025.5; pboc-notes §3, §4.4, §6).

Commands: PUT DATA ``04 DA tag`` (9F79 = electronic-cash top-up 圈存 with the absolute new balance,
and the limits of :data:`citycard.card.pboc.data.PUT_DATA_TAGS`), APPLICATION BLOCK ``84 1E``,
APPLICATION UNBLOCK ``84 18``, CARD BLOCK ``84 16``, PIN CHANGE/UNBLOCK ``84 24 00 00|01|02``.

Order of checks: secure messaging in the CLA (else 6982) → an ARQC in this transaction, from the
first GENERATE AC or a qPBOC GPO (else 6985) → P1/P2 and lengths (6A86, 6A88, 6700) → the MAC over
CLA INS P1 P2 Lc ‖ ATC ‖ ARQC ‖ data with the MAC session key (else 6988) → the command itself.

Choices (documented): a top-up above the EC balance limit 9F77 is refused with 6A80 (the value is
wrong data; the balance is unchanged). Every script command received counts in the CVR script
counter (saturating at 15); a wrong MAC or any refusal after the MAC sets the persistent "issuer
script failed" flag. Both are cleared by the next online approval with a successful issuer
authentication (:mod:`.generate_ac`). PIN CHANGE data: the ENC-session-key encipherment of
``08 ‖ PIN block`` (:func:`citycard.crypto.script.pin_change_block`, D1 from the card AC key); P2 00
only unblocks (resets the PIN try counter), 01 changes with the current PIN, 02 without; a change
also resets the try counter. CARD BLOCK calls ``ctx.block_card()`` and sets the persistent
:attr:`PbocApplication.blocks_card`, which the OS also reads.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING

from citycard.card import sw
from citycard.card.apdu import Command, Response
from citycard.card.application import CardContext
from citycard.card.pboc import logs
from citycard.card.pboc.data import PUT_DATA_TAGS, fen, n12
from citycard.card.pboc.generate_ac import KEY_AC, KEY_ENC, KEY_MAC, session_key
from citycard.card.pboc.perso import pin_block_of, pin_digits
from citycard.card.pboc.state import SCRIPT_COUNTER_MAX
from citycard.card.sw import CardError
from citycard.crypto.blockcipher import xor
from citycard.crypto.script import SCRIPT_MAC_BYTES, decipher_script_data, script_mac

if TYPE_CHECKING:
    from citycard.card.pboc.application import PbocApplication

PIN_DATA_BYTES = 9  # 08 ‖ 8-byte PIN block, before padding and encipherment


def _check(app: PbocApplication, command: Command, body: bytes) -> None:
    """P1/P2 and length checks before the MAC is looked at."""
    ins = command.ins
    if ins == 0xDA:
        tag = f"{command.p1:02X}{command.p2:02X}"
        size = PUT_DATA_TAGS.get(tag)
        if size is None or (tag == "9F79" and app.counters.ec_balance_fen is None):
            raise CardError(
                sw.REFERENCED_DATA_NOT_FOUND, f"PUT DATA {tag}: not a data object the issuer may set"
            )
        if len(body) != size:
            raise CardError(
                sw.WRONG_LENGTH, f"PUT DATA {tag}: value is {size} bytes + 4 MAC, got {len(body)} + 4"
            )
        return
    if ins == 0x24:
        if command.p1 or command.p2 > 2:
            raise CardError(sw.INCORRECT_P1_P2, "PIN CHANGE/UNBLOCK takes P1 00 and P2 00, 01 or 02")
        suite = app.txn.suite
        expected = 0 if command.p2 == 0 else -(-(PIN_DATA_BYTES + 1) // suite.block_bytes) * suite.block_bytes
        if len(body) != expected:
            raise CardError(
                sw.WRONG_LENGTH, f"PIN CHANGE/UNBLOCK P2 {command.p2:02X}: {expected} data bytes + MAC"
            )
        return
    if command.p1 or command.p2:
        raise CardError(sw.INCORRECT_P1_P2, f"INS {ins:02X} takes P1 P2 = 00 00")
    if body:
        raise CardError(sw.WRONG_LENGTH, f"INS {ins:02X} carries only the 4-byte MAC")


def _put_data(app: PbocApplication, command: Command, body: bytes, ctx: CardContext) -> None:
    tag = f"{command.p1:02X}{command.p2:02X}"
    if tag != "9F79":
        if tag in {"9F77", "9F78", "9F6D", "9F6B", "9F54", "9F5C"}:
            fen(body, tag=tag)  # BCD check
        app.data.set_object(tag, body)
        return
    new_balance = fen(body, tag="9F79")
    limit = app.data.money("9F77")
    if limit is not None and new_balance > limit:
        raise CardError(
            sw.WRONG_DATA, f"EC top-up to {new_balance} fen exceeds the balance limit 9F77 {limit} fen"
        )
    before = app.counters.ec_balance_fen or 0
    app.counters.ec_balance_fen = new_balance
    log, fmt = app.logs.load, app.data.tag("DF4F")
    if log is not None and fmt is not None:
        values = {**app.txn.values, "9F36": app.txn.atc, "9F79": n12(new_balance)}
        log.append(
            logs.load_entry(
                fmt, p1p2=b"\x9f\x79", balance_fen_before=before, balance_fen_after=new_balance, values=values
            )
        )


def _pin_change(app: PbocApplication, command: Command, body: bytes, ctx: CardContext) -> None:
    counters, secrets, txn = app.counters, app.secrets, app.txn
    if command.p2 != 0:
        try:
            plain = decipher_script_data(session_key(app, txn, KEY_ENC), body, suite=txn.suite)
        except ValueError as exc:
            raise CardError(sw.WRONG_DATA, f"PIN data does not decipher: {exc}") from exc
        if len(plain) != PIN_DATA_BYTES or plain[0] != 0x08:
            raise CardError(sw.WRONG_DATA, "deciphered PIN data must be 08 ‖ 8-byte PIN block")
        card_ac_key = secrets.keys[txn.suite.name][KEY_AC]
        block = xor(plain[1:], bytes(4) + card_ac_key[4:8])
        if command.p2 == 1:
            if secrets.pin_block is None:
                raise CardError(
                    sw.CONDITIONS_NOT_SATISFIED, "PIN change with the current PIN, but the card has no PIN"
                )
            block = xor(block, bytes.fromhex(pin_digits(secrets.pin_block).ljust(16, "0")))
        text = block.hex().upper()
        count = int(text[:2], 16)
        digits = text[2 : 2 + count]
        if set(text[2 + count :]) - {"F"}:
            raise CardError(sw.WRONG_DATA, "new PIN block is not 0N ‖ PIN ‖ F…")
        try:
            secrets.pin_block = pin_block_of(digits)
        except ValueError as exc:
            raise CardError(sw.WRONG_DATA, f"new PIN: {exc}") from exc
    counters.pin_tries_left = counters.pin_try_limit


def _set_blocked(value: bool) -> Callable[[PbocApplication, Command, bytes, CardContext], None]:
    def apply(app: PbocApplication, command: Command, body: bytes, ctx: CardContext) -> None:
        app.counters.application_blocked = value

    return apply


def _card_block(app: PbocApplication, command: Command, body: bytes, ctx: CardContext) -> None:
    app.counters.card_blocked = True
    ctx.block_card()  # the OS blocks every application and saves at once


COMMANDS: dict[int, Callable[[PbocApplication, Command, bytes, CardContext], None]] = {
    0xDA: _put_data,
    0x1E: _set_blocked(True),
    0x18: _set_blocked(False),
    0x16: _card_block,
    0x24: _pin_change,
}


def script_command(app: PbocApplication, command: Command, ctx: CardContext) -> Response:
    """One issuer script command (module note for the order of checks and the choices)."""
    if not command.secure_messaging:
        raise CardError(
            sw.SECURITY_STATUS_NOT_SATISFIED, f"INS {command.ins:02X} needs secure messaging (CLA 04/84)"
        )
    txn = app.txn
    if txn.arqc is None or txn.suite is None:
        raise CardError(sw.CONDITIONS_NOT_SATISFIED, "issuer script without an ARQC in this transaction")
    if len(command.data) < SCRIPT_MAC_BYTES:
        raise CardError(sw.WRONG_LENGTH, "issuer script command without its 4-byte MAC")
    body, mac = command.data[:-SCRIPT_MAC_BYTES], command.data[-SCRIPT_MAC_BYTES:]
    _check(app, command, body)
    counters = app.counters
    counters.script_counter = min(counters.script_counter + 1, SCRIPT_COUNTER_MAX)
    expected = script_mac(
        session_key(app, txn, KEY_MAC),
        header=command.header + bytes([len(command.data)]),
        tag_9f36=txn.atc,
        tag_9f26=txn.arqc,
        data=body,
        suite=txn.suite,
    )
    if not hmac.compare_digest(expected, mac):
        counters.flags.add("script_failed_last")
        ctx.save()
        raise CardError(sw.SM_DATA_OBJECTS_INCORRECT, "issuer script MAC does not verify")
    try:
        COMMANDS[command.ins](app, command, body, ctx)
    except CardError:
        counters.flags.add("script_failed_last")
        ctx.save()
        raise
    ctx.save()
    return Response()
