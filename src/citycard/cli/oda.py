"""`citycard oda`: check a card's offline data authentication data (SDA, DDA/fDDA, CDA) in both suites.

``check`` reads one CASE.json (the CA public key, the card's ODA tags, the static and dynamic data)
and prints the outcome as JSON; ``example`` writes a self-consistent case from a fresh test CA.
Hex is upper case; bad input prints one precise line on stderr and exits 2.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, field_validator, model_validator
from rich.console import Console
from rich.table import Table

from citycard.cli.common import fail, print_json, to_hex
from citycard.crypto import GM, INTL, rsa, sm2
from citycard.crypto.capk import Capk, CapkError, find_capk, generate_test_ca
from citycard.crypto.oda import (
    ODAError,
    OdaResult,
    PublicKey,
    fdda_terminal_dynamic_data,
    icc_certificate,
    icc_dynamic_data,
    issuer_certificate,
    issuer_identifier,
    recover_icc_public_key,
    recover_issuer_public_key,
    sign_cda,
    sign_dynamic_data,
    sign_static_data,
    verify_cda,
    verify_dynamic_signature,
    verify_sda,
)
from citycard.crypto.suite import Suite
from citycard.emv import TLV, TLVError, decode, encode, find

app = typer.Typer(
    help="Offline data authentication: check certificates and signatures (RSA and SM2), make test cases.",
    no_args_is_help=True,
)

CASE_BYTES_MAX = 256 * 1024  # a case is a few kilobytes
TAGS = ("90", "92", "9F32", "9F46", "9F47", "9F48", "93", "9F4B", "5A")
CHINA_TIME = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")  # no DST since 1991: a fixed offset


# --- CASE.json -------------------------------------------------------------------------------


def _hex_bytes(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"must be a hex string, got {type(value).__name__}")
    text = "".join(value.split())
    if len(text) % 2:
        raise ValueError(f"odd-length hex ({len(text)} digits)")
    bad = next((c for c in text if c not in "0123456789abcdefABCDEF"), None)
    if bad is not None:
        raise ValueError(f"not hex (bad character {bad!r})")
    return bytes.fromhex(text)


Hex = Annotated[bytes, BeforeValidator(_hex_bytes)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CapkCase(_Strict):
    rid: Hex
    index: Hex
    modulus: Hex | None = None
    exponent: Hex | None = None
    sm2_public_key: Hex | None = None

    @model_validator(mode="after")
    def _one_key(self) -> CapkCase:
        if len(self.rid) != 5:
            raise ValueError(f"rid must be 5 bytes, got {len(self.rid)}")
        if len(self.index) != 1:
            raise ValueError(f"index must be 1 byte, got {len(self.index)}")
        if self.modulus is not None and self.sm2_public_key is not None:
            raise ValueError("give either modulus + exponent (RSA) or sm2_public_key (SM2), not both")
        if self.modulus is not None and self.exponent is None:
            raise ValueError("an RSA CAPK needs its exponent")
        if self.sm2_public_key is not None and self.exponent is not None:
            raise ValueError("an SM2 CAPK has no exponent")
        return self


class CdaCase(_Strict):
    unpredictable_number: Hex
    pdol_data: Hex = b""
    cdol1_data: Hex
    cdol2_data: Hex = b""
    response_tlvs: Hex


class Case(_Strict):
    capk: CapkCase
    tags: dict[str, Hex]
    static_data: Hex = b""
    dynamic_data: Hex | None = None
    cda: CdaCase | None = None
    today: dt.date | None = None

    @field_validator("tags", mode="before")
    @classmethod
    def _known_tags(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        upper = {str(tag).upper(): item for tag, item in value.items()}
        unknown = sorted(set(upper) - set(TAGS))
        if unknown:
            raise ValueError(f"unknown tag {unknown[0]}: expected some of {', '.join(TAGS)}")
        return upper


def _validation_line(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "case"
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {message[:1].lower()}{message[1:]}{more}"


def load_case(path: Path) -> Case:
    """Read and validate CASE.json; every problem ends the command with one line and exit 2."""
    try:
        size = path.stat().st_size
        if size > CASE_BYTES_MAX:
            fail(f"{path}: {size} bytes, a case is at most {CASE_BYTES_MAX}")
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        fail(f"{path}: no such file")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{path}: cannot read: {exc}")
    except json.JSONDecodeError as exc:
        fail(f"{path}: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    if not isinstance(raw, dict):
        fail(f"{path}: a case is a JSON object, got {type(raw).__name__}")
    try:
        return Case.model_validate(raw)
    except ValidationError as exc:
        fail(f"{path}: {_validation_line(exc)}")


# --- the check -------------------------------------------------------------------------------


def _status(result: OdaResult | None, errors: list[str]) -> str:
    if result is None:
        return "absent"
    errors.extend(result.reasons)
    if result.expired:
        errors.append(f"{result.name}: expired (valid to the end of {result.expiry[:2]}/{result.expiry[2:]})")
    return "valid" if result.ok else "invalid"


def _pan(case: Case, warnings: list[str]) -> bytes | None:
    """PAN from tags.5A, else from 5A in the static data (records, maybe followed by the AIP)."""
    found: bytes | None = case.tags.get("5A")
    where = "tags.5A"
    for data in (case.static_data, case.static_data[:-2]):
        if found is not None:
            break
        try:
            record = find(decode(data), "5A")
        except TLVError:
            continue
        found, where = (record.value, "5A in static_data") if record is not None else (None, where)
    if found is not None:
        try:
            issuer_identifier(found)  # checks the PAN: 12 to 19 digits, F-padded
        except ODAError as exc:
            fail(f"{where}: {exc}")
        return found
    warnings.append(
        "no PAN (tags.5A, or 5A in static_data): issuer identifier and certificate PAN not checked"
    )
    return None


def check_case(case: Case) -> dict[str, Any]:
    """Run every check the case has data for; exit 2 when the CA key cannot process tag 90."""
    try:
        if case.capk.modulus is None and case.capk.sm2_public_key is None:
            # named by RID and index only: one of the shipped scheme test keys
            capk = find_capk(case.capk.rid, case.capk.index[0])
        else:
            capk = Capk(
                rid=case.capk.rid,
                index=case.capk.index[0],
                suite=GM if case.capk.sm2_public_key is not None else INTL,
                key=case.capk.sm2_public_key or case.capk.modulus or b"",
                exponent=case.capk.exponent or b"",
            )
    except CapkError as exc:
        fail(f"capk: {exc}")
    suite = capk.suite
    tags, errors, warnings = case.tags, [], []
    if "90" not in tags:
        fail("tags.90 (issuer public key certificate) is required")
    today = case.today or dt.datetime.now(CHINA_TIME).date()
    pan = _pan(case, warnings)
    if not case.static_data and ("9F46" in tags or "93" in tags):
        warnings.append("static_data is empty: 9F46/93 sign the records to authenticate (and the AIP)")
    ca_name = f"CAPK {to_hex(capk.rid)}/{capk.index:02X} ({suite.signature.upper()})"
    try:
        issuer = recover_issuer_public_key(
            capk, tags["90"], tags.get("92", b""), tags.get("9F32", b""), pan=pan, today=today
        )
    except ODAError as exc:
        fail(f"{ca_name} cannot process tags.90: {exc}")
    issuer_status = _status(issuer, errors)
    issuer_key = issuer.public_key

    def run(name: str, needed: PublicKey | None, check: Any) -> OdaResult | str:
        if needed is None:
            errors.append(
                f"{name} not checked: no valid {'issuer' if name in ('9F46', '93') else 'ICC'} public key"
            )
            return "invalid"
        try:
            return check(needed)
        except ODAError as exc:
            errors.append(f"{name}: {exc}")
            return "invalid"

    def status(outcome: OdaResult | str | None) -> str:
        return outcome if isinstance(outcome, str) else _status(outcome, errors)

    icc = None
    if "9F46" in tags:
        icc = run(
            "9F46",
            issuer_key,
            lambda key: recover_icc_public_key(
                key,
                tags["9F46"],
                tags.get("9F48", b""),
                tags.get("9F47", b""),
                case.static_data,
                pan=pan,
                today=today,
            ),
        )
    icc_status = status(icc)
    icc_key = icc.public_key if isinstance(icc, OdaResult) else None
    sda = None
    if "93" in tags:
        sda = run("93", issuer_key, lambda key: verify_sda(key, tags["93"], case.static_data))
    sda_status = status(sda)

    cda = dda = None
    cda_signature, cda_uses_tag = _cda_signature(case)
    if case.cda is not None:
        cda = run(
            "CDA",
            icc_key,
            lambda key: verify_cda(
                key,
                cda_signature,
                tag_9f37=case.cda.unpredictable_number,
                pdol_data=case.cda.pdol_data,
                cdol1_data=case.cda.cdol1_data,
                cdol2_data=case.cda.cdol2_data,
                response_tlvs=case.cda.response_tlvs,
            ),
        )
    cda_status = status(cda)
    if "9F4B" in tags and not cda_uses_tag:
        if case.dynamic_data is None:
            fail("tags.9F4B needs dynamic_data (the DDOL data, or the fDDA terminal data) to be checked")
        dda = run("9F4B", icc_key, lambda key: verify_dynamic_signature(key, tags["9F4B"], case.dynamic_data))
    dda_status = status(dda)
    return {
        "suite": suite.name,
        "issuer_certificate": issuer_status,
        "issuer_public_key": to_hex(issuer_key.key) if issuer_key else None,
        "icc_certificate": icc_status,
        "icc_public_key": to_hex(icc_key.key) if icc_key else None,
        "sda": sda_status,
        "dda": dda_status,
        "cda": cda_status,
        "errors": errors,
        "warnings": warnings,
        "checked_on": today.isoformat(),
    }


def _cda_signature(case: Case) -> tuple[bytes, bool]:
    """CDA's 9F4B: the one inside cda.response_tlvs (where the card returns it), else tags.9F4B.

    Returns the signature and whether it is tags.9F4B (then there is no separate DDA to check).
    """
    if case.cda is None:
        return b"", False
    try:
        found = find(decode(case.cda.response_tlvs), "9F4B")
    except TLVError as exc:
        fail(f"cda.response_tlvs: {exc}")
    if found is not None:
        return found.value, False
    if "9F4B" not in case.tags:
        fail("cda: no 9F4B in cda.response_tlvs or tags")
    return case.tags["9F4B"], True


def _print_table(outcome: dict[str, Any]) -> None:
    console = Console()
    table = Table(title=f"ODA check ({outcome['suite']}, {outcome['checked_on']})")
    table.add_column("check")
    table.add_column("status")
    colours = {"valid": "green", "invalid": "bold red", "absent": "dim"}
    for name in ("issuer_certificate", "icc_certificate", "sda", "dda", "cda"):
        table.add_row(name.replace("_", " "), f"[{colours[outcome[name]]}]{outcome[name]}[/]")
    console.print(table)
    for line in outcome["errors"]:
        console.print(f"[red]error[/]: {line}", markup=True, highlight=False)
    for line in outcome["warnings"]:
        console.print(f"[yellow]warning[/]: {line}", markup=True, highlight=False)


@app.command("check")
def check_command(
    case_file: Annotated[Path, typer.Argument(metavar="CASE.json", help="The case to check (see above).")],
    table: Annotated[bool, typer.Option("--table", help="Print a table instead of JSON.")] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when any check present is invalid.")
    ] = False,
) -> None:
    """Check issuer/ICC certificates, SDA, DDA/fDDA and CDA from CASE.json; print the outcome as JSON.

    \b
    CASE.json (hex strings; "today" optional, default today in China):
      {"capk": {"rid": "A000000333", "index": "E0", "modulus": "...", "exponent": "03"},
               (or {"rid", "index", "sm2_public_key": "x‖y"} for SM2,
                or just {"rid", "index"} for a shipped scheme test key, e.g. A000000004/05)
       "tags": {"90": "...", "92": "...", "9F32": "03", "9F46": "...", "9F47": "03",
                "9F48": "...", "93": "...", "9F4B": "...", "5A": "..."},   (those present)
       "static_data": "records to authenticate ‖ AIP when 9F4A lists 82",
       "dynamic_data": "terminal dynamic data: DDOL data; fDDA 00: 9F37; 01: 9F37‖9F02‖5F2A‖9F69",
       "cda": {"unpredictable_number", "pdol_data", "cdol1_data", "response_tlvs"},
       "today": "2025-06-30"}
    CDA uses the 9F4B inside cda.response_tlvs (else tags.9F4B); DDA checks tags.9F4B.

    \b
    Output: {"issuer_certificate": "valid"|"invalid", "issuer_public_key": HEX|null,
      "icc_certificate", "sda", "dda", "cda": "valid"|"invalid"|"absent",
      "icc_public_key": HEX|null, "errors": [...], "warnings": [...], ...}
    An expired certificate is "invalid" with the reason in errors.

    \b
    Exit status: 0 when the check ran (whatever the statuses; --strict: 1 if any is invalid);
    2 for unusable input: unreadable or malformed CASE.json, bad hex, an unknown CAPK
    (RID/index not in the shipped table), a CA key that cannot process tag 90 (wrong size or
    suite: the wrong CAPK).

    \b
    Example:
      citycard oda example --suite gm > case.json
      citycard oda check case.json
    """
    outcome = check_case(load_case(case_file))
    if table:
        _print_table(outcome)
    else:
        print_json(outcome)
    checks = ("issuer_certificate", "icc_certificate", "sda", "dda", "cda")
    if strict and any(outcome[name] == "invalid" for name in checks):
        raise typer.Exit(1)


# --- example ---------------------------------------------------------------------------------

EXAMPLE_PAN = "6212340000000000017"
EXAMPLE_BITS = {"issuer": 1024, "icc": 768}  # under the 1152-bit test CA: both certificates need a remainder


def _keypair(suite: Suite, bits: int) -> rsa.RsaPrivateKey | bytes:
    return sm2.generate_private_key() if suite.signature == "sm2" else rsa.generate_rsa_key(bits)


def example_case(
    suite: Suite, *, fdda_version: int | None = None, today: dt.date | None = None
) -> dict[str, Any]:
    """A complete, valid case (CA → issuer → ICC, SDA, DDA or fDDA, CDA) from freshly generated test keys."""
    today = today or dt.datetime.now(CHINA_TIME).date()
    expiry = f"12{(today.year + 5) % 100:02d}"
    ca = generate_test_ca(suite)
    issuer_private, icc_private = (
        _keypair(suite, EXAMPLE_BITS["issuer"]),
        _keypair(suite, EXAMPLE_BITS["icc"]),
    )
    pan = bytes.fromhex(EXAMPLE_PAN + "F")
    records = encode(
        [
            TLV("5A", pan),
            TLV("5F24", bytes.fromhex(f"{expiry[2:]}1231")),
            TLV("5F34", b"\x01"),
            TLV("9F07", bytes.fromhex("FF00")),
            TLV("9F4A", b"\x82"),  # the AIP is signed too
        ]
    )
    static_data = records + bytes.fromhex("7C00")  # AIP: SDA, DDA, CVM, risk management, CDA supported
    issuer = issuer_certificate(
        ca.private_key,
        PublicKey.of(issuer_private, suite),
        issuer_id=issuer_identifier(EXAMPLE_PAN),
        expiry=expiry,
        serial=secrets.token_bytes(3),
        suite=suite,
    )
    icc = icc_certificate(
        issuer_private,
        PublicKey.of(icc_private, suite),
        pan=EXAMPLE_PAN,
        expiry=expiry,
        serial=secrets.token_bytes(3),
        static_data=static_data,
        suite=suite,
    )
    tag_9f37 = secrets.token_bytes(4)
    if fdda_version is None:
        dynamic_data = tag_9f37  # DDOL 9F3704
    else:
        dynamic_data = fdda_terminal_dynamic_data(
            version=fdda_version,
            tag_9f37=tag_9f37,
            **(
                {
                    "tag_9f02": bytes.fromhex("000000000200"),
                    "tag_5f2a": bytes.fromhex("0156"),
                    "tag_9f69": bytes.fromhex("01") + secrets.token_bytes(4) + bytes.fromhex("00000000"),
                }
                if fdda_version == 1
                else {}
            ),
        )
    tag_9f4b = sign_dynamic_data(
        icc_private, icc_dynamic_data(secrets.token_bytes(8)), dynamic_data, suite=suite
    )
    un = secrets.token_bytes(4)
    cdol1_data = bytes.fromhex("00000000020000000000000001560000000000015625063000") + un
    head = [TLV("9F27", b"\x40"), TLV("9F36", b"\x00\x01")]
    iad = [TLV("9F10", bytes.fromhex("07010103900000010A01000000000000000000"))]  # PBOC IAD (pboc-notes §2.4)
    cda_signature = sign_cda(
        icc_private,
        tag_9f4c=secrets.token_bytes(8),
        tag_9f27=b"\x40",
        tag_9f26=secrets.token_bytes(8),
        tag_9f37=un,
        pdol_data=b"",
        cdol1_data=cdol1_data,
        response_tlvs=encode(head + iad),
        suite=suite,
    )
    response = encode([*head, TLV("9F4B", cda_signature), *iad])
    capk: dict[str, str] = {"rid": to_hex(ca.capk.rid), "index": f"{ca.capk.index:02X}"}
    if suite.signature == "sm2":
        capk["sm2_public_key"] = to_hex(ca.capk.key)
    else:
        capk |= {"modulus": to_hex(ca.capk.key), "exponent": to_hex(ca.capk.exponent)}
    tags = {**issuer.as_tags("issuer"), **icc.as_tags("icc"), "5A": pan}
    tags["93"] = sign_static_data(issuer_private, static_data, tag_9f45=secrets.token_bytes(2), suite=suite)
    tags["9F4B"] = tag_9f4b
    return {
        "capk": capk,
        "tags": {tag: to_hex(value) for tag, value in tags.items()},
        "static_data": to_hex(static_data),
        "dynamic_data": to_hex(dynamic_data),
        "cda": {
            "unpredictable_number": to_hex(un),
            "pdol_data": "",
            "cdol1_data": to_hex(cdol1_data),
            "response_tlvs": to_hex(response),
        },
        "today": today.isoformat(),
    }


@app.command("example")
def example_command(
    suite_name: Annotated[str, typer.Option("--suite", help="intl (RSA/SHA-1) or gm (SM2/SM3).")] = "intl",
    fdda: Annotated[
        str | None,
        typer.Option("--fdda", help="Make 9F4B an fDDA signature of version 00 or 01 (default: DDA)."),
    ] = None,
) -> None:
    """Print a valid CASE.json built from a freshly generated test CA (never a scheme key).

    \b
    Example:
      citycard oda example --suite intl > case.json && citycard oda check case.json
      citycard oda example --suite gm --fdda 01 > case.json
    """
    suites = {"intl": INTL, "gm": GM}
    if suite_name.lower() not in suites:
        fail(f"--suite: expected intl or gm, got {suite_name!r}")
    if fdda is not None and fdda not in ("00", "01"):
        fail(f"--fdda: expected 00 or 01, got {fdda!r}")
    print_json(example_case(suites[suite_name.lower()], fdda_version=None if fdda is None else int(fdda)))
