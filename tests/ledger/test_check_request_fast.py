"""ledger.model.check_request's fast path for the usual line decides exactly as the full checks,
with the same message when it refuses (hypothesis: odd texts, bools, negative and huge amounts)."""

from __future__ import annotations

import enum

from hypothesis import given, settings
from hypothesis import strategies as st

from citycard.ledger.model import (
    AMOUNT_FEN_MAX,
    CODE_LENGTH_MAX,
    InvalidPosting,
    Layer,
    LedgerError,
    Line,
    PostingRequest,
    _check_line,
    check_request,
)


class Fen(enum.IntEnum):  # an int subclass: the full checks take it
    TEN = 10


ACCOUNTS = st.one_of(
    st.from_regex(r"[a-z]{1,8}:[0-9]{1,20}(:[0-9]{2})?", fullmatch=True),
    st.text(max_size=CODE_LENGTH_MAX + 3),
    st.sampled_from(["", " ec:1", "ec:1 ", "ec:\n1", "x" * CODE_LENGTH_MAX, "x" * (CODE_LENGTH_MAX + 1)]),
    st.integers(),
)
AMOUNTS = st.one_of(
    st.integers(min_value=0, max_value=10_000),
    st.sampled_from([0, 1, -1, AMOUNT_FEN_MAX, AMOUNT_FEN_MAX + 1, True, False, Fen.TEN, 1.0]),
)


def _reference(request: PostingRequest) -> str | None:
    """The full checks of every line (what check_request did for every line before its fast path)."""
    debits = credits = 0
    try:
        for index, line in enumerate(request.lines):
            debit, credit = _check_line(line, index, request.key)
            debits += debit
            credits += credit
    except LedgerError as exc:
        return str(exc)
    return None if debits == credits else "unbalanced"


@settings(max_examples=1500, deadline=None)
@given(lines=st.lists(st.tuples(ACCOUNTS, AMOUNTS, AMOUNTS), min_size=2, max_size=5))
def test_the_fast_path_refuses_and_accepts_as_the_full_checks(lines) -> None:  # type: ignore[no-untyped-def]
    request = PostingRequest(
        "k", tuple(Line(a, debit_fen=d, credit_fen=c) for a, d, c in lines), Layer.CLEARED
    )
    expected = _reference(request)
    try:
        check_request(request)
        got = None
    except InvalidPosting as exc:
        got = str(exc)
    except LedgerError:
        got = "unbalanced"
    assert got == expected
