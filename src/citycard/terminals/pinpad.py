"""A PIN pad for a terminal signed on to its acquirer host: online PINs enciphered under the
session PIK that the sign-on installed in the terminal's HSM (F52; pboc-notes §10).

The kernel asks a :class:`citycard.kernel.contact.PinPad` for two things: an offline PIN (the card
checks it with VERIFY) and an online PIN block (the issuer checks it). Here the online block is
made by the host client (``HostClient.pin_block``: ISO 9564 format 0 under the PIK, inside the
HSM), so the issuer can translate it to its own PIN key and check it against the PVV. The PIN
digits are given up front (``--pin``), as a test PIN pad would type them.

GM: the block is 16 bytes under an SM4 PIK and travels in F57, since F52 is 8 bytes (UNCERTAIN for
CUPS, docs/hosts.md); the host translates either kind in its HSM.
"""

from __future__ import annotations

from typing import Any

PIN_DIGITS_MIN, PIN_DIGITS_MAX = 4, 12


class HostPinPad:
    def __init__(self, pin: str, client: Any, *, terminal_id: str):
        if not (pin.isascii() and pin.isdigit() and PIN_DIGITS_MIN <= len(pin) <= PIN_DIGITS_MAX):
            raise ValueError(f"a PIN is {PIN_DIGITS_MIN} to {PIN_DIGITS_MAX} digits")
        self._pin = pin
        self.client = client
        self.terminal_id = terminal_id
        self.refusal: str | None = None  # why the last online block could not be made

    def offline_pin(self, *, tries_left: int | None) -> str | None:
        return self._pin

    def online_pin_block(self, *, pan: str) -> bytes | None:
        try:
            return self.client.pin_block(terminal_id=self.terminal_id, pin=self._pin, pan=pan)
        except ValueError as exc:  # not signed on (no PIK)
            self.refusal = str(exc)
            return None
