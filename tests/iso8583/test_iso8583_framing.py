"""2-byte length framing: the deframer in any split, and real TCP sockets on localhost."""

from __future__ import annotations

import socket
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citycard.iso8583 import (
    FRAME_BYTES_MAX,
    Deframer,
    FramingError,
    encode,
    frame,
    recv_message,
    send_message,
)

MESSAGES = [
    encode({"t": "0800", "11": "000001", "41": "T0000001", "42": "104510000000001", "60": "00000001003"}),
    encode({"t": "0200", "2": "6217000012345678901", "4": "000000000100", "55": bytes(200)}),
    b"\x01",
]


def test_frame_prefix():
    assert frame(b"\xab" * 300)[:2] == b"\x01\x2c"


@pytest.mark.parametrize("msg", [b"", bytes(FRAME_BYTES_MAX + 1)])
def test_frame_refuses_empty_and_oversize(msg):
    with pytest.raises(FramingError):
        frame(msg)


def test_deframer_byte_by_byte():
    stream = b"".join(frame(m) for m in MESSAGES)
    deframer = Deframer()
    out = []
    for i in range(len(stream)):
        out += deframer.feed(stream[i : i + 1])
    assert out == MESSAGES
    assert deframer.pending == 0


@given(st.lists(st.integers(1, 50), max_size=40))
def test_deframer_any_split(cuts):
    stream = b"".join(frame(m) for m in MESSAGES)
    deframer = Deframer()
    out, pos = [], 0
    for size in [*cuts, len(stream)]:
        out += deframer.feed(stream[pos : pos + size])
        pos += size
    assert out == MESSAGES


def test_deframer_zero_length_names_offset():
    deframer = Deframer()
    assert deframer.feed(frame(b"\x01\x02")) == [b"\x01\x02"]
    with pytest.raises(FramingError, match="zero-length frame at stream offset 4"):
        deframer.feed(b"\x00\x00")


def test_deframer_oversize():
    with pytest.raises(FramingError, match=f"exceeds the limit of {FRAME_BYTES_MAX}"):
        Deframer().feed((FRAME_BYTES_MAX + 1).to_bytes(2, "big"))


@pytest.fixture
def tcp_pair():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    yield client, server
    client.close()
    server.close()


def test_send_recv_over_tcp(tcp_pair):
    client, server = tcp_pair
    for msg in MESSAGES:
        send_message(client, msg)
    assert [recv_message(server, timeout=2) for _ in MESSAGES] == MESSAGES


def test_split_writes_byte_by_byte_over_tcp(tcp_pair):
    client, server = tcp_pair
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = b"".join(frame(m) for m in MESSAGES)

    def writer():
        for i in range(len(stream)):
            client.sendall(stream[i : i + 1])

    thread = threading.Thread(target=writer)
    thread.start()
    received = [recv_message(server, timeout=5) for _ in MESSAGES]
    thread.join()
    assert received == MESSAGES


def test_deframer_on_tcp_stream(tcp_pair):
    client, server = tcp_pair
    stream = b"".join(frame(m) for m in MESSAGES)
    for i in range(len(stream)):
        client.sendall(stream[i : i + 1])
    client.shutdown(socket.SHUT_WR)
    deframer, out = Deframer(), []
    while chunk := server.recv(7):
        out += deframer.feed(chunk)
    assert out == MESSAGES


def test_recv_timeout(tcp_pair):
    client, server = tcp_pair
    client.sendall(b"\x00\x05\x01")
    with pytest.raises(TimeoutError, match="1 of 5 bytes"):
        recv_message(server, timeout=0.2)


def test_recv_zero_and_oversize_length(tcp_pair):
    client, server = tcp_pair
    client.sendall(b"\x00\x00")
    with pytest.raises(FramingError, match="zero-length"):
        recv_message(server, timeout=1)
    client.sendall((FRAME_BYTES_MAX + 1).to_bytes(2, "big"))
    with pytest.raises(FramingError, match="exceeds the limit"):
        recv_message(server, timeout=1)


def test_recv_close_inside_and_between_frames(tcp_pair):
    client, server = tcp_pair
    client.sendall(frame(b"\x01\x02")[:3])
    client.close()
    with pytest.raises(FramingError, match="closed after 1 of 2 bytes"):
        recv_message(server, timeout=1)
    with pytest.raises(ConnectionError):
        recv_message(server, timeout=1)


def test_socketpair():
    a, b = socket.socketpair()
    with a, b:
        send_message(a, MESSAGES[0])
        assert recv_message(b, timeout=1) == MESSAGES[0]
