"""Read application data (EMV Book 3 §10.2; JR/T 0025.6; qPBOC pboc-notes §5.2).

- The AFL (94) is whole 4-byte entries: SFI (b8–b4 of byte 1, b3–b1 zero) 1..30, first record
  ≥ 1, last ≥ first, records for ODA ≤ the entry's count. Anything else is a malformed AFL and ends
  the application.
- Each record of SFI 1..10 must be exactly one 70 template (no trailing bytes, valid TLV); a
  primitive data object seen twice — in one record, in two records, or once in a record and
  again with another value in the GPO answer — ends the application (Book 3 §10.2: duplicate
  data). qPBOC cards repeat 57 and 5F34 of the GPO answer in a record; equal values are accepted.
- Static data to be authenticated (Book 3 §10.3): for SFI 1..10 the value of the 70 template, for
  SFI 11..30 the whole record; a record of SFI 11..30 flagged for ODA that is not a 70 template
  makes ODA fail (noted in :attr:`Transaction.oda_record_problem`).
- Mandatory data missing ends the application with TVR "ICC data missing".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from citycard.emv.tlv import TLV
from citycard.kernel.card_link import CardLink, CardLinkError, parse_template
from citycard.kernel.context import Transaction
from citycard.kernel.outcome import Outcome, Stop

AFL_ENTRY_BYTES = 4
AFL_ENTRIES_MAX = 16
RECORDS_MAX = 64  # records one transaction reads
SFI_ODA_TEMPLATE_MAX = 10  # SFI 1..10: records are 70 templates, their value is signed


class AflError(ValueError):
    """The AFL (94) is malformed."""


@dataclass(frozen=True, slots=True)
class AflEntry:
    sfi: int
    first: int
    last: int
    oda_count: int

    def records(self) -> Iterable[tuple[int, bool]]:
        """(record number, signed for ODA) for each record of this entry."""
        for number in range(self.first, self.last + 1):
            yield number, number - self.first < self.oda_count


def parse_afl(tag_94: bytes) -> list[AflEntry]:
    """The AFL's entries; :class:`AflError` says exactly what is wrong (Book 3 §10.2).

    >>> parse_afl(bytes.fromhex("08010100 10010202"))
    [AflEntry(sfi=1, first=1, last=1, oda_count=0), AflEntry(sfi=2, first=1, last=2, oda_count=2)]
    >>> parse_afl(bytes.fromhex("080201"))
    Traceback (most recent call last):
    ...
    citycard.kernel.records.AflError: AFL (94) of 3 bytes is not whole 4-byte entries
    """
    if not tag_94 or len(tag_94) % AFL_ENTRY_BYTES:
        raise AflError(f"AFL (94) of {len(tag_94)} bytes is not whole {AFL_ENTRY_BYTES}-byte entries")
    if len(tag_94) // AFL_ENTRY_BYTES > AFL_ENTRIES_MAX:
        raise AflError(f"AFL (94) has {len(tag_94) // AFL_ENTRY_BYTES} entries, at most {AFL_ENTRIES_MAX}")
    entries, total = [], 0
    for offset in range(0, len(tag_94), AFL_ENTRY_BYTES):
        byte1, first, last, oda = tag_94[offset : offset + AFL_ENTRY_BYTES]
        where = (
            f"AFL (94) entry {offset // AFL_ENTRY_BYTES + 1} ({tag_94[offset : offset + 4].hex().upper()})"
        )
        sfi = byte1 >> 3
        if byte1 & 0x07 or not 1 <= sfi <= 30:
            raise AflError(f"{where}: SFI byte {byte1:02X} is not an SFI 1..30 shifted left by 3")
        if first == 0:
            raise AflError(f"{where}: first record is 0")
        if last < first:
            raise AflError(f"{where}: last record {last} is before the first {first}")
        if oda > last - first + 1:
            raise AflError(f"{where}: {oda} records for ODA, the entry has {last - first + 1}")
        total += last - first + 1
        if total > RECORDS_MAX:
            raise AflError(f"AFL (94) lists more than {RECORDS_MAX} records")
        entries.append(AflEntry(sfi, first, last, oda))
    return entries


def store(
    tx: Transaction, objects: Iterable[TLV], source: str, *, equal_repeats_of: tuple[str, ...] = ()
) -> None:
    """Put the primitive data objects of ``objects`` into the card data; a duplicate ends the
    application, except a repeat with the same value of a tag first seen in ``equal_repeats_of``."""
    for obj in objects:
        if obj.children is not None:
            store(tx, obj.children, source, equal_repeats_of=equal_repeats_of)
            continue
        first = tx.card_sources.get(obj.tag)
        if first is not None and first != "FCI":
            if first in equal_repeats_of and tx.card[obj.tag] == obj.value:
                tx.card_sources[obj.tag] = f"{first} and {source}"  # a third copy is a duplicate
                continue
            raise Stop(
                Outcome.END_APPLICATION,
                f"duplicate data: {obj.tag} in {source} was already in {first}",
            )
        tx.card[obj.tag] = obj.value
        tx.card_sources[obj.tag] = source


def read_records(
    link: CardLink, tx: Transaction, tag_94: bytes, *, equal_repeats_of: tuple[str, ...] = ()
) -> None:
    """READ RECORD for every AFL record; store the data objects; collect the static data for ODA."""
    try:
        entries = parse_afl(tag_94)
    except AflError as exc:
        raise Stop(Outcome.END_APPLICATION, f"malformed AFL: {exc}") from None
    static = bytearray()
    for entry in entries:
        for number, oda in entry.records():
            source = f"SFI {entry.sfi} record {number}"
            reply = link.read_record(entry.sfi, number)
            if not reply.ok:
                raise Stop(Outcome.END_APPLICATION, f"READ RECORD {source}: card answered {reply.sw:04X}")
            tx.records.append((entry.sfi, number, reply.data, oda))
            if entry.sfi <= SFI_ODA_TEMPLATE_MAX:
                try:
                    template = parse_template(reply.data, f"READ RECORD {source}", "70")
                except CardLinkError as exc:
                    raise Stop(Outcome.END_APPLICATION, str(exc)) from None
                store(tx, template.children or [], source, equal_repeats_of=equal_repeats_of)
                if oda:
                    static += template.value
                continue
            try:  # SFI 11..30: signed as it is; its data objects are used when it is a 70 template
                template = parse_template(reply.data, f"READ RECORD {source}", "70")
            except CardLinkError as exc:
                if oda:
                    tx.oda_record_problem = (
                        f"{source} is flagged for ODA but is not a 70 template ({exc.reason})"
                    )
            else:
                store(tx, template.children or [], source, equal_repeats_of=equal_repeats_of)
            if oda:
                static += reply.data
    tx.static_data = bytes(static)
    tx.log("READ RECORD", f"{len(tx.records)} records, {len(static)} bytes for ODA")


def require(tx: Transaction, tags: Iterable[str], why: str) -> None:
    """End the application (TVR "ICC data missing") when one of ``tags`` is missing from the card data."""
    missing = [tag for tag in tags if not tx.card.get(tag)]
    if missing:
        tx.tvr.set("icc_data_missing")
        raise Stop(Outcome.END_APPLICATION, f"missing mandatory data for {why}: {', '.join(missing)}")
