"""The authorisation pipeline's participants: small steps over a :class:`Message` (jPOS style).

Each participant reads the message and the batch, and either records what it found or stops the
message with a response code (:meth:`Message.decline`). The host runs :data:`CHECKS` in order
until one declines, then :func:`arpc_and_scripts` always. No participant touches the database:
the host loads before and writes after, once per batch (issue 5 performance note).

Order and codes (docs/issuer.md has the table): card lookup (14) → field 55 (30, 13) → ARQC
(05, UNCERTAIN) → ATC replay (63) / jump (59) → status (41/43/62) → a queued block script (62) →
expiry (54) → IAD EC MAC (05) → online PIN (55/75) → limits (13/61) → balance (51) → posting.
The cryptogram is checked before the status so that a blocked or lost card still gets a valid
ARPC and its queued block script.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from citycard.crypto.cryptogram import pboc_ac_data
from citycard.crypto.iad import IDD_TYPE_EC, parse_iad
from citycard.emv.bits import CVR
from citycard.emv.tlv import TLV, TLVError, encode, flat_primitives
from citycard.host.issuer import codes
from citycard.host.issuer.config import SUITES_BY_NAME, IssuerConfig
from citycard.host.issuer.context import (
    CID_ARQC,
    CID_TYPE_MASK,
    IC_REQUIRED,
    IC_REQUIRED_VARIABLE,
    Batch,
    Message,
)
from citycard.hsm import SoftHSM
from citycard.hsm.keytypes import HSMError
from citycard.iso8583.builders import CHINA_STANDARD_TIME, CURRENCY_CNY, parse_amount
from citycard.iso8583.message import Iso8583Error
from citycard.ledger import AccountKind, Layer, Line, PostingRequest

EC_LOAD_KIND = "ec_load"
DEBIT_KINDS = frozenset({"authorisation", "pre_authorisation", "purchase"})
EC_BALANCE_LIMIT_TAG = "9F77"
EC_BALANCE_TAG = "9F79"
SCRIPT_BYTES_MAX = 128  # EMV Book 3 §10.10 / kernel.online: scripts per transaction
EC_SCRIPT_ID_PREFIX = b"\xec\x00"  # 9F18 of an EC top-up script: EC00 ‖ ATC (ours)
AUTH_CODE_DIGITS = 6  # F38 an6
POS_ENTRY_CONTACT = "05"  # F22 first two digits: contact IC (pboc-notes §10)

# Queued script kinds → (CLA, INS, P1, P2, template). PBOC command table pboc-notes §3:
# APPLICATION BLOCK 84 1E, APPLICATION UNBLOCK 84 18, CARD BLOCK 84 16, PIN UNBLOCK 84 24 00 00.
# Blocks go in 71 (run before the second GENERATE AC, so the card closes this very transaction
# blocked); unblocks in 72 (after it) — our choice, UNCERTAIN (pboc-notes §4.4 does not say).
SCRIPT_KINDS: dict[str, tuple[int, int, int, int, str]] = {
    "block": (0x84, 0x1E, 0x00, 0x00, "71"),
    "unblock": (0x84, 0x18, 0x00, 0x00, "72"),
    "card_block": (0x84, 0x16, 0x00, 0x00, "71"),
    "pin_unblock": (0x84, 0x24, 0x00, 0x00, "72"),
}


@dataclass(frozen=True)
class Env:
    """What participants may use besides the message: the issuer's config and its HSM."""

    config: IssuerConfig
    hsm: SoftHSM


# --- helpers -------------------------------------------------------------------------------------


def account_codes(issuer: str, pan: str, psn: int) -> tuple[str, str]:
    """Ledger codes of a card's bank account and electronic-cash account.

    >>> account_codes("citybank", "6235480000000001", 1)
    ('citybank:card:6235480000000001:01', 'citybank:ec:6235480000000001:01')
    """
    return f"{issuer}:card:{pan}:{psn:02d}", f"{issuer}:ec:{pan}:{psn:02d}"


