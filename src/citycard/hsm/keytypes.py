"""The HSM's vocabulary: its error, the key types with their usages, labels, and what is shown of a key."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from citycard.crypto.suite import SUITES, Suite

LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")


class HSMError(ValueError):
    """A refused HSM request or an unusable key store; the message says which and why, never a key."""


@dataclass(frozen=True, slots=True)
class KeyType:
    """One key type: its kind of key material, the operations it may serve, and its fixed suite."""

    name: str
    material: str  # "symmetric" (16-byte 3DES/SM4), "aes" (32-byte AES-256), "rsa" or "sm2"
    usages: frozenset[str]
    description: str

    @property
    def suite_name(self) -> str | None:
        """The only suite an asymmetric key can belong to (RSA → INTL, SM2 → GM); None when either."""
        return {"rsa": "INTL", "sm2": "GM"}.get(self.material)


def _key_type(name: str, material: str, usages: str, description: str) -> tuple[str, KeyType]:
    return name, KeyType(name, material, frozenset(usages.split()), description)


# Key usage is enforced from this table: an operation names its usage, the key's type must list it.
KEY_TYPES: dict[str, KeyType] = dict(
    [
        _key_type("IMK-AC", "symmetric", "card-keys arqc arpc pin-block", "issuer master key, cryptograms"),
        _key_type("IMK-MAC", "symmetric", "card-keys iad-mac script-mac", "issuer master key, script MAC"),
        _key_type("IMK-ENC", "symmetric", "card-keys script-enc", "issuer master key, script encipherment"),
        _key_type("ZMK", "symmetric", "key-exchange", "zone master key (key exchange with a bank)"),
        _key_type("TMK", "symmetric", "key-exchange", "terminal master key"),
        _key_type("PIN", "symmetric", "pin-decipher", "PIN encryption key (zone or terminal)"),
        _key_type("PVK", "symmetric", "pin-verify", "PIN verification key (Visa PVV method)"),
        _key_type("CA-RSA", "rsa", "certify-issuer", "test certification authority, RSA"),
        _key_type("CA-SM2", "sm2", "certify-issuer", "test certification authority, SM2"),
        _key_type("ISSUER-RSA", "rsa", "certify-icc sign-static-data", "issuer ODA key, RSA"),
        _key_type("ISSUER-SM2", "sm2", "certify-icc sign-static-data", "issuer ODA key, SM2"),
        _key_type(
            "CARD-IMAGE-KEK", "aes", "card-image-seal card-image-open", "AES-256 key sealing card images"
        ),
        _key_type("PERSO-KEK", "symmetric", "perso-encipher perso-decipher", "personalisation transport key"),
    ]
)


def key_type(name: str) -> KeyType:
    try:
        return KEY_TYPES[name]
    except KeyError:
        raise HSMError(f"unknown key type {name!r}: expected one of {', '.join(KEY_TYPES)}") from None


def suite_named(name: str) -> Suite:
    for suite in SUITES:
        if suite.name == name:
            return suite
    raise HSMError(f"unknown suite {name!r}: expected INTL or GM")


def check_label(label: str) -> str:
    if not isinstance(label, str) or not LABEL_PATTERN.fullmatch(label):
        raise HSMError(
            f"key label {label!r} is invalid: 1 to 64 characters, letters, digits and . _ : / -, "
            "starting with a letter or digit"
        )
    return label


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be shown about a key: never the key, its KCV instead."""

    label: str
    key_type: str
    suite: Suite
    kcv_hex: str
    created_at: dt.datetime
