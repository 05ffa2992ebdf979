"""The ``citycard`` command: one Typer app, one module per command group."""

from __future__ import annotations

import sys

import typer

from citycard.cli import bench, card, crypto, hsm, oda, selftest, terminal, terminal_params, tlv
from citycard.cli import clearing as clearing_cli
from citycard.cli import demo as demo_cli
from citycard.cli import health as health_cli
from citycard.cli import host as host_cli
from citycard.cli import ledger as ledger_cli
from citycard.cli import platform_exchange as platform_exchange_cli
from citycard.cli import reports as transit_cli
from citycard.cli import serve as serve_cli
from citycard.cli import switch as switch_cli
from citycard.cli import validator as validator_cli
from citycard.cli.common import EXIT_BAD_INPUT

# Typer ≥ 0.29 vendors Click privately; reach its UsageError through a public subclass so this
# works with both the vendored and the classic Click-based Typer.
UsageError: type[Exception] = typer.BadParameter.__mro__[1]

app = typer.Typer(
    name="citycard",
    help="citycard — one PBOC 3.0 card for a city: card, kernel, hosts, ledger, platform, clearing and tools.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(tlv.app, name="tlv")
app.add_typer(crypto.app, name="crypto")
app.add_typer(oda.app, name="oda")
app.add_typer(card.app, name="card")
app.add_typer(hsm.app, name="hsm")
terminal.app.add_typer(terminal_params.blacklist_app, name="blacklist")
app.add_typer(terminal.app, name="terminal")
app.add_typer(bench.app, name="bench")
app.add_typer(ledger_cli.app, name="ledger")
app.add_typer(host_cli.app, name="host")
app.add_typer(switch_cli.app, name="switch")
app.add_typer(clearing_cli.app, name="clearing")
app.add_typer(validator_cli.app, name="validator")
app.add_typer(platform_exchange_cli.blacklist_app, name="blacklist")
app.add_typer(platform_exchange_cli.exchange_app, name="exchange")
app.command(name="selftest")(selftest.selftest)
app.add_typer(transit_cli.app, name="transit")
app.add_typer(health_cli.app, name="health")
app.command(name="demo")(demo_cli.demo)
serve_cli.register(app)  # `citycard serve`, `citycard api-key ...`


def main() -> None:
    """Entry point: usage errors (missing option, bad choice) become one ``error:`` line and exit 2."""
    try:
        code = app(standalone_mode=False)
    except UsageError as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            # ``citycard`` or ``citycard crypto`` alone: show the help, as the user asked for it.
            print(ctx.get_help())
            sys.exit(0)
        print(f"error: {exc.format_message()}", file=sys.stderr)  # type: ignore[attr-defined]
        sys.exit(EXIT_BAD_INPUT)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
