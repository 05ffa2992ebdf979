"""Personalisation of the PBOC application: the DGIs of docs/card.md §3, and the secrets they carry.

The OS has already deciphered encrypted DGIs (8000, 8030, 8010, 8201–8205, 8040, 8020). Each DGI is
checked here (lengths, KCVs, key consistency); an unknown DGI is 6A88, a malformed one 6A80, both
with the reason. :func:`check_complete` is what ``finish_personalisation`` runs.

A card may hold both suites' keys (8000/9000 and 8030/9030, with 8201–8205 and 8040); the terminal's
DF69 then chooses the suite per transaction (:func:`citycard.card.pboc.gpo.choose_suite`). The GPO
data follows the suite (docs/card.md §3): on such a card 9104/9105 are the contact/contactless
AIP‖AFL of INTL and 9106/9107 those of GM, and personalisation completes only when every interface
that has GPO data has it for both suites, with each suite's ICC private key when its AIP announces
DDA/CDA. On a single-suite card 9104/9105 serve its only suite and 9106/9107 are refused.
"""

from __future__ import annotations

import hmac
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from citycard.card import sw
from citycard.card.application import Sealer
from citycard.card.pboc.data import GPO_DGIS, INTERFACES, afl_entries, fen, gpo_dgi, gpo_key, parse_tlv_list
from citycard.card.sw import CardError
from citycard.crypto import rsa, sm2
from citycard.crypto.keys import key_check_value
from citycard.crypto.suite import GM, INTL, SUITES, Suite
from citycard.emv.bits import AIP

if TYPE_CHECKING:
    from citycard.card.pboc.application import PbocApplication

KEY_DGIS = {0x8000: (INTL, 0x9000), 0x8030: (GM, 0x9030)}  # keys DGI → (suite, KCV DGI)
KCV_DGIS = {kcv: (suite, keys) for keys, (suite, kcv) in KEY_DGIS.items()}
RSA_DGIS = {0x8201: "qinv", 0x8202: "dq", 0x8203: "dp", 0x8204: "q", 0x8205: "p"}  # CPS CRT order
KCV_BYTES = 3
KEY_ROLES = ("AC", "MAC", "ENC")  # sealed as keys/<INTL|GM>/<role>: the HSM sealer shows their KCVs
PIN_BLOCK_BYTES = 8
PIN_DIGITS_MIN, PIN_DIGITS_MAX = 4, 12


