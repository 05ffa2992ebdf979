"""The contact PBOC flow (EMV 4.3 Book 3 §10; JR/T 0025.6), step by step over a :class:`Transaction`.

1. **Application selection** (:mod:`.selection`): PSE, or the AID list on 6A82; priority,
   cardholder confirmation. GPO 6985 drops the candidate and selection starts again (Book 3 §10.1).
2. **Initiate application processing**: PDOL data, GPO (80 AIP ‖ AFL, or 77).
3. **Read application data** (:mod:`.records`); 5A, 5F24, 8C and 8D are mandatory.
4. **Offline data authentication** (:mod:`.oda`): CDA when card (AIP) and terminal (9F33) both
   support it, else DDA, else SDA, else TVR "ODA not performed". For CDA the keys are recovered
   before GENERATE AC; the signature is checked on each GENERATE AC answer.
5. **Processing restrictions**: application version (9F08/9F09), usage control (9F07 against
   domestic/international, goods/services/cash), effective and expiry dates.
6. **Cardholder verification** (AIP b5): the CVM list (8E) rule by rule — offline plaintext PIN
   through a :class:`PinPad` (VERIFY, ISO 9564 format 2, with the try counter 9F17), online PIN
   (ISO 9564 format 0 under the terminal PIN key, carried to the acquirer), signature, no CVM,
   fail CVM — with the TVR bits and the CVM results 9F34.
7. **Terminal risk management**: exception file, floor limit (9F1B), random transaction selection
   (DF15/DF16/DF17), velocity checking (9F14/9F23 with GET DATA 9F36/9F13), new card.
8. **Terminal action analysis**: TVR against IAC/TAC denial, online and default.
9. **First GENERATE AC / card action analysis**: CID TC → approved offline, AAC → declined,
   ARQC → online. A cryptogram above the one asked for ends the application. With CDA a failed
   signature declines (an ARQC is closed with a second GENERATE AC asking for an AAC).
10. **Online processing** through an :class:`~citycard.kernel.online.AcquirerLink`; no answer →
    "unable to go online" (8A Y3/Z3 by the default action codes). **Issuer authentication**: 91
    through CDOL2 when the card asks for it there, else EXTERNAL AUTHENTICATE. **Scripts**: 71
    before and 72 after the second GENERATE AC, each command's status checked, results in DF31
    (5 bytes per script: result ‖ sequence nibbles, script ID).
11. **Completion**: second GENERATE AC (TC when the issuer approved, AAC otherwise).

A step that decides the outcome raises :class:`~citycard.kernel.outcome.Stop`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from citycard.crypto import blockcipher
from citycard.crypto.iad import parse_iad
from citycard.crypto.mac import pad_method_2
from citycard.crypto.suite import INTL, Suite
from citycard.emv.bits import AIP, TVR
from citycard.emv.dol import DOLError, parse_dol
from citycard.emv.tlv import TLVError, decode
from citycard.kernel import oda, records, selection
from citycard.kernel.card_link import CardGoneError, CardLink, CardLinkError, parse_template
from citycard.kernel.context import Terminal, Transaction
from citycard.kernel.online import AcquirerLink, IssuerResponse, OnlineError, parse_issuer_response
from citycard.kernel.outcome import Outcome, Result, Stop, field55
from citycard.kernel.params import ExceptionFileError
from citycard.kernel.qpboc import finish
from citycard.reader.transport import Transport, TransportError

CONTACT_MANDATORY = ("5A", "5F24", "8C", "8D")
SW_CONDITIONS_NOT_SATISFIED = 0x6985
SW_PIN_BLOCKED = (0x6983, 0x6984)
PIN_ATTEMPTS_MAX = 15  # PIN entries one transaction will ask for (the card's counter is lower)
SELECTION_ROUNDS_MAX = 8  # GPO 6985 → back to selection, at most this often
AC_AAC, AC_TC, AC_ARQC = 0x00, 0x40, 0x80
P1_CDA = 0x10
AC_NAMES = {AC_AAC: "AAC", AC_TC: "TC", AC_ARQC: "ARQC"}
ARC_UNABLE_APPROVE, ARC_UNABLE_DECLINE = b"Y3", b"Z3"
SCRIPT_OK_SW1 = (0x90, 0x62, 0x63)  # Book 3 §10.10: 90xx, 62xx, 63xx are not errors
SCRIPT_COMMANDS_MAX = 16

# CVM methods (Book 3 Annex C3) → the 9F33 byte 2 bit that says the terminal supports it
CVM_PLAINTEXT_PIN, CVM_ONLINE_PIN, CVM_SIGNATURE, CVM_NONE, CVM_FAIL = 0x01, 0x02, 0x1E, 0x1F, 0x00
CVM_TERMINAL_BITS = {
    0x01: 0x80,
    0x02: 0x40,
    0x03: 0x10 | 0x20,
    0x04: 0x10,
    0x05: 0x10 | 0x20,
    0x1E: 0x20,
    0x1F: 0x08,
}
CVM_RESULT_UNKNOWN, CVM_RESULT_FAILED, CVM_RESULT_SUCCESSFUL = 0x00, 0x01, 0x02


# --- the PIN pad --------------------------------------------------------------------------------


class PinPad(Protocol):
    """What the kernel asks of the PIN entry device. ``None`` means the cardholder bypassed entry."""

    def offline_pin(self, *, tries_left: int | None) -> str | None:
        """The PIN digits for an offline plaintext PIN (the card checks them)."""
        ...

    def online_pin_block(self, *, pan: str) -> bytes | None:
        """An ISO 9564 format 0 PIN block enciphered under the terminal PIN key, for the issuer."""
        ...


def pin_block_format_2(pin: str) -> bytes:
    """ISO 9564 format 2 (the offline PIN block of VERIFY): 2 ‖ length ‖ PIN ‖ F padding.

    >>> pin_block_format_2("1234").hex().upper()
    '241234FFFFFFFFFF'
    """
    _check_pin(pin)
    return bytes.fromhex(f"2{len(pin):X}{pin}".ljust(16, "F"))


def pin_block_format_0(pin: str, pan: str) -> bytes:
    """ISO 9564-1 format 0: (0 ‖ length ‖ PIN ‖ F…) ⊕ (0000 ‖ 12 rightmost PAN digits without the
    check digit).

    >>> pin_block_format_0("1234", "4111111111111111").hex().upper()
    '041225EEEEEEEEEE'
    """
    _check_pin(pin)
    if not pan.isdigit() or not 13 <= len(pan) <= 19:
        raise ValueError(f"PAN must be 13 to 19 digits, got {len(pan)}")
    pin_field = bytes.fromhex(f"0{len(pin):X}{pin}".ljust(16, "F"))
    pan_field = bytes.fromhex("0000" + pan[-13:-1])
    return blockcipher.xor(pin_field, pan_field)


def encipher_pin_block(block: bytes, pin_key: bytes, suite: Suite) -> bytes:
    """The format 0 block under the terminal PIN key: 3DES-ECB (INTL); SM4-ECB over the block
    padded by ISO 9797-1 method 2 to 16 bytes (GM — UNCERTAIN: no public PBOC SM4 PIN-block rule)."""
    suite.check_key(pin_key, "terminal PIN key")
    return suite.ecb_encrypt(
        pin_key, pad_method_2(block, suite.block_bytes) if suite.block_bytes > 8 else block
    )


def _check_pin(pin: str) -> None:
    if not (pin.isascii() and pin.isdigit()) or not 4 <= len(pin) <= 12:
        raise ValueError(f"a PIN is 4 to 12 digits, got {len(pin)} characters")


class FixedPinPad:
    """A PIN pad that 'enters' the given PINs in turn (the last one again once they run out), for
    tests and the CLI. Online PIN blocks are enciphered under ``pin_key`` (a fresh random terminal
    PIN key when none is given; its check value is in ``pin_key_kcv``)."""

    def __init__(
        self, pins: str | Sequence[str] | None, *, pin_key: bytes | None = None, suite: Suite = INTL
    ):
        self.pins = [pins] if isinstance(pins, str) else list(pins or [])
        for pin in self.pins:
            _check_pin(pin)
        self.suite = suite
        self.pin_key = pin_key if pin_key is not None else secrets.token_bytes(suite.key_bytes)
        suite.check_key(self.pin_key, "terminal PIN key")
        self.entries = 0

    def _next(self) -> str | None:
        if not self.pins:
            return None
        pin = self.pins[min(self.entries, len(self.pins) - 1)]
        self.entries += 1
        return pin

    def offline_pin(self, *, tries_left: int | None) -> str | None:
        return self._next()

    def online_pin_block(self, *, pan: str) -> bytes | None:
        pin = self._next()
        return (
            None
            if pin is None
            else encipher_pin_block(pin_block_format_0(pin, pan), self.pin_key, self.suite)
        )


# --- the context the contact steps share ---------------------------------------------------------


@dataclass
class ContactState:
    """What the contact flow adds to the transaction while it runs."""

    link: CardLink
    terminal: Terminal
    pin_pad: PinPad | None
    acquirer: AcquirerLink | None
    keys: oda.OdaKeys | None = None  # recovered before GENERATE AC when CDA is to be performed
    cda: bool = False  # CDA is the ODA method of this transaction
    online_pin_block: bytes | None = None
    gac1_values: dict[str, bytes] | None = None  # the terminal data as the first GENERATE AC sent them
    random: Callable[[int], int] = secrets.randbelow


# --- steps ----------------------------------------------------------------------------------------


def _initiate(
    state: ContactState, tx: Transaction, candidates: list[selection.Candidate], **hooks: object
) -> None:
    """Steps 1–2: select, GPO; a 6985 drops the candidate and selects again."""
    link = state.link
    for _ in range(SELECTION_ROUNDS_MAX):
        candidate = selection.choose(candidates, contactless=False, **hooks)  # type: ignore[arg-type]
        if candidate is None:
            raise Stop(Outcome.END_APPLICATION, "no application left to select (not accepted)")
        candidates.remove(candidate)
        if not selection.final_select(link, tx, candidate):
            continue
        pdol = tx.card.get("9F38", b"")
        try:
            tx.pdol_data = tx.dol_data(pdol) if pdol else b""
        except DOLError as exc:
            raise Stop(Outcome.END_APPLICATION, f"PDOL (9F38): {exc}") from None
        reply = link.get_processing_options(tx.pdol_data)
        if reply.sw == SW_CONDITIONS_NOT_SATISFIED:
            tx.log("GPO", "6985: conditions of use not satisfied; back to selection")
            continue
        if not reply.ok:
            raise Stop(Outcome.END_APPLICATION, f"GPO: card answered {reply.sw:04X}")
        try:
            template = parse_template(reply.data, "GET PROCESSING OPTIONS", "80", "77")
        except CardLinkError as exc:
            raise Stop(Outcome.END_APPLICATION, str(exc)) from None
        if template.tag == "80":
            if len(template.value) < 2:
                raise Stop(Outcome.END_APPLICATION, "GPO format 1 answer shorter than the AIP")
            tx.card["82"], tx.card_sources["82"] = template.value[:2], "GPO"
            tx.card["94"], tx.card_sources["94"] = template.value[2:], "GPO"
        else:
            records.store(tx, template.children or [], "GPO")
        records.require(tx, ("82", "94"), "the GPO answer")
        tx.log("GPO", f"AIP {tx.card['82'].hex().upper()}, AFL {tx.card['94'].hex().upper()}")
        return
    raise Stop(Outcome.END_APPLICATION, f"more than {SELECTION_ROUNDS_MAX} selections")


def _date(value: bytes | None) -> dt.date | None:
    if value is None or len(value) != 3 or not value.hex().isdigit():
        return None
    text = value.hex()
    try:
        return dt.date(2000 + int(text[:2]), int(text[2:4]), int(text[4:6]))
    except ValueError:
        return None


def offline_data_authentication(state: ContactState, tx: Transaction) -> None:
    """Step 4: choose and run CDA, DDA or SDA (Book 3 §10.3)."""
    aip = AIP.new(tx.card["82"])
    capabilities = tx.terminal.get("9F33", b"\x00\x00\x00")
    capks = state.terminal.capks
    if aip.is_set("cda_supported") and capabilities[2] & 0x08:
        state.cda = True

        def recover() -> None:
            state.keys = oda.icc_public_key(tx, capks)

        if not oda.run(tx, "cda", recover):
            state.keys = None
        return
    if aip.is_set("dda_supported") and capabilities[2] & 0x40:
        oda.dda(state.link, tx, capks)
    elif aip.is_set("sda_supported") and capabilities[2] & 0x80:
        tx.tvr.set("sda_selected")
        oda.sda(tx, capks)
    else:
        tx.tvr.set("offline_data_authentication_not_performed")
        tx.log("ODA", "not performed: no method both card and terminal support")


def processing_restrictions(tx: Transaction) -> None:
    """Step 5 (Book 3 §10.4): versions, usage control, dates."""
    card_version, terminal_version = tx.card.get("9F08"), tx.terminal.get("9F09")
    if card_version is not None and terminal_version is not None and card_version != terminal_version:
        tx.tvr.set("icc_and_terminal_different_versions")
    auc = tx.card.get("9F07")
    if auc is not None and len(auc) == 2 and not _usage_allowed(tx, auc):
        tx.tvr.set("requested_service_not_allowed")
    effective, expiry = _date(tx.card.get("5F25")), _date(tx.card.get("5F24"))
    if expiry is None:
        raise Stop(Outcome.END_APPLICATION, f"expiry date (5F24) {tx.card['5F24'].hex()} is not YYMMDD")
    if effective is not None and effective > tx.today:
        tx.tvr.set("application_not_yet_effective")
    if expiry < tx.today:
        tx.tvr.set("expired_application")
    tx.log("processing restrictions", ", ".join(TVR.decode(bytes(tx.tvr))[-3:]) or "passed")


def _usage_allowed(tx: Transaction, auc: bytes) -> bool:
    """Application usage control (Book 3 §10.4.2) for goods/services (9C 00) and cash (01/17)."""
    issuer_country, terminal_country = tx.card.get("5F28"), tx.terminal.get("9F1A")
    domestic = issuer_country is None or issuer_country == terminal_country
    kind = tx.terminal["9C"][0]
    if kind in (0x01, 0x17):  # cash
        return bool(auc[0] & (0x80 if domestic else 0x40))
    goods = auc[0] & (0x20 if domestic else 0x10)
    services = auc[0] & (0x08 if domestic else 0x04)
    return bool(goods or services)


@dataclass(frozen=True, slots=True)
class CvRule:
    code: int
    condition: int

    @property
    def method(self) -> int:
        return self.code & 0x3F

    @property
    def next_on_failure(self) -> bool:
        return bool(self.code & 0x40)


def parse_cvm_list(tag_8e: bytes) -> tuple[int, int, list[CvRule]]:
    """(amount X, amount Y, rules) of a CVM list (Book 3 §10.5); ValueError when malformed.

    >>> x, y, rules = parse_cvm_list(bytes.fromhex("000000000000000042031E031F00"))
    >>> [(f"{r.code:02X}", f"{r.condition:02X}") for r in rules]
    [('42', '03'), ('1E', '03'), ('1F', '00')]
    """
    if len(tag_8e) < 10 or len(tag_8e) % 2:
        raise ValueError(f"CVM list (8E) of {len(tag_8e)} bytes is not 8 bytes of amounts and 2-byte rules")
    x, y = int.from_bytes(tag_8e[:4], "big"), int.from_bytes(tag_8e[4:8], "big")
    return x, y, [CvRule(tag_8e[i], tag_8e[i + 1]) for i in range(8, len(tag_8e), 2)]


def _condition(tx: Transaction, rule: CvRule, x: int, y: int) -> bool | None:
    """Whether the rule's condition holds; None for a condition code the terminal does not know."""
    kind = tx.terminal["9C"][0]
    unattended = tx.terminal.get("9F35", b"\x22")[0] & 0x0F > 3
    cash, cashback = kind in (0x01, 0x17), kind == 0x09
    same_currency = tx.card.get("9F42") == tx.terminal.get("5F2A")
    amount = tx.amount_fen
    conditions: dict[int, Callable[[], bool]] = {
        0x00: lambda: True,
        0x01: lambda: cash and unattended,
        0x02: lambda: not (cash or cashback),
        0x03: lambda: _supported(tx, rule.method),
        0x04: lambda: cash and not unattended,
        0x05: lambda: cashback,
        0x06: lambda: same_currency and amount < x,
        0x07: lambda: same_currency and amount > x,
        0x08: lambda: same_currency and amount < y,
        0x09: lambda: same_currency and amount > y,
    }
    check = conditions.get(rule.condition)
    return None if check is None else check()


