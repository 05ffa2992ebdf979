"""`citycard bench card`: the virtual card's speed, in-process and through pcscd.

Three medians: APDUs per second (read-only APDUs through :class:`InProcessTransport`), full qPBOC
electronic-cash purchases per second (SELECT PPSE → SELECT AID → GPO → READ RECORDs, the card
saving its image after the GPO as a real card writes its EEPROM), and the per-APDU round trip
pyscard → pcscd → vpcd → :class:`VpcdBridge` → card when PC/SC is there (null otherwise).

The card is personalised from a shipped profile into a temporary directory with an ephemeral HSM,
its EC balance loaded for the run; nothing outside the temporary directory is touched.
:func:`qpboc_ec_purchase` is the terminal's side of the purchase, shared with the PC/SC test.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from citycard.cli.bench import app
from citycard.emv import TLVError, build_dol, decode, decode_dict, find, find_all, parse_dol
from citycard.reader.transport import Transport, status_word

PPSE_NAME = b"2PAY.SYS.DDF01"
TTQ_OFFLINE_ONLY = bytes.fromhex("28000000")  # 9F66: qPBOC, offline-only reader (pboc-notes §5.1)
CHINA = bytes.fromhex("0156")  # 9F1A terminal country, 5F2A transaction currency
CHINA_TIME = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
MERCHANT_NAME = b"CITYCARD BUS 1".ljust(20)  # 9F4E
AFL_ENTRY_BYTES = 4
AFL_RECORDS_MAX = 64  # records one purchase reads; a longer AFL is refused
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


class PurchaseError(RuntimeError):
    """The card refused a step of the purchase: ``step`` and the status word say which and how."""

    def __init__(self, step: str, sw: int, detail: str = ""):
        super().__init__(f"{step}: card answered {sw:04X}{f' ({detail})' if detail else ''}")
        self.step = step
        self.sw = sw


@dataclass
class QpbocPurchase:
    """What the terminal learnt from one qPBOC purchase: enough to check the TC and the fDDA offline."""

    aid: bytes
    terminal: dict[str, bytes]  # the values the terminal offered for the PDOL, by tag
    pdol_data: bytes
    fci: dict[str, Any]  # SELECT AID answer, flat
    gpo: dict[str, Any]  # GPO answer (template 77 or 80), flat
    records: list[tuple[int, int, bytes, bool]] = field(
        default_factory=list
    )  # (SFI, record, 70 template, ODA)
    apdus: int = 0

    @property
    def tags(self) -> dict[str, bytes]:
        """Every primitive tag seen: records, then the GPO answer over them (the card's latest word)."""
        out: dict[str, bytes] = {}
        for _, _, template, _ in self.records:
            out.update(decode_dict(template, flat=True))  # type: ignore[arg-type]
        out.update(self.gpo)
        return out

    def static_data(self) -> bytes:
        """Static data to authenticate (Book 3 §10.3): the ODA records in AFL order — for SFI 1–10 the
        value of the 70 template, for SFI 11–30 the whole record — then the AIP when 9F4A lists 82."""
        out = b""
        for sfi, _, template, oda in self.records:
            if oda:
                out += decode(template)[0].value if sfi <= 10 else template
        if self.tags.get("9F4A") == b"\x82":
            out += self.gpo["82"]
        return out


def _exchange(transport: Transport, apdu: bytes, step: str, purchase: QpbocPurchase | None = None) -> bytes:
    response = transport.transmit(apdu)
    if purchase is not None:
        purchase.apdus += 1
    sw = status_word(response)
    if sw != SW_OK:
        raise PurchaseError(step, sw)
    return response[:-2]


def _select(name: bytes) -> bytes:
    return bytes([0x00, 0xA4, 0x04, 0x00, len(name)]) + name + b"\x00"


def qpboc_ec_purchase(
    transport: Transport,
    *,
    amount_fen: int,
    tag_df69: bytes = b"\x01",
    tag_9f66: bytes = TTQ_OFFLINE_ONLY,
    tag_9f37: bytes | None = None,
    when: dt.datetime | None = None,
    aid: bytes | None = None,
) -> QpbocPurchase:
    """One offline qPBOC electronic-cash purchase, the terminal's APDUs (JR/T 0025.12; pboc-notes §5.2).

    SELECT PPSE → SELECT AID (``aid``, or the highest-priority PPSE entry) → GPO with the PDOL data
    (TTQ ``tag_9f66``, amount, country/currency 156, date, UN, ``tag_df69`` 00 INTL / 01 SM, …) →
    READ RECORD for every AFL record. Checking the TC and the fDDA is the caller's business.
    """
    if not 0 < amount_fen < 10**12:
        raise ValueError(f"amount must be 1 to 999999999999 fen, got {amount_fen}")
    moment = (when or dt.datetime.now(dt.UTC)).astimezone(CHINA_TIME)
    terminal = {
        "9F66": tag_9f66,
        "9F02": bytes.fromhex(f"{amount_fen:012d}"),
        "9F03": bytes(6),
        "9F1A": CHINA,
        "95": bytes(5),
        "5F2A": CHINA,
        "9A": bytes.fromhex(moment.strftime("%y%m%d")),
        "9F21": bytes.fromhex(moment.strftime("%H%M%S")),
        "9C": b"\x00",
        "9F37": tag_9f37 if tag_9f37 is not None else secrets.token_bytes(4),
        "9F4E": MERCHANT_NAME,
        "9F7A": b"\x01",
        "DF60": b"\x00",
        "DF69": tag_df69,
    }
    purchase = QpbocPurchase(aid=b"", terminal=terminal, pdol_data=b"", fci={}, gpo={})
    try:
        ppse = decode(_exchange(transport, _select(PPSE_NAME), "SELECT PPSE", purchase))
        if aid is None:
            entries = find_all(ppse, "61")
            if not entries:
                raise PurchaseError("SELECT PPSE", SW_OK, "no application in the PPSE")

            def priority(entry: Any) -> int:
                found = find(entry.children, "87")
                return found.value[0] & 0x0F if found is not None and found.value else 15

            chosen = min(entries, key=priority)
            aid_object = find(chosen.children, "4F")
            if aid_object is None:
                raise PurchaseError("SELECT PPSE", SW_OK, "a PPSE entry without 4F")
            aid = aid_object.value
        purchase.aid = aid
        purchase.fci = decode_dict(_exchange(transport, _select(aid), "SELECT AID", purchase), flat=True)
        pdol = purchase.fci.get("9F38", b"")
        purchase.pdol_data = build_dol(parse_dol(pdol), terminal) if pdol else b""
        data = bytes([0x83, len(purchase.pdol_data)]) + purchase.pdol_data
        gpo = _exchange(
            transport, bytes([0x80, 0xA8, 0x00, 0x00, len(data)]) + data + b"\x00", "GPO", purchase
        )
        template = decode(gpo)[0]
        if template.tag == "80":  # format 1: AIP ‖ AFL
            purchase.gpo = {"82": template.value[:2], "94": template.value[2:]}
        else:
            purchase.gpo = decode_dict(gpo, flat=True)
        afl = purchase.gpo.get("94", b"")
        if len(afl) % AFL_ENTRY_BYTES:
            raise PurchaseError("GPO", SW_OK, f"AFL of {len(afl)} bytes is not whole 4-byte entries")
        for i in range(0, len(afl), AFL_ENTRY_BYTES):
            sfi, first, last, oda_count = afl[i] >> 3, afl[i + 1], afl[i + 2], afl[i + 3]
            for record in range(first, last + 1):
                if len(purchase.records) >= AFL_RECORDS_MAX:
                    raise PurchaseError("GPO", SW_OK, f"AFL lists more than {AFL_RECORDS_MAX} records")
                apdu = bytes([0x00, 0xB2, record, (sfi << 3) | 0x04, 0x00])
                answer = _exchange(transport, apdu, f"READ RECORD SFI {sfi} record {record}", purchase)
                purchase.records.append((sfi, record, answer, record - first < oda_count))
    except TLVError as exc:
        raise PurchaseError("parsing the card's answer", SW_OK, str(exc)) from None
    return purchase


def read_balance_fen(transport: Transport, *, aid: bytes | None = None) -> int:
    """The EC balance (GET DATA 9F79), in fen; ``aid`` is selected first when given."""
    if aid is not None:
        _exchange(transport, _select(aid), "SELECT AID")
    value = decode_dict(_exchange(transport, GET_DATA_9F79, "GET DATA 9F79"), flat=True)["9F79"]
    return int(value.hex())  # type: ignore[union-attr]


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
                raise PurchaseError("APDU benchmark", status_word(transmit(command)), command.hex().upper())

        def one_round() -> None:
            for command in commands:
                transmit(command)

        return batch / _median_s(one_round, rounds)


def purchases_per_s(card: Any, *, runs: int = PURCHASE_RUNS) -> float:
    """Full qPBOC EC purchases per second in-process (1 fen each), the median of ``runs``."""
    from citycard.reader import InProcessTransport

    with InProcessTransport(card) as transport:
        qpboc_ec_purchase(transport, amount_fen=BENCH_AMOUNT_FEN)  # warm-up
        return 1 / _median_s(lambda: qpboc_ec_purchase(transport, amount_fen=BENCH_AMOUNT_FEN), runs)


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
        steps: list[tuple[str, Callable[[], Any]]] = [
            (
                "APDUs, read-only",
                lambda: apdus_per_s(_contactless_card(path, hsm, saves=False), prepared.aid),
            ),
            ("qPBOC EC purchases, image saved", lambda: purchases_per_s(_contactless_card(path, hsm))),
            (
                "qPBOC EC purchases, no saves",
                lambda: purchases_per_s(_contactless_card(path, hsm, saves=False)),
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
