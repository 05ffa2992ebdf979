"""The clearing record: one offline EC tap (TC) as uploaded by a validator, checked and typed.

A validator uploads, per tap, the kernel's offline batch record (:class:`citycard.kernel.outcome.
BatchRecord`: PAN, PSN, amount, 9F5D balance, the raw field 55) plus what the device knows (terminal
id, operator, route, vehicle, tap time). :func:`parse_record` turns that upload dict into a
:class:`ClearingRecord` or raises :class:`MalformedRecord` naming the first bad field.

Field 55 is the source of truth for the EMV values (pboc-notes §10): the TC (9F26), the AC input
(9F02 ‖ 9F03 ‖ 9F1A ‖ 95 ‖ 5F2A ‖ 9A ‖ 9C ‖ 9F37 ‖ 82 ‖ 9F36 ‖ CVR, pboc-notes §4.2) and the IAD
(9F10, pboc-notes §2.4) whose EC IDD carries the balance after the tap under the card's MAC. The
plain fields of the upload must agree with it; a record where they differ is malformed.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple

from citycard.clearing.errors import MalformedRecord
from citycard.clearing.transit import Transit, parse_transit
from citycard.crypto.cryptogram import pboc_ac_data
from citycard.crypto.iad import IDD_TYPE_EC, parse_iad
from citycard.emv.tlv import TLVError, flat_primitives

CHINA_TIME = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")  # 9A is the terminal's local date
PAN_RE = re.compile(r"[0-9]{12,19}")
PSN_RE = re.compile(r"[0-9]{2}")
TEXT_RE = re.compile(r"[A-Za-z0-9_.\-]{1,32}")  # terminal id, operator, route, vehicle
FIELD55_HEX_MAX = 2 * 255  # field 55 is LLLVAR b..255 in the CUPS layout (pboc-notes §10)
AMOUNT_FEN_MAX = 999_999_999_999  # n12 (9F02)
TAP_DATE_SLACK_DAYS = 1  # 9A (terminal local date) vs the device's UTC tap time: a clock edge, no more
CID_TC = 0x40  # 9F27: a TC (offline approval); clearing takes nothing else
REQUIRED_TAGS = ("9F26", "9F10", "9F37", "9F36", "95", "9A", "9C", "9F02", "9F03", "5F2A", "82", "9F1A")
AC_INPUT_TAGS = ("9F02", "9F03", "9F1A", "95", "5F2A", "9A", "9C", "9F37", "82", "9F36")  # then the CVR
AC_INPUT_LENGTHS = (6, 6, 2, 5, 2, 3, 1, 4, 2, 2, 4)  # bytes, pboc-notes §4.2 (37 in all)
UPLOAD_FIELDS = (
    "pan", "psn", "amount_fen", "balance_fen_after", "field55",
    "terminal_id", "operator", "route", "vehicle", "tap_at", "transit",
)  # fmt: skip
_UPLOAD_FIELD_SET = frozenset(UPLOAD_FIELDS)
__all__ = [
    "ClearingRecord", "MalformedRecord", "native_json_part", "native_parser", "parse_fields_fast", "parse_record", "parse_record_general",
    "record_key", "upload_dict",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class ClearingRecord:
    """One checked TC tap. Money in integer fen, time aware UTC, EMV values as bytes."""

    pan: str
    psn: str
    atc: int
    amount_fen: int
    balance_before_fen: int
    balance_after_fen: int
    tc: bytes  # 9F26
    ac_input: bytes  # the 37-byte PBOC AC input rebuilt from field 55
    iad: bytes  # 9F10
    terminal_id: str
    operator: str
    route: str
    vehicle: str
    tap_at: dt.datetime
    field55: bytes
    transit: Transit | None = None  # the validator's fare decision (clearing.transit), if sent

    @property
    def exit_refund_fen(self) -> int:
        """What the validator owes back to the card for this tap (a segmented exit), else 0."""
        return 0 if self.transit is None else self.transit.refund_fen

    @property
    def card(self) -> str:
        """``PAN:PSN``: the card the balance chain follows."""
        return f"{self.pan}:{self.psn}"

    @property
    def key(self) -> str:
        """``PAN:PSN:ATC``: the identity clearing deduplicates on (DESIGN.md §3)."""
        return f"{self.pan}:{self.psn}:{self.atc:04X}"

    @property
    def tag_9f36(self) -> bytes:
        return self.atc.to_bytes(2, "big")


def upload_dict(
    batch_record: Any,
    *,
    terminal_id: str,
    operator: str,
    route: str,
    vehicle: str,
    tap_at: dt.datetime,
    transit: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The upload form of a kernel :class:`~citycard.kernel.outcome.BatchRecord` (JSON-ready), with
    the validator's ``transit`` object (:mod:`citycard.clearing.transit`) when given."""
    upload = {
        "pan": batch_record.pan,
        "psn": batch_record.psn,
        "amount_fen": batch_record.amount_fen,
        "balance_fen_after": batch_record.balance_fen_after,
        "field55": batch_record.field55,
        "terminal_id": terminal_id,
        "operator": operator,
        "route": route,
        "vehicle": vehicle,
        "tap_at": tap_at.astimezone(dt.UTC).isoformat(),
    }
    if transit is not None:
        upload["transit"] = dict(transit)
    return upload


