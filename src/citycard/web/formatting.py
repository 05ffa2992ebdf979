"""Display helpers for the console: money, time and event details (DESIGN §3: fen inside, Beijing
time only at the edges).

>>> yuan(123456)
'¥1,234.56'
>>> yuan(-5)
'-¥0.05'
>>> from datetime import datetime, UTC
>>> beijing(datetime(2026, 11, 27, 4, 30, tzinfo=UTC))
'2026-11-27 12:30:00'
>>> details({"amount_fen": 150, "sector": "transit", "lost_at": "2026-11-27T04:38:00+00:00"})
'amount ¥1.50 · lost_at 2026-11-27 12:38:00 · sector transit'
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from zoneinfo import ZoneInfo

DISPLAY_ZONE = ZoneInfo("Asia/Shanghai")
DETAILS_MAX_CHARS = 200  # a timeline cell stays one line; the full payload is in the API
FEN_PER_YUAN = 100


def yuan(amount_fen: int | None) -> str:
    """Integer fen as ``¥Y.FF`` with thousands separators — integer arithmetic only, never float."""
    if amount_fen is None:
        return "—"
    if not isinstance(amount_fen, int) or isinstance(amount_fen, bool):
        raise TypeError(f"amount_fen must be an int, got {type(amount_fen).__name__}")
    sign = "-" if amount_fen < 0 else ""
    whole, fen = divmod(abs(amount_fen), FEN_PER_YUAN)
    return f"{sign}¥{whole:,}.{fen:02d}"


def beijing(moment: datetime | str | None) -> str:
    """An aware UTC datetime (or its ISO text, as the API returns it) in Beijing time, to the second.

    A naive datetime is refused: inside the system every time is aware UTC.
    """
    if moment is None:
        return "—"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()} (times inside citycard are aware UTC)")
    return moment.astimezone(DISPLAY_ZONE).strftime("%Y-%m-%d %H:%M:%S")


def _aware_iso(text: str) -> bool:
    try:
        return datetime.fromisoformat(text).tzinfo is not None
    except ValueError:
        return False


def details(payload: Mapping[str, object] | None) -> str:
    """An event payload as one short ``key value`` line: ``*_fen`` in yuan, ``*_at`` in Beijing time."""
    if not payload:
        return ""
    parts = []
    for key in sorted(payload):
        value = payload[key]
        if key.endswith("_fen") and isinstance(value, int) and not isinstance(value, bool):
            parts.append(f"{key.removesuffix('_fen')} {yuan(value)}")
        elif key.endswith("_at") and isinstance(value, str) and _aware_iso(value):
            parts.append(f"{key} {beijing(value)}")  # the same clock as the "when" column
        elif isinstance(value, (dict, list)):
            continue  # nested structures are for the API, not a one-line cell
        else:
            parts.append(f"{key} {value}")
    text = " · ".join(parts)
    return text if len(text) <= DETAILS_MAX_CHARS else text[: DETAILS_MAX_CHARS - 1] + "…"
