"""ISO/IEC 7816-4 and EMV status words used by the card (EMV Book 1 §11, Book 3 §6.3.5)."""

from __future__ import annotations

OK = 0x9000
WARNING_SELECTED_FILE_INVALIDATED = 0x6283  # application blocked (SELECT answers FCI + 6283)
WRONG_LENGTH = 0x6700
SECURITY_STATUS_NOT_SATISFIED = 0x6982
AUTHENTICATION_METHOD_BLOCKED = 0x6983  # PIN try limit reached
REFERENCED_DATA_INVALIDATED = 0x6984
CONDITIONS_NOT_SATISFIED = 0x6985
COMMAND_NOT_ALLOWED = 0x6986
SM_DATA_OBJECTS_MISSING = 0x6987
SM_DATA_OBJECTS_INCORRECT = 0x6988
WRONG_DATA = 0x6A80
FUNCTION_NOT_SUPPORTED = 0x6A81  # card blocked (SELECT of any application)
FILE_NOT_FOUND = 0x6A82
RECORD_NOT_FOUND = 0x6A83
NOT_ENOUGH_MEMORY = 0x6A84
INCORRECT_P1_P2 = 0x6A86
REFERENCED_DATA_NOT_FOUND = 0x6A88
WRONG_P1_P2 = 0x6B00
INS_NOT_SUPPORTED = 0x6D00
CLA_NOT_SUPPORTED = 0x6E00
NO_PRECISE_DIAGNOSIS = 0x6F00


def pin_tries_left(tries: int) -> int:
    """63Cx: verification failed, x tries left (0–15)."""
    if not 0 <= tries <= 15:
        raise ValueError(f"PIN tries left must be 0 to 15, got {tries}")
    return 0x63C0 | tries


def bytes_available(count: int) -> int:
    """61xx (T=0): ``count`` response bytes wait for GET RESPONSE (00 means 256)."""
    return 0x6100 | (count & 0xFF)


def wrong_le(exact: int) -> int:
    """6Cxx (T=0): wrong Le, the exact length is xx."""
    return 0x6C00 | (exact & 0xFF)


class CardError(Exception):
    """Raised inside the card to answer with a status word (and no data); the OS turns it into bytes."""

    def __init__(self, sw: int, reason: str = ""):
        super().__init__(f"{sw:04X} {reason}".strip())
        self.sw = sw
        self.reason = reason
