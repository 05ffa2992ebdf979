"""The resident health application (居民健康卡 DDF1) on the citizen card (pboc-notes §8.1; UNCERTAIN).

One chip, two independent applications: the PBOC debit/credit ADF and this DDF1, each selected by
its own name, each with its own keys. The card enforces the access rights of :mod:`.files`:

- ``GET CHALLENGE`` ``00 84 00 00 08``: an 8-byte random, good for one EXTERNAL AUTHENTICATE or
  one secure-messaging write;
- ``EXTERNAL AUTHENTICATE`` ``00 82 00 <key ref> 08 <E(RK)[R ‖ 0…]>``: grants reading the DF of that
  read key until the application is deselected; a wrong cryptogram answers 63Cx (x tries left, from
  15, saved) and drops the grant; at 0 the key is blocked (6983); a right one resets the count;
- ``READ RECORD`` ``00 B2 rec (SFI<<3)|4`` and ``READ BINARY`` ``00 B0`` (P1 b8 = 1: SFI in P1, offset
  in P2; else a 15-bit offset in the file read last): a protected file without its grant → **6982**;
- ``UPDATE RECORD`` ``04 DC``, ``APPEND RECORD`` ``04 E2`` (cyclic files: the new record becomes
  record 1), ``UPDATE BINARY`` ``04 D6``: only in secure messaging (CLA 04) under the DF's update
  key with the session key of the last GET CHALLENGE (:mod:`citycard.crypto.health_sm`): CLA 00 →
  **6982**, no challenge → 6985, a short MAC → 6987, a wrong MAC → **6988**; nothing changes on any
  refusal; an accepted write is saved (``ctx.save()``) before the answer.

Personalisation (STORE DATA, docs/health-card.md §3): DGI A060 the suite (00 INTL, 01 GM), 8060
the eight keys RK‖UK of DDF1, DF01, DF02, DF03 (enciphered), 9060 their KCVs, ``SSRR`` record RR of
the file with SFI SS (``SS00`` the contents of a binary file).
"""

from __future__ import annotations

import hmac
from typing import Any

from citycard.card import sw
from citycard.card.apdu import Command, Response
from citycard.card.application import Application, CardContext, Sealer
from citycard.card.health import files as hf
from citycard.card.sw import CardError
from citycard.crypto import health_sm
from citycard.crypto.keys import key_check_value
from citycard.crypto.suite import GM, INTL, Suite
from citycard.emv.tlv import TLVError, decode, encode_one

# ISO/IEC 7816-5 proprietary RID (D + country code 156) + "HEALTH.DDF1": this project's name for the
# DDF1 (the real one is not public; pboc-notes §8.1 UNCERTAIN).
HEALTH_DDF1_NAME = bytes.fromhex("D156000001") + b"HEALTH.DDF1"
LABEL = "HEALTH CARD"
DGI_SUITE, DGI_KEYS, DGI_KCVS = 0xA060, 0x8060, 0x9060
KEY_BYTES = 16
KCV_BYTES = 3
SUITE_BYTES = {INTL.name: 0x00, GM.name: 0x01}
SUITE_OF_BYTE = {0x00: INTL, 0x01: GM}
CLA_ISO, CLA_SM = 0x00, 0x04
INS_GET_CHALLENGE, INS_EXTERNAL_AUTHENTICATE = 0x84, 0x82
INS_READ_RECORD, INS_READ_BINARY = 0xB2, 0xB0
INS_UPDATE_RECORD, INS_APPEND_RECORD, INS_UPDATE_BINARY = 0xDC, 0xE2, 0xD6
KEY_TRIES_MAX = 15  # EXTERNAL AUTHENTICATE failures before a read key is blocked (63Cx counts down)
SW_INCOMPATIBLE_FILE = 0x6981


