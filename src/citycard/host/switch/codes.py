"""Response codes (F39) the switch itself sets, with their sources (ISO 8583:1987 code table).

The switch relays every issuer answer unchanged; it only writes F39 when it answers in the issuer's
place. Codes marked UNCERTAIN are our choice where CUPS practice could not be confirmed.
"""

from __future__ import annotations

APPROVED = "00"  # stand-in approval (the advice 0220 carries the same code to the issuer)
FORMAT_ERROR = "30"  # a request the switch cannot route: no F2 on a message that needs one
INVALID_CARD_NUMBER = "14"  # F2 is not 12..19 digits
NO_SUCH_ISSUER = "15"  # no BIN prefix matches and no default route
LATE_RESPONSE = "68"  # the endpoint did not answer within its timeout (ISO "response received
# too late"; CUPS commonly answers 91 here too — UNCERTAIN which one CUPS switches use)
ISSUER_UNAVAILABLE = "91"  # the endpoint is down (no connection) and no stand-in rule approves

# What the endpoint acknowledges a stored message with (store-and-forward ends on any of them).
ACK_MTI = {"0220": "0230", "0400": "0410"}
