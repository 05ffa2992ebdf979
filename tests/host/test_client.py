"""HostClient / AsyncHostClient against real sockets: unavailable, timeout, stale answers skipped, PIN block."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest
from tests.host.test_server import TERMINAL, TMK, RunningServer, _hsm, purchase

from citycard.crypto import GM, INTL
from citycard.host.client import AsyncHostClient, HostClient, HostTimeout, HostUnavailable, SignOnError
from citycard.host.server import HostServer
from citycard.hsm import HSMError
from citycard.hsm.keyexchange import pin_block_format_0
from citycard.iso8583 import Iso8583Error, builders, decode, encode, frame, recv_message


class SilentOnOddStan:
    """Answers even STANs 00 and drops odd ones (None = no answer), like a host that lost a request."""

    async def handle_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        return [builders.response(r, "00") if int(r["11"]) % 2 == 0 else None for r in requests]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_host_raises_host_unavailable() -> None:
    port = _free_port()
    with pytest.raises(HostUnavailable, match=f"127.0.0.1:{port}"):
        HostClient("127.0.0.1", port, timeout_s=1)

    async def go() -> None:
        await AsyncHostClient("127.0.0.1", port).connect()

    with pytest.raises(HostUnavailable):
        asyncio.run(go())


@pytest.mark.parametrize("suite", [INTL, GM], ids=["intl", "gm"])
def test_timeout_then_next_answer_is_matched_by_stan(suite) -> None:
    running = RunningServer(HostServer(SilentOnOddStan(), hsm=_hsm(suite), institution_id="08010000"))
    try:
        with HostClient("127.0.0.1", running.port, hsm=_hsm(suite), timeout_s=0.5) as client:
            client.sign_on(terminal_id=TERMINAL.terminal_id, merchant_id=TERMINAL.merchant_id)
            with pytest.raises(HostTimeout, match="000041"):
                client.exchange(purchase(41))
            answer = client.exchange(purchase(42))
            assert (answer["11"], answer["39"]) == ("000042", "00")

        async def go() -> tuple[BaseException, dict[str, Any]]:
            async with AsyncHostClient("127.0.0.1", running.port, hsm=_hsm(suite)) as client:
                await client.sign_on(terminal_id=TERMINAL.terminal_id, merchant_id=TERMINAL.merchant_id)
                lost, found = await asyncio.gather(
                    client.exchange(purchase(43), timeout_s=0.5),
                    client.exchange(purchase(44), timeout_s=5),
                    return_exceptions=True,
                )
                return lost, found

        lost, found = asyncio.run(go())
        assert isinstance(lost, HostTimeout) and found["11"] == "000044"
    finally:
        running.shutdown()


def test_sign_on_with_wrong_tmk_is_rejected_by_check_values() -> None:
    running = RunningServer(HostServer(SilentOnOddStan(), hsm=_hsm(INTL), institution_id="08010000"))
    try:
        wrong = _hsm(INTL)
        wrong.import_key("tmk:other", "TMK", INTL, bytes(reversed(TMK)))
        with HostClient("127.0.0.1", running.port, hsm=wrong, tmk_label="tmk:other") as client:
            with pytest.raises(HSMError, match="check value"):
                client.sign_on(terminal_id=TERMINAL.terminal_id, merchant_id=TERMINAL.merchant_id)
            stranger = builders.Terminal(terminal_id="T7777777", merchant_id="M00000000000001")
            with pytest.raises(SignOnError, match="A7"):
                client.sign_on(terminal_id=stranger.terminal_id, merchant_id=stranger.merchant_id)
    finally:
        running.shutdown()


def test_pin_block_under_the_session_pik_deciphers_to_format_0() -> None:
    server_hsm = _hsm(INTL)
    running = RunningServer(HostServer(SilentOnOddStan(), hsm=server_hsm, institution_id="08010000"))
    try:
        with HostClient("127.0.0.1", running.port, hsm=_hsm(INTL)) as client:
            with pytest.raises(ValueError, match="not signed on"):
                client.pin_block(terminal_id=TERMINAL.terminal_id, pin="1234", pan="6235480000000001")
            client.sign_on(terminal_id=TERMINAL.terminal_id, merchant_id=TERMINAL.merchant_id)
            block = client.pin_block(terminal_id=TERMINAL.terminal_id, pin="1234", pan="6235480000000001")
        assert len(block) == 8
        # the host's copy of the PIK deciphers it: the HSM enciphers the same block under its copy
        again = server_hsm.encipher_pin_block("pik:T0000001", pin="1234", pan="6235480000000001")
        assert again == block and pin_block_format_0("1234", "6235480000000001") != block
    finally:
        running.shutdown()


def test_host_rotating_keys_gets_a0_then_sign_on_again_works() -> None:
    server_hsm = _hsm(INTL)
    running = RunningServer(HostServer(SilentOnOddStan(), hsm=server_hsm, institution_id="08010000"))
    try:
        with HostClient("127.0.0.1", running.port, hsm=_hsm(INTL)) as client:
            client.sign_on(terminal_id=TERMINAL.terminal_id, merchant_id=TERMINAL.merchant_id)
            server_hsm.generate_session_keys("tmk:T0000001", peer="T0000001")  # host rotated the keys
            assert client.exchange(purchase(46))["39"] == "A0"
            client.sign_on(terminal_id=TERMINAL.terminal_id, merchant_id=TERMINAL.merchant_id)
            assert client.exchange(purchase(48))["39"] == "00"
    finally:
        running.shutdown()


def test_approved_answer_with_a_bad_mac_is_refused_by_the_client() -> None:
    """A fake host (raw socket) signs the terminal on, then answers 00 with a wrong F64."""
    host_hsm = _hsm(INTL)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def fake_host() -> None:
        conn, _ = listener.accept()
        with conn:
            for _ in range(2):
                request, _ = decode(recv_message(conn, 5))
                if request["t"] == "0800":
                    keys = host_hsm.generate_session_keys("tmk:T0000001", peer="T0000001")
                    answer = builders.response(request, "00", f62=keys.f62)
                else:
                    answer = builders.response(request, "00", f64=bytes(8))
                conn.sendall(frame(encode(answer)))

    thread = threading.Thread(target=fake_host, daemon=True)
    thread.start()
    try:
        with HostClient("127.0.0.1", port, hsm=_hsm(INTL)) as client:
            client.sign_on(terminal_id=TERMINAL.terminal_id, merchant_id=TERMINAL.merchant_id)
            with pytest.raises(Iso8583Error, match="MAC does not verify"):
                client.exchange(purchase(50))
    finally:
        thread.join(5)
        listener.close()


def test_exchange_after_the_host_went_away_raises_host_unavailable() -> None:
    running = RunningServer(
        HostServer(SilentOnOddStan(), hsm=_hsm(INTL), institution_id="08010000", require_mac=False)
    )
    client = HostClient("127.0.0.1", running.port, timeout_s=5)
    try:
        assert client.exchange(purchase(52))["39"] == "00"
        running.shutdown()
        with pytest.raises(HostUnavailable):
            client.exchange(purchase(54))
    finally:
        client.close()
