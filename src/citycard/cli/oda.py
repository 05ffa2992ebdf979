"""`citycard oda` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="oda commands", no_args_is_help=True)
