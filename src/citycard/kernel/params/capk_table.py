"""The terminal's CA public key (CAPK) table and certificate revocation list (EMV 4.3 Book 2
§5.3, §6.3 and §11.2.2; pboc-notes §2.2 and §4.5).

One table = the shipped scheme test keys (:func:`citycard.crypto.capk.scheme_test_capks`, read
from ``capk_test_keys.json``, not copied) + the entries of ``citycard/data/terminal/capks.toml``
(UnionPay test keys) + optionally the project's own test CAs from an HSM (:meth:`CapkTable.with_hsm`).
Every checksum (DF03) is verified as a key is loaded; a (RID, index) may appear once.

The revocation list holds (RID, CA index, issuer certificate serial) triples; it is the
``revocation_list`` that :func:`citycard.crypto.oda.recover_issuer_public_key` takes.

>>> import datetime as dt
>>> table = CapkTable.load()
>>> table.lookup(bytes.fromhex("A000000333"), 0x08, today=dt.date(2026, 1, 1)).suite.name
'INTL'
>>> table.lookup(bytes.fromhex("A000000333"), 0x08, today=dt.date(2031, 1, 1))
Traceback (most recent call last):
...
citycard.kernel.params.capk_table.CapkExpired: CAPK A000000333/08 expired on 2030-12-31 (today is 2031-01-01)
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from citycard.crypto.capk import (
    CAPK_TABLE_MAX,
    RID_BYTES,
    Capk,
    CapkError,
    scheme_test_capks,
)
from citycard.crypto.suite import GM, INTL
from citycard.kernel.params.tomlfile import parse_toml, read_table

DEFAULT_PATH = "data/terminal/capks.toml"
SERIAL_BYTES = 3  # issuer certificate serial number (Book 2 Table 13)
REVOCATION_LIST_MAX = 1024  # Book 2 §5.3 asks for at least 30 per RID; a thousand is plenty
_ALGORITHMS = {"rsa": INTL, "sm2": GM}
_CAPK_KEYS = frozenset({"label", "rid", "index", "algorithm", "key", "exponent", "checksum", "expiry"})
_CAPK_REQUIRED = ("rid", "index", "algorithm", "key", "checksum")
_REVOKED_KEYS = frozenset({"rid", "index", "serial"})

RevokedCertificate = tuple[bytes, int, bytes]  # (RID, CA public key index, certificate serial)


class CapkTableError(ValueError):
    """A malformed CAPK table, or a lookup that cannot be answered; the message says which key."""


class CapkNotFound(CapkTableError):  # noqa: N818 (name agreed with the kernel)
    """No CA public key for this RID and index in the terminal's table."""


class CapkExpired(CapkTableError):  # noqa: N818 (name agreed with the kernel)
    """The CA public key is past its expiry date (DF05)."""


class CapkSource(Protocol):
    """Anything that lists CAPKs, such as :class:`citycard.hsm.SoftHSM` (the kernel does not import
    the HSM package: DESIGN.md §2)."""

    def list_capks(self) -> list[Capk]: ...


def _name(rid: bytes, index: int) -> str:
    return f"{rid.hex().upper()}/{index:02X}"