def _supported(tx: Transaction, method: int) -> bool:
    bits = CVM_TERMINAL_BITS.get(method)
    capabilities = tx.terminal.get("9F33", b"\x00\x00\x00")
    return bits is not None and (capabilities[1] & bits) == bits


def _offline_pin(state: ContactState, tx: Transaction) -> bool:
    if state.pin_pad is None:
        tx.tvr.set("pin_entry_required_and_pin_pad_not_present")
        return False
    reply = state.link.get_pin_try_counter()
    tries: int | None = None
    if reply.ok:
        try:
            value = decode(reply.data)[0].value
            tries = value[0] if len(value) == 1 else None
        except (TLVError, IndexError):
            tries = None
    if tries == 0:
        tx.tvr.set("pin_try_limit_exceeded")
        tx.log("offline PIN", "PIN try limit exceeded (9F17 = 0)")
        return False
    for _ in range(PIN_ATTEMPTS_MAX):
        pin = state.pin_pad.offline_pin(tries_left=tries)
        if pin is None:
            tx.tvr.set("pin_entry_required_pin_pad_present_but_pin_not_entered")
            return False
        answer = state.link.verify_plaintext_pin(pin_block_format_2(pin))
        if answer.ok:
            tx.log("offline PIN", "verified by the card")
            return True
        if answer.sw >> 4 == 0x63C:
            tries = answer.sw & 0x0F
            tx.log("offline PIN", f"wrong PIN, {tries} tries left")
            if tries == 0:
                tx.tvr.set("pin_try_limit_exceeded")
                return False
            continue
        if answer.sw in SW_PIN_BLOCKED:
            tx.tvr.set("pin_try_limit_exceeded")
            tx.log("offline PIN", f"PIN blocked ({answer.sw:04X})")
            return False
        tx.log("offline PIN", f"VERIFY answered {answer.sw:04X}")
        return False
    return False


