"""Through the real PC/SC stack: pyscard → pcscd → vpcd driver → VpcdBridge → card.

Needs pcscd running with vsmartcard's vpcd driver and pyscard (`.ci/run` sets that up): on a
laptop without them these tests skip; with CITYCARD_REQUIRE_SERVICES=1 they fail.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import require_service

from citycard.reader import (
    VPCD_PORT,
    InProcessTransport,
    NoCardError,
    PcscTransport,
    PcscUnavailableError,
    TransportError,
    VpcdBridge,
    list_readers,
)

ATR = bytes.fromhex("3B8880010000000000718100F9")  # T=1, 8 historical bytes
SELECT_PPSE = bytes.fromhex("00A404000E325041592E5359532E444446303100")
PPSE_FCI = bytes.fromhex("6F1A840E325041592E5359532E4444463031A508BF0C0561034F01AA")
ROUND_TRIPS = 1_000
ROUND_TRIP_MS_MAX = 1.0  # issue 3 acceptance: median per-APDU round trip through pcscd
ATTACH_WAIT_S = 3.0  # pcscd polls the vpcd slot every ~400 ms


def pcsc_problem() -> str | None:
    """Why the PC/SC path cannot run here, or None."""
    try:
        import smartcard.scard  # noqa: F401
    except ImportError:
        return "pyscard is not installed (pip install 'citycard[pcsc]')"
    try:
        readers = list_readers()
    except PcscUnavailableError as exc:
        return str(exc)
    if "Virtual PCD 00 00" not in readers:
        return (
            f"pcscd has no vpcd reader (apt-get install vsmartcard-vpcd, restart pcscd); readers: {readers}"
        )
    return None


@pytest.fixture(scope="module")
def pcsc() -> None:
    problem = pcsc_problem()
    require_service(problem is None, f"PC/SC through pcscd + vpcd: {problem}")


@contextlib.contextmanager
def served(card) -> Iterator[tuple[VpcdBridge, str]]:
    """Serve ``card`` on the first vpcd slot that pcscd attaches (another process may hold one)."""
    for slot in (0, 1):
        bridge = VpcdBridge(card, port=VPCD_PORT + slot).start()
        if bridge.wait_attached(ATTACH_WAIT_S):
            try:
                yield bridge, f"Virtual PCD 00 {slot:02d}"
            finally:
                bridge.stop()
            return
        bridge.stop()
    pytest.fail("neither vpcd slot (35963, 35964) answered: both held by other clients?")


class TinyCard:
    """Enough of a card to exercise the path: SELECT PPSE, a T=0-style 61xx answer, an echo."""

    atr = ATR

    def __init__(self):
        self.pending = b""
        self.powered_on = 0

    def power_on(self) -> bytes:
        self.powered_on += 1
        return self.atr

    def process(self, apdu: bytes) -> bytes:
        if apdu == SELECT_PPSE:
            return PPSE_FCI + b"\x90\x00"
        if apdu[:2] == b"\x80\x61":  # answers 61xx: the data waits for GET RESPONSE
            self.pending = bytes(range(apdu[2]))
            return bytes([0x61, len(self.pending)])
        if apdu[:4] == bytes.fromhex("00C00000"):
            data, self.pending = self.pending[: apdu[4]], b""
            return data + b"\x90\x00"
        return apdu[::-1] + b"\x90\x00"


def test_pyscard_lists_the_virtual_readers(pcsc):
    assert {"Virtual PCD 00 00", "Virtual PCD 00 01"} <= set(list_readers())


def test_select_ppse_through_pcscd(pcsc):
    card = TinyCard()
    with served(card) as (_, reader), PcscTransport(reader) as terminal:
        assert terminal.atr == ATR
        assert terminal.transmit(SELECT_PPSE) == PPSE_FCI + b"\x90\x00"
        assert card.powered_on >= 1  # pcscd powered the card up


def test_61xx_get_response_through_pcscd(pcsc):
    with served(TinyCard()) as (_, reader), PcscTransport(reader) as terminal:
        assert terminal.transmit(bytes.fromhex("8061200000")) == bytes(range(0x20)) + b"\x90\x00"


def test_long_apdu_through_pcscd(pcsc):
    apdu = bytes.fromhex("80E20000FF") + bytes(range(255))  # 260 bytes, the longest short case-3 APDU
    with served(TinyCard()) as (_, reader), PcscTransport(reader) as terminal:
        assert terminal.transmit(apdu) == apdu[::-1] + b"\x90\x00"


def test_median_round_trip_through_pcscd_is_within_1_ms(pcsc):
    command = bytes.fromhex("80CA9F7900")
    with served(TinyCard()) as (bridge, reader), PcscTransport(reader) as terminal:
        for _ in range(50):  # warm-up
            terminal.transmit(command)
        samples = []
        for _ in range(ROUND_TRIPS):
            started = time.perf_counter()
            terminal.transmit(command)
            samples.append(time.perf_counter() - started)
        assert bridge.apdus >= ROUND_TRIPS
    median_ms = statistics.median(samples) * 1000
    print(f"\nmedian APDU round trip pyscard → pcscd → vpcd → bridge → card: {median_ms:.3f} ms")
    assert median_ms <= ROUND_TRIP_MS_MAX


def test_stopping_the_bridge_removes_the_card(pcsc):
    with served(TinyCard()) as (bridge, reader):
        terminal = PcscTransport(reader).__enter__()
        assert terminal.transmit(SELECT_PPSE)[-2:] == b"\x90\x00"
        bridge.stop()
        with pytest.raises(TransportError, match="SCardTransmit failed"):
            terminal.transmit(SELECT_PPSE)
        terminal.disconnect()
    deadline = time.monotonic() + ATTACH_WAIT_S  # pcscd notices the removal at its next poll
    while True:
        try:
            with PcscTransport(reader, card_wait_s=0) as stale:
                stale.transmit(SELECT_PPSE)
        except NoCardError as exc:
            assert f"no card in {reader!r}" in str(exc)
            break
        except TransportError:
            pass  # still listed as present, but nobody answers
        assert time.monotonic() < deadline, "pcscd still sees a card after the bridge stopped"
        time.sleep(0.1)


# --- the real card: a full qPBOC electronic-cash purchase through pcscd ---------------------------
CARD_MODULES = ("citycard.card.os", "citycard.card.pboc", "citycard.card.perso")
PURCHASE_FEN = 150
BALANCE_FEN = 10_000


def card_modules_missing() -> list[str]:
    """The card-stack modules whose files are not there yet (a module that is there but broken fails)."""
    return [name for name in CARD_MODULES if importlib.util.find_spec(name) is None]


@pytest.mark.parametrize(
    ("profile", "suite_name", "tag_9f66"),
    [
        ("pboc-debit-intl", "INTL", "28000000"),  # RSA + 3DES, fDDA version 00 (9F37)
        ("pboc-ec-only-gm", "GM", "28000000"),  # SM2 + SM4, fDDA version 00
        ("pboc-ec-only-gm", "GM", "28000080"),  # SM2 + SM4, fDDA version 01 (9F37‖9F02‖5F2A‖9F69)
    ],
)
def test_qpboc_ec_purchase_through_pcscd(pcsc, tmp_path, profile, suite_name, tag_9f66):
    """The kernel (one terminal code path) over PcscTransport: TC, fDDA, and the issuer's HSM agrees."""
    missing = card_modules_missing()
    if missing:
        pytest.skip(f"card package not yet present: {', '.join(missing)}")  # not a missing service
    from citycard.card import load_card
    from citycard.cli.bench_card import personalise_card, read_balance_fen
    from citycard.crypto.cryptogram import pboc_ac_data
    from citycard.crypto.suite import GM, INTL
    from citycard.hsm import SoftHSM
    from citycard.kernel.context import Terminal, TerminalProfile
    from citycard.kernel.outcome import Outcome
    from citycard.kernel.params import AidTable, CapkTable
    from citycard.kernel.qpboc import run_qpboc

    hsm = SoftHSM.ephemeral()
    path, prepared = personalise_card(tmp_path, hsm, profile=profile, balance_fen=BALANCE_FEN)
    (suite,) = prepared.suites
    assert suite.name == suite_name
    profile_ = TerminalProfile.bus_validator(
        suite={"GM": GM, "INTL": INTL}[suite_name], ttq=bytes.fromhex(tag_9f66)
    )
    terminal = Terminal(profile_, AidTable.load(), CapkTable.load().with_hsm(hsm))
    card = load_card(path, hsm=hsm)
    card.interface = "contactless"
    with served(card) as (bridge, reader), PcscTransport(reader) as transport:
        result = run_qpboc(transport, terminal, amount_fen=PURCHASE_FEN)
        balance_after = read_balance_fen(transport)  # the application is still selected
        assert bridge.apdus >= len([s for s in result.steps if s.name.startswith("READ")]) + 4
    assert result.kind is Outcome.APPROVED_OFFLINE, result.reasons
    assert ("FDDA", "passed") in [(s.name, s.detail) for s in result.steps]
    assert result.pan == prepared.pan and result.suite == suite_name
    values = result.data

    # the card approved offline: TC (CID 40), and the issuer's HSM agrees it is the card's cryptogram
    assert result.cid == 0x40, f"CID {result.cid:02X}: not a TC"
    ac_data = pboc_ac_data(
        tag_9f02=values["9F02"],
        tag_9f03=values["9F03"],
        tag_9f1a=values["9F1A"],
        tag_95=bytes(5),  # the TVR the GPO sent: nothing set before the card decided
        tag_5f2a=values["5F2A"],
        tag_9a=values["9A"],
        tag_9c=values["9C"],
        tag_9f37=values["9F37"],
        tag_82=values["82"],
        tag_9f36=values["9F36"],
        cvr=values["9F10"][3:7],
    )
    labels = {
        kind: f"{prefix}-{suite.name.lower()}" for kind, prefix in (("ac", "imk-ac"), ("mac", "imk-mac"))
    }
    pan, psn = result.pan, result.psn
    assert hsm.verify_arqc(
        labels["ac"], tag_5a=pan, tag_5f34=psn, tag_9f36=values["9F36"], data=ac_data, tag_9f26=values["9F26"]
    )
    assert not hsm.verify_arqc(
        labels["ac"],
        tag_5a=pan,
        tag_5f34=psn,
        tag_9f36=values["9F36"],
        data=bytes(37),
        tag_9f26=values["9F26"],
    )
    assert hsm.verify_iad_mac(
        labels["mac"], tag_5a=pan, tag_5f34=psn, tag_9f36=values["9F36"], tag_9f10=values["9F10"]
    )
    if tag_9f66 == "28000080":
        assert values["9F69"][0] == 0x01  # fDDA version 01 was used

    # the electronic cash went down by the amount, as the card said in 9F5D
    assert balance_after == BALANCE_FEN - PURCHASE_FEN == result.balance_fen_after
    assert result.batch_record is not None and result.batch_record.balance_fen_after == balance_after
    with InProcessTransport(
        load_card(path, hsm=hsm)
    ) as restarted:  # the card saved it: a new process sees it
        assert read_balance_fen(restarted, aid=result.aid) == balance_after


