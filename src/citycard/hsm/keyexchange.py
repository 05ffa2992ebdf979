"""Key exchange operations of the software HSM: session keys generated here and sent out only
enciphered under a terminal or zone master key, with their KCVs.

(Issue 5: filled in by the host server work — sign-on key exchange.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from citycard.hsm.keystore import KeyStore
from citycard.hsm.keytypes import KeyInfo


class KeyExchangeOperations:
    """The key-exchange half of :class:`citycard.hsm.SoftHSM` (a mixin over its key store and key usage)."""

    _store: KeyStore
    _use: Callable[[str, str], tuple[KeyInfo, Any]]