def _text(upload: Mapping[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = upload.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise MalformedRecord(f"{name}: {value!r} does not match {pattern.pattern}")
    return value


def _fen(upload: Mapping[str, Any], name: str) -> int:
    value = upload.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= AMOUNT_FEN_MAX:
        raise MalformedRecord(f"{name}: {value!r} is not an amount 0…{AMOUNT_FEN_MAX} fen")
    return value


def _bcd(value: bytes, tag: str) -> int:
    text = value.hex()
    if not text.isdigit():
        raise MalformedRecord(f"field 55 {tag}: {text.upper()} is not BCD")
    return int(text)


def _tap_at(upload: Mapping[str, Any]) -> dt.datetime:
    value = upload.get("tap_at")
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            raise MalformedRecord(f"tap_at: {value!r} is not an ISO 8601 time") from None
    else:
        raise MalformedRecord(f"tap_at: {value!r} is not a time")
    if moment.tzinfo is None:
        raise MalformedRecord(f"tap_at: {value!r} has no time zone (times are aware UTC)")
    try:  # its UTC time and its Asia/Shanghai day (the 9A check) must be dates Python has
        moment.astimezone(CHINA_TIME)
        return moment.astimezone(dt.UTC)
    except OverflowError:
        raise MalformedRecord(f"tap_at: {value!r} is out of range") from None


def flat_tlv(raw: bytes) -> dict[str, bytes]:
    """Field 55 as ``{tag: value}``: a flat run of primitive BER-TLV objects (pboc-notes §10), read
    with :func:`citycard.emv.tlv.flat_primitives` — no templates, lengths 00–7F or 81 xx; an error
    names the offset.

    >>> flat_tlv(bytes.fromhex("9F360200079F2701 40".replace(" ", "")))
    {'9F36': b'\\x00\\x07', '9F27': b'@'}
    """
    try:
        return flat_primitives(raw, constructed="refuse", length_bytes_max=1)
    except TLVError as exc:
        raise MalformedRecord(f"field55: {exc}") from None


def _field55(upload: Mapping[str, Any]) -> tuple[bytes, dict[str, bytes]]:
    text = upload.get("field55")
    if not isinstance(text, str) or not text or len(text) > FIELD55_HEX_MAX or len(text) % 2:
        raise MalformedRecord(f"field55: expected 2…{FIELD55_HEX_MAX} hex digits, got {str(text)[:20]!r}")
    try:
        raw = bytes.fromhex(text)
    except ValueError as exc:
        raise MalformedRecord(f"field55: {exc}") from None
    values = flat_tlv(raw)
    missing = [tag for tag in REQUIRED_TAGS if tag not in values]
    if missing:
        raise MalformedRecord(f"field55: missing {', '.join(missing)}")
    cid = values.get("9F27")
    if cid is not None and (len(cid) != 1 or cid[0] & 0xC0 != CID_TC):
        raise MalformedRecord(f"field55 9F27: {cid.hex().upper()} is not a TC")
    return raw, values


def parse_record(upload: Mapping[str, Any]) -> ClearingRecord:
    """Check an upload dict (:func:`upload_dict`) and build the :class:`ClearingRecord`.

    Raises :class:`MalformedRecord` with the first problem: a missing or badly shaped field, a
    field 55 that does not decode or lacks an AC input tag, an IAD without the EC balance IDD, or
    plain fields that disagree with field 55 (amount, balance, tap date).

    The canonical uploads (:data:`FIELD55_LAYOUTS`) take :func:`native_parser` (in C) when it is
    built, else :func:`parse_fields_fast`; anything else, and every error, takes
    :func:`parse_record_general` — the same record or the same error.
    """
    native = native_parser()
    fields = native(upload) if native is not None else None
    if fields is None:
        fields = parse_fields_fast(upload)
    if fields is not None:
        return ClearingRecord(*fields)
    return parse_record_general(upload)


def parse_record_general(upload: Mapping[str, Any]) -> ClearingRecord:
    """:func:`parse_record` for any upload: the reference the fast path is tested against."""
    if type(upload) is not dict and not isinstance(upload, Mapping):  # dict first: the ABC check is slow
        raise MalformedRecord(f"record: expected an object, got {type(upload).__name__}")
    unknown = upload.keys() - _UPLOAD_FIELD_SET
    if unknown:
        raise MalformedRecord(f"record: unknown fields {', '.join(sorted(map(str, unknown)))}")
    pan = _text(upload, "pan", PAN_RE)
    psn = _text(upload, "psn", PSN_RE)
    amount = _fen(upload, "amount_fen")
    after = _fen(upload, "balance_fen_after")
    meta = {name: _text(upload, name, TEXT_RE) for name in ("terminal_id", "operator", "route", "vehicle")}
    tap_at = _tap_at(upload)
    transit = None if upload.get("transit") is None else parse_transit(upload["transit"])
    raw, ic = _field55(upload)
    if _bcd(ic["9F02"], "9F02") != amount:
        raise MalformedRecord(f"amount_fen {amount} differs from field 55 9F02 {ic['9F02'].hex()}")
    try:
        iad = parse_iad(ic["9F10"])
    except ValueError as exc:
        raise MalformedRecord(f"field55 9F10: {exc}") from None
    if iad.idd_type != IDD_TYPE_EC or iad.ec_balance_fen is None:
        raise MalformedRecord("field55 9F10: no electronic-cash balance IDD (type 01)")
    if iad.ec_balance_fen != after:
        raise MalformedRecord(f"balance_fen_after {after} differs from the IAD balance {iad.ec_balance_fen}")
    if "9F5D" in ic and _bcd(ic["9F5D"], "9F5D") != after:
        raise MalformedRecord(f"balance_fen_after {after} differs from field 55 9F5D {ic['9F5D'].hex()}")
    if len(ic["9F36"]) != 2:
        raise MalformedRecord(f"field55 9F36: ATC must be 2 bytes, got {len(ic['9F36'])}")
    date_bcd = ic["9A"].hex()
    try:  # n6 YYMMDD; years 2000–2099 (EMV Book 3 Annex A)
        tap_date = dt.date(2000 + int(date_bcd[0:2]), int(date_bcd[2:4]), int(date_bcd[4:6]))
    except ValueError:
        raise MalformedRecord(f"field55 9A: {date_bcd.upper()} is not a YYMMDD date") from None
    if len(date_bcd) != 6 or not date_bcd.isdigit():
        raise MalformedRecord(f"field55 9A: {date_bcd.upper()} is not a YYMMDD date")
    local = tap_at.astimezone(CHINA_TIME).date()
    if abs((local - tap_date).days) > TAP_DATE_SLACK_DAYS:
        raise MalformedRecord(f"tap_at {tap_at.isoformat()} is not on the card's date 9A {tap_date}")
    if len(ic["9F26"]) != 8:
        raise MalformedRecord(f"field55 9F26: TC must be 8 bytes, got {len(ic['9F26'])}")
    parts = (*[ic[tag] for tag in AC_INPUT_TAGS], iad.cvr_field)
    if tuple(map(len, parts)) != AC_INPUT_LENGTHS:  # the rare bad length: let the spec's builder name it
        try:
            pboc_ac_data(**{f"tag_{tag.lower()}": ic[tag] for tag in AC_INPUT_TAGS}, cvr=iad.cvr_field)
        except ValueError as exc:
            raise MalformedRecord(f"field55: {exc}") from None
    # = crypto.cryptogram.pboc_ac_data (pboc-notes §4.2), without its per-part calls
    ac_input = b"".join(parts)
    return ClearingRecord(
        pan=pan,
        psn=psn,
        atc=int.from_bytes(ic["9F36"], "big"),
        amount_fen=amount,
        balance_before_fen=after + amount,
        balance_after_fen=after,
        tc=ic["9F26"],
        ac_input=ac_input,
        iad=ic["9F10"],
        tap_at=tap_at,
        field55=raw,
        transit=transit,
        **meta,
    )


# The field-55 layouts the validators actually send, as data: (tag, value bytes) in order. An upload
# whose field 55 is exactly one of these (tags, order, lengths) takes the fast path; any other
# field 55 is read by flat_tlv. Each layout must hold REQUIRED_TAGS with the AC input lengths.
FIELD55_LAYOUTS = (
    (  # the kernel's offline batch record: kernel.outcome.FIELD55_TAGS order, an 8-byte AID (84)
        ("9F26", 8), ("9F27", 1), ("9F10", 19), ("9F37", 4), ("9F36", 2), ("95", 5), ("9A", 3), ("9C", 1),
        ("9F02", 6), ("5F2A", 2), ("82", 2), ("9F1A", 2), ("9F03", 6), ("9F33", 3), ("9F34", 3),
        ("9F35", 1), ("9F1E", 8), ("84", 8), ("9F09", 2), ("9F5D", 6),
    ),
    (  # clearing.synthetic: the AC input order
        ("9F26", 8), ("9F27", 1), ("9F10", 19), ("9F02", 6), ("9F03", 6), ("9F1A", 2), ("95", 5),
        ("5F2A", 2), ("9A", 3), ("9C", 1), ("9F37", 4), ("82", 2), ("9F36", 2), ("9F5D", 6),
    ),
)  # fmt: skip
IAD_EC_BYTES = 19  # 07 DKI CVN 03 CVR(3) algorithm id ‖ 0A 01 balance(5) MAC(4) (pboc-notes §2.4)


class _Layout(NamedTuple):
    pattern: re.Pattern[bytes]  # the whole field 55, one group per value
    tc: int  # group indexes of 9F26, 9F27 (or -1), 9F10, 9F02, 9F36, 9A, 9F5D (or -1)
    cid: int
    iad: int
    amount: int
    atc: int
    date: int
    balance: int
    ac_input: Any  # itemgetter of the AC input values (AC_INPUT_TAGS order)


def _layout(spec: tuple[tuple[str, int], ...]) -> _Layout:
    tags = [tag for tag, _ in spec]
    lengths = dict(spec)
    assert len(set(tags)) == len(tags) and set(REQUIRED_TAGS) <= set(tags), spec
    assert tuple(lengths[tag] for tag in AC_INPUT_TAGS) == AC_INPUT_LENGTHS[:-1], spec
    assert lengths["9F26"] == 8 and lengths["9F10"] == IAD_EC_BYTES and lengths.get("9F27", 1) == 1, spec
    assert sum(len(tag) // 2 + 1 + n for tag, n in spec) <= FIELD55_HEX_MAX // 2, spec
    pattern = b""
    for tag, n in spec:
        header = bytes.fromhex(tag)
        assert header[0] & 0x20 == 0 and 0 < n < 0x80, (tag, n)  # primitive, one length byte
        assert len(header) == 1 or (header[0] & 0x1F == 0x1F and len(header) == 2 and header[1] < 0x80)
        pattern += re.escape(header + bytes([n])) + b"(.{%d})" % n
    index = {tag: i for i, tag in enumerate(tags)}
    return _Layout(
        re.compile(pattern, re.DOTALL), index["9F26"], index.get("9F27", -1), index["9F10"], index["9F02"],
        index["9F36"], index["9A"], index.get("9F5D", -1), itemgetter(*(index[t] for t in AC_INPUT_TAGS)),
    )  # fmt: skip


_LAYOUTS = tuple(_layout(spec) for spec in FIELD55_LAYOUTS)
_PLAIN_RE = re.compile(  # pan, psn, terminal_id, operator, route, vehicle joined by newlines
    rf"{PAN_RE.pattern}\n{PSN_RE.pattern}\n{TEXT_RE.pattern}\n{TEXT_RE.pattern}\n{TEXT_RE.pattern}\n{TEXT_RE.pattern}"
)
_UTC = dt.UTC


_FAST_FIELDS = itemgetter(  # every upload field but the optional transit
    "pan", "psn", "terminal_id", "operator", "route", "vehicle", "amount_fen", "balance_fen_after", "field55",
    "tap_at",
)  # fmt: skip
_FAST_FIELD_COUNT = 10
_CHINA_OFFSET = dt.timedelta(hours=8)  # Asia/Shanghai has had no DST since 1991
_BCD_CACHE_MAX = 4_096  # fares repeat: their 9F02 BCD, and the date checks, come from a dict (bounded)
_fare_bcd: dict[int, bytes] = {}
_date_fits: dict[tuple[bytes, dt.date], bool] = {}


def _bcd12(amount: int) -> bytes:
    """n12 BCD (9F02, 9F5D) of an amount 0…999 999 999 999."""
    return bytes.fromhex(f"{amount:012d}")


def _fits_date(tag_9a: bytes, local: dt.date) -> bool:
    """9A (YYMMDD BCD, years 2000–2099) is a date within TAP_DATE_SLACK_DAYS of ``local``."""
    date_bcd = tag_9a.hex()
    if not date_bcd.isdigit():
        return False
    try:
        tap_date = dt.date(2000 + int(date_bcd[0:2]), int(date_bcd[2:4]), int(date_bcd[4:6]))
    except ValueError:
        return False
    return abs((local - tap_date).days) <= TAP_DATE_SLACK_DAYS


def parse_fields_fast(upload: Any) -> tuple[Any, ...] | None:
    """The :class:`ClearingRecord` fields of a canonical upload (field 55 in one of
    :data:`FIELD55_LAYOUTS`, every check passing), in field order; ``None`` for anything else — a
    problem or an unusual shape — which :func:`parse_record_general` then reads (and names).
    Never raises: on its inputs it gives exactly what the general parser gives (hypothesis-tested).

    Written for the clearing workers' hot loop: a check here is one C call where it can be — the
    texts' types by ``"\\n".join``, the BCD amounts by comparing bytes, a date check from a dict."""
    if type(upload) is not dict:
        return None
    try:
        pan, psn, terminal_id, operator, route, vehicle, amount, after, text, when = _FAST_FIELDS(upload)
        plain = "\n".join((pan, psn, terminal_id, operator, route, vehicle))  # a TypeError unless all str
        if len(text) > FIELD55_HEX_MAX:  # bounded before it is decoded (the general parser names it)
            return None
        raw = bytes.fromhex(text)  # TypeError unless a str
        tap_at = dt.datetime.fromisoformat(when)
    except (KeyError, TypeError, ValueError):
        return None
    size = len(upload)
    transit = upload.get("transit") if size == _FAST_FIELD_COUNT + 1 else None
    if not (
        (size == _FAST_FIELD_COUNT or (transit is not None and "transit" in upload))
        and type(amount) is int and 0 <= amount <= AMOUNT_FEN_MAX
        and type(after) is int and 0 <= after <= AMOUNT_FEN_MAX
        and len(raw) * 2 == len(text) <= FIELD55_HEX_MAX  # no blanks (fromhex skips them)
        and tap_at.tzinfo is not None
        and _PLAIN_RE.fullmatch(plain)
    ):  # fmt: skip
        return None
    try:
        tap_at = tap_at.astimezone(_UTC)
        local = (tap_at + _CHINA_OFFSET).date()
    except OverflowError:  # at the ends of Python's dates: the general parser names it
        return None
    if transit is not None:
        try:
            transit = parse_transit(transit)
        except MalformedRecord:
            return None
    for layout in _LAYOUTS:
        match = layout.pattern.fullmatch(raw)
        if match is not None:
            break
    else:
        return None
    values = match.groups()
    iad = values[layout.iad]
    fare = _fare_bcd.get(amount)
    if fare is None:
        fare = _bcd12(amount)
        if len(_fare_bcd) >= _BCD_CACHE_MAX:  # a long-running server: start over, keep caching
            _fare_bcd.clear()
        _fare_bcd[amount] = fare
    # the BCD values equal the plain fields' encodings: valid BCD and the same amounts at once
    balance = _bcd12(after)
    if not (
        values[layout.amount] == fare
        and iad[0] == 0x07 and iad[3] == 0x03 and iad[8] == 0x0A and iad[9] == IDD_TYPE_EC
        and after < 10**10 and iad[10:15] == balance[1:]
        and (layout.cid < 0 or values[layout.cid][0] & 0xC0 == CID_TC)
        and (layout.balance < 0 or values[layout.balance] == balance)
    ):  # fmt: skip
        return None
    date_key = (values[layout.date], local)
    fits = _date_fits.get(date_key)
    if fits is None:
        fits = _fits_date(*date_key)
        if len(_date_fits) >= _BCD_CACHE_MAX:  # old days fill it in a long-running server: start over
            _date_fits.clear()
        _date_fits[date_key] = fits
    if not fits:
        return None
    ac_input = b"".join(layout.ac_input(values)) + b"\x03" + iad[4:7]
    return (
        pan, psn, int.from_bytes(values[layout.atc], "big"), amount, after + amount, after, values[layout.tc],
        ac_input, iad, terminal_id, operator, route, vehicle, tap_at, raw, transit,
    )  # fmt: skip


NATIVE_ENV = "CITYCARD_NATIVE"  # "0": never use the C fast paths (A/B measurements, the fallback's tests)


def _native_layouts() -> list[tuple[Any, ...]]:
    """:data:`FIELD55_LAYOUTS` as the C parser takes them: per layout the whole field 55 with its
    tags and lengths in place (``template``), where it must match (``fixed``), and the offsets of
    the values it reads (-1: not in the layout) — 9F26, 9F27, 9F10, 9F02, 9F36, 9A, 9F5D, then
    (offset, length) of each AC input value in :data:`AC_INPUT_TAGS` order."""
    out = []
    for spec in FIELD55_LAYOUTS:
        template, fixed, offsets = bytearray(), bytearray(), {}
        for tag, length in spec:
            header = bytes.fromhex(tag) + bytes([length])
            template += header + bytes(length)
            fixed += b"\x01" * len(header) + bytes(length)
            offsets[tag] = len(template) - length
        lengths = dict(spec)
        out.append((
            bytes(template), bytes(fixed), offsets["9F26"], offsets.get("9F27", -1), offsets["9F10"],
            offsets["9F02"], offsets["9F36"], offsets["9A"], offsets.get("9F5D", -1),
            tuple((offsets[tag], lengths[tag]) for tag in AC_INPUT_TAGS),
        ))  # fmt: skip
    return out


def _load_native() -> Any:
    """The C module (``clearing._record_native``, built when a compiler was there), configured with
    this module's layouts and limits; ``None`` when it was not built."""
    try:
        from citycard.clearing import _record_native
    except ImportError:
        return None
    _record_native.configure(
        _native_layouts(), AMOUNT_FEN_MAX, IDD_TYPE_EC, CID_TC, TAP_DATE_SLACK_DAYS, FIELD55_HEX_MAX
    )
    return _record_native


_native = _load_native()


def native_json_part() -> Any:
    """``canonical_json_part(records, fallback)`` in C — :func:`citycard.clearing.batch.digest_part`'s
    bytes, the usual uploads written there and any other record by ``fallback`` (a str) — or
    ``None`` when the extension is not built or ``CITYCARD_NATIVE=0``."""
    if _native is None or os.environ.get(NATIVE_ENV, "1") == "0":
        return None
    return _native.canonical_json_part


def native_parser() -> Any:
    """:func:`parse_fields_fast` in C for the validators' usual uploads — the same fields, or
    ``None`` for any other upload, which :func:`parse_fields_fast` then reads — or ``None`` when
    the extension is not built or ``CITYCARD_NATIVE=0``. Checked per batch, not per record."""
    if _native is None or os.environ.get(NATIVE_ENV, "1") == "0":
        return None
    return _native.parse_canonical


def native_partition() -> Any:
    """``partition_positions(uploads, buckets, groups)`` in C — :func:`citycard.clearing.parallel.partition`'s
    lists of positions by CRC-32 of ``PAN:PSN``, bucket ``b`` going to list ``groups[b]``, or
    ``None`` for a batch with any record but a dict with PAN and PSN in ASCII text — or ``None``
    when the extension is not built or ``CITYCARD_NATIVE=0``."""
    if _native is None or os.environ.get(NATIVE_ENV, "1") == "0":
        return None
    return _native.partition_positions


def record_key(upload: Mapping[str, Any]) -> str:
    """The best identity of an upload that may be malformed (for the exceptions queue)."""
    if not isinstance(upload, Mapping):
        return "?:?:?"
    pan, psn = upload.get("pan"), upload.get("psn")
    try:
        atc = int.from_bytes(flat_tlv(bytes.fromhex(upload["field55"]))["9F36"], "big")
        return f"{pan}:{psn}:{atc:04X}"
    except (KeyError, TypeError, ValueError):  # MalformedRecord is a ValueError
        return f"{pan}:{psn}:?"
