"""``citycard health``: hospitals, the insurance rules, consents and the hospital desk (issue 8 item 4).

Examples::

    citycard health rules
    citycard health quote --scheme ncms --kind inpatient --amount 3000.00
    citycard health institution add --id H001 --name 第一人民医院 --merchant-id 898510141110001 --suite gm
    citycard health institution bind --id H001 --api-key-id 3
    citycard health consent grant --cardholder 7 --institution H002 --scope visits
    citycard health audit --cardholder 7
    citycard health desk visit --card card.json --his http://127.0.0.1:8000 --api-key cck_… \\
        --institution H001 --online 127.0.0.1:5000 --terminal-id D0000001 --merchant-id 898510141110001 \\
        --visit-no V0001 --department 内科 --diagnosis J06.9 --amount 120.00

The institution, consent and audit commands work on the data dir's database (or ``--db``); the
desk talks to the platform over HTTP (``--his``, an API key bound to the hospital) and to the
issuer over ISO 8583/TCP (``--online``), exactly as a hospital's window would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from citycard.cli.common import fail, print_json
from citycard.cli.host import DataDirOption, DbOption, SuiteChoice, parse_yuan_fen

app = typer.Typer(help="Hospitals, insurance rules, consents and the hospital desk (docs/health.md).")
institution_app = typer.Typer(help="Hospitals: add (with its record key in the HSM), list, bind an API key.")
consent_app = typer.Typer(help="A patient's consents: grant, revoke, list.")
desk_app = typer.Typer(
    help="The hospital desk: identify, register, visit (pay online, write card and platform)."
)
app.add_typer(institution_app, name="institution")
app.add_typer(consent_app, name="consent")
app.add_typer(desk_app, name="desk")

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
ACTOR = "cli:health"


def _engine(db: str | None, data_dir: Path | None) -> Any:
    from citycard.cli.host import _use_data_dir, open_engine

    _use_data_dir(data_dir)
    return open_engine(db, data_dir)


def _platform_call(engine: Any, action: Any) -> Any:
    from citycard.db import write_transaction
    from citycard.platform.errors import PlatformError

    try:
        with write_transaction(engine) as conn:
            return action(conn)
    except PlatformError as exc:
        fail(f"{exc.detail} ({exc.code})")
    finally:
        engine.dispose()


def _suite(choice: SuiteChoice) -> Any:
    from citycard.crypto.suite import GM, INTL

    return GM if choice is SuiteChoice.gm else INTL


# --- rules ---------------------------------------------------------------------------------------------
@app.command("rules")
def rules(json_output: JsonOption = False) -> None:
    """The insurance rules table (UNCERTAIN figures: placeholders, see docs/health.md)."""
    from citycard.sectors.health.rules import load_rules

    table = load_rules()
    rows = [
        {"scheme": s.code, "kind": kind, "deductible_fen": r.deductible_fen, "share_permille": r.share_permille,
         "cap_per_visit_fen": r.cap_per_visit_fen, "cap_per_year_fen": s.cap_per_year_fen,
         "insurer_account": s.insurer_account or None}
        for s in table.schemes.values() for kind, r in s.kinds.items()
    ]  # fmt: skip
    if json_output:
        print_json({"version": table.version, "rules": rows})
        return
    out = Table(title=f"insurance rules v{table.version} (UNCERTAIN figures)")
    for column in ("scheme", "kind", "deductible", "share", "cap/visit", "cap/year"):
        out.add_column(column)
    for r in rows:
        out.add_row(r["scheme"], r["kind"], f"{r['deductible_fen'] / 100:.2f}", f"{r['share_permille'] / 10:.1f} %",
                    f"{r['cap_per_visit_fen'] / 100:.2f}", f"{r['cap_per_year_fen'] / 100:.2f}")  # fmt: skip
    Console().print(out)


@app.command("quote")
def quote(
    scheme: Annotated[str, typer.Option("--scheme", help="ncms, urban_employee, urban_resident, self_pay")],
    amount: Annotated[str, typer.Option("--amount", help="The bill, yuan (e.g. 120.00).")],
    kind: Annotated[str, typer.Option("--kind", help="outpatient, inpatient or emergency")] = "outpatient",
    settled: Annotated[
        str, typer.Option("--settled", help="Already paid by the scheme this year, yuan.")
    ] = "0",
    json_output: JsonOption = False,
) -> None:
    """The insurer's share and the patient's part of a bill, from the rules table."""
    from citycard.platform.errors import PlatformError
    from citycard.sectors.health.rules import load_rules

    try:
        amount_fen, settled_fen = parse_yuan_fen(amount, "--amount"), parse_yuan_fen(settled, "--settled")
        share = load_rules().share(
            scheme=scheme, kind=kind, amount_fen=amount_fen, settled_this_year_fen=settled_fen
        )
    except ValueError as exc:
        fail(str(exc))
    except PlatformError as exc:
        fail(exc.detail)
    if json_output:
        print_json(share.to_dict())
    else:
        print(f"{scheme} {kind} {amount_fen / 100:.2f}: insurer {share.insurance_fen / 100:.2f}, "
              f"patient {share.self_pay_fen / 100:.2f} ({share.rule})")  # fmt: skip


# --- institutions ---------------------------------------------------------------------------------------
@institution_app.command("add")
def institution_add(
    institution_id: Annotated[str, typer.Option("--id", help="Institution id, e.g. H001.")],
    name: Annotated[str, typer.Option("--name", help="The hospital's name.")],
    merchant_id: Annotated[
        str, typer.Option("--merchant-id", help="Acquiring merchant id (F42), 15 characters.")
    ],
    suite: Annotated[SuiteChoice, typer.Option("--suite", help="Suite of its record key.")] = SuiteChoice.gm,
    db: DbOption = None,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Add a hospital: its record-signing key in the HSM (made if absent; only the public key leaves
    it) and the institution with that public key and its ledger account."""
    from citycard.cli.host import open_hsm
    from citycard.hsm import HSMError
    from citycard.sectors.health import service

    engine = _engine(db, data_dir)
    hsm = open_hsm()
    chosen = _suite(suite)
    try:
        try:
            public = hsm.institution_public_key(institution_id, chosen)
        except HSMError:
            hsm.create_institution_key(institution_id, chosen)
            public = hsm.institution_public_key(institution_id, chosen)
    except HSMError as exc:
        fail(str(exc))
    made = _platform_call(engine, lambda conn: service.create_institution(
        conn, institution_id=institution_id, name=name, merchant_id=merchant_id, suite=chosen.name,
        public_key_hex=public.hex(), actor=ACTOR))  # fmt: skip
    if json_output:
        print_json(made)
    else:
        print(f"institution {made['id']} {made['name']} ({made['suite']}), account {made['account']}")


