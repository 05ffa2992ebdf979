"""The kernel online over ISO 8583: Iso8583AcquirerLink over real TCP to an issuer on the real HSM.

The issuer is :class:`tests.terminals.issuer_standin.IssuerStandIn` (real sockets, real frames,
the ARQC checked and the ARPC made in the HSM), because it can be told to misbehave (stay silent,
answer a bad ARPC); test_terminal_pay_online.py runs the command against the real issuer (B1's
IssuerHost behind B2's HostServer, signed on, MACed).
"""

from __future__ import annotations

import datetime as dt

import pytest

from citycard.emv.bits import TSI, TVR
from citycard.emv.tlv import decode_dict
from citycard.iso8583 import builders
from citycard.kernel.contact import run_contact
from citycard.kernel.context import Terminal, TerminalProfile
from citycard.kernel.outcome import Outcome
from citycard.kernel.params import AidTable
from citycard.reader import InProcessTransport
from citycard.terminals.acquirer_link import FramedClient, Iso8583AcquirerLink, UnreachableClient
from citycard.terminals.store import PENDING_REVERSALS_MAX, TerminalStore, TerminalStoreError

from .issuer_standin import IssuerStandIn

WHEN = dt.datetime.now(dt.UTC).replace(microsecond=0)
NEVER = lambda n: n - 1  # noqa: E731 — random transaction selection never picks this transaction
TERMINAL = builders.Terminal(terminal_id="00000001", merchant_id="898510141110001")
SHORT_TIMEOUT_S = 0.5


def link_to(server: IssuerStandIn, store: TerminalStore, *, timeout_s: float = 5.0) -> Iso8583AcquirerLink:
    return Iso8583AcquirerLink(FramedClient("127.0.0.1", server.port, timeout_s=timeout_s), store, TERMINAL)


def pay(card, capks, link, amount_fen=2_000):
    terminal = Terminal(TerminalProfile(), AidTable.load(), capks)
    with InProcessTransport(card) as transport:
        result = run_contact(
            transport, terminal, amount_fen=amount_fen, when=WHEN, acquirer=link, random=NEVER
        )
    link.complete(result)
    return result


@pytest.fixture
def store(tmp_path) -> TerminalStore:
    return TerminalStore(tmp_path, "00000001")


@pytest.mark.parametrize("suite", ["INTL", "GM-DEBIT"])
def test_contact_online_approval_with_arpc_over_iso8583(suite, new_card, capks, hsm, issued_cards, store):
    issued = issued_cards(suite)
    with IssuerStandIn(hsm) as issuer:
        link = link_to(issuer, store)
        result = pay(new_card(suite, interface="contact"), capks, link)
        link.client.close()
    assert result.kind is Outcome.APPROVED_ONLINE, result.reasons
    assert result.authorisation_response_code == b"00"
    assert TSI.new(result.tsi).is_set("issuer_authentication_performed")
    assert "issuer_authentication_failed" not in TVR.decode(result.tvr)
    assert issuer.arqc_valid == [True] and issuer.kinds() == ["0200"]
    (request,) = issuer.received
    assert request["2"] == issued.prepared.pan and request["23"] == f"{int(issued.prepared.psn):03d}"
    assert request["3"] == "000000" and request["4"] == "000000002000" and request["22"] == "052"
    assert request["14"] == issued.prepared.expiry.strftime("%y%m")
    assert request["41"] == "00000001" and request["11"] == "000001"
    sent = decode_dict(request["55"])
    assert sent["9F27"] == b"\x80" and sent["84"] == issued.prepared.aid  # the ARQC went out in F55
    assert result.data["9F27"] == b"\x40"  # the second GENERATE AC: TC
    assert store.pending == ()


def test_online_decline_over_iso8583(new_card, capks, hsm, store):
    with IssuerStandIn(hsm, "decline") as issuer:
        link = link_to(issuer, store)
        result = pay(new_card("GM-DEBIT", interface="contact"), capks, link)
    assert result.kind is Outcome.DECLINED and result.authorisation_response_code == b"05"
    assert "declined by the issuer (ARC 05)" in result.reasons[-1]
    assert issuer.kinds() == ["0200"]  # an issuer decline owes no reversal
    assert store.pending == ()


