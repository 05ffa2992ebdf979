"""PBOC Part 14 extended-application files (分段扣费): declaration, opening, reading, cached update.

Sources: JR/T 0025.14 as digested in pboc-notes §3 and §7 (DGIs A001/8020/9020, commands 80B4,
80DE/84DE, 04E2) and the Xi'an metro reader (pboc-notes C7b): GPO with DF60 = 01, then
``84 DE 00 A8 44`` ‖ 64-byte record ‖ MAC with IV ``000000000000 ‖ ATC`` from that GPO.

Files (DGI A001, 7 bytes each): SFI ‖ type (01 variable-record keyed by a 2-byte record ID, 02
cyclic) ‖ read right ‖ write right ‖ max record length ‖ size (variable: total bytes, 0000 no
limit; cyclic: record count ‖ record size). DGI 8020: one 16-byte opening protection key per file
in A001 order; DGI 9020: their 3-byte KCVs.

Choices where the notes are thin (all UNCERTAIN):

* Rights: 00 = free (plain READ CAPP DATA ``80 B4`` / UPDATE CAPP DATA CACHE ``80 DE``); any other
  value = the read is refused (6982) and the write needs ``84 DE`` with a MAC. ``84 DE`` is always
  accepted with a good MAC.
* APPEND RECORD ``04 E2 00 (SFI<<3) Lc``: data = E(K_open)[record key] (16 bytes, the suite cipher in
  ECB) ‖ record ‖ MAC; K_open is the file's 8020 key and also keys the MAC. The record key is what
  later ``84 DE`` MACs use for that record (the operator's PSAM derives it). Duplicate ID → 6A80,
  file full → 6A84. Needs an ATC, so it follows GPO.
* MAC of 04E2/84DE: pad method 2 over CLA INS P1 P2 Lc ‖ data, CBC with IV = zeros ‖ ATC (8 bytes
  for 3DES, 16 for SM4) — the suite's block MAC (ISO 9797-1 alg. 3 / SM4 CBC-MAC) — leftmost 4 bytes.
  KCVs in 9020 are accepted in either suite (3DES or SM4 of a zero block).
* Cyclic files are written by UPDATE CAPP DATA CACHE (the record becomes record 1; MAC key = the
  file's 8020 key) and read by READ RECORD.
* **Commit**: UPDATE CAPP DATA CACHE is accepted only in a qPBOC transaction whose GPO carried
  DF60 = 01 and approved offline (TC). That GPO saved the ATC but left the purchase pending; the
  first cache update commits the fare debit, its log record and the trip record in one
  ``ctx.save()``. A transaction aborted before it (deselection, new SELECT, tear) commits neither;
  a later cache update in the same transaction commits its record alone. A terminal must keep the
  GPO's TC only when the cache update answered 9000.
* **Issuer update** (application loading, docs/applications.md; a project choice, UNCERTAIN):
  outside such a purchase, after any GPO (an ATC), ``84 DE`` whose MAC verifies under the file's
  **opening key** (8020: the issuer's, not a sector's record key) rewrites an opened variable
  record without any purchase — how the platform marks a sector application's record invalid
  (unload) or loads it again. Every other ``80/84 DE`` outside a purchase is still refused (6985).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from citycard.card import sw
from citycard.card.apdu import Command, Response
from citycard.card.application import CardContext, Sealer
from citycard.card.pboc.qpboc import commit
from citycard.card.sw import CardError
from citycard.crypto.blockcipher import xor
from citycard.crypto.keys import key_check_value
from citycard.crypto.mac import pad_method_2
from citycard.crypto.suite import GM, INTL, Suite

if TYPE_CHECKING:
    from citycard.card.pboc.application import PbocApplication

VARIABLE, CYCLIC = 0x01, 0x02
RIGHT_FREE = 0x00
DECLARATION_BYTES = 7
KEY_BYTES = 16
KCV_BYTES = 3
MAC_BYTES = 4
RECORD_ID_BYTES = 2
FILES_MAX = 16
RECORDS_MAX = 64  # opened records in one variable file
COMMAND_INCOMPATIBLE = 0x6981  # command incompatible with the file structure


def capp_mac(key: bytes, *, header: bytes, data: bytes, tag_9f36: bytes, suite: Suite) -> bytes:
    """MAC of a Part 14 command: CBC with IV zeros ‖ ATC over header ‖ data (module note)."""
    if len(header) != 5 or len(tag_9f36) != 2:
        raise ValueError("Part 14 MAC: header is CLA INS P1 P2 Lc and the ATC 2 bytes")
    padded = pad_method_2(header + data, suite.block_bytes)
    iv = bytes(suite.block_bytes - 2) + tag_9f36
    first = xor(padded[: suite.block_bytes], iv)
    return suite.block_mac(key, first + padded[suite.block_bytes :])[:MAC_BYTES]


@dataclass
class CappFile:
    sfi: int
    kind: int
    read_right: int
    write_right: int
    record_bytes_max: int
    size: int
    key: bytes | None = None  # 8020 opening protection key
    records: dict[bytes, bytes] = field(default_factory=dict)  # variable: record ID → record
    record_keys: dict[bytes, bytes] = field(default_factory=dict)  # record ID → key from APPEND RECORD
    cyclic: list[bytes] = field(default_factory=list)  # newest first

    @property
    def cyclic_count(self) -> int:
        return self.size >> 8

    @property
    def cyclic_record_bytes(self) -> int:
        return self.size & 0xFF

    def declaration(self) -> bytes:
        return bytes([self.sfi, self.kind, self.read_right, self.write_right, self.record_bytes_max])

    def to_json(self, sealer: Sealer) -> dict[str, Any]:
        sealed = {}
        if self.key is not None:
            sealed["key"] = sealer.seal(f"capp/{self.sfi:02X}/key", self.key)
        for ident, key in self.record_keys.items():
            sealed[ident.hex().upper()] = sealer.seal(f"capp/{self.sfi:02X}/{ident.hex().upper()}", key)
        return {
            "declaration": (self.declaration() + self.size.to_bytes(2, "big")).hex().upper(),
            "records": [value.hex().upper() for value in self.records.values()],
            "cyclic": [value.hex().upper() for value in self.cyclic],
            "sealed": sealed,
        }

    @classmethod
    def from_json(cls, image: dict[str, Any], sealer: Sealer) -> CappFile:
        file = _declared(bytes.fromhex(image["declaration"]))
        file.records = {bytes.fromhex(r)[:RECORD_ID_BYTES]: bytes.fromhex(r) for r in image["records"]}
        file.cyclic = [bytes.fromhex(r) for r in image["cyclic"]]
        for name, sealed in image["sealed"].items():
            label = f"capp/{file.sfi:02X}/{name}"
            if name == "key":
                file.key = sealer.open(label, sealed)
            else:
                file.record_keys[bytes.fromhex(name)] = sealer.open(label, sealed)
        return file


def _declared(entry: bytes) -> CappFile:
    sfi, kind, read, write, max_len = entry[:5]
    size = int.from_bytes(entry[5:7], "big")
    if not 1 <= sfi <= 30 or kind not in (VARIABLE, CYCLIC) or max_len < RECORD_ID_BYTES:
        raise CardError(
            sw.WRONG_DATA, f"DGI A001 entry {entry.hex().upper()}: SFI 1–30, type 01/02, length ≥ 2"
        )
    if kind == CYCLIC and (not size >> 8 or not size & 0xFF):
        raise CardError(
            sw.WRONG_DATA, f"DGI A001 entry {entry.hex().upper()}: cyclic size is count ‖ record size"
        )
    return CappFile(sfi, kind, read, write, max_len, size)


@dataclass
class CappFiles:
    files: dict[int, CappFile] = field(default_factory=dict)  # in A001 order
    kcvs: bytes | None = None
    pending_keys: bytes | None = None  # 8020 arriving before A001

    def has_files(self) -> bool:
        return bool(self.files)

    def store_dgi(self, dgi: int, data: bytes) -> None:
        if dgi == 0xA001:
            if not data or len(data) % DECLARATION_BYTES or len(data) // DECLARATION_BYTES > FILES_MAX:
                raise CardError(
                    sw.WRONG_DATA, f"DGI A001: 1–{FILES_MAX} entries of 7 bytes, got {len(data)} bytes"
                )
            files = [
                _declared(data[i : i + DECLARATION_BYTES]) for i in range(0, len(data), DECLARATION_BYTES)
            ]
            if len({f.sfi for f in files}) != len(files):
                raise CardError(sw.WRONG_DATA, "DGI A001 declares one SFI twice")
            self.files = {f.sfi: f for f in files}
        elif dgi == 0x8020:
            if not data or len(data) % KEY_BYTES:
                raise CardError(sw.WRONG_DATA, f"DGI 8020: 16-byte keys, got {len(data)} bytes")
            self.pending_keys = data
        else:
            if not data or len(data) % KCV_BYTES:
                raise CardError(sw.WRONG_DATA, f"DGI 9020: 3-byte KCVs, got {len(data)} bytes")
            self.kcvs = data
        self._bind_keys()

    def _bind_keys(self) -> None:
        keys = self.pending_keys
        if keys is None or not self.files:
            return
        if len(keys) != KEY_BYTES * len(self.files):
            raise CardError(
                sw.WRONG_DATA, f"DGI 8020 holds {len(keys) // KEY_BYTES} keys for {len(self.files)} files"
            )
        for index, file in enumerate(self.files.values()):
            key = keys[index * KEY_BYTES : (index + 1) * KEY_BYTES]
            if self.kcvs is not None:
                kcv = self.kcvs[index * KCV_BYTES : (index + 1) * KCV_BYTES]
                if not any(hmac.compare_digest(key_check_value(key, suite=s), kcv) for s in (INTL, GM)):
                    raise CardError(
                        sw.WRONG_DATA, f"DGI 9020: KCV of the SFI {file.sfi:02X} opening key does not match"
                    )
            file.key = key
        self.pending_keys = None if self.kcvs is not None else keys

    def problems(self) -> list[str]:
        if not self.files:
            return ["Part 14 keys (8020/9020) without file declarations (A001)"] if self.pending_keys else []
        out = []
        if any(f.key is None for f in self.files.values()):
            out.append("Part 14 files without opening keys (8020)")
        if self.kcvs is None:
            out.append("Part 14 opening keys without KCVs (9020)")
        elif len(self.kcvs) != KCV_BYTES * len(self.files):
            out.append("DGI 9020 must hold one KCV per A001 file")
        return out

    def to_json(self, sealer: Sealer) -> dict[str, Any]:
        return {
            "files": [f.to_json(sealer) for f in self.files.values()],
            "kcvs": (self.kcvs or b"").hex().upper(),
        }

    @classmethod
    def from_json(cls, image: dict[str, Any], sealer: Sealer) -> CappFiles:
        files = [CappFile.from_json(f, sealer) for f in image["files"]]
        return cls({f.sfi: f for f in files}, bytes.fromhex(image["kcvs"]) or None)


# --- commands --------------------------------------------------------------------------------


def _file(app: PbocApplication, command: Command) -> CappFile:
    if command.p1 or command.p2 & 0x07:
        raise CardError(sw.INCORRECT_P1_P2, "Part 14 commands take P1 00 and P2 = SFI << 3")
    file = app.capp.files.get(command.p2 >> 3)
    if file is None:
        raise CardError(sw.FILE_NOT_FOUND, f"no extended-application file with SFI {command.p2 >> 3:02X}")
    return file


def read_capp_data(app: PbocApplication, command: Command, ctx: CardContext) -> Response:
    """80 B4 00 (SFI<<3) 02 record-ID: one record of a variable-record file."""
    file = _file(app, command)
    if file.kind != VARIABLE:
        raise CardError(COMMAND_INCOMPATIBLE, "READ CAPP DATA reads variable-record files; use READ RECORD")
    if file.read_right != RIGHT_FREE:
        raise CardError(sw.SECURITY_STATUS_NOT_SATISFIED, f"SFI {file.sfi:02X} is not freely readable")
    if len(command.data) != RECORD_ID_BYTES:
        raise CardError(
            sw.WRONG_LENGTH, f"READ CAPP DATA data is the 2-byte record ID, got {len(command.data)}"
        )
    record = file.records.get(command.data)
    if record is None:
        raise CardError(sw.RECORD_NOT_FOUND, f"record {command.data.hex().upper()} is not opened")
    return Response(record)


def _check_mac(key: bytes, command: Command, body: bytes, mac: bytes, app: PbocApplication) -> None:
    txn = app.txn
    if txn.suite is None:
        raise AssertionError("a Part 14 MAC before GPO")
    header = command.header + bytes([len(command.data)])
    expected = capp_mac(key, header=header, data=body, tag_9f36=txn.atc, suite=txn.suite)
    if not hmac.compare_digest(expected, mac):
        raise CardError(sw.SM_DATA_OBJECTS_INCORRECT, "Part 14 MAC does not verify")


def append_record(app: PbocApplication, command: Command, ctx: CardContext) -> Response:
    """04 E2 00 (SFI<<3) Lc E(K_open)[record key] ‖ record ‖ MAC: open one record (module note)."""
    if not command.secure_messaging:
        raise CardError(sw.SECURITY_STATUS_NOT_SATISFIED, "APPEND RECORD needs secure messaging (CLA 04)")
    file = _file(app, command)
    if file.kind != VARIABLE:
        raise CardError(COMMAND_INCOMPATIBLE, "APPEND RECORD opens records of variable-record files")
    txn = app.txn
    if txn.suite is None or not txn.atc or file.key is None:
        raise CardError(
            sw.CONDITIONS_NOT_SATISFIED, "APPEND RECORD needs a GPO (ATC) and the file's opening key"
        )
    data = command.data
    record = data[KEY_BYTES:-MAC_BYTES]
    if not RECORD_ID_BYTES <= len(record) <= file.record_bytes_max:
        raise CardError(sw.WRONG_LENGTH, f"record must be 2–{file.record_bytes_max} bytes, got {len(record)}")
    _check_mac(file.key, command, data[:-MAC_BYTES], data[-MAC_BYTES:], app)
    ident = record[:RECORD_ID_BYTES]
    if ident in file.records:
        raise CardError(sw.WRONG_DATA, f"record {ident.hex().upper()} is already opened")
    used = sum(len(r) for r in file.records.values())
    if len(file.records) >= RECORDS_MAX or (file.size and used + len(record) > file.size):
        raise CardError(sw.NOT_ENOUGH_MEMORY, f"SFI {file.sfi:02X} is full")
    file.record_keys[ident] = txn.suite.ecb_decrypt(file.key, data[:KEY_BYTES])
    file.records[ident] = record
    ctx.save()
    return Response()


def update_capp_data_cache(app: PbocApplication, command: Command, ctx: CardContext) -> Response:
    """80/84 DE 00 (SFI<<3) Lc record [‖ MAC]: commit the record with the pending purchase (module note)."""
    file = _file(app, command)
    txn = app.txn
    if not (txn.capp and txn.capp_approved):
        return _issuer_update(app, command, ctx, file)
    data = command.data
    record = data[:-MAC_BYTES] if command.secure_messaging else data
    size_max = file.record_bytes_max if file.kind == VARIABLE else file.cyclic_record_bytes
    if not RECORD_ID_BYTES <= len(record) <= size_max:
        raise CardError(sw.WRONG_LENGTH, f"record must be 2–{size_max} bytes, got {len(record)}")
    ident = record[:RECORD_ID_BYTES]
    if file.kind == VARIABLE and ident not in file.records:
        raise CardError(sw.RECORD_NOT_FOUND, f"record {ident.hex().upper()} is not opened")
    if command.secure_messaging:
        key = file.record_keys.get(ident) if file.kind == VARIABLE else file.key
        if key is None:
            raise CardError(sw.CONDITIONS_NOT_SATISFIED, f"no key for record {ident.hex().upper()}")
        _check_mac(key, command, record, data[-MAC_BYTES:], app)
    elif file.write_right != RIGHT_FREE:
        raise CardError(sw.SECURITY_STATUS_NOT_SATISFIED, f"SFI {file.sfi:02X} is written with a MAC (84 DE)")
    commit(app, txn)
    if file.kind == VARIABLE:
        file.records[ident] = record
    else:
        file.cyclic.insert(0, record)
        del file.cyclic[file.cyclic_count :]
    ctx.save()
    return Response()


def _issuer_update(app: PbocApplication, command: Command, ctx: CardContext, file: CappFile) -> Response:
    """``84 DE`` outside a Part 14 purchase: the issuer rewrites an opened record (module note).

    Accepted only with the MAC under the file's opening key (8020) after a GPO; anything else is
    refused with 6985 as before (a record key's MAC belongs to a purchase), and nothing changes.
    """
    txn = app.txn
    data = command.data
    if (
        not command.secure_messaging
        or file.kind != VARIABLE
        or file.key is None
        or txn.suite is None
        or not txn.atc
        or len(data) < RECORD_ID_BYTES + MAC_BYTES
    ):
        raise CardError(
            sw.CONDITIONS_NOT_SATISFIED,
            "UPDATE CAPP DATA CACHE needs a qPBOC GPO with DF60 = 01 approved offline",
        )
    record = data[:-MAC_BYTES]
    header = command.header + bytes([len(data)])
    expected = capp_mac(file.key, header=header, data=record, tag_9f36=txn.atc, suite=txn.suite)
    if not hmac.compare_digest(expected, data[-MAC_BYTES:]):
        raise CardError(
            sw.CONDITIONS_NOT_SATISFIED,
            "UPDATE CAPP DATA CACHE outside a purchase needs the issuer's MAC under the opening key",
        )
    if len(record) > file.record_bytes_max:
        raise CardError(sw.WRONG_LENGTH, f"record must be 2–{file.record_bytes_max} bytes, got {len(record)}")
    ident = record[:RECORD_ID_BYTES]
    if ident not in file.records:
        raise CardError(sw.RECORD_NOT_FOUND, f"record {ident.hex().upper()} is not opened")
    file.records[ident] = record
    ctx.save()
    return Response()
