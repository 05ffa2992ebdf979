"""The personalised data of a PBOC application, and the tables that say who may read or write it.

Everything here is data the issuer put on the card (docs/card.md §3): the TLV data objects of DGIs
0D01/0E01, the AFL records (whole ``70`` templates), the FCI proprietary templates (9102/9103) and the
GPO data AIP‖AFL per interface and suite (9104/9105, and 9106/9107 on a card with both suites). What
GET DATA answers and what PUT DATA may change are tables, not branches (JR/T 0025.5 GET DATA / PUT
DATA; pboc-notes §2.1, §3).

GPO data (docs/card.md §3): 9104 (contact) and 9105 (contactless) serve a single-suite card's only
suite, and the INTL suite on a card that holds both suites' keys; 9106 (contact) and 9107
(contactless) serve the GM suite on such a card. They are stored under :func:`gpo_key` names
(``contact``, ``contactless``, ``contact/GM``, ``contactless/GM``); which set a transaction uses is
:meth:`CardData.gpo_for`.

Money is integer fen; on the wire it is n12 BCD (6 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from citycard.card import sw
from citycard.card.sw import CardError
from citycard.crypto.suite import GM
from citycard.emv.tlv import TLV, TLVError, decode, decode_one

AIDS = {  # the PBOC AIDs the application serves (pboc-notes §2.3)
    bytes.fromhex("A000000333010101"): "debit",
    bytes.fromhex("A000000333010102"): "credit",
    bytes.fromhex("A000000333010106"): "electronic cash",
}
N12_FEN_MAX = 999_999_999_999
SFI_MIN, SFI_MAX = 1, 30  # Book 3 §5.3.2: AEF short file identifiers 1–30
RECORD_MAX = 0xFE
RECORD_BYTES_MAX = 254  # a READ RECORD answer with its 70 template fits one short R-APDU

# Data objects GET DATA answers (80 CA P1P2). Values kept by the state (ATC, …) come from there;
# the rest is answered only when personalised (pboc-notes §3 GET DATA; Part 13, Part 14).
GET_DATA_TAGS: tuple[str, ...] = (
    "9F79",  # EC balance (state)
    "9F77",  # EC balance limit
    "9F78",  # EC single transaction limit
    "9F6D",  # EC reset threshold
    "9F13",  # last online ATC register (state)
    "9F17",  # PIN try counter (state)
    "9F36",  # ATC (state)
    "9F4F",  # transaction log format
    "DF4F",  # EC load log format
    "9F51",  # application currency code
    "9F52",  # application default action
    "9F53",  # consecutive transaction limit (international)
    "9F54",  # cumulative total transaction amount limit
    "9F55",
    "9F56",  # issuer authentication indicator
    "9F57",  # issuer country code
    "9F58",  # lower consecutive offline limit
    "9F59",  # upper consecutive offline limit
    "DF62",  # segmented charging deduction limit (Part 14)
    "DF63",  # segmented charging amount deducted (Part 14)
)

# Data objects an issuer script PUT DATA (04 DA P1P2) may set, with their exact value length.
# 9F79 is the EC top-up (圈存, absolute new balance, handled apart); the others are limits the
# issuer may change (pboc-notes §6: "the issuer can also reset 9F77/9F78/9F6D by PUT DATA").
PUT_DATA_TAGS: dict[str, int] = {
    "9F79": 6,
    "9F77": 6,
    "9F78": 6,
    "9F6D": 6,
    "9F6B": 6,  # card CVM limit (PBOC 3.0: updatable)
    "9F54": 6,
    "9F5C": 6,
    "9F58": 1,
    "9F59": 1,
}
MONEY_TAGS = frozenset({"9F79", "9F77", "9F78", "9F6D", "9F6B", "9F54", "9F5C", "DF62", "DF63"})

INTERFACES = ("contact", "contactless")
GM_GPO = GM.name  # the suite 9106/9107 serve (on a card with both suites)
GPO_DGIS: dict[int, tuple[str, str | None]] = {  # DGI → (interface, None: 9104/9105 | "GM")
    0x9104: ("contact", None),
    0x9105: ("contactless", None),
    0x9106: ("contact", GM_GPO),
    0x9107: ("contactless", GM_GPO),
}

# Tags that must never sit in an AFL record (pboc-notes §2.1: 9F79 is read with GET DATA only).
FORBIDDEN_IN_RECORDS = frozenset({"9F79"})


def n12(amount_fen: int) -> bytes:
    """An amount in fen as n12 BCD (6 bytes).

    >>> n12(12_345).hex()
    '000000012345'
    """
    if not 0 <= amount_fen <= N12_FEN_MAX:
        raise ValueError(f"amount must be 0 to {N12_FEN_MAX} fen, got {amount_fen}")
    return bytes.fromhex(f"{amount_fen:012d}")


def fen(value: bytes, *, tag: str) -> int:
    """An n12 BCD amount as integer fen; a value that is not 6 BCD bytes is wrong data (6A80).

    >>> fen(bytes.fromhex("000000012345"), tag="9F02")
    12345
    """
    text = value.hex()
    if len(value) != 6 or not text.isdigit():
        raise CardError(sw.WRONG_DATA, f"{tag} must be 6 bytes of BCD digits (n12), got {text.upper()}")
    return int(text)


def parse_tlv_list(data: bytes, *, dgi: int) -> list[TLV]:
    """The data objects of a TLV DGI; malformed BER-TLV is wrong data (6A80)."""
    try:
        return decode(data)
    except TLVError as exc:
        raise CardError(sw.WRONG_DATA, f"DGI {dgi:04X}: {exc}") from exc


def primitive_objects(objects: list[TLV]) -> dict[str, bytes]:
    """Every primitive object at any depth, first occurrence wins (templates dissolved)."""
    out: dict[str, bytes] = {}
    stack = list(reversed(objects))
    while stack:
        obj = stack.pop()
        if obj.children is None:
            out.setdefault(obj.tag, obj.value)
        else:
            stack.extend(reversed(obj.children))
    return out


@dataclass
class CardData:
    """What personalisation stored: data objects, records, FCI templates and GPO data."""

    objects: dict[str, bytes] = field(default_factory=dict)  # 0D01 / 0E01 TLVs (PUT DATA updates them)
    records: dict[tuple[int, int], bytes] = field(default_factory=dict)  # (SFI, record) → 70 template
    fci: dict[str, bytes] = field(default_factory=dict)  # interface → value of A5 (9102 / 9103)
    gpo: dict[str, bytes] = field(default_factory=dict)  # gpo_key → AIP ‖ AFL (9104 / 9105 / 9106 / 9107)
    _index: dict[str, bytes] | None = field(default=None, repr=False, compare=False)

    # --- personalisation ---------------------------------------------------------------------

    def store_record(self, sfi: int, record: int, template: bytes) -> None:
        """DGI SSRR: one AEF record, the whole ``70 L …`` template (CPS)."""
        if not SFI_MIN <= sfi <= SFI_MAX or not 1 <= record <= RECORD_MAX:
            raise CardError(sw.WRONG_DATA, f"record DGI {sfi:02X}{record:02X}: SFI 1–30 and record 1–254")
        if len(template) > RECORD_BYTES_MAX:
            raise CardError(
                sw.WRONG_DATA, f"record {sfi}/{record} is {len(template)} bytes, at most {RECORD_BYTES_MAX}"
            )
        try:
            obj = decode_one(template, tag="70")
        except TLVError as exc:
            raise CardError(sw.WRONG_DATA, f"record {sfi}/{record} must be one 70 template: {exc}") from exc
        forbidden = FORBIDDEN_IN_RECORDS & set(primitive_objects([obj]))
        if forbidden:
            raise CardError(sw.WRONG_DATA, f"record {sfi}/{record} holds {sorted(forbidden)}: GET DATA only")
        self.records[sfi, record] = template
        self._index = None

    def store_objects(self, data: bytes, *, dgi: int) -> None:
        """DGI 0D01 / 0E01: data objects as TLV (card risk data, GET DATA objects, initial values)."""
        for obj in parse_tlv_list(data, dgi=dgi):
            if obj.children is not None:
                raise CardError(
                    sw.WRONG_DATA, f"DGI {dgi:04X}: {obj.tag} is a template, expected data objects"
                )
            self.objects[obj.tag] = obj.value
        self._index = None

    def set_object(self, tag: str, value: bytes) -> None:
        """PUT DATA: replace one data object's value."""
        self.objects[tag] = value
        self._index = None

    def store_fci(self, interface: str, data: bytes, *, dgi: int) -> None:
        """DGI 9102 / 9103: the value of the FCI proprietary template A5."""
        parse_tlv_list(data, dgi=dgi)
        self.fci[interface] = data
        self._index = None

    def store_gpo(self, dgi: int, data: bytes) -> None:
        """DGI 9104–9107: AIP (2) ‖ AFL (4 bytes an entry, SFI in b8–b4 of the first byte).

        Stored under its interface and, for 9106/9107, the GM suite (module note); which suite
        9104/9105 serve is known only once the keys are in (:meth:`gpo_for`).
        """
        interface, suite = GPO_DGIS[dgi]
        if len(data) < 6 or (len(data) - 2) % 4:
            raise CardError(sw.WRONG_DATA, f"DGI {dgi:04X} must be AIP (2) ‖ AFL (4n), got {len(data)} bytes")
        for sfi, first, last, oda in afl_entries(data[2:]):
            if not SFI_MIN <= sfi <= SFI_MAX or not 1 <= first <= last or oda > last - first + 1:
                raise CardError(sw.WRONG_DATA, f"DGI {dgi:04X}: bad AFL entry SFI {sfi} {first}–{last}/{oda}")
        self.gpo[gpo_key(interface, suite)] = data

    def gpo_for(self, interface: str, suite: str, *, dual: bool) -> bytes | None:
        """AIP ‖ AFL that the GPO on ``interface`` answers for a transaction in ``suite``.

        ``dual``: the card holds both suites' keys; then GM uses 9106/9107 and INTL 9104/9105,
        otherwise 9104/9105 serve the card's only suite (docs/card.md §3).

        >>> data = CardData(gpo={"contact": b"I", "contact/GM": b"G"})
        >>> data.gpo_for("contact", "GM", dual=True), data.gpo_for("contact", "GM", dual=False)
        (b'G', b'I')
        """
        return self.gpo.get(gpo_key(interface, GM_GPO if dual and suite == GM_GPO else None))

    # --- lookup ------------------------------------------------------------------------------

    def tag(self, tag: str) -> bytes | None:
        """A data object's value: the 0D01/0E01 objects first, then the records, then the FCIs."""
        value = self.objects.get(tag)
        if value is not None:
            return value
        if self._index is None:
            index: dict[str, bytes] = {}
            for key in sorted(self.records):
                for name, found in primitive_objects(decode(self.records[key])).items():
                    index.setdefault(name, found)
            for interface in INTERFACES:
                for name, found in primitive_objects(decode(self.fci.get(interface, b""))).items():
                    index.setdefault(name, found)
            self._index = index
        return self._index.get(tag)

    def fci_tag(self, interface: str, tag: str) -> bytes | None:
        """A data object inside one interface's FCI proprietary template (9F38, 9F4D, DF61, …)."""
        return primitive_objects(decode(self.fci.get(interface, b""))).get(tag)

    def record_holding(self, tag: str) -> tuple[int, int] | None:
        """(SFI, record) of the first record that holds ``tag`` at its top level."""
        for key in sorted(self.records):
            if any(obj.tag == tag for obj in decode_one(self.records[key]).children or ()):
                return key
        return None

    def money(self, tag: str) -> int | None:
        value = self.tag(tag)
        return None if value is None else fen(value, tag=tag)

    def byte(self, tag: str) -> int | None:
        value = self.tag(tag)
        return value[0] if value else None

    # --- image -------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "objects": {tag: value.hex().upper() for tag, value in self.objects.items()},
            "records": {f"{s:02X}{r:02X}": value.hex().upper() for (s, r), value in self.records.items()},
            "fci": {name: value.hex().upper() for name, value in self.fci.items()},
            "gpo": {name: value.hex().upper() for name, value in self.gpo.items()},
        }

    @classmethod
    def from_json(cls, image: dict[str, Any]) -> CardData:
        unknown = set(image["gpo"]) - {gpo_key(i, s) for i, s in GPO_DGIS.values()}
        if unknown:
            raise ValueError(f"card image: unknown GPO data {sorted(unknown)}")
        return cls(
            objects={tag: bytes.fromhex(value) for tag, value in image["objects"].items()},
            records={
                (int(key[:2], 16), int(key[2:], 16)): bytes.fromhex(value)
                for key, value in image["records"].items()
            },
            fci={name: bytes.fromhex(value) for name, value in image["fci"].items()},
            gpo={name: bytes.fromhex(value) for name, value in image["gpo"].items()},
        )


def gpo_key(interface: str, suite: str | None) -> str:
    """The name GPO data is stored under: ``contact`` (9104), …, ``contactless/GM`` (9107).

    >>> [gpo_key(interface, suite) for interface, suite in GPO_DGIS.values()]
    ['contact', 'contactless', 'contact/GM', 'contactless/GM']
    """
    return interface if suite is None else f"{interface}/{suite}"


def gpo_dgi(key: str) -> int:
    """The DGI of GPO data stored under ``key`` (for messages).

    >>> f"{gpo_dgi('contactless/GM'):04X}"
    '9107'
    """
    return next(dgi for dgi, (interface, suite) in GPO_DGIS.items() if gpo_key(interface, suite) == key)


def afl_entries(afl: bytes) -> list[tuple[int, int, int, int]]:
    """AFL entries as (SFI, first record, last record, records for ODA) (Book 3 §10.2).

    >>> afl_entries(bytes.fromhex("0801010110010200"))
    [(1, 1, 1, 1), (2, 1, 2, 0)]
    """
    return [(afl[i] >> 3, afl[i + 1], afl[i + 2], afl[i + 3]) for i in range(0, len(afl), 4)]
