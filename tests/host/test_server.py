"""HostServer over real TCP: format errors, junk, MAC rules, sign-on KCVs, pipelining, graceful shutdown.

The handler here is a test handler (an approving host built on iso8583.builders.response), not a
stand-in for our issuer: the issuer's own behaviour is tested in tests/host/issuer and end to end
in test_crash.py / test_fuzz_server.py.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from citycard.crypto import GM, INTL, Suite
from citycard.crypto.keys import key_check_value
from citycard.host.client import AsyncHostClient, HostClient, HostTimeout
from citycard.host.server import HostServer
from citycard.hsm import SoftHSM
from citycard.iso8583 import builders, decode, encode, frame, recv_message

TERMINAL = builders.Terminal(terminal_id="T0000001", merchant_id="M00000000000001")
CARD = builders.Card(pan="6235480000000001", psn=1, expiry_yymm="3012")
TMK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


class ApprovingHost:
    """Answers every request 00 with an auth code; counts what it was given."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.seen: list[dict[str, Any]] = []
        self.batches: list[int] = []
        self.delay_s = delay_s

    async def handle_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        self.batches.append(len(requests))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.seen.extend(requests)
        return [builders.response(r, "00", f38="123456") for r in requests]


class RunningServer:
    """A HostServer on its own event loop in a thread (so sync clients can talk to it)."""

    def __init__(self, server: HostServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(server.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(10)
        self.port = server.port

    def shutdown(self, grace_s: float = 10.0) -> None:
        asyncio.run_coroutine_threadsafe(self.server.shutdown(grace_s), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _hsm(suite: Suite) -> SoftHSM:
    hsm = SoftHSM.ephemeral()
    hsm.import_key(f"tmk:{TERMINAL.terminal_id}", "TMK", suite, TMK)
    return hsm


@pytest.fixture(params=[INTL, GM], ids=["intl", "gm"])
def suite(request: pytest.FixtureRequest) -> Suite:
    return request.param


@pytest.fixture
def host(suite: Suite) -> Iterator[tuple[RunningServer, ApprovingHost, SoftHSM]]:
    handler = ApprovingHost()
    hsm = _hsm(suite)
    running = RunningServer(HostServer(handler, hsm=hsm, institution_id="08010000"))
    yield running, handler, hsm
    running.shutdown()


def purchase(stan: int, amount_fen: int = 1250, terminal: builders.Terminal = TERMINAL) -> dict[str, Any]:
    return builders.financial(
        "purchase", terminal=terminal, card=CARD, amount_fen=amount_fen, stan=stan, when=datetime.now(UTC),
        ic=bytes.fromhex("9F2608") + bytes(8),
    )  # fmt: skip


def _raw_exchange(port: int, raw: bytes, timeout: float = 5.0) -> bytes | None:
    """Send one frame on a fresh socket; the answer, or None when the server closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(frame(raw))
        try:
            return recv_message(sock, timeout)
        except ConnectionError:
            return None


def test_sign_on_installs_keys_with_matching_kcvs_and_mac_flows(host, suite) -> None:
    running, handler, _ = host
    terminal_hsm = _hsm(suite)  # the terminal's own HSM holding the same TMK
    with HostClient("127.0.0.1", running.port, hsm=terminal_hsm) as client:
        client.sign_on(terminal_id=TERMINAL.terminal_id, merchant_id=TERMINAL.merchant_id)
        prefix = f"to/127.0.0.1:{running.port}/"
        for kind in ("mak", "pik"):
            server_kcv = running.server.hsm.session_key_kcv(f"{kind}:T0000001")
            assert terminal_hsm.session_key_kcv(f"{kind}:{prefix}T0000001") == server_kcv
        answer = client.exchange(purchase(7))
    assert answer["t"] == "0210" and answer["39"] == "00" and answer["11"] == "000007"
    assert "64" in answer  # MACed under the MAK, and the client verified it
    assert handler.seen[-1]["64"] and handler.seen[-1]["11"] == "000007"


def test_sign_on_f62_deciphers_to_kcvs_under_the_tmk(host, suite) -> None:
    """F62 layout: PIK(16)‖KCV(4)‖MAK(16)‖KCV(4), keys under the TMK — checked with plain crypto."""
    running, _, _ = host
    request = builders.network("sign_on", terminal=TERMINAL, stan=1, when=datetime.now(UTC))
    answer, _ = decode(_raw_exchange(running.port, encode(request)))
    assert answer["t"] == "0810" and answer["39"] == "00" and len(answer["62"]) == 40
    for offset, kind in ((0, "pik"), (20, "mak")):
        key = suite.ecb_decrypt(TMK, answer["62"][offset : offset + 16])
        assert key_check_value(key, suite=suite, length=4) == answer["62"][offset + 16 : offset + 20]
        assert (
            running.server.hsm.session_key_kcv(f"{kind}:T0000001")
            == answer["62"][offset + 16 : offset + 20].hex().upper()
        )


def test_sign_on_without_master_key_is_refused(host) -> None:
    running, _, _ = host
    stranger = builders.Terminal(terminal_id="T9999999", merchant_id="M00000000000001")
    request = builders.network("sign_on", terminal=stranger, stan=2, when=datetime.now(UTC))
    answer, _ = decode(_raw_exchange(running.port, encode(request)))
    assert answer["39"] == "A7" and "62" not in answer


def test_echo_answered_by_the_server(host) -> None:
    running, handler, _ = host
    request = builders.network("echo", terminal=TERMINAL, stan=3, when=datetime.now(UTC))
    answer, _ = decode(_raw_exchange(running.port, encode(request)))
    assert (answer["t"], answer["39"], answer["11"]) == ("0810", "00", "000003")
    assert handler.seen == []


def test_format_error_gets_30_and_never_reaches_the_handler(host) -> None:
    running, handler, _ = host
    fields = purchase(11)
    del fields["42"]  # a purchase lacking F42 decodes but fits no kind
    answer, _ = decode(_raw_exchange(running.port, encode(fields)))
    assert (answer["t"], answer["39"], answer["11"], answer["41"]) == ("0210", "30", "000011", "T0000001")
    truncated = encode(purchase(12))[:-5]  # F55 cut short: does not decode; MTI and F11 still readable
    answer, _ = decode(_raw_exchange(running.port, truncated))
    assert (answer["t"], answer["39"], answer["11"]) == ("0210", "30", "000012")
    assert handler.seen == [] and running.server.stats.format_errors == 2


def test_undecodable_junk_closes_the_connection(host) -> None:
    running, handler, _ = host
    assert _raw_exchange(running.port, b"\xff\xfe junk") is None
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        sock.sendall(b"\xff\xff" + bytes(10))  # oversize frame length
        with pytest.raises(ConnectionError):
            recv_message(sock, 5)
    assert handler.seen == []


def test_mac_rules(host, suite) -> None:
    running, handler, _ = host
    # never signed on, require_mac → A0
    answer, _ = decode(_raw_exchange(running.port, encode(purchase(21))))
    assert answer["39"] == "A0"
    terminal_hsm = _hsm(suite)
    with HostClient("127.0.0.1", running.port, hsm=terminal_hsm) as client:
        client.sign_on(terminal_id=TERMINAL.terminal_id, merchant_id=TERMINAL.merchant_id)
        good = encode(purchase(22, amount_fen=100) | {"64": bytes(8)})
        mac_of_good = client._keys.to_wire(purchase(22, amount_fen=100))[-8:]
        tampered = encode(purchase(22, amount_fen=100_000) | {"64": mac_of_good})  # amount changed
        assert len(tampered) == len(good)
        answer, _ = decode(_raw_exchange(running.port, tampered))
        assert answer["39"] == "A0"
        answer, _ = decode(_raw_exchange(running.port, encode(purchase(23))))  # no F64 at all
        assert answer["39"] == "A0"
        assert client.exchange(purchase(24))["39"] == "00"
    assert [r["11"] for r in handler.seen] == ["000024"]
    assert running.server.stats.mac_errors == 3


def test_no_mac_mode_passes_unsigned_requests(suite) -> None:
    handler = ApprovingHost()
    running = RunningServer(
        HostServer(handler, hsm=_hsm(suite), institution_id="08010000", require_mac=False)
    )
    try:
        answer, _ = decode(_raw_exchange(running.port, encode(purchase(31))))
        assert answer["39"] == "00" and "64" not in answer
    finally:
        running.shutdown()


def test_pipelined_requests_on_one_connection_are_all_answered_in_batches(suite) -> None:
    handler = ApprovingHost(delay_s=0.02)  # slow handler: requests pile up into batches
    hsm = _hsm(suite)
    running = RunningServer(HostServer(handler, hsm=hsm, institution_id="08010000", batch_max=64))

    async def go() -> list[dict[str, Any]]:
        async with AsyncHostClient("127.0.0.1", running.port, hsm=_hsm(suite)) as client:
            await client.sign_on(terminal_id=TERMINAL.terminal_id, merchant_id=TERMINAL.merchant_id)
            return await asyncio.gather(*(client.exchange(purchase(100 + i, 100 + i)) for i in range(300)))

    try:
        answers = asyncio.run(go())
    finally:
        running.shutdown()
    assert [a["11"] for a in answers] == [f"{100 + i:06d}" for i in range(300)]
    assert [a["4"] for a in answers] == [f"{100 + i:012d}" for i in range(300)]
    assert all(a["39"] == "00" for a in answers)
    assert max(handler.batches) > 1 and max(handler.batches) <= 64 and sum(handler.batches) == 300


def test_graceful_shutdown_answers_in_flight_requests(suite) -> None:
    handler = ApprovingHost(delay_s=0.3)
    running = RunningServer(
        HostServer(handler, hsm=_hsm(suite), institution_id="08010000", require_mac=False)
    )

    async def go() -> tuple[list[dict[str, Any]], Any]:
        async with AsyncHostClient("127.0.0.1", running.port) as client:
            pending = [asyncio.ensure_future(client.exchange(purchase(200 + i))) for i in range(20)]
            await asyncio.sleep(0.1)  # all sent, the first batch is in the handler
            stopping = asyncio.get_running_loop().run_in_executor(None, running.shutdown)
            answers = await asyncio.gather(*pending)
            await stopping
            try:
                await client.exchange(purchase(299), timeout_s=1)
                late = "answered"
            except (ConnectionError, HostTimeout) as exc:
                late = exc
            return answers, late

    answers, late = asyncio.run(go())
    assert sorted(a["11"] for a in answers) == [f"{200 + i:06d}" for i in range(20)]
    assert all(a["39"] == "00" for a in answers)
    assert late != "answered"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", running.port), timeout=1)


class BrokenHost:
    """Raises on a batch holding STAN 13; answers STAN 14 with a field the spec lacks; else 00."""

    async def handle_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        if any(r["11"] == "000013" for r in requests):
            raise RuntimeError("database down")
        return [builders.response(r, "00", f99="x") if r["11"] == "000014" else builders.response(r, "00")
                for r in requests]  # fmt: skip


def test_handler_failures_answer_96_and_the_server_goes_on(suite) -> None:
    running = RunningServer(
        HostServer(BrokenHost(), hsm=_hsm(suite), institution_id="08010000", require_mac=False)
    )
    try:
        with HostClient("127.0.0.1", running.port) as client:
            assert client.exchange(purchase(13))["39"] == "96"
            answer = client.exchange(purchase(14))
            assert (answer["39"], answer["11"], answer["4"]) == ("96", "000014", "000000001250")
            assert client.exchange(purchase(15))["39"] == "00"
    finally:
        running.shutdown()


def test_switch_signs_on_as_forwarding_institution_under_its_zmk(suite) -> None:
    """Peer = F33 when present: keys under zmk:<F33>; the switch's forwarded requests MAC under them."""
    server_hsm, switch_hsm = SoftHSM.ephemeral(), SoftHSM.ephemeral()
    for hsm in (server_hsm, switch_hsm):
        hsm.import_key("zmk:08019999", "ZMK", suite, TMK)
    handler = ApprovingHost()
    running = RunningServer(HostServer(handler, hsm=server_hsm, institution_id="01045810"))
    forwarded = purchase(61) | {"33": "08019999", "32": "01040000"}
    try:
        with HostClient("127.0.0.1", running.port, hsm=switch_hsm) as client:
            client.sign_on(terminal_id="SWITCH01", merchant_id="SWITCH000000001", institution_id="08019999")
            answer = client.exchange(forwarded)
            assert answer["39"] == "00" and "64" in answer and answer["33"] == "08019999"
            assert client.exchange(purchase(62))["39"] == "A0"  # the terminal itself never signed on
    finally:
        running.shutdown()
    assert server_hsm.has_session_key("mak:08019999") and not server_hsm.has_session_key("mak:SWITCH01")
    assert [r["11"] for r in handler.seen] == ["000061"]


class LaneHost(ApprovingHost):
    """An approving lane that records how many lanes are inside a batch at once (shared ``busy``)."""

    def __init__(self, busy: dict[str, int], delay_s: float) -> None:
        super().__init__(delay_s)
        self.busy = busy
        self.closed = False

    async def handle_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        self.busy["now"] += 1
        self.busy["max"] = max(self.busy["max"], self.busy["now"])
        try:
            return await super().handle_batch(requests)
        finally:
            self.busy["now"] -= 1

    def close(self) -> None:
        self.closed = True


def test_lanes_keep_each_terminal_in_one_lane_and_run_side_by_side(suite) -> None:
    """Two lanes: every terminal's requests reach exactly one lane (crc32(F41) mod 2), both lanes
    work, their batches overlap, every request is answered in order, and shutdown closes both."""
    busy = {"now": 0, "max": 0}
    lanes = [LaneHost(busy, delay_s=0.05), LaneHost(busy, delay_s=0.05)]
    server = HostServer(lanes[0], lanes=lanes[1:], hsm=_hsm(suite), institution_id="08010000",
                        require_mac=False)  # fmt: skip
    running = RunningServer(server)
    terminals = [builders.Terminal(terminal_id=f"T{i:07d}", merchant_id=f"M{i:014d}") for i in range(8)]

    async def one_terminal(terminal: builders.Terminal) -> list[dict[str, Any]]:
        async with AsyncHostClient("127.0.0.1", running.port) as client:
            requests = [purchase(300 + i, 300 + i, terminal=terminal) for i in range(12)]
            return await asyncio.gather(*(client.exchange(r) for r in requests))

    async def go() -> list[list[dict[str, Any]]]:
        return await asyncio.gather(*(one_terminal(t) for t in terminals))

    try:
        answers = asyncio.run(go())
    finally:
        running.shutdown()
    for terminal, got in zip(terminals, answers, strict=True):
        assert [a["11"] for a in got] == [f"{300 + i:06d}" for i in range(12)]
        assert all(a["39"] == "00" and a["41"] == terminal.terminal_id for a in got)
    seen_by = [{r["41"] for r in lane.seen} for lane in lanes]
    assert len(seen_by[0]) == len(seen_by[1]) == 4 and not seen_by[0] & seen_by[1]  # least-loaded lane
    assert seen_by[0] | seen_by[1] == {t.terminal_id for t in terminals}
    assert sum(len(lane.seen) for lane in lanes) == 8 * 12
    assert busy["max"] == 2  # the lanes' batches overlapped
    assert all(lane.closed for lane in lanes)


def test_lanes_are_bounded() -> None:
    from citycard.host.server import LANES_MAX

    with pytest.raises(ValueError, match="lanes"):
        HostServer(
            ApprovingHost(), lanes=[ApprovingHost()] * LANES_MAX, hsm=_hsm(INTL), institution_id="08010000"
        )
