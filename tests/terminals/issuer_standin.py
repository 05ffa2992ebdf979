"""An issuer host stand-in on real TCP with the real HSM, for the acquirer-link tests.

It speaks the wire format a host speaks (2-byte frames, CUPS ISO 8583, ``iso8583.builders``):
0100/0200 → checks the ARQC of F55 in the HSM (the issuer's IMK-AC of the card's suite), answers
F39 00 (or 05 when the ARQC is wrong or the mode is ``decline``) with F55 = 91 (ARPC ‖ ARC);
0400 → 0410; 0220 → 0230. Mode ``silent`` reads authorisations and never answers them (a
timeout for the terminal) nor anything else; ``silent-once`` leaves the first authorisation
unanswered and answers everything after it; ``bad-arpc`` approves with a corrupted ARPC (the
card's issuer authentication fails); ``load-script`` approves and sends a 72 script that sets
the card's EC balance to 123.45 yuan (``SoftHSM.ec_load_script``); ``late`` holds back its answer
to the first authorisation and sends it just before the 0410 of that authorisation's reversal.

Used in-process (:class:`IssuerStandIn` on a thread) and as a subprocess
(``python -m tests.terminals.issuer_standin MODE`` prints ``listening on HOST:PORT``; the HSM is
the one of ``CITYCARD_DATA_DIR``). B1's IssuerHost behind B2's HostServer replaces it when both
are there (see test_acquirer_link.py).
"""

from __future__ import annotations

import socket
import sys
import threading
from typing import Any

from citycard.crypto.cryptogram import pboc_ac_data_from_tags
from citycard.crypto.iad import parse_iad
from citycard.emv.tlv import TLV, decode_dict, encode_one
from citycard.emv.tlv import encode as encode_tlv
from citycard.iso8583 import builders
from citycard.iso8583.framing import recv_message, send_message
from citycard.iso8583.message import Iso8583Error, decode, encode

MODES = ("approve", "decline", "silent", "silent-once", "bad-arpc", "load-script", "late")
LOADED_FEN = 12_345


def ac_input(values: dict[str, bytes]) -> bytes:
    return pboc_ac_data_from_tags(values)


class IssuerStandIn:
    def __init__(self, hsm: Any, mode: str = "approve", *, port: int = 0):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.hsm, self.mode = hsm, mode
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.received: list[dict[str, Any]] = []
        self.arqc_valid: list[bool] = []
        self._silenced = 0
        self._held: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> IssuerStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()

    def __enter__(self) -> IssuerStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kinds(self) -> list[str]:
        return [fields["t"] for fields in self.received]

    # --- serving -------------------------------------------------------------------------------
    def _serve(self) -> None:
        self.listener.settimeout(0.05)  # so that stop() is seen at once
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            while not self._stop.is_set():
                try:
                    fields, _ = decode(recv_message(conn, 60))
                except (OSError, Iso8583Error, TimeoutError, ValueError):
                    return
                self.received.append(fields)
                answer = self.answer(fields)
                if answer is not None and fields["t"] == "0400" and self._held:
                    send_message(conn, encode(self._held.pop()))  # the late answer goes first
                if answer is not None:
                    send_message(conn, encode(answer))

    def answer(self, fields: dict[str, Any]) -> dict[str, Any] | None:
        mti = fields["t"]
        if self.mode == "silent":
            return None
        if mti in ("0400", "0220"):
            return builders.response(fields, "00")
        if mti not in ("0100", "0200"):
            return builders.response(fields, "12")
        if self.mode == "silent-once" and self._silenced == 0:
            self._silenced += 1
            return None
        values = decode_dict(fields["55"])
        suite = parse_iad(values["9F10"]).suite
        label = f"imk-ac-{suite.name.lower()}"
        psn = fields.get("23", "000")[-2:]
        where = {"tag_5a": fields["2"], "tag_5f34": psn, "tag_9f36": values["9F36"]}
        good = self.hsm.verify_arqc(label, data=ac_input(values), tag_9f26=values["9F26"], **where)
        self.arqc_valid.append(good)
        rc = (
            "00"
            if good and self.mode in ("approve", "silent-once", "bad-arpc", "load-script", "late")
            else "05"
        )
        arpc = self.hsm.generate_arpc(label, tag_9f26=values["9F26"], tag_8a=rc.encode(), **where)
        if self.mode == "bad-arpc":
            arpc = bytes(b ^ 0xFF for b in arpc)
        ic = encode_one("91", arpc + rc.encode())
        if self.mode == "load-script":
            command = self.hsm.ec_load_script(
                f"imk-mac-{suite.name.lower()}", tag_9f26=values["9F26"], new_balance_fen=LOADED_FEN, **where
            )
            ic += encode_tlv([TLV("72", children=[TLV("9F18", b"\x00\x00\x00\x01"), TLV("86", command)])])
        answer = builders.response(fields, rc, f55=ic)
        if self.mode == "late" and self._silenced == 0:
            self._silenced += 1
            self._held.append(answer)
            return None
        return answer


def main() -> None:
    from citycard.hsm import SoftHSM

    mode = sys.argv[1] if len(sys.argv) > 1 else "approve"
    server = IssuerStandIn(SoftHSM.open(), mode)
    print(f"listening on 127.0.0.1:{server.port}", flush=True)
    server._serve()


if __name__ == "__main__":
    main()
