"""Card-image sealing and personalisation transport encipherment in the software HSM (docs/card.md §2–§3).

Two keys, both held only here:

- ``card-image`` (type ``CARD-IMAGE-KEK``, AES-256, created on first use): seals the secret items of a
  virtual card's image (card keys, PIN block, private keys, Part 14 opening keys) with AES-256-GCM.
  The associated data binds the card identity (the card serial the image carries), the item name and
  the item's check value, so a sealed blob moved to another item or another card does not open, and
  the KCV shown next to it cannot be swapped either. The key store records it under suite INTL; the
  suite means nothing for an AES key.
- ``perso-kek`` (type ``PERSO-KEK``, 16 bytes): enciphers and deciphers STORE DATA DGIs in the
  suite's cipher (3DES or SM4), ECB, ISO/IEC 9797-1 padding method 2 (always padded). A 16-byte key
  serves either cipher; the ``suite`` argument chooses, and both directions take the same one.

Item check values (``kcv``, 3 bytes, upper-case hex) by ``kcv_method``:

- ``3DES`` / ``SM4``: a 16-byte key with a suite hint (the ``suite`` argument, or a name component
  ``INTL``/``3DES``/``TDES`` or ``GM``/``SM4``, e.g. ``keys/GM/AC``): the standard KCV, the key
  encrypting one zero block, comparable with the KCV DGIs 9000/9030 of a personalisation script.
- ``SHA-256``: any other item of 16 bytes or more (private keys, keys without a hint): the leftmost
  3 bytes of SHA-256 of the clear value.
- ``HMAC-SHA-256``: items shorter than 16 bytes (an offline PIN block): a plain hash of a low-entropy
  value would give the PIN away to a brute force, so the check value is keyed: HMAC-SHA-256 under a
  key derived from the card-image key over the associated data and the value, leftmost 3 bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from citycard.crypto.keys import key_check_value
from citycard.crypto.mac import pad_method_2
from citycard.crypto.suite import GM, INTL, Suite
from citycard.hsm.keytypes import HSMError, KeyInfo
from citycard.hsm.masterkey import master_key_kcv

if TYPE_CHECKING:
    from citycard.hsm.keystore import KeyStore

CARD_IMAGE_LABEL = "card-image"
CARD_IMAGE_KEY_TYPE = "CARD-IMAGE-KEK"
PERSO_KEK_LABEL = "perso-kek"
PERSO_KEK_TYPE = "PERSO-KEK"
AES_256_KEY_BYTES = 32
GCM_NONCE_BYTES = 12
GCM_TAG_BYTES = 16
KCV_BYTES = 3
ITEM_BYTES_MAX = 8_192  # an RSA-1984 CRT private key is under 1 KB
ITEM_NAME_CHARS_MAX = 128
CARD_IDENTITY_BYTES_MAX = 64
PERSO_DGI_BYTES_MAX = 4_096
HASHED_ITEM_BYTES_MIN = 16  # shorter items get a keyed check value (see the module docstring)
KCV_METHODS = ("3DES", "SM4", "SHA-256", "HMAC-SHA-256")
_AAD_FORMAT = "citycard-card-image-item/1"
_KCV_KEY_INFO = b"citycard card-image item check value"
_ITEM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
_SUITE_WORDS = {"intl": INTL, "3des": INTL, "tdes": INTL, "gm": GM, "sm4": GM}
_HEX_KCV = re.compile(r"^[0-9A-F]{6}$")


def aes_key_check_value(key: bytes) -> bytes:
    """The KCV of an AES key: the key encrypting one zero block, leftmost 3 bytes."""
    if len(key) != AES_256_KEY_BYTES:
        raise HSMError(f"AES-256 key must be {AES_256_KEY_BYTES} bytes, got {len(key)}")
    return master_key_kcv(key)


def suite_hint(name: str) -> Suite | None:
    """The suite named by a component of an item name (``keys/GM/AC`` → GM), or None.

    >>> suite_hint("keys/INTL/AC"), suite_hint("pboc/sm4-mac"), suite_hint("pin-block")
    (Suite.INTL, Suite.GM, None)
    """
    found = {_SUITE_WORDS[word] for word in re.split(r"[^a-z0-9]+", name.lower()) if word in _SUITE_WORDS}
    return found.pop() if len(found) == 1 else None


def _check_item(card_identity: bytes, name: str) -> None:
    if not isinstance(card_identity, bytes) or not 1 <= len(card_identity) <= CARD_IDENTITY_BYTES_MAX:
        raise HSMError(f"card identity must be 1 to {CARD_IDENTITY_BYTES_MAX} bytes")
    if not isinstance(name, str) or len(name) > ITEM_NAME_CHARS_MAX or not _ITEM_NAME.fullmatch(name):
        raise HSMError(
            f"sealed item name {name!r} is invalid: 1 to {ITEM_NAME_CHARS_MAX} characters, letters, "
            "digits and . _ : / -, starting with a letter or digit"
        )


def _associated_data(card_identity: bytes, name: str, kcv_method: str, kcv_hex: str) -> bytes:
    return json.dumps([_AAD_FORMAT, card_identity.hex().upper(), name, kcv_method, kcv_hex]).encode()


def item_check_value(
    key: bytes, card_identity: bytes, name: str, clear: bytes, *, suite: Suite | None = None
) -> tuple[str, bytes]:
    """(kcv_method, 3-byte check value) of a sealed item, by the rules in the module docstring."""
    hint = suite or suite_hint(name)
    if len(clear) == 16 and hint is not None:
        return hint.cipher.upper(), key_check_value(clear, suite=hint)
    if len(clear) >= HASHED_ITEM_BYTES_MIN:
        return "SHA-256", hashlib.sha256(clear).digest()[:KCV_BYTES]
    kcv_key = hmac.digest(key, _KCV_KEY_INFO, "sha256")
    message = _associated_data(card_identity, name, "HMAC-SHA-256", "") + clear
    return "HMAC-SHA-256", hmac.digest(kcv_key, message, "sha256")[:KCV_BYTES]


def _recheck_kcv(key: bytes, card_identity: bytes, name: str, clear: bytes, method: str) -> bytes:
    suite = {"3DES": INTL, "SM4": GM}.get(method)
    if suite is not None:
        return key_check_value(clear, suite=suite)
    return item_check_value(key, card_identity, name, clear)[1]


def _unpad_method_2(data: bytes, block_bytes: int) -> bytes:
    stripped = data.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80 or len(data) - len(stripped) >= block_bytes:
        raise HSMError("deciphered DGI does not end in ISO/IEC 9797-1 padding method 2 (80 00 ...)")
    return stripped[:-1]


class CardImageOperations:
    """Card-image sealing and perso DGI encipherment; mixed into :class:`~citycard.hsm.SoftHSM`."""

    _store: KeyStore
    _use: Callable[[str, str], tuple[KeyInfo, Any]]
    _forget: Callable[[str], None]

    # --- the card-image key -------------------------------------------------------------------
    def card_image_key(self, *, create: bool = True) -> KeyInfo:
        """Info (label, KCV) of the ``card-image`` key; a random AES-256 key is made on first use."""
        if CARD_IMAGE_LABEL in self._store or not create:
            return self._store.info(CARD_IMAGE_LABEL)
        key = secrets.token_bytes(AES_256_KEY_BYTES)
        try:
            info = self._store.add(
                CARD_IMAGE_LABEL, CARD_IMAGE_KEY_TYPE, INTL, key, kcv=aes_key_check_value(key)
            )
        except HSMError:
            if CARD_IMAGE_LABEL not in self._store:
                raise
            return self._store.info(CARD_IMAGE_LABEL)  # another thread made it first
        self._forget(CARD_IMAGE_LABEL)
        return info

    def seal_card_item(
        self, card_identity: bytes, name: str, clear: bytes, *, suite: Suite | None = None
    ) -> dict[str, str]:
        """Seal one secret item of a card image: ``{"sealed", "kcv", "kcv_method"}`` (hex upper case).

        ``sealed`` is nonce (12) ‖ AES-256-GCM ciphertext ‖ tag (16) under the ``card-image`` key;
        the associated data is the card identity, the item name and the check value.
        """
        _check_item(card_identity, name)
        if not isinstance(clear, bytes) or not 1 <= len(clear) <= ITEM_BYTES_MAX:
            raise HSMError(f"a sealed item must be 1 to {ITEM_BYTES_MAX} bytes")
        self.card_image_key()
        _, key = self._use(CARD_IMAGE_LABEL, "card-image-seal")
        method, kcv = item_check_value(key, card_identity, name, clear, suite=suite)
        kcv_hex = kcv.hex().upper()
        nonce = secrets.token_bytes(GCM_NONCE_BYTES)
        sealed = nonce + AESGCM(key).encrypt(
            nonce, clear, _associated_data(card_identity, name, method, kcv_hex)
        )
        return {"sealed": sealed.hex().upper(), "kcv": kcv_hex, "kcv_method": method}

    def open_card_item(self, card_identity: bytes, name: str, sealed: Mapping[str, str]) -> bytes:
        """The clear value of an item sealed by :meth:`seal_card_item` for this card and this name."""
        _check_item(card_identity, name)
        blob, kcv_hex, method = _parse_sealed(name, sealed)
        info, key = self._use(CARD_IMAGE_LABEL, "card-image-open")
        nonce, ciphertext = blob[:GCM_NONCE_BYTES], blob[GCM_NONCE_BYTES:]
        try:
            clear = AESGCM(key).decrypt(
                nonce, ciphertext, _associated_data(card_identity, name, method, kcv_hex)
            )
        except InvalidTag:
            raise HSMError(
                f"sealed item {name!r} does not open for card {card_identity.hex().upper()} under the "
                f"card-image key (KCV {info.kcv_hex}): it was altered, moved from another item or card, "
                "or sealed under another HSM's key"
            ) from None
        if _recheck_kcv(key, card_identity, name, clear, method).hex().upper() != kcv_hex:
            raise HSMError(
                f"sealed item {name!r} opens to a value whose {method} check value is not {kcv_hex}"
            )
        return clear

    # --- personalisation transport key ----------------------------------------------------------
    def encipher_perso_dgi(self, label: str, suite: Suite, data: bytes) -> bytes:
        """Encipher one DGI's data for STORE DATA: the suite's cipher, ECB, padding method 2.

        A missing ``PERSO-KEK`` key of this label is generated first (docs/card.md §3).
        """
        if label not in self._store:
            self.generate_key(label, PERSO_KEK_TYPE, suite)  # type: ignore[attr-defined]
        if not isinstance(data, bytes) or len(data) > PERSO_DGI_BYTES_MAX:
            raise HSMError(f"a personalisation DGI must be bytes, at most {PERSO_DGI_BYTES_MAX}")
        _, key = self._use(label, "perso-encipher")
        return suite.ecb_encrypt(key, pad_method_2(data, suite.block_bytes))

    def decipher_perso_dgi(self, label: str, suite: Suite, data: bytes) -> bytes:
        """Inverse of :meth:`encipher_perso_dgi` (the card side of an encrypted STORE DATA DGI)."""
        if not isinstance(data, bytes) or not 0 < len(data) <= PERSO_DGI_BYTES_MAX + suite.block_bytes:
            raise HSMError(f"an enciphered DGI must be 1 to {PERSO_DGI_BYTES_MAX + suite.block_bytes} bytes")
        if len(data) % suite.block_bytes:
            raise HSMError(
                f"an enciphered DGI must be a multiple of {suite.block_bytes} bytes ({suite.cipher.upper()} "
                f"blocks), got {len(data)}"
            )
        _, key = self._use(label, "perso-decipher")
        return _unpad_method_2(suite.ecb_decrypt(key, data), suite.block_bytes)


def _parse_sealed(name: str, sealed: Mapping[str, str]) -> tuple[bytes, str, str]:
    if not isinstance(sealed, Mapping):
        raise HSMError(f"sealed item {name!r} must be an object with sealed, kcv and kcv_method")
    blob_hex, kcv_hex, method = sealed.get("sealed"), sealed.get("kcv"), sealed.get("kcv_method")
    if method not in KCV_METHODS:
        raise HSMError(f"sealed item {name!r}: kcv_method {method!r} is not one of {', '.join(KCV_METHODS)}")
    if not isinstance(kcv_hex, str) or not _HEX_KCV.fullmatch(kcv_hex):
        raise HSMError(f"sealed item {name!r}: kcv must be 6 upper-case hex digits")
    try:
        blob = bytes.fromhex(blob_hex) if isinstance(blob_hex, str) else b""
    except ValueError:
        blob = b""
    if not GCM_NONCE_BYTES + GCM_TAG_BYTES < len(blob) <= GCM_NONCE_BYTES + GCM_TAG_BYTES + ITEM_BYTES_MAX:
        raise HSMError(f"sealed item {name!r}: sealed must be hex of nonce ‖ ciphertext ‖ tag")
    assert kcv_hex is not None and method is not None
    return blob, kcv_hex, method