def merchant_account(issuer: str, merchant_id: str) -> str:
    """The settlement account of a merchant (F42), opened on its first approved transaction."""
    return f"{issuer}:merchant:{merchant_id.strip()}"


def funding_account(issuer: str) -> str:
    return f"{issuer}:funding"


def suspense_account(issuer: str) -> str:
    """Where a stand-in approval the cardholder account cannot cover is booked (may go negative)."""
    return f"{issuer}:suspense"


def ledger_key(prefix: str, issuer: str, request: dict[str, Any]) -> str:
    """``auth:ISSUER:F32/F41:F11:F7`` (or ``ecload:…``): the original's identity, shared by a
    stand-in advice of it, so the two post once.

    >>> ledger_key("auth", "citybank", {"41": "T0000001", "11": "000001", "7": "1127030405"})
    'auth:citybank:-/T0000001:000001:1127030405'
    """
    return (
        f"{prefix}:{issuer}:{request.get('32', '-')}/{request['41']}:{request['11']}:{request.get('7', '-')}"
    )


def auth_code(key: str) -> str:
    """F38: six digits from the idempotency key (unique enough to quote; not a secret).

    >>> auth_code("-:T0000001:000001:1127030405:0200")
    '363655'
    """
    digest = hashlib.blake2b(key.encode("ascii"), digest_size=8).digest()
    return f"{int.from_bytes(digest, 'big') % 10**AUTH_CODE_DIGITS:0{AUTH_CODE_DIGITS}d}"


def ac_input(ic: dict[str, bytes], cvr: bytes) -> bytes:
    """The PBOC CDOL1 AC input rebuilt from field 55 (pboc-notes §4.2)."""
    return pboc_ac_data(
        tag_9f02=ic["9F02"], tag_9f03=ic["9F03"], tag_9f1a=ic["9F1A"], tag_95=ic["95"],
        tag_5f2a=ic["5F2A"], tag_9a=ic["9A"], tag_9c=ic["9C"], tag_9f37=ic["9F37"],
        tag_82=ic["82"], tag_9f36=ic["9F36"], cvr=cvr,
    )  # fmt: skip


def _bcd_amount(value: bytes) -> int | None:
    text = value.hex()
    return int(text) if text.isdigit() else None


def primitive_tags(f55: bytes) -> dict[str, bytes]:
    """Field 55's primitive objects by tag (BER-TLV, EMV Book 3 Annex B); templates are passed over.

    :func:`citycard.emv.tlv.flat_primitives`, 4× faster than the general decoder on the hot path
    and tested against it. A malformed object or a repeated tag raises Iso8583Error (RC 30).

    >>> primitive_tags(bytes.fromhex("9F3602000182027C00DF310120"))
    {'9F36': b'\\x00\\x01', '82': b'|\\x00', 'DF31': b' '}
    """
    try:
        return flat_primitives(bytes(f55))
    except TLVError as exc:
        raise Iso8583Error(f"IC data: {exc}", field="55") from None


# --- checks (stop at the first decline) ----------------------------------------------------------


def card_lookup(msg: Message, batch: Batch, env: Env) -> None:
    """PAN (F2) + PSN (F23) → the card loaded for the batch; unknown → 14."""
    card = batch.cards.get((msg.pan or "", msg.psn if msg.psn is not None else -1))
    if card is None:
        msg.decline(codes.NO_SUCH_CARD, "no such card (PAN + PSN)")
    msg.card = card