@dataclass
class Secrets:
    """Clear secrets while the application runs; sealed by the HSM in the card image."""

    keys: dict[str, tuple[bytes, bytes, bytes]] = field(default_factory=dict)  # suite → AC, MAC, ENC
    kcvs: dict[str, bytes] = field(default_factory=dict)  # suite → 9 KCV bytes from 9000 / 9030
    pin_block: bytes | None = None  # ISO 9564 format 2
    rsa_parts: dict[str, int] = field(default_factory=dict)
    rsa_key: rsa.RsaPrivateKey | None = None
    sm2_key: bytes | None = None

    def suites(self) -> list[Suite]:
        return [suite for suite in SUITES if suite.name in self.keys]

    def icc_key(self, suite: Suite) -> rsa.RsaPrivateKey | bytes | None:
        return self.rsa_key if suite.signature == "rsa" else self.sm2_key

    def to_image(self, sealer: Sealer) -> dict[str, Any]:
        items: dict[str, bytes] = {
            f"keys/{name}/{role}": key
            for name, keys in self.keys.items()
            for role, key in zip(KEY_ROLES, keys, strict=True)
        }
        if self.pin_block is not None:
            items["pin"] = self.pin_block
        for name, value in self.rsa_parts.items():
            items[f"icc-rsa/{name}"] = value.to_bytes((value.bit_length() + 7) // 8, "big")
        if self.sm2_key is not None:
            items["icc-sm2"] = self.sm2_key
        return {
            "sealed": {name: sealer.seal(name, clear) for name, clear in items.items()},
            "kcvs": {name: value.hex().upper() for name, value in self.kcvs.items()},
        }

    @classmethod
    def from_image(cls, image: dict[str, Any], sealer: Sealer) -> Secrets:
        secrets = cls(kcvs={name: bytes.fromhex(value) for name, value in image["kcvs"].items()})
        parts: dict[str, list[bytes]] = defaultdict(lambda: [b"", b"", b""])
        for name, sealed in image["sealed"].items():
            clear = sealer.open(name, sealed)
            kind, _, rest = name.partition("/")
            if kind == "keys":
                suite_name, _, role = rest.partition("/")
                parts[suite_name][KEY_ROLES.index(role)] = clear
            elif kind == "pin":
                secrets.pin_block = clear
            elif kind == "icc-rsa":
                secrets.rsa_parts[rest] = int.from_bytes(clear, "big")
            elif kind == "icc-sm2":
                secrets.sm2_key = clear
            else:
                raise ValueError(f"card image: unknown sealed item {name!r}")
        for suite_name, (ac, mac, enc) in parts.items():
            if not (ac and mac and enc):
                raise ValueError(f"card image: {suite_name} card keys incomplete")
            secrets.keys[suite_name] = (ac, mac, enc)
        if secrets.rsa_parts:
            secrets.rsa_key = rsa_from_crt(secrets.rsa_parts)
        return secrets


def kcvs_of(keys: tuple[bytes, bytes, bytes], suite: Suite) -> bytes:
    return b"".join(key_check_value(key, suite=suite, length=KCV_BYTES) for key in keys)


def rsa_from_crt(parts: dict[str, int]) -> rsa.RsaPrivateKey:
    """The ICC RSA key from its CRT DGIs; e is recovered as dp⁻¹ mod (p − 1) (3 or 65537)."""
    p, q, dp = parts["p"], parts["q"], parts["dp"]
    try:
        exponent = pow(dp, -1, p - 1)
        key = rsa.RsaPrivateKey.from_numbers(p=p, q=q, e=exponent)
    except (ValueError, rsa.RSAError) as exc:
        raise CardError(sw.WRONG_DATA, f"ICC RSA key (8201–8205) is inconsistent: {exc}") from exc
    if exponent not in rsa.PUBLIC_EXPONENTS:
        raise CardError(sw.WRONG_DATA, f"ICC RSA key: public exponent {exponent} is neither 3 nor 65537")
    if (key.exponent_q, key.coefficient) != (parts["dq"], parts["qinv"]):
        raise CardError(sw.WRONG_DATA, "ICC RSA key: d mod (q−1) or q⁻¹ mod p does not match p, q, dp")
    return key


def pin_digits(pin_block: bytes) -> str:
    """The PIN of an ISO 9564 format 2 block ``2N PIN F…``; ValueError when it is not one."""
    text = pin_block.hex().upper()
    count = int(text[1], 16) if len(text) == 16 and text[0] == "2" else 0
    digits, pad = text[2 : 2 + count], text[2 + count :]
    if not PIN_DIGITS_MIN <= count <= PIN_DIGITS_MAX or not digits.isdigit() or set(pad) - {"F"}:
        raise ValueError("not an ISO 9564 format 2 PIN block (2N ‖ PIN ‖ F…)")
    return digits


def pin_block_of(digits: str) -> bytes:
    """ISO 9564 format 2 block for a PIN of 4–12 digits."""
    if not digits.isdigit() or not PIN_DIGITS_MIN <= len(digits) <= PIN_DIGITS_MAX:
        raise ValueError(f"PIN must be {PIN_DIGITS_MIN} to {PIN_DIGITS_MAX} digits")
    return bytes.fromhex(f"2{len(digits):X}{digits}".ljust(16, "F"))


# --- DGI handlers ----------------------------------------------------------------------------


def _keys(app: PbocApplication, dgi: int, data: bytes) -> None:
    suite, _ = KEY_DGIS[dgi]
    if len(data) != 48:
        raise CardError(
            sw.WRONG_DATA, f"DGI {dgi:04X}: {suite.cipher} keys AC‖MAC‖ENC are 48 bytes, got {len(data)}"
        )
    keys = (data[:16], data[16:32], data[32:48])
    kcvs = app.secrets.kcvs.get(suite.name)
    if kcvs is not None and not hmac.compare_digest(kcvs_of(keys, suite), kcvs):
        raise CardError(
            sw.WRONG_DATA, f"DGI {dgi:04X}: key check values do not match DGI {KEY_DGIS[dgi][1]:04X}"
        )
    app.secrets.keys[suite.name] = keys


def _kcvs(app: PbocApplication, dgi: int, data: bytes) -> None:
    suite, keys_dgi = KCV_DGIS[dgi]
    if len(data) != 3 * KCV_BYTES:
        raise CardError(sw.WRONG_DATA, f"DGI {dgi:04X}: three 3-byte KCVs, got {len(data)} bytes")
    keys = app.secrets.keys.get(suite.name)
    if keys is not None and not hmac.compare_digest(kcvs_of(keys, suite), data):
        raise CardError(sw.WRONG_DATA, f"DGI {dgi:04X}: key check values do not match DGI {keys_dgi:04X}")
    app.secrets.kcvs[suite.name] = data


def _pin(app: PbocApplication, dgi: int, data: bytes) -> None:
    try:
        pin_digits(data)
    except ValueError as exc:
        raise CardError(sw.WRONG_DATA, f"DGI 8010: {exc}") from exc
    app.secrets.pin_block = data


def _pin_counters(app: PbocApplication, dgi: int, data: bytes) -> None:
    if len(data) != 2 or not 1 <= data[0] <= 15 or data[1] > data[0]:
        raise CardError(sw.WRONG_DATA, "DGI 9010: PIN try limit (1–15) ‖ counter (≤ limit)")
    app.counters.pin_try_limit, app.counters.pin_tries_left = data[0], data[1]


def _rsa_part(app: PbocApplication, dgi: int, data: bytes) -> None:
    if not data:
        raise CardError(sw.WRONG_DATA, f"DGI {dgi:04X}: an RSA CRT component, got {len(data)} bytes")
    app.secrets.rsa_parts[RSA_DGIS[dgi]] = int.from_bytes(data, "big")
    if len(app.secrets.rsa_parts) == len(RSA_DGIS):
        app.secrets.rsa_key = rsa_from_crt(app.secrets.rsa_parts)


def _sm2(app: PbocApplication, dgi: int, data: bytes) -> None:
    try:
        sm2.public_key(data)
    except (ValueError, sm2.SM2Error) as exc:
        raise CardError(sw.WRONG_DATA, f"DGI 8040: not an SM2 private key: {exc}") from exc
    app.secrets.sm2_key = data


def _risk_data(app: PbocApplication, dgi: int, data: bytes) -> None:
    app.data.store_objects(data, dgi=dgi)


INITIAL_VALUES = {"9F36": "atc", "9F13": "last_online_atc", "9F17": "pin_tries_left"}


def _initial_values(app: PbocApplication, dgi: int, data: bytes) -> None:
    """0E01: counters go to the state, 9F79 to the EC balance, the rest (DF63 …) to the objects."""
    rest = b""
    for obj in parse_tlv_list(data, dgi=dgi):
        if obj.tag in INITIAL_VALUES:
            setattr(app.counters, INITIAL_VALUES[obj.tag], int.from_bytes(obj.value, "big"))
        elif obj.tag == "9F79":
            app.counters.ec_balance_fen = fen(obj.value, tag="9F79")
        else:
            rest += bytes.fromhex(obj.tag) + bytes([len(obj.value)]) + obj.value
    app.data.store_objects(rest, dgi=dgi)


def _fci(app: PbocApplication, dgi: int, data: bytes) -> None:
    app.data.store_fci("contact" if dgi == 0x9102 else "contactless", data, dgi=dgi)


def _gpo(app: PbocApplication, dgi: int, data: bytes) -> None:
    app.data.store_gpo(dgi, data)


def _capp(app: PbocApplication, dgi: int, data: bytes) -> None:
    app.capp.store_dgi(dgi, data)


HANDLERS: dict[int, Callable[[PbocApplication, int, bytes], None]] = {
    0x0D01: _risk_data,
    0x0E01: _initial_values,
    0x9102: _fci,
    0x9103: _fci,
    **dict.fromkeys(GPO_DGIS, _gpo),  # 9104–9107
    0x8000: _keys,
    0x8030: _keys,
    0x9000: _kcvs,
    0x9030: _kcvs,
    0x8010: _pin,
    0x9010: _pin_counters,
    **dict.fromkeys(RSA_DGIS, _rsa_part),
    0x8040: _sm2,
    0xA001: _capp,
    0x8020: _capp,
    0x9020: _capp,
}


def store_dgi(app: PbocApplication, dgi: int, data: bytes) -> None:
    """Take one deciphered DGI (docs/card.md §3)."""
    handler = HANDLERS.get(dgi)
    if handler is not None:
        handler(app, dgi, data)
    elif 0x01 <= dgi >> 8 <= 0x1E and dgi & 0xFF:
        app.data.store_record(dgi >> 8, dgi & 0xFF, data)
    else:
        raise CardError(sw.REFERENCED_DATA_NOT_FOUND, f"DGI {dgi:04X} is not one the PBOC application takes")


def check_complete(app: PbocApplication) -> None:
    """What finish_personalisation checks; 6985 with every missing piece named."""
    problems = []
    secrets = app.secrets
    if not secrets.keys:
        problems.append("no card keys (8000 or 8030)")
    for name in secrets.keys:
        if name not in secrets.kcvs:
            problems.append(f"{name} keys without their KCVs (9000/9030)")
    if not any(interface in app.data.gpo for interface in INTERFACES):
        problems.append("no GPO data (9104 or 9105)")
    problems += _gpo_suite_problems(app)
    for key, gpo in app.data.gpo.items():
        where = f"{key.replace('/', ' ')} AFL ({gpo_dgi(key):04X})"  # e.g. "contact GM AFL (9106)"
        for sfi, first, last, _ in afl_entries(gpo[2:]):
            missing = [r for r in range(first, last + 1) if (sfi, r) not in app.data.records]
            if missing:
                problems.append(f"{where} names SFI {sfi} records {missing} that were not stored")
    if "contact" in app.data.gpo and (app.data.tag("8C") is None or app.data.tag("8D") is None):
        problems.append("contact path without CDOL1 (8C) and CDOL2 (8D) in the records")
    for tag in ("5A", "5F34"):
        if app.data.tag(tag) is None:
            problems.append(f"no {tag} in the records")
    if secrets.rsa_parts and secrets.rsa_key is None:
        problems.append("ICC RSA key incomplete (8201–8205)")
    dual = len(secrets.suites()) > 1
    for suite in secrets.suites():
        announced = [
            interface
            for interface in INTERFACES
            if (gpo := app.data.gpo_for(interface, suite.name, dual=dual)) is not None
            and any(AIP.new(gpo[:2]).is_set(bit) for bit in ("dda_supported", "cda_supported"))
        ]
        if announced and secrets.icc_key(suite) is None:
            dgis = "8201–8205" if suite.signature == "rsa" else "8040"
            problems.append(
                f"the {suite.name} AIP ({' and '.join(announced)}) announces DDA/CDA but there is no "
                f"{suite.signature.upper()} ICC private key ({dgis})"
            )
    if app.counters.ec_balance_fen is not None and app.data.tag("9F77") is None:
        problems.append("EC balance (9F79) without an EC balance limit (9F77)")
    problems += app.capp.problems()
    if problems:
        raise CardError(sw.CONDITIONS_NOT_SATISFIED, "personalisation incomplete: " + "; ".join(problems))


def _gpo_suite_problems(app: PbocApplication) -> list[str]:
    """GPO data per suite (module note): both suites' on a dual-suite card, never 9106/9107 otherwise."""
    suites = app.secrets.suites()
    problems = []
    for interface in INTERFACES:
        intl, gm = gpo_key(interface, None), gpo_key(interface, GM.name)
        present = [key for key in (intl, gm) if key in app.data.gpo]
        if len(suites) > 1 and len(present) == 1:
            (have,) = present
            missing = gm if have == intl else intl
            problems.append(
                f"a card with both suites' keys needs the {interface} GPO data of {_suite_of(missing)} "
                f"({gpo_dgi(missing):04X}) as well as that of {_suite_of(have)} ({gpo_dgi(have):04X})"
            )
        elif len(suites) == 1 and gm in present:
            problems.append(
                f"{gpo_dgi(gm):04X} is the GM {interface} GPO data of a card with both suites, but this "
                f"card has only the {suites[0].name} keys (its GPO data is {gpo_dgi(intl):04X})"
            )
    return problems


def _suite_of(key: str) -> str:
    """The suite GPO data stored under ``key`` serves on a dual-suite card."""
    return GM.name if key.endswith(f"/{GM.name}") else INTL.name
