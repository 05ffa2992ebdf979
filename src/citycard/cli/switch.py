"""`citycard switch`: run the ISO 8583 switch (routing by BIN, stand-in, store-and-forward).

``switch serve --config switch.toml`` validates the config (exit 2 with one precise line when it
is wrong), opens the software HSM and the database of the data dir (or ``--db``), upgrades the
schema, and serves until SIGTERM/SIGINT, then answers the requests it has read and stops the
store-and-forward task (graceful shutdown, as ``host serve``). It prints ``listening on HOST:PORT``.
``switch queue`` lists the store-and-forward queue (pending and delivered advices/reversals).
docs/switch.md describes the config format.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from citycard.cli.common import fail, print_json
from citycard.cli.host import DataDirOption, DbOption, _use_data_dir, open_engine, open_hsm

app = typer.Typer(
    help="Switch: route ISO 8583 by BIN to issuers and remote switches, stand in, store and forward."
)

ConfigOption = Annotated[Path, typer.Option("--config", help="switch.toml (see docs/switch.md).")]


@app.command("serve")
def serve(
    config: ConfigOption,
    port: Annotated[
        int | None, typer.Option("--port", help="TCP port (default: the config's; 0 = any).")
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (default: the config's).")
    ] = None,
    db: DbOption = None,
    data_dir: DataDirOption = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log routing, outages and deliveries.")
    ] = False,
) -> None:
    """Serve the switch of CONFIG over ISO 8583/TCP until SIGTERM; prints "listening on HOST:PORT".

    Example: citycard switch serve --config switch-city-a.toml --port 9600
    """
    from citycard.host.switch.config import SwitchConfigError, load_switch_config
    from citycard.host.switch.service import SwitchService

    if port is not None and not 0 <= port <= 65_535:
        fail(f"--port must be 0..65535, got {port}")
    try:
        switch_config = load_switch_config(config)
    except SwitchConfigError as exc:
        fail(str(exc))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    _use_data_dir(data_dir)
    hsm = open_hsm()
    service = SwitchService(switch_config, engine=open_engine(db, data_dir), hsm=hsm, host=host, port=port)

    async def run() -> None:
        try:
            bound = await service.start()
        except OSError as exc:
            fail(f"cannot listen on {service.server.host}:{service.server.port}: {exc.strerror or exc}")
        print(f"listening on {service.server.host}:{bound}", flush=True)
        await service.serve_forever()

    asyncio.run(run())


@app.command("queue")
def queue(
    db: DbOption = None,
    data_dir: DataDirOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the queue as JSON.")] = False,
) -> None:
    """List the store-and-forward queue: advices (0220) and reversals (0400) with their state."""
    from citycard.db import read_transaction
    from citycard.host.switch import store

    _use_data_dir(data_dir)
    engine = open_engine(db, data_dir)
    with read_transaction(engine) as conn:
        rows = [
            {"id": i.id, "key": i.key, "endpoint": i.endpoint, "mti": i.mti, "status": i.status,
             "attempts": i.attempts, "response_code": i.response_code,
             "next_attempt_at": i.next_attempt_at.isoformat()}
            for i in store.items(conn)
        ]  # fmt: skip
    if json_output:
        print_json(rows)
        return
    for row in rows:
        print(f"{row['id']:>6} {row['mti']} {row['status']:<9} {row['endpoint']:<12} "
              f"attempts={row['attempts']} rc={row['response_code'] or '-'} {row['key']}")  # fmt: skip
    print(f"{sum(r['status'] == 'pending' for r in rows)} pending, {len(rows)} in all")
