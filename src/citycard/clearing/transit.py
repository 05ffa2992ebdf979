"""The ``"transit"`` object a bus or taxi validator adds to a clearing upload (issue 7 items 2–3).

A validator uploads :func:`citycard.clearing.record.upload_dict` plus what its fare rules decided
(``citycard.sectors.transit.Decision``)::

    {"kind": "entry"|"exit"|"flat"|"taxi", "line": str, "stop": str|None, "fare_fen": int,
     "refund_fen": int, "reasons": [str, …], "holder_kind": str}

:func:`parse_transit` checks it strictly (every key present, no other key, amounts 0…100,000 fen,
texts and lists within their limits) and returns a :class:`Transit`, or raises
:class:`~citycard.clearing.record.MalformedRecord` naming the field (``transit.stop: …``). Clearing
stores its canonical JSON (:meth:`Transit.json`) with the tap and pays ``refund_fen`` (an exit's
held − fare) back to the card as ``exitrefund:PAN:PSN:ATC``. Only an exit may carry a refund.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from citycard.clearing.errors import MalformedRecord

TRANSIT_KINDS = ("entry", "exit", "flat", "taxi")
TRANSIT_FIELDS = ("kind", "line", "stop", "fare_fen", "refund_fen", "reasons", "holder_kind")
TRANSIT_FEN_MAX = 100_000  # 1,000 yuan: far above any bus or taxi fare; a typo past it is refused
REASONS_MAX = 8  # the fare rules give at most ~5 (docs/transit-fares.md)
NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,32}")  # line, stop, holder kind (like record.TEXT_RE)
REASON_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,48}")  # "segment_fare", "concession:elderly"
TRANSIT_JSON_CHARS_MAX = 1_000  # what the longest valid object takes, with room


@dataclass(frozen=True, slots=True)
class Transit:
    """A checked transit object. Money in integer fen."""

    kind: str
    line: str
    stop: str | None
    fare_fen: int
    refund_fen: int
    reasons: tuple[str, ...]
    holder_kind: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "line": self.line, "stop": self.stop, "fare_fen": self.fare_fen,
            "refund_fen": self.refund_fen, "reasons": list(self.reasons), "holder_kind": self.holder_kind,
        }  # fmt: skip

    def json(self) -> str:
        """The canonical text stored in ``clearing_taps.transit`` (sorted keys, no blanks)."""
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))


def _name(value: object, field: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise MalformedRecord(f"transit.{field}: {str(value)[:40]!r} does not match {NAME_RE.pattern}")
    return value


def _fen(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= TRANSIT_FEN_MAX:
        raise MalformedRecord(
            f"transit.{field}: {str(value)[:40]!r} is not an amount 0…{TRANSIT_FEN_MAX} fen"
        )
    return value


def parse_transit(value: object) -> Transit:
    """Check a transit object (see the module note); :class:`MalformedRecord` names the field.

    >>> parse_transit({"kind": "exit", "line": "3", "stop": "S07", "fare_fen": 200, "refund_fen": 300,
    ...                "reasons": ["segment_fare"], "holder_kind": "resident"}).refund_fen
    300
    >>> parse_transit({"kind": "flat", "line": "3", "stop": None, "fare_fen": 200, "refund_fen": 50,
    ...                "reasons": [], "holder_kind": "resident"})
    Traceback (most recent call last):
    ...
    citycard.clearing.errors.MalformedRecord: transit.refund_fen: 50 fen on a flat tap; only an exit refunds
    """
    if not isinstance(value, Mapping):
        raise MalformedRecord(f"transit: expected an object, got {type(value).__name__}")
    unknown = sorted(str(k)[:32] for k in value if k not in TRANSIT_FIELDS)
    if unknown:
        raise MalformedRecord(f"transit: unknown fields {', '.join(unknown)}")
    missing = [name for name in TRANSIT_FIELDS if name not in value]
    if missing:
        raise MalformedRecord(f"transit: missing {', '.join(missing)}")
    kind = value["kind"]
    if kind not in TRANSIT_KINDS:
        raise MalformedRecord(f"transit.kind: {str(kind)[:40]!r} is not one of {', '.join(TRANSIT_KINDS)}")
    line = _name(value["line"], "line")
    stop = _name(value["stop"], "stop", optional=True)
    fare, refund = _fen(value["fare_fen"], "fare_fen"), _fen(value["refund_fen"], "refund_fen")
    if refund and kind != "exit":
        raise MalformedRecord(f"transit.refund_fen: {refund} fen on a {kind} tap; only an exit refunds")
    reasons = value["reasons"]
    if not isinstance(reasons, list | tuple) or len(reasons) > REASONS_MAX:
        raise MalformedRecord(f"transit.reasons: expected a list of at most {REASONS_MAX} codes")
    for index, reason in enumerate(reasons):
        if not isinstance(reason, str) or not REASON_RE.fullmatch(reason):
            raise MalformedRecord(
                f"transit.reasons[{index}]: {str(reason)[:40]!r} does not match {REASON_RE.pattern}"
            )
    holder_kind = _name(value["holder_kind"], "holder_kind")
    assert line is not None and holder_kind is not None
    return Transit(kind, line, stop, fare, refund, tuple(reasons), holder_kind)


def load_transit(text: str | None) -> dict[str, Any] | None:
    """A stored transit object back as a dict (``None`` for a tap without one)."""
    return None if text is None else json.loads(text)
