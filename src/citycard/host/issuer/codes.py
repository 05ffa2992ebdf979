"""Response codes (F39 / ARC 8A) the issuer answers, with where each choice comes from.

Sources: ISO 8583:1987 response codes as CUPS uses them (UnionPay POS response-code table, public
copies e.g. 17tex.com/tex/3/487253.html "银联交易响应码", cardinfolink Smart-POS code table), and
pboc-notes §10. Codes marked UNCERTAIN are our choice where no CUPS rule was found; docs/issuer.md
carries the same table.
"""

from __future__ import annotations

APPROVED = "00"
DO_NOT_HONOUR = "05"
INVALID_TRANSACTION = "12"
INVALID_AMOUNT = "13"  # CUPS: an amount that must be valid is 0 (also: F4 ≠ 9F02)
NO_SUCH_CARD = "14"  # CUPS: the issuer has no such PAN (here: PAN + PSN)
ORIGINAL_NOT_FOUND = "25"  # CUPS: original transaction not found (reversal)
REVERSED_BEFORE = "22"  # CUPS 22 "suspected malfunction": an abnormal related transaction — here an
# original arriving after its own reversal (UNCERTAIN: our reading of the CUPS table)
FORMAT_ERROR = "30"
LOST_CARD = "41"
STOLEN_CARD = "43"
INSUFFICIENT_FUNDS = "51"
EXPIRED_CARD = "54"
WRONG_PIN = "55"
SUSPECTED_FRAUD = "59"  # ISO 8583: suspected fraud — a suspicious ATC jump (UNCERTAIN for CUPS)
OVER_LIMIT = "61"  # exceeds amount limit: per transaction, per day, or the EC balance limit 9F77
RESTRICTED_CARD = "62"  # CUPS: restricted card — a card the platform blocked
SECURITY_VIOLATION = "63"  # ISO 8583: security violation — a replayed ATC (UNCERTAIN for CUPS)
PIN_TRIES_EXCEEDED = "75"
RECONCILE_ERROR = "95"  # ISO 8583: reconcile error — 0500 totals differ (UNCERTAIN for CUPS: F48 flag)
SYSTEM_MALFUNCTION = "96"

# An ARQC (or the IAD's EC-balance MAC) that does not verify. CUPS lists 05 "do not honour" for a
# failed card verification (CVN 验证失败); no CUPS code for an ARQC failure was found, so we use 05
# — UNCERTAIN (Mastercard uses 88 "cryptographic failure"; some hosts use A0, which CUPS POS uses
# for a field-64 MAC failure).
CRYPTOGRAM_FAILURE = DO_NOT_HONOUR

APPROVING = frozenset({APPROVED})

MEANINGS = {
    APPROVED: "approved",
    DO_NOT_HONOUR: "do not honour / cryptogram failure",
    INVALID_TRANSACTION: "invalid transaction",
    INVALID_AMOUNT: "invalid amount",
    NO_SUCH_CARD: "no such card",
    ORIGINAL_NOT_FOUND: "original not found",
    REVERSED_BEFORE: "original arrived after its reversal",
    FORMAT_ERROR: "format error",
    LOST_CARD: "lost card",
    STOLEN_CARD: "stolen card",
    INSUFFICIENT_FUNDS: "insufficient funds",
    EXPIRED_CARD: "expired card",
    WRONG_PIN: "wrong PIN",
    SUSPECTED_FRAUD: "suspected fraud (ATC jump)",
    OVER_LIMIT: "exceeds amount limit",
    RESTRICTED_CARD: "restricted (blocked) card",
    SECURITY_VIOLATION: "security violation (ATC replay)",
    PIN_TRIES_EXCEEDED: "PIN tries exceeded",
    RECONCILE_ERROR: "settlement totals differ",
    SYSTEM_MALFUNCTION: "system malfunction",
}

STATUS_CODES = {"blocked": RESTRICTED_CARD, "lost": LOST_CARD, "stolen": STOLEN_CARD}
