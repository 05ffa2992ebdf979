"""`citycard tlv` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="tlv commands", no_args_is_help=True)