def test_timeout_stores_a_reversal_that_is_delivered_on_the_next_run(new_card, capks, hsm, tmp_path):
    store = TerminalStore(tmp_path, "00000001")
    with IssuerStandIn(hsm, "silent") as silent:
        link = link_to(silent, store, timeout_s=SHORT_TIMEOUT_S)
        result = pay(new_card("INTL", interface="contact"), capks, link)
    # unable to go online: the default action codes decide (Z3 → AAC here), and a reversal is owed
    assert result.kind is Outcome.DECLINED, result.reasons
    assert result.authorisation_response_code in (b"Y3", b"Z3")
    assert silent.kinds() == ["0200", "0400"]  # the reversal was tried at once, unanswered
    (pending,) = TerminalStore(tmp_path, "00000001").pending  # durable: a new process sees it
    reversal = pending.fields()
    assert reversal["t"] == "0400" and reversal["39"] == "98"
    assert reversal["11"] == silent.received[0]["11"] and reversal["4"] == "000000002000"
    assert "52" not in reversal and "64" not in reversal

    later = TerminalStore(tmp_path, "00000001")  # the next run
    with IssuerStandIn(hsm) as issuer:
        link = link_to(issuer, later)
        assert link.send_pending_reversals() == 1
    assert issuer.kinds() == ["0400"] and issuer.received[0]["11"] == reversal["11"]
    assert later.pending == () and TerminalStore(tmp_path, "00000001").pending == ()
    assert later.next_stan() == 2  # the STAN survived too: never reused


def test_a_reversal_answered_at_once_is_not_kept(new_card, capks, hsm, store):
    with IssuerStandIn(hsm, "silent-once") as issuer:
        link = link_to(issuer, store, timeout_s=SHORT_TIMEOUT_S)
        result = pay(new_card("GM-DEBIT", interface="contact"), capks, link)
    assert result.authorisation_response_code in (b"Y3", b"Z3")
    assert issuer.kinds() == ["0200", "0400"]
    assert store.pending == ()
    assert any("acknowledged" in line for line in link.log), link.log


def test_card_declining_an_issuer_approval_is_reversed(new_card, capks, hsm, store):
    with IssuerStandIn(hsm, "bad-arpc") as issuer:
        link = link_to(issuer, store)
        result = pay(new_card("GM-DEBIT", interface="contact"), capks, link)
    # the card checks the ARPC itself (91 in CDOL2): a wrong one makes it answer AAC to the TC asked
    assert result.kind is Outcome.DECLINED, result.reasons
    assert result.reasons[-1] == "the issuer approved (ARC 00) but the card declined (AAC)"
    assert issuer.kinds() == ["0200", "0400"]
    assert issuer.received[1]["39"] == "06" and issuer.received[1]["11"] == issuer.received[0]["11"]
    assert store.pending == ()


def test_an_unreachable_host_owes_no_reversal(new_card, capks, store):
    link = Iso8583AcquirerLink(UnreachableClient("127.0.0.1:1: refused"), store, TERMINAL)
    result = pay(new_card("INTL", interface="contact"), capks, link)
    assert result.authorisation_response_code in (b"Y3", b"Z3")
    assert store.pending == ()


def test_store_limits_and_errors(tmp_path):
    with pytest.raises(TerminalStoreError, match="8 letters or digits"):
        TerminalStore(tmp_path, "T1")
    store = TerminalStore(tmp_path, "00000002")
    with pytest.raises(TerminalStoreError, match="only 0400"):
        store.add_reversal({"t": "0200", "11": "000001"})
    request = builders.financial(
        "purchase",
        terminal=builders.Terminal("00000002", "898510141110001"),
        card=builders.Card("6235480000000000001", psn=1),
        amount_fen=100,
        stan=1,
        when=WHEN,
    )
    for _ in range(PENDING_REVERSALS_MAX):
        store.add_reversal(builders.reversal(request))
    with pytest.raises(TerminalStoreError, match=f"{PENDING_REVERSALS_MAX} reversals already pending"):
        store.add_reversal(builders.reversal(request))
    (tmp_path / "terminal-00000003.json").write_text("{}")
    with pytest.raises(TerminalStoreError, match="not a terminal store"):
        TerminalStore(tmp_path, "00000003")


