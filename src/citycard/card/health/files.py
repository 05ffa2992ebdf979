"""The health application's files and access rights, as data (pboc-notes §8.1; docs/health-card.md).

WS/T 543 is not public; the structure follows the reader SDKs quoted in pboc-notes §8.1 — DDF1 with
EF05–EF08, DF01 (addresses, contacts, documents), DF02 (medical alerts, allergies, immunisations),
DF03 (validity flags, outpatient ED01–ED05 and inpatient EE01–EE03 records) — with these project
choices, each UNCERTAIN:

- **one SFI space for the whole DDF1**: the card OS selects applications by name only, so the
  files of DF01–DF03 are not reached by SELECT of a file id; each file has its own SFI (1–30)
  and READ RECORD / READ BINARY name it directly (``FILES`` below keeps the WS/T DF and file id
  beside it). The key reference of EXTERNAL AUTHENTICATE names the DF whose read right it grants;
- records are BER-TLV (record files); visit records are **binary** files of ``VISIT_FILE_BYTES``
  (a signed record with an RSA-2048 signature does not fit one short APDU), read with READ BINARY
  and written with UPDATE BINARY in secure-messaging pieces;
- rights: ``free`` (anyone), ``rk`` (the DF's read key, EXTERNAL AUTHENTICATE), ``uk`` (the DF's
  update key: secure messaging with a MAC and encrypted data). Every file is written under ``uk``;
  only DDF1 EF05 (the issuer data, which carries the key diversifier) is read freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FileKind = Literal["linear", "cyclic", "binary"]
Right = Literal["free", "rk", "uk"]

DFS = ("DDF1", "DF01", "DF02", "DF03")
KEY_KINDS = ("RK", "UK")
KEY_NAMES = tuple(f"{df}-{kind}" for df in DFS for kind in KEY_KINDS)  # DGI 8060 order
RECORD_BYTES_MAX = 200  # a record's TLV; its secure-messaging form (padded + MAC) fits one APDU
VISIT_FILE_BYTES = 768  # a signed visit record: ~100 bytes of data, 256 of RSA-2048 signature
BINARY_PIECE_BYTES_MAX = 224  # plain bytes per UPDATE BINARY: padded + MAC stays under 255


@dataclass(frozen=True, slots=True)
class HealthFile:
    name: str  # "DDF1/EF05"
    df: str
    fid: int  # the WS/T file id, for reference
    sfi: int  # how the card addresses it here (module note)
    kind: FileKind
    read: Right
    records_max: int = 1  # record files
    size_bytes: int = 0  # binary files
    use: str = ""

    @property
    def key_index(self) -> int:
        return DFS.index(self.df)


def _files() -> tuple[HealthFile, ...]:
    rows: list[tuple[str, int, int, FileKind, Right, int, int, str]] = [
        # df, fid, sfi, kind, read right, records, binary size, use
        ("DDF1", 0xEF05, 0x05, "linear", "free", 1, 0, "issuer data, card number, chip serial"),
        ("DDF1", 0xEF06, 0x06, "linear", "rk", 1, 0, "name, sex, ethnicity, birth date, ID number"),
        ("DDF1", 0xEF07, 0x07, "linear", "rk", 1, 0, "photo reference"),
        ("DDF1", 0xEF08, 0x08, "linear", "rk", 1, 0, "card expiry, phones"),
        ("DF01", 0xEF05, 0x09, "linear", "rk", 1, 0, "addresses"),
        ("DF01", 0xEF06, 0x0A, "linear", "rk", 1, 0, "contacts"),
        ("DF01", 0xEF07, 0x0B, "linear", "rk", 1, 0, "education, marriage, occupation"),
        ("DF01", 0xEF08, 0x0C, "linear", "rk", 1, 0, "ID documents, health record no., rural co-op no."),
        ("DF02", 0xEF05, 0x0D, "linear", "rk", 1, 0, "medical alerts: ABO/Rh, asthma, heart disease…"),
        ("DF02", 0xEF06, 0x0E, "linear", "rk", 1, 0, "psychiatric flag"),
        ("DF02", 0xEF07, 0x0F, "cyclic", "rk", 10, 0, "allergies"),
        ("DF02", 0xEF08, 0x10, "cyclic", "rk", 10, 0, "immunisations"),
        ("DF03", 0xEF05, 0x11, "linear", "rk", 1, 0, "inpatient record validity flags"),
        ("DF03", 0xEF06, 0x12, "linear", "rk", 1, 0, "outpatient record validity flags"),
    ]
    rows += [
        ("DF03", 0xED01 + i, 0x13 + i, "binary", "rk", 0, VISIT_FILE_BYTES, f"outpatient record {i + 1}")
        for i in range(5)
    ]
    rows += [
        ("DF03", 0xEE01 + i, 0x18 + i, "binary", "rk", 0, VISIT_FILE_BYTES, f"inpatient record {i + 1}")
        for i in range(3)
    ]
    return tuple(
        HealthFile(f"{df}/{fid:04X}", df, fid, sfi, kind, read, records, size, use)
        for df, fid, sfi, kind, read, records, size, use in rows
    )


FILES = _files()
BY_SFI = {f.sfi: f for f in FILES}
BY_NAME = {f.name: f for f in FILES}
OUTPATIENT_SLOTS = tuple(BY_NAME[f"DF03/ED0{i}"] for i in range(1, 6))
INPATIENT_SLOTS = tuple(BY_NAME[f"DF03/EE0{i}"] for i in range(1, 4))
ISSUER_FILE = BY_NAME["DDF1/EF05"]
IDENTITY_FILE = BY_NAME["DDF1/EF06"]
PHOTO_FILE = BY_NAME["DDF1/EF07"]
EXPIRY_FILE = BY_NAME["DDF1/EF08"]
DOCUMENTS_FILE = BY_NAME["DF01/EF08"]
ALERTS_FILE = BY_NAME["DF02/EF05"]
ALLERGIES_FILE = BY_NAME["DF02/EF07"]
IMMUNISATIONS_FILE = BY_NAME["DF02/EF08"]
OUTPATIENT_FLAGS_FILE = BY_NAME["DF03/EF06"]
INPATIENT_FLAGS_FILE = BY_NAME["DF03/EF05"]

# EXTERNAL AUTHENTICATE P2 / key reference: (DF index + 1) << 4 | 1 for RK, | 2 for UK.
KEY_REFERENCE_RK, KEY_REFERENCE_UK = 0x01, 0x02


def key_reference(df: str, kind: str) -> int:
    """``11`` = DDF1 read key, ``22`` = DF01 update key, … (module note)."""
    return (DFS.index(df) + 1) << 4 | (KEY_REFERENCE_RK if kind == "RK" else KEY_REFERENCE_UK)


def key_of_reference(reference: int) -> tuple[str, str] | None:
    """(df, kind) of a key reference, or None when it names no key."""
    index, kind = (reference >> 4) - 1, reference & 0x0F
    if not 0 <= index < len(DFS) or kind not in (KEY_REFERENCE_RK, KEY_REFERENCE_UK):
        return None
    return DFS[index], "RK" if kind == KEY_REFERENCE_RK else "UK"
