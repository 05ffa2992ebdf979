"""Terminal parameters as data: the AID table, the CA public key table with its revocation list,
and the exception file (blacklist). DESIGN.md §2 (``kernel``) and §3 ("specs as data").

>>> import datetime as dt
>>> aids, capks = AidTable.load(), CapkTable.load()
>>> aids.match(bytes.fromhex("A000000333010106")).ec_terminal_limit_fen
100000
>>> capks.lookup(bytes.fromhex("A000000333"), 0x18, today=dt.date(2026, 1, 1)).suite.name
'GM'
"""

from citycard.kernel.params.aid_table import AID_TABLE_MAX, FIELD_TAGS, AidParameters, AidTable, AidTableError
from citycard.kernel.params.capk_table import (
    REVOCATION_LIST_MAX,
    CapkExpired,
    CapkNotFound,
    CapkSource,
    CapkTable,
    CapkTableError,
    RevokedCertificate,
)
from citycard.kernel.params.exception_file import (
    EXCEPTION_FILE_ENTRIES_MAX,
    BlockedCard,
    ExceptionFile,
    ExceptionFileError,
    masked_pan,
    random_test_entries,
)

__all__ = [
    "AID_TABLE_MAX",
    "EXCEPTION_FILE_ENTRIES_MAX",
    "FIELD_TAGS",
    "REVOCATION_LIST_MAX",
    "AidParameters",
    "AidTable",
    "AidTableError",
    "BlockedCard",
    "CapkExpired",
    "CapkNotFound",
    "CapkSource",
    "CapkTable",
    "CapkTableError",
    "ExceptionFile",
    "ExceptionFileError",
    "RevokedCertificate",
    "masked_pan",
    "random_test_entries",
]
