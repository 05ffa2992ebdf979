"""The asyncio ISO 8583 host server: framing, format errors, F64 MAC, sign-on, batching (issue 5 item 5).

One :class:`HostServer` listens on TCP. Per connection it reads 2-byte-length frames
(:class:`citycard.iso8583.Deframer`, pboc-notes §10), decodes them with the CUPS spec and then:

* a message that does not decode or fits no message kind → the MTI+10 response with F39 ``30``
  (format error) echoing what could be read, when the MTI is a request MTI and F11 could be read;
  otherwise the connection is closed. Nothing of it reaches the handler. An oversize or zero-length
  frame closes the connection.
* 0800 sign-on (F60.3 003) and key exchange (101) are answered here: the HSM makes a fresh PIK and
  MAK for the peer and F62 carries them enciphered under the peer's master key
  (:mod:`citycard.hsm.keyexchange` documents the layout); echo (301) is answered ``00``.
* MAC (F64): a 01xx/02xx/04xx/05xx request from a peer holding a MAK must carry a MAC that verifies
  under it, else ``A0`` (CUPS: MAC error, sign on again). With ``require_mac`` a financial request
  from a peer that never signed on is answered ``A0`` too — our rule: CUPS hosts refuse
  transactions before sign-on, but the exact code they use for it is UNCERTAIN.
* F52 (online PIN), when ``pin_keys`` is set, is translated in the HSM from the peer's session PIK
  to the handler's PIN key of the PIK's suite (the issuer's zone PIN key); a failure answers ``A7``.
* every other request is queued; a dispatcher hands whatever has arrived (up to ``batch_max``) to
  the handler as one batch and sends the answers, MACed under the peer's MAK when it has one. One
  connection may have many requests outstanding; clients match answers on F11 + F41.
* lanes: with several handlers (``lanes``, e.g. one issuer process each) every request goes to the
  lane of its terminal (F41): a terminal seen for the first time joins the lane with the fewest
  terminals and stays there while the server runs (a hash of F41 would leave lanes uneven for a
  few terminals with sequential ids). Each lane runs its own batches, one at a time.
  So the batches of different terminals overlap (one lane's SQL waits while another's Python runs),
  while all messages of one terminal stay in one ordered lane: an original and its reversal (the
  same F41/F42/F11) can never be in two concurrent batches, each blind to the other's uncommitted
  work. A card used at two terminals at once is serialised by the issuer's row locks.

The peer of a message is its forwarding institution F33 when present (a switch), else its
terminal F41; its master key is ``zmk:<F33>`` or ``tmk:<F41>`` in the HSM. Session keys live in
the HSM's memory only: after a restart every peer signs on again.

Response codes given here: ``00`` network management done, ``30`` format error, ``A0`` MAC error or
not signed on, ``A7`` no master key for the peer (CUPS 安全处理失败 — UNCERTAIN), ``96`` the handler
failed (system malfunction).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import iso8583 as pyiso8583
from citycard.hsm import HSMError
from citycard.iso8583 import CUPS_POS, Deframer, FramingError, Iso8583Error, encode, fast
from citycard.iso8583.builders import ECHOED, classify, pin_field, response

log = logging.getLogger(__name__)

BATCH_MAX = 256  # requests handed to the handler at once
BATCHES_IN_FLIGHT_MAX = 64  # batches a network-bound handler (the switch) may run at once
LANES_MAX = 16  # handlers (issuer processes) side by side; more only adds lock waits on 2 cores
LANE_TERMINALS_MAX = 1_000_000  # terminals remembered with their lane; later ones go by crc32(F41)
QUEUE_MAX = 8_192  # requests waiting for the handler; readers pause (TCP backpressure) beyond it
CONNECTIONS_MAX = 1_024
READ_CHUNK = 65_536
WRITE_BUFFER_MAX = 4 * 1024 * 1024  # a peer that stops reading its answers is disconnected
GRACE_S = 10.0
MAC_BYTES = 8
REQUEST_MTIS = frozenset({"0100", "0200", "0220", "0400", "0500", "0800"})
MAC_CLASSES = frozenset("1245")  # message class digit (MTI[1]) of messages under the MAC rule
RC_APPROVED = "00"
RC_FORMAT_ERROR = "30"
RC_MAC_ERROR = "A0"
RC_NO_MASTER_KEY = "A7"
RC_SYSTEM_MALFUNCTION = "96"
NETWORK_KEY_KINDS = frozenset({"sign_on", "key_exchange"})


class Handler(Protocol):
    """What the server hands decoded requests to: answers in the same order (None = no answer)."""

    async def handle_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any] | None]: ...


class _Threaded:
    """Runs a synchronous ``process_batch`` in ONE worker thread, one batch at a time."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="host-batch")

    async def handle_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._target.process_batch, requests)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def threaded(target: Any) -> Handler:
    """Adapt an object with a synchronous ``process_batch(list) -> list`` (the issuer) to :class:`Handler`."""
    if not callable(getattr(target, "process_batch", None)):
        raise TypeError(f"{type(target).__name__} has no process_batch method")
    return _Threaded(target)


