"""Property test: random sequences of valid and invalid postings, reversals and promotions.

A small Python model of the ledger predicts each call's outcome (created, replay, or which error);
the database must agree after every call, a failed call must change nothing (the example keeps
using the same transaction), and every invariant holds at the end. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from citycard.db import write_transaction
from citycard.ledger import (
    AccountKind,
    InsufficientFunds,
    Layer,
    LedgerError,
    Line,
    PostingConflict,
    PostingRequest,
    UnbalancedPosting,
    UnknownAccount,
    balance_fen,
    check_invariants,
    open_account,
    post,
    promote,
    reverse,
)

NEGATIVE_OK = ("F",)  # funding: may go negative
ACCOUNT_NAMES = ("F", "A", "B", "C")
UNKNOWN = "Z"  # never opened
KEYS = 8  # a small key space, so replays and key conflicts happen often
_examples = itertools.count()

amounts = st.integers(min_value=1, max_value=400)
# Funding is debited most often, so the spend accounts usually hold money to move on.
debit_account = st.sampled_from(("F", "F", "F", "F", "A", "B", "C", "F", "A", "B", "C", "F", "F", UNKNOWN))
credit_account = st.sampled_from(("A", "B", "C", "F", "A", "B", "C", "F", UNKNOWN))
post_op = st.tuples(
    st.just("post"),
    st.integers(0, KEYS - 1),
    st.lists(st.tuples(debit_account, amounts), min_size=1, max_size=3),  # debit legs
    credit_account,  # the credit leg takes the total
    st.sampled_from((0, 0, 0, 0, 0, 0, 1, -1)),  # unbalance the credit leg sometimes
    st.sampled_from((Layer.PENDING, Layer.PENDING, Layer.PENDING, Layer.CLEARED, Layer.SETTLED)),
)
# Follow-ups: their own small key space (so replays happen); the original is usually a posting
# that exists (an index into the model's postings), sometimes any key.
follow_key = st.integers(0, KEYS - 1)
original = st.integers(0, 99)
reverse_op = st.tuples(st.just("reverse"), follow_key, original)
promote_op = st.tuples(
    st.just("promote"),
    follow_key,
    original,
    st.sampled_from((Layer.PENDING, Layer.CLEARED, Layer.CLEARED, Layer.SETTLED)),
)
operations = st.lists(st.one_of(post_op, post_op, reverse_op, promote_op), min_size=4, max_size=25)


@dataclass
class _Posting:
    kind: str
    root: str
    layer: int
    entries: tuple[tuple[str, int, int, int], ...]  # (account, layer, debit, credit)
    follower: str | None = None


@dataclass
class _Model:
    """What the ledger should hold; codes are the short names A/B/C/F."""

    totals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    layers: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    postings: dict[str, _Posting] = field(default_factory=dict)

    def _apply(self, key: str, posting: _Posting) -> object:
        net: dict[str, int] = defaultdict(int)
        for acct, _layer, debit, credit in posting.entries:
            net[acct] += credit - debit
        for acct, delta in net.items():
            if acct not in NEGATIVE_OK and self.totals[acct] + delta < 0:
                return InsufficientFunds
        for acct, layer, debit, credit in posting.entries:
            self.totals[acct] += credit - debit
            self.layers[(acct, layer)] += credit - debit
        self.postings[key] = posting
        return True

    def post(self, key: str, entries: tuple[tuple[str, int, int, int], ...], layer: int) -> object:
        if sum(c - d for _, _, d, c in entries) != 0:
            return UnbalancedPosting
        if any(acct == UNKNOWN for acct, *_ in entries):
            return UnknownAccount
        if key in self.postings:
            old = self.postings[key]
            return (
                False if (old.kind, old.layer, old.entries) == ("post", layer, entries) else PostingConflict
            )
        return self._apply(key, _Posting("post", key, layer, entries))

    def _head(self, key: str) -> str:
        while self.postings[key].follower is not None:
            key = self.postings[key].follower  # type: ignore[assignment]
        return key

    def follow_up(self, key: str, original: str, kind: str, to_layer: int | None) -> object:
        if original not in self.postings or self.postings[original].kind == "reversal":
            return LedgerError
        if key in self.postings:
            old = self.postings[key]
            same = old.kind == kind and old.root == self.postings[original].root
            if to_layer is not None:
                same = same and old.layer == to_layer
            return False if same else PostingConflict
        head_key = self._head(original)
        head = self.postings[head_key]
        if head.kind == "reversal":
            return LedgerError
        effective = [e for e in head.entries if e[1] == head.layer]
        mirror = tuple((a, lyr, c, d) for a, lyr, d, c in effective)
        if kind == "reversal":
            posting = _Posting(kind, head.root, head.layer, mirror)
        else:
            assert to_layer is not None
            if to_layer <= head.layer:
                return LedgerError
            moved = tuple((a, to_layer, d, c) for a, _lyr, d, c in effective)
            posting = _Posting(kind, head.root, to_layer, mirror + moved)
        outcome = self._apply(key, posting)
        if outcome is True:
            head.follower = key
        return outcome


def _call(fn, *args, **kwargs) -> object:  # type: ignore[no-untyped-def]
    """``created`` (True/False) or the LedgerError subclass raised."""
    try:
        return fn(*args, **kwargs).created
    except LedgerError as exc:
        return type(exc)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_random_operations_match_the_model_and_keep_invariants(engine: Engine, ops) -> None:  # type: ignore[no-untyped-def]
    prefix = f"p{next(_examples)}:"
    code = {name: prefix + name for name in (*ACCOUNT_NAMES, UNKNOWN)}
    key = [f"{prefix}k{i}" for i in range(KEYS)]
    follow = [f"{prefix}f{i}" for i in range(KEYS)]
    model = _Model()

    def pick(index: int) -> str:
        existing = sorted(model.postings)
        return existing[index % len(existing)] if existing and index < 90 else key[index % KEYS]

    with write_transaction(engine) as conn:
        for name in ACCOUNT_NAMES:
            open_account(
                conn,
                code[name],
                AccountKind.FUNDING if name in NEGATIVE_OK else AccountKind.EC,
                allow_negative=name in NEGATIVE_OK,
            )
        for op in ops:
            if op[0] == "post":
                _, k, debits, credit_account, skew, layer = op
                total = sum(amount for _, amount in debits)
                credit_leg = (credit_account, int(layer), 0, total + skew)
                entries = (*((acct, int(layer), amount, 0) for acct, amount in debits), credit_leg)
                if total + skew <= 0:
                    continue
                lines = tuple(Line(code[a], debit_fen=d, credit_fen=c) for a, _l, d, c in entries)
                expected = model.post(key[k], entries, int(layer))
                got = _call(post, conn, PostingRequest(key[k], lines, layer))
            elif op[0] == "reverse":
                _, k, index = op
                target = pick(index)  # read before the model records the new posting
                expected = model.follow_up(follow[k], target, "reversal", None)
                got = _call(reverse, conn, key=follow[k], original_key=target)
            else:
                _, k, index, layer = op
                target = pick(index)  # read before the model records the new posting
                expected = model.follow_up(follow[k], target, "promotion", int(layer))
                got = _call(promote, conn, key=follow[k], original_key=target, to_layer=layer)
            event(f"{op[0]} → {getattr(expected, '__name__', expected)}")  # coverage of outcomes
            assert got == expected, op
            for name in ACCOUNT_NAMES:
                assert balance_fen(conn, code[name]) == model.totals[name], (op, name)
        for name in ACCOUNT_NAMES:
            for layer in Layer:
                assert balance_fen(conn, code[name], layer) == model.layers[(name, int(layer))]
        assert check_invariants(conn) == []
