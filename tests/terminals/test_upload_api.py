"""``POST /v1/clearing/uploads`` at the edge: 422 with field errors for bad bodies, the batch id
bound to the Idempotency-Key and the terminal, another terminal's key refused, a batch id reused
with other records refused — and a hypothesis fuzz of the body: 2xx or 4xx, never 5xx."""

from __future__ import annotations

import secrets
import string

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .validators import Platform

TID = "BUS-FZ-001"
F55 = "9F2608" + "00" * 8 + "9F0206000000000200"


@pytest.fixture
def platform(engine, hsm):
    p = Platform(engine, hsm)
    p.start()
    yield p
    p.stop()


def record(**changes):
    base = {
        "pan": "6235480000000000017", "psn": "01", "amount_fen": 200, "balance_fen_after": 9_800,
        "field55": F55, "terminal_id": TID, "operator": "pzh-bus", "route": "3", "vehicle": "D30001",
        "tap_at": "2026-11-27T00:30:00+00:00",
        "transit": {"kind": "flat", "line": "3", "stop": None, "fare_fen": 200, "refund_fen": 0,
                    "reasons": ["flat_fare"], "holder_kind": "resident"},
    }  # fmt: skip
    base.update(changes)
    return base


def post(client: httpx.Client, key: str, body, idem: str | None = None) -> httpx.Response:
    batch = body.get("batch_id") if isinstance(body, dict) else None
    usable = isinstance(batch, str) and batch and batch.isascii() and batch.isprintable()  # a header value
    idem = idem or (batch if usable else f"{TID}:x{secrets.token_hex(4)}")
    return client.post("/v1/clearing/uploads", json=body, headers={"X-API-Key": key, "Idempotency-Key": idem})


def test_the_edges(platform):
    key = platform.key_for(TID)
    with httpx.Client(base_url=platform.base_url) as client:
        ok = post(client, key, {"terminal_id": TID, "batch_id": f"{TID}:1-1", "records": [record()]})
        assert ok.status_code == 200, ok.text
        assert ok.json() == {
            "batch_id": f"{TID}:1-1",
            "records": 1,
            "accepted": 0,
            "exceptions": 1,
            "replayed": False,
        }  # fmt: skip  — a made-up TC: clearing's exception, not an HTTP error
        assert platform.exceptions()[0].reason == "malformed"
        other = post(
            client, key, {"terminal_id": TID, "batch_id": f"{TID}:1-1", "records": [record(amount_fen=300)]}
        )
        assert other.status_code == 422 and other.json()["code"] == "idempotency.mismatch"
        bad = post(
            client,
            key,
            {"terminal_id": TID, "batch_id": f"{TID}:2-2", "records": [record(amount_fen=-1, psn="1")]},
        )
        assert bad.status_code == 422 and bad.json()["code"] == "request.invalid"
        assert {e["field"] for e in bad.json()["errors"]} == {
            "body.records.0.amount_fen",
            "body.records.0.psn",
        }
        naive = post(
            client,
            key,
            {"terminal_id": TID, "batch_id": f"{TID}:3-3", "records": [record(tap_at="2026-11-27T00:30:00")]},
        )
        assert naive.status_code == 422 and naive.json()["errors"][0]["field"] == "body.records.0.tap_at"
        mismatch = post(
            client,
            key,
            {"terminal_id": TID, "batch_id": f"{TID}:4-4", "records": [record()]},
            idem=f"{TID}:5-5",
        )
        assert mismatch.status_code == 422 and mismatch.json()["code"] == "idempotency.batch_id"
        prefix = post(client, key, {"terminal_id": TID, "batch_id": "BUS-X:6-6", "records": [record()]})
        assert prefix.status_code == 422 and prefix.json()["code"] == "clearing.batch_id"
        foreign = post(
            client,
            key,
            {"terminal_id": TID, "batch_id": f"{TID}:7-7", "records": [record(terminal_id="BUS-X")]},
        )
        assert foreign.status_code == 422 and foreign.json()["code"] == "clearing.other_terminal"
        other_key = platform.key_for("BUS-FZ-002")
        stolen = post(
            client, other_key, {"terminal_id": TID, "batch_id": f"{TID}:8-8", "records": [record()]}
        )
        assert stolen.status_code == 403 and stolen.json()["code"] == "auth.other_terminal"
        operator = post(
            client,
            platform.key_for("ops", "operator"),
            {"terminal_id": TID, "batch_id": f"{TID}:9-9", "records": [record()]},
        )
        assert operator.status_code == 403 and operator.json()["code"] == "auth.forbidden"
        too_many = post(
            client, key, {"terminal_id": TID, "batch_id": f"{TID}:10-10", "records": [record()] * 5_001}
        )
        assert too_many.status_code == 413  # the 1 MB body limit comes first
        missing = client.post("/v1/clearing/uploads", json={"terminal_id": TID, "batch_id": f"{TID}:11-11",
                              "records": [record()]}, headers={"X-API-Key": key})  # fmt: skip
        assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "header.Idempotency-Key"
    assert len(platform.exceptions()) == 1  # nothing refused above reached clearing


TEXT = st.text(alphabet=string.ascii_letters + string.digits + "-_.:/ é中", max_size=40)
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
FIELDS = list(record())


@st.composite
def bodies(draw):
    shape = draw(st.sampled_from(["random", "record", "batch"]))
    if shape == "random":
        return draw(VALUES)
    rec = record()
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        if draw(st.booleans()):
            rec.pop(name)
        else:
            rec[name] = draw(VALUES)
    if draw(st.booleans()):
        rec[draw(TEXT)] = draw(VALUES)
    body = {"terminal_id": TID, "batch_id": f"{TID}:{secrets.token_hex(4)}", "records": [rec]}
    if shape == "batch":
        for name in draw(
            st.lists(st.sampled_from(["terminal_id", "batch_id", "records"]), max_size=2, unique=True)
        ):
            body[name] = draw(VALUES)
    return body


def test_fuzzed_upload_bodies_never_get_a_5xx(platform):
    key = platform.key_for(TID)
    with httpx.Client(base_url=platform.base_url, timeout=30) as client:

        @settings(
            max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
        )
        @given(body=bodies())
        def check(body):
            answer = post(client, key, body)
            named = body.get("terminal_id") if isinstance(body, dict) else None
            if answer.status_code == 403:  # a well-formed id of another terminal than the key's
                assert isinstance(named, str) and named != TID, answer.text
                assert answer.json()["code"] == "auth.other_terminal"
            else:
                assert answer.status_code in (200, 422), (answer.status_code, answer.text)
            assert answer.headers["content-type"].startswith(
                "application/json" if answer.status_code == 200 else "application/problem+json"
            )

        check()
