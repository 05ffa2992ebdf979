"""GET PROCESSING OPTIONS ``80 A8 00 00 Lc 83 L PDOL-data 00`` (Book 3 §6.5.8; JR/T 0025.5/.12).

The PDOL is the one in this interface's FCI (9102 contact, 9103 contactless). The suite of the
transaction comes from DF69 in the PDOL data (00 INTL, 01 GM); a card without the requested suite's
keys uses the one it has, and without DF69 the card takes INTL when it holds it, else GM.

Path: on the contact interface the standard path (80 AIP‖AFL from 9104). On the contactless
interface the TTQ (9F66) chooses: byte 1 b6 qPBOC → :mod:`.qpboc`; otherwise b7 (contactless PBOC)
→ the standard path with the contact GPO data 9104 (UNCERTAIN: the contract has no separate DGI
for it); neither → 6985. The ATC is incremented and saved before the answer leaves the card.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from citycard.card import sw
from citycard.card.apdu import Command, Response
from citycard.card.application import CardContext
from citycard.card.pboc.qpboc import check_ready, qpboc_gpo
from citycard.card.pboc.state import ATC_MAX, Stage
from citycard.card.sw import CardError
from citycard.crypto.suite import INTL, Suite, suite_for_df69
from citycard.emv.bits import TTQ
from citycard.emv.dol import DOLError, split_dol_data
from citycard.emv.tlv import encode_one

if TYPE_CHECKING:
    from citycard.card.pboc.application import PbocApplication


def choose_suite(available: list[Suite], tag_df69: bytes | None) -> Suite:
    """The suite of a transaction (module note).

    >>> from citycard.crypto.suite import GM
    >>> [choose_suite(have, df69).name for have, df69 in
    ...  [([INTL, GM], b"\\x01"), ([INTL], b"\\x01"), ([INTL, GM], None), ([GM], None)]]
    ['GM', 'INTL', 'INTL', 'GM']
    """
    if not available:
        raise AssertionError("a personalised application has the keys of at least one suite")
    if tag_df69 is not None and len(tag_df69) == 1 and tag_df69[0] in (0, 1):
        wanted = suite_for_df69(tag_df69[0])
        if wanted in available:
            return wanted
    return INTL if INTL in available else available[0]


def _path(app: PbocApplication, interface: str, values: dict[str, bytes]) -> str:
    if interface == "contactless":
        ttq = values.get("9F66")
        if ttq is None or len(ttq) != 4:
            raise CardError(sw.CONDITIONS_NOT_SATISFIED, "contactless GPO without the TTQ (9F66) in the PDOL")
        if TTQ.new(ttq).is_set("qpboc_supported"):
            check_ready(app)
            return "qpboc"
        if not TTQ.new(ttq).is_set("contactless_pboc_supported"):
            raise CardError(sw.CONDITIONS_NOT_SATISFIED, "TTQ offers neither qPBOC nor contactless PBOC")
    if "contact" not in app.data.gpo:
        raise CardError(sw.CONDITIONS_NOT_SATISFIED, "no standard-path GPO data (9104) on this card")
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
    path = _path(app, ctx.interface, values)
    txn.path = path
    txn.suite = choose_suite(app.secrets.suites(), values.get("DF69"))
    txn.pdol_data = data[2:]
    txn.values = dict(values)
    gpo_data = app.data.gpo["contactless" if path == "qpboc" else "contact"]
    txn.aip = gpo_data[:2]
    app.counters.atc += 1
    txn.atc = app.counters.atc.to_bytes(2, "big")
    if path == "qpboc":
        txn.capp = values.get("DF60") == b"\x01" and app.capp.has_files()
        return qpboc_gpo(app, txn, ctx)
    txn.ec_requested = values.get("9F7A") == b"\x01" and app.counters.ec_balance_fen is not None
    txn.stage = Stage.PROCESSING
    ctx.save()
    return Response(encode_one("80", gpo_data))