def check_record(record: bytes) -> None:
    """A record a record file accepts: 1 to RECORD_BYTES_MAX bytes of well-formed BER-TLV."""
    if not 1 <= len(record) <= hf.RECORD_BYTES_MAX:
        raise CardError(sw.WRONG_LENGTH, f"a record is 1 to {hf.RECORD_BYTES_MAX} bytes, got {len(record)}")
    try:
        decode(record, padding=False)
    except TLVError as exc:
        raise CardError(sw.WRONG_DATA, f"record is not BER-TLV: {exc}") from None


class HealthApplication(Application):
    """The health DDF1 (module note). State: the suite, 8 keys, record and binary files."""

    in_payment_directory = False  # selected by its name at the hospital desk, never a payment candidate

    def __init__(self, *, aid: bytes = HEALTH_DDF1_NAME, label: str = LABEL):
        self.aid = bytes(aid)
        self.label = label
        self.priority = None
        self.suite: Suite | None = None
        self._keys: dict[str, bytes] = {}
        self._kcvs: bytes | None = None
        self._records: dict[int, list[bytes]] = {}
        self._binary: dict[int, bytes] = {}
        self._personalised = False
        self._tries: dict[str, int] = {}  # DF → read-key tries left, when below KEY_TRIES_MAX
        self._challenge: bytes | None = None
        self._granted: set[str] = set()
        self._current_binary: int | None = None

    def __repr__(self) -> str:
        suite = self.suite.name if self.suite else "-"
        return f"HealthApplication({self.aid.hex().upper()}, {suite}, personalised={self._personalised})"

    # --- the OS contract ----------------------------------------------------------------------
    @property
    def personalised(self) -> bool:
        return self._personalised

    def fci(self, ctx: CardContext) -> bytes:
        proprietary = encode_one("50", self.label.encode("ascii"))
        if self.suite is not None:
            proprietary += encode_one("DF69", bytes([SUITE_BYTES[self.suite.name]]))
        return encode_one("6F", encode_one("84", self.aid) + encode_one("A5", proprietary))

    def select(self, ctx: CardContext) -> int:
        self.deselect()
        return sw.OK

    def deselect(self) -> None:
        self._challenge = None
        self._granted = set()
        self._current_binary = None

    def process(self, command: Command, ctx: CardContext) -> Response:
        if not self._personalised:
            raise CardError(sw.CONDITIONS_NOT_SATISFIED, "the health application is not personalised")
        ins = command.ins
        if ins == INS_GET_CHALLENGE:
            return self._get_challenge(command, ctx)
        if ins == INS_EXTERNAL_AUTHENTICATE:
            return self._external_authenticate(command, ctx)
        if ins in (INS_READ_RECORD, INS_READ_BINARY):
            if command.cla != CLA_ISO:
                raise CardError(sw.CLA_NOT_SUPPORTED, f"{ins:02X} takes CLA 00")
            return self._read_record(command) if ins == INS_READ_RECORD else self._read_binary(command)
        if ins in (INS_UPDATE_RECORD, INS_APPEND_RECORD, INS_UPDATE_BINARY):
            return self._write(command, ctx)
        raise CardError(sw.INS_NOT_SUPPORTED, f"INS {ins:02X}")

    # --- authentication -------------------------------------------------------------------------
    def _get_challenge(self, command: Command, ctx: CardContext) -> Response:
        if command.cla != CLA_ISO or command.p1 or command.p2:
            raise CardError(sw.INCORRECT_P1_P2, "GET CHALLENGE is 00 84 00 00 08")
        if command.data or command.le != health_sm.CHALLENGE_BYTES:
            raise CardError(sw.WRONG_LENGTH, f"GET CHALLENGE gives {health_sm.CHALLENGE_BYTES} bytes (Le 08)")
        self._challenge = ctx.random_bytes(health_sm.CHALLENGE_BYTES)
        return Response(self._challenge)

    def _take_challenge(self) -> bytes:
        challenge, self._challenge = self._challenge, None
        if challenge is None:
            raise CardError(sw.CONDITIONS_NOT_SATISFIED, "GET CHALLENGE first")
        return challenge

    def _external_authenticate(self, command: Command, ctx: CardContext) -> Response:
        if command.cla != CLA_ISO or command.p1:
            raise CardError(sw.INCORRECT_P1_P2, "EXTERNAL AUTHENTICATE is 00 82 00 <key reference>")
        key = hf.key_of_reference(command.p2)
        if key is None or key[1] != "RK":
            raise CardError(sw.REFERENCED_DATA_NOT_FOUND, f"key reference {command.p2:02X} is no read key")
        if len(command.data) != health_sm.CRYPTOGRAM_BYTES:
            raise CardError(sw.WRONG_LENGTH, f"the cryptogram is {health_sm.CRYPTOGRAM_BYTES} bytes")
        challenge = self._take_challenge()
        df = key[0]
        tries = self._tries.get(df, KEY_TRIES_MAX)
        if tries == 0:
            raise CardError(sw.AUTHENTICATION_METHOD_BLOCKED, f"the {df} read key is blocked")
        assert self.suite is not None
        expected = health_sm.auth_cryptogram(self._keys[f"{df}-RK"], challenge=challenge, suite=self.suite)
        if not hmac.compare_digest(expected, command.data):
            self._granted.discard(df)
            self._tries[df] = tries - 1
            ctx.save()  # the count survives a tear before the answer
            raise CardError(sw.pin_tries_left(tries - 1), f"{df} read key: authentication failed")
        self._granted.add(df)
        if df in self._tries:
            del self._tries[df]
            ctx.save()
        return Response()

    def _check_read(self, file: hf.HealthFile) -> None:
        if file.read != "free" and file.df not in self._granted:
            raise CardError(sw.SECURITY_STATUS_NOT_SATISFIED, f"{file.name} needs the {file.df} read key")

    # --- reading ----------------------------------------------------------------------------------
    def _file(self, sfi: int, *, binary: bool) -> hf.HealthFile:
        file = hf.BY_SFI.get(sfi)
        if file is None:
            raise CardError(sw.FILE_NOT_FOUND, f"no file with SFI {sfi:02X}")
        if (file.kind == "binary") != binary:
            raise CardError(SW_INCOMPATIBLE_FILE, f"{file.name} is a {file.kind} file")
        return file

    def _record_file(self, command: Command) -> hf.HealthFile:
        if command.p2 & 0x07 != 0x04:
            raise CardError(sw.INCORRECT_P1_P2, "P2 = SFI << 3 | 4 (record number in P1)")
        return self._file(command.p2 >> 3, binary=False)

    def _read_record(self, command: Command) -> Response:
        file = self._record_file(command)
        self._check_read(file)
        records = self._records.get(file.sfi, [])
        if not 1 <= command.p1 <= len(records):
            raise CardError(sw.RECORD_NOT_FOUND, f"{file.name} holds {len(records)} records")
        return Response(records[command.p1 - 1])

    def _binary_target(self, command: Command) -> tuple[hf.HealthFile, int]:
        if command.p1 & 0x80:
            if command.p1 & 0x60:
                raise CardError(sw.INCORRECT_P1_P2, "P1 = 100 ‖ SFI (5 bits)")
            file = self._file(command.p1 & 0x1F, binary=True)
            offset = command.p2
        else:
            if self._current_binary is None:
                raise CardError(sw.COMMAND_NOT_ALLOWED, "no current binary file: name it by SFI first")
            file = hf.BY_SFI[self._current_binary]
            offset = command.p1 << 8 | command.p2
        if offset >= file.size_bytes:
            raise CardError(
                sw.WRONG_P1_P2, f"offset {offset} is outside {file.name} ({file.size_bytes} bytes)"
            )
        return file, offset

    def _read_binary(self, command: Command) -> Response:
        file, offset = self._binary_target(command)
        if command.data or command.le is None:
            raise CardError(sw.WRONG_LENGTH, "READ BINARY takes Le only")
        self._check_read(file)
        self._current_binary = file.sfi
        content = self._binary.get(file.sfi, b"").ljust(file.size_bytes, b"\x00")
        return Response(content[offset : offset + command.le])

    # --- writing (secure messaging under the DF's update key) ---------------------------------------
    def _write(self, command: Command, ctx: CardContext) -> Response:
        ins = command.ins
        if ins == INS_UPDATE_BINARY:
            file, offset = self._binary_target(command)
        else:
            file, offset = self._record_file(command), 0
            if ins == INS_APPEND_RECORD and command.p1:
                raise CardError(sw.INCORRECT_P1_P2, "APPEND RECORD takes P1 = 00")
        if command.cla != CLA_SM:
            raise CardError(
                sw.SECURITY_STATUS_NOT_SATISFIED,
                f"{file.name} is written with the {file.df} update key (CLA 04)",
            )
        challenge = self._take_challenge()
        assert self.suite is not None
        session = health_sm.session_key(self._keys[f"{file.df}-UK"], challenge=challenge, suite=self.suite)
        try:
            plain = health_sm.unwrap(session, header=command.header, data=command.data, suite=self.suite)
        except health_sm.SecureMessagingError as exc:
            status = sw.SM_DATA_OBJECTS_MISSING if exc.kind == "missing" else sw.SM_DATA_OBJECTS_INCORRECT
            raise CardError(status, f"{file.name}: {exc}") from None
        if ins == INS_UPDATE_BINARY:
            self._update_binary(file, offset, plain)
        else:
            self._update_records(file, command, plain)
        ctx.save()
        return Response()

    def _update_binary(self, file: hf.HealthFile, offset: int, plain: bytes) -> None:
        if not plain or offset + len(plain) > file.size_bytes:
            raise CardError(sw.WRONG_LENGTH, f"{len(plain)} bytes at {offset} do not fit {file.name}")
        content = self._binary.get(file.sfi, b"").ljust(file.size_bytes, b"\x00")
        self._binary[file.sfi] = (content[:offset] + plain + content[offset + len(plain) :]).rstrip(b"\x00")
        self._current_binary = file.sfi

    def _update_records(self, file: hf.HealthFile, command: Command, record: bytes) -> None:
        check_record(record)
        records = list(self._records.get(file.sfi, []))
        if command.ins == INS_APPEND_RECORD:
            if file.kind == "cyclic":
                records = [record, *records][: file.records_max]
            elif len(records) >= file.records_max:
                raise CardError(sw.NOT_ENOUGH_MEMORY, f"{file.name} is full ({file.records_max} records)")
            else:
                records.append(record)
        else:
            number = command.p1
            if number == 0 or number > min(len(records) + 1, file.records_max):
                raise CardError(sw.RECORD_NOT_FOUND, f"{file.name}: record {number} cannot be written")
            if number == len(records) + 1:
                records.append(record)
            else:
                records[number - 1] = record
        self._records[file.sfi] = records

    # --- personalisation ------------------------------------------------------------------------
    def store_data(self, dgi: int, data: bytes, ctx: CardContext) -> None:
        if dgi == DGI_SUITE:
            if len(data) != 1 or data[0] not in SUITE_OF_BYTE:
                raise CardError(sw.WRONG_DATA, "DGI A060: one byte, 00 INTL or 01 GM")
            self.suite = SUITE_OF_BYTE[data[0]]
        elif dgi == DGI_KEYS:
            if len(data) != KEY_BYTES * len(hf.KEY_NAMES):
                raise CardError(sw.WRONG_DATA, f"DGI 8060: {KEY_BYTES * len(hf.KEY_NAMES)} bytes of keys")
            self._keys = {
                name: data[i * KEY_BYTES : (i + 1) * KEY_BYTES] for i, name in enumerate(hf.KEY_NAMES)
            }
        elif dgi == DGI_KCVS:
            if len(data) != KCV_BYTES * len(hf.KEY_NAMES):
                raise CardError(sw.WRONG_DATA, f"DGI 9060: {KCV_BYTES * len(hf.KEY_NAMES)} bytes of KCVs")
            self._kcvs = bytes(data)
        else:
            self._store_file(dgi, data)

    def _store_file(self, dgi: int, data: bytes) -> None:
        sfi, number = dgi >> 8, dgi & 0xFF
        file = hf.BY_SFI.get(sfi)
        if file is None:
            raise CardError(sw.WRONG_DATA, f"DGI {dgi:04X}: no health file with SFI {sfi:02X}")
        if file.kind == "binary":
            if number != 0 or len(data) > file.size_bytes:
                raise CardError(
                    sw.WRONG_DATA, f"DGI {dgi:04X}: {file.name} takes DGI {sfi:02X}00, ≤ {file.size_bytes}"
                )
            self._binary[sfi] = bytes(data).rstrip(b"\x00")
            return
        records = self._records.setdefault(sfi, [])
        if number != len(records) + 1 or number > file.records_max:
            raise CardError(sw.WRONG_DATA, f"DGI {dgi:04X}: {file.name} record {len(records) + 1} expected")
        check_record(bytes(data))
        records.append(bytes(data))

    def finish_personalisation(self, ctx: CardContext) -> None:
        missing = [
            name
            for name, present in (("A060", self.suite), ("8060", self._keys), ("9060", self._kcvs))
            if not present
        ]
        if not self._records.get(hf.ISSUER_FILE.sfi):
            missing.append(f"{hf.ISSUER_FILE.sfi:02X}01 (issuer data)")
        if missing:
            raise CardError(sw.CONDITIONS_NOT_SATISFIED, f"personalisation lacks DGI {', '.join(missing)}")
        assert self.suite is not None and self._kcvs is not None
        for i, name in enumerate(hf.KEY_NAMES):
            kcv = key_check_value(self._keys[name], suite=self.suite)
            if kcv != self._kcvs[i * KCV_BYTES : (i + 1) * KCV_BYTES]:
                raise CardError(sw.CONDITIONS_NOT_SATISFIED, f"key {name}: KCV does not match DGI 9060")
        self._personalised = True

    # --- image ------------------------------------------------------------------------------------
    def key_kcvs(self) -> dict[str, str]:
        """KCVs of the keys (never the keys)."""
        if self.suite is None:
            return {}
        return {
            name: key_check_value(key, suite=self.suite).hex().upper() for name, key in self._keys.items()
        }

    def to_image(self, sealer: Sealer) -> dict[str, Any]:
        suite = self.suite.name if self.suite else None
        return {
            "personalised": self._personalised,
            "suite": suite,
            "label": self.label,
            "keys": {
                name: sealer.seal(f"health/{suite}/{name}", key)  # the GM/INTL component picks the KCV
                for name, key in self._keys.items()
            },
            "kcvs": self._kcvs.hex().upper() if self._kcvs is not None else None,
            "key_tries": dict(self._tries),
            "records": {f"{sfi:02X}": [r.hex().upper() for r in recs] for sfi, recs in self._records.items()},
            "binary": {f"{sfi:02X}": content.hex().upper() for sfi, content in self._binary.items()},
        }

    @classmethod
    def from_image(cls, image: dict[str, Any], sealer: Sealer) -> HealthApplication:
        app = cls(label=image.get("label", LABEL))
        suite = image["suite"]
        if suite is not None:
            app.suite = {INTL.name: INTL, GM.name: GM}[suite]
        app._keys = {
            name: sealer.open(f"health/{suite}/{name}", sealed) for name, sealed in image["keys"].items()
        }
        app._kcvs = bytes.fromhex(image["kcvs"]) if image.get("kcvs") else None
        app._records = {
            int(sfi, 16): [bytes.fromhex(r) for r in recs] for sfi, recs in image["records"].items()
        }
        app._binary = {int(sfi, 16): bytes.fromhex(content) for sfi, content in image["binary"].items()}
        app._tries = {df: int(n) for df, n in image.get("key_tries", {}).items()}
        app._personalised = bool(image["personalised"])
        return app
