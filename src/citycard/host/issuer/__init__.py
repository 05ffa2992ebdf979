"""The issuer host (issue 5 item 2): ISO 8583 authorisations with ARQC, ATC, PIN, limits and balance
checks, ledger postings, ARPC and issuer scripts — a pipeline of small participants per message,
one database transaction per batch. See docs/issuer.md.

B2's server and the switch use exactly: :class:`IssuerConfig`, :func:`load_issuer_configs` and
:class:`IssuerHost` (``provision_keys``, ``enrol_card``, ``process_batch``, ``queue_script``).
"""

from __future__ import annotations

from citycard.host.issuer.admin import IssuerError
from citycard.host.issuer.config import IssuerConfig, IssuerConfigError, KeyLabels, load_issuer_configs
from citycard.host.issuer.host import BATCH_MESSAGES_MAX, IssuerHost
from citycard.host.issuer.participants import SCRIPT_KINDS
from citycard.host.issuer.wire import message_key

__all__ = [
    "BATCH_MESSAGES_MAX",
    "SCRIPT_KINDS",
    "IssuerConfig",
    "IssuerConfigError",
    "IssuerError",
    "IssuerHost",
    "KeyLabels",
    "load_issuer_configs",
    "message_key",
]
