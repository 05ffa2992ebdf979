"""The kernel's :class:`~citycard.kernel.online.AcquirerLink` over ISO 8583 (pboc-notes §10).

:class:`Iso8583AcquirerLink` turns the kernel's one call — field 55 out, (ARC, response IC data)
back — into CUPS-style messages through a host client (``exchange(fields) -> fields``: B2's
:class:`citycard.host.client.HostClient`, which adds and checks the F64 MAC after a sign-on):

- **authorise**: a 0200 purchase (or a 0100 authorisation) from
  :func:`citycard.iso8583.builders.financial`: F2 PAN, F23 PSN (5F34), F14 expiry (5F24 as YYMM),
  F35 track 2 (57, when the card gave it), F22 051/052 contact or 071/072 contactless (third digit:
  PIN captured), F52 the enciphered online PIN block, F55 the kernel's IC data. The answer's F39
  becomes the ARC (8A) and its F55 (91 ARPC ‖ ARC, 71/72 scripts) goes back to the kernel.
- **no answer** (timeout, connection lost, an answer that cannot be read): a 0400 reversal of the
  request (F39 98) is stored durably in the terminal's :class:`~citycard.terminals.store.TerminalStore`
  *before* :class:`~citycard.kernel.online.OnlineError` is raised, then sent at once; a reversal that
  gets no 0410 stays pending and :meth:`send_pending_reversals` sends it on the next run.
- **after the kernel's completion** (:meth:`complete`): the card declined (second GENERATE AC gave
  an AAC) after the issuer approved → a 0400 reversal with F39 06; issuer scripts were run → a 0220
  advice whose F55 carries DF31, the script results.

UNCERTAIN (as in :mod:`citycard.iso8583.builders`): the reversal reason codes 98/06, the advice's
processing code and F60.1, and F52 for a GM terminal: an SM4-enciphered PIN block is 16 bytes and
F52 is b64 in the CUPS layout we have, so a GM online PIN is refused here with the reason.
"""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from citycard.iso8583 import builders
from citycard.iso8583.framing import FramingError, recv_message, send_message
from citycard.iso8583.message import Iso8583Error, decode, encode
from citycard.kernel.online import APPROVED_ARCS, OnlineError
from citycard.kernel.outcome import Outcome, Result
from citycard.terminals.store import PENDING_REVERSALS_MAX, TerminalStore, TerminalStoreError

PIN_BLOCK_BYTES = (8, 16)  # 3DES in F52 (b64); SM4 in F57 (UNCERTAIN for CUPS: docs/hosts.md)
REASON_NO_ANSWER = "98"  # reversal: no response received (UNCERTAIN, common CUPS usage)
REASON_CARD_DECLINED = "06"  # reversal: the card declined after the issuer approved (UNCERTAIN)
CID_AAC = 0x00
TIMEOUT_S_DEFAULT = 10.0
REVERSAL_SENDS_MAX = 20  # pending reversals sent in one go (the store holds at most 100)
# A 0410 with one of these codes did not reach the issuer's books: keep the reversal and send it
# again (A0 MAC error, 91 issuer unavailable, 96 system malfunction). UNCERTAIN: the CUPS list.
REVERSAL_RETRY_CODES = ("A0", "91", "96")
LATE_ANSWER_MTIS = ("0110", "0210")
Clock = Callable[[], dt.datetime]


