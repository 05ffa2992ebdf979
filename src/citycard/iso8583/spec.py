"""CUPS-style ISO 8583:1987 POS specification as plain data for ``pyiso8583`` (pboc-notes §10).

Choices, following the UnionPay POS field document [S24] as summarised in pboc-notes §10:

* MTI: n4 packed BCD (2 bytes). Primary bitmap: 8 binary bytes (no secondary bitmap in use, but
  field 1 is specified so a message that sets bit 1 decodes instead of failing on a missing spec).
* Numeric fields (``fmt`` ``n``): packed BCD, length counted in digits (nibbles); fixed odd-length
  fields are left-padded with ``0`` (e.g. F22 ``051`` → ``0051``); variable ones (F2, F32, F33, F35,
  F60) are right-padded with ``0`` and carry a BCD length prefix counting digits. This is the common
  CUPS POS usage; UNCERTAIN against the current CUPS spec (pboc-notes §10 asks for verification).
* F35 track 2 is ``z`` (digits and the ``D`` separator) packed like ``n``.
* Alphanumeric fields (``an``/``ans``): ASCII; F37, F38, F39, F41, F42, F49, F63.
* Binary fields: F52 PIN block and F64 MAC (8 bytes each); F55 IC data and F62 are LLLVAR binary
  with a 2-byte BCD length counting bytes; F55 is at most :data:`F55_MAX_BYTES` (CUPS: b...255).
* F57 (ISO 8583:1987 "reserved national"): the 16-byte SM4-enciphered PIN block of a GM terminal,
  which does not fit F52 (b64). Our choice — UNCERTAIN against the CUPS GM interface.
* No TPDU/header: the 2-byte length framing (:mod:`citycard.iso8583.framing`) wraps the MTI directly.

Each field is one line of data. ``fmt`` is ours (pyiso8583 ignores it): the character class the
message layer checks, because BCD decoding alone accepts the nibbles A–F.
"""

from __future__ import annotations

from typing import Any

F55_MAX_BYTES = 255  # CUPS POS: b...255; an issuer response with long scripts must split them


def _fixed_n(digits: int, desc: str) -> dict[str, Any]:
    return {"fmt": "n", "data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": digits,
            "len_count": "nibbles", "left_pad": "0", "desc": desc}  # fmt: skip


def _llvar_n(digits: int, desc: str, fmt: str = "n") -> dict[str, Any]:
    return {"fmt": fmt, "data_enc": "b", "len_enc": "bcd", "len_type": 1, "max_len": digits,
            "len_count": "nibbles", "right_pad": "0", "desc": desc}  # fmt: skip


def _lllvar_n(digits: int, desc: str) -> dict[str, Any]:
    return {"fmt": "n", "data_enc": "b", "len_enc": "bcd", "len_type": 2, "max_len": digits,
            "len_count": "nibbles", "right_pad": "0", "desc": desc}  # fmt: skip


def _fixed_a(size: int, desc: str, fmt: str = "an") -> dict[str, Any]:
    return {"fmt": fmt, "data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": size, "desc": desc}


def _lllvar_a(size: int, desc: str) -> dict[str, Any]:
    return {"fmt": "ans", "data_enc": "ascii", "len_enc": "bcd", "len_type": 2, "max_len": size, "desc": desc}


def _fixed_b(size: int, desc: str) -> dict[str, Any]:
    return {"fmt": "b", "data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": size, "desc": desc}


def _lllvar_b(size: int, desc: str) -> dict[str, Any]:
    return {"fmt": "b", "data_enc": "b", "len_enc": "bcd", "len_type": 2, "max_len": size, "desc": desc}


CUPS_POS: dict[str, dict[str, Any]] = {
    "h": {"fmt": "b", "data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 0, "desc": "Header (none)"},
    "t": {"fmt": "n", "data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 2, "desc": "MTI n4 BCD"},
    "p": _fixed_b(8, "Primary bitmap"),
    "1": _fixed_b(8, "Secondary bitmap"),
    "2": _llvar_n(19, "Primary account number n..19"),
    "3": _fixed_n(6, "Processing code n6"),
    "4": _fixed_n(12, "Amount, transaction n12 (fen)"),
    "7": _fixed_n(10, "Transmission date and time n10 MMDDhhmmss UTC"),
    "11": _fixed_n(6, "System trace audit number n6"),
    "12": _fixed_n(6, "Time, local transaction n6 hhmmss"),
    "13": _fixed_n(4, "Date, local transaction n4 MMDD"),
    "14": _fixed_n(4, "Date, expiration n4 YYMM"),
    "15": _fixed_n(4, "Date, settlement n4 MMDD"),
    "22": _fixed_n(3, "POS entry mode n3 (05x contact IC, 07x contactless, 02x magstripe)"),
    "23": _fixed_n(3, "Card sequence number n3 (= 5F34)"),
    "25": _fixed_n(2, "POS condition code n2"),
    "26": _fixed_n(2, "POS PIN capture code n2"),
    "32": _llvar_n(11, "Acquiring institution ID n..11"),
    "33": _llvar_n(11, "Forwarding institution ID n..11"),
    "35": _llvar_n(37, "Track 2 data z..37", fmt="z"),
    "37": _fixed_a(12, "Retrieval reference number an12"),
    "38": _fixed_a(6, "Authorisation ID response an6"),
    "39": _fixed_a(2, "Response code an2"),
    "41": _fixed_a(8, "Card acceptor terminal ID ans8", fmt="ans"),
    "42": _fixed_a(15, "Card acceptor ID ans15", fmt="ans"),
    "44": {**_fixed_a(25, "Additional response data ans..25", fmt="ans"), "len_enc": "bcd", "len_type": 1},
    "49": _fixed_a(3, "Currency code, transaction an3 (156 = CNY)"),
    "52": _fixed_b(8, "PIN data b64"),
    "53": _fixed_n(16, "Security related control information n16"),
    "54": _lllvar_a(20, "Additional amounts an...020 (balance)"),
    "55": _lllvar_b(F55_MAX_BYTES, "IC card data b...255 (BER-TLV)"),
    "57": _lllvar_b(16, "Reserved national b...16: SM4 PIN block of GM terminals (ours, UNCERTAIN)"),
    "60": _lllvar_n(17, "Reserved private n...017 (60.1 type, 60.2 batch, 60.3 network mgmt code)"),
    "61": _lllvar_n(29, "Original message data n...029 (batch, STAN, date)"),
    "62": _lllvar_b(512, "Reserved private b...512 (key exchange data)"),
    "63": _lllvar_a(63, "Reserved private ans...063"),
    "64": _fixed_b(8, "Message authentication code b64"),
}
"""The CUPS POS spec: BCD numerics, binary bitmap, ASCII text, binary F52/F55/F64."""


FMT_CHARS = {  # allowed characters per fmt (checked by the message layer on both sides)
    "n": frozenset("0123456789"),
    "z": frozenset("0123456789D"),
    "an": None,  # printable ASCII checked generically
    "ans": None,
    "b": None,
}
