"""Builders and validators for the CUPS POS messages the citizen card uses (pboc-notes §10).

Message kinds are data (:data:`KINDS`): MTI, processing code (F3), F60.1 transaction type code,
F60.3 network management code, and the fields a request must carry. Builders fill a field dict;
:func:`classify` parses one back and checks it against the table; :func:`response` turns a request
into its response, echoing the fields the acquirer matches on.

Codes — pboc-notes §10 [S24] unless marked:

* purchase 0200 / F3 000000 / F60.1 22; pre-authorisation 0100 / 030000 / 10.
* authorisation 0100 / 000000 / 10 (brief; F60.1 assumed equal to pre-auth's — UNCERTAIN).
* EC load (指定账户圈存, load from the cardholder's designated account) 0200 / 600000 / 45:
  common UnionPay usage, not in our notes — UNCERTAIN, check against the CUPS POS spec.
* advice / offline EC TC upload 0220 / 000000 / 36 — UNCERTAIN (CUPS also uses 0320 batch upload).
* reversal 0400: the original's fields with the same STAN (CUPS POS matches on it), F39 = reason.
* sign-on 0800 / F60.1 00 / F60.3 003 (double-length keys); echo 0800 / F60.3 301 — UNCERTAIN
  (ISO puts the network management code in F70, which this spec does not use).
* key exchange on demand 0800 / F60.3 101 (new PIK/MAK in F62 of the 0810, as sign-on) — UNCERTAIN:
  ISO 8583 uses network management code 161 in F70; CUPS hosts usually force a new sign-on instead.
* settlement totals 0500 / F60.1 00 / F60.3 201 (批结算), totals in F63 as :func:`settlement_totals`
  lays them out — UNCERTAIN: CUPS carries the totals in F48, which this spec does not define.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from citycard.iso8583.message import Iso8583Error

AMOUNT_FEN_MAX = 999_999_999_999  # F4 is n12
STAN_MAX = 999_999  # F11 is n6
BATCH_MAX = 999_999  # F60.2 is n6
CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "CST")  # F12/F13 local time; no DST in China
CURRENCY_CNY = "156"


@dataclass(frozen=True)
class Kind:
    name: str
    mti: str
    processing_code: str | None  # F3, None for network management
    type_code: str  # F60.1
    required: tuple[str, ...]  # fields a request must carry besides t
    mgmt_code: str = "000"  # F60.3


_FINANCIAL = ("2", "3", "4", "11", "22", "25", "41", "42", "49", "60")
KINDS: dict[str, Kind] = {
    "sign_on": Kind("sign_on", "0800", None, "00", ("11", "41", "42", "60"), mgmt_code="003"),
    "echo": Kind("echo", "0800", None, "00", ("11", "41", "42", "60"), mgmt_code="301"),
    "authorisation": Kind("authorisation", "0100", "000000", "10", _FINANCIAL),
    "pre_authorisation": Kind("pre_authorisation", "0100", "030000", "10", _FINANCIAL),
    "purchase": Kind("purchase", "0200", "000000", "22", _FINANCIAL),
    "ec_load": Kind("ec_load", "0200", "600000", "45", (*_FINANCIAL, "55")),
    "advice": Kind("advice", "0220", "000000", "36", (*_FINANCIAL, "55")),
    "reversal": Kind("reversal", "0400", None, "", ("3", "4", "11", "39", "41", "42", "60")),
    "key_exchange": Kind("key_exchange", "0800", None, "00", ("11", "41", "42", "60"), mgmt_code="101"),
    "settlement": Kind("settlement", "0500", None, "00", ("11", "41", "42", "60", "63"), mgmt_code="201"),
}
PIN_BLOCK_FIELDS = {8: "52", 16: "57"}  # enciphered PIN block length → field (3DES F52, SM4 F57)
_KINDS_BY_MTI: dict[str, list[Kind]] = {}  # request MTI → its kinds, in KINDS order (classify)
for _kind in KINDS.values():
    _KINDS_BY_MTI.setdefault(_kind.mti, []).append(_kind)
SETTLEMENT_COUNT_MAX = 999  # n3 per direction in the F63 totals
SETTLEMENT_TOTALS_CHARS = 30  # debit count n3, debit amount n12, credit count n3, credit amount n12
# Fields a response copies from its request (the acquirer matches the pair on these).
ECHOED = ("2", "3", "4", "11", "12", "13", "25", "32", "33", "37", "41", "42", "49", "60")


@dataclass(frozen=True)
class Terminal:
    terminal_id: str  # F41 ans8
    merchant_id: str  # F42 ans15
    batch: int = 1  # F60.2
    acquirer_id: str | None = None  # F32


@dataclass(frozen=True)
class Card:
    pan: str  # F2 (5A)
    psn: int | None = None  # F23 (5F34)
    expiry_yymm: str | None = None  # F14 (5F24 without the day)
    track2: str | None = None  # F35 (57 as digits with D)


def amount_field(amount_fen: int) -> str:
    """F4 n12 from integer fen.

    >>> amount_field(12345)
    '000000012345'
    """
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int):
        raise Iso8583Error(f"amount must be integer fen, got {type(amount_fen).__name__}", field="4")
    if not 0 <= amount_fen <= AMOUNT_FEN_MAX:
        raise Iso8583Error(f"amount {amount_fen} fen outside 0..{AMOUNT_FEN_MAX}", field="4")
    return f"{amount_fen:012d}"


def stan_field(stan: int) -> str:
    if isinstance(stan, bool) or not isinstance(stan, int) or not 1 <= stan <= STAN_MAX:
        raise Iso8583Error(f"STAN must be an integer 1..{STAN_MAX}, got {stan!r}", field="11")
    return f"{stan:06d}"


def time_fields(when: datetime) -> dict[str, str]:
    """F7 (UTC MMDDhhmmss) and F12/F13 (China local hhmmss / MMDD) from an aware datetime.

    >>> time_fields(datetime(2026, 11, 27, 3, 4, 5, tzinfo=UTC))
    {'7': '1127030405', '12': '110405', '13': '1127'}
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise Iso8583Error("transmission time must be timezone-aware", field="7")
    utc = when.astimezone(UTC)
    local = when.astimezone(CHINA_STANDARD_TIME)
    return {"7": utc.strftime("%m%d%H%M%S"), "12": local.strftime("%H%M%S"), "13": local.strftime("%m%d")}


