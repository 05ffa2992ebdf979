"""Card risk management as pure functions: inputs in, (decision, CVR) out.

Sources: EMV Book 3 §10.6 / §6.5.5 (card action analysis is the card's own), VIS 1.5 card risk
management as copied by JR/T 0025.5 (CVR layout in :data:`citycard.emv.bits.CVR`), electronic
cash rules of JR/T 0025.13 as digested in pboc-notes §6, qPBOC of JR/T 0025.12 (pboc-notes §5).

Rules of this card (UNCERTAIN where pboc-notes is silent; the ADA 9F52 is not interpreted because
its bit layout is not in pboc-notes — the policy below is fixed):

* The card never answers a higher cryptogram than the terminal asked for, in the order of EMV Book 3
  §6.5.5.4 Table 12: AAC < ARQC < TC (a TC request may become ARQC or AAC, an ARQC request AAC).
* First GENERATE AC: every check in :data:`ONLINE_CHECKS` that holds sets its CVR bit and caps the
  answer at ARQC (go online). A blocked application answers AAC, or ARQC when the terminal asked
  for ARQC (so the issuer can still send APPLICATION UNBLOCK).
* The international-currency limits 9F53/9F72 and the dual-currency EC objects (Part 15) are not
  checked; a foreign-currency amount is not added to the cumulative offline amount.
* A pure electronic-cash application (AID …0106) never approves offline outside the EC balance.
* Electronic cash (terminal asked TC on an EC transaction): the checks marked ``ec=False`` are
  skipped (unable-to-go-online, issuer authentication, script, new card, PIN tries, velocity —
  pboc-notes §6); SDA/DDA-failed-last-time are kept. The EC offline approval needs the amount ≤
  9F78, ≤ the balance, and the application currency. Otherwise the transaction continues as a
  standard debit/credit one (the full checks apply).
* Second GENERATE AC: "unable to go online" (ARC Y3/Z3) approves offline unless the upper
  consecutive limit 9F59 or the upper cumulative amount 9F5C is reached, or the PIN try limit is
  exceeded; an online answer approves (TC) only with an approving ARC and without a failed (or a
  missing mandatory, 9F56 b8) issuer authentication.
* qPBOC (GPO): offline EC approval when the amount ≤ 9F78 and ≤ the balance, the currency is the
  application's, no SDA/DDA failure is pending, the terminal does not demand an online cryptogram,
  and balance − amount ≥ the reset threshold 9F6D — or the reader is offline-only (pboc-notes §6:
  "offline-only terminal asks for offline approval"). Otherwise ARQC, or AAC on an offline-only
  reader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from citycard.emv.bits import CVR

APPROVING_ARCS = frozenset({b"00", b"10", b"11"})  # 8A, ASCII (Book 4 Annex A6)
UNABLE_ONLINE_ARCS = frozenset({b"Y3", b"Z3"})  # terminal could not go online (Book 4 Annex A6)


class Ac(IntEnum):
    """Cryptogram types in the order the card may lower them (Book 3 Table 12): AAC < ARQC < TC."""

    AAC = 0
    ARQC = 1
    TC = 2

    @property
    def cid(self) -> int:
        """Cryptogram information data (9F27): 00 AAC, 40 TC, 80 ARQC."""
        return (0x00, 0x80, 0x40)[self]

    @classmethod
    def from_p1(cls, p1: int) -> Ac:
        """The type a GENERATE AC asks for, from P1 b8–b7 (ValueError for 11, RFU)."""
        kind = p1 & 0xC0
        if kind == 0xC0:
            raise ValueError("GENERATE AC P1 b8–b7 = 11 is RFU")
        return {0x00: cls.AAC, 0x40: cls.TC, 0x80: cls.ARQC}[kind]


@dataclass(frozen=True, slots=True)
class RiskInput:
    """Everything card risk management looks at, as plain values."""

    requested: Ac
    amount_fen: int = 0
    currency_matches: bool = True  # transaction currency (5F2A) is the application currency (9F51)
    flags: frozenset[str] = frozenset()  # persistent conditions (state.FLAGS)
    new_card: bool = False  # last online ATC (9F13) is zero
    pin_tries_left: int = 3
    offline_pin_performed: bool = False
    offline_pin_failed: bool = False
    dda_performed: bool = False
    script_counter: int = 0
    consecutive_offline: int = 0
    cumulative_offline_fen: int = 0
    lower_consecutive_limit: int | None = None  # 9F58
    upper_consecutive_limit: int | None = None  # 9F59
    cumulative_limit_fen: int | None = None  # 9F54
    upper_cumulative_limit_fen: int | None = None  # 9F5C
    application_blocked: bool = False
    ec_requested: bool = False  # an electronic-cash transaction (contact 9F7A = 01, or qPBOC)
    ec_only: bool = False  # a pure electronic-cash application (…0106): no offline approval but EC
    ec_balance_fen: int | None = None
    ec_single_limit_fen: int | None = None  # 9F78
    ec_reset_threshold_fen: int = 0  # 9F6D


@dataclass(frozen=True, slots=True)
class Decision:
    ac: Ac
    cvr: bytes  # the 3 CVR bytes
    ec_approved: bool = False  # offline approval from the electronic-cash balance
    reasons: tuple[str, ...] = ()  # the checks that lowered the answer, for tests and logs


@dataclass(frozen=True, slots=True)
class Check:
    condition: Callable[[RiskInput], bool]
    cvr_bit: str
    ec: bool  # still performed on an electronic-cash transaction


def _velocity_exceeded(risk: RiskInput) -> bool:
    lower = risk.lower_consecutive_limit
    limit = risk.cumulative_limit_fen
    return (lower is not None and risk.consecutive_offline >= lower) or (
        limit is not None and risk.currency_matches and risk.cumulative_offline_fen + risk.amount_fen > limit
    )


ONLINE_CHECKS: dict[str, Check] = {  # condition name → check; each holding one caps the answer at ARQC
    "last online transaction not completed": Check(
        lambda r: "online_not_completed" in r.flags, "last_online_transaction_not_completed", ec=False
    ),
    "issuer authentication failed last time": Check(
        lambda r: "issuer_auth_failed_last" in r.flags,
        "issuer_authentication_failure_on_last_online_transaction",
        ec=False,
    ),
    "issuer script failed last time": Check(
        lambda r: "script_failed_last" in r.flags, "issuer_script_processing_failed", ec=False
    ),
    "SDA failed last time": Check(
        lambda r: "sda_failed_last" in r.flags, "sda_failed_on_last_transaction_and_declined_offline", ec=True
    ),
    "DDA failed last time": Check(
        lambda r: "dda_failed_last" in r.flags, "dda_failed_on_last_transaction_and_declined_offline", ec=True
    ),
    "new card": Check(lambda r: r.new_card, "new_card", ec=False),
    "PIN try limit exceeded": Check(lambda r: r.pin_tries_left == 0, "pin_try_limit_exceeded", ec=False),
    "velocity limits exceeded": Check(_velocity_exceeded, "exceeded_velocity_checking_counters", ec=False),
}


def _base_cvr(risk: RiskInput) -> list[str]:
    bits = []
    if risk.offline_pin_performed:
        bits.append("offline_pin_verification_performed")
    if risk.offline_pin_failed:
        bits.append("offline_pin_verification_failed")
    if risk.dda_performed:
        bits.append("dda_performed")
    bits.append(f"issuer_script_commands_processed={min(risk.script_counter, 15)}")
    return bits


def ec_offline_possible(risk: RiskInput) -> tuple[bool, tuple[str, ...]]:
    """Whether the EC balance may approve this amount offline, and why not (pboc-notes §6)."""
    reasons = []
    if risk.ec_balance_fen is None:
        reasons.append("no electronic cash on this card")
    else:
        if risk.amount_fen > risk.ec_balance_fen:
            reasons.append("amount above the EC balance")
        if risk.ec_single_limit_fen is not None and risk.amount_fen > risk.ec_single_limit_fen:
            reasons.append("amount above the EC single transaction limit (9F78)")
    if not risk.currency_matches:
        reasons.append("transaction currency is not the application currency")
    if risk.application_blocked:
        reasons.append("application blocked")
    reasons += [name for name, check in ONLINE_CHECKS.items() if check.ec and check.condition(risk)]
    return not reasons, tuple(reasons)


def first_generate_ac(risk: RiskInput) -> Decision:
    """Card risk management and card action analysis for the first GENERATE AC."""
    bits = ["second_gac_not_requested", *_base_cvr(risk)]
    if risk.ec_requested and risk.requested == Ac.TC:
        possible, _ = ec_offline_possible(risk)
        if possible:
            return _decided(Ac.TC, bits, (), ec_approved=True)
    reasons: list[str] = []
    for name, check in ONLINE_CHECKS.items():
        if check.condition(risk):
            bits.append(check.cvr_bit)
            reasons.append(name)
    if risk.ec_only:
        reasons.append("a pure EC application approves offline only from the EC balance")
    choice = Ac.ARQC if reasons else Ac.TC
    if risk.application_blocked:
        reasons.append("application blocked")
        choice = Ac.ARQC if risk.requested == Ac.ARQC else Ac.AAC
    ac = min(risk.requested, choice)
    return _decided(ac, bits, tuple(reasons) if ac < risk.requested else ())


def _decided(ac: Ac, bits: list[str], reasons: tuple[str, ...], *, ec_approved: bool = False) -> Decision:
    name = {
        Ac.AAC: "first_gac_returned_aac",
        Ac.TC: "first_gac_returned_tc",
        Ac.ARQC: "first_gac_returned_arqc",
    }
    return Decision(ac, CVR.encode([name[ac], *bits]), ec_approved, reasons)


@dataclass(frozen=True, slots=True)
class OnlineResult:
    """What the second GENERATE AC learns from the terminal and the issuer."""

    requested: Ac  # TC or AAC
    tag_8a: bytes  # authorisation response code (2 ASCII bytes)
    issuer_auth: str  # "passed", "failed" or "" (not performed)
    issuer_auth_supported: bool = True  # AIP b3
    issuer_auth_mandatory: bool = False  # 9F56 b8


def second_generate_ac(first_cvr: bytes, risk: RiskInput, online: OnlineResult) -> Decision:
    """Card action analysis for the second GENERATE AC (issuer authentication, ARC, offline fallback).

    ``first_cvr`` is the CVR answered with the ARQC; its first-AC type is kept, the rest recomputed.
    """
    first = ("first_gac_returned_aac", "first_gac_returned_tc", "first_gac_returned_arqc")
    bits = [first[CVR.new(first_cvr).get("first_gac_ac_type")], *_base_cvr(risk)]
    reasons: list[str] = []
    if online.issuer_auth == "failed":
        bits.append("issuer_authentication_performed_and_failed")
        reasons.append("issuer authentication failed")
    unable = online.tag_8a in UNABLE_ONLINE_ARCS
    if unable:
        bits.append("unable_to_go_online")
        upper = risk.upper_consecutive_limit
        limit = risk.upper_cumulative_limit_fen
        if upper is not None and risk.consecutive_offline >= upper:
            bits.append("exceeded_velocity_checking_counters")
            reasons.append("upper consecutive offline limit reached")
        if (
            limit is not None
            and risk.currency_matches
            and risk.cumulative_offline_fen + risk.amount_fen > limit
        ):
            bits.append("exceeded_velocity_checking_counters")
            reasons.append("upper cumulative offline amount reached")
        if risk.pin_tries_left == 0:
            bits.append("pin_try_limit_exceeded")
            reasons.append("PIN try limit exceeded")
        if risk.ec_only:
            reasons.append("a pure EC application approves offline only from the EC balance")
    else:
        if online.issuer_auth == "" and online.issuer_auth_supported:
            bits.append("issuer_authentication_not_performed_after_online_authorisation")
            if online.issuer_auth_mandatory:
                reasons.append("mandatory issuer authentication not performed")
        if online.tag_8a not in APPROVING_ARCS:
            reasons.append(f"issuer declined (ARC {online.tag_8a.hex().upper()})")
    if risk.application_blocked:
        reasons.append("application blocked")
    ac = Ac.AAC if reasons else online.requested
    second = "second_gac_returned_tc" if ac == Ac.TC else "second_gac_returned_aac"
    return Decision(ac, CVR.encode([second, *dict.fromkeys(bits)]), False, tuple(reasons))


@dataclass(frozen=True, slots=True)
class QpbocInput:
    """What the qPBOC GPO decision looks at besides :class:`RiskInput` (pboc-notes §5, §6)."""

    online_capable: bool  # TTQ byte 1 b4 (offline-only reader) clear
    online_cryptogram_required: bool  # TTQ byte 2 b8
    cash: bool = False  # 9C = 01: no offline EC cash
    offline_signing_possible: bool = True  # the card holds the private key fDDA needs


def qpboc_decision(risk: RiskInput, q: QpbocInput) -> Decision:
    """The card's decision inside a qPBOC GPO: TC (offline EC), ARQC or AAC."""
    possible, reasons = ec_offline_possible(risk)
    why = list(reasons)
    if q.online_cryptogram_required:
        why.append("terminal requires an online cryptogram")
    if q.cash:
        why.append("cash is never approved offline")
    if not q.offline_signing_possible:
        why.append("no ICC private key for fDDA in this suite")
    above_threshold = (
        risk.ec_balance_fen is not None
        and risk.ec_balance_fen - risk.amount_fen >= risk.ec_reset_threshold_fen
    )
    if possible and not above_threshold and q.online_capable:
        why.append("balance would fall below the reset threshold (9F6D)")
    bits = ["second_gac_not_requested", *_base_cvr(risk)]
    bits += [c.cvr_bit for c in ONLINE_CHECKS.values() if c.ec and c.condition(risk)]
    if not why:
        return _decided(Ac.TC, bits, (), ec_approved=True)
    ac = Ac.ARQC if q.online_capable and not risk.application_blocked else Ac.AAC
    return _decided(ac, bits, tuple(why))