@institution_app.command("list")
def institution_list(
    db: DbOption = None, data_dir: DataDirOption = None, json_output: JsonOption = False
) -> None:
    """The hospitals."""
    from citycard.sectors.health import service

    items = _platform_call(_engine(db, data_dir), service.list_institutions)
    if json_output:
        print_json(items)
        return
    out = Table(title="hospitals")
    for column in ("id", "name", "merchant", "suite", "record key"):
        out.add_column(column)
    for i in items:
        out.add_row(i["id"], i["name"], i["merchant_id"], i["suite"], "yes" if i["has_public_key"] else "no")
    Console().print(out)


@institution_app.command("bind")
def institution_bind(
    institution_id: Annotated[str, typer.Option("--id", help="Institution id.")],
    api_key_id: Annotated[
        int | None, typer.Option("--api-key-id", help="The HIS's API key (role sector).")
    ] = None,
    user_id: Annotated[int | None, typer.Option("--user-id", help="A desk login (role sector).")] = None,
    db: DbOption = None,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Let an API key (or a desk login) act for the hospital."""
    from citycard.sectors.health import service

    if (api_key_id is None) == (user_id is None):
        fail("give exactly one of --api-key-id and --user-id")
    from citycard.api.routers.healthcare import check_desk_principal

    principal = f"key:{api_key_id}" if api_key_id is not None else f"user:{user_id}"

    def bind(conn: Any) -> Any:
        check_desk_principal(conn, principal)
        return service.bind_principal(conn, principal=principal, institution_id=institution_id, actor=ACTOR)

    bound = _platform_call(_engine(db, data_dir), bind)
    if json_output:
        print_json(bound)
    else:
        print(f"{bound['principal']} acts for {bound['institution_id']}")


# --- consent and audit -------------------------------------------------------------------------------
CardholderOption = Annotated[int, typer.Option("--cardholder", help="The patient's cardholder id.", min=1)]
InstitutionOption = Annotated[str, typer.Option("--institution", help="Institution id, e.g. H002.")]
ScopeOption = Annotated[
    str, typer.Option("--scope", help="identity, visits, alerts, allergies, immunisations")
]


@consent_app.command("grant")
def consent_grant(cardholder: CardholderOption, institution: InstitutionOption, scope: ScopeOption = "visits",
                  db: DbOption = None, data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:  # fmt: skip
    """The patient lets a hospital read a scope of their records (at the desk, with the patient)."""
    from citycard.sectors.health import service

    made = _platform_call(_engine(db, data_dir), lambda conn: service.grant(
        conn, cardholder_id=cardholder, institution_id=institution, scope=scope, actor=ACTOR))  # fmt: skip
    print_json(made) if json_output else print(f"{institution} may read {scope} of cardholder {cardholder}")


@consent_app.command("revoke")
def consent_revoke(cardholder: CardholderOption, institution: InstitutionOption, scope: ScopeOption = "visits",
                   db: DbOption = None, data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:  # fmt: skip
    """Withdraw a consent."""
    from citycard.sectors.health import service

    made = _platform_call(_engine(db, data_dir), lambda conn: service.revoke(
        conn, cardholder_id=cardholder, institution_id=institution, scope=scope, actor=ACTOR))  # fmt: skip
    print_json(made) if json_output else print(
        f"{institution} may no longer read {scope} of cardholder {cardholder}"
    )


@consent_app.command("list")
def consent_list(cardholder: CardholderOption, db: DbOption = None, data_dir: DataDirOption = None,
                 json_output: JsonOption = False) -> None:  # fmt: skip
    """The patient's consents (revoked ones too)."""
    from citycard.sectors.health import service

    items = _platform_call(_engine(db, data_dir), lambda conn: service.consents(conn, cardholder))
    if json_output:
        print_json(items)
        return
    for c in items:
        state = f"revoked {c['revoked_at']}" if c["revoked_at"] else "active"
        print(f"{c['institution_id']} {c['scope']}: granted {c['granted_at']} by {c['granted_by']}, {state}")


@app.command("audit")
def audit(cardholder: CardholderOption, limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 50,
          db: DbOption = None, data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:  # fmt: skip
    """Who read (or tried to read) the patient's records, newest first."""
    from citycard.sectors.health import service

    items, _ = _platform_call(
        _engine(db, data_dir), lambda conn: service.audit_trail(conn, cardholder, limit=limit)
    )
    if json_output:
        print_json(items)
        return
    for a in items:
        print(f"{a['at']} {a['actor']} {a['institution_id'] or '-'} {a['scope']} "
              f"{'ALLOWED' if a['allowed'] else 'REFUSED'} ({a['reason']})")  # fmt: skip


# --- the desk ------------------------------------------------------------------------------------------
CardOption = Annotated[Path, typer.Option("--card", help="The card image (virtual card JSON).", exists=True)]
HisOption = Annotated[str, typer.Option("--his", help="Platform API base URL, e.g. http://127.0.0.1:8000")]
KeyOption = Annotated[
    str, typer.Option("--api-key", envvar="CITYCARD_HIS_API_KEY", help="The HIS's API key.")
]
SuiteOption = Annotated[SuiteChoice, typer.Option("--suite", help="Suite of the hospital's record key.")]


def _desk(card: Path, his: str, api_key: str, institution: str, suite: SuiteChoice, *, online: str | None = None,
          terminal_id: str = "D0000001", merchant_id: str | None = None, timeout_s: float = 10.0) -> tuple[Any, Any]:  # fmt: skip
    from citycard.card import load_card
    from citycard.cli.host import open_hsm
    from citycard.reader import InProcessTransport
    from citycard.terminals.hospital_desk import HisClient, HospitalDesk

    hsm = open_hsm()
    try:
        chip = load_card(card, hsm=hsm)
    except (OSError, ValueError) as exc:
        fail(f"--card {card}: {exc}")
    terminal = acquirer_for = None
    if online is not None:
        from citycard.cli.terminal import _online_link, _terminal

        if merchant_id is None:
            fail("--online needs --merchant-id (the hospital's acquiring merchant id)")
        terminal = _terminal(hsm, suite=None, aids=None, capks=None, blacklist=None, terminal_id=terminal_id,
                             merchant_id=merchant_id)  # fmt: skip

        def acquirer_for() -> Any:
            return _online_link(hsm, online, terminal_id=terminal_id, merchant_id=merchant_id, contactless=False,
                                timeout_s=timeout_s)  # fmt: skip

    desk = HospitalDesk(institution, _suite(suite), hsm, HisClient(his, api_key), terminal=terminal,
                        acquirer_for=acquirer_for)  # fmt: skip
    return desk, (chip, InProcessTransport(chip))


def _desk_errors(action: Any) -> Any:
    from citycard.terminals.health_card import HealthCardError
    from citycard.terminals.hospital_desk import DeskError

    try:
        return action()
    except (DeskError, HealthCardError) as exc:
        print(f"error: {exc}", file=__import__("sys").stderr)
        raise typer.Exit(1) from None


@desk_app.command("identify")
def desk_identify(card: CardOption, his: HisOption, api_key: KeyOption, institution: InstitutionOption,
                  suite: SuiteOption = SuiteChoice.gm, json_output: JsonOption = False) -> None:  # fmt: skip
    """Read the identity from the card's health application and find the patient on the platform."""
    desk, (_, transport) = _desk(card, his, api_key, institution, suite)
    found = _desk_errors(lambda: desk.identify(transport))
    if json_output:
        print_json(found)
    else:
        ident = found["identity"]
        file = found["registration"]["file_no"] if found["registration"] else "no file here"
        print(f"{ident['name']} ({ident['birth_date']}), cardholder {found['cardholder_id']}, {file}")


@desk_app.command("register")
def desk_register(card: CardOption, his: HisOption, api_key: KeyOption, institution: InstitutionOption,
                  file_no: Annotated[str, typer.Option("--file-no", help="The hospital's patient file number.")],
                  scheme: Annotated[str | None, typer.Option("--scheme", help="Insurance scheme.")] = None,
                  suite: SuiteOption = SuiteChoice.gm, json_output: JsonOption = False) -> None:  # fmt: skip
    """Open a patient file at the hospital for the card's holder."""
    desk, (_, transport) = _desk(card, his, api_key, institution, suite)
    found = _desk_errors(lambda: desk.register(transport, file_no=file_no, scheme=scheme))
    print_json(found) if json_output else print(f"file {found['registration']['file_no']} at {institution}")


@desk_app.command("visit")
def desk_visit(
    card: CardOption,
    his: HisOption,
    api_key: KeyOption,
    institution: InstitutionOption,
    visit_no: Annotated[str, typer.Option("--visit-no", help="The hospital's visit number.")],
    department: Annotated[str, typer.Option("--department")],
    diagnosis: Annotated[str, typer.Option("--diagnosis", help="ICD-10 code, e.g. J06.9.")],
    amount: Annotated[str, typer.Option("--amount", help="The bill, yuan.")],
    online: Annotated[str, typer.Option("--online", help="Issuer host HOST:PORT (ISO 8583).")],
    merchant_id: Annotated[str, typer.Option("--merchant-id", help="The hospital's merchant id (F42).")],
    terminal_id: Annotated[
        str, typer.Option("--terminal-id", help="The window's terminal id (F41).")
    ] = "D0000001",
    kind: Annotated[str, typer.Option("--kind", help="outpatient, inpatient, emergency")] = "outpatient",
    suite: SuiteOption = SuiteChoice.gm,
    json_output: JsonOption = False,
) -> None:
    """A visit: quote, pay the self-pay part online, write the signed record to the card and the
    platform, settle the insurance share. The card image is saved after the write."""
    from citycard.card.image import save_card

    try:
        amount_fen = parse_yuan_fen(amount, "--amount")
    except ValueError as exc:
        fail(str(exc))
    desk, (chip, transport) = _desk(card, his, api_key, institution, suite, online=online, terminal_id=terminal_id,
                                    merchant_id=merchant_id)  # fmt: skip
    try:
        done = _desk_errors(lambda: desk.visit(transport, visit_no=visit_no, department=department,
                                               diagnosis_code=diagnosis, amount_fen=amount_fen, kind=kind))  # fmt: skip
    finally:
        save_card(chip, card)
    if json_output:
        print_json(done.to_dict())
    else:
        for line in done.log:
            print(line)
