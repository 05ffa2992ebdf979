"""Console display helpers: fen as yuan without floats, Beijing time, refusing naive datetimes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from citycard.web.formatting import DETAILS_MAX_CHARS, beijing, details, yuan


@pytest.mark.parametrize(
    ("fen", "text"),
    [
        (0, "¥0.00"),
        (1, "¥0.01"),
        (99, "¥0.99"),
        (100, "¥1.00"),
        (123456789, "¥1,234,567.89"),
        (-150, "-¥1.50"),
    ],
)
def test_yuan(fen: int, text: str) -> None:
    assert yuan(fen) == text


def test_yuan_refuses_floats_and_bools() -> None:
    with pytest.raises(TypeError, match="amount_fen must be an int, got float"):
        yuan(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got bool"):
        yuan(True)


def test_beijing_time_is_utc_plus_8_across_midnight() -> None:
    assert beijing(datetime(2026, 12, 31, 16, 0, 1, tzinfo=UTC)) == "2027-01-01 00:00:01"
    assert beijing("2026-11-27T04:30:00+00:00") == "2026-11-27 12:30:00"
    assert beijing(None) == "—"


def test_beijing_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="naive datetime 2026-01-01T00:00:00"):
        beijing(datetime(2026, 1, 1))


def test_details_is_short_and_skips_nested_values() -> None:
    assert details({"refund_fen": 2500, "nested": {"a": 1}}) == "refund ¥25.00"
    assert details(None) == ""
    assert (
        details({"lost_at": "2026-11-27T04:38:00+00:00", "formal": True})
        == "formal True · lost_at 2026-11-27 12:38:00"
    )
    assert details({"seen_at": "not a time"}) == "seen_at not a time"
    long = details({"note": "x" * 1000})
    assert len(long) == DETAILS_MAX_CHARS and long.endswith("…")