def ic_data(msg: Message, batch: Batch, env: Env) -> None:
    """Field 55: required tags with their lengths, an ARQC, amount and currency agreeing with F4/F49."""
    f55 = msg.request.get("55")
    if not isinstance(f55, bytes | bytearray):
        msg.decline(codes.FORMAT_ERROR, "field 55 missing")
        return
    try:
        ic = primitive_tags(bytes(f55))
    except Iso8583Error as exc:
        msg.decline(codes.FORMAT_ERROR, str(exc))
        return
    for tag, length in IC_REQUIRED.items():
        if len(ic.get(tag, b"")) != length:
            msg.decline(codes.FORMAT_ERROR, f"field 55 lacks {tag} of {length} bytes")
            return
    for tag in IC_REQUIRED_VARIABLE:
        if tag not in ic:
            msg.decline(codes.FORMAT_ERROR, f"field 55 lacks {tag}")
            return
    try:
        msg.iad = parse_iad(ic["9F10"])
        iad_suite = msg.iad.suite
    except ValueError as exc:
        msg.decline(codes.FORMAT_ERROR, f"9F10: {exc}")
        return
    if ic["9F27"][0] & CID_TYPE_MASK != CID_ARQC:
        msg.decline(codes.FORMAT_ERROR, f"9F27 {ic['9F27'].hex().upper()} is not an ARQC")
        return
    # Contact (F22 05x): the CVR must agree that the first GENERATE AC returned an ARQC (it is part
    # of the AC input, so a card cannot lie about it). qPBOC cards may leave the CVR at 03000000
    # (pboc-notes §4.2), so the check is for the contact interface only.
    if str(msg.request.get("22", "")).startswith(POS_ENTRY_CONTACT) and not CVR.new(msg.iad.cvr).is_set(
        "first_gac_returned_arqc"
    ):
        msg.decline(codes.FORMAT_ERROR, f"CVR {msg.iad.cvr.hex().upper()} does not report an ARQC")
        return
    if _bcd_amount(ic["9F02"]) != msg.amount_fen:
        msg.decline(codes.INVALID_AMOUNT, "9F02 differs from field 4")
        return
    if ic["5F2A"].hex()[1:] != msg.request.get("49", CURRENCY_CNY) or msg.request.get("49") != CURRENCY_CNY:
        msg.decline(codes.FORMAT_ERROR, "currency (F49/5F2A) is not CNY 156")
        return
    msg.ic = ic
    if msg.card is not None and iad_suite != msg.card.suite:
        msg.decline(
            codes.CRYPTOGRAM_FAILURE, f"IAD names suite {iad_suite.name}, the card is {msg.card.suite.name}"
        )


def arqc(msg: Message, batch: Batch, env: Env) -> None:
    """ARQC verified in the HSM under the card's suite IMK-AC; the ARPC for ARC 00 comes with it."""
    card, ic, iad = msg.card, msg.ic, msg.iad
    assert card is not None and ic is not None and iad is not None
    labels = env.config.labels(card.suite)
    ok, arpc = env.hsm.verify_arqc_and_generate_arpc(
        labels.imk_ac,
        tag_5a=card.pan,
        tag_5f34=card.tag_5f34,
        tag_9f36=ic["9F36"],
        data=ac_input(ic, iad.cvr_field),
        tag_9f26=ic["9F26"],
        tag_8a=codes.APPROVED.encode("ascii"),
    )
    msg.arqc_ok = ok
    if not ok:
        msg.decline(codes.CRYPTOGRAM_FAILURE, "ARQC does not verify")
        return
    msg.arpc_00 = arpc


def atc(msg: Message, batch: Batch, env: Env) -> None:
    """ATC (9F36) must exceed every ATC seen (replay → 63); a jump above the limit → 59.

    A jump still raises the card's highest ATC (the card really used it): this transaction is
    declined for review, the next one is judged against the new high-water mark.
    """
    card, ic = msg.card, msg.ic
    assert card is not None and ic is not None
    value = int.from_bytes(ic["9F36"], "big")
    if value <= card.atc_max:
        msg.decline(codes.SECURITY_VIOLATION, f"ATC {value} replayed (highest seen {card.atc_max})")
        return
    jump = value - card.atc_max
    card.atc_max = value
    card.touch()
    msg.atc_fresh = True
    if jump > env.config.atc_jump_max:
        msg.decline(codes.SUSPECTED_FRAUD, f"ATC jumped by {jump} (limit {env.config.atc_jump_max})")


