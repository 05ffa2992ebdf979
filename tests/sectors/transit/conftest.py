"""Fixtures for the transit fare tests: the shipped table and a rider that threads the card record."""

from __future__ import annotations

import datetime as dt

import pytest

from citycard.sectors.transit import CardState, Decision, Tap, load_table, price_tap, unpack_record

# 2026-11-27 08:00 in Asia/Shanghai
T0 = dt.datetime(2026, 11, 27, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="session")
def table():  # type: ignore[no-untyped-def]
    return load_table("panzhihua")


class Rider:
    """One card riding: each tap reads the record as 64 bytes and writes back what was decided,
    exactly as a validator does with READ CAPP DATA / UPDATE CAPP DATA CACHE."""

    def __init__(self, table, holder_kind: str = "resident"):  # type: ignore[no-untyped-def]
        self.table = table
        self.holder_kind = holder_kind
        self.raw: bytes | None = None
        self.log: list[tuple[Tap, Decision]] = []

    @property
    def state(self) -> CardState:
        return CardState.of(self.raw, self.table) if self.raw is not None else CardState()

    def tap(self, kind: str, line: str, minutes: float = 0, *, stop: str = "", vehicle: str = "V1", metered_fen: int = 0,
            at: dt.datetime | None = None) -> Decision:  # fmt: skip
        when = at or T0 + dt.timedelta(minutes=minutes)
        tap = Tap(kind, line, vehicle, when, stop=stop, metered_fen=metered_fen)
        decision = price_tap(self.table, card_state=self.state, tap=tap, holder_kind=self.holder_kind)
        if decision.record_bytes is not None:
            assert len(decision.record_bytes) == 64
            assert unpack_record(decision.record_bytes) == decision.new_trip_record
            self.raw = decision.record_bytes
        self.log.append((tap, decision))
        return decision


@pytest.fixture
def rider(table):  # type: ignore[no-untyped-def]
    return lambda kind="resident": Rider(table, kind)