def parse_amount(fields: dict[str, Any]) -> int:
    """F4 back to integer fen."""
    value = fields.get("4")
    if value is None or len(value) != 12 or not value.isdigit():
        raise Iso8583Error(f"amount must be n12, got {value!r}", field="4")
    return int(value)


def _f60(kind: Kind, batch: int) -> str:
    if not 0 <= batch <= BATCH_MAX:
        raise Iso8583Error(f"batch {batch} outside 0..{BATCH_MAX}", field="60")
    return f"{kind.type_code}{batch:06d}{kind.mgmt_code}"


def _base(kind: Kind, terminal: Terminal, stan: int, when: datetime) -> dict[str, Any]:
    fields: dict[str, Any] = {"t": kind.mti, **time_fields(when), "11": stan_field(stan)}
    fields.update({"41": terminal.terminal_id, "42": terminal.merchant_id, "60": _f60(kind, terminal.batch)})
    if terminal.acquirer_id is not None:
        fields["32"] = terminal.acquirer_id
    return fields


def network(kind_name: str, *, terminal: Terminal, stan: int, when: datetime) -> dict[str, Any]:
    """0800 sign-on (``"sign_on"``), key exchange (``"key_exchange"``) or echo test (``"echo"``)."""
    kind = KINDS[kind_name]
    if kind.mti != "0800":
        raise ValueError(f"{kind_name} is not a network management message")
    return _base(kind, terminal, stan, when)


def financial(
    kind_name: str,
    *,
    terminal: Terminal,
    card: Card,
    amount_fen: int,
    stan: int,
    when: datetime,
    ic: bytes | None = None,
    pin_block: bytes | None = None,
    contactless: bool = False,
) -> dict[str, Any]:
    """A 0100/0200/0220 request of kind ``authorisation``, ``pre_authorisation``, ``purchase``,
    ``ec_load`` or ``advice``. ``ic`` is the encoded F55 TLV; ``pin_block`` the encrypted F52."""
    kind = KINDS[kind_name]
    if kind.processing_code is None or kind.mti == "0400":
        raise ValueError(f"{kind_name} is not a financial request")
    fields = _base(kind, terminal, stan, when)
    pos_entry = ("07" if contactless else "05") + ("1" if pin_block is not None else "2")
    fields.update(
        {"2": card.pan, "3": kind.processing_code, "4": amount_field(amount_fen), "22": pos_entry,
         "25": "06" if kind_name == "pre_authorisation" else "00", "49": CURRENCY_CNY}
    )  # fmt: skip
    if card.psn is not None:
        fields["23"] = f"{card.psn:03d}"
    if card.expiry_yymm is not None:
        fields["14"] = card.expiry_yymm
    if card.track2 is not None:
        fields["35"] = card.track2
    if pin_block is not None:
        fields["26"] = "12"
        # 8 bytes → F52, 16 (SM4) → F57; any other length stays in F52, where the encoder refuses it
        # (in-process callers use that to test the issuer's own check)
        fields[PIN_BLOCK_FIELDS.get(len(pin_block), "52")] = pin_block
    if ic is not None:
        fields["55"] = ic
    missing = [key for key in kind.required if key not in fields]
    if missing:
        raise Iso8583Error(f"{kind_name} needs fields {', '.join(missing)}", field=missing[0])
    return fields


def pin_field(pin_block: bytes) -> str:
    """Where an enciphered PIN block travels: F52 (b64) for an 8-byte 3DES block, F57 for a 16-byte
    SM4 block of a GM terminal (F52 cannot hold it; our choice, UNCERTAIN for CUPS).

    >>> pin_field(bytes(8)), pin_field(bytes(16))
    ('52', '57')
    """
    if len(pin_block) not in PIN_BLOCK_FIELDS:
        raise Iso8583Error(f"PIN block must be 8 (3DES) or 16 (SM4) bytes, got {len(pin_block)}", field="52")
    return PIN_BLOCK_FIELDS[len(pin_block)]