def _online_pin(state: ContactState, tx: Transaction) -> bool:
    pan = tx.pan
    if state.pin_pad is None or pan is None:
        tx.tvr.set("pin_entry_required_and_pin_pad_not_present")
        return False
    block = state.pin_pad.online_pin_block(pan=pan)
    if block is None:
        tx.tvr.set("pin_entry_required_pin_pad_present_but_pin_not_entered")
        return False
    state.online_pin_block = block
    tx.tvr.set("online_pin_entered")
    tx.log("online PIN", "entered, enciphered under the terminal PIN key")
    return True


def cardholder_verification(state: ContactState, tx: Transaction) -> None:
    """Step 6 (Book 3 §10.5)."""
    if not AIP.new(tx.card["82"]).is_set("cardholder_verification_supported"):
        tx.log("CVM", "not supported by the card (AIP)")
        return
    tx.tsi.set("cardholder_verification_performed")
    try:
        x, y, rules = parse_cvm_list(tx.card.get("8E", b""))
    except ValueError as exc:
        tx.tvr.set("icc_data_missing")
        tx.cvm_results = bytes.fromhex("3F0000")
        tx.log("CVM", str(exc))
        return
    last_failed: CvRule | None = None
    for rule in rules:
        if not _condition(tx, rule, x, y):
            continue
        outcome = _perform(state, tx, rule)
        if outcome is not None:
            tx.cvm_results = bytes([rule.code, rule.condition, outcome])
            tx.log(
                "CVM", f"{rule.code:02X}{rule.condition:02X}: {'successful' if outcome == 2 else 'performed'}"
            )
            return
        last_failed = rule
        if rule.method == CVM_FAIL or not rule.next_on_failure:
            break
    tx.tvr.set("cardholder_verification_not_successful")
    tx.cvm_results = (
        bytes([last_failed.code, last_failed.condition, CVM_RESULT_FAILED])
        if last_failed is not None
        else bytes.fromhex("3F0001")
    )
    tx.log("CVM", f"not successful ({tx.cvm_results.hex().upper()})")


