"""The vpcd bridge against a fake pcscd side: a real TCP server socket in this process, no pcscd needed.

The fake speaks what vsmartcard's ``vpcd.c`` speaks: 2-byte big-endian length + payload; 1-byte
control codes 00/01/02 (no answer) and 04 (answered with the ATR); anything else is an APDU. Like
the vpcd driver Debian ships, it sends the length and the payload with two ``send`` calls and leaves
Nagle's algorithm on: that is what stalls each APDU ~40 ms unless the bridge sets TCP_QUICKACK.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time

import pytest

from citycard.reader.vpcd import (
    CTRL_ATR,
    CTRL_POWER_OFF,
    CTRL_POWER_ON,
    CTRL_RESET,
    FRAME_PAYLOAD_BYTES_MAX,
    VpcdBridge,
    frame,
    take_frame,
)

ATR = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")
TIMEOUT_S = 5.0


class EchoCard:
    """Answers SELECT with an FCI, any other APDU with its own bytes reversed ‖ 9000; counts power events."""

    atr = ATR

    def __init__(self):
        self.events: list[str] = []
        self.apdus: list[bytes] = []

    def power_on(self) -> None:
        self.events.append("on")

    def power_off(self) -> None:
        self.events.append("off")

    def reset(self) -> None:
        self.events.append("reset")

    def process(self, apdu: bytes) -> bytes:
        self.apdus.append(apdu)
        if apdu[1:2] == b"\xa4":
            return bytes.fromhex("6F0A8408A0000003330101019000")
        return apdu[::-1] + b"\x90\x00"


class FakeVpcd:
    """The pcscd side: listens, accepts the bridge, sends frames and reads the answers."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(TIMEOUT_S)
        self.port = self.server.getsockname()[1]
        self.client: socket.socket | None = None

    def accept(self) -> None:
        self.client, _ = self.server.accept()
        self.client.settimeout(TIMEOUT_S)

    def send(self, payload: bytes) -> None:
        """Two writes, as vpcd's sendToVICC does: Nagle holds the payload until the length is ACKed."""
        assert self.client is not None
        message = frame(payload)
        self.client.sendall(message[:2])
        self.client.sendall(message[2:])

    def recv_frame(self) -> bytes:
        assert self.client is not None
        header = self._exactly(2)
        return self._exactly(int.from_bytes(header, "big"))

    def exchange(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.recv_frame()

    def _exactly(self, count: int) -> bytes:
        assert self.client is not None
        data = b""
        while len(data) < count:
            chunk = self.client.recv(count - len(data))
            if not chunk:
                raise ConnectionError(f"bridge closed after {len(data)} of {count} bytes")
            data += chunk
        return data

    def drop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def close(self) -> None:
        self.drop()
        self.server.close()


@pytest.fixture
def vpcd():
    fake = FakeVpcd()
    yield fake
    fake.close()


def bridge_for(card, fake: FakeVpcd, **options) -> VpcdBridge:
    options.setdefault("backoff_s_min", 0.01)
    options.setdefault("backoff_s_max", 0.05)
    return VpcdBridge(card, port=fake.port, **options)


def test_atr_request_is_answered_with_the_atr(vpcd):
    with bridge_for(EchoCard(), vpcd) as bridge:
        vpcd.accept()
        assert vpcd.exchange(bytes([CTRL_ATR])) == ATR
        assert bridge.wait_attached(TIMEOUT_S)


def test_control_codes_reach_the_card_and_are_not_answered(vpcd):
    card = EchoCard()
    with bridge_for(card, vpcd):
        vpcd.accept()
        for code in (CTRL_POWER_ON, CTRL_RESET, CTRL_POWER_OFF, 0x03):  # 03: unknown, ignored
            vpcd.send(bytes([code]))
        # frames are answered in order, so the ATR answer proves the four before it got no answer
        assert vpcd.exchange(bytes([CTRL_ATR])) == ATR
    assert card.events[:3] == ["on", "reset", "off"]


def test_apdus_are_answered_by_card_process(vpcd):
    card = EchoCard()
    with bridge_for(card, vpcd) as bridge:
        vpcd.accept()
        assert vpcd.exchange(bytes.fromhex("00A4040008A000000333010101")) == bytes.fromhex(
            "6F0A8408A0000003330101019000"
        )
        assert vpcd.exchange(bytes.fromhex("80CA9F79")) == bytes.fromhex("799FCA80" + "9000")
        assert bridge.apdus == 2


def test_apdus_longer_than_a_short_apdu_and_up_to_a_full_frame(vpcd):
    card = EchoCard()
    with bridge_for(card, vpcd):
        vpcd.accept()
        for size in (261, 262, 300, FRAME_PAYLOAD_BYTES_MAX - 2):  # the answer adds 9000: keep it framable
            apdu = bytes([0x80, 0xE2]) + bytes(range(256)) * (size // 256 + 1)
            apdu = apdu[:size]
            assert vpcd.exchange(apdu) == apdu[::-1] + b"\x90\x00"


def test_frames_split_into_single_bytes_and_frames_sent_together(vpcd):
    with bridge_for(EchoCard(), vpcd):
        vpcd.accept()
        assert vpcd.client is not None
        for byte in frame(bytes.fromhex("80CA9F7900")):
            vpcd.client.sendall(bytes([byte]))
            time.sleep(0.001)
        assert vpcd.recv_frame() == bytes.fromhex("00799FCA80" + "9000")
        vpcd.client.sendall(frame(bytes([CTRL_ATR])) + frame(bytes.fromhex("80CA9F7900")) + frame(bytes([4])))
        assert [vpcd.recv_frame() for _ in range(3)] == [ATR, bytes.fromhex("00799FCA809000"), ATR]


def test_a_card_that_raises_answers_6f00_and_the_bridge_keeps_serving(vpcd):
    class Broken(EchoCard):
        def process(self, apdu: bytes) -> bytes:
            if apdu[1] == 0xEE:
                raise RuntimeError("card bug")
            if apdu[1] == 0xEF:
                return b""
            return super().process(apdu)

    with bridge_for(Broken(), vpcd):
        vpcd.accept()
        assert vpcd.exchange(bytes.fromhex("80EE0000")) == bytes.fromhex("6F00")
        assert vpcd.exchange(bytes.fromhex("80EF0000")) == bytes.fromhex(
            "6F00"
        )  # an empty answer would eject
        assert vpcd.exchange(bytes.fromhex("80CA9F7900")) == bytes.fromhex("00799FCA809000")


def test_reconnects_after_pcscd_goes_away_and_powers_the_card_off(vpcd):
    card = EchoCard()
    with bridge_for(card, vpcd) as bridge:
        vpcd.accept()
        assert vpcd.exchange(bytes([CTRL_ATR])) == ATR
        vpcd.drop()  # pcscd restarts
        vpcd.accept()  # the bridge comes back by itself
        assert vpcd.exchange(bytes.fromhex("80CA9F7900")) == bytes.fromhex("00799FCA809000")
        assert bridge.connections == 2
    assert "off" in card.events


def test_waits_with_backoff_until_pcscd_listens():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nobody listens on ``port`` now
    bridge = VpcdBridge(EchoCard(), port=port, backoff_s_min=0.01, backoff_s_max=0.05).start()
    try:
        time.sleep(0.2)  # several refused attempts
        server = socket.create_server(("127.0.0.1", port))
        server.settimeout(TIMEOUT_S)
        client, _ = server.accept()
        client.sendall(frame(bytes([CTRL_ATR])))
        client.settimeout(TIMEOUT_S)
        assert client.recv(100) == frame(ATR)
        client.close()
        server.close()
    finally:
        bridge.stop()


def test_gives_up_after_reconnects_max():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    bridge = VpcdBridge(EchoCard(), port=port, reconnects_max=2, backoff_s_min=0.01, backoff_s_max=0.02)
    with pytest.raises(ConnectionError, match=f"no vpcd at 127.0.0.1:{port} after 3 attempts"):
        bridge.serve_forever()


def test_a_frame_cut_short_is_dropped_after_the_frame_timeout(vpcd):
    with bridge_for(EchoCard(), vpcd, frame_timeout_s=0.2) as bridge:
        vpcd.accept()
        assert vpcd.client is not None
        vpcd.client.sendall(bytes.fromhex("0005 80CA"))  # 2 of 5 payload bytes, then silence
        vpcd.client.settimeout(TIMEOUT_S)
        assert vpcd.client.recv(10) == b""  # the bridge closed the connection …
        vpcd.accept()  # … and came back
        assert vpcd.exchange(bytes([CTRL_ATR])) == ATR
        assert "frame incomplete after 0.2 s (4 bytes of 7)" in str(bridge.last_error)


def test_socket_options_for_latency(vpcd):
    with bridge_for(EchoCard(), vpcd) as bridge:
        vpcd.accept()
        assert vpcd.exchange(bytes([CTRL_ATR])) == ATR
        assert bridge._sock is not None
        assert bridge._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_round_trip_has_no_delayed_ack_stall(vpcd):
    """Without TCP_QUICKACK the bridge delays the ACK of the 2-byte length; Nagle on the pcscd side
    then holds the payload back until that ACK: ~40 ms per APDU (measured: 44 ms; with it 0.08 ms)."""
    with bridge_for(EchoCard(), vpcd):
        vpcd.accept()
        apdu = bytes.fromhex("80CA9F7900")
        samples = []
        for _ in range(300):
            started = time.perf_counter()
            vpcd.exchange(apdu)
            samples.append(time.perf_counter() - started)
    assert statistics.median(samples) < 0.005, f"median {statistics.median(samples) * 1000:.2f} ms"


def test_stop_closes_the_connection_and_the_thread(vpcd):
    bridge = bridge_for(EchoCard(), vpcd).start()
    vpcd.accept()
    assert vpcd.exchange(bytes([CTRL_ATR])) == ATR
    bridge.stop()
    assert not bridge.running
    assert vpcd.client is not None
    assert vpcd.client.recv(10) == b""  # pcscd sees the card removed
    assert not any(t.name == f"vpcd-{vpcd.port}" for t in threading.enumerate())


def test_take_frame_and_frame_limits():
    buffer = bytearray(frame(b"\x04") + frame(b"\x00\xa4\x04\x00")[:3])
    assert take_frame(buffer) == b"\x04"
    assert take_frame(buffer) is None and buffer == bytearray.fromhex("000400")
    with pytest.raises(ValueError, match="vpcd payload of 65536 bytes: the 2-byte length allows 65535"):
        frame(bytes(65_536))


def test_bridge_checks_the_card_and_its_options():
    with pytest.raises(TypeError, match="has no process"):
        VpcdBridge(object())
    with pytest.raises(ValueError, match="port must be 1 to 65535"):
        VpcdBridge(EchoCard(), port=70_000)
    with pytest.raises(ValueError, match="backoff_s_min"):
        VpcdBridge(EchoCard(), backoff_s_min=1.0, backoff_s_max=0.5)
