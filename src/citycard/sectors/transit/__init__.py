"""Transit fares as data (issue 7 item 1; docs/transit-fares.md).

* :mod:`.table` — the fare table (TOML in ``citycard/data/transit/``), validated with precise errors;
* :mod:`.record` — the trip record on the card (Part 14 SFI 15 record 0570, 64 bytes; pboc-notes §7);
* :mod:`.pricing` — :func:`price_tap`, the one function a validator calls per tap;
* :mod:`.correction` — missing-exit corrections and daily-cap paybacks from a day's taps (clearing).

Everything here is pure: no I/O except :func:`load_table`, which reads a shipped table.
"""

from citycard.sectors.transit.correction import Correction, PricedTap, Refund, correction
from citycard.sectors.transit.pricing import CardState, Decision, Tap, TapError, price_tap
from citycard.sectors.transit.record import RecordError, TripRecord, TripStatus, pack_record, unpack_record
from citycard.sectors.transit.table import FareTable, FareTableError, Line, load_table, parse_table

__all__ = [
    "CardState",
    "Correction",
    "Decision",
    "FareTable",
    "FareTableError",
    "Line",
    "PricedTap",
    "RecordError",
    "Refund",
    "Tap",
    "TapError",
    "TripRecord",
    "TripStatus",
    "correction",
    "load_table",
    "pack_record",
    "parse_table",
    "price_tap",
    "unpack_record",
]