def _perform(state: ContactState, tx: Transaction, rule: CvRule) -> int | None:
    """One CV rule: its 9F34 result byte when it succeeded, None when it failed."""
    method = rule.method
    if method == CVM_FAIL:
        return None
    if method not in CVM_TERMINAL_BITS:
        tx.tvr.set("unrecognised_cvm")
        return None
    if not _supported(tx, method):
        if method in (0x01, 0x02, 0x03, 0x04, 0x05):
            tx.tvr.set("pin_entry_required_and_pin_pad_not_present")
        return None
    if method == CVM_PLAINTEXT_PIN:
        return CVM_RESULT_SUCCESSFUL if _offline_pin(state, tx) else None
    if method == CVM_ONLINE_PIN:
        return CVM_RESULT_UNKNOWN if _online_pin(state, tx) else None
    if method == CVM_SIGNATURE:
        return CVM_RESULT_UNKNOWN  # the merchant checks the signature on the receipt
    if method == CVM_NONE:
        return CVM_RESULT_SUCCESSFUL
    return None  # offline enciphered PIN: the card takes no VERIFY P2 88 (docs/card.md)


def terminal_risk_management(state: ContactState, tx: Transaction) -> None:
    """Step 7 (Book 3 §10.6)."""
    tx.tsi.set("terminal_risk_management_performed")
    row = tx.aid_params
    exceptions = state.terminal.exceptions
    pan = tx.pan
    if exceptions is not None and pan is not None:
        try:
            if exceptions.contains(pan, tx.psn):
                tx.tvr.set("card_on_exception_file")
        except ExceptionFileError:
            pass  # a PAN the list cannot hold is not on it
    if row is not None:
        if tx.amount_fen >= row.floor_limit_fen:
            tx.tvr.set("transaction_exceeds_floor_limit")
        elif _randomly_selected(state, tx.amount_fen, row):
            tx.tvr.set("transaction_selected_randomly_for_online_processing")
    lower, upper = tx.card.get("9F14"), tx.card.get("9F23")
    if lower is not None and upper is not None and len(lower) == 1 and len(upper) == 1:
        atc, last_online = _get_counter(state.link, "9F36"), _get_counter(state.link, "9F13")
        if atc is None or last_online is None or atc <= last_online:
            tx.tvr.set("lower_consecutive_offline_limit_exceeded")
            tx.tvr.set("upper_consecutive_offline_limit_exceeded")
        else:
            if atc - last_online > lower[0]:
                tx.tvr.set("lower_consecutive_offline_limit_exceeded")
            if atc - last_online > upper[0]:
                tx.tvr.set("upper_consecutive_offline_limit_exceeded")
        if last_online == 0:
            tx.tvr.set("new_card")
    tx.log(
        "terminal risk management",
        ", ".join(n for n in TVR.decode(bytes(tx.tvr)) if n in _TRM_BITS) or "passed",
    )