def test_a_full_reversal_store_sends_no_authorisation(new_card, capks, hsm, store):
    request = builders.financial(
        "purchase",
        terminal=TERMINAL,
        card=builders.Card("6235480000000000001", psn=1),
        amount_fen=100,
        stan=1,
        when=WHEN,
    )
    for _ in range(PENDING_REVERSALS_MAX):
        store.add_reversal(builders.reversal(request))
    with IssuerStandIn(hsm, "silent") as issuer:  # it would not answer the reversals either
        link = link_to(issuer, store, timeout_s=SHORT_TIMEOUT_S)
        result = pay(new_card("INTL", interface="contact"), capks, link)
    assert result.authorisation_response_code in (b"Y3", b"Z3")
    assert "0200" not in issuer.kinds()
    assert any(
        "reversals are still pending" in reason
        for reason in result.reasons + tuple(s.detail for s in result.steps)
    )


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_qpboc_online_over_iso8583_is_marked_contactless(suite, new_card, capks, hsm, issued_cards, store):
    from citycard.kernel.qpboc import run_qpboc

    issued = issued_cards(suite)
    with IssuerStandIn(hsm) as issuer:
        link = Iso8583AcquirerLink(FramedClient("127.0.0.1", issuer.port), store, TERMINAL, contactless=True)
        terminal = Terminal(TerminalProfile(), AidTable.load(), capks)
        with InProcessTransport(new_card(suite)) as transport:  # above the EC balance: the card asks online
            result = run_qpboc(transport, terminal, amount_fen=10_001, acquirer=link)
        link.complete(result)
    assert result.kind is Outcome.APPROVED_ONLINE, result.reasons
    assert issuer.arqc_valid == [True]
    (request,) = issuer.received
    assert request["22"] == "072" and request["2"] == issued.prepared.pan
    assert decode_dict(request["55"])["9F27"] == b"\x80"


def test_script_results_go_to_the_host_in_a_0220_advice(new_card, capks, hsm, store):
    with IssuerStandIn(hsm, "load-script") as issuer:
        link = link_to(issuer, store)
        result = pay(new_card("GM-DEBIT", interface="contact"), capks, link)
    assert result.kind is Outcome.APPROVED_ONLINE, result.reasons
    assert result.script_results == bytes.fromhex("2000000001")  # script 00000001 successful
    assert issuer.kinds() == ["0200", "0220"]
    advice = issuer.received[1]
    assert advice["3"] == "000000" and advice["60"].startswith("36")
    assert advice["2"] == issuer.received[0]["2"] and advice["11"] != issuer.received[0]["11"]
    assert decode_dict(advice["55"])["DF31"] == result.script_results
    assert any(line.startswith("0220 STAN") for line in link.log), link.log


def test_a_late_answer_before_the_0410_does_not_leave_the_reversal_pending(new_card, capks, hsm, store):
    """With B2's HostClient (it matches answers on F11 + F41 only) the late 0210 of the timed-out
    request arrives as the answer to its reversal (same STAN); the link sends the 0400 again and
    takes the 0410."""
    from citycard.host.client import HostClient

    with IssuerStandIn(hsm, "late") as issuer:
        client = HostClient("127.0.0.1", issuer.port, timeout_s=SHORT_TIMEOUT_S)
        link = Iso8583AcquirerLink(client, store, TERMINAL)
        result = pay(new_card("INTL", interface="contact"), capks, link)
        client.close()
    assert result.authorisation_response_code in (b"Y3", b"Z3")  # the answer came too late
    assert issuer.kinds()[:3] == ["0200", "0400", "0400"]
    assert store.pending == ()
    assert any("acknowledged" in line for line in link.log), link.log
