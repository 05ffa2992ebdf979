"""TC verification for clearing: the card's cryptogram and its EC balance MAC, checked in the HSM.

A TC is verified exactly like an ARQC (same AC algorithm over the same CDOL input; pboc-notes
§4.1–4.3): card key from the issuer's IMK-AC by PAN/PSN, session key from the ATC, MAC compared in
constant time. The balance in the IAD's EC IDD is trusted only when its MAC under the MAC session
key verifies (pboc-notes §2.4). Both run inside :class:`citycard.hsm.SoftHSM`; clearing never
holds a clear key. The HSM keeps unwrapped IMKs cached, so a worker unwraps each IMK once.

:class:`HsmVerifier` is what :func:`citycard.clearing.batch.clear_batch` is given (it does no I/O
of its own); :class:`VerifierSpec` is its picklable recipe, rebuilt once per worker process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from citycard.clearing.record import ClearingRecord
from citycard.crypto.iad import parse_iad
from citycard.crypto.suite import SUITES


class Verifier(Protocol):
    def forged(self, record: ClearingRecord) -> str | None:
        """``None`` when the TC and the IAD balance MAC verify; else why not."""


@dataclass(frozen=True)
class SuiteLabels:
    """HSM labels of one issuer's IMK-AC and IMK-MAC in one algorithm suite."""

    imk_ac: str
    imk_mac: str


class HsmVerifier:
    """Verifies TCs with the issuer keys in ``hsm``; ``labels`` by suite name (``INTL``, ``GM``)."""

    def __init__(self, hsm: object, labels: dict[str, SuiteLabels]):
        unknown = set(labels) - {suite.name for suite in SUITES}
        if unknown:
            raise ValueError(f"labels for unknown suites: {', '.join(sorted(unknown))}")
        self.hsm = hsm
        self.labels = dict(labels)

    def forged(self, record: ClearingRecord) -> str | None:
        suite = parse_iad(record.iad).suite.name  # the IAD's algorithm id names the suite
        labels = self.labels.get(suite)
        if labels is None:
            return f"no issuer keys for suite {suite}"
        atc = record.tag_9f36
        hsm = self.hsm
        if not hsm.verify_arqc(  # type: ignore[attr-defined]
            labels.imk_ac, tag_5a=record.pan, tag_5f34=record.psn, tag_9f36=atc,
            data=record.ac_input, tag_9f26=record.tc,
        ):  # fmt: skip
            return f"TC 9F26 does not verify ({suite})"
        if not hsm.verify_iad_mac(  # type: ignore[attr-defined]
            labels.imk_mac, tag_5a=record.pan, tag_5f34=record.psn, tag_9f36=atc, tag_9f10=record.iad
        ):
            return f"IAD EC balance MAC does not verify ({suite})"
        return None

    def forged_many(self, records: Sequence[ClearingRecord]) -> list[str | None]:
        """:meth:`forged` for many records in one HSM call (:meth:`citycard.hsm.SoftHSM.verify_taps`:
        each card key derived once, a card's session keys in one ECB call). Same answers."""
        from citycard.hsm.tc_batch import TapToVerify

        taps = [TapToVerify(r.pan, r.psn, r.tag_9f36, r.ac_input, r.tc, r.iad) for r in records]
        return self.hsm.verify_taps(taps, self.labels)  # type: ignore[attr-defined]

    def forged_taps(self, taps: Sequence[tuple[str, str, bytes, bytes, bytes, bytes]]) -> list[str | None]:
        """:meth:`forged_many` for taps already in :class:`~citycard.hsm.tc_batch.TapToVerify` field
        order (PAN, PSN, 9F36, AC input, 9F26, 9F10) — plain tuples, no record built. Same answers."""
        return self.hsm.verify_taps(taps, self.labels)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class VerifierSpec:
    """How a worker process opens the HSM and builds its :class:`HsmVerifier` (no key inside)."""

    hsm_path: Path
    master_key_file: Path | None
    labels: dict[str, SuiteLabels]

    def build(self) -> HsmVerifier:
        from citycard.hsm import SoftHSM

        return HsmVerifier(SoftHSM.open(self.hsm_path, master_key_file=self.master_key_file), self.labels)
