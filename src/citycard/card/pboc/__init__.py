"""PBOC 3.0 debit/credit application with electronic cash, qPBOC and Part 14 files (docs/card.md)."""

from citycard.card.pboc.application import AIDS, PbocApplication

__all__ = ["AIDS", "PbocApplication"]
