"""The STORE DATA script: prepared DGIs → APDUs, and the perso-script file a card bureau runs.

Framing (docs/card.md §3, after EMV CPS v1.1 STORE DATA): ``80 E2 P1 P2 Lc data``, where

* P1 b8 = 1 on the last block; P1 b6–b5 = ``11`` when the block's DGIs are enciphered under the
  personalisation transport key (so a block never mixes clear and enciphered DGIs);
* P2 = block number, from 00 (at most 256 blocks);
* data = DGI (2) ‖ L ‖ value, L one byte for 0–254 and ``FF`` ‖ two bytes above.

Our choice of blocks: one DGI per block by default (a status word then names one DGI); with
``group=True`` consecutive DGIs of the same kind (clear or enciphered) share a block up to 255
bytes. A DGI longer than one block (a 254-byte record: a 1984-bit CA's certificate) is split as
CPS does: the first block carries DGI ‖ L (the whole length) ‖ the first bytes, the next blocks
the rest of the value and nothing else; such a DGI is never grouped.

The script file (``citycard-perso-script/1``, JSON) holds the SELECT and STORE DATA APDUs with the
KCVs, the masked PAN, the suite and the transport key's label and KCV: enciphered DGIs are the only
form of a key in it (the records carry the PAN in clear, as on the card).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citycard.card.perso.prepare import Dgi, PreparedCard

SCRIPT_FORMAT = "citycard-perso-script/1"
CLA_STORE_DATA, INS_STORE_DATA = 0x80, 0xE2
P1_LAST_BLOCK = 0x80
P1_ENCIPHERED = 0x30  # b6–b5 = 11 (docs/card.md §3)
BLOCK_BYTES_MAX = 255  # Lc of a short APDU
BLOCKS_MAX = 256  # P2 is one byte
DGI_BYTES_MAX = 0xFFFF
SCRIPT_BYTES_MAX = 1024 * 1024
APDUS_MAX = BLOCKS_MAX + 1  # the SELECT and the STORE DATA blocks
_HEX = re.compile(r"^(?:[0-9A-F]{2})+$")


class ScriptError(ValueError):
    """A script that cannot be built or read: too many blocks, a malformed file."""


def dgi_length_field(length: int) -> bytes:
    """L of a DGI: one byte for 0–254, ``FF`` ‖ two bytes from 255 on (CPS).

    >>> [dgi_length_field(n).hex().upper() for n in (0, 254, 255, 1000)]
    ['00', 'FE', 'FF00FF', 'FF03E8']
    """
    if not 0 <= length <= DGI_BYTES_MAX:
        raise ScriptError(f"a DGI holds 0 to {DGI_BYTES_MAX} bytes, got {length}")
    return bytes([length]) if length <= 0xFE else b"\xff" + length.to_bytes(2, "big")


def dgi_bytes(dgi: Dgi) -> bytes:
    """DGI (2) ‖ L ‖ value: the DGI as STORE DATA carries it.

    >>> dgi_bytes(Dgi(0x9010, bytes.fromhex("0303"))).hex().upper()
    '9010020303'
    """
    return dgi.number.to_bytes(2, "big") + dgi_length_field(len(dgi.data)) + dgi.data


@dataclass(frozen=True, slots=True)
class Block:
    """One STORE DATA block: its data, whether it is enciphered, the DGIs it carries (or a part of
    one when ``split``)."""

    data: bytes = field(repr=False)
    encrypted: bool
    dgis: tuple[str, ...]
    split: bool = False


def store_data_blocks(dgis: Iterable[Dgi], *, group: bool = False) -> list[Block]:
    """Cut the DGIs into STORE DATA blocks (the module docstring gives the rules)."""
    blocks: list[Block] = []
    for dgi in dgis:
        payload = dgi_bytes(dgi)
        if len(payload) > BLOCK_BYTES_MAX:  # CPS: split, the header only in the first block
            for start in range(0, len(payload), BLOCK_BYTES_MAX):
                part = payload[start : start + BLOCK_BYTES_MAX]
                blocks.append(Block(part, dgi.encrypted, (dgi.name,), split=True))
            continue
        last = blocks[-1] if blocks else None
        if (
            group
            and last is not None
            and not last.split
            and last.encrypted == dgi.encrypted
            and len(last.data) + len(payload) <= BLOCK_BYTES_MAX
        ):
            blocks[-1] = Block(last.data + payload, last.encrypted, (*last.dgis, dgi.name))
        else:
            blocks.append(Block(payload, dgi.encrypted, (dgi.name,)))
    if len(blocks) > BLOCKS_MAX:
        raise ScriptError(f"{len(blocks)} STORE DATA blocks, P2 counts at most {BLOCKS_MAX}")
    if not blocks:
        raise ScriptError("no DGI to store")
    return blocks


def store_data_apdus(blocks: Sequence[Block]) -> list[bytes]:
    """``80 E2 P1 P2 Lc data`` for each block: P2 counts from 00, P1 b8 on the last, b6–b5 = 11 when
    enciphered.

    >>> store_data_apdus([Block(bytes.fromhex("9010020303"), False, ("9010",))])[0].hex().upper()
    '80E28000059010020303'
    """
    apdus = []
    for number, block in enumerate(blocks):
        p1 = (P1_LAST_BLOCK if number == len(blocks) - 1 else 0) | (P1_ENCIPHERED if block.encrypted else 0)
        header = bytes([CLA_STORE_DATA, INS_STORE_DATA, p1, number, len(block.data)])
        apdus.append(header + block.data)
    return apdus


def select_apdu(aid: bytes) -> bytes:
    """SELECT by name, first occurrence, with Le: ``00 A4 04 00 Lc AID 00``."""
    if not 5 <= len(aid) <= 16:
        raise ScriptError(f"AID must be 5 to 16 bytes, got {len(aid)}")
    return bytes([0x00, 0xA4, 0x04, 0x00, len(aid)]) + aid + b"\x00"


# --- the perso-script file -------------------------------------------------------------------


@dataclass(frozen=True)
class PersoScript:
    """A card's personalisation as APDUs with what a bureau needs to check it; no clear key."""

    profile: str
    aid: bytes
    suites: tuple[str, ...]
    pan_masked: str
    psn: str
    expiry: str  # ISO date of 5F24
    kcvs: Mapping[str, Mapping[str, str]]
    transport_key: Mapping[str, str]  # label, kcv, cipher
    capks: Mapping[str, Mapping[str, str]]  # suite → rid, index
    dgis: tuple[Mapping[str, Any], ...]  # dgi, bytes, enciphered, what, blocks
    apdus: tuple[bytes, ...] = field(repr=False)
    ec_balance_fen: int | None = None

    @property
    def suite(self) -> str:
        return self.suites[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SCRIPT_FORMAT,
            "profile": self.profile,
            "aid": self.aid.hex().upper(),
            "suite": self.suite,
            "suites": list(self.suites),
            "pan_masked": self.pan_masked,
            "psn": self.psn,
            "expiry": self.expiry,
            "ec_balance_fen": self.ec_balance_fen,
            "kcvs": {group: dict(values) for group, values in self.kcvs.items()},
            "transport_key": dict(self.transport_key),
            "capks": {suite: dict(values) for suite, values in self.capks.items()},
            "dgis": [dict(item) for item in self.dgis],
            "apdus": [apdu.hex().upper() for apdu in self.apdus],
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the script as JSON, mode 0600 (it holds the PAN and enciphered keys): a temporary
        file, then an atomic rename."""
        target = Path(path)
        temporary = target.with_name(f".{target.name}.tmp")
        text = json.dumps(self.to_json(), indent=2) + "\n"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, target)

    @classmethod
    def from_json(cls, document: Any) -> PersoScript:
        """Read a script document back, checking its format and every APDU's framing."""
        if not isinstance(document, dict):
            raise ScriptError(f"a perso script is a JSON object, got {type(document).__name__}")
        if document.get("format") != SCRIPT_FORMAT:
            raise ScriptError(f"format must be {SCRIPT_FORMAT!r}, got {document.get('format')!r}")
        try:
            apdus = tuple(_hex_field(f"apdus[{i}]", text) for i, text in enumerate(document["apdus"]))
            script = cls(
                profile=str(document["profile"]),
                aid=_hex_field("aid", document["aid"]),
                suites=tuple(document["suites"]),
                pan_masked=str(document["pan_masked"]),
                psn=str(document["psn"]),
                expiry=str(document["expiry"]),
                kcvs=document["kcvs"],
                transport_key=document["transport_key"],
                capks=document["capks"],
                dgis=tuple(document["dgis"]),
                apdus=apdus,
                ec_balance_fen=document.get("ec_balance_fen"),
            )
        except KeyError as exc:
            raise ScriptError(f"perso script: missing {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ScriptError(f"perso script: {exc}") from None
        check_apdus(script.apdus, aid=script.aid)
        return script

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PersoScript:
        source = Path(path)
        try:
            if source.stat().st_size > SCRIPT_BYTES_MAX:
                raise ScriptError(f"{source}: a perso script is at most {SCRIPT_BYTES_MAX} bytes")
            return cls.from_json(json.loads(source.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ScriptError(f"{source}: no such file") from None
        except json.JSONDecodeError as exc:
            raise ScriptError(f"{source}: not JSON: {exc.msg} at line {exc.lineno}") from None


def _hex_field(where: str, text: Any) -> bytes:
    if not isinstance(text, str) or not _HEX.fullmatch(text):
        raise ScriptError(f"perso script: {where} must be upper-case hex")
    return bytes.fromhex(text)


def check_apdus(apdus: Sequence[bytes], *, aid: bytes) -> None:
    """A script is SELECT aid, then STORE DATA blocks 00, 01, … with P1 b8 on the last one only."""
    if not 2 <= len(apdus) <= APDUS_MAX:
        raise ScriptError(f"a perso script has 2 to {APDUS_MAX} APDUs, got {len(apdus)}")
    if apdus[0] != select_apdu(aid):
        raise ScriptError("perso script: the first APDU must SELECT the application's AID")
    for number, apdu in enumerate(apdus[1:]):
        if len(apdu) < 6 or apdu[:2] != bytes([CLA_STORE_DATA, INS_STORE_DATA]) or apdu[4] != len(apdu) - 5:
            raise ScriptError(f"perso script: APDU {number + 1} is not a STORE DATA command with a right Lc")
        if apdu[3] != number:
            raise ScriptError(
                f"perso script: APDU {number + 1} has block number {apdu[3]:02X}, expected {number:02X}"
            )
        if bool(apdu[2] & P1_LAST_BLOCK) != (number == len(apdus) - 2):
            raise ScriptError(
                f"perso script: APDU {number + 1}: P1 b8 (last block) must be set on the last block only"
            )
        if apdu[2] & ~(P1_LAST_BLOCK | P1_ENCIPHERED) or apdu[2] & P1_ENCIPHERED not in (0, P1_ENCIPHERED):
            raise ScriptError(
                f"perso script: APDU {number + 1}: P1 {apdu[2]:02X} is not 00/30 (+80 on the last)"
            )


def perso_script(prepared: PreparedCard, *, group: bool = False) -> PersoScript:
    """The perso script of a prepared card: SELECT its AID, then its DGIs as STORE DATA blocks."""
    blocks = store_data_blocks(prepared.dgis, group=group)
    apdus = (select_apdu(prepared.aid), *store_data_apdus(blocks))
    per_dgi = {d.name: sum(1 for b in blocks if d.name in b.dgis) for d in prepared.dgis}
    kek_kcv = prepared.kcvs.get("perso-kek", {}).get("KEK", "")
    return PersoScript(
        profile=prepared.profile,
        aid=prepared.aid,
        suites=tuple(s.name for s in prepared.suites),
        pan_masked=prepared.pan_masked,
        psn=prepared.psn,
        expiry=prepared.expiry.isoformat(),
        kcvs={
            group_name: dict(values)
            for group_name, values in prepared.kcvs.items()
            if group_name != "perso-kek"
        },
        transport_key={
            "label": prepared.perso_kek_label,
            "kcv": kek_kcv,
            "cipher": prepared.perso_suite.cipher.upper(),
            "mode": "ECB, ISO/IEC 9797-1 padding method 2",
        },
        capks={
            name: {"rid": capk.rid.hex().upper(), "index": f"{capk.index:02X}"}
            for name, capk in prepared.capks.items()
        },
        dgis=tuple(
            {
                "dgi": d.name,
                "bytes": len(d.data),
                "enciphered": d.encrypted,
                "what": d.what,
                "blocks": per_dgi[d.name],
            }
            for d in prepared.dgis
        ),
        apdus=apdus,
        ec_balance_fen=prepared.ec_balance_fen,
    )


__all__ = [
    "P1_ENCIPHERED",
    "P1_LAST_BLOCK",
    "SCRIPT_FORMAT",
    "Block",
    "PersoScript",
    "ScriptError",
    "check_apdus",
    "dgi_bytes",
    "dgi_length_field",
    "perso_script",
    "select_apdu",
    "store_data_apdus",
    "store_data_blocks",
]
