"""The application's dynamic state: persistent counters and flags, and the transient transaction.

:class:`Counters` survives a restart (it is in the card image); :class:`Transaction` lives from
SELECT to the next SELECT or deselection and is never saved, so a card torn between two commands
comes back with its persistent state as of the last ``ctx.save()`` and no half transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from citycard.crypto.suite import Suite

ATC_MAX = 0xFFFF
SCRIPT_COUNTER_MAX = 15  # 4 bits in CVR byte 3

# Persistent conditions card risk management reports in the CVR of later transactions.
FLAGS = frozenset(
    {
        "online_not_completed",  # an ARQC was answered and no second GENERATE AC followed
        "issuer_auth_failed_last",  # ARPC check failed (or was mandatory and missing) last time
        "script_failed_last",  # an issuer script command failed
        "sda_failed_last",  # SDA failed and the card declined offline
        "dda_failed_last",  # DDA/CDA failed and the card declined offline
    }
)


class Stage(IntEnum):
    """Where the current transaction is; commands check it (wrong order → 6985)."""

    SELECTED = 0
    PROCESSING = 1  # after GET PROCESSING OPTIONS (contact / contactless PBOC path)
    FIRST_AC = 2  # after the first GENERATE AC answered ARQC
    COMPLETED = 3  # an AC that ends the transaction was answered (TC/AAC, second GAC, qPBOC GPO)


@dataclass
class Counters:
    """Persistent dynamic data of the application (card image ``state``)."""

    atc: int = 0
    last_online_atc: int = 0  # 9F13
    pin_try_limit: int = 3
    pin_tries_left: int = 3  # 9F17
    ec_balance_fen: int | None = None  # 9F79; None when the card has no electronic cash
    consecutive_offline: int = 0  # offline approvals since the last online approval
    cumulative_offline_fen: int = 0  # their amounts (application currency)
    script_counter: int = 0  # issuer script commands since the last successful issuer authentication
    flags: set[str] = field(default_factory=set)
    application_blocked: bool = False
    card_blocked: bool = False

    def to_json(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["flags"] = sorted(self.flags)
        return out

    @classmethod
    def from_json(cls, image: dict[str, Any]) -> Counters:
        counters = cls(**{**image, "flags": set(image["flags"])})
        unknown = counters.flags - FLAGS
        if unknown:
            raise ValueError(f"card image: unknown state flags {sorted(unknown)}")
        return counters


@dataclass
class Transaction:
    """Transient data of one transaction, from SELECT on."""

    stage: Stage = Stage.SELECTED
    path: str = ""  # "contact" (also contactless full PBOC) or "qpboc"
    suite: Suite | None = None
    atc: bytes = b""
    aip: bytes = b""
    afl: bytes = b""  # the AFL the GPO answered (this interface's and suite's)
    pdol_data: bytes = b""
    cdol1_data: bytes = b""
    cdol2_data: bytes = b""
    values: dict[str, bytes] = field(default_factory=dict)  # terminal data from PDOL, CDOL1, CDOL2
    ec_requested: bool = False  # contact PDOL 9F7A = 01
    offline_pin_performed: bool = False
    offline_pin_failed: bool = False
    dda_performed: bool = False
    challenge: bytes = b""
    first_cvr: bytes = b""
    arqc: bytes | None = None  # the ARQC scripts and issuer authentication refer to
    issuer_auth: str = ""  # "", "passed", "failed": result of EXTERNAL AUTHENTICATE
    capp: bool = False  # DF60 = 01: a Part 14 extended-application transaction
    capp_approved: bool = False  # …whose purchase the card approved offline (TC in GPO)
    pending: Any = None  # an approved purchase waiting for its Part 14 record (capp.Pending)
    patched_records: dict[tuple[int, int], bytes] = field(default_factory=dict)  # 9F69 for fDDA 01
