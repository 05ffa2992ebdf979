"""Parameter download for a validator: fares, blacklist deltas and CAPKs, versions reported back.

:func:`download_parameters` asks the platform what is newer than what the validator holds
(``GET /v1/terminals/{id}/parameters?fares=&blacklist=&capks=&terminal_class=``), checks and
applies each part, then reports the versions it now holds (``POST /v1/terminals/{id}/versions``;
the platform's ``/v1/blacklist-stale`` and ``GET /v1/terminals/{id}/versions`` then show whether the
terminal is stale):

- **fares**: the TOML text, parsed with :func:`citycard.sectors.transit.parse_table` (a table
  without the validator's line is refused and the old one kept);
- **blacklist**: a delta (CCXD, checked against the list held and the platform's SHA-256) or, when
  the validator holds none or the delta does not apply, the full exception file (its SHA-256 checked);
- **CAPKs**: each key's checksum recomputed (SHA-1 over RID‖index‖key‖exponent), added to the
  shipped CAPK table.

Each part is applied on its own: a bad part raises :class:`ParameterError` naming it, and the parts
applied before it stay (they were valid); nothing is reported then, so the platform still sees the
old versions.

With ``store_dir`` the applied parts are also kept on the device (``fares.toml``, ``blacklist.ccxf``,
``capks.json``, ``versions.json``; each written atomically with fsync), and
:func:`load_parameters` puts them back into a validator at start-up, so a validator restarted
while offline keeps its newest fares, list and CAPKs.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from citycard.crypto.capk import Capk, CapkError, capk_checksum
from citycard.crypto.suite import GM, INTL
from citycard.kernel.params import CapkTable, ExceptionFile, ExceptionFileError
from citycard.sectors.transit import FareTableError, parse_table
from citycard.terminals.validator import Validator, ValidatorError

TIMEOUT_S = 60.0
CAPKS_MAX = 64  # CA keys in one download
SUITES_BY_NAME = {GM.name: GM, INTL.name: INTL}


class ParameterError(Exception):
    """A parameter download that could not be used; the message names the part and why."""


@dataclass(frozen=True)
class ParametersReport:
    """What a download changed (``changed``: the parts applied) and the versions now held; ``status``
    is the platform's answer to the version report (held vs latest, ``stale``)."""

    versions: dict[str, int]
    changed: tuple[str, ...]
    status: dict[str, Any] = field(default_factory=dict)


def _capks(keys: list[dict[str, Any]]) -> list[Capk]:
    if len(keys) > CAPKS_MAX:
        raise ParameterError(f"capks: {len(keys)} keys in one download; limit {CAPKS_MAX}")
    out = []
    for number, item in enumerate(keys, 1):
        try:
            suite = SUITES_BY_NAME[item["suite"]]
            rid, key = bytes.fromhex(item["rid"]), bytes.fromhex(item["key"])
            exponent = bytes.fromhex(item["exponent"])
            index = int(item["index"])
            expiry = dt.date.fromisoformat(item["expiry"]) if item.get("expiry") else None
            if capk_checksum(rid, index, key, exponent).hex().upper() != str(item["checksum"]).upper():
                raise ParameterError(f"capks #{number}: checksum does not match the key")
            out.append(Capk(rid, index, suite, key, exponent, expiry))
        except (KeyError, ValueError, TypeError, CapkError) as exc:
            raise ParameterError(f"capks #{number}: {exc}") from None
    return out


def _blacklist(validator: Validator, part: dict[str, Any]) -> bool:
    """Apply the blacklist part; True when the list changed. Raises ExceptionFileError when a delta
    does not apply (the caller fetches the full list)."""
    if part.get("delta"):
        validator.apply_blacklist(base64.b64decode(part["delta"], validate=True), delta=True)
        return True
    if part.get("full"):
        data = base64.b64decode(part["full"], validate=True)
        listing = ExceptionFile.from_bytes(data, full_check=True)
        if part.get("sha256") and listing.body_sha256.hex().upper() != str(part["sha256"]).upper():
            raise ParameterError("blacklist: the full list's SHA-256 differs from the platform's")
        validator.apply_blacklist(listing)
        return True
    return False


