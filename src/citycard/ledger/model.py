"""The ledger's vocabulary: layers, account kinds, lines, posting requests, results and errors.

Pure data and pure checks; nothing here touches the database (docs/ledger.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, StrEnum

from citycard.ledger.tables import (
    ACCOUNT_CODE_LENGTH_MAX,
    ACCOUNT_NAME_LENGTH_MAX,
    BALANCE_SLOTS_MAX,
    MEMO_LENGTH_MAX,
    POSTING_KEY_LENGTH_MAX,
)

# Limits (TigerBeetle: a limit on everything, checked, with a clear error past it).
AMOUNT_FEN_MAX = 10**12  # 100 亿元 on one line: far above any real movement, far below BIGINT
LINES_PER_POSTING_MAX = 32  # per request; a promotion stores twice its original's lines
POSTINGS_PER_BATCH_MAX = 1_000  # per post_many call
KEY_LENGTH_MAX = POSTING_KEY_LENGTH_MAX
CODE_LENGTH_MAX = ACCOUNT_CODE_LENGTH_MAX
NAME_LENGTH_MAX = ACCOUNT_NAME_LENGTH_MAX
MEMO_MAX = MEMO_LENGTH_MAX
SLOTS_MAX = BALANCE_SLOTS_MAX
# Balance rows per layer for an account many postings touch at once (a merchant credited by every
# purchase): with one row, each posting would hold its lock across the commit's fsync (~2 ms here)
# and the account would cap the whole host at a few hundred postings a second.
HOT_ACCOUNT_SLOTS = 16


class Layer(IntEnum):
    """miniGL-style layers: where a movement stands in its life (authorised → cleared → settled)."""

    PENDING = 0
    CLEARED = 1
    SETTLED = 2


class AccountKind(StrEnum):
    """What an account is for (issue 5 item 3)."""

    CARDHOLDER = "cardholder"  # the cardholder's bank account behind the debit application
    EC = "ec"  # the electronic-cash account of one card (mirrors the chip's 9F79)
    MERCHANT = "merchant"  # a merchant's settlement account
    OPERATOR = "operator"  # a sector operator's settlement account (bus company, hospital…)
    ISSUER = "issuer"  # the issuing bank's own accounts (e.g. the EC float)
    FEES = "fees"  # fees earned
    SUSPENSE = "suspense"  # money whose destination is not yet known (unmatched items)
    FUNDING = "funding"  # where money enters the ledger from outside (cash desk, bank transfer)


# One holder, one transaction at a time (a card, a bank account): one row is enough and keeps
# the table small for millions of cards. Shared accounts are spread (see HOT_ACCOUNT_SLOTS).
DEFAULT_BALANCE_SLOTS = {
    AccountKind.CARDHOLDER: 1,
    AccountKind.EC: 1,
    AccountKind.MERCHANT: HOT_ACCOUNT_SLOTS,
    AccountKind.OPERATOR: HOT_ACCOUNT_SLOTS,
    AccountKind.ISSUER: HOT_ACCOUNT_SLOTS,
    AccountKind.FEES: HOT_ACCOUNT_SLOTS,
    AccountKind.SUSPENSE: HOT_ACCOUNT_SLOTS,
    AccountKind.FUNDING: HOT_ACCOUNT_SLOTS,
}


class LedgerError(Exception):
    """Base of every ledger error; the message names the account or key concerned."""


class InvalidPosting(LedgerError):  # noqa: N818 (names fixed by the public API)
    """A request of the wrong shape: bad key, line with both sides, a limit exceeded…"""


class UnbalancedPosting(LedgerError):  # noqa: N818 (names fixed by the public API)
    """Debits and credits of a posting differ (per layer)."""


class InsufficientFunds(LedgerError):  # noqa: N818 (names fixed by the public API)
    """The posting would take an account that may not go negative below zero; nothing was written."""


class UnknownAccount(LedgerError):  # noqa: N818 (names fixed by the public API)
    """A line names an account that was never opened."""


class PostingConflict(LedgerError):  # noqa: N818 (names fixed by the public API)
    """The key was posted before with different lines (or as a different kind of posting)."""


@dataclass(frozen=True, slots=True)
class Line:
    """One side of a movement on one account; exactly one of ``debit_fen``/``credit_fen`` is > 0.

    An account's balance is credits − debits (what it holds, seen by its holder).
    """

    account: str
    debit_fen: int = 0
    credit_fen: int = 0


@dataclass(frozen=True, slots=True)
class PostingRequest:
    """A balanced set of lines to post once under ``key`` (the idempotency key) in ``layer``."""

    key: str
    lines: tuple[Line, ...]
    layer: Layer = Layer.PENDING
    memo: str = ""


@dataclass(frozen=True, slots=True)
class PostResult:
    """``created`` is False when the key had already been posted with the same lines."""

    key: str
    posting_id: int
    created: bool


@dataclass(frozen=True, slots=True)
class PostedLine:
    """A stored line: like :class:`Line`, plus the layer it sits in."""

    account: str
    layer: Layer
    debit_fen: int
    credit_fen: int


@dataclass(frozen=True, slots=True)
class Posting:
    """A posting as stored: ``kind`` is "post", "reversal" or "promotion"; ``origin_key`` the
    posting a reversal or promotion acts on; ``layer`` where its money ends up."""

    posting_id: int
    key: str
    kind: str
    layer: Layer
    memo: str
    created_at: datetime
    origin_key: str | None
    lines: tuple[PostedLine, ...]


def check_text(value: object, what: str, *, length_max: int, allow_empty: bool = False) -> str:
    """A printable string within its length limit (no control characters, no surrounding blanks).

    >>> check_text("ec:6230000000000000001:01", "account code", length_max=64)
    'ec:6230000000000000001:01'
    """
    if not isinstance(value, str):
        raise InvalidPosting(f"{what} must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise InvalidPosting(f"{what} is empty")
    if len(value) > length_max:
        raise InvalidPosting(f"{what} {value[:20]!r}… is {len(value)} characters, limit {length_max}")
    if not value.isprintable() or value != value.strip():
        raise InvalidPosting(f"{what} {value!r} has control characters or surrounding blanks")
    return value


def check_amount(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidPosting(f"{what} must be an integer number of fen, got {type(value).__name__}")
    if value < 0 or value > AMOUNT_FEN_MAX:
        raise InvalidPosting(f"{what} = {value} outside 0…{AMOUNT_FEN_MAX} fen")
    return value


def _check_line(line: object, index: int, key: str) -> tuple[int, int]:
    if not isinstance(line, Line):
        raise InvalidPosting(f"line {index} of posting {key!r} is not a Line")
    check_text(line.account, f"account code on line {index} of {key!r}", length_max=CODE_LENGTH_MAX)
    debit = check_amount(line.debit_fen, f"debit_fen on line {index} of {key!r}")
    credit = check_amount(line.credit_fen, f"credit_fen on line {index} of {key!r}")
    if (debit > 0) == (credit > 0):
        raise InvalidPosting(
            f"line {index} of posting {key!r} ({line.account}) needs exactly one of debit_fen/credit_fen "
            f"> 0, got debit {debit} and credit {credit}"
        )
    return debit, credit


def check_request(request: PostingRequest) -> None:
    """Shape, limits and balance of a request, before anything is written.

    >>> check_request(PostingRequest("k1", (Line("a", debit_fen=5), Line("b", credit_fen=5))))
    >>> check_request(PostingRequest("k2", (Line("a", debit_fen=5), Line("b", credit_fen=4))))
    Traceback (most recent call last):
    ...
    citycard.ledger.model.UnbalancedPosting: posting 'k2' does not balance: debits 5 fen, credits 4 fen
    """
    if not isinstance(request, PostingRequest):
        raise InvalidPosting(f"expected a PostingRequest, got {type(request).__name__}")
    key = check_text(request.key, "posting key", length_max=KEY_LENGTH_MAX)
    check_text(request.memo, f"memo of posting {key!r}", length_max=MEMO_MAX, allow_empty=True)
    if not isinstance(request.layer, Layer):
        raise InvalidPosting(f"layer of posting {key!r} must be a Layer, got {request.layer!r}")
    lines = request.lines
    if not isinstance(lines, tuple | list):
        raise InvalidPosting(f"lines of posting {key!r} must be a tuple of Line")
    if not 2 <= len(lines) <= LINES_PER_POSTING_MAX:
        raise InvalidPosting(f"posting {key!r} has {len(lines)} lines; 2…{LINES_PER_POSTING_MAX} allowed")
    debits = credits = 0
    for index, line in enumerate(lines):
        if type(line) is Line:  # the usual line, checked without building the messages below
            account, debit, credit = line.account, line.debit_fen, line.credit_fen
            if (
                type(account) is str and 0 < len(account) <= CODE_LENGTH_MAX
                and account.isprintable() and account == account.strip()
                and type(debit) is int and type(credit) is int
                and 0 <= debit <= AMOUNT_FEN_MAX and 0 <= credit <= AMOUNT_FEN_MAX and (debit > 0) != (credit > 0)
            ):  # fmt: skip
                debits += debit
                credits += credit
                continue
        debit, credit = _check_line(line, index, key)  # the same rules, naming what is wrong
        debits += debit
        credits += credit
    if debits != credits:
        raise UnbalancedPosting(
            f"posting {key!r} does not balance: debits {debits} fen, credits {credits} fen"
        )
