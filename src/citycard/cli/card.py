"""`citycard card ...`: make, inspect, drive and serve virtual PBOC 3.0 cards.

The commands live in their own modules and register on this group's app.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Virtual PBOC 3.0 cards: new (personalise from a profile), info, apdu, serve (to pcscd).",
    no_args_is_help=True,
)

# The command modules register themselves on ``app``; imported last so they can import ``app``.
from citycard.cli import card_inspect, card_new, card_serve  # noqa: E402, F401
