"""The ``citycard`` command: one Typer app, one module per command group."""

from __future__ import annotations

import typer

from citycard.cli import bench, crypto, oda, selftest, tlv

app = typer.Typer(
    name="citycard",
    help="citycard — PBOC 3.0 citizen card toolbox: TLV, cryptograms, ODA, self-test and benchmarks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(tlv.app, name="tlv")
app.add_typer(crypto.app, name="crypto")
app.add_typer(oda.app, name="oda")
app.add_typer(bench.app, name="bench")
app.command(name="selftest")(selftest.selftest)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
