"""The hospital desk's access to the health application on a citizen card (issue 8 item 1).

Contract for the hospital desk program and the platform's health service (docs/health-card.md §5)::

    reader = HealthCardReader(transport, sam=HospitalSam(hsm, institution_id="H001"))
    reader.select()                       # SELECT the health DDF1; HealthCardError if the card has none
    ident = reader.read_identity()        # HealthIdentity(card_no, name, sex, birth_date, id_number, …)
    reader.read_alerts(); reader.read_allergies()
    visits = reader.read_visits()         # list[VisitRecord], each signature verified
    reader.append_visit(VisitRecord(...), signer=InstitutionSigner(hsm, "H001", GM))

The reader speaks APDUs only (any :class:`citycard.reader.Transport`: in-process, PC/SC, vpcd), the
SAM side is the HSM (:mod:`citycard.hsm.health`): read rights by GET CHALLENGE + EXTERNAL
AUTHENTICATE with the DF's read key, writes in secure messaging under the DF's update key, keys
diversified with the chip serial the card gives freely in DDF1 EF05.

Visit slots: DF03 EF06 (outpatient flags) holds one validity byte per ED01–ED05 slot and the slot
written last; a new visit goes into the slot after it (cyclic), written whole (zero-filled) with
UPDATE BINARY pieces, then the flags are updated. A tear between the two leaves the old flags: the
new record is not listed (it is on the platform, which the desk also writes) — UNCERTAIN how WS/T
543 orders the two writes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from citycard.card.health import files as hf
from citycard.card.health.application import HEALTH_DDF1_NAME, SUITE_OF_BYTE
from citycard.card.health.records import (
    HealthRecordError,
    RecordSignatureError,
    VisitRecord,
    alerts_from_bits,
    decode_record,
    encode_record,
    verify_record,
)
from citycard.crypto import record_signature
from citycard.crypto.suite import GM, INTL, Suite
from citycard.emv.tlv import TLVError, decode, find

__all__ = [
    "HEALTH_DDF1_NAME",
    "HealthCardError",
    "HealthCardReader",
    "HealthIdentity",
    "HospitalSam",
    "InstitutionSigner",
    "RecordSignatureError",
    "VisitRecord",
    "verify_record",
]

SW_OK = 0x9000
SW_RECORD_NOT_FOUND = 0x6A83
SW_MEANING = {
    0x6983: "the key is blocked (too many failed authentications)",
    0x6700: "wrong length",
    0x6981: "command incompatible with the file",
    0x6982: "security status not satisfied (the DF's key is needed)",
    0x6985: "conditions of use not satisfied",
    0x6987: "secure-messaging data missing",
    0x6988: "the MAC does not verify",
    0x6A80: "wrong data",
    0x6A82: "no such file or application on the card",
    0x6A83: "record not found",
    0x6A84: "file full",
    0x6A88: "key reference not found",
}
VISIT_KINDS = {
    "outpatient": (hf.OUTPATIENT_SLOTS, hf.OUTPATIENT_FLAGS_FILE),
    "inpatient": (hf.INPATIENT_SLOTS, hf.INPATIENT_FLAGS_FILE),
}
READ_PIECE_BYTES = 0xF0  # READ BINARY Le per piece
RECORDS_READ_MAX = 16  # READ RECORD stops here whatever the card says


class HealthCardError(Exception):
    """The card refused a step (``sw``) or answered something the desk cannot use (``sw`` None)."""

    def __init__(self, step: str, sw: int | None = None, detail: str = ""):
        text = step
        if sw is not None:
            meaning = SW_MEANING.get(sw, "")
            if sw & 0xFFF0 == 0x63C0:
                meaning = f"authentication failed (wrong key), {sw & 0x0F} tries left"
            text += f": the card answered {sw:04X}" + (f" ({meaning})" if meaning else "")
        if detail:
            text += f": {detail}"
        super().__init__(text)
        self.step = step
        self.sw = sw


@dataclass(frozen=True)
class HealthIdentity:
    """DDF1 EF05 + EF06 + EF07 + EF08 as the desk sees them."""

    card_no: str
    name: str
    sex: str  # GB/T 2261.1: 1 male, 2 female
    birth_date: dt.date
    id_number: str
    ethnicity: str = ""
    issuer_name: str = ""
    issuer_code: str = ""
    issue_date: dt.date | None = None
    expiry: dt.date | None = None
    phones: tuple[str, ...] = ()
    photo_ref: str = ""
    chip_serial: str = ""
    suite: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "card_no": self.card_no,
            "name": self.name,
            "sex": self.sex,
            "birth_date": self.birth_date.isoformat(),
            "id_number": self.id_number,
            "ethnicity": self.ethnicity,
            "issuer_name": self.issuer_name,
            "issuer_code": self.issuer_code,
            "issue_date": self.issue_date.isoformat() if self.issue_date else None,
            "expiry": self.expiry.isoformat() if self.expiry else None,
            "phones": list(self.phones),
            "photo_ref": self.photo_ref,
            "chip_serial": self.chip_serial,
            "suite": self.suite,
        }


@dataclass(frozen=True)
class SamLabels:
    """HSM label prefix of the health DF key masters (``health-<suite>-<df>-<rk|uk>``)."""

    health_prefix: str = "health"


class HospitalSam:
    """The desk's SAM: the HSM's health operations for one institution, plus the public keys of
    other institutions for checking their records (``directory``: institution id → public key,
    or a callable ``(institution_id, suite) -> public key``; else the HSM's own copy)."""

    def __init__(
        self,
        hsm: Any,
        institution_id: str,
        *,
        labels: SamLabels | None = None,
        directory: Mapping[str, bytes] | Callable[[str, Suite], bytes] | None = None,
    ):
        self.hsm = hsm
        self.institution_id = institution_id
        self.labels = labels or SamLabels()
        self.directory = directory

    def __repr__(self) -> str:
        return f"HospitalSam({self.institution_id})"

    def auth_cryptogram(self, suite: Suite, *, df: str, diversifier: bytes, challenge: bytes) -> bytes:
        return self.hsm.health_auth_cryptogram(
            suite, df=df, diversifier=diversifier, challenge=challenge, prefix=self.labels.health_prefix
        )

    def sm_command(
        self, suite: Suite, *, df: str, diversifier: bytes, challenge: bytes, header: bytes, plain: bytes
    ) -> bytes:
        return self.hsm.health_sm_command(
            suite,
            df=df,
            diversifier=diversifier,
            challenge=challenge,
            header=header,
            plain=plain,
            prefix=self.labels.health_prefix,
        )

    def public_key(self, institution_id: str, suite: Suite) -> bytes:
        """The institution's record key, from the directory or else the HSM."""
        if callable(self.directory):
            return self.directory(institution_id, suite)
        if self.directory is not None and institution_id in self.directory:
            return self.directory[institution_id]
        try:
            return self.hsm.institution_public_key(institution_id, suite)
        except ValueError as exc:
            raise RecordSignatureError(f"no record key of institution {institution_id!r}: {exc}") from None


class InstitutionSigner:
    """Signs visit records with the institution's key in the HSM (SM2/SM3 for GM, RSA-SHA-256 INTL)."""

    def __init__(self, hsm: Any, institution_id: str, suite: Suite, *, pss: bool = False):
        self.hsm = hsm
        self.institution_id = institution_id
        self.suite = suite
        self.pss = pss

    def __repr__(self) -> str:
        return f"InstitutionSigner({self.institution_id}, {self.suite.name})"

    def public_key(self) -> bytes:
        return self.hsm.institution_public_key(self.institution_id, self.suite)

    def sign(self, record: VisitRecord) -> VisitRecord:
        """``record`` with the institution's signature, algorithm and key id (its institution must be
        this signer's)."""
        if record.institution_id != self.institution_id:
            raise RecordSignatureError(
                f"institution {self.institution_id} cannot sign a record of {record.institution_id}"
            )
        algorithm = record_signature.algorithm_for(self.suite, pss=self.pss)
        public = self.public_key()
        draft = VisitRecord.from_dict(
            {
                **record.unsigned().to_dict(),
                "signature_alg": record_signature.ALGORITHMS[algorithm],
                "key_id": record_signature.key_id(public, algorithm=algorithm).hex(),
            }
        )
        _, key_id, signature = self.hsm.sign_institution_record(
            self.institution_id, self.suite, draft.canonical_bytes(), pss=self.pss
        )
        assert key_id == draft.key_id
        return VisitRecord.from_dict({**draft.to_dict(), "signature": signature.hex()})


@dataclass
class _Session:
    suite: Suite
    diversifier: bytes
    issuer: dict[str, Any]
    granted: set[str] = field(default_factory=set)


class HealthCardReader:
    """The desk's access to the health DDF1 through any transport (module note)."""

    def __init__(self, transport: Any, *, sam: HospitalSam, aid: bytes = HEALTH_DDF1_NAME):
        self.transport = transport
        self.sam = sam
        self.aid = aid
        self._session: _Session | None = None

    # --- APDUs ------------------------------------------------------------------------------
    def _send(self, apdu: bytes, step: str, *, allow: tuple[int, ...] = ()) -> tuple[bytes, int]:
        answer = self.transport.transmit(apdu)
        if len(answer) < 2:
            raise HealthCardError(step, detail=f"an answer of {len(answer)} bytes")
        data, sw = answer[:-2], int.from_bytes(answer[-2:], "big")
        if sw != SW_OK and sw not in allow:
            raise HealthCardError(step, sw)
        return data, sw

    @property
    def session(self) -> _Session:
        if self._session is None:
            raise HealthCardError("the health application is not selected: call select() first")
        return self._session

    @property
    def suite(self) -> Suite:
        return self.session.suite

    def select(self) -> dict[str, Any]:
        """SELECT the health DDF1 by name and read its issuer data (DDF1 EF05, free): the suite and
        the chip serial the SAM diversifies the keys with. HealthCardError when the card has none."""
        if callable(getattr(self.transport, "connect", None)):
            self.transport.connect()
        self._session = None
        apdu = b"\x00\xa4\x04\x00" + bytes([len(self.aid)]) + self.aid + b"\x00"
        answer = self.transport.transmit(apdu)
        sw = int.from_bytes(answer[-2:], "big") if len(answer) >= 2 else None
        if sw == 0x6A82:
            raise HealthCardError("SELECT the health DDF1", sw, "this card has no health application")
        if sw != SW_OK:
            raise HealthCardError("SELECT the health DDF1", sw)
        suite = self._suite_of_fci(answer[:-2])
        self._session = _Session(suite, b"", {})
        issuer = self._records(hf.ISSUER_FILE)
        if not issuer:
            raise HealthCardError("READ RECORD DDF1/EF05", detail="no issuer data")
        try:
            values = decode_record(hf.ISSUER_FILE.name, issuer[0])
            diversifier = bytes.fromhex(values["chip_serial"])
        except HealthRecordError as exc:
            raise HealthCardError("READ RECORD DDF1/EF05", detail=str(exc)) from None
        except KeyError:
            raise HealthCardError("DDF1/EF05", detail="no chip serial (86)") from None
        self._session = _Session(suite, diversifier, values)
        return dict(values)

    @staticmethod
    def _suite_of_fci(fci: bytes) -> Suite:
        try:
            objects = decode(fci)
        except TLVError as exc:
            raise HealthCardError("SELECT the health DDF1", detail=f"FCI is not TLV: {exc}") from None
        df69 = find(objects, "DF69")
        if df69 is None or len(df69.value) != 1 or df69.value[0] not in SUITE_OF_BYTE:
            raise HealthCardError("SELECT the health DDF1", detail="FCI names no suite (DF69)")
        return SUITE_OF_BYTE[df69.value[0]]

    def authenticate(self, df: str) -> None:
        """GET CHALLENGE + EXTERNAL AUTHENTICATE with ``df``'s read key (once per selection)."""
        session = self.session
        if df in session.granted:
            return
        challenge, _ = self._send(b"\x00\x84\x00\x00\x08", "GET CHALLENGE")
        cryptogram = self.sam.auth_cryptogram(
            session.suite, df=df, diversifier=session.diversifier, challenge=challenge
        )
        reference = hf.key_reference(df, "RK")
        self._send(
            bytes([0x00, 0x82, 0x00, reference, len(cryptogram)]) + cryptogram, f"EXTERNAL AUTHENTICATE {df}"
        )
        session.granted.add(df)

    def _records(self, file: hf.HealthFile) -> list[bytes]:
        if file.read == "rk":
            self.authenticate(file.df)
        out = []
        for number in range(1, min(file.records_max, RECORDS_READ_MAX) + 1):
            data, sw = self._send(
                bytes([0x00, 0xB2, number, file.sfi << 3 | 4, 0x00]),
                f"READ RECORD {file.name} #{number}",
                allow=(SW_RECORD_NOT_FOUND,),
            )
            if sw == SW_RECORD_NOT_FOUND:
                break
            out.append(data)
        return out

    def read_file(self, name: str) -> list[dict[str, Any]]:
        """Every record of a record file (``DF01/EF08`` …) as field values."""
        file = hf.BY_NAME.get(name)
        if file is None or file.kind == "binary":
            raise HealthCardError(f"{name!r} is not a record file of the health application")
        try:
            return [decode_record(name, record) for record in self._records(file)]
        except HealthRecordError as exc:
            raise HealthCardError(f"READ RECORD {name}", detail=str(exc)) from None

    def _read_binary(self, file: hf.HealthFile) -> bytes:
        self.authenticate(file.df)
        out = b""
        while len(out) < file.size_bytes:
            offset, size = len(out), min(READ_PIECE_BYTES, file.size_bytes - len(out))
            p1p2 = bytes([0x80 | file.sfi, offset]) if offset == 0 else offset.to_bytes(2, "big")
            data, _ = self._send(b"\x00\xb0" + p1p2 + bytes([size]), f"READ BINARY {file.name} at {offset}")
            if not data:
                break
            out += data
        return out

    # --- reading ----------------------------------------------------------------------------------
    def read_identity(self) -> HealthIdentity:
        issuer = self.session.issuer
        person = self.read_file(hf.IDENTITY_FILE.name)
        if not person:
            raise HealthCardError("READ RECORD DDF1/EF06", detail="no cardholder record")
        p = person[0]
        photo = self.read_file(hf.PHOTO_FILE.name)
        expiry = self.read_file(hf.EXPIRY_FILE.name)
        e = expiry[0] if expiry else {}
        try:
            return HealthIdentity(
                card_no=issuer.get("card_no", ""),
                name=p["name"],
                sex=p.get("sex", ""),
                birth_date=dt.date.fromisoformat(p["birth_date"]),
                id_number=p["id_number"],
                ethnicity=p.get("ethnicity", ""),
                issuer_name=issuer.get("issuer_name", ""),
                issuer_code=issuer.get("issuer_code", ""),
                issue_date=dt.date.fromisoformat(issuer["issue_date"]) if "issue_date" in issuer else None,
                expiry=dt.date.fromisoformat(e["expiry"]) if "expiry" in e else None,
                phones=tuple(e[k] for k in ("phone1", "phone2") if k in e),
                photo_ref=photo[0].get("photo_ref", "") if photo else "",
                chip_serial=issuer.get("chip_serial", ""),
                suite=self.suite.name,
            )
        except KeyError as exc:
            raise HealthCardError("DDF1/EF06", detail=f"field {exc} missing") from None

    def read_documents(self) -> dict[str, Any]:
        """DF01 EF08: ID documents, health record number, rural co-operative number."""
        records = self.read_file(hf.DOCUMENTS_FILE.name)
        return records[0] if records else {}

    def read_alerts(self) -> dict[str, Any]:
        """DF02 EF05: ``{"blood_abo", "blood_rh", "alerts": [names]}`` (empty when none written)."""
        records = self.read_file(hf.ALERTS_FILE.name)
        if not records:
            return {"blood_abo": None, "blood_rh": None, "alerts": []}
        r = records[0]
        return {
            "blood_abo": r.get("blood_abo"),
            "blood_rh": r.get("blood_rh"),
            "alerts": alerts_from_bits(r.get("alerts", "0000")),
        }

    def read_allergies(self) -> list[dict[str, Any]]:
        """DF02 EF07 (cyclic, newest first)."""
        return self.read_file(hf.ALLERGIES_FILE.name)

    def read_immunisations(self) -> list[dict[str, Any]]:
        """DF02 EF08 (cyclic, newest first)."""
        return self.read_file(hf.IMMUNISATIONS_FILE.name)

    @staticmethod
    def _slots(kind: str) -> tuple[tuple[hf.HealthFile, ...], hf.HealthFile]:
        """(record slots, validity-flags file) of ``outpatient`` (ED01–ED05) or ``inpatient`` (EE01–EE03)."""
        if kind not in VISIT_KINDS:
            raise HealthCardError(f"visit kind {kind!r}: one of {', '.join(VISIT_KINDS)}")
        return VISIT_KINDS[kind]

    def _flags(self, kind: str) -> tuple[bytearray, int]:
        slots, flags_file = self._slots(kind)
        records = self.read_file(flags_file.name)
        if not records:
            return bytearray(len(slots)), 0
        flags = bytearray(bytes.fromhex(records[0].get("flags", "00" * len(slots))))
        last = int(records[0].get("last", "00"), 16)
        if last >= len(slots):
            raise HealthCardError(
                f"READ RECORD {flags_file.name}", detail=f"last slot {last} of {len(flags)}"
            )
        return flags, last

    def read_visits(self, *, kind: str = "outpatient", verify: bool = True) -> list[VisitRecord]:
        """The visit records of the valid slots (``outpatient`` ED01–ED05, ``inpatient`` EE01–EE03),
        oldest first, each signature checked with the writing institution's key
        (RecordSignatureError names a forged one)."""
        slots, _ = self._slots(kind)
        flags, last = self._flags(kind)
        count = len(slots)
        order = [(last + i) % count for i in range(1, count + 1)]  # slot after the last = oldest
        visits = []
        for index in order:
            if not flags[index]:
                continue
            raw = self._read_binary(slots[index])
            try:
                record = VisitRecord.from_bytes(raw)
            except HealthRecordError as exc:
                raise HealthCardError(f"{slots[index].name}", detail=str(exc)) from None
            if verify:
                self.verify(record)
            visits.append(record)
        return visits

    def verify(self, record: VisitRecord) -> VisitRecord:
        suite = GM if record.signature_alg == "SM2-SM3" else INTL
        return verify_record(record, self.sam.public_key(record.institution_id, suite))

    # --- writing ----------------------------------------------------------------------------------
    def _sm(self, file: hf.HealthFile, header: bytes, plain: bytes, step: str) -> None:
        session = self.session
        challenge, _ = self._send(b"\x00\x84\x00\x00\x08", "GET CHALLENGE")
        apdu = self.sam.sm_command(
            session.suite,
            df=file.df,
            diversifier=session.diversifier,
            challenge=challenge,
            header=header,
            plain=plain,
        )
        self._send(apdu, step)

    def write_record(self, name: str, values: Mapping[str, Any], *, number: int = 1) -> None:
        """UPDATE RECORD (linear files) or APPEND RECORD (cyclic files) of field values, in secure
        messaging under the DF's update key."""
        file = hf.BY_NAME.get(name)
        if file is None or file.kind == "binary":
            raise HealthCardError(f"{name!r} is not a record file of the health application")
        try:
            record = encode_record(name, dict(values))
        except HealthRecordError as exc:
            raise HealthCardError(f"{name}", detail=str(exc)) from None
        if file.kind == "cyclic":
            header = bytes([0x04, 0xE2, 0x00, file.sfi << 3 | 4])
            self._sm(file, header, record, f"APPEND RECORD {name}")
        else:
            header = bytes([0x04, 0xDC, number, file.sfi << 3 | 4])
            self._sm(file, header, record, f"UPDATE RECORD {name} #{number}")

    def _write_binary(self, file: hf.HealthFile, content: bytes) -> None:
        content = content.ljust(file.size_bytes, b"\x00")
        piece = hf.BINARY_PIECE_BYTES_MAX
        for offset in range(0, file.size_bytes, piece):
            p1p2 = bytes([0x80 | file.sfi, offset]) if offset == 0 else offset.to_bytes(2, "big")
            self._sm(
                file,
                b"\x04\xd6" + p1p2,
                content[offset : offset + piece],
                f"UPDATE BINARY {file.name} at {offset}",
            )

    def append_visit(
        self, record: VisitRecord, *, signer: InstitutionSigner, kind: str = "outpatient"
    ) -> VisitRecord:
        """Sign ``record`` (unless it is signed already), write it into the next slot of ``kind``
        (``outpatient`` or ``inpatient``) and mark the slot valid; return the signed record as
        written (what the platform stores)."""
        slots, flags_file = self._slots(kind)
        signed = record if record.signed else signer.sign(record)
        self.verify(signed)  # never write a record the next desk would refuse
        raw = signed.to_bytes()
        if len(raw) > slots[0].size_bytes:
            raise HealthCardError(
                "append visit", detail=f"a record of {len(raw)} bytes exceeds {slots[0].size_bytes}"
            )
        flags, last = self._flags(kind)
        index = (last + 1) % len(slots) if any(flags) else 0
        self._write_binary(slots[index], raw)
        flags[index] = 1
        self.write_record(flags_file.name, {"flags": bytes(flags).hex(), "last": f"{index:02X}"})
        return signed
