"""GET PROCESSING OPTIONS ``80 A8 00 00 Lc 83 L PDOL-data 00`` (Book 3 §6.5.8; JR/T 0025.5/.12).

The PDOL is the one in this interface's FCI (9102 contact, 9103 contactless).

Suite (:func:`choose_suite`): a single-suite card always uses its suite. A card with both suites'
keys takes DF69 from the PDOL data: 01 → GM; any other value (00, or an unknown one: the terminal
does not say it supports SM) → INTL; DF69 absent from the PDOL data (a PDOL that does not ask for
it — profiles require it on a dual-suite card, so only a card personalised otherwise) → GM, SM
being preferred when the card holds both (pboc-notes §1.1, §11). A terminal that does not know DF69
fills it with zeros (Book 3 §5.4), i.e. INTL, so a legacy terminal is never sent into SM.

The suite chooses the GPO data too (docs/card.md §3; ``PbocApplication.gpo_data``): 9104/9105 on
a single-suite card or for INTL, 9106/9107 for GM on a dual-suite card.

Path: on the contact interface the standard path (80 AIP‖AFL, 9104/9106). On the contactless
interface the TTQ (9F66) chooses: byte 1 b6 qPBOC → :mod:`.qpboc` (9105/9107); otherwise b7
(contactless PBOC) → the standard path with the contact GPO data 9104/9106 (UNCERTAIN: the
contract has no separate DGI for it); neither → 6985. The ATC is incremented and saved before the
answer leaves the card.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from citycard.card import sw
from citycard.card.apdu import Command, Response
from citycard.card.application import CardContext
from citycard.card.pboc.qpboc import check_ready, qpboc_gpo
from citycard.card.pboc.state import ATC_MAX, Stage
from citycard.card.sw import CardError
from citycard.crypto.suite import GM, INTL, Suite
from citycard.emv.bits import TTQ
from citycard.emv.dol import DOLError, split_dol_data
from citycard.emv.tlv import encode_one

if TYPE_CHECKING:
    from citycard.card.pboc.application import PbocApplication


def choose_suite(available: list[Suite], tag_df69: bytes | None) -> Suite:
    """The suite of a transaction (module note): DF69 01 → GM, present otherwise → INTL, absent → GM
    (SM preferred); a card with one suite uses it whatever DF69 says.

    >>> [choose_suite(have, df69).name for have, df69 in [
    ...     ([INTL, GM], b"\\x01"), ([INTL, GM], b"\\x00"), ([INTL, GM], b"\\x02"), ([INTL, GM], None),
    ...     ([INTL], b"\\x01"), ([INTL], None), ([GM], b"\\x00"), ([GM], None)]]
    ['GM', 'INTL', 'INTL', 'GM', 'INTL', 'INTL', 'GM', 'GM']
    """
    if not available:
        raise AssertionError("a personalised application has the keys of at least one suite")
    if len(available) == 1:
        return available[0]
    if tag_df69 is None:
        return GM
    return GM if tag_df69 == bytes([GM.tag_df69]) else INTL


def _path(app: PbocApplication, interface: str, values: dict[str, bytes], suite: Suite) -> str:
    if interface == "contactless":
        ttq = values.get("9F66")
        if ttq is None or len(ttq) != 4:
            raise CardError(sw.CONDITIONS_NOT_SATISFIED, "contactless GPO without the TTQ (9F66) in the PDOL")
        if TTQ.new(ttq).is_set("qpboc_supported"):
            check_ready(app, suite)
            return "qpboc"
        if not TTQ.new(ttq).is_set("contactless_pboc_supported"):
            raise CardError(sw.CONDITIONS_NOT_SATISFIED, "TTQ offers neither qPBOC nor contactless PBOC")
    if app.gpo_data("contact", suite) is None:
        raise CardError(
            sw.CONDITIONS_NOT_SATISFIED, f"no standard-path GPO data (9104/9106) for the {suite.name} suite"
        )
    return "contact"


def get_processing_options(app: PbocApplication, command: Command, ctx: CardContext) -> Response:
    if command.p1 or command.p2:
        raise CardError(sw.INCORRECT_P1_P2, "GET PROCESSING OPTIONS takes P1 P2 = 00 00")
    txn = app.txn
    if txn.stage != Stage.SELECTED:
        raise CardError(
            sw.CONDITIONS_NOT_SATISFIED, "GET PROCESSING OPTIONS once per transaction, after SELECT"
        )
    data = command.data
    if len(data) < 2 or data[0] != 0x83:
        raise CardError(sw.WRONG_DATA, "GPO data must be the command template 83")
    if data[1] != len(data) - 2:
        raise CardError(sw.WRONG_LENGTH, f"template 83 says {data[1]} bytes, {len(data) - 2} follow")
    pdol = app.data.fci_tag(ctx.interface, "9F38") or b""
    try:
        values = split_dol_data(pdol, data[2:])
    except DOLError as exc:
        raise CardError(sw.WRONG_LENGTH, f"PDOL data: {exc}") from exc
    if app.counters.atc >= ATC_MAX:
        raise CardError(
            sw.CONDITIONS_NOT_SATISFIED, "ATC exhausted: the application can make no more cryptograms"
        )
    suite = choose_suite(app.secrets.suites(), values.get("DF69"))
    path = _path(app, ctx.interface, values, suite)
    gpo_data = app.gpo_data("contactless" if path == "qpboc" else "contact", suite)
    if gpo_data is None:
        raise AssertionError("_path checked the GPO data of this path and suite")
    txn.path = path
    txn.suite = suite
    txn.pdol_data = data[2:]
    txn.values = dict(values)
    txn.aip, txn.afl = gpo_data[:2], gpo_data[2:]
    app.counters.atc += 1
    txn.atc = app.counters.atc.to_bytes(2, "big")
    if path == "qpboc":
        txn.capp = values.get("DF60") == b"\x01" and app.capp.has_files()
        return qpboc_gpo(app, txn, ctx)
    txn.ec_requested = values.get("9F7A") == b"\x01" and app.counters.ec_balance_fen is not None
    txn.stage = Stage.PROCESSING
    ctx.save()
    return Response(encode_one("80", txn.aip + txn.afl))
