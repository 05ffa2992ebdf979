"""The in-process transport: a terminal and a card object in the same Python process.

The card is duck-typed (DESIGN.md §1): anything with ``process(apdu: bytes) -> bytes`` and ``atr``;
``power_on()``, ``power_off()`` and ``reset()`` are called when the card has them.
"""

from __future__ import annotations

from typing import Any

from citycard.reader.transport import ApduTrace, BaseTransport, CardProtocolError


def card_atr(card: Any) -> bytes:
    """The card's ATR (an attribute or a property), checked to be non-empty bytes."""
    atr = getattr(card, "atr", None)
    if not isinstance(atr, bytes | bytearray) or not atr:
        raise CardProtocolError(f"{type(card).__name__}.atr must be non-empty bytes, got {atr!r}")
    return bytes(atr)


def power(card: Any, action: str) -> bytes | None:
    """Call ``card.power_on()``/``power_off()``/``reset()`` if the card has it; its ATR if it returns one."""
    method = getattr(card, action, None)
    if method is None:
        return None
    result = method()
    return bytes(result) if isinstance(result, bytes | bytearray) and result else None


class InProcessTransport(BaseTransport):
    """``InProcessTransport(card)``: ``connect()`` powers the card up, ``transmit`` calls ``card.process``.

    >>> class Card:
    ...     atr = bytes.fromhex("3B00")
    ...     def process(self, apdu): return bytes.fromhex("9000")
    >>> with InProcessTransport(Card()) as reader:
    ...     reader.transmit(bytes.fromhex("00A4040000")).hex()
    '9000'
    """

    def __init__(self, card: Any, *, t0: bool = True, trace: ApduTrace | None = None):
        if not callable(getattr(card, "process", None)):
            raise TypeError(f"{type(card).__name__} has no process(apdu) -> bytes method")
        super().__init__(t0=t0, trace=trace)
        self.card = card

    def __repr__(self) -> str:
        return f"InProcessTransport({type(self.card).__name__})"

    def reset(self) -> bytes:
        """Warm reset: the card forgets its transient state; returns the ATR."""
        self.connect()
        self._atr = power(self.card, "reset") or power(self.card, "power_on") or card_atr(self.card)
        return self._atr

    def _connect(self) -> bytes:
        return power(self.card, "power_on") or card_atr(self.card)

    def _exchange(self, apdu: bytes) -> bytes:
        return self.card.process(apdu)

    def _disconnect(self) -> None:
        power(self.card, "power_off")
