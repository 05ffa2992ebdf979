"""Fixtures for personalisation tests: one HSM in a temporary data dir, prepared cards per profile.

The HSM is the real SoftHSM on files under ``CITYCARD_DATA_DIR`` (a temporary directory), so test
CAs, issuer keys, IMKs and the transport key are created the way ``citycard card new`` creates them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from citycard.card.perso import PreparedCard, load_profile, prepare_card
from citycard.hsm import SoftHSM

TODAY = dt.date(2025, 3, 15)
PROFILES = ("pboc-debit-intl", "pboc-debit-gm", "pboc-ec-only-gm", "citizen-card-gm", "citizen-card-intl")


@pytest.fixture(scope="session")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHSM]:
    data_dir = tmp_path_factory.mktemp("citycard-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CITYCARD_DATA_DIR", str(data_dir))
        patch.delenv("CITYCARD_HSM_MASTER_KEY", raising=False)
        yield SoftHSM.open()


@pytest.fixture(scope="session")
def prepared(hsm: SoftHSM) -> dict[str, PreparedCard]:
    """Each shipped profile prepared once (seeded PAN), by profile name."""
    return {name: prepare_card(load_profile(name), hsm, seed=7, today=TODAY) for name in PROFILES}
