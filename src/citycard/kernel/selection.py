"""Application selection (EMV Book 1 §12; Book B §3.3 for contactless; JR/T 0025.3/.12).

Contactless: SELECT PPSE ``2PAY.SYS.DDF01``; its FCI lists the card's applications (61 entries in
BF0C); those the terminal's AID table knows are the candidates, ordered by priority (87 b4–b1,
1 highest; 0 or absent last; ties in card order). No cardholder confirmation on contactless.

Contact: SELECT PSE ``1PAY.SYS.DDF01`` and read its directory (SFI from 88, records until 6A83).
When the card has no PSE (6A82) — or the PSE cannot be used — the terminal falls back to its own
AID list, selecting each AID (and, where partial selection is allowed, each next occurrence).
6A81 (card blocked) ends the transaction. Several candidates may be offered to the cardholder
(``choose``); an application whose 87 b8 asks for confirmation is only taken when ``confirm``
agrees, and is skipped when the terminal offers no confirmation (Book 1 §12.4).

Final selection: SELECT the chosen AID; 9000 with an FCI (6F: 84 = the AID, A5) selects it;
6283 (application blocked) or another failure drops the candidate and the next one is tried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from citycard.emv.tlv import TLV, find, find_all
from citycard.kernel.card_link import CardLink, CardLinkError, CardStatusError, parse_template
from citycard.kernel.context import AidParameters, Transaction
from citycard.kernel.outcome import Outcome, Stop

PSE_NAME = b"1PAY.SYS.DDF01"
PPSE_NAME = b"2PAY.SYS.DDF01"
CANDIDATES_MAX = 16  # applications on one card the terminal will consider
DIRECTORY_RECORDS_MAX = 16  # PSE directory records read
SW_FILE_NOT_FOUND = 0x6A82
SW_CARD_BLOCKED = 0x6A81
SW_RECORD_NOT_FOUND = 0x6A83
SW_SELECTED_FILE_INVALIDATED = 0x6283  # application blocked
PRIORITY_NONE = 16  # sorts after 1..15


@dataclass(frozen=True)
class Candidate:
    """An application both the card and the terminal support."""

    aid: bytes  # the card's ADF name (4F / 84)
    label: str
    priority: int | None  # 87 b4–b1; None when absent or 0
    confirmation_required: bool  # 87 b8
    params: AidParameters  # the terminal's AID table row that matched
    order: int  # position on the card

    @property
    def sort_key(self) -> tuple[int, int]:
        return (self.priority or PRIORITY_NONE, self.order)


ConfirmHook = Callable[[Candidate], bool]
ChooseHook = Callable[[list[Candidate]], Candidate | None]
Match = Callable[[bytes], AidParameters | None]  # card AID → the terminal's row (AidTable.match)


def _label(entry: list[TLV]) -> str:
    for tag in ("9F12", "50"):
        found = find(entry, tag)
        if found is not None and found.value:
            return found.value.decode("ascii", "replace").strip()
    return ""


def _priority(entry: list[TLV]) -> tuple[int | None, bool]:
    found = find(entry, "87")
    if found is None or len(found.value) != 1:
        return None, False
    return (found.value[0] & 0x0F) or None, bool(found.value[0] & 0x80)


def _candidates(entries: list[TLV], match: Match) -> list[Candidate]:
    found: list[Candidate] = []
    for position, entry in enumerate(entries):
        children = entry.children or []
        adf = find(children, "4F")
        if adf is None or not 5 <= len(adf.value) <= 16:
            continue  # Book 1 §12.3.2: an entry without a valid ADF name is ignored
        params = match(adf.value)
        if params is None:
            continue
        priority, confirm = _priority(children)
        found.append(Candidate(adf.value, _label(children), priority, confirm, params, position))
    return found


def ppse_candidates(link: CardLink, tx: Transaction, match: Match) -> list[Candidate]:
    """SELECT PPSE → the candidates in priority order; no usable PPSE → TRY_ANOTHER_INTERFACE."""
    reply = link.select(PPSE_NAME)
    if not reply.ok:
        tx.log("SELECT PPSE", f"card answered {reply.sw:04X}")
        raise Stop(Outcome.TRY_ANOTHER_INTERFACE, f"no PPSE on the card (SW {reply.sw:04X})")
    fci = parse_template(reply.data, "SELECT PPSE", "6F")
    directory = find(fci.children or [], "BF0C")
    if directory is None:
        raise Stop(Outcome.TRY_ANOTHER_INTERFACE, "PPSE FCI without a directory (BF0C)")
    entries = find_all(directory.children or [], "61")[:CANDIDATES_MAX]
    candidates = sorted(_candidates(entries, match), key=lambda c: c.sort_key)
    tx.log("SELECT PPSE", ", ".join(f"{c.aid.hex().upper()} ({c.label})" for c in candidates) or "no match")
    if not candidates:
        raise Stop(Outcome.TRY_ANOTHER_INTERFACE, "no application on the card matches the AID table")
    return candidates


def pse_candidates(link: CardLink, tx: Transaction, match: Match) -> list[Candidate] | None:
    """The PSE directory's candidates; None when the card has no usable PSE (fall back to the list)."""
    reply = link.select(PSE_NAME)
    if reply.sw == SW_CARD_BLOCKED:
        raise Stop(Outcome.END_APPLICATION, "card blocked (SELECT PSE answered 6A81)")
    if not reply.ok:
        tx.log("SELECT PSE", f"card answered {reply.sw:04X}: using the terminal's AID list")
        return None
    try:
        fci = parse_template(reply.data, "SELECT PSE", "6F")
        sfi_object = find(fci.children or [], "88")
        if sfi_object is None or len(sfi_object.value) != 1 or not 1 <= sfi_object.value[0] <= 10:
            tx.log("SELECT PSE", "FCI without a directory SFI (88): using the terminal's AID list")
            return None
        sfi = sfi_object.value[0]
        entries: list[TLV] = []
        for number in range(1, DIRECTORY_RECORDS_MAX + 1):
            record = link.read_record(sfi, number)
            if record.sw == SW_RECORD_NOT_FOUND:
                break
            if not record.ok:
                raise CardStatusError(f"READ RECORD SFI {sfi} record {number}", record.sw)
            template = parse_template(record.data, f"READ RECORD SFI {sfi} record {number}", "70")
            entries += [obj for obj in template.children or [] if obj.tag == "61"]
    except CardLinkError as exc:
        tx.log("SELECT PSE", f"{exc}: using the terminal's AID list")
        return None
    return _candidates(entries[:CANDIDATES_MAX], match)