def download_parameters(
    validator: Validator,
    *,
    base_url: str,
    api_key: str,
    client: httpx.Client | None = None,
    report: bool = True,
    capk_base: CapkTable | None = None,
    store_dir: str | os.PathLike[str] | None = None,
) -> ParametersReport:
    """Download and apply what is newer (module note); report the versions held when ``report``.

    ``capk_base``: the table downloaded CAPKs are added to (default: the shipped one).
    Raises :class:`ParameterError` (a part unusable) or ``httpx.HTTPError`` (platform unreachable).
    """
    own = client is None
    http = client or httpx.Client(base_url=base_url, timeout=TIMEOUT_S)
    headers = {"X-API-Key": api_key}
    tid = validator.config.terminal_id
    try:
        held = validator.versions
        answer = _get(http, tid, headers, held, validator.config.terminal_class)
        changed: list[str] = []
        fares = answer["fares"]
        if fares.get("text"):
            try:
                validator.apply_fares(parse_table(fares["text"]))
            except (FareTableError, ValidatorError) as exc:
                raise ParameterError(
                    f"fares {fares.get('name')} version {fares.get('version')}: {exc}"
                ) from None
            changed.append("fares")
            if store_dir is not None:
                _write(Path(store_dir) / "fares.toml", fares["text"].encode("utf-8"))
        validator.fares_name = str(fares["name"])
        try:
            list_changed = _blacklist(validator, answer["blacklist"])
        except ExceptionFileError:  # the delta does not fit the list held: take the full list
            full = _get(http, tid, headers, {**held, "blacklist": 0}, validator.config.terminal_class)
            try:
                list_changed = _blacklist(validator, full["blacklist"])
            except (ExceptionFileError, ValueError) as exc:
                raise ParameterError(f"blacklist: {exc}") from None
        except ValueError as exc:
            raise ParameterError(f"blacklist: {exc}") from None
        if list_changed:
            changed.append("blacklist")
            exceptions = validator.terminal.exceptions
            if store_dir is not None and exceptions is not None:
                _write(Path(store_dir) / "blacklist.ccxf", exceptions.to_bytes())
        capks = answer["capks"]
        if capks.get("keys") is not None:
            table = (capk_base or CapkTable.load()).with_capks(_capks(capks["keys"]))
            validator.apply_capks(table, version=int(capks["version"]))
            changed.append("capks")
            if store_dir is not None:
                _write(Path(store_dir) / "capks.json", json.dumps(capks["keys"]).encode("utf-8"))
        if store_dir is not None:
            _write(Path(store_dir) / "versions.json",
                   json.dumps({**validator.versions, "fares_name": validator.fares_name}).encode("utf-8"))  # fmt: skip
        status: dict[str, Any] = {}
        if report:
            status = report_versions(validator, http, headers)
        return ParametersReport(validator.versions, tuple(changed), status)
    finally:
        if own:
            http.close()


def _get(
    http: httpx.Client, tid: str, headers: dict[str, str], held: dict[str, int], terminal_class: str
) -> Any:
    answer = http.get(
        f"/v1/terminals/{tid}/parameters",
        params={"fares": held["fares"], "blacklist": held["blacklist"], "capks": held["capks"],
                "terminal_class": terminal_class},
        headers=headers,
    )  # fmt: skip
    if answer.status_code != 200:
        raise ParameterError(f"parameters: HTTP {answer.status_code} {answer.text[:200]}")
    return answer.json()


def report_versions(validator: Validator, http: httpx.Client, headers: dict[str, str]) -> dict[str, Any]:
    """``POST /v1/terminals/{id}/versions`` with what the validator holds; the platform's view back."""
    versions = validator.versions
    body = {
        "terminal_class": validator.config.terminal_class,
        "fares": {"name": validator.fares_name, "version": versions["fares"]},
        "blacklist": versions["blacklist"],
        "capks": versions["capks"],
    }
    key = f"{validator.config.terminal_id}:versions:{secrets.token_hex(8)}"
    answer = http.post(
        f"/v1/terminals/{validator.config.terminal_id}/versions", json=body,
        headers={**headers, "Idempotency-Key": key[-128:]},
    )  # fmt: skip
    if answer.status_code != 200:
        raise ParameterError(f"version report: HTTP {answer.status_code} {answer.text[:200]}")
    return answer.json()


def _write(path: Path, data: bytes) -> None:
    """Atomically: a temporary file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_parameters(
    validator: Validator, store_dir: str | os.PathLike[str], *, capk_base: CapkTable | None = None
) -> dict[str, int]:
    """Apply what a previous :func:`download_parameters` kept in ``store_dir`` (missing parts are
    skipped); returns the versions now held. A damaged part raises :class:`ParameterError`."""
    directory = Path(store_dir)
    try:
        versions = json.loads((directory / "versions.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return validator.versions
    except ValueError as exc:
        raise ParameterError(f"{directory / 'versions.json'}: {exc}") from None
    try:
        if (directory / "fares.toml").is_file():
            validator.apply_fares(parse_table((directory / "fares.toml").read_text(encoding="utf-8")))
        if (directory / "blacklist.ccxf").is_file():
            validator.apply_blacklist(ExceptionFile.load(directory / "blacklist.ccxf", full_check=True))
        if (directory / "capks.json").is_file():
            keys = json.loads((directory / "capks.json").read_text(encoding="utf-8"))
            validator.apply_capks(
                (capk_base or CapkTable.load()).with_capks(_capks(keys)), version=int(versions["capks"])
            )
    except (OSError, ValueError, KeyError, ValidatorError) as exc:
        raise ParameterError(f"{directory}: {exc}") from None
    validator.fares_name = str(versions.get("fares_name", validator.fares_name))
    return validator.versions
