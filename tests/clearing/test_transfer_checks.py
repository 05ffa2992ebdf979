"""The column-by-column check of ``ledger.transfers._check`` against its transfer-by-transfer loop.

The clearing writer posts thousands of transfers per call; ``_all_fine`` accepts a chunk in a few
C-level passes when every transfer certainly passes, else the loop decides. So ``_check`` must give
exactly the loop's answer — nothing, or the same error with the same words — on any chunk.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.ledger import transfers
from citycard.ledger.model import AMOUNT_FEN_MAX, KEY_LENGTH_MAX, MEMO_MAX, LedgerError
from citycard.ledger.transfers import Transfer

GOOD = Transfer(
    "tc:6235480000000001:01:0001", "bank:ec:6235480000000001:01", "operator:bus-1", 150, "bus-1 R1/V1 T1"
)
ODD_TEXT = st.sampled_from(
    ["", " ", "a b", " lead", "trail ", "tab\there", "é", "\u00a0", "x" * KEY_LENGTH_MAX, "x" * (KEY_LENGTH_MAX + 1),
     "m" * MEMO_MAX, "m" * (MEMO_MAX + 1), "line\nbreak", "tc:dup"]
)  # fmt: skip
ODD_VALUE = st.one_of(
    ODD_TEXT, st.text(max_size=6), st.none(), st.booleans(),
    st.sampled_from([0, 1, -1, AMOUNT_FEN_MAX, AMOUNT_FEN_MAX + 1, 1.5]), st.integers(-5, 5),
)  # fmt: skip


def _outcome(chunk: list[Any], *, loop_only: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    with monkeypatch.context() as patch:
        if loop_only:
            patch.setattr(transfers, "_all_fine", lambda chunk: False)
        try:
            transfers._check(chunk)
        except (LedgerError, TypeError, AttributeError, ValueError) as exc:
            return (type(exc).__name__, str(exc))
    return ("ok", "")


def _chunk(size: int, changes: list[tuple[int, int, Any]]) -> list[Any]:
    chunk: list[Any] = [GOOD._replace(key=f"{GOOD.key}{i:04X}") for i in range(size)]
    for index, field, value in changes:
        row = list(chunk[index % size])
        row[field] = value
        chunk[index % size] = Transfer(*row)
    return chunk


@settings(max_examples=400, deadline=None)
@given(
    st.integers(1, 12),
    st.lists(st.tuples(st.integers(0, 11), st.integers(0, 4), ODD_VALUE), max_size=3),
)
def test_check_gives_the_loops_answer(size: int, changes: list[tuple[int, int, Any]]) -> None:
    chunk = _chunk(size, changes)
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert _outcome(chunk, loop_only=False, monkeypatch=monkeypatch) == _outcome(
            chunk, loop_only=True, monkeypatch=monkeypatch
        )


def test_the_column_check_takes_ordinary_chunks_and_a_duplicate_goes_to_the_loop() -> None:
    chunk = _chunk(5, [])
    assert transfers._all_fine(chunk)
    duplicate = [*chunk, chunk[2]]
    assert not transfers._all_fine(duplicate)
    with pytest.raises(LedgerError, match="appears twice"):
        transfers._check(duplicate)
