"""Online PIN operations of the software HSM: PIN blocks in, verdicts out; a clear PIN never leaves.

(Issue 5: filled in by the issuer work — PIN block decryption under a PIN key and verification
against a stored PIN verification value.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from citycard.hsm.keystore import KeyStore
from citycard.hsm.keytypes import KeyInfo


class PinOperations:
    """The online-PIN half of :class:`citycard.hsm.SoftHSM` (a mixin over its key store and key usage)."""

    _store: KeyStore
    _use: Callable[[str, str], tuple[KeyInfo, Any]]