class CapkTable:
    """CA public keys by (RID, index), plus the revocation list. Immutable; ``with_*`` build new ones."""

    def __init__(self, capks: Iterable[Capk] = (), revoked: Iterable[RevokedCertificate] = ()) -> None:
        table: dict[tuple[bytes, int], Capk] = {}
        for capk in capks:
            key = (capk.rid, capk.index)
            known = table.get(key)
            if known is not None and known != capk:
                raise CapkTableError(
                    f"CAPK {_name(*key)} is listed twice with different keys "
                    f"(checksums {known.checksum.hex().upper()} and {capk.checksum.hex().upper()})"
                )
            table[key] = capk
        if len(table) > CAPK_TABLE_MAX:
            raise CapkTableError(f"CAPK table has {len(table)} keys, at most {CAPK_TABLE_MAX}")
        revocation_list = frozenset(revoked)
        for entry in revocation_list:
            _check_revoked(entry)
        if len(revocation_list) > REVOCATION_LIST_MAX:
            raise CapkTableError(
                f"revocation list has {len(revocation_list)} entries, at most {REVOCATION_LIST_MAX}"
            )
        self._capks = table
        self._revoked = revocation_list

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> CapkTable:
        """Read ``path`` (default: the shipped ``citycard/data/terminal/capks.toml``)."""
        text, source = read_table(path, default=DEFAULT_PATH, what="CAPK table", error=CapkTableError)
        return cls.from_toml(text, source=source)

    @classmethod
    def from_toml(cls, text: str, *, source: str = "CAPK table") -> CapkTable:
        document = parse_toml(text, source=source, error=CapkTableError)
        unknown = sorted(set(document) - {"include_scheme_test_keys", "capk", "revoked"})
        if unknown:
            raise CapkTableError(
                f"{source}: unknown top-level key {unknown[0]!r} "
                "(expected include_scheme_test_keys, [[capk]] and [[revoked]])"
            )
        include = document.get("include_scheme_test_keys", False)
        if not isinstance(include, bool):
            raise CapkTableError(f"{source}: include_scheme_test_keys must be true or false")
        capks: list[Capk] = list(scheme_test_capks().values()) if include else []
        seen = {(c.rid, c.index) for c in capks}
        for number, record in enumerate(_array_of_tables(document, "capk", source), 1):
            capk = _capk_from_toml(record, f"{source}: capk #{number}")
            if (capk.rid, capk.index) in seen:
                name = _name(capk.rid, capk.index)
                shipped = include and (capk.rid, capk.index) in scheme_test_capks()
                raise CapkTableError(
                    f"{source}: capk #{number} ({name}): CAPK {name} is already in the table"
                    + (" (a shipped scheme test key)" if shipped else "")
                )
            seen.add((capk.rid, capk.index))
            capks.append(capk)
        revoked = [
            _revoked_from_toml(record, f"{source}: revoked #{number}")
            for number, record in enumerate(_array_of_tables(document, "revoked", source), 1)
        ]
        try:
            return cls(capks, revoked)
        except CapkTableError as exc:
            raise CapkTableError(f"{source}: {exc}") from None

    def with_capks(self, capks: Iterable[Capk]) -> CapkTable:
        """This table plus ``capks`` (the same key twice is fine; a different key is an error)."""
        return CapkTable([*self._capks.values(), *capks], self._revoked)

    def with_hsm(self, hsm: CapkSource) -> CapkTable:
        """This table plus the HSM's CAPKs (``hsm.list_capks()``: the test CAs that
        personalisation created, A000000333 E0 RSA / E1 SM2)."""
        try:
            return self.with_capks(hsm.list_capks())
        except CapkTableError as exc:
            raise CapkTableError(f"adding the HSM's CAPKs: {exc}") from None

    def with_revoked(self, revoked: Iterable[RevokedCertificate]) -> CapkTable:
        """This table with more revoked certificates."""
        return CapkTable(self._capks.values(), [*self._revoked, *revoked])

    # --- queries ----------------------------------------------------------------------------

    def lookup(self, rid: bytes, index: int, *, today: dt.date) -> Capk:
        """The CA public key for RID (9F06, from the AID) and index (8F), valid on ``today``
        (the terminal's local date, 9A). Book 2 §5.2/§6.2: a missing key means ODA fails."""
        if len(rid) != RID_BYTES:
            raise CapkTableError(f"RID (9F06) must be {RID_BYTES} bytes, got {len(rid)}")
        if not 0 <= index <= 0xFF:
            raise CapkTableError(f"CA public key index (8F) must be one byte, got {index}")
        capk = self._capks.get((rid, index))
        if capk is None:
            indexes = sorted(i for r, i in self._capks if r == rid)
            hint = (
                f"known indexes for this RID: {', '.join(f'{i:02X}' for i in indexes)}"
                if indexes
                else "no key for this RID in the table"
            )
            raise CapkNotFound(f"no CAPK {_name(rid, index)} in the terminal's table: {hint}")
        if capk.is_expired(today):
            raise CapkExpired(
                f"CAPK {_name(rid, index)} expired on {capk.expiry.isoformat()} (today is {today.isoformat()})"
            )
        return capk

    def get(self, rid: bytes, index: int) -> Capk | None:
        """The key whatever its expiry, or None."""
        return self._capks.get((rid, index))

    def is_revoked(self, rid: bytes, index: int, serial: bytes) -> bool:
        """Is the issuer certificate with this serial, signed by CA key (RID, index), revoked?"""
        return (rid, index, serial) in self._revoked

    @property
    def revocation_list(self) -> frozenset[RevokedCertificate]:
        """The (RID, index, serial) triples, as ``recover_issuer_public_key`` takes them."""
        return self._revoked

    def as_dict(self) -> Mapping[tuple[bytes, int], Capk]:
        """A read-only view keyed by (RID, index), the shape ``citycard.crypto.capk.find_capk`` takes."""
        return MappingProxyType(self._capks)

    def __iter__(self) -> Iterator[Capk]:
        return iter(sorted(self._capks.values(), key=lambda c: (c.rid, c.index)))

    def __len__(self) -> int:
        return len(self._capks)

    def __contains__(self, rid_and_index: object) -> bool:
        return rid_and_index in self._capks

    def __repr__(self) -> str:
        return f"CapkTable(keys={len(self._capks)}, revoked={len(self._revoked)})"