def peer_of(fields: dict[str, Any]) -> str | None:
    """The peer whose keys cover a message: F33 (a forwarding switch) if present, else F41 (a terminal).

    >>> peer_of({"t": "0200", "41": "T0000001", "33": "08010000"})
    '08010000'
    """
    value = fields.get("33") or fields.get("41")
    return value.strip() or None if isinstance(value, str) else None


def master_key_label(fields: dict[str, Any]) -> str | None:
    """``zmk:<F33>`` for a switch, ``tmk:<F41>`` for a terminal."""
    if fields.get("33"):
        return f"zmk:{fields['33']}"
    peer = peer_of(fields)
    return f"tmk:{peer}" if peer else None


def salvage(raw: bytes) -> dict[str, Any] | None:
    """The request MTI and echoable fields of a message that does not decode, or None.

    pyiso8583 reports the fields it decoded before the bad one; a format-error answer needs the MTI
    (a request MTI) and F11 at least, so the acquirer can match it.
    """
    try:
        doc, _ = pyiso8583.decode(bytes(raw), CUPS_POS)
    except pyiso8583.DecodeError as exc:
        doc = exc.doc_dec
    except (KeyError, ValueError, IndexError, TypeError):  # library edge cases on junk
        return None
    mti, stan = doc.get("t"), doc.get("11")
    if mti not in REQUEST_MTIS or not isinstance(stan, str) or len(stan) != 6 or not stan.isdigit():
        return None
    answer: dict[str, Any] = {"t": f"{int(mti) + 10:04d}", "11": stan, "39": RC_FORMAT_ERROR}
    for key in ECHOED:
        value = doc.get(key)
        if key != "11" and isinstance(value, str) and value:
            try:  # keep a field only if it re-encodes on its own
                encode({"t": "0810", key: value})
            except Iso8583Error:
                continue
            answer[key] = value
    return answer


def format_error(fields: dict[str, Any]) -> dict[str, Any] | None:
    """The ``30`` answer to a decoded message that fits no kind (None when its MTI is no request)."""
    mti = fields.get("t")
    if mti not in REQUEST_MTIS or "11" not in fields:
        return None
    answer = {"t": f"{int(mti) + 10:04d}", **{k: fields[k] for k in ECHOED if k in fields}}
    answer["39"] = RC_FORMAT_ERROR
    return answer


@dataclass
class ServerStats:
    """Counters for tests and logs."""

    received: int = 0
    answered: int = 0
    format_errors: int = 0
    mac_errors: int = 0
    closed_on_junk: int = 0
    batches: int = 0
    batched: int = 0  # requests handed to the handler
    handler_s: float = 0.0  # wall time inside handle_batch
    sign_ons: int = 0


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    name: str
    outstanding: int = 0
    closing: bool = False
    reader_task: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass(slots=True)
class _Item:
    conn: _Connection
    fields: dict[str, Any]


