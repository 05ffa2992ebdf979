"""Double-entry ledger with miniGL layers and TigerBeetle habits (issue 5 item 3; docs/ledger.md).

Every money movement is a balanced posting under an idempotency key; balances are kept per
account and layer (pending, cleared, settled) in the same transaction as the journal.

>>> Line("ec:6230000000000000001:01", debit_fen=150)
Line(account='ec:6230000000000000001:01', debit_fen=150, credit_fen=0)
"""

from __future__ import annotations

from citycard.ledger.chains import promote, reverse
from citycard.ledger.invariants import check_invariants
from citycard.ledger.journal import AccountCache, open_account, post, post_many
from citycard.ledger.model import (
    AMOUNT_FEN_MAX,
    DEFAULT_BALANCE_SLOTS,
    HOT_ACCOUNT_SLOTS,
    KEY_LENGTH_MAX,
    LINES_PER_POSTING_MAX,
    POSTINGS_PER_BATCH_MAX,
    AccountKind,
    InsufficientFunds,
    InvalidPosting,
    Layer,
    LedgerError,
    Line,
    PostedLine,
    Posting,
    PostingConflict,
    PostingRequest,
    PostResult,
    UnbalancedPosting,
    UnknownAccount,
)
from citycard.ledger.reading import balance_fen, balances, find_posting
from citycard.ledger.reports import ACCOUNTS_PER_PAGE_MAX, AccountBalance, journal_counts, list_balances

__all__ = [
    "ACCOUNTS_PER_PAGE_MAX",
    "AMOUNT_FEN_MAX",
    "DEFAULT_BALANCE_SLOTS",
    "HOT_ACCOUNT_SLOTS",
    "KEY_LENGTH_MAX",
    "LINES_PER_POSTING_MAX",
    "POSTINGS_PER_BATCH_MAX",
    "AccountBalance",
    "AccountCache",
    "AccountKind",
    "InsufficientFunds",
    "InvalidPosting",
    "Layer",
    "LedgerError",
    "Line",
    "PostResult",
    "PostedLine",
    "Posting",
    "PostingConflict",
    "PostingRequest",
    "UnbalancedPosting",
    "UnknownAccount",
    "balance_fen",
    "balances",
    "check_invariants",
    "find_posting",
    "journal_counts",
    "list_balances",
    "open_account",
    "post",
    "post_many",
    "promote",
    "reverse",
]
