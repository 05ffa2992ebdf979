"""Stand-in processing: what the switch answers when the issuer is down or late (pure functions).

When an endpoint cannot be reached (``down``) or does not answer in time (``timeout``), the switch
answers the acquirer itself (jPOS/ISO 8583 "stand-in processing"):

* the route's stand-in rule allows the message kind and the amount is at most its
  ``approve_max_fen`` → approve with F39 "00" and a stand-in authorisation code in F38, record
  the stand-in, and queue a 0220 **advice** so the issuer books it after recovery;
* otherwise decline: "91" (issuer unavailable) when down, "68" (response too late) on timeout.

On timeout the original may still have reached the issuer: unless it was stood in for, the switch
also queues a 0400 **reversal** (reason "98", no response received) so the issuer undoes it.
When it was stood in for, the advice replaces the reversal: the issuer books the advice under the
same identity as the original, so a late-processed original and the advice post once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from citycard.host.switch import codes
from citycard.host.switch.config import StandInRule
from citycard.iso8583 import builders

Outage = Literal["down", "timeout"]
STANDIN_AUTH_PREFIX = "S"  # F38 of a stand-in approval: "S" + the last 5 digits of the STAN
REVERSAL_REASON_NO_RESPONSE = "98"  # pboc-notes §10 / builders.reversal: no response received


@dataclass(frozen=True, slots=True)
class Decision:
    approved: bool
    response_code: str
    auth_code: str | None = None


def decide(rule: StandInRule | None, *, kind: str, amount_fen: int, stan: str, outage: Outage) -> Decision:
    """The stand-in answer for one request (pure).

    >>> rule = StandInRule(approve_max_fen=5_000)
    >>> decide(rule, kind="purchase", amount_fen=5_000, stan="000123", outage="down")
    Decision(approved=True, response_code='00', auth_code='S00123')
    >>> decide(rule, kind="purchase", amount_fen=5_001, stan="000123", outage="down").response_code
    '91'
    >>> decide(None, kind="purchase", amount_fen=1, stan="000123", outage="timeout").response_code
    '68'
    """
    if rule is not None and kind in rule.kinds and 0 <= amount_fen <= rule.approve_max_fen:
        return Decision(True, codes.APPROVED, f"{STANDIN_AUTH_PREFIX}{stan[-5:]}")
    return Decision(False, codes.ISSUER_UNAVAILABLE if outage == "down" else codes.LATE_RESPONSE)


def advice_for(request: dict[str, Any], decision: Decision) -> dict[str, Any]:
    """The 0220 advice telling the issuer about a stand-in approval of ``request`` (a 0100/0200).

    It carries the original's fields (same F11/F7/F41/F32, so the issuer can match it to the
    original), F39 = the stand-in response code and F38 = the stand-in authorisation code; PIN
    data and the MAC are dropped (the PIN was not verified; the forwarding link MACs anew).
    F60 is kept, so F60.1 still says what the original was — UNCERTAIN: CUPS may use its own
    F60.1 code or F3 for a stand-in advice.
    """
    if not decision.approved or decision.auth_code is None:
        raise ValueError("only a stand-in approval becomes an advice")
    fields = {k: v for k, v in request.items() if k not in ("52", "57", "26", "64", "35")}
    fields.update({"t": "0220", "39": decision.response_code, "38": decision.auth_code})
    builders.classify(fields)  # the advice must be a valid 0220 (processing code 000000)
    return fields


def reversal_for(request: dict[str, Any]) -> dict[str, Any]:
    """The 0400 reversal of a request that got no answer in time (reason 98)."""
    return builders.reversal(request, reason=REVERSAL_REASON_NO_RESPONSE)
