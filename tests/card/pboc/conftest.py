"""A personalised PBOC application for scripted-terminal tests, in both suites.

The DGIs of docs/card.md §3 are built here with the real crypto: card keys derived from test IMKs,
a test CA → issuer → ICC certificate chain (RSA or SM2) over the records flagged for ODA, Part 14
files with opening keys. The issuer side of the tests (session keys, ARPC, script MACs) is computed
from the same IMKs, never read back from the card.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from citycard.card.apdu import Command
from citycard.card.pboc import PbocApplication
from citycard.card.sw import CardError
from citycard.crypto import oda, rsa, sm2
from citycard.crypto.capk import generate_test_ca
from citycard.crypto.keys import derive_card_key, key_check_value, session_key
from citycard.crypto.suite import GM, INTL, Suite
from citycard.emv.dol import build_dol
from citycard.emv.tlv import decode_dict, encode_one

h = bytes.fromhex
PAN, PSN = "6231230000000019", "01"
EXPIRY = "301231"
AID_DEBIT = h("A000000333010101")
IMKS = {  # suite → (IMK-AC, IMK-MAC, IMK-ENC)
    "INTL": (
        h("0123456789ABCDEFFEDCBA9876543210"),
        h("FEDCBA98765432100123456789ABCDEF"),
        h("89ABCDEF0123456776543210FEDCBA98"),
    ),
    "GM": (
        h("11223344556677888877665544332211"),
        h("2233445566778899AABBCCDDEEFF0011"),
        h("0F1E2D3C4B5A69788796A5B4C3D2E1F0"),
    ),
}
PIN = "1234"
CAPP_KEYS = (h("404142434445464748494A4B4C4D4E4F"), h("505152535455565758595A5B5C5D5E5F"))
CDOL1 = h("9F02069F03069F1A0295055F2A029A039C019F37049F21039F4E14")
CDOL2 = h("8A02910A9F02069F03069F1A0295055F2A029A039C019F3704")
CONTACT_PDOL = h("9F7A019F02065F2A02DF6901")
QPBOC_PDOL = h("9F66049F02069F03069F1A0295055F2A029A039C019F3704DF6001DF6901")
LOG_FORMAT = h("9A039F21039F02069F03069F1A025F2A029F4E149C019F3602")
LOAD_LOG_FORMAT = h("9A039F21039F1A029F4E149F3602")
AIP = h("7D00")  # SDA, DDA, CVM, terminal risk management, issuer authentication, CDA
CONTACT_AFL = h("0801010110010200")
QPBOC_AFL = CONTACT_AFL + h("18010100")
FIXED_NOW = dt.datetime(2025, 3, 14, 6, 30, tzinfo=dt.UTC)


def tlv(*items: tuple[str, bytes]) -> bytes:
    return b"".join(encode_one(tag, value) for tag, value in items)


def card_keys(suite: Suite) -> tuple[bytes, bytes, bytes]:
    ac, mac, enc = (derive_card_key(imk, tag_5a=PAN, tag_5f34=PSN, suite=suite) for imk in IMKS[suite.name])
    return ac, mac, enc


def issuer_session_key(suite: Suite, which: int, atc: bytes) -> bytes:
    """What the issuer host computes: IMK → card key → PBOC session key (0 AC, 1 MAC, 2 ENC)."""
    return session_key(card_keys(suite)[which], tag_9f36=atc, suite=suite)


@dataclass(frozen=True)
class Pki:
    """A test CA, issuer key and ICC key of one suite (generated once per test session)."""

    suite: Suite
    ca: Any
    issuer_key: rsa.RsaPrivateKey | bytes
    icc_key: rsa.RsaPrivateKey | bytes

    @property
    def icc_public(self) -> oda.PublicKey:
        return oda.PublicKey.of(self.icc_key, self.suite)


@cache
def pki(suite_name: str) -> Pki:
    suite = INTL if suite_name == "INTL" else GM
    ca = generate_test_ca(suite)
    if suite.signature == "rsa":
        return Pki(suite, ca, rsa.generate_rsa_key(1024), rsa.generate_rsa_key(768))
    return Pki(suite, ca, sm2.generate_private_key(), sm2.generate_private_key())


def records(suite: Suite, *, tag_9f69: bytes = h("0100000000000000")) -> dict[int, bytes]:
    """DGI SSRR → 70 template: cardholder data, certificates, the last qPBOC record."""
    keys = pki(suite.name)
    track2 = h(f"{PAN}D{EXPIRY[:4]}2010000000000F".ljust(38, "F")[:38])
    rec_0101 = tlv(
        ("5A", h(PAN)),
        ("5F24", h(EXPIRY)),
        ("5F25", h("200101")),
        ("5F34", h(PSN)),
        ("57", track2),
        ("5F20", b"ZHANG/SAN"),
        ("8E", h("000000000000000042031E031F00")),
        ("9F0D", h("D84000A800")),
        ("9F0E", h("0010000000")),
        ("9F0F", h("D84004F800")),
        ("8C", CDOL1),
        ("8D", CDOL2),
        ("9F49", h("9F3704")),
    )
    static_data = rec_0101 + AIP  # SFI 1–10: the value of 70; then the AIP (9F4A = 82)
    issuer = oda.issuer_certificate(
        keys.ca.private_key,
        oda.PublicKey.of(keys.issuer_key, suite),
        issuer_id=oda.issuer_identifier(PAN),
        expiry="1230",
        serial=h("000001"),
        suite=suite,
    )
    icc = oda.icc_certificate(
        keys.issuer_key,
        keys.icc_public,
        pan=PAN,
        expiry="1230",
        serial=h("000002"),
        static_data=static_data,
        suite=suite,
    )
    issuer_tags = [("8F", bytes([keys.ca.capk.index])), *issuer.as_tags("issuer").items()]
    icc_tags = [*icc.as_tags("icc").items(), ("9F4A", h("82"))]
    return {
        0x0101: encode_one("70", rec_0101),
        0x0201: encode_one("70", tlv(*issuer_tags)),
        0x0202: encode_one("70", tlv(*icc_tags)),
        0x0301: encode_one("70", tlv(("9F74", b"ECC001"), ("9F69", tag_9f69))),
    }


def fci_template(pdol: bytes, *, contactless: bool) -> bytes:
    bf0c = tlv(("9F4D", h("0B0A")), ("DF4D", h("0C0A"))) + (tlv(("DF61", h("01"))) if contactless else b"")
    return tlv(("50", b"PBOC DEBIT"), ("87", h("01")), ("9F38", pdol), ("5F2D", b"zh"), ("BF0C", bf0c))


def risk_data(**overrides: bytes) -> bytes:
    objects = {
        "9F51": h("0156"),
        "9F54": h("000000050000"),
        "9F56": h("00"),
        "9F58": h("03"),
        "9F59": h("05"),
        "9F5C": h("000000100000"),
        "9F77": h("000000100000"),
        "9F78": h("000000020000"),
        "9F6D": h("000000001000"),
        "9F6B": h("000000030000"),
        "9F4F": LOG_FORMAT,
        "DF4F": LOAD_LOG_FORMAT,
        "9F6C": h("2000"),
        "9F63": h("30313233343536373839414243444546"),
        "DF62": h("000000000500"),
    }
    objects.update(overrides)
    return tlv(*((tag, value) for tag, value in objects.items() if value))


def initial_values(*, atc: int = 5, last_online_atc: int = 5, balance_fen: int = 5000) -> bytes:
    return tlv(
        ("9F36", atc.to_bytes(2, "big")),
        ("9F13", last_online_atc.to_bytes(2, "big")),
        ("9F17", h("03")),
        ("9F79", h(f"{balance_fen:012d}")),
        ("DF63", h("000000000000")),
    )


def dgis(
    suite: Suite,
    *,
    suites: tuple[Suite, ...] | None = None,
    risk: dict[str, bytes] | None = None,
    values: dict[str, int] | None = None,
    tag_9f69: bytes = h("0100000000000000"),
) -> list[tuple[int, bytes]]:
    """Every DGI of a debit card with EC, qPBOC and two Part 14 files; certificates of ``suite``."""
    out: list[tuple[int, bytes]] = list(records(suite, tag_9f69=tag_9f69).items())
    out += [
        (0x9102, fci_template(CONTACT_PDOL, contactless=False)),
        (0x9103, fci_template(QPBOC_PDOL, contactless=True)),
        (0x9104, AIP + CONTACT_AFL),
        (0x9105, AIP + QPBOC_AFL),
        (0x0D01, risk_data(**(risk or {}))),
        (0x0E01, initial_values(**(values or {}))),
    ]
    if suites is not None and len(suites) > 1:  # GM's GPO data on a dual-suite card (same records here)
        out += [(0x9106, AIP + CONTACT_AFL), (0x9107, AIP + QPBOC_AFL)]
    for key_suite in suites or (suite,):
        keys = card_keys(key_suite)
        kcvs = b"".join(key_check_value(k, suite=key_suite) for k in keys)
        out += [(0x8000, b"".join(keys)), (0x9000, kcvs)] if key_suite is INTL else []
        out += [(0x8030, b"".join(keys)), (0x9030, kcvs)] if key_suite is GM else []
        icc = pki(key_suite.name).icc_key
        if isinstance(icc, rsa.RsaPrivateKey):
            width = (icc.prime_p.bit_length() + 7) // 8
            parts = (icc.coefficient, icc.exponent_q, icc.exponent_p, icc.prime_q, icc.prime_p)
            out += [(0x8201 + i, part.to_bytes(width, "big")) for i, part in enumerate(parts)]
        else:
            out.append((0x8040, icc))
    out += [
        (0x8010, h(f"2{len(PIN)}{PIN}".ljust(16, "F"))),
        (0x9010, h("0303")),
        (0xA001, h("15010000400000") + h("1E020000200520")),
        (0x8020, b"".join(CAPP_KEYS)),
        (0x9020, b"".join(key_check_value(k, suite=INTL) for k in CAPP_KEYS)),
    ]
    return out


class ScriptedContext:
    """A CardContext with a fixed clock, a deterministic RNG and a record of save() calls."""

    def __init__(self, interface: str = "contact", seed: int = 7) -> None:
        self.interface = interface
        self._random = random.Random(seed)
        self.saves = 0
        self.on_save: Callable[[], None] | None = None
        self.card_blocked = False

    def random_bytes(self, count: int) -> bytes:
        return self._random.randbytes(count)

    def now(self) -> dt.datetime:
        return FIXED_NOW

    def save(self) -> None:
        self.saves += 1
        if self.on_save is not None:
            self.on_save()

    def block_card(self) -> None:
        self.card_blocked = True
        self.save()


class TestSealer:
    """AES-GCM with the item name as associated data (the HSM's card-image key stands in).

    The nonce is derived from name and clear text so equal images compare equal in tests (a real
    sealer draws it at random).
    """

    __test__ = False

    def __init__(self) -> None:
        self._aead = AESGCM(hashlib.sha256(b"citycard test card-image key").digest())

    def seal(self, name: str, clear: bytes) -> dict[str, str]:
        nonce = hashlib.sha256(name.encode() + b"\x00" + clear).digest()[:12]
        sealed = nonce + self._aead.encrypt(nonce, clear, name.encode())
        return {"sealed": sealed.hex(), "kcv": hashlib.sha256(clear).hexdigest()[:6].upper()}

    def open(self, name: str, sealed: dict[str, str]) -> bytes:
        raw = bytes.fromhex(sealed["sealed"])
        return self._aead.decrypt(raw[:12], raw[12:], name.encode())


@dataclass
class Card:
    """The application under test, its context and the terminal's side of the conversation."""

    app: PbocApplication
    ctx: ScriptedContext
    suite: Suite
    sent: list[str] = field(default_factory=list)

    def send(self, apdu: str | bytes) -> tuple[bytes, int]:
        raw = h(apdu.replace(" ", "")) if isinstance(apdu, str) else apdu
        self.sent.append(raw.hex().upper())
        command = Command.parse(raw)
        try:
            response = self.app.process(command, self.ctx)
        except CardError as exc:
            return b"", exc.sw
        return response.data, response.sw

    def select(self, interface: str = "contact") -> int:
        self.ctx.interface = interface
        return self.app.select(self.ctx)

    def personalise(self, items: list[tuple[int, bytes]]) -> None:
        for dgi, data in items:
            self.app.store_data(dgi, data, self.ctx)
        self.app.finish_personalisation(self.ctx)

    # --- the terminal's commands ---------------------------------------------------------------

    def gpo(self, pdol_data: bytes) -> tuple[bytes, int]:
        body = b"\x83" + bytes([len(pdol_data)]) + pdol_data
        return self.send(h("80A80000") + bytes([len(body)]) + body + b"\x00")

    def gpo_contact(self, *, amount: int = 0, ec: bool = False, df69: int | None = None) -> tuple[bytes, int]:
        assert self.select("contact") in (0x9000, 0x6283)
        values = {"9F7A": bytes([int(ec)]), "9F02": h(f"{amount:012d}"), "5F2A": h("0156")}
        values["DF69"] = bytes([self.suite.tag_df69 if df69 is None else df69])
        return self.gpo(build_dol(CONTACT_PDOL, values))

    def qpboc_values(self, *, amount: int, ttq: str = "28000080", df60: int = 0, **more: bytes) -> dict:
        values = {
            "9F66": h(ttq),
            "9F02": h(f"{amount:012d}"),
            "9F03": bytes(6),
            "9F1A": h("0156"),
            "95": bytes(5),
            "5F2A": h("0156"),
            "9A": h("250314"),
            "9C": h("00"),
            "9F37": h("A1B2C3D4"),
            "DF60": bytes([df60]),
            "DF69": bytes([self.suite.tag_df69]),
        }
        values.update(more)
        return values

    def gpo_qpboc(self, **kwargs: Any) -> tuple[bytes, int]:
        assert self.select("contactless") in (0x9000, 0x6283)
        return self.gpo(build_dol(QPBOC_PDOL, self.qpboc_values(**kwargs)))

    def cdol1(self, *, amount: int = 1000, tvr: bytes = bytes(5), un: bytes = h("0BADCAFE")) -> bytes:
        values = {
            "9F02": h(f"{amount:012d}"),
            "9F03": bytes(6),
            "9F1A": h("0156"),
            "95": tvr,
            "5F2A": h("0156"),
            "9A": h("250314"),
            "9C": h("00"),
            "9F37": un,
            "9F21": h("063000"),
            "9F4E": b"CITY BUS LINE 1",
        }
        return build_dol(CDOL1, values)

    def cdol2(
        self, *, arc: bytes = b"00", tag_91: bytes = b"", amount: int = 1000, un: bytes = h("0BADCAFE")
    ) -> bytes:
        values = {
            "8A": arc,
            "91": tag_91,
            "9F02": h(f"{amount:012d}"),
            "9F03": bytes(6),
            "9F1A": h("0156"),
            "95": bytes(5),
            "5F2A": h("0156"),
            "9A": h("250314"),
            "9C": h("00"),
            "9F37": un,
        }
        return build_dol(CDOL2, values)

    def gac(self, p1: int, data: bytes) -> tuple[bytes, int]:
        return self.send(bytes([0x80, 0xAE, p1, 0x00, len(data)]) + data + b"\x00")

    def issuer_key(self, which: int, atc: bytes) -> bytes:
        return issuer_session_key(self.suite, which, atc)


def format1(data: bytes) -> dict[str, bytes]:
    """Split a format-1 GENERATE AC answer 80 (CID ‖ ATC ‖ AC ‖ IAD)."""
    value = decode_dict(data)["80"]
    return {"9F27": value[:1], "9F36": value[1:3], "9F26": value[3:11], "9F10": value[11:]}


def new_card(suite: Suite, **kwargs: Any) -> Card:
    card = Card(PbocApplication(AID_DEBIT), ScriptedContext(), suite)
    card.personalise(dgis(suite, **kwargs))
    return card


@pytest.fixture(params=[INTL, GM], ids=["INTL", "GM"])
def suite(request: pytest.FixtureRequest) -> Suite:
    return request.param


@pytest.fixture
def make_card(suite: Suite) -> Callable[..., Card]:
    """A factory: ``make_card(risk={...}, values={...})`` → a freshly personalised card."""

    def make(**kwargs: Any) -> Card:
        return new_card(suite, **kwargs)

    return make


@pytest.fixture
def card(make_card: Callable[..., Card]) -> Card:
    return make_card()


@pytest.fixture
def sealer() -> TestSealer:
    return TestSealer()


@pytest.fixture
def kit() -> Any:
    """This module: its constants and issuer-side helpers for the tests."""
    return sys.modules[__name__]