class HostLinkClient(Protocol):
    """What the link needs of a host client (``citycard.host.client.HostClient`` has it)."""

    def exchange(self, fields: dict[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


class FramedClient:
    """A bare ISO 8583 client: one TCP connection, 2-byte length frames, no MAC (for hosts that do
    not require one). ``HostClient`` is the one terminals use when it is installed; this exists so
    that a terminal without it can still reach a no-MAC host. Errors: ``ConnectionError`` (refused,
    closed), ``TimeoutError`` (no answer within ``timeout_s``), ``Iso8583Error`` (unreadable answer).
    """

    def __init__(self, host: str, port: int, *, timeout_s: float = TIMEOUT_S_DEFAULT):
        self.timeout_s = timeout_s
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout_s)
        except TimeoutError:
            raise ConnectionError(f"no connection to {host}:{port} within {timeout_s} s") from None
        except OSError as exc:
            raise ConnectionError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def exchange(self, fields: dict[str, Any]) -> dict[str, Any]:
        try:
            send_message(self._sock, encode(fields))
            wanted = f"{int(fields['t']) + 10:04d}"
            deadline = time.monotonic() + self.timeout_s
            while True:  # a late answer to an earlier request (same STAN as its reversal) is skipped
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                answer, _ = decode(recv_message(self._sock, remaining))
                if answer.get("11") == fields.get("11") and answer.get("t") == wanted:
                    return answer
        except FramingError as exc:
            raise Iso8583Error(f"host answer: {exc}") from None
        except TimeoutError:
            raise TimeoutError(f"no answer to STAN {fields.get('11')} within {self.timeout_s} s") from None
        except OSError as exc:
            raise ConnectionError(f"connection to the host failed: {exc}") from None

    def close(self) -> None:
        self._sock.close()


class NotSentError(ConnectionError):
    """The request never left the terminal (no connection): nothing to reverse."""


class UnreachableClient:
    """Stands for a host the terminal could not connect to: every exchange raises
    :class:`NotSentError`, so the kernel meets "unable to go online" and no reversal is owed."""

    def __init__(self, why: str):
        self.why = why

    def exchange(self, fields: dict[str, Any]) -> dict[str, Any]:
        raise NotSentError(f"host unreachable: {self.why}")

    def close(self) -> None:
        return None


def connect(
    host: str,
    port: int,
    *,
    timeout_s: float = TIMEOUT_S_DEFAULT,
    hsm: Any = None,
    tmk_label: str | None = None,
) -> Any:
    """A connected host client: :class:`citycard.host.client.HostClient` when it is installed (MAC,
    sign-on), else :class:`FramedClient`. Raises ``ConnectionError`` when the host cannot be reached."""
    try:
        from citycard.host.client import HostClient
    except ImportError:
        return FramedClient(host, port, timeout_s=timeout_s)
    return HostClient(host, port, timeout_s=timeout_s, hsm=hsm, tmk_label=tmk_label)


def _card(pan: str, psn: str | None, tag_5f24: bytes | None, tag_57: bytes | None) -> builders.Card:
    expiry = tag_5f24.hex()[:4] if tag_5f24 is not None and len(tag_5f24) == 3 else None
    track2 = None
    if tag_57 is not None:
        text = tag_57.hex().upper().rstrip("F")
        track2 = text if "D" in text and len(text) <= 37 else None  # F35 z..37 keeps the D separator
    return builders.Card(
        pan=pan,
        psn=int(psn) if psn is not None and psn.isdigit() else None,
        expiry_yymm=expiry if expiry is not None and expiry.isdigit() else None,
        track2=track2,
    )


LINK_KINDS = ("purchase", "authorisation", "ec_load")  # iso8583.builders KINDS the kernel sends online


@dataclass
class Iso8583AcquirerLink:
    """The kernel's acquirer link over ISO 8583 (see the module note).

    ``kind``: ``"purchase"`` (0200, the default), ``"authorisation"`` (0100) or ``"ec_load"`` (0200 with
    F3 600000: an electronic-cash top-up from the cardholder's account, 圈存; the issuer answers
    with the ``04DA9F790A`` script in 72).
    """

    client: Any
    store: TerminalStore
    terminal: builders.Terminal
    contactless: bool = False
    kind: str = "purchase"
    clock: Clock = field(default=lambda: dt.datetime.now(dt.UTC))
    last_request: dict[str, Any] | None = None
    last_response: dict[str, Any] | None = None
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in LINK_KINDS:
            raise ValueError(f"kind must be one of {', '.join(LINK_KINDS)}, got {self.kind!r}")
        if self.terminal.terminal_id != self.store.terminal_id:
            raise ValueError("the store belongs to another terminal")

    # --- the kernel's call ----------------------------------------------------------------------
    def authorise(
        self,
        field55: bytes,
        *,
        pan: str,
        psn: str | None,
        amount_fen: int,
        pin_block: bytes | None = None,
        tag_5f24: bytes | None = None,
        tag_57: bytes | None = None,
    ) -> tuple[bytes, bytes]:
        if len(self.store.pending) >= PENDING_REVERSALS_MAX:
            raise OnlineError(
                f"{PENDING_REVERSALS_MAX} reversals are still pending: no authorisation until they are sent"
            )
        if pin_block is not None and len(pin_block) not in PIN_BLOCK_BYTES:
            raise OnlineError(
                f"an online PIN block is 8 (3DES, F52) or 16 (SM4, F57) bytes, got {len(pin_block)}"
            )
        try:
            fields = builders.financial(
                self.kind,
                terminal=self.terminal,
                card=_card(pan, psn, tag_5f24, tag_57),
                amount_fen=amount_fen,
                stan=self.store.next_stan(),
                when=self.clock(),
                ic=field55,
                pin_block=pin_block,
                contactless=self.contactless,
            )
        except (Iso8583Error, TerminalStoreError) as exc:
            raise OnlineError(f"the request cannot be built: {exc}") from None
        self.last_request, self.last_response = fields, None
        try:
            answer = self.client.exchange(fields)
        except NotSentError as exc:
            self.log.append(f"{fields['t']} STAN {fields['11']} not sent: {exc}")
            raise OnlineError(str(exc)) from None
        except (TimeoutError, ConnectionError, OSError, Iso8583Error) as exc:
            self._reverse(fields, REASON_NO_ANSWER, f"no answer: {exc}")
            raise OnlineError(f"no answer from the host: {exc}") from None
        arc = answer.get("39")
        if answer.get("t") != f"{int(fields['t']) + 10:04d}" or not isinstance(arc, str) or len(arc) != 2:
            why = f"answer {answer.get('t')} with F39 {arc!r} does not answer {fields['t']}"
            self._reverse(fields, REASON_NO_ANSWER, why)
            raise OnlineError(f"unusable answer from the host: {why}")
        self.last_response = answer
        self.log.append(f"{fields['t']} STAN {fields['11']} → {answer['t']} F39 {arc}")
        ic = answer.get("55", b"")
        return arc.encode("ascii"), ic if isinstance(ic, bytes) else b""

    # --- after the kernel ------------------------------------------------------------------------
    def complete(self, result: Result) -> None:
        """What the terminal owes the host once the kernel is done (module note): a reversal when
        the card declined an issuer approval, an advice with DF31 when scripts ran."""
        request, answer = self.last_request, self.last_response
        if request is None or answer is None:
            return
        approved = answer.get("39", "").encode("ascii") in APPROVED_ARCS
        if approved and result.kind is Outcome.DECLINED and result.cid == CID_AAC:
            self._reverse(request, REASON_CARD_DECLINED, "the card declined after the issuer approved")
        if result.script_results:
            self._advice(request, result)

    def _advice(self, request: dict[str, Any], result: Result) -> None:
        try:
            fields = builders.financial(
                "advice",
                terminal=self.terminal,
                card=builders.Card(pan=request["2"], psn=int(request["23"]) if "23" in request else None),
                amount_fen=builders.parse_amount(request),
                stan=self.store.next_stan(),
                when=self.clock(),
                ic=result.field55,
                contactless=self.contactless,
            )
            answer = self.client.exchange(fields)
        except (TimeoutError, ConnectionError, OSError, Iso8583Error, TerminalStoreError) as exc:
            # UNCERTAIN: whether a script advice must be stored and forwarded; it is only logged here.
            self.log.append(f"0220 script advice not delivered: {exc}")
            return
        self.log.append(
            f"0220 STAN {fields['11']} (DF31 {result.script_results.hex().upper()}) → F39 {answer.get('39')}"
        )

    # --- reversals -------------------------------------------------------------------------------
    def _reverse(self, request: dict[str, Any], reason: str, why: str) -> None:
        reversal = builders.reversal(request, reason=reason)
        reversal.update(builders.time_fields(self.clock()))
        try:
            self.store.add_reversal(reversal)
        except TerminalStoreError as exc:
            self.log.append(f"0400 STAN {reversal['11']} NOT stored: {exc}")
            return
        self.log.append(f"0400 STAN {reversal['11']} stored ({why})")
        self.send_pending_reversals()

    def send_pending_reversals(self) -> int:
        """Send the stored reversals, oldest first; each one answered by a 0410 is forgotten.
        Stops at the first that gets no answer (the host is unreachable). Returns how many were
        acknowledged."""
        done = 0
        for pending in self.store.pending[:REVERSAL_SENDS_MAX]:
            try:
                answer = self.client.exchange(pending.fields())
                if answer.get("t") in LATE_ANSWER_MTIS:
                    # the late answer to the timed-out original (same F11 + F41, which is all a
                    # host client matches on): the 0410 is still to come; the same 0400 again is
                    # harmless (the host answers a repeated message as the first time)
                    answer = self.client.exchange(pending.fields())
            except (TimeoutError, ConnectionError, OSError, Iso8583Error) as exc:
                self.log.append(f"0400 STAN {pending.stan} still pending: {exc}")
                break
            if answer.get("t") != "0410" or answer.get("39") in REVERSAL_RETRY_CODES:
                self.log.append(
                    f"0400 STAN {pending.stan} answered {answer.get('t')} F39 {answer.get('39')}: still pending"
                )
                break
            self.store.remove_reversal(pending.stan)
            self.log.append(f"0400 STAN {pending.stan} acknowledged (F39 {answer.get('39')})")
            done += 1
        return done