_TRM_BITS = {
    "card_on_exception_file",
    "transaction_exceeds_floor_limit",
    "transaction_selected_randomly_for_online_processing",
    "lower_consecutive_offline_limit_exceeded",
    "upper_consecutive_offline_limit_exceeded",
    "new_card",
}


def _randomly_selected(state: ContactState, amount_fen: int, row: object) -> bool:
    """Biased random transaction selection (Book 3 §10.6.2)."""
    floor, threshold = row.floor_limit_fen, row.random_threshold_fen  # type: ignore[attr-defined]
    target, maximum = row.random_target_percent, row.random_max_target_percent  # type: ignore[attr-defined]
    if floor == 0 or maximum == 0:
        return False
    number = state.random(99) + 1  # 1..99
    if amount_fen < threshold:
        return number <= target
    interpolation = (amount_fen - threshold) / max(floor - threshold, 1)
    return number <= target + (maximum - target) * interpolation


def _get_counter(link: CardLink, tag: str) -> int | None:
    reply = link.get_data(tag)
    if not reply.ok:
        return None
    try:
        value = decode(reply.data)[0].value
    except (TLVError, IndexError):
        return None
    return int.from_bytes(value, "big") if len(value) == 2 else None


def _action_code(tx: Transaction, card_tag: str, tac: bytes, missing: bytes) -> bool:
    """Does the TVR hit (IAC | TAC)? An absent IAC counts as ``missing`` (Book 3 §10.7)."""
    iac = tx.card.get(card_tag)
    iac = iac if iac is not None and len(iac) == 5 else missing
    tvr = bytes(tx.tvr)
    return any(t & (i | a) for t, i, a in zip(tvr, iac, tac, strict=True))