class HostServer:
    """ISO 8583 over TCP in front of a :class:`Handler` (the issuer, the switch)."""

    def __init__(
        self,
        handler: Handler,
        *,
        hsm: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        require_mac: bool = True,
        institution_id: str,
        batch_max: int = BATCH_MAX,
        queue_max: int = QUEUE_MAX,
        connections_max: int = CONNECTIONS_MAX,
        on_batch: Callable[[int], None] | None = None,
        pin_keys: Mapping[str, str] | None = None,
        batches_in_flight: int = 1,
        lanes: Sequence[Handler] = (),
    ) -> None:
        if not 1 <= batch_max <= QUEUE_MAX:
            raise ValueError(f"batch_max must be 1..{QUEUE_MAX}, got {batch_max}")
        if not 1 <= batches_in_flight <= BATCHES_IN_FLIGHT_MAX:
            raise ValueError(f"batches_in_flight must be 1..{BATCHES_IN_FLIGHT_MAX}, got {batches_in_flight}")
        if 1 + len(lanes) > LANES_MAX:
            raise ValueError(f"at most {LANES_MAX} lanes, got {1 + len(lanes)}")
        self.handler = handler
        # lane 0 is ``handler``; ``lanes`` are more handlers of the same kind (see the module note)
        self.handlers: tuple[Handler, ...] = (handler, *lanes)
        self.hsm = hsm
        self.host = host
        self.port = port
        self.require_mac = require_mac
        self.institution_id = institution_id
        self.batch_max = batch_max
        # 1: a batch starts when the previous one is answered (the issuer: one commit per batch);
        # more: a handler whose batches wait on the network (the switch) does not block the next one
        self.batches_in_flight = batches_in_flight
        self.connections_max = connections_max
        self.stats = ServerStats()
        self._on_batch = on_batch
        self.pin_keys = dict(pin_keys or {})  # suite name → label of the PIN key F52 is translated to
        self._queue_max = queue_max
        self._queues: list[asyncio.Queue[_Item]] = []
        self._server: asyncio.base_events.Server | None = None
        self._dispatchers: list[asyncio.Task[None]] = []
        self._connections: set[_Connection] = set()
        self._closed: asyncio.Event | None = None
        self._stopping = False
        self._in_batch = 0
        self._lane_of_terminal: dict[str, int] = {}
        self._terminals_in_lane = [0] * len(self.handlers)

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> int:
        """Bind and start serving; returns the bound port."""
        self._queues = [asyncio.Queue(self._queue_max) for _ in self.handlers]
        self._closed = asyncio.Event()
        self._server = await asyncio.start_server(self._on_connect, self.host, self.port, limit=READ_CHUNK)
        self.port = self._server.sockets[0].getsockname()[1]
        self._dispatchers = [
            asyncio.create_task(self._dispatch(lane), name=f"host-dispatcher-{lane}")
            for lane in range(len(self.handlers))
        ]
        log.info("listening on %s:%d (institution %s)", self.host, self.port, self.institution_id)
        return self.port

    async def serve_forever(self) -> None:
        """Serve until SIGTERM/SIGINT (or :meth:`shutdown`), then shut down gracefully."""
        if self._server is None:
            await self.start()
        assert self._closed is not None
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.shutdown()))
                installed.append(sig)
        try:
            await self._closed.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def shutdown(self, grace_s: float = GRACE_S) -> None:
        """Stop accepting, stop reading, answer every request already read, then close."""
        if self._stopping:
            if self._closed is not None:
                await self._closed.wait()
            return
        self._stopping = True
        assert self._queues and self._closed is not None
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):  # no new requests; the ones read stay queued
            if conn.reader_task is not None:
                conn.reader_task.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while (any(q.qsize() for q in self._queues) or self._in_batch) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for dispatcher in self._dispatchers:
            dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatcher
        for conn in list(self._connections):
            with contextlib.suppress(ConnectionError, OSError):
                await asyncio.wait_for(conn.writer.drain(), timeout=max(0.1, deadline - loop.time()))
            conn.writer.close()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1.0)
        for handler in self.handlers:
            close = getattr(handler, "close", None)
            if asyncio.iscoroutinefunction(close):
                await close()
            elif callable(close):  # e.g. the threaded adapter: waits for its worker thread
                await loop.run_in_executor(None, close)
        log.info("shut down: %s", self.stats)
        self._closed.set()

    # --- connections ----------------------------------------------------------------------------
    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        conn = _Connection(writer, name=f"{peer[0]}:{peer[1]}" if peer else "?")
        if self._stopping or len(self._connections) >= self.connections_max:
            writer.close()
            return
        self._connections.add(conn)
        conn.reader_task = asyncio.current_task()
        try:
            await self._read_loop(reader, conn)
        except asyncio.CancelledError:
            pass  # shutdown: stop reading, answers still go out on this writer
        except (ConnectionError, OSError) as exc:
            log.debug("connection %s: %s", conn.name, exc)
        finally:
            if not self._stopping:
                self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.closing = True
        self._connections.discard(conn)
        conn.writer.close()

    async def _read_loop(self, reader: asyncio.StreamReader, conn: _Connection) -> None:
        deframer = Deframer()
        while not conn.closing:
            data = await reader.read(READ_CHUNK)
            if not data:
                return
            try:
                messages = deframer.feed(data)
            except FramingError as exc:
                log.info("connection %s closed: %s", conn.name, exc)
                self.stats.closed_on_junk += 1
                return
            for raw in messages:
                if not await self._accept(raw, conn):
                    self.stats.closed_on_junk += 1
                    return

    async def _accept(self, raw: bytes, conn: _Connection) -> bool:
        """Check one message; answer it here or queue it. False = close the connection."""
        self.stats.received += 1
        fields: dict[str, Any] | None = None
        try:
            fields = fast.decode_fields(raw)  # = decode(raw)[0], errors included
            kind = classify(fields)
            if fields["t"] not in REQUEST_MTIS:
                raise Iso8583Error("not a request MTI", field="t")
        except Iso8583Error as exc:
            answer = salvage(raw) if fields is None else format_error(fields)
            if answer is None:
                log.info("connection %s: undecodable message (%s), closing", conn.name, exc)
                return False
            self.stats.format_errors += 1
            self._send(conn, answer, mac=False)
            return True
        if kind.mti == "0800":
            self._network(conn, fields, kind.name)
            return True
        rc = self._check_mac(raw, fields)
        if rc is not None:
            self.stats.mac_errors += 1
            self._send(conn, response(fields, rc), mac=False)
            return True
        if ("52" in fields or "57" in fields) and self.pin_keys:
            rc = self._translate_pin(fields)
            if rc is not None:
                self._send(conn, response(fields, rc), mac=True)
                return True
        assert self._queues
        conn.outstanding += 1
        await self._queues[self._lane_of(fields)].put(_Item(conn, fields))
        return True

    def _lane_of(self, fields: dict[str, Any]) -> int:
        """The lane of the request's terminal (F41): all of one terminal's messages in one lane."""
        lanes = len(self._queues)
        terminal = fields.get("41")
        if lanes == 1 or not isinstance(terminal, str):
            return 0
        lane = self._lane_of_terminal.get(terminal)
        if lane is None:
            if len(self._lane_of_terminal) >= LANE_TERMINALS_MAX:
                return zlib.crc32(terminal.encode()) % lanes  # never in the table: stable too
            counts = self._terminals_in_lane
            lane = counts.index(min(counts))
            counts[lane] += 1
            self._lane_of_terminal[terminal] = lane
        return lane

    # --- MAC and network management -----------------------------------------------------------
    def _mak_label(self, fields: dict[str, Any]) -> str | None:
        peer = peer_of(fields)
        if peer is None:
            return None
        label = f"mak:{peer}"
        return label if self.hsm.has_session_key(label) else None

    def _check_mac(self, raw: bytes, fields: dict[str, Any]) -> str | None:
        """None when the MAC rule is met, else the response code."""
        if fields["t"][1] not in MAC_CLASSES:
            return None
        label = self._mak_label(fields)
        if label is None:
            return RC_MAC_ERROR if self.require_mac else None
        if "64" not in fields or not self.hsm.verify_session_mac(label, raw[:-MAC_BYTES], fields["64"]):
            return RC_MAC_ERROR
        return None

    def _translate_pin(self, fields: dict[str, Any]) -> str | None:
        """The PIN block (F52 3DES / F57 SM4) from the peer's session PIK to the handler's PIN key of
        the PIK's suite, in the HSM; the result goes in the field its length belongs in."""
        peer = peer_of(fields)
        label = f"pik:{peer}"
        try:
            if "52" in fields and "57" in fields:
                raise HSMError("two PIN blocks (F52 and F57)")
            if peer is None or not self.hsm.has_session_key(label):
                raise HSMError("the peer has no PIN key (not signed on)")
            target = self.pin_keys.get(self.hsm.session_key_suite(label).name)
            if target is None:
                raise HSMError("no PIN key configured for the PIK's suite")
            field = "52" if "52" in fields else "57"
            source = fields.pop(field)
            if pin_field(source) != field:  # F52 holds 8 bytes (3DES), F57 16 (SM4)
                raise HSMError(f"a {len(source)}-byte PIN block does not belong in F{field}")
            block = self.hsm.translate_pin_block(label, target, pin_block=source)
            fields[pin_field(block)] = block
        except (HSMError, Iso8583Error) as exc:
            log.info("PIN translation for %s failed: %s", peer, exc)
            return RC_NO_MASTER_KEY
        return None

    def _network(self, conn: _Connection, fields: dict[str, Any], kind_name: str) -> None:
        if kind_name not in NETWORK_KEY_KINDS:
            self._send(conn, response(fields, RC_APPROVED), mac=False)
            return
        peer, master = peer_of(fields), master_key_label(fields)
        try:
            if peer is None or master is None:
                raise HSMError("the message names no peer (F41 or F33)")
            keys = self.hsm.generate_session_keys(master, peer=peer)
        except HSMError as exc:
            log.info("sign-on from %s refused: %s", peer, exc)
            self._send(conn, response(fields, RC_NO_MASTER_KEY), mac=False)
            return
        self.stats.sign_ons += 1
        log.info("peer %s signed on: %r", peer, keys)
        self._send(conn, response(fields, RC_APPROVED, f62=keys.f62), mac=False)

    # --- answers ----------------------------------------------------------------------------------
    def _send(
        self,
        conn: _Connection,
        answer: dict[str, Any],
        *,
        mac: bool,
        request: dict[str, Any] | None = None,
        pending: dict[_Connection, list[bytes]] | None = None,
    ) -> None:
        """Encode (and MAC) ``answer`` and write it; never raises. An answer that cannot be encoded
        becomes a ``96`` built from ``request`` (or from the answer's echoed fields). With ``pending``
        the frame is collected there, to be written with the connection's other answers of the
        batch in one write (:meth:`_flush`)."""
        if conn.closing:
            return
        try:
            raw = self._wire(answer, mac=mac)
        except (Iso8583Error, HSMError, TypeError, ValueError, AttributeError) as exc:
            log.error("answer to F11 %s does not encode: %s", (request or {}).get("11"), exc)
            try:
                raw = encode(
                    response(request, RC_SYSTEM_MALFUNCTION)
                    if request
                    else {
                        **{k: v for k, v in answer.items() if k in ("t", *ECHOED)},
                        "39": RC_SYSTEM_MALFUNCTION,
                    }
                )
            except (Iso8583Error, TypeError, ValueError, AttributeError):
                log.error("no answer possible for F11 %s", (request or {}).get("11"))
                return
        transport = conn.writer.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() > WRITE_BUFFER_MAX:
            log.warning("connection %s does not read its answers; closing", conn.name)
            self._drop(conn)
            return
        if pending is not None:
            pending.setdefault(conn, []).append(len(raw).to_bytes(2, "big") + raw)
        else:
            conn.writer.write(len(raw).to_bytes(2, "big") + raw)
        self.stats.answered += 1

    @staticmethod
    def _flush(pending: dict[_Connection, list[bytes]]) -> None:
        """One write (one system call) per connection for a batch's answers, not one per answer."""
        for conn, frames in pending.items():
            if not conn.closing and not conn.writer.transport.is_closing():
                conn.writer.write(b"".join(frames))

    def _wire(self, answer: dict[str, Any], *, mac: bool) -> bytes:
        label = self._mak_label(answer) if mac else None
        if label is None:
            return fast.encode(answer)
        body = fast.encode({**answer, "64": bytes(MAC_BYTES)})[:-MAC_BYTES]
        return body + self.hsm.session_mac(label, body)

    async def _dispatch(self, lane: int) -> None:
        queue, handler = self._queues[lane], self.handlers[lane]
        slots = asyncio.Semaphore(self.batches_in_flight)
        running: set[asyncio.Task[None]] = set()
        while True:
            items = [await queue.get()]
            while len(items) < self.batch_max and not queue.empty():
                items.append(queue.get_nowait())
            await slots.acquire()
            self._in_batch += len(items)  # shutdown waits until this is back to 0
            if self.batches_in_flight == 1:
                await self._run_batch(handler, items, slots)
                continue
            task = asyncio.create_task(self._run_batch(handler, items, slots))
            running.add(task)
            task.add_done_callback(running.discard)

    async def _run_batch(self, handler: Handler, items: list[_Item], slots: asyncio.Semaphore) -> None:
        started = time.perf_counter()
        try:
            try:
                answers = await handler.handle_batch([item.fields for item in items])
                if len(answers) != len(items):
                    raise RuntimeError(f"handler gave {len(answers)} answers for {len(items)} requests")
            except Exception:  # the handler failed: every request of the batch gets "96"
                log.exception("handler failed on a batch of %d", len(items))
                answers = [response(item.fields, RC_SYSTEM_MALFUNCTION) for item in items]
            pending: dict[_Connection, list[bytes]] = {}
            for item, answer in zip(items, answers, strict=True):
                item.conn.outstanding -= 1
                if answer is not None:
                    self._send(item.conn, answer, mac=True, request=item.fields, pending=pending)
            self._flush(pending)
            self.stats.batches += 1
            self.stats.batched += len(items)
            self.stats.handler_s += time.perf_counter() - started
        finally:
            self._in_batch -= len(items)
            slots.release()
        if self._on_batch is not None:
            self._on_batch(len(items))