def status(msg: Message, batch: Batch, env: Env) -> None:
    """Card status: lost → 41, stolen → 43, blocked → 62."""
    assert msg.card is not None
    rc = codes.STATUS_CODES.get(msg.card.status)
    if rc is not None:
        msg.decline(rc, f"card is {msg.card.status}")


def pending_block(msg: Message, batch: Batch, env: Env) -> None:
    """A queued APPLICATION/CARD BLOCK script rides on this transaction: decline it (62) rather than
    approve a transaction the card is about to refuse (it runs the 71 script before its final AC)."""
    card = msg.card
    assert card is not None
    if any(SCRIPT_KINDS[kind][4] == "71" for _, kind in batch.queued.get((card.pan, card.psn), [])):
        msg.decline(codes.RESTRICTED_CARD, "a block script is queued for this card")


def expiry(msg: Message, batch: Batch, env: Env) -> None:
    """Expired (by China local date) → 54; an F14 that differs from the card's expiry → 54 too."""
    card = msg.card
    assert card is not None
    f14 = msg.request.get("14")
    if f14 is not None and f14 != card.expiry.strftime("%y%m"):
        msg.decline(codes.EXPIRED_CARD, "F14 differs from the card's expiry date")
        return
    if batch.now.astimezone(CHINA_STANDARD_TIME).date() > card.expiry:
        msg.decline(codes.EXPIRED_CARD, f"card expired on {card.expiry.isoformat()}")


def iad_mac(msg: Message, batch: Batch, env: Env) -> None:
    """The EC balance MAC in the IAD (pboc-notes §2.4), when the IAD carries one."""
    card, ic, iad = msg.card, msg.ic, msg.iad
    assert card is not None and ic is not None and iad is not None
    if iad.idd_type != IDD_TYPE_EC:
        return
    good = env.hsm.verify_iad_mac(
        env.config.labels(card.suite).imk_mac,
        tag_5a=card.pan,
        tag_5f34=card.tag_5f34,
        tag_9f36=ic["9F36"],
        tag_9f10=ic["9F10"],
    )
    if not good:
        msg.decline(codes.CRYPTOGRAM_FAILURE, "IAD EC balance MAC does not verify")


def online_pin(msg: Message, batch: Batch, env: Env) -> None:
    """F52 (3DES) or F57 (SM4) present: PIN block checked against the stored PVV in the HSM; tries
    counted (55, 75)."""
    block = msg.request.get("52")
    if block is None:
        block = msg.request.get("57")
    if block is None:
        return
    card = msg.card
    assert card is not None
    tries_max = env.config.pin_tries_max
    if card.pvv is None:
        msg.decline(codes.WRONG_PIN, "no PIN enrolled for online verification")
        return
    if card.pin_tries >= tries_max:
        msg.decline(codes.PIN_TRIES_EXCEEDED, "online PIN tries exhausted")
        return
    # The PIN key is chosen by the block's length (8 bytes: the 3DES key, 16: the SM4 key), not by
    # the card's suite: the server translates the block to the PIN key of the terminal PIK's suite. The
    # PVK is the card's suite's, the one enrolment computed the PVV under.
    pin_suite = next(
        (
            suite
            for name, suite in SUITES_BY_NAME.items()
            if suite.block_bytes == len(block) and name in env.config.keys
        ),
        None,
    )
    if pin_suite is None:
        msg.decline(codes.FORMAT_ERROR, f"field 52 of {len(block)} bytes fits no PIN key of this issuer")
        return
    try:
        good = env.hsm.verify_pin_block(
            env.config.labels(pin_suite).pin_key,
            env.config.labels(card.suite).pvk,
            pin_block=bytes(block),
            pan=card.pan,
            pvv=card.pvv,
        )
    except HSMError as exc:  # a block of the wrong length for the PIN key: a malformed field 52
        msg.decline(codes.FORMAT_ERROR, f"field 52: {exc}")
        return
    if good:
        if card.pin_tries:
            card.pin_tries = 0
            card.touch()
        return
    card.pin_tries += 1
    card.touch()
    if card.pin_tries >= tries_max:
        msg.decline(codes.PIN_TRIES_EXCEEDED, "wrong PIN, tries now exhausted")
    else:
        msg.decline(codes.WRONG_PIN, f"wrong PIN ({card.pin_tries} of {tries_max})")