def terminal_action_analysis(state: ContactState, tx: Transaction) -> int:
    """Step 8: the cryptogram to ask for (Book 3 §10.7)."""
    row = tx.aid_params
    if row is None:
        raise AssertionError("action analysis before an AID was selected")
    if _action_code(tx, "9F0E", row.tac_denial, bytes(5)):
        decision, why = AC_AAC, "TVR hits the denial action codes"
    elif tx.online_capable and state.acquirer is not None:
        online = _action_code(tx, "9F0F", row.tac_online, b"\xff" * 5)
        decision, why = (
            (AC_ARQC, "TVR hits the online action codes") if online else (AC_TC, "offline approval")
        )
    elif tx.online_capable:
        online = _action_code(tx, "9F0F", row.tac_online, b"\xff" * 5)
        decision, why = (
            (AC_ARQC, "online codes hit; no acquirer link") if online else (AC_TC, "offline approval")
        )
    else:
        default = _action_code(tx, "9F0D", row.tac_default, b"\xff" * 5)
        decision, why = (
            (AC_AAC, "offline-only: default codes hit") if default else (AC_TC, "offline approval")
        )
    if state.cda and state.keys is None and decision == AC_TC:
        decision, why = AC_AAC, "CDA failed before GENERATE AC: no offline approval"
    tx.log("terminal action analysis", f"{AC_NAMES[decision]}: {why}")
    return decision


def _cdol_data(tx: Transaction, tag: str) -> bytes:
    dol = tx.card.get(tag, b"")
    try:
        return tx.dol_data(dol)
    except DOLError as exc:
        raise Stop(Outcome.END_APPLICATION, f"{'CDOL1' if tag == '8C' else 'CDOL2'} ({tag}): {exc}") from None


def _generate_ac(state: ContactState, tx: Transaction, requested: int, *, second: bool) -> int:
    """GENERATE AC; store 9F27/9F36/9F26/9F10; check CDA; return the CID's cryptogram type."""
    cdol_tag = "8D" if second else "8C"
    data = _cdol_data(tx, cdol_tag)
    if second:
        tx.cdol2_data = data
    else:
        tx.cdol1_data = data
        state.gac1_values = tx.dol_values()
    cda = state.cda and state.keys is not None and requested != AC_AAC
    reply = state.link.generate_ac(requested | (P1_CDA if cda else 0), data, second=second)
    step = "GENERATE AC (second)" if second else "GENERATE AC"
    if not reply.ok:
        raise Stop(Outcome.END_APPLICATION, f"{step}: card answered {reply.sw:04X}")
    try:
        template = parse_template(reply.data, step, "80", "77")
    except CardLinkError as exc:
        raise Stop(Outcome.END_APPLICATION, str(exc)) from None
    if template.tag == "80":
        value = template.value
        if len(value) < 11:
            raise Stop(Outcome.END_APPLICATION, f"{step}: format 1 answer of {len(value)} bytes")
        found = {"9F27": value[:1], "9F36": value[1:3], "9F26": value[3:11]}
        if len(value) > 11:
            found["9F10"] = value[11:]
    else:
        found = {}
        for child in template.children or []:
            if child.children is None:
                if child.tag in found:
                    raise Stop(Outcome.END_APPLICATION, f"{step}: duplicate data {child.tag}")
                found[child.tag] = child.value
    if "9F27" not in found or "9F36" not in found:
        tx.tvr.set("icc_data_missing")
        raise Stop(Outcome.END_APPLICATION, f"{step}: answer without 9F27 or 9F36")
    for tag, value in found.items():
        tx.card[tag], tx.card_sources[tag] = value, step
    cid = found["9F27"][0] & 0xC0
    if cid not in AC_NAMES:
        raise Stop(Outcome.END_APPLICATION, f"{step}: cryptogram type {cid:02X} is not AAC, TC or ARQC")
    if {AC_AAC: 0, AC_ARQC: 1, AC_TC: 2}[cid] > {AC_AAC: 0, AC_ARQC: 1, AC_TC: 2}[requested]:
        raise Stop(
            Outcome.END_APPLICATION,
            f"{step}: the card answered {AC_NAMES[cid]} to a request for {AC_NAMES[requested]}",
        )
    if "9F10" in found:
        with contextlib.suppress(ValueError):  # a non-PBOC IAD: the suite stays unknown
            tx.suite = parse_iad(found["9F10"]).suite
    if cda and cid != AC_AAC:
        ac = oda.cda(
            tx,
            state.keys,
            response_tlvs=template.value if template.tag == "77" else reply.data,
            cdol1_data=tx.cdol1_data,
            cdol2_data=tx.cdol2_data if second else b"",
        )
        if ac is None:
            tx.log(step, f"{AC_NAMES[cid]} with a CDA signature that fails")
            return -1
        tx.card["9F26"], tx.card_sources["9F26"] = ac, step
    elif "9F26" not in found:
        tx.tvr.set("icc_data_missing")
        raise Stop(Outcome.END_APPLICATION, f"{step}: answer without the cryptogram (9F26)")
    reason = found["9F27"][0] & 0x07
    note = {
        0x01: ", service not allowed",
        0x02: ", PIN try limit exceeded",
        0x03: ", issuer authentication failed",
    }
    tx.log(step, f"{AC_NAMES[cid]}{note.get(reason, '')}")
    return cid


