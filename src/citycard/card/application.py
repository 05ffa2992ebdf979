"""What the card OS expects of an application, and what it offers one.

The OS (:mod:`citycard.card.os`) owns the ATR, selection (PSE/PPSE/AID), T=0 GET RESPONSE, the
image file and the turning of :class:`~citycard.card.sw.CardError` into status words. An application
owns its data objects, records, counters, keys and commands. Contract: docs/card.md.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from typing import Any, Literal, Protocol

from citycard.card.apdu import Command, Response

Interface = Literal["contact", "contactless"]


class Sealer(Protocol):
    """Encrypts secret items of a card image (keys, PIN block, private keys) under the HSM's
    card-image key; ``name`` is bound in as associated data, so a sealed item cannot be moved."""

    def seal(self, name: str, clear: bytes) -> dict[str, str]: ...  # {"sealed": hex, "kcv": hex}

    def open(self, name: str, sealed: dict[str, str]) -> bytes: ...


class PersoDecryptor(Protocol):
    """Deciphers an encrypted STORE DATA DGI (personalisation transport key; docs/card.md §3)."""

    def decipher(self, dgi: int, data: bytes) -> bytes: ...


class CardContext(Protocol):
    """The OS services an application may use while it processes a command."""

    interface: Interface

    def random_bytes(self, count: int) -> bytes: ...  # the card's RNG (GET CHALLENGE, ICC UN, 9F4C)

    def now(self) -> dt.datetime: ...  # aware UTC

    def save(self) -> None: ...  # write the card image now, atomically; call before answering

    def block_card(self) -> None: ...  # CARD BLOCK: every later SELECT answers 6A81


class Application(ABC):
    """A selectable application (an ADF) on the card."""

    aid: bytes
    label: str
    priority: int | None = None  # 87, application priority indicator
    # Listed in the payment directories (PSE/PPSE)? A payment application is; a sector DDF such as
    # the health application is selected by its name and stays out of the terminals' candidate list.
    in_payment_directory: bool = True

    @abstractmethod
    def fci(self, ctx: CardContext) -> bytes:
        """The whole 6F FCI template answered to SELECT on this interface."""

    @abstractmethod
    def select(self, ctx: CardContext) -> int:
        """Start a new transaction (reset the transient state); return 9000, or 6283 when blocked."""

    def deselect(self) -> None:  # noqa: B027 - optional hook, most applications keep nothing
        """The terminal selected something else: drop the transient transaction state."""

    @abstractmethod
    def process(self, command: Command, ctx: CardContext) -> Response:
        """Answer one command; raise CardError for a status word without data."""

    @property
    @abstractmethod
    def personalised(self) -> bool:
        """False until the last STORE DATA block has been accepted."""

    @abstractmethod
    def store_data(self, dgi: int, data: bytes, ctx: CardContext) -> None:
        """Take one (already deciphered) DGI during personalisation."""

    @abstractmethod
    def finish_personalisation(self, ctx: CardContext) -> None:
        """The last STORE DATA block arrived: check completeness, then become personalised."""

    @abstractmethod
    def to_image(self, sealer: Sealer) -> dict[str, Any]:
        """The persistent state as JSON-ready data, secrets sealed."""

    @classmethod
    @abstractmethod
    def from_image(cls, image: dict[str, Any], sealer: Sealer) -> Application:
        """Rebuild from :meth:`to_image` output."""
