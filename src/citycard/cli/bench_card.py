"""`citycard bench card`: the virtual card's speed, in-process and through pcscd.

Three medians: APDUs per second (read-only APDUs through :class:`InProcessTransport`), full qPBOC
electronic-cash purchases per second (the terminal kernel's :func:`citycard.kernel.qpboc.run_qpboc`
as a bus validator: SELECT PPSE → SELECT AID → GPO → READ RECORDs → fDDA, the card saving its
image after the GPO as a real card writes its EEPROM), and the per-APDU round trip
pyscard → pcscd → vpcd → :class:`VpcdBridge` → card when PC/SC is there (null otherwise).

The card is personalised from a shipped profile into a temporary directory with an ephemeral HSM,
its EC balance loaded for the run; nothing outside the temporary directory is touched. There is one
terminal code path: the kernel (no purchase sequence of its own here).
"""

from __future__ import annotations

import functools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from citycard.cli.bench import app
from citycard.emv import decode_dict
from citycard.reader.transport import Transport, status_word

PPSE_NAME = b"2PAY.SYS.DDF01"
SW_OK = 0x9000
GET_DATA_9F79 = bytes.fromhex("80CA9F7900")  # EC balance

BENCH_PROFILE = "pboc-ec-only-gm"
BENCH_AMOUNT_FEN = 1
BENCH_BALANCE_FEN = 100_000  # 1000 yuan, the PBOC EC ceiling: enough for every 1-fen purchase below
APDU_BATCH = 200  # read-only APDUs per timed round
APDU_ROUNDS = 21
PURCHASE_RUNS = 200  # purchases timed one by one (median)
PCSC_ROUND_TRIPS = 1_000
PCSC_ATTACH_S = 3.0  # pcscd polls a vpcd slot every ~400 ms


class BalanceError(RuntimeError):
    """The card refused a step of the balance inquiry: ``step`` and the status word say which."""

    def __init__(self, step: str, sw: int):
        super().__init__(f"{step}: card answered {sw:04X}")
        self.step = step
        self.sw = sw


def _exchange(transport: Transport, apdu: bytes, step: str) -> bytes:
    response = transport.transmit(apdu)
    sw = status_word(response)
    if sw != SW_OK:
        raise BalanceError(step, sw)
    return response[:-2]


def _select(name: bytes) -> bytes:
    return bytes([0x00, 0xA4, 0x04, 0x00, len(name)]) + name + b"\x00"


def read_balance_fen(transport: Transport, *, aid: bytes | None = None) -> int:
    """The EC balance (GET DATA 9F79, pboc-notes §6), in fen; ``aid`` is selected first when given."""
    if aid is not None:
        _exchange(transport, _select(aid), "SELECT AID")
    value = decode_dict(_exchange(transport, GET_DATA_9F79, "GET DATA 9F79"), flat=True)["9F79"]
    return int(value.hex())  # type: ignore[union-attr]


def bench_terminal(hsm: Any, suite: Any) -> Any:
    """The kernel's bus validator (offline-only qPBOC, fDDA 01) with the shipped AID and CAPK tables
    and ``hsm``'s test CAs; no exception file (``bench tap`` measures that one)."""
    from citycard.kernel.context import Terminal, TerminalProfile
    from citycard.kernel.params import AidTable, CapkTable

    return Terminal(
        TerminalProfile.bus_validator(suite=suite), AidTable.load(), CapkTable.load().with_hsm(hsm)
    )


# --- a card to measure -------------------------------------------------------------------------
def personalise_card(
    directory: Path, hsm: Any, *, profile: str = BENCH_PROFILE, balance_fen: int = BENCH_BALANCE_FEN
) -> tuple[Path, Any]:
    """A card of ``profile`` personalised through STORE DATA into ``directory``, its EC balance preset to
    ``balance_fen`` (as after a 圈存 load); returns (image path, the PreparedCard: PAN, CAPKs, ...)."""
    from citycard.card import new_card, save_card
    from citycard.card.pboc import PbocApplication
    from citycard.card.perso import load_profile, perso_script, prepare_card

    chosen = load_profile(profile)
    limits = chosen.limits.model_copy(update={"ec_initial_balance_fen": balance_fen})
    prepared = prepare_card(chosen.model_copy(update={"limits": limits}), hsm)
    path = directory / f"{profile}.json"
    card = new_card(
        [PbocApplication(prepared.aid)], hsm=hsm, image_path=path, perso_suite=prepared.perso_suite
    )
    card.power_on()
    for apdu in perso_script(prepared).apdus:
        response = card.process(apdu)
        if response[-2:] != b"\x90\x00":
            raise RuntimeError(
                f"personalisation: the card answered {response[-2:].hex().upper()} to {apdu[:4].hex()}"
            )
    save_card(card)
    return path, prepared


def _contactless_card(path: Path, hsm: Any, *, saves: bool = True) -> Any:
    from citycard.card import load_card

    card = load_card(path, hsm=hsm)
    card.interface = "contactless"
    if not saves:
        card.image_path = None  # the card's save() then does nothing
    return card


# --- the scenarios ------------------------------------------------------------------------------
def _median_s(operation: Callable[[], Any], runs: int) -> float:
    samples = []
    clock = time.perf_counter
    for _ in range(runs):
        started = clock()
        operation()
        samples.append(clock() - started)
    return statistics.median(samples)