def _online_values(state: ContactState, tx: Transaction) -> dict[str, bytes]:
    """Field 55 data: the terminal data the first GENERATE AC sent, with the card's answer."""
    values = dict(state.gac1_values or tx.dol_values())
    values.update(tx.card)
    values["84"] = tx.aid
    return values


def _authorise(state: ContactState, tx: Transaction) -> IssuerResponse | None:
    """Send the ARQC online; None when the acquirer cannot be reached."""
    acquirer, pan = state.acquirer, tx.pan
    if acquirer is None or pan is None:
        return None
    try:
        arc, ic_data = acquirer.authorise(
            field55(_online_values(state, tx)),
            pan=pan,
            psn=tx.psn,
            amount_fen=tx.amount_fen,
            pin_block=state.online_pin_block,
            tag_5f24=tx.card.get("5F24"),
            tag_57=tx.card.get("57"),
        )
        response = parse_issuer_response(arc, ic_data)
    except OnlineError as exc:
        tx.log("online", f"unable to go online: {exc}")
        return None
    except ValueError as exc:
        tx.log("online", f"unusable issuer response: {exc}")
        return None
    tx.log("online", f"ARC {response.arc.decode('ascii', 'replace')}")
    return response


def _scripts(state: ContactState, tx: Transaction, templates: Iterable[bytes], *, after: bool) -> None:
    """Issuer script processing (Book 3 §10.10): each 86 command, results in DF31."""
    results = bytearray(tx.terminal.get("DF31", b""))
    for whole in templates:
        tx.tsi.set("script_processing_performed")
        try:
            template = decode(whole)[0]
        except (TLVError, IndexError):
            results += b"\x10" + bytes(4)
            continue
        children = template.children or []
        script_id = next((c.value for c in children if c.tag == "9F18" and len(c.value) == 4), bytes(4))
        commands = [c.value for c in children if c.tag == "86"][:SCRIPT_COMMANDS_MAX]
        outcome = 0x20  # successful
        for number, command in enumerate(commands, 1):
            reply = state.link.exchange(command, f"issuer script {script_id.hex().upper()} command {number}")
            if reply.sw >> 8 not in SCRIPT_OK_SW1:
                outcome = 0x10 | min(number, 0x0F)
                tx.tvr.set(
                    "script_processing_failed_after_final_generate_ac"
                    if after
                    else "script_processing_failed_before_final_generate_ac"
                )
                tx.log("issuer script", f"{script_id.hex().upper()} command {number} answered {reply.sw:04X}")
                break
        else:
            tx.log("issuer script", f"{script_id.hex().upper()}: {len(commands)} commands processed")
        results += bytes([outcome]) + script_id
    if results:
        tx.terminal["DF31"] = bytes(results)


def _issuer_authentication(state: ContactState, tx: Transaction, response: IssuerResponse) -> None:
    """91 to the card: through CDOL2 when it asks for 91, else EXTERNAL AUTHENTICATE (Book 3 §10.9)."""
    if response.tag_91 is None or not AIP.new(tx.card["82"]).is_set("issuer_authentication_supported"):
        return
    tx.terminal["91"] = response.tag_91
    tx.tsi.set("issuer_authentication_performed")
    cdol2 = {tag for tag, _ in parse_dol(tx.card.get("8D", b""))}
    if "91" in cdol2:
        tx.log("issuer authentication", "91 goes to the card in CDOL2")
        return
    reply = state.link.external_authenticate(response.tag_91)
    if not reply.ok:
        tx.tvr.set("issuer_authentication_failed")
    tx.log("issuer authentication", "passed" if reply.ok else f"failed ({reply.sw:04X})")