def limits(msg: Message, batch: Batch, env: Env) -> None:
    """Amount > 0 (13); per-transaction and per-day limits (61); EC load within 9F77 (61)."""
    card, ic = msg.card, msg.ic
    assert card is not None and ic is not None
    config, amount = env.config, msg.amount_fen
    if amount <= 0:
        msg.decline(codes.INVALID_AMOUNT, "amount is zero")
        return
    if amount > config.transaction_max_fen:
        msg.decline(codes.OVER_LIMIT, f"amount above the per-transaction limit {config.transaction_max_fen}")
        return
    spent = card.day_total_fen if card.day == batch.today else 0
    if spent + amount > config.daily_max_fen:
        msg.decline(codes.OVER_LIMIT, f"day total would pass the daily limit {config.daily_max_fen}")
        return
    if msg.kind is not None and msg.kind.name == EC_LOAD_KIND:
        _ec_new_balance(msg, env)


def _ec_new_balance(msg: Message, env: Env) -> None:
    """The absolute EC balance after the load: the card's balance (9F79 if sent, else the MAC-checked
    IAD copy) + amount, at most 9F77 if sent, else the configured ceiling (pboc-notes §6)."""
    ic, iad = msg.ic, msg.iad
    assert ic is not None and iad is not None
    current = _bcd_amount(ic[EC_BALANCE_TAG]) if EC_BALANCE_TAG in ic else iad.ec_balance_fen
    if current is None:
        msg.decline(codes.FORMAT_ERROR, "EC load without the card's balance (9F79 or the IAD EC data)")
        return
    if iad.ec_balance_fen is not None and current != iad.ec_balance_fen:
        msg.decline(codes.CRYPTOGRAM_FAILURE, "9F79 differs from the MAC-checked IAD balance")
        return
    ceiling = env.config.ec_balance_max_fen
    if EC_BALANCE_LIMIT_TAG in ic:
        sent = _bcd_amount(ic[EC_BALANCE_LIMIT_TAG])
        if sent is None:
            msg.decline(codes.FORMAT_ERROR, "9F77 is not BCD")
            return
        ceiling = sent
    new_balance = current + msg.amount_fen
    if new_balance > ceiling:
        msg.decline(codes.OVER_LIMIT, f"EC balance {new_balance} would pass the limit {ceiling}")
        return
    msg.new_ec_balance_fen = new_balance


def balance(msg: Message, batch: Batch, env: Env) -> None:
    """The cardholder bank account must hold the amount (51)."""
    card = msg.card
    assert card is not None
    if batch.balances.get(card.account, 0) < msg.amount_fen:
        msg.decline(codes.INSUFFICIENT_FUNDS, "insufficient funds")


def posting(msg: Message, batch: Batch, env: Env) -> None:
    """The ledger posting of an approval, in PENDING; the batch's balances and day totals follow it.

    Purchase/authorisation: cardholder account → merchant settlement account (F42).
    EC load (圈存): cardholder bank account → the card's EC account.
    """
    card, kind = msg.card, msg.kind
    assert card is not None and kind is not None and msg.key is not None
    issuer, amount, request = env.config.name, msg.amount_fen, msg.request
    if kind.name == EC_LOAD_KIND:
        target = card.ec_account
        msg.ledger_key = ledger_key("ecload", issuer, request)
        assert msg.new_ec_balance_fen is not None
        card.ec_balance_fen = msg.new_ec_balance_fen
    else:
        target = merchant_account(issuer, request["42"])
        msg.ledger_key = ledger_key("auth", issuer, request)
        batch.new_accounts[target] = AccountKind.MERCHANT
    msg.posting = PostingRequest(
        key=msg.ledger_key,
        lines=(Line(card.account, debit_fen=amount), Line(target, credit_fen=amount)),
        layer=Layer.PENDING,
        memo=f"{kind.name} {request['41']} {request['11']}",
    )
    batch.balances[card.account] = batch.balances.get(card.account, 0) - amount
    batch.balances[target] = batch.balances.get(target, 0) + amount
    if card.day != batch.today:
        card.day, card.day_total_fen = batch.today, 0
    card.day_total_fen += amount
    card.touch()