def list_candidates(link: CardLink, tx: Transaction, aids: Iterable[AidParameters]) -> list[Candidate]:
    """Book 1 §12.3.3: SELECT each AID of the terminal's list (and next occurrences when partial)."""
    found: list[Candidate] = []
    for row in aids:
        next_occurrence = False
        while len(found) < CANDIDATES_MAX:
            reply = link.select(row.aid, next_occurrence=next_occurrence)
            if reply.sw == SW_CARD_BLOCKED and not found:
                raise Stop(Outcome.END_APPLICATION, "card blocked (SELECT answered 6A81)")
            if not reply.ok and reply.sw != SW_SELECTED_FILE_INVALIDATED:
                break
            try:
                fci = parse_template(reply.data, f"SELECT {row.aid.hex().upper()}", "6F")
            except CardLinkError:
                break
            name = find(fci.children or [], "84")
            if name is None:
                break
            exact = name.value == row.aid
            if reply.ok and row.matches(name.value):
                a5 = find(fci.children or [], "A5")
                children = a5.children or [] if a5 is not None else []
                priority, confirm = _priority(children)
                found.append(Candidate(name.value, _label(children), priority, confirm, row, len(found)))
            if exact or not row.partial_selection:
                break
            next_occurrence = True
    tx.log("AID list", ", ".join(c.aid.hex().upper() for c in found) or "no match")
    return found


def contact_candidates(
    link: CardLink, tx: Transaction, rows: Iterable[AidParameters], match: Match
) -> list[Candidate]:
    """PSE directory, or the terminal's AID list when the card has no usable PSE; by priority."""
    candidates = pse_candidates(link, tx, match)
    if candidates is None:
        candidates = list_candidates(link, tx, rows)
    else:
        tx.log("SELECT PSE", ", ".join(c.aid.hex().upper() for c in candidates) or "no match")
    if not candidates:
        raise Stop(Outcome.END_APPLICATION, "no application on the card matches the AID table")
    return sorted(candidates, key=lambda c: c.sort_key)


def choose(
    candidates: list[Candidate],
    *,
    contactless: bool,
    confirm: ConfirmHook | None = None,
    choose_hook: ChooseHook | None = None,
) -> Candidate | None:
    """The application to try next (Book 1 §12.4), or None when nothing is left."""
    if not candidates:
        return None
    if contactless:
        return candidates[0]
    if choose_hook is not None and len(candidates) > 1:
        return choose_hook(list(candidates))
    for candidate in candidates:
        if not candidate.confirmation_required:
            return candidate
        if confirm is not None and confirm(candidate):
            return candidate
    return None


def final_select(link: CardLink, tx: Transaction, candidate: Candidate) -> bool:
    """SELECT the candidate; on success store its FCI in the card data and return True."""
    reply = link.select(candidate.aid)
    step = f"SELECT {candidate.aid.hex().upper()}"
    if not reply.ok:
        tx.log(step, f"card answered {reply.sw:04X}")
        return False
    try:
        fci = parse_template(reply.data, step, "6F")
    except CardLinkError as exc:
        tx.log(step, exc.reason)
        return False
    children = fci.children or []
    name = find(children, "84")
    proprietary = find(children, "A5")
    if name is None or proprietary is None or not candidate.params.matches(name.value):
        tx.log(step, "FCI without the selected DF name (84) or its proprietary template (A5)")
        return False
    tx.card.clear()
    tx.card_sources.clear()
    for obj in _primitives(children):
        if obj.tag not in tx.card:
            tx.card[obj.tag] = obj.value
            tx.card_sources[obj.tag] = "FCI"
    tx.aid = name.value
    tx.apply_aid(candidate.params)
    tx.log(step, f"{candidate.label or 'selected'}; PDOL {tx.card.get('9F38', b'').hex().upper() or 'none'}")
    return True


def _primitives(objects: list[TLV]) -> Iterable[TLV]:
    for obj in objects:
        if obj.children is None:
            yield obj
        else:
            yield from _primitives(obj.children)
