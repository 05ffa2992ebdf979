"""The API's lifespan runs the NATS JetStream relay of the exchange's event log (issue 6 item 5):
an event committed while the server runs reaches the stream, and the relay stops with the server.

Real uvicorn (lifespan on), real NATS at nats://127.0.0.1:4222 (require_service)."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
from tests import dbtools
from tests.conftest import require_service
from tests.httpserver import start_server
from tests.platform.test_nats_relay import NATS_URL, _delete_stream, _reachable, _stream_messages

from citycard.api import create_app
from citycard.api.settings import ApiSettings
from citycard.db import write_transaction
from citycard.hsm import SoftHSM
from citycard.platform import events, nats_relay

RELAY_WAIT_S = 20


@pytest.fixture
def relay_config():
    require_service(_reachable(NATS_URL), f"NATS at {NATS_URL} unreachable")
    tag = secrets.token_hex(4)
    config = nats_relay.RelayConfig(
        url=NATS_URL, stream=f"CITYCARD_API_{tag}", subject_prefix=f"citycardapi.{tag}.events",
        poll_interval_s=0.05,
    )  # fmt: skip
    yield config
    asyncio.run(_delete_stream(config))


def test_the_server_relays_committed_events_to_jetstream(tmp_path, relay_config):
    with dbtools.fresh_database("sqlite", tmp_path) as url:
        engine = dbtools.migrated_engine(url)
        hsm = SoftHSM.open(tmp_path / "hsm-keys.json", master_key_file=tmp_path / "hsm-master.key")
        app = create_app(
            engine=engine,
            hsm=hsm,
            settings=ApiSettings(image_dir=tmp_path / "cards"),
            relay_config=relay_config,
        )
        server, thread, _ = start_server(app, lifespan="on")
        try:
            deadline = time.monotonic() + RELAY_WAIT_S
            assert app.state.nats_relay is not None  # the lifespan started the relay task
            with write_transaction(engine) as conn:
                seq = events.emit(conn, "card.lost", card_id=7, payload={"formal": True})
            lost_subject = f"{relay_config.subject_prefix}.card.lost"
            found: list = []
            while time.monotonic() < deadline:
                try:
                    found = asyncio.run(_stream_messages(relay_config))
                except Exception:  # noqa: BLE001 - the stream appears once the relay has connected
                    found = []
                if any(subject == lost_subject for subject, _, _ in found):
                    break
                time.sleep(0.1)
            lost = [(subject, body, msg_id) for subject, body, msg_id in found if subject == lost_subject]
            assert [(subject, msg_id) for subject, _, msg_id in lost] == [(lost_subject, str(seq))]
            assert lost[0][1]["payload"] == {"formal": True}
            # The lifespan's blacklist publisher reacts to the loss report with new list versions;
            # their blacklist.published events may be relayed too, each once, after the report.
            others = [(subject, int(msg_id)) for subject, _, msg_id in found if subject != lost_subject]
            assert all(
                subject == f"{relay_config.subject_prefix}.blacklist.published" for subject, _ in others
            )
            assert len({seq_ for _, seq_ in others}) == len(others) and all(seq_ > seq for _, seq_ in others)
        finally:
            server.should_exit = True
            thread.join(timeout=15)
            engine.dispose()
        assert not thread.is_alive()
        assert app.state.nats_relay.done()  # stopped with the server
