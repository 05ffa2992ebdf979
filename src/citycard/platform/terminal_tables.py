"""The parameter versions each terminal reports holding (issue 7 item 2; migration ``0010_terminals``).

* ``terminal_parameters`` — per terminal id: the fare table (name and version) and the CAPK set
  version it last reported, and when. The blacklist version a terminal holds stays in
  ``platform_terminals`` (:func:`citycard.platform.blacklist.report_version`), reported in the
  same request.

Migration: ``citycard/db/migrations/versions/0010_terminals.py`` (kept identical; autogenerate test).
"""

from __future__ import annotations

import sqlalchemy as sa

from citycard.db import Base, UTCDateTime

TERMINAL_ID_CHARS_MAX = 32
FARE_TABLE_NAME_CHARS_MAX = 64

terminal_parameters = sa.Table(
    "terminal_parameters",
    Base.metadata,
    sa.Column("terminal_id", sa.String(TERMINAL_ID_CHARS_MAX), primary_key=True),
    sa.Column("fares_name", sa.String(FARE_TABLE_NAME_CHARS_MAX), nullable=True),
    sa.Column("fares_version", sa.Integer(), nullable=False),
    sa.Column("capks_version", sa.Integer(), nullable=False),
    sa.Column("reported_at", UTCDateTime(), nullable=False),
    sa.CheckConstraint("fares_version >= 0", name="fares_version"),
    sa.CheckConstraint("capks_version >= 0", name="capks_version"),
)
