"""Clearing's record error, in a module of its own so the record and transit parsers share it."""

from __future__ import annotations


class MalformedRecord(ValueError):  # noqa: N818 (a record, like ledger.InvalidPosting)
    """An upload that is not a well-formed TC record; the message names the field."""
