"""`citycard demo`: a day of the city, end to end through real parts (docs/demo.md).

A temporary city on SQLite: citybank and the city switch over ISO 8583/TCP (:mod:`.banks`), the
platform API served by uvicorn over HTTP, citizens whose cards are issued through the platform
(:mod:`.people`), 圈存 top-ups online at a kiosk, then a day on five validators (helper A's
:class:`~citycard.terminals.validator.Validator`: the kernel's qPBOC with the Part 14 trip record,
fares priced from it, blacklist, an fsync'd journal) and the uploads over HTTP into clearing.

The story (Asia/Shanghai times on day D = two days ago; the cards were prepared a week before, so
their effective date (5F25) lets them ride on D; a validator offline since D−1 comes back today):

* 张伟 commutes: K1 entry → exit (the maximum held, the rest refunded by clearing at the exit),
  a transfer to line 3 (−1 yuan), line 12, a taxi home;
* 王芳 (elderly) rides free, and taps twice in a row (the second is refused: anti-double-tap);
* 李娜 (student) pays half, and forgets to tap out of K1 (a missing exit: the daily correction pays
  back the difference to the fare due);
* 刘洋 loses his card: he reports it at 12:00; line 3's validator has the old blacklist and lets
  him ride at 12:30 (clearing refunds it: no liability after the report minute); line 12's has the
  new list and declines him at 13:00;
* 陈静 rides bus 12-002 six times a day, whose modem is broken: it holds her taps of D−1 and D
  until it is back; the daily cap (10 yuan) stops charging after the fifth ride;
* Mark Chen pays a taxi with his international-suite card.

Then: the validators upload; one journal is resent (duplicates) and one forged TC is injected;
clearing checks every TC in the HSM; D is settled; the offline bus uploads; the daily corrections
run for D−1 and D; everything unsettled is settled today; clearing reconciles. Every number of the
summary is read back from the journals, the clearing tables and the ledger.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

SHANGHAI = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
FARES = "panzhihua"
TOPUP_FEN = {"default": 5_000, "taxi": 10_000}
DEMO_DAYS_AGO = 2  # day D
EFFECTIVE_DAYS_BEFORE = 7  # the cards were prepared this many days before D
UPLOAD_BATCH = 50

Progress = Callable[[str, int, int], None]  # (step, done, total)


@dataclass(frozen=True)
class DeviceSpec:
    terminal_id: str
    operator: str
    kind: str  # bus | taxi
    line: str
    vehicle: str
    online: bool = True  # uploads at the end of D (False: offline for days)


DEVICES = (
    DeviceSpec("BUS-K1-001", "pzh-bus", "bus", "K1", "D10001"),
    DeviceSpec("BUS-3-001", "pzh-bus", "bus", "3", "D30001"),
    DeviceSpec("BUS-12-001", "pzh-bus", "bus", "12", "D12001"),
    DeviceSpec("BUS-12-002", "pzh-bus", "bus", "12", "D12002", online=False),
    DeviceSpec("TAXI-001", "pzh-taxi", "taxi", "TAXI", "DT0001"),
)


@dataclass(frozen=True)
class PlannedTap:
    """One tap of the story: ``day`` 0 = D, −1 = the day before; local Asia/Shanghai time."""

    day: int
    hhmmss: str
    rider: int  # index in people.cast()
    device: str
    kind: str  # entry | exit | flat | taxi
    stop: str | None = None
    metered_fen: int | None = None

    def at(self, d: dt.date) -> dt.datetime:
        h, m, s = (int(x) for x in self.hhmmss.split(":"))
        local = dt.datetime(d.year, d.month, d.day, h, m, s, tzinfo=SHANGHAI) + dt.timedelta(days=self.day)
        return local.astimezone(dt.UTC)


LOSS_AT = "12:00:00"  # 刘洋's loss report (local time on D)
PLAN = (
    # 陈静 (4) on the offline bus, the day before
    PlannedTap(-1, "08:10:00", 4, "BUS-12-002", "flat"),
    PlannedTap(-1, "18:10:00", 4, "BUS-12-002", "flat"),
    # day D
    PlannedTap(0, "07:10:00", 4, "BUS-12-002", "flat"),
    PlannedTap(0, "07:30:00", 0, "BUS-K1-001", "entry", "BCG"),
    PlannedTap(0, "07:40:00", 2, "BUS-12-001", "flat"),
    PlannedTap(0, "07:55:00", 0, "BUS-K1-001", "exit", "QFG"),
    PlannedTap(0, "08:00:00", 3, "BUS-3-001", "flat"),
    PlannedTap(0, "08:20:00", 0, "BUS-3-001", "flat"),  # a transfer within 60 min of the K1 exit
    PlannedTap(0, "08:40:00", 4, "BUS-12-002", "flat"),
    PlannedTap(0, "09:00:00", 1, "BUS-3-001", "flat"),
    PlannedTap(0, "09:00:20", 1, "BUS-3-001", "flat"),  # the same card again within 60 s: refused
    PlannedTap(0, "10:10:00", 4, "BUS-12-002", "flat"),
    PlannedTap(0, "10:30:00", 1, "BUS-K1-001", "entry", "DDK"),
    PlannedTap(0, "11:05:00", 1, "BUS-K1-001", "exit", "MZW"),
    PlannedTap(0, "11:40:00", 4, "BUS-12-002", "flat"),
    PlannedTap(0, "12:05:00", 2, "BUS-K1-001", "entry", "NSG"),  # never taps out
    PlannedTap(0, "12:30:00", 3, "BUS-3-001", "flat"),  # after the loss report, on a stale list
    PlannedTap(0, "13:00:00", 3, "BUS-12-001", "flat"),  # the new list: declined
    PlannedTap(0, "13:10:00", 4, "BUS-12-002", "flat"),  # the fifth ride reaches the cap
    PlannedTap(0, "14:40:00", 4, "BUS-12-002", "flat"),  # capped: 0 fen
    PlannedTap(0, "17:30:00", 0, "BUS-12-001", "flat"),
    PlannedTap(0, "18:00:00", 2, "BUS-3-001", "flat"),
    PlannedTap(0, "18:40:00", 0, "TAXI-001", "taxi", metered_fen=1_500),
    PlannedTap(0, "19:00:00", 5, "TAXI-001", "taxi", metered_fen=2_300),
)


@dataclass
class DemoState:
    data_dir: Path
    seed: int
    day: dt.date
    timings_s: dict[str, float] = field(default_factory=dict)
    log: list[tuple[str, ...]] = field(
        default_factory=list
    )  # (time, device, rider, kind, result, fen, reason)
    corrections: list[dict[str, Any]] = field(default_factory=list)
    settlements: list[dict[str, Any]] = field(default_factory=list)
    reconciliation: dict[str, Any] = field(default_factory=dict)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    handled: dict[str, int] = field(default_factory=dict)
    stale_after_loss: list[str] = field(default_factory=list)  # terminals behind the new blacklist
    base_url: str = ""  # the platform API
    keys: dict[str, str] = field(default_factory=dict, repr=False)  # terminal id → its API key (secret)
    journaled: list[tuple[str, dict[str, Any]]] = field(
        default_factory=list
    )  # (device, upload)  # "<reason>:<action>" → count


class DemoError(RuntimeError):
    """The demo found the city in a state it must not be in (a broken invariant): the message says
    which."""


def _quiet(step: str, done: int, total: int) -> None:
    return None


def demo_day(today: dt.date | None = None) -> dt.date:
    today = today or dt.datetime.now(SHANGHAI).date()
    return today - dt.timedelta(days=DEMO_DAYS_AGO)


def run_demo(
    data_dir: Path, *, seed: int = 7, progress: Progress = _quiet
) -> tuple[dict[str, Any], DemoState]:
    """Run the day (module note) in ``data_dir``; (the summary document, the state with details)."""
    from citycard.api.app import create_app
    from citycard.api.auth import create_api_key
    from citycard.api.roles import Role
    from citycard.api.settings import ApiSettings
    from citycard.card import load_card, save_card
    from citycard.db import make_engine, upgrade, write_transaction
    from citycard.demo import people
    from citycard.demo.banks import BankNetwork, ec_load
    from citycard.demo.httpserver import start_server, stop_server
    from citycard.hsm import SoftHSM
    from citycard.sectors.transit import load_table

    data_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    state = DemoState(data_dir, seed, demo_day())
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        state.timings_s[name] = round(now - clock, 3)
        clock = now

    engine = make_engine(f"sqlite:///{data_dir / 'citycard.db'}")
    upgrade(engine)
    hsm_file, master_file = data_dir / "hsm-keys.json", data_dir / "hsm-master.key"
    hsm = SoftHSM.open(hsm_file, master_key_file=master_file)
    table = load_table(FARES)
    network = BankNetwork(engine, hsm, data_dir).start()
    settings = ApiSettings(
        image_dir=data_dir / "cards", clearing_hsm=hsm_file, clearing_master_key=master_file
    )
    validators: dict[str, Any] = {}
    try:
        server, thread, base_url = start_server(create_app(engine=engine, hsm=hsm, settings=settings))
    except RuntimeError:
        network.stop()
        engine.dispose()
        raise
    lap("start")
    try:
        # 1. citizens and cards, through the platform
        image_dir = data_dir / "cards"
        image_dir.mkdir(exist_ok=True)
        effective = state.day - dt.timedelta(days=EFFECTIVE_DAYS_BEFORE)
        holders = []
        for index, citizen in enumerate(people.cast()):
            holders.append(people.issue(engine, hsm, image_dir, citizen, index + 1, rng, effective=effective))
            progress("issue cards", index + 1, len(people.cast()))
        cards = {i: load_card(h.image_path, hsm=hsm) for i, h in enumerate(holders)}
        lap("issue")

        # 2. 圈存 top-ups online: kiosk → switch → citybank, over TCP
        for i, holder in enumerate(holders):
            amount = TOPUP_FEN["taxi" if holder.citizen.role == "taxi" else "default"]
            loaded = ec_load(network, cards[i], amount_fen=amount)
            if not loaded.approved:
                raise DemoError(
                    f"the top-up of {holder.citizen.name}'s card was declined: {loaded.reasons[-1]}"
                )
            progress("top up online", i + 1, len(holders))
        lap("top-ups")

        # 3. validators with the platform's parameters; API keys for their uploads
        keys: dict[str, str] = {}
        with write_transaction(engine) as conn:
            for spec in DEVICES:
                keys[spec.terminal_id] = create_api_key(
                    conn,
                    name=f"validator-{spec.terminal_id.lower()}",
                    role=Role.terminal,
                    subject=spec.terminal_id,
                )["key"]
        state.base_url, state.keys = base_url, keys
        validators.update(_validators(engine, hsm, table, data_dir, base_url, keys))

        # 4. the day
        outcomes = _ride(state, engine, holders, cards, validators, progress, rng)
        for card in cards.values():
            save_card(card)
        lap("taps")

        # 5. end of D: the online validators upload; a resend and a forgery arrive too
        online = [s for s in DEVICES if s.online]
        for n, spec in enumerate(online):
            state.uploads.append(
                _upload(validators[spec.terminal_id], keys[spec.terminal_id], base_url, spec)
            )
            progress("upload", n + 1, len(online))
        state.uploads.append(_replay(state, keys["BUS-K1-001"], base_url))
        state.uploads.append(_resend(state, validators["BUS-K1-001"], keys["BUS-K1-001"], base_url))
        state.uploads.append(_forge(state, validators["BUS-3-001"], keys["BUS-3-001"], base_url, rng))
        state.handled.update(_work_exceptions(engine))
        lap("uploads")
        _settle(state, engine, state.day)

        # 6. days later: the offline bus is back; corrections for the closed days; settle; reconcile
        spec = next(s for s in DEVICES if not s.online)
        state.uploads.append(_upload(validators[spec.terminal_id], keys[spec.terminal_id], base_url, spec))
        for name, count in _work_exceptions(engine).items():
            state.handled[name] = state.handled.get(name, 0) + count
        from citycard.sectors.transit.daily import run_corrections

        for offset in (-1, 0):
            summary = run_corrections(engine, day=state.day + dt.timedelta(days=offset), table=table)
            state.corrections.append(summary.as_dict())
            progress("daily corrections", offset + 2, 2)
        _settle(state, engine, dt.datetime.now(SHANGHAI).date())
        from citycard.clearing.store import reconcile

        state.reconciliation = reconcile(engine)
        lap("clearing")
        document = summary_document(engine, validators, state, outcomes)
    finally:
        stop_server(server, thread)
        network.stop()
        for validator in validators.values():
            validator.journal.close()
        engine.dispose()
    return document, state


def _validators(
    engine: Any, hsm: Any, table: Any, data_dir: Path, base_url: str, keys: dict[str, str]
) -> dict[str, Any]:
    """The five devices, one journal each; the platform publishes the day's blacklists and every
    device downloads its parameters over HTTP (fares, its class's list, CAPKs) and reports the
    versions it holds (helper A's ``download_parameters``)."""
    from citycard.db import write_transaction
    from citycard.kernel.capp import HsmCappSigner
    from citycard.kernel.context import Terminal, TerminalProfile
    from citycard.kernel.params import AidTable, CapkTable
    from citycard.platform import blacklist
    from citycard.platform.applications import RECORD_KEY_TYPE, get_application
    from citycard.terminals.journal import TapJournal
    from citycard.terminals.parameters import download_parameters
    from citycard.terminals.validator import Validator, ValidatorConfig

    app = get_application("transit")
    signer = HsmCappSigner(hsm, {suite: app.record_label(suite) for suite in ("GM", "INTL")})
    for suite in ("GM", "INTL"):  # the operator's record-key masters (the platform made GM's)
        if app.record_label(suite) not in {info.label for info in hsm.list_keys()}:
            from citycard.crypto.suite import GM, INTL

            hsm.generate_key(app.record_label(suite), RECORD_KEY_TYPE, GM if suite == "GM" else INTL)
    (data_dir / "validators").mkdir(exist_ok=True)
    capks = CapkTable.load().with_hsm(hsm)  # the CAs of the city's test issuer, in the HSM
    with write_transaction(engine) as conn:
        for name in ("bus", "taxi"):
            blacklist.publish(conn, terminal_class=name, at=dt.datetime.now(dt.UTC))
    validators: dict[str, Any] = {}
    for spec in DEVICES:
        config = ValidatorConfig(spec.terminal_id, spec.operator, spec.kind, spec.line, spec.vehicle)  # type: ignore[arg-type]
        terminal = Terminal(TerminalProfile.bus_validator(capp=True), AidTable.load(), capks, None)
        journal = TapJournal(data_dir / "validators" / f"{spec.terminal_id}.sqlite")
        validator = Validator(config, fares=table, terminal=terminal, capp_signer=signer, journal=journal)
        download_parameters(validator, base_url=base_url, api_key=keys[spec.terminal_id], capk_base=capks)
        validators[spec.terminal_id] = validator
    return validators


@dataclass(frozen=True)
class TapRecord:
    planned: PlannedTap
    approved: bool
    amount_fen: int
    reason: str


def _ride(
    state: DemoState, engine: Any, holders: list[Any], cards: dict[int, Any], validators: dict[str, Any],
    progress: Progress, rng: random.Random,
) -> list[TapRecord]:  # fmt: skip
    """Every planned tap in time order (the loss report in between); taxi meters vary with the seed."""
    from citycard.reader import InProcessTransport

    loss_at = PlannedTap(0, LOSS_AT, 3, "", "flat").at(state.day)
    lost = next(i for i, h in enumerate(holders) if h.citizen.role == "lost")
    reported = False
    outcomes: list[TapRecord] = []
    plan = sorted(PLAN, key=lambda p: p.at(state.day))
    for n, planned in enumerate(plan):
        when = planned.at(state.day)
        if not reported and when >= loss_at:
            _report_loss(
                state, engine, holders[lost].card_id, loss_at, validators, state.base_url, state.keys
            )
            reported = True
        metered = planned.metered_fen + rng.randrange(0, 500, 10) if planned.metered_fen else None
        card = cards[planned.rider]
        card.interface = "contactless"
        with InProcessTransport(card) as transport:
            out = validators[planned.device].tap(
                transport, tap_kind=planned.kind, stop=planned.stop, metered_fen=metered, now=when
            )
        outcomes.append(TapRecord(planned, out.approved, out.amount_fen, out.reason))
        if out.approved and out.upload is not None:
            state.journaled.append((planned.device, out.upload))
        state.log.append(
            (
                f"{when.astimezone(SHANGHAI):%m-%d %H:%M:%S}", planned.device, holders[planned.rider].citizen.name,
                planned.kind, "approved" if out.approved else "DECLINED", str(out.amount_fen), out.reason,
            )
        )  # fmt: skip
        progress("a day of taps", n + 1, len(plan))
    return outcomes


def _report_loss(
    state: DemoState, engine: Any, card_id: int, at: dt.datetime, validators: dict[str, Any],
    base_url: str, keys: dict[str, str],
) -> None:  # fmt: skip
    """The holder phones in; the platform publishes the bus list; line 12's validator downloads the
    delta at once (over HTTP), line 3's does not (it is still on the old list)."""
    from citycard.db import write_transaction
    from citycard.platform import blacklist, cards
    from citycard.terminals.parameters import download_parameters

    held = validators["BUS-3-001"].versions["blacklist"]
    with write_transaction(engine) as conn:
        cards.report_loss(conn, card_id, formal=False, actor="hotline:demo", at=at)
    with write_transaction(engine) as conn:
        version = blacklist.publish(conn, terminal_class="bus", at=dt.datetime.now(dt.UTC))
    updated = validators["BUS-12-001"]
    report = download_parameters(
        updated, base_url=base_url, api_key=keys["BUS-12-001"], capk_base=updated.terminal.capks
    )
    if report.versions["blacklist"] != version:
        raise DemoError(f"BUS-12-001 holds blacklist v{report.versions['blacklist']}, not v{version}")
    with engine.connect() as conn:  # what the operator's console shows now
        behind = sorted(t["terminal_id"] for t in blacklist.stale(conn, now=dt.datetime.now(dt.UTC)))
    state.stale_after_loss = behind
    state.log.append(
        (
            f"{at.astimezone(SHANGHAI):%m-%d %H:%M:%S}", "platform", "刘洋", "loss", "reported", "",
            f"bus list v{version}: BUS-12-001 downloads it; stale: {', '.join(behind)} (still v{held})",
        )
    )  # fmt: skip


def _upload(validator: Any, api_key: str, base_url: str, spec: DeviceSpec) -> dict[str, Any]:
    from citycard.terminals.uploader import Uploader

    with Uploader(
        validator.journal,
        base_url=base_url,
        api_key=api_key,
        terminal_id=spec.terminal_id,
        batch_size=UPLOAD_BATCH,
    ) as uploader:
        report = uploader.upload_pending()
    if report.failed is not None:
        raise DemoError(f"{spec.terminal_id} could not upload: {report.failed}")
    return {"terminal_id": spec.terminal_id, "batches": report.batches, "records": report.records,
            "exceptions": report.exceptions, "replayed": report.replayed}  # fmt: skip


def _post(
    base_url: str, api_key: str, terminal_id: str, batch_id: str, records: list[dict[str, Any]]
) -> dict[str, Any]:
    import httpx

    body = {"terminal_id": terminal_id, "batch_id": batch_id, "records": records}
    answer = httpx.post(
        f"{base_url}/v1/clearing/uploads", json=body,
        headers={"X-API-Key": api_key, "Idempotency-Key": batch_id}, timeout=30,
    )  # fmt: skip
    if answer.status_code != 200:
        raise DemoError(f"{batch_id}: HTTP {answer.status_code} {answer.text[:200]}")
    return answer.json()


def _journaled(state: DemoState, terminal_id: str) -> list[dict[str, Any]]:
    """The uploads ``terminal_id`` journaled during the day (what its approved taps returned)."""
    return [dict(upload) for device, upload in state.journaled if device == terminal_id]


def _replay(state: DemoState, api_key: str, base_url: str) -> dict[str, Any]:
    """The K1 validator's first batch sent again under its own id (an answer lost on the way back):
    the platform answers with the first summary (``replayed``) and clears nothing again."""
    terminal_id = "BUS-K1-001"
    records = _journaled(state, terminal_id)
    batch_id = f"{terminal_id}:1-{len(records)}"  # the uploader's id for seqs 1…n (one batch)
    answer = _post(base_url, api_key, terminal_id, batch_id, records)
    if not answer["replayed"]:
        raise DemoError(f"{batch_id} sent again was cleared again instead of replayed")
    return {"terminal_id": terminal_id, "batches": 1, "records": len(records), "exceptions": answer["exceptions"],
            "replayed": 1, "injected": "same batch again"}  # fmt: skip


def _resend(state: DemoState, validator: Any, api_key: str, base_url: str) -> dict[str, Any]:
    """The K1 validator's journal restored from a backup and sent again under a new batch id: each
    record is already cleared → ``duplicate`` exceptions, nothing posted twice."""
    terminal_id = validator.config.terminal_id
    records = _journaled(state, terminal_id)[:2]
    answer = _post(base_url, api_key, terminal_id, f"{terminal_id}:resend-1", records)
    return {"terminal_id": terminal_id, "batches": 1, "records": len(records), "exceptions": answer["exceptions"],
            "replayed": int(answer["replayed"]), "injected": "duplicate"}  # fmt: skip


def _forge(
    state: DemoState, validator: Any, api_key: str, base_url: str, rng: random.Random
) -> dict[str, Any]:
    """A cloned card's tap: a real record with a new ATC and a made-up TC (9F26) → ``forged``."""
    from citycard.emv.tlv import TLV, decode, encode

    terminal_id = validator.config.terminal_id
    record = _journaled(state, terminal_id)[0]
    items = []
    for tlv in decode(bytes.fromhex(record["field55"])):
        if tlv.tag == "9F26":
            tlv = TLV("9F26", rng.randbytes(8))
        elif tlv.tag == "9F36":
            tlv = TLV("9F36", (int.from_bytes(tlv.value, "big") + 0x0400).to_bytes(2, "big"))
        items.append(tlv)
    record["field55"] = encode(items).hex().upper()
    answer = _post(base_url, api_key, terminal_id, f"{terminal_id}:forged-1", [record])
    return {"terminal_id": terminal_id, "batches": 1, "records": 1, "exceptions": answer["exceptions"],
            "replayed": int(answer["replayed"]), "injected": "forged"}  # fmt: skip


def _work_exceptions(engine: Any) -> dict[str, int]:
    """The clearing desk works its queue: duplicates and forgeries can only be rejected. (Late taps —
    validators upload in any order — clear by themselves when they fit their neighbours; an
    ``out_of_order`` item, an ATC clearing cannot check, would be accepted, or refunded when made
    after the card's loss-report minute.)"""
    from citycard.clearing.store import handle_exception
    from citycard.clearing.tables import Card, ExceptionItem

    with engine.connect() as conn:
        items = conn.execute(
            sa.select(ExceptionItem.id, ExceptionItem.reason, ExceptionItem.upload)
            .where(ExceptionItem.status == "open")
            .order_by(ExceptionItem.id)
        ).all()
        lost = dict(conn.execute(sa.select(Card.card, Card.lost_at).where(Card.lost_at.is_not(None))).all())
    done: dict[str, int] = {}
    for item_id, reason, text in items:
        action = "reject"
        if reason == "out_of_order":
            upload = json.loads(text)
            lost_at = lost.get(f"{upload['pan']}:{upload['psn']}")
            tapped = dt.datetime.fromisoformat(upload["tap_at"])
            action = "refund" if lost_at is not None and tapped >= lost_at else "accept"
        handle_exception(engine, item_id, action=action, operator="desk:clearing", note=f"demo: {reason}")
        done[f"{reason}:{action}"] = done.get(f"{reason}:{action}", 0) + 1
    return done


def _settle(state: DemoState, engine: Any, day: dt.date) -> None:
    from citycard.clearing.store import settle

    for line in settle(engine, day.isoformat()):
        state.settlements.append(line.__dict__ if hasattr(line, "__dict__") else dict(line._asdict()))


def summary_document(
    engine: Any, validators: dict[str, Any], state: DemoState, outcomes: list[TapRecord]
) -> dict[str, Any]:
    """The issue's JSON, every number read back from where it lives (module note), with the checks."""
    from citycard.clearing.tables import Batch, ExceptionItem, Settlement, Tap
    from citycard.ledger.tables import ledger_postings
    from citycard.platform.tables import cards as card_rows

    counts = [v.journal.counts() for v in validators.values()]
    approved = sum(c["taps"] for c in counts)
    declined = sum(c["declined"] for c in counts)
    with engine.connect() as conn:
        issued = conn.execute(
            sa.select(sa.func.count())
            .select_from(card_rows)
            .where(card_rows.c.state.in_(("active", "lost_oral", "lost")))
        ).scalar_one()
        online = conn.execute(
            sa.select(sa.func.count())
            .select_from(ledger_postings)
            .where(ledger_postings.c.key.like("ecload:%"))
        ).scalar_one()
        uploaded = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(Batch.records), 0))).scalar_one()
        cleared = conn.execute(sa.select(sa.func.count()).select_from(Tap)).scalar_one()
        reasons = dict(
            conn.execute(
                sa.select(ExceptionItem.reason, sa.func.count()).group_by(ExceptionItem.reason)
            ).all()
        )
        refunded = conn.execute(
            sa.select(sa.func.count()).select_from(Tap).where(Tap.refunded.is_(True))
        ).scalar_one()
        rows = conn.execute(
            sa.select(Settlement.operator, sa.func.sum(Settlement.gross_fen), sa.func.sum(Settlement.fee_fen),
                      sa.func.sum(Settlement.net_fen)).group_by(Settlement.operator).order_by(Settlement.operator)
        ).all()  # fmt: skip
    settlement = {op: int(net) for op, _, _, net in rows}
    fares_total = sum(int(gross) for _, gross, _, _ in rows)
    fees = sum(int(fee) for _, _, fee, _ in rows)
    if sum(settlement.values()) + fees != fares_total:
        raise DemoError(f"settlement {sum(settlement.values())} + fees {fees} ≠ fares {fares_total}")
    if approved + declined != len(outcomes):
        raise DemoError(f"journals count {approved} + {declined} taps, the day made {len(outcomes)}")
    return {
        "cards_issued": int(issued),
        "taps": approved + declined,
        "taps_approved": approved,
        "taps_declined": declined,
        "online_authorisations": int(online),
        "records_uploaded": int(uploaded),
        "records_cleared": int(cleared),
        "duplicates_rejected": int(reasons.get("duplicate", 0)),
        "forged_rejected": int(reasons.get("forged", 0)),
        "refunds_after_loss": int(refunded),
        "fares_total": fares_total,
        "settlement": settlement,
        "ledger_balanced": bool(state.reconciliation.get("ledger_balanced")),
        "ec_reconciled": bool(state.reconciliation.get("ec_reconciled")),
    }