def _array_of_tables(document: Mapping[str, Any], name: str, source: str) -> list[dict[str, Any]]:
    rows = document.get(name, [])
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise CapkTableError(f"{source}: {name!r} must be an array of tables [[{name}]]")
    return rows


def _hex(record: Mapping[str, Any], name: str, where: str) -> bytes:
    value = record[name]
    if not isinstance(value, str):
        raise CapkTableError(f"{where}: {name} must be a hex string, got {type(value).__name__}")
    try:
        return bytes.fromhex("".join(value.split()))
    except ValueError:
        raise CapkTableError(f"{where}: {name} is not hex") from None


def _index(record: Mapping[str, Any], where: str) -> int:
    value = record["index"]
    if not isinstance(value, str) or len(value) != 2:
        raise CapkTableError(f"{where}: index (9F22) must be 2 hex digits, got {value!r}")
    try:
        return int(value, 16)
    except ValueError:
        raise CapkTableError(f"{where}: index (9F22) must be 2 hex digits, got {value!r}") from None


def _check_keys(
    record: Mapping[str, Any], allowed: frozenset[str], required: Iterable[str], where: str
) -> None:
    unknown = sorted(set(record) - allowed)
    if unknown:
        raise CapkTableError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    missing = [name for name in required if name not in record]
    if missing:
        raise CapkTableError(f"{where}: missing key {missing[0]!r}")


def _capk_from_toml(record: Mapping[str, Any], where: str) -> Capk:
    _check_keys(record, _CAPK_KEYS, _CAPK_REQUIRED, where)
    rid, index = _hex(record, "rid", where), _index(record, where)
    where = f"{where} ({rid.hex().upper()}/{index:02X})"
    algorithm = record["algorithm"]
    if algorithm not in _ALGORITHMS:
        raise CapkTableError(f"{where}: algorithm must be 'rsa' or 'sm2', got {algorithm!r}")
    expiry = record.get("expiry")
    if expiry is not None and (not isinstance(expiry, dt.date) or isinstance(expiry, dt.datetime)):
        raise CapkTableError(f"{where}: expiry (DF05) must be a TOML date such as 2030-12-31, got {expiry!r}")
    exponent = _hex(record, "exponent", where) if "exponent" in record else b""
    try:
        return Capk.from_record(
            rid=rid,
            index=index,
            suite=_ALGORITHMS[algorithm],
            key=_hex(record, "key", where),
            exponent=exponent,
            checksum=_hex(record, "checksum", where),
            expiry=expiry,
        )
    except CapkError as exc:
        raise CapkTableError(f"{where}: {exc}") from None


def _revoked_from_toml(record: Mapping[str, Any], where: str) -> RevokedCertificate:
    _check_keys(record, _REVOKED_KEYS, ("rid", "index", "serial"), where)
    entry = (_hex(record, "rid", where), _index(record, where), _hex(record, "serial", where))
    try:
        _check_revoked(entry)
    except CapkTableError as exc:
        raise CapkTableError(f"{where}: {exc}") from None
    return entry


def _check_revoked(entry: RevokedCertificate) -> None:
    rid, index, serial = entry
    if not isinstance(rid, bytes) or len(rid) != RID_BYTES:
        raise CapkTableError(f"revoked certificate: RID must be {RID_BYTES} bytes, got {rid!r}")
    if not isinstance(index, int) or not 0 <= index <= 0xFF:
        raise CapkTableError(f"revoked certificate: CA index must be one byte, got {index!r}")
    if not isinstance(serial, bytes) or len(serial) != SERIAL_BYTES:
        raise CapkTableError(
            f"revoked certificate {_name(rid, index)}: serial must be {SERIAL_BYTES} bytes, "
            f"got {len(serial) if isinstance(serial, bytes) else type(serial).__name__}"
        )


__all__ = [
    "REVOCATION_LIST_MAX",
    "CapkExpired",
    "CapkNotFound",
    "CapkSource",
    "CapkTable",
    "CapkTableError",
    "RevokedCertificate",
]
