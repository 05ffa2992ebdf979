"""Fuzz (hypothesis) a live `citycard host serve`: malformed and mutated ISO 8583 never crash it.

Every junk message gets a format-error answer (F39 ``30``), or — when a mutation still decodes as
a well-formed request — the MAC refusal ``A0`` (its F64 cannot verify), or a closed connection.
Afterwards the server still approves a valid, MACed request with a real ARQC, and the ledger is
exactly as it was before the junk (nothing posted, invariants hold).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from tests import dbtools
from tests.host.hostproc import HostDir, ServerProcess

from citycard.host.client import HostClient
from citycard.iso8583 import FramingError, Iso8583Error, decode, encode, frame, recv_message
from citycard.ledger import balances, check_invariants

READ_TIMEOUT_S = 5.0
ACCEPTED_CODES = {"30", "A0"}


class Live:
    def __init__(self, bank: HostDir, server: ServerProcess, sample: bytes, card: Any, terminal: Any) -> None:
        self.bank, self.server, self.sample, self.card, self.terminal = bank, server, sample, card, terminal
        self.initial = ledger_snapshot(self)  # before any junk


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    directory = tmp_path_factory.mktemp("fuzz-host")
    with dbtools.fresh_database("sqlite", directory) as url:
        bank = HostDir(directory, url)
        cards = bank.enrol(2)
        terminal = bank.terminal("F0000001")
        sample_fields = cards[0].request("purchase", terminal=terminal, stan=999_000, amount_fen=100,
                                         when=datetime.now(UTC))  # fmt: skip
        server = bank.serve()
        try:
            yield Live(bank, server, encode({**sample_fields, "64": bytes(8)}), cards[1], terminal)
        finally:
            server.__exit__()
            bank.close()


def ledger_snapshot(live: Live) -> tuple[Any, ...]:
    with live.bank.engine.connect() as conn:
        postings = conn.execute(text("SELECT count(*) FROM ledger_postings")).scalar_one()
        codes = sorted(conn.execute(text("SELECT code FROM ledger_accounts")).scalars())
        return postings, tuple(sorted(balances(conn, codes).items()))


def exchange_junk(port: int, payload: bytes, *, framed: bool) -> list[dict[str, Any]] | None:
    """Send ``payload`` (framed, or as a raw stream then half-close); the answers, or None when closed."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as sock:
        sock.sendall(frame(payload) if framed else payload)
        if not framed:
            sock.shutdown(socket.SHUT_WR)  # the server sees the end of the stream
        while True:
            try:
                raw = recv_message(sock, READ_TIMEOUT_S)
            except (ConnectionError, FramingError):
                return answers or None
            except TimeoutError:
                if framed:
                    pytest.fail(f"no answer and no close for {payload.hex()}")
                return answers or None
            answers.append(decode(raw)[0])
            if framed:
                return answers


def check_answers(answers: list[dict[str, Any]] | None) -> None:
    for answer in answers or []:
        assert answer.get("39") in ACCEPTED_CODES, answer
        assert answer["t"][2] in "13", "an answer has a response MTI"


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(1, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.just(0)),
)


def mutate(sample: bytes, steps: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(sample)
    for op, where, value in steps:
        if not data:
            break
        at = where % len(data)
        if op == "flip":
            data[at] ^= value
        elif op == "truncate":
            del data[max(1, at) :]
        elif op == "insert":
            data.insert(at, value)
        else:
            del data[at]
    return bytes(data) or b"\x00"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_requests_get_30_a0_or_close(live: Live, steps: list[tuple[str, int, int]]) -> None:
    check_answers(exchange_junk(live.server.port, mutate(live.sample, steps), framed=True))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(min_size=1, max_size=300), framed=st.booleans())
def test_random_bytes_get_30_or_close(live: Live, payload: bytes, framed: bool) -> None:
    check_answers(exchange_junk(live.server.port, payload, framed=framed))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mti=st.sampled_from(["0100", "0200", "0220", "0400", "0500", "0800", "0110", "0900"]),
    f3=st.sampled_from(["000000", "030000", "600000", "999999"]),
    f60=st.text("0123456789", min_size=0, max_size=17),
    drop=st.sets(st.sampled_from(["2", "3", "4", "11", "41", "42", "49", "55", "60"])),
)
def test_well_formed_but_wrong_messages_never_reach_the_ledger(
    live: Live, mti: str, f3: str, f60: str, drop: set[str]
) -> None:
    fields, _ = decode(live.sample)
    fields = {k: v for k, v in fields.items() if k not in drop and k != "64"}
    fields.update({"t": mti, "3": f3})
    if f60:
        fields["60"] = f60
    try:
        raw = encode(fields)
    except Iso8583Error:
        return
    check_answers(exchange_junk(live.server.port, raw, framed=True))


def test_zz_after_the_junk_a_valid_request_is_approved_and_nothing_else_changed(live: Live) -> None:
    """Runs last in this module (name order): the server is alive and the junk posted nothing."""
    before = ledger_snapshot(live)
    assert before == live.initial, "the junk changed nothing in the ledger"
    with HostClient("127.0.0.1", live.server.port, hsm=live.bank.hsm) as client:
        client.sign_on(terminal_id=live.terminal.terminal_id, merchant_id=live.terminal.merchant_id)
        request = live.card.request("purchase", terminal=live.terminal, stan=1, amount_fen=250,
                                    when=datetime.now(UTC))  # fmt: skip
        answer = client.exchange(request)
    assert answer["39"] == "00" and "64" in answer
    after = ledger_snapshot(live)
    assert after[0] == before[0] + 1, "exactly the valid purchase was posted"
    assert live.server.proc.poll() is None, "the server never crashed"
    with live.bank.engine.connect() as conn:
        assert check_invariants(conn) == []
