"""Loading the health DDF1 onto an issued card: a bureau-style secured load (docs/health-card.md §4).

1. :func:`citycard.card.image.install_application` adds a blank :class:`HealthApplication`;
2. SELECT it by name, then STORE DATA, one DGI per block (docs/card.md §3 framing): A060 the suite,
   the files' records ``SSRR`` (issuer data with the chip serial, identity, expiry, documents,
   alerts …), 8060 the eight card keys **enciphered** under the perso transport key by the HSM (the
   block's P1 has b6–b5 = 11, 30), 9060 their KCVs as the last block; the card checks the KCVs, becomes
   personalised and saves its image.

Every step is an APDU to the card (the card's own answers decide), so a refusal leaves the new
application blank — it is then removed again and the card saved as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from citycard.card.health import files as hf
from citycard.card.health.application import DGI_KCVS, DGI_KEYS, DGI_SUITE, SUITE_BYTES, HealthApplication
from citycard.card.health.records import encode_record
from citycard.crypto.suite import Suite

SW_OK = b"\x90\x00"
P1_LAST, P1_ENCIPHERED = 0x80, 0x30


class HealthLoadError(Exception):
    """The card refused a step of the load: ``step`` and the status word ``sw``."""

    def __init__(self, step: str, sw: int):
        super().__init__(f"{step}: the card answered {sw:04X}")
        self.step = step
        self.sw = sw


def _dgi(dgi: int, value: bytes) -> bytes:
    length = bytes([len(value)]) if len(value) < 0xFF else b"\xff" + len(value).to_bytes(2, "big")
    return dgi.to_bytes(2, "big") + length + value


def store_data_blocks(
    hsm: Any, suite: Suite, *, diversifier: bytes, records: Mapping[str, Sequence[Mapping[str, Any]]]
) -> list[tuple[int, bytes]]:
    """(P1 flags, block data) of the load, in order (module note). ``records`` maps a file name
    (``DDF1/EF06`` …) to its records as field values (:data:`.records.LAYOUTS`)."""
    blocks: list[tuple[int, bytes]] = [(0x00, _dgi(DGI_SUITE, bytes([SUITE_BYTES[suite.name]])))]
    for name, values in records.items():
        file = hf.BY_NAME.get(name)
        if file is None or file.kind == "binary":
            raise ValueError(f"{name!r} is not a record file of the health application")
        if len(values) > file.records_max:
            raise ValueError(f"{name} holds at most {file.records_max} records")
        for number, value in enumerate(values, 1):
            blocks.append((0x00, _dgi(file.sfi << 8 | number, encode_record(name, dict(value)))))
    keys = hsm.health_perso_keys(suite, diversifier=diversifier)
    blocks.append((P1_ENCIPHERED, _dgi(DGI_KEYS, bytes.fromhex(keys["dgi_8060"]))))
    blocks.append((P1_LAST, _dgi(DGI_KCVS, bytes.fromhex(keys["dgi_9060"]))))
    return blocks


def load_health_application(
    card: Any,
    hsm: Any,
    suite: Suite,
    *,
    records: Mapping[str, Sequence[Mapping[str, Any]]],
    perso_label: str = "perso-kek",
) -> HealthApplication:
    """Install and personalise the health DDF1 on ``card`` (a :class:`citycard.card.Card`).

    ``records`` must hold ``DDF1/EF05`` (its ``chip_serial`` is set to the card serial, the keys'
    diversifier). HealthLoadError with the card's status word when the card refuses a step."""
    from citycard.card.image import HsmPersoDecryptor, install_application

    issuer = [dict(r) for r in records.get(hf.ISSUER_FILE.name, ())]
    if len(issuer) != 1:
        raise ValueError(f"{hf.ISSUER_FILE.name} (issuer data) needs exactly one record")
    issuer[0].update(chip_serial=card.serial.hex().upper(), suite=suite.name)
    records = {**records, hf.ISSUER_FILE.name: issuer}
    blocks = store_data_blocks(hsm, suite, diversifier=card.serial, records=records)
    app = install_application(card, HealthApplication())
    previous = card.perso_decryptor
    card.perso_decryptor = HsmPersoDecryptor(hsm, suite, label=perso_label)
    try:
        answer = card.process(b"\x00\xa4\x04\x00" + bytes([len(app.aid)]) + app.aid + b"\x00")
        if answer[-2:] != SW_OK:
            raise HealthLoadError("SELECT the health DDF1", int.from_bytes(answer[-2:], "big"))
        for number, (p1, data) in enumerate(blocks):
            answer = card.process(bytes([0x80, 0xE2, p1, number, len(data)]) + data)
            if answer[-2:] != SW_OK:
                raise HealthLoadError(f"STORE DATA block {number}", int.from_bytes(answer[-2:], "big"))
    except HealthLoadError:
        card._applications = tuple(a for a in card.applications if a is not app)
        card.power_off()
        raise
    finally:
        card.perso_decryptor = previous
    card.power_off()
    return app