def test_card_serve_command_until_ctrl_c(pcsc, tmp_path):
    """`citycard card new` then `citycard card serve` in its own process; pyscard reads it; Ctrl-C ends it."""
    missing = card_modules_missing()
    if missing:
        pytest.skip(f"card package not yet present: {', '.join(missing)}")
    from citycard.cli.bench_card import read_balance_fen

    env = {**os.environ, "CITYCARD_DATA_DIR": str(tmp_path)}  # the HSM and its master key live there
    command = [sys.executable, "-m", "citycard.cli.main", "card"]
    image = tmp_path / "card.json"
    made = subprocess.run(
        [*command, "new", "--profile", "pboc-ec-only-gm", "--out", str(image)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    port = VPCD_PORT + 1  # slot 1: the other tests take slot 0 first
    serving = subprocess.Popen(
        [*command, "serve", str(image), "--port", str(port), "--interface", "contactless", "--verbose"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with PcscTransport("Virtual PCD 00 01", card_wait_s=10) as terminal:
            assert terminal.transmit(SELECT_PPSE)[-2:] == b"\x90\x00"
            assert read_balance_fen(terminal, aid=bytes.fromhex("A000000333010106")) == 0
    finally:
        serving.send_signal(signal.SIGINT)
        out, err = serving.communicate(timeout=10)
    assert serving.returncode == 0, err
    assert f"to pcscd at 127.0.0.1:{port} → reader 'Virtual PCD 00 01'" in err
    assert f"> {SELECT_PPSE.hex().upper()}" in out  # --verbose: our card answered, not another client's
    assert "< 9F79060000000000009000" in out
    assert "stopped after 3 APDUs" in err


# --- a private pcscd that the test may stop and start: the bridge must come back by itself --------
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
CLIENT = textwrap.dedent(
    """
    import sys
    from citycard.reader import PcscTransport
    with PcscTransport(sys.argv[1], card_wait_s=10) as terminal:
        print(terminal.transmit(bytes.fromhex(sys.argv[2])).hex().upper())
    """
)


def _free_port_pair() -> int:
    """A port p with p and p + 1 free (vpcd listens on CHANNELID and CHANNELID + 1, all addresses)."""
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind(("0.0.0.0", 0))
            port = probe.getsockname()[1]
        if port + 1 >= 65_536:
            continue
        with socket.socket() as second:
            try:
                second.bind(("0.0.0.0", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two adjacent free TCP ports")


class PrivatePcscd:
    """pcscd with only a vpcd reader on ``port``, in its own mount namespace so that its
    /run/pcscd is ``run_dir`` and the shared pcscd is untouched; clients reach it through
    PCSCLITE_CSOCK_NAME (read once per process by libpcsclite: so only in subprocesses)."""

    def __init__(self, directory: Path, port: int):
        self.run_dir, self.port = directory / "run", port
        self.run_dir.mkdir()
        (directory / "conf").mkdir()
        (directory / "conf" / "vpcd").write_text(
            f'FRIENDLYNAME "citycard test PCD"\nDEVICENAME /dev/null:0x{port:X}\n'
            f"LIBPATH {VPCD_DRIVER}\nCHANNELID 0x{port:X}\n"
        )
        self.command = [
            "unshare", "--mount", "--propagation", "private", "sh", "-c",
            f"mount --bind {self.run_dir} /run/pcscd && exec pcscd --foreground -c {directory / 'conf'}",
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        (self.run_dir / "pcscd.comm").unlink(missing_ok=True)
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while not (self.run_dir / "pcscd.comm").exists():
            if self.process.poll() is not None:
                reason = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                pytest.skip(
                    f"cannot run a private pcscd here (needs root and unshare --mount): {reason.strip()}"
                )
            assert time.monotonic() < deadline, "private pcscd did not open its socket within 5 s"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # pcscd itself: unshare and sh exec it
            self.process.wait(10)
        self.process = None

    def transmit(self, apdu: str) -> str:
        """One APDU from a fresh client process (its own libpcsclite, pointed at this pcscd)."""
        env = {**os.environ, "PCSCLITE_CSOCK_NAME": str(self.run_dir / "pcscd.comm")}
        done = subprocess.run(
            [sys.executable, "-c", CLIENT, "citycard test PCD 00 00", apdu],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


def test_bridge_comes_back_after_pcscd_restarts(pcsc, tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a private pcscd needs root and unshare (util-linux)")
    pcscd = PrivatePcscd(tmp_path, _free_port_pair())
    pcscd.start()
    bridge = VpcdBridge(TinyCard(), port=pcscd.port, backoff_s_min=0.05, backoff_s_max=0.2).start()
    try:
        assert bridge.wait_attached(ATTACH_WAIT_S)
        assert pcscd.transmit("80CA9F7900") == "00799FCA809000"
        pcscd.stop()  # pcscd goes away: the bridge sees the connection close and retries with backoff
        deadline = time.monotonic() + ATTACH_WAIT_S
        while bridge.wait_attached(0):
            assert time.monotonic() < deadline, "the bridge did not notice pcscd stopping"
            time.sleep(0.02)
        time.sleep(0.5)  # a few refused attempts
        pcscd.start()
        deadline = time.monotonic() + 10
        while not (bridge.connections >= 2 and bridge.wait_attached(0.1)):
            assert time.monotonic() < deadline, f"the bridge did not come back: {bridge.last_error}"
        assert pcscd.transmit("80CA9F7900") == "00799FCA809000"
    finally:
        bridge.stop()
        pcscd.stop()