def settlement_totals(*, debit_count: int, debit_fen: int, credit_count: int = 0, credit_fen: int = 0) -> str:
    """F63 of a 0500: debit count n3 ‖ debit amount n12 ‖ credit count n3 ‖ credit amount n12 (UNCERTAIN).

    >>> settlement_totals(debit_count=2, debit_fen=1500)
    '002000000001500000000000000000'
    """
    for name, count in (("debit", debit_count), ("credit", credit_count)):
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= SETTLEMENT_COUNT_MAX:
            raise Iso8583Error(f"{name} count must be an integer 0..{SETTLEMENT_COUNT_MAX}", field="63")
    return f"{debit_count:03d}{amount_field(debit_fen)}{credit_count:03d}{amount_field(credit_fen)}"


def parse_settlement_totals(fields: dict[str, Any]) -> dict[str, int]:
    """F63 totals of a 0500 back to ``{"debit_count", "debit_fen", "credit_count", "credit_fen"}``."""
    value = fields.get("63")
    if not isinstance(value, str) or len(value) != SETTLEMENT_TOTALS_CHARS or not value.isdigit():
        raise Iso8583Error(
            f"settlement totals must be {SETTLEMENT_TOTALS_CHARS} digits, got {value!r}", field="63"
        )
    return {"debit_count": int(value[0:3]), "debit_fen": int(value[3:15]),
            "credit_count": int(value[15:18]), "credit_fen": int(value[18:30])}  # fmt: skip


def settlement(
    *, terminal: Terminal, stan: int, when: datetime, debit_count: int, debit_fen: int,
    credit_count: int = 0, credit_fen: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """0500 settlement totals of the terminal's batch (F60.2) — the 0510 answers 00 when they agree."""
    fields = _base(KINDS["settlement"], terminal, stan, when)
    fields["63"] = settlement_totals(
        debit_count=debit_count, debit_fen=debit_fen, credit_count=credit_count, credit_fen=credit_fen
    )
    return fields


def reversal(original: dict[str, Any], *, reason: str = "98") -> dict[str, Any]:
    """0400 reversal of a 0100/0200 request: its fields (same STAN), minus PIN and MAC, F39 = reason.

    Reason ``98`` = no response received (timeout), ``06`` = terminal error / card removed.
    """
    kind = classify(original)
    if kind.mti not in ("0100", "0200"):
        raise Iso8583Error(f"cannot reverse a {kind.mti} ({kind.name})", field="t")
    fields = {k: v for k, v in original.items() if k not in ("52", "57", "26", "64", "35")}
    fields.update({"t": "0400", "39": reason})
    return fields


def response(request: dict[str, Any], rc: str, *, kind: Kind | None = None, **extra: Any) -> dict[str, Any]:
    """The response to ``request``: MTI + 10, the echoed fields, F39 = ``rc``, then ``extra``.

    ``extra`` keys are field numbers with an ``f`` prefix, e.g. ``f38="123456"``, ``f55=b"..."``.
    ``kind``: the request's :func:`classify` result when the caller has it already (not checked again).
    """
    if kind is None:
        kind = classify(request)
    fields: dict[str, Any] = {"t": f"{int(kind.mti) + 10:04d}"}
    fields.update({k: request[k] for k in ECHOED if k in request})
    fields["39"] = rc
    for key, value in extra.items():
        if not (key.startswith("f") and key[1:].isdigit()):
            raise ValueError(f"extra field names look like f38, got {key!r}")
        fields[key[1:]] = value
    return fields


def classify(fields: dict[str, Any]) -> Kind:
    """The :class:`Kind` of a request (or, for a response MTI, of its request); validated.

    Raises :class:`Iso8583Error` naming the field when the message fits no kind or lacks a field.
    """
    mti = fields.get("t")
    if not isinstance(mti, str) or len(mti) != 4 or not mti.isdigit():
        raise Iso8583Error(f"bad MTI {mti!r}", field="t")
    request_mti = f"{int(mti) - 10:04d}" if mti[2] in "13" else mti
    f60 = fields.get("60", "")
    candidates = _KINDS_BY_MTI.get(request_mti)
    if not candidates:
        raise Iso8583Error(f"MTI {mti} is not a supported message", field="t")
    if request_mti in ("0800", "0500"):
        matches = [k for k in candidates if f60[8:11] == k.mgmt_code]
        field = "60"
    elif request_mti == "0400":
        matches = candidates
        field = "3"
    else:
        matches = [k for k in candidates if fields.get("3") == k.processing_code]
        field = "3"
    if not matches:
        raise Iso8583Error(f"no {mti} message kind for this field value", field=field)
    kind = matches[0]
    if mti == request_mti:
        missing = [key for key in kind.required if key not in fields]
        if missing:
            raise Iso8583Error(f"{kind.name} request lacks field {missing[0]}", field=missing[0])
        if "4" in fields:
            parse_amount(fields)
    elif "39" not in fields:
        raise Iso8583Error("response lacks a response code", field="39")
    return kind
