"""Online PIN operations of the software HSM: PIN blocks in, verdicts out; a clear PIN never leaves.

The issuer stores a PIN verification value (PVV), never the PIN (issue 5). Two operations:

* :meth:`PinOperations.pin_verification_value` — the PVV of a PIN at enrolment, under a PVK.
* :meth:`PinOperations.verify_pin_block` — decipher an ISO 9564-1 format-0 PIN block (field 52)
  under the PIN key it travelled under, recompute the PVV and compare in constant time.

PVV method: the Visa PIN verification value (Visa PVV, documented e.g. in IBM's CCA
"Visa PIN verification value" description and the payment HSM manuals of Thales/AWS): the
transformed security parameter TSP = 11 rightmost PAN digits without the check digit ‖ PVKI (one
digit) ‖ 4 leftmost PIN digits, 16 digits = 8 bytes, enciphered with the PVK (2-key 3DES, ECB);
the PVV is the first 4 decimal digits of the result's hex digits read left to right, then, if
fewer than 4, the hex digits A–F minus 10. Like Visa's, it covers the first 4 PIN digits only.

GM suite: the same construction with SM4 (one 16-byte block TSP ‖ 00×8, decimalised over its 32
hex digits). No public PBOC/GM PVV rule was found: UNCERTAIN, our choice.

PIN blocks: 3DES-ECB over the 8-byte format-0 block (INTL); SM4-ECB over the block padded by
ISO 9797-1 method 2 to 16 bytes (GM), as :func:`citycard.kernel.contact.encipher_pin_block`
does — UNCERTAIN, no public PBOC SM4 PIN-block rule. The PIN key's suite decides the block, the
PVK's suite the PVV; the two need not agree (a GM card's PIN may arrive under a 3DES zone key).

Key usage: a ``PIN`` key may ``pin-decipher`` (inside :meth:`verify_pin_block` only: the clear
block never leaves), a ``PVK`` may ``pin-verify``; anything else is refused with the label named.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from citycard.crypto.suite import Suite
from citycard.hsm.keystore import KeyStore
from citycard.hsm.keytypes import KEY_TYPES, HSMError, KeyInfo

PVV_DIGITS = 4
PVKI_DEFAULT = 1  # PIN verification key index (0–6 in Visa's scheme); one PVK per issuer here
PIN_DIGITS_MIN = 4
PIN_DIGITS_MAX = 12  # ISO 9564-1 format 0
PIN_BLOCK_BYTES = 8  # the clear format-0 block
PAN_DIGITS_MIN = 13  # format 0 needs 12 PAN digits left of the check digit; PVV needs 11
PAN_DIGITS_MAX = 19
USAGE_PIN_DECIPHER = "pin-decipher"  # a PIN key (zone/terminal) may decipher a PIN block in the HSM
USAGE_PIN_VERIFY = "pin-verify"  # a PVK may compute and check PVVs


def _check_pin(pin: str) -> None:
    if not isinstance(pin, str) or not (pin.isascii() and pin.isdigit()):
        raise HSMError("a PIN is digits only")
    if not PIN_DIGITS_MIN <= len(pin) <= PIN_DIGITS_MAX:
        raise HSMError(f"a PIN is {PIN_DIGITS_MIN} to {PIN_DIGITS_MAX} digits, got {len(pin)}")


def _check_pan(pan: str) -> None:
    if not isinstance(pan, str) or not (pan.isascii() and pan.isdigit()):
        raise HSMError("PAN must be digits")
    if not PAN_DIGITS_MIN <= len(pan) <= PAN_DIGITS_MAX:
        raise HSMError(f"PAN must be {PAN_DIGITS_MIN} to {PAN_DIGITS_MAX} digits, got {len(pan)}")


def decimalise(block: bytes, digits: int = PVV_DIGITS) -> str:
    """Visa PVV decimalisation: decimal hex digits first, then A–F minus 10, leftmost ``digits``.

    >>> decimalise(bytes.fromhex("A1B2C3D4E5F60708"))
    '1234'
    >>> decimalise(bytes.fromhex("ABCDEF1AAAAAAAAA"))
    '1012'
    """
    text = block.hex().upper()
    picked = [c for c in text if c.isdigit()]
    if len(picked) < digits:
        picked += [str(int(c, 16) - 10) for c in text if not c.isdigit()]
    return "".join(picked[:digits])


def pvv_tsp(*, pan: str, pin: str, pvki: int = PVKI_DEFAULT) -> bytes:
    """The Visa transformed security parameter: PAN digits 11 left of the check digit ‖ PVKI ‖ PIN[:4].

    >>> pvv_tsp(pan="4111111111111111", pin="1234").hex().upper()
    '1111111111111234'
    """
    _check_pan(pan)
    _check_pin(pin)
    if not 0 <= pvki <= 9:
        raise HSMError(f"PVKI is one digit, got {pvki}")
    return bytes.fromhex(pan[-12:-1] + str(pvki) + pin[:4])


def pvv_of(pvk: bytes, *, pan: str, pin: str, suite: Suite, pvki: int = PVKI_DEFAULT) -> str:
    """The 4-digit PVV under a clear PVK (pure; the HSM calls it with the unwrapped key)."""
    tsp = pvv_tsp(pan=pan, pin=pin, pvki=pvki)
    block = tsp + bytes(suite.block_bytes - len(tsp))  # SM4: TSP ‖ 00×8 (UNCERTAIN, see module doc)
    return decimalise(suite.ecb_encrypt(pvk, block))


def pin_from_format_0(block: bytes, *, pan: str) -> str:
    """The PIN of a clear ISO 9564-1 format-0 block (PIN field ⊕ PAN field); raises on a bad block."""
    _check_pan(pan)
    if len(block) != PIN_BLOCK_BYTES:
        raise HSMError(f"format-0 PIN block must be {PIN_BLOCK_BYTES} bytes, got {len(block)}")
    pan_field = bytes.fromhex("0000" + pan[-13:-1])
    text = bytes(a ^ b for a, b in zip(block, pan_field, strict=True)).hex().upper()
    length = int(text[1], 16)
    if text[0] != "0" or not PIN_DIGITS_MIN <= length <= PIN_DIGITS_MAX:
        raise HSMError("PIN block is not format 0 (control or length nibble out of range)")
    pin, filler = text[2 : 2 + length], text[2 + length :]
    if not pin.isdigit() or set(filler) - {"F"}:
        raise HSMError("PIN block is not format 0 (PIN digits or F filler wrong)")
    return pin


class PinOperations:
    """The online-PIN half of :class:`citycard.hsm.SoftHSM` (a mixin over its key store and key usage)."""

    _store: KeyStore
    _use: Callable[[str, str], tuple[KeyInfo, Any]]
    _clear: Callable[[str], Any]

    def _pin_key(self, label: str, usage: str) -> tuple[Suite, bytes]:
        # Checked here, not in SoftHSM._use, so the PIN usages need no entry in its USAGE_TEXT table.
        info = self._store.info(label)
        if usage not in KEY_TYPES[info.key_type].usages:
            allowed = ", ".join(name for name, kt in KEY_TYPES.items() if usage in kt.usages)
            raise HSMError(f"key {label!r} (type {info.key_type}) may not {usage} (that needs {allowed})")
        return info.suite, self._clear(label)

    def pin_verification_value(self, pvk_label: str, *, pan: str, pin: str, pvki: int = PVKI_DEFAULT) -> str:
        """The PVV of ``pin`` for ``pan`` under the PVK ``pvk_label`` (enrolment; the PIN is not kept)."""
        suite, pvk = self._pin_key(pvk_label, USAGE_PIN_VERIFY)
        return pvv_of(pvk, pan=pan, pin=pin, suite=suite, pvki=pvki)

    def verify_pin_block(
        self,
        pin_key_label: str,
        pvk_label: str,
        *,
        pin_block: bytes,
        pan: str,
        pvv: str,
        pvki: int = PVKI_DEFAULT,
    ) -> bool:
        """True when the enciphered format-0 ``pin_block`` holds the PIN whose PVV is ``pvv``.

        A block that does not decipher to a format-0 block for this PAN is a wrong PIN (False), not
        an error: to the cardholder it is one. Bad arguments (lengths, PVV digits) raise HSMError.
        """
        if not isinstance(pvv, str) or len(pvv) != PVV_DIGITS or not pvv.isdigit():
            raise HSMError(f"PVV must be {PVV_DIGITS} digits")
        _check_pan(pan)
        suite, pin_key = self._pin_key(pin_key_label, USAGE_PIN_DECIPHER)
        if len(pin_block) != suite.block_bytes:
            raise HSMError(
                f"PIN block under {suite.cipher.upper()} key {pin_key_label!r} must be "
                f"{suite.block_bytes} bytes, got {len(pin_block)}"
            )
        clear = suite.ecb_decrypt(pin_key, bytes(pin_block))
        if suite.block_bytes > PIN_BLOCK_BYTES:  # SM4: method-2 padding 80 00… must follow the block
            if clear[PIN_BLOCK_BYTES:] != b"\x80" + bytes(suite.block_bytes - PIN_BLOCK_BYTES - 1):
                return False
            clear = clear[:PIN_BLOCK_BYTES]
        try:
            pin = pin_from_format_0(clear, pan=pan)
        except HSMError:
            return False
        expected = self.pin_verification_value(pvk_label, pan=pan, pin=pin, pvki=pvki)
        return hmac.compare_digest(expected, pvv)
