"""The citizen-card platform (issue 6): cardholders, the card's life, applications, blacklists,
events and the sector data exchange. Lower layer than ``citycard.api`` and ``citycard.web``; it
imports db, ledger, host, card and hsm, never api or web (DESIGN.md §2).

Every public function takes a SQLAlchemy ``Connection`` already inside a transaction; the caller
commits, so a state change, its audit row and its events commit together.
"""