def _online(state: ContactState, tx: Transaction) -> None:
    """Steps 10–11 after an ARQC: authorise, issuer authentication, scripts, second GENERATE AC."""
    response = _authorise(state, tx)
    if response is None:
        row = tx.aid_params
        default = row is not None and _action_code(tx, "9F0D", row.tac_default, b"\xff" * 5)
        tx.terminal["8A"] = ARC_UNABLE_DECLINE if default else ARC_UNABLE_APPROVE
        requested = AC_AAC if default else AC_TC
        approved_by = "offline after failing to go online"
    else:
        tx.terminal["8A"] = response.arc
        _issuer_authentication(state, tx, response)
        _scripts(state, tx, response.scripts_71, after=False)
        requested = AC_TC if response.approved else AC_AAC
        approved_by = "by the issuer"
    cid = _generate_ac(state, tx, requested, second=True)
    if response is not None:
        _scripts(state, tx, response.scripts_72, after=True)
    arc = tx.terminal["8A"].decode("ascii", "replace")
    if cid == AC_TC:
        kind = Outcome.APPROVED_ONLINE if response is not None else Outcome.APPROVED_OFFLINE
        raise Stop(kind, f"approved {approved_by} (ARC {arc}), the card agreed (TC)")
    if cid == -1:
        raise Stop(Outcome.DECLINED, "CDA failed on the second GENERATE AC")
    if response is not None and response.approved:
        raise Stop(Outcome.DECLINED, f"the issuer approved (ARC {arc}) but the card declined (AAC)")
    raise Stop(Outcome.DECLINED, f"declined {approved_by} (ARC {arc})")


def _flow(state: ContactState, tx: Transaction, confirm: object, choose_hook: object) -> None:
    link, terminal = state.link, state.terminal
    candidates = selection.contact_candidates(link, tx, terminal.aids, terminal.aids.match)
    _initiate(state, tx, candidates, confirm=confirm, choose_hook=choose_hook)
    records.read_records(link, tx, tx.card["94"])
    records.require(tx, CONTACT_MANDATORY, "a contact transaction")
    offline_data_authentication(state, tx)
    processing_restrictions(tx)
    cardholder_verification(state, tx)
    terminal_risk_management(state, tx)
    requested = terminal_action_analysis(state, tx)
    cid = _generate_ac(state, tx, requested, second=False)
    tx.tsi.set("card_risk_management_performed")
    if cid == -1:
        if tx.card.get("9F27", b"\x00")[0] & 0xC0 == AC_ARQC:
            tx.terminal["8A"] = ARC_UNABLE_DECLINE
            _generate_ac(state, tx, AC_AAC, second=True)  # close the transaction on the card
        raise Stop(Outcome.DECLINED, "CDA failed: the card's cryptogram is not trusted")
    if cid == AC_AAC:
        reason = tx.card["9F27"][0] & 0x07
        extra = " (PIN try limit exceeded)" if reason == 0x02 else ""
        raise Stop(Outcome.DECLINED, f"declined offline (AAC){extra}")
    if cid == AC_TC:
        raise Stop(Outcome.APPROVED_OFFLINE, "approved offline (TC)")
    if state.acquirer is None and tx.online_capable:
        raise Stop(Outcome.ONLINE_REQUEST, "the card asks for online authorisation (ARQC)")
    _online(state, tx)


def run_contact(
    transport: Transport,
    terminal: Terminal,
    *,
    amount_fen: int,
    when: dt.datetime | None = None,
    unpredictable_number: bytes | None = None,
    transaction_type: int = 0x00,
    acquirer: AcquirerLink | None = None,
    pin_pad: PinPad | None = None,
    confirm: selection.ConfirmHook | None = None,
    choose: selection.ChooseHook | None = None,
    random: Callable[[int], int] | None = None,
) -> Result:
    """One contact transaction with the card behind ``transport`` (see the module note).

    Without ``acquirer`` an ARQC ends as ONLINE_REQUEST with field 55 for the terminal program to
    send; with it the kernel completes the transaction (issuer authentication, scripts, second
    GENERATE AC). ``random(n)`` → 0..n-1 drives random transaction selection (tests fix it).
    """
    tx = Transaction.new(
        terminal.profile,
        amount_fen=amount_fen,
        interface="contact",
        when=when,
        transaction_type=transaction_type,
        unpredictable_number=unpredictable_number,
    )
    state = ContactState(CardLink(transport), terminal, pin_pad, acquirer)
    if random is not None:
        state.random = random
    try:
        transport.connect()
        _flow(state, tx, confirm, choose)
    except Stop as stop:
        return _finish(state, tx, stop)
    except CardGoneError as exc:
        return _finish(state, tx, Stop(Outcome.END_APPLICATION, f"card lost: {exc}"))
    except CardLinkError as exc:
        return _finish(state, tx, Stop(Outcome.END_APPLICATION, str(exc)))
    except TransportError as exc:
        return _finish(state, tx, Stop(Outcome.END_APPLICATION, f"reader: {exc}"))
    raise AssertionError("the contact flow ended without an outcome")


def _finish(state: ContactState, tx: Transaction, stop: Stop) -> Result:
    """The result; field 55 carries the TVR of the last GENERATE AC (what its cryptogram covers)."""
    return finish(tx, stop)


def results_of_scripts(tag_df31: bytes) -> list[tuple[int, int, bytes]]:
    """DF31 split into (result 0/1/2, command number, script ID) per script."""
    if len(tag_df31) % 5:
        raise ValueError(f"issuer script results (DF31) of {len(tag_df31)} bytes is not 5 per script")
    return [
        (tag_df31[i] >> 4, tag_df31[i] & 0x0F, tag_df31[i + 1 : i + 5]) for i in range(0, len(tag_df31), 5)
    ]
