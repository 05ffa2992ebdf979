"""`citycard crypto` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="crypto commands", no_args_is_help=True)
