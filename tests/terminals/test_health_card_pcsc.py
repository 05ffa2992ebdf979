"""The hospital desk through the real PC/SC stack: pyscard → pcscd → vpcd → VpcdBridge → a virtual
card with the health DDF1, both suites. Skips without pcscd + vpcd (fails with
CITYCARD_REQUIRE_SERVICES=1), as tests/integration/test_terminal_pcsc.py does."""

from __future__ import annotations

import datetime as dt

import pytest
from tests.conftest import require_service
from tests.integration.test_pcsc_vpcd import pcsc_problem, served

from citycard.card.health.perso import load_health_application
from citycard.card.image import new_card
from citycard.crypto.suite import GM, INTL
from citycard.reader import PcscTransport
from citycard.terminals.health_card import HealthCardReader, HospitalSam, InstitutionSigner, VisitRecord

RECORDS = {
    "DDF1/EF05": [{"card_type": "2", "card_no": "330106198512011234"}],
    "DDF1/EF06": [
        {"name": "赵六", "sex": "1", "birth_date": "1985-12-01", "id_number": "330106198512011234"}
    ],
}


@pytest.fixture(scope="module")
def pcsc() -> None:
    problem = pcsc_problem()
    require_service(problem is None, f"PC/SC through pcscd + vpcd: {problem}")


@pytest.mark.parametrize("suite", [GM, INTL], ids=lambda s: s.name)
def test_the_desk_reads_and_writes_the_health_card_over_pcsc(pcsc, suite, tmp_path):
    from citycard.hsm import SoftHSM

    hsm = SoftHSM.ephemeral()
    hsm.create_health_masters(suite)
    hsm.create_institution_key("H001", suite)
    card = new_card([], hsm=hsm, image_path=tmp_path / "card.json")
    load_health_application(card, hsm, suite, records=RECORDS)
    visit = VisitRecord(
        "H001", dt.datetime(2026, 11, 27, 2, 0, tzinfo=dt.UTC), "骨科", "S82.0", 56_000, 30_000
    )
    with served(card) as (_, reader_name), PcscTransport(reader_name, card_wait_s=10) as transport:
        desk = HealthCardReader(transport, sam=HospitalSam(hsm, institution_id="H001"))
        assert desk.select()["chip_serial"] == card.serial.hex().upper()
        ident = desk.read_identity()
        assert (ident.name, ident.id_number, ident.suite) == ("赵六", "330106198512011234", suite.name)
        signed = desk.append_visit(visit, signer=InstitutionSigner(hsm, "H001", suite))
        desk.select()  # a new selection: the read grant must be earned again
        assert desk.read_visits() == [signed]
        assert transport.transmit(bytes([0x00, 0xB2, 0x01, 0x06 << 3 | 4, 0x00])) == b"\x69\x82"
