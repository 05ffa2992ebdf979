"""2-byte big-endian length framing of ISO 8583 messages on a TCP stream.

Each message on the wire is ``len(msg).to_bytes(2, "big") + msg``. A zero length or a length above
:data:`FRAME_BYTES_MAX` is a protocol error (:class:`FramingError`): the connection should be closed.
"""

from __future__ import annotations

import socket
import time

FRAME_BYTES_MAX = 4096  # largest message body accepted or sent (CUPS POS messages are < 1 KiB)
LENGTH_BYTES = 2


class FramingError(ValueError):
    """A frame with a zero or oversize length, or a stream that ended inside a frame."""


def frame(msg: bytes) -> bytes:
    """Prefix ``msg`` with its 2-byte big-endian length.

    >>> frame(b"\\x08\\x00").hex()
    '00020800'
    """
    if not msg:
        raise FramingError("cannot frame an empty message")
    if len(msg) > FRAME_BYTES_MAX:
        raise FramingError(f"message of {len(msg)} bytes exceeds the frame limit of {FRAME_BYTES_MAX}")
    return len(msg).to_bytes(LENGTH_BYTES, "big") + bytes(msg)


class Deframer:
    """Incremental deframer: feed it stream bytes in any split, get whole messages back."""

    def __init__(self, max_bytes: int = FRAME_BYTES_MAX) -> None:
        self._buffer = bytearray()
        self._max_bytes = max_bytes
        self._consumed = 0  # stream offset of the buffer start, for error messages

    @property
    def pending(self) -> int:
        """Bytes held that do not yet make a whole frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every message completed by it, in order."""
        self._buffer += data
        messages: list[bytes] = []
        while len(self._buffer) >= LENGTH_BYTES:
            length = int.from_bytes(self._buffer[:LENGTH_BYTES], "big")
            if length == 0:
                raise FramingError(f"zero-length frame at stream offset {self._consumed}")
            if length > self._max_bytes:
                raise FramingError(
                    f"frame of {length} bytes at stream offset {self._consumed} exceeds the limit of "
                    f"{self._max_bytes}"
                )
            end = LENGTH_BYTES + length
            if len(self._buffer) < end:
                break
            messages.append(bytes(self._buffer[LENGTH_BYTES:end]))
            del self._buffer[:end]
            self._consumed += end
        return messages


def send_message(sock: socket.socket, msg: bytes) -> None:
    """Send one framed message (blocking)."""
    sock.sendall(frame(msg))


def _recv_exactly(sock: socket.socket, count: int, deadline: float) -> bytes:
    chunks = bytearray()
    while len(chunks) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out with {len(chunks)} of {count} bytes received")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(count - len(chunks))
        except TimeoutError:
            raise TimeoutError(f"timed out with {len(chunks)} of {count} bytes received") from None
        if not chunk:
            if chunks:
                raise FramingError(f"connection closed after {len(chunks)} of {count} bytes")
            raise ConnectionError("connection closed")
        chunks += chunk
    return bytes(chunks)


def recv_message(sock: socket.socket, timeout: float, max_bytes: int = FRAME_BYTES_MAX) -> bytes:
    """Receive one framed message within ``timeout`` seconds (blocking).

    Raises :class:`TimeoutError` on timeout, :class:`ConnectionError` on a clean close between
    frames, and :class:`FramingError` on a bad length or a close inside a frame.
    """
    deadline = time.monotonic() + timeout
    header = _recv_exactly(sock, LENGTH_BYTES, deadline)
    length = int.from_bytes(header, "big")
    if length == 0:
        raise FramingError("zero-length frame")
    if length > max_bytes:
        raise FramingError(f"frame of {length} bytes exceeds the limit of {max_bytes}")
    return _recv_exactly(sock, length, deadline)