Participant = Callable[[Message, Batch, Env], None]
CHECKS: tuple[Participant, ...] = (
    card_lookup, ic_data, arqc, atc, status, pending_block, expiry, iad_mac, online_pin, limits, balance,
    posting,
)  # fmt: skip


# --- finish (always) -----------------------------------------------------------------------------


def arpc_and_scripts(msg: Message, batch: Batch, env: Env) -> None:
    """91 = ARPC ‖ ARC for a verified ARQC; the EC top-up script (72) on an approved load; queued
    platform scripts once, when the ATC is fresh and the total stays within 128 bytes."""
    card, ic = msg.card, msg.ic
    if card is None or ic is None or not msg.arqc_ok:
        return
    labels = env.config.labels(card.suite)
    where: dict[str, Any] = {"tag_5a": card.pan, "tag_5f34": card.tag_5f34, "tag_9f36": ic["9F36"]}
    arc = (msg.rc or codes.APPROVED).encode("ascii")
    if arc == codes.APPROVED.encode("ascii") and msg.arpc_00 is not None:
        arpc = msg.arpc_00
    else:
        arpc = env.hsm.generate_arpc(labels.imk_ac, tag_9f26=ic["9F26"], tag_8a=arc, **where)
    msg.tag_91 = arpc + arc
    if not msg.atc_fresh:
        return
    used = 0
    if msg.rc is None and msg.new_ec_balance_fen is not None:
        command = env.hsm.ec_load_script(
            labels.imk_mac, tag_9f26=ic["9F26"], new_balance_fen=msg.new_ec_balance_fen, **where
        )
        template = _template("72", EC_SCRIPT_ID_PREFIX + ic["9F36"], command)
        msg.scripts_72.append(template)
        used += len(template)
    for script_id, kind in batch.queued.get((card.pan, card.psn), []):
        cla, ins, p1, p2, tag = SCRIPT_KINDS[kind]
        command = env.hsm.script_command(
            labels.imk_mac, tag_9f26=ic["9F26"], cla=cla, ins=ins, p1=p1, p2=p2, data=b"", **where
        )
        template = _template(tag, (script_id & 0xFFFFFFFF).to_bytes(4, "big"), command)  # 9F18 is 4 bytes
        if used + len(template) > SCRIPT_BYTES_MAX:
            break  # the rest waits for the next online transaction
        (msg.scripts_71 if tag == "71" else msg.scripts_72).append(template)
        msg.delivered_script_ids.append(script_id)
        used += len(template)
    if msg.delivered_script_ids:
        card.scripts_pending = max(card.scripts_pending - len(msg.delivered_script_ids), 0)
        card.touch()
        delivered = set(msg.delivered_script_ids)
        batch.queued[(card.pan, card.psn)] = [
            item for item in batch.queued[(card.pan, card.psn)] if item[0] not in delivered
        ]


def _template(tag: str, script_id: bytes, command: bytes) -> bytes:
    return encode([TLV(tag, children=[TLV("9F18", script_id), TLV("86", command)])])


def request_amount(msg: Message) -> None:
    """F4 as integer fen; a malformed amount is a format error."""
    try:
        msg.amount_fen = parse_amount(msg.request)
    except Iso8583Error as exc:
        msg.decline(codes.FORMAT_ERROR, str(exc))