def apdus_per_s(card: Any, aid: bytes, *, batch: int = APDU_BATCH, rounds: int = APDU_ROUNDS) -> float:
    """Read-only APDUs per second in-process: SELECT PPSE, SELECT AID, GET DATA 9F79, READ RECORD, in turn."""
    from citycard.reader import InProcessTransport

    mix = [_select(PPSE_NAME), _select(aid), GET_DATA_9F79, bytes.fromhex("00B2010C00")]
    commands = [mix[i % len(mix)] for i in range(batch)]
    with InProcessTransport(card) as transport:
        transmit = transport.transmit
        for command in mix:  # warm-up, and every answer must be 9000
            if status_word(transmit(command)) != SW_OK:
                raise BalanceError(f"APDU benchmark {command.hex().upper()}", status_word(transmit(command)))

        def one_round() -> None:
            for command in commands:
                transmit(command)

        return batch / _median_s(one_round, rounds)


def purchases_per_s(card: Any, terminal: Any, *, runs: int = PURCHASE_RUNS) -> float:
    """Full qPBOC EC purchases per second through the kernel in-process (1 fen each, each approved
    offline or the run stops), the median of ``runs``."""
    from citycard.kernel.outcome import Outcome
    from citycard.kernel.qpboc import run_qpboc
    from citycard.reader import InProcessTransport

    def purchase() -> None:
        with InProcessTransport(card) as transport:
            result = run_qpboc(transport, terminal, amount_fen=BENCH_AMOUNT_FEN)
        if result.kind is not Outcome.APPROVED_OFFLINE:
            raise RuntimeError(f"purchase ended {result.kind.value}: {'; '.join(result.reasons)}")

    purchase()  # warm-up
    return 1 / _median_s(purchase, runs)


def pcsc_round_trip_ms(card: Any, aid: bytes, *, runs: int = PCSC_ROUND_TRIPS) -> tuple[float | None, str]:
    """Median GET DATA round trip pyscard → pcscd → vpcd → bridge → card, in ms; (None, why) without PC/SC."""
    from citycard.reader import PcscTransport, TransportError, VpcdBridge, list_readers
    from citycard.reader.vpcd import VPCD_PORT

    try:
        readers = list_readers()
    except TransportError as exc:
        return None, str(exc)
    for slot in (0, 1):
        reader = f"Virtual PCD 00 {slot:02d}"
        if reader not in readers:
            return None, f"pcscd has no reader {reader!r} (vsmartcard-vpcd)"
        bridge = VpcdBridge(card, port=VPCD_PORT + slot).start()
        try:
            if not bridge.wait_attached(PCSC_ATTACH_S):
                continue  # another client holds this slot
            with PcscTransport(reader) as transport:
                read_balance_fen(transport, aid=aid)
                return _median_s(functools.partial(transport.transmit, GET_DATA_9F79), runs) * 1000, reader
        finally:
            bridge.stop()
    return None, "both vpcd slots are held by other clients"


def bench_card(json_output: bool) -> dict[str, Any]:
    """Run the scenarios; print a table (unless ``json_output``) and the JSON line; return the figures."""
    from citycard.hsm import SoftHSM

    hsm = SoftHSM.ephemeral()
    with tempfile.TemporaryDirectory(prefix="citycard-bench-card-") as directory:
        path, prepared = personalise_card(Path(directory), hsm)
        terminal = bench_terminal(hsm, prepared.suites[0])
        steps: list[tuple[str, Callable[[], Any]]] = [
            (
                "APDUs, read-only",
                lambda: apdus_per_s(_contactless_card(path, hsm, saves=False), prepared.aid),
            ),
            (
                "qPBOC EC purchases, image saved",
                lambda: purchases_per_s(_contactless_card(path, hsm), terminal),
            ),
            (
                "qPBOC EC purchases, no saves",
                lambda: purchases_per_s(_contactless_card(path, hsm, saves=False), terminal),
            ),
            (
                "APDU round trip through pcscd",
                lambda: pcsc_round_trip_ms(_contactless_card(path, hsm, saves=False), prepared.aid),
            ),
        ]
        figures: list[Any] = []
        console = Console(stderr=True)
        with Progress(console=console, transient=True, disable=json_output) as progress:
            task = progress.add_task("benchmarking", total=len(steps))
            for label, step in steps:
                progress.update(task, description=label)
                figures.append(step())
                progress.advance(task)
    round_trip_ms, pcsc_note = figures[3]
    result = {
        "apdus_per_s": round(figures[0]),
        "qpboc_ec_purchases_per_s": round(figures[1]),
        "qpboc_ec_purchases_per_s_without_saves": round(figures[2]),
        "pcsc_apdu_round_trip_ms": round(round_trip_ms, 3) if round_trip_ms is not None else None,
    }
    if round_trip_ms is None:
        console.print(f"PC/SC round trip not measured: {pcsc_note}")
    if not json_output:
        table = Table(title=f"citycard bench card (medians; {BENCH_PROFILE}, in-process unless noted)")
        table.add_column("scenario")
        table.add_column("median", justify="right")
        table.add_row(steps[0][0], f"{figures[0]:,.0f}/s")
        table.add_row(steps[1][0], f"{figures[1]:,.0f}/s")
        table.add_row(steps[2][0], f"{figures[2]:,.0f}/s")
        shown = f"{round_trip_ms:.3f} ms ({pcsc_note})" if round_trip_ms is not None else "n/a"
        table.add_row(steps[3][0], shown)
        Console().print(table)
    print(json.dumps(result))
    return result


@app.command("card")
def card_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print only the JSON result.")] = False,
) -> None:
    """APDUs/s and full qPBOC EC purchases/s in-process, and the APDU round trip through pcscd.

    Prints medians: {"apdus_per_s": N, "qpboc_ec_purchases_per_s": N,
    "qpboc_ec_purchases_per_s_without_saves": N, "pcsc_apdu_round_trip_ms": X or null}. The PC/SC
    figure needs pcscd with vsmartcard-vpcd and pyscard (the `pcsc` extra); a free vpcd slot is used.

    Example: citycard bench card --json
    """
    bench_card(json_output)
