"""Clearing of offline EC transactions (issue 7 items 3–4; docs/clearing.md).

:mod:`.record` checks an upload, :mod:`.batch` is the pure clearing function, :mod:`.verify` the
HSM-backed TC check, :mod:`.parallel` runs the pure function in worker processes, :mod:`.store`
is the persistent shell (intake, exceptions, settlement, reconciliation).
"""

from __future__ import annotations
