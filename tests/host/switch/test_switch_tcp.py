"""The switch end to end over real TCP: terminals → switch(es) → real issuer hosts with their ledgers.

Banks are the shipped ``citybank`` (BIN 623548) and ``ruralbank`` (BIN 621700), each an IssuerHost
behind a HostServer with its own HSM and database; the switch signs on to them with ZMKs; the
terminal signs on to the switch with its TMK; every request carries a real ARQC.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from tests import dbtools
from tests.host.switch.harness import Terminal, arpc_of, make_bank, new_zmk, switch_config

from citycard.crypto import GM, INTL, cryptogram
from citycard.db import read_transaction
from citycard.host.switch import store
from citycard.host.switch.service import SwitchService
from citycard.host.switch.tables import standins
from citycard.iso8583 import builders

CITY_A = "04510000"
CITY_B = "04610000"
PAN_CITY = "6235480000000017"
PAN_RURAL = "6217000000000019"
SUITES = pytest.mark.parametrize("suite", [INTL, GM], ids=["INTL", "GM"])


def _endpoint(name: str, port: int, *, timeout_ms: int = 2_000) -> dict:
    return {"name": name, "kind": "issuer", "port": port, "zmk": f"zmk:to/{name}", "timeout_ms": timeout_ms}


def _switch(config, url: str, zmks: dict[str, bytes], suite) -> SwitchService:
    from citycard.hsm import SoftHSM

    hsm = SoftHSM.ephemeral()
    for label, clear in zmks.items():
        hsm.import_key(label, "ZMK", suite, clear)
    return SwitchService(config, engine=dbtools.migrated_engine(url), hsm=hsm, port=0)


def _queue(service: SwitchService) -> list[store.QueuedMessage]:
    with read_transaction(service.engine) as conn:
        return store.items(conn)


async def _until(predicate, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@SUITES
def test_routes_by_longest_prefix_to_two_banks(tmp_path, db_url, suite):
    zmk_city, zmk_rural = new_zmk(suite), new_zmk(suite)
    city = make_bank(
        "citybank", dbtools.fresh_database_url("sqlite", tmp_path), zmks={CITY_A: zmk_city}, suite=suite
    )
    rural = make_bank(
        "ruralbank", dbtools.fresh_database_url("sqlite", tmp_path), zmks={CITY_A: zmk_rural}, suite=suite
    )
    city.enrol(PAN_CITY, suite)
    rural.enrol(PAN_RURAL, suite)
    config = switch_config(
        name="city-a", code=CITY_A,
        endpoints=[_endpoint("citybank", city.port), _endpoint("ruralbank", rural.port)],
        routes=[{"prefix": "62", "endpoint": "ruralbank"}, {"prefix": "623548", "endpoint": "citybank"}],
    )  # fmt: skip
    service = _switch(config, db_url, {"zmk:to/citybank": zmk_city, "zmk:to/ruralbank": zmk_rural}, suite)

    async def scenario() -> None:
        await city.start(), await rural.start()
        await service.start()
        terminal = await Terminal.connect(service, suite=suite)
        try:
            request, sk = terminal.purchase(city, PAN_CITY, suite, amount_fen=1_500, atc=1)
            answer = await terminal.client.exchange(request)
            assert answer["39"] == "00", answer
            assert cryptogram.verify_arpc(
                sk, tag_9f26=_arqc(request), tag_8a=b"00", arpc=arpc_of(answer), suite=suite
            )
            assert "33" not in answer  # the answer echoes the request as the terminal sent it
            request, _ = terminal.purchase(rural, PAN_RURAL, suite, amount_fen=2_500, atc=1)
            assert (await terminal.client.exchange(request))["39"] == "00"
            # unknown BIN without a default route: 15, nothing forwarded
            request, _ = terminal.purchase(rural, "9999000000000016", suite, amount_fen=100, atc=2)
            assert (await terminal.client.exchange(request))["39"] == "15"
        finally:
            await terminal.close()
            await service.shutdown(grace_s=5)
            await city.stop(), await rural.stop()

    asyncio.run(scenario())
    assert city.balance(PAN_CITY) == 100_000 - 1_500
    assert rural.balance(PAN_RURAL) == 100_000 - 2_500
    assert city.merchant_balance("M00000000000001") == 1_500
    assert rural.merchant_balance("M00000000000001") == 2_500
    assert city.invariants() == [] and rural.invariants() == []
    assert _queue(service) == []


def _arqc(request: dict) -> bytes:
    from citycard.emv.tlv import decode

    return next(obj.value for obj in decode(request["55"]) if obj.tag == "9F26")


@SUITES
def test_cross_region_card_of_city_a_at_a_terminal_of_city_b(tmp_path, suite):
    zmk_bank, zmk_ab = new_zmk(suite), new_zmk(suite)
    city = make_bank(
        "citybank", dbtools.fresh_database_url("sqlite", tmp_path), zmks={CITY_A: zmk_bank}, suite=suite
    )
    city.enrol(PAN_CITY, suite)
    config_a = switch_config(
        name="city-a", code=CITY_A, endpoints=[_endpoint("citybank", city.port)],
        routes=[{"prefix": "623548", "endpoint": "citybank"}],
    )  # fmt: skip
    switch_a = _switch(
        config_a, dbtools.fresh_database_url("sqlite", tmp_path), {"zmk:to/citybank": zmk_bank}, suite
    )
    switch_a.hsm.import_key(f"zmk:{CITY_B}", "ZMK", suite, zmk_ab)  # B signs on to A with F33 = B's code

    async def scenario() -> None:
        await city.start()
        port_a = await switch_a.start()
        config_b = switch_config(
            name="city-b", code=CITY_B,
            endpoints=[{"name": "city-a", "kind": "switch", "port": port_a, "zmk": "zmk:to/city-a", "timeout_ms": 4_000}],
            routes=[{"prefix": "623548", "endpoint": "city-a"}],
        )  # fmt: skip
        switch_b = _switch(
            config_b, dbtools.fresh_database_url("sqlite", tmp_path), {"zmk:to/city-a": zmk_ab}, suite
        )
        await switch_b.start()
        terminal = await Terminal.connect(switch_b, suite=suite, terminal_id="TCITYB01")
        try:
            request, sk = terminal.purchase(city, PAN_CITY, suite, amount_fen=8_800, atc=1)
            answer = await terminal.client.exchange(request)
            assert answer["39"] == "00", answer
            # ARPC intact through two switches: it verifies under the card's AC session key
            assert cryptogram.verify_arpc(
                sk, tag_9f26=_arqc(request), tag_8a=b"00", arpc=arpc_of(answer), suite=suite
            )
            assert switch_a.server.stats.sign_ons == 1 and switch_b.server.stats.sign_ons == 1
            assert switch_a.links["citybank"].connects == 1 and switch_b.links["city-a"].connects == 1
            # an unknown BIN at B (no default route) is answered by B itself
            request, _ = terminal.purchase(city, "6011000000000012", suite, amount_fen=100, atc=2)
            assert (await terminal.client.exchange(request))["39"] == "15"
            # 0500 at B: B asks A (a switch endpoint), A asks its bank; the totals come back the same way
            settlement = builders.settlement(
                terminal=terminal.terminal, stan=50, when=datetime.now(UTC), debit_count=1, debit_fen=8_800
            )
            answer = await terminal.client.exchange(settlement)
            assert (answer["t"], answer["39"]) == ("0510", "00"), answer
            assert answer["63"] == builders.settlement_totals(debit_count=1, debit_fen=8_800)
            assert "33" not in answer
        finally:
            await terminal.close()
            await switch_b.shutdown(grace_s=5)
            await switch_a.shutdown(grace_s=5)
            await city.stop()

    asyncio.run(scenario())
    assert city.balance(PAN_CITY) == 100_000 - 8_800
    assert city.invariants() == []


@SUITES
def test_issuer_down_stand_in_then_advice_delivered_once(tmp_path, db_url, suite):
    zmk = new_zmk(suite)
    city = make_bank(
        "citybank", dbtools.fresh_database_url("sqlite", tmp_path), zmks={CITY_A: zmk}, suite=suite
    )
    rural = make_bank(
        "ruralbank", dbtools.fresh_database_url("sqlite", tmp_path), zmks={CITY_A: zmk}, suite=suite
    )
    city.enrol(PAN_CITY, suite)
    config = switch_config(
        name="city-a", code=CITY_A,
        endpoints=[_endpoint("citybank", city.port), _endpoint("ruralbank", rural.port)],
        routes=[{"prefix": "623548", "endpoint": "citybank", "standin": "small"},
                {"prefix": "621700", "endpoint": "ruralbank"}],
        standin={"small": {"approve_max_fen": 10_000}},
    )  # fmt: skip
    service = _switch(config, db_url, {"zmk:to/citybank": zmk, "zmk:to/ruralbank": zmk}, suite)

    async def scenario() -> None:
        await service.start()  # both banks are down
        terminal = await Terminal.connect(service, suite=suite)
        try:
            request, _ = terminal.purchase(city, PAN_CITY, suite, amount_fen=10_000, atc=1)
            approved = await terminal.client.exchange(request)
            assert (approved["39"], approved["38"]) == ("00", "S" + request["11"][-5:])
            request, _ = terminal.purchase(city, PAN_CITY, suite, amount_fen=10_001, atc=2)
            assert (await terminal.client.exchange(request))["39"] == "91"  # over the limit
            request, _ = terminal.purchase(rural, PAN_RURAL, suite, amount_fen=100, atc=1)
            assert (await terminal.client.exchange(request))["39"] == "91"  # no stand-in rule
            settlement = builders.settlement(
                terminal=terminal.terminal, stan=70, when=datetime.now(UTC), debit_count=1, debit_fen=10_000
            )
            answer = await terminal.client.exchange(settlement)
            assert (answer["t"], answer["39"]) == ("0510", "91")  # no bank could give its totals
            [advice] = _queue(service)  # and the 0500 is not queued
            assert (advice.mti, advice.status, advice.fields["39"]) == ("0220", "pending", "00")
            with read_transaction(service.engine) as conn:
                [row] = conn.execute(standins.select()).all()
            assert (row.amount_fen, row.outage, row.pan_masked) == (10_000, "down", "623548******0017")
            await city.start()  # the bank comes back: the forwarder delivers the advice
            await _until(lambda: _queue(service)[0].status == "delivered")
            assert _queue(service)[0].response_code == "00"
        finally:
            await terminal.close()
            await service.shutdown(grace_s=5)
            await city.stop()

    asyncio.run(scenario())
    assert city.balance(PAN_CITY) == 100_000 - 10_000  # the stand-in approval, posted exactly once
    assert city.invariants() == []


@SUITES
def test_issuer_timeout_answers_in_time_and_reversal_nets_to_zero(tmp_path, suite):
    zmk = new_zmk(suite)
    city = make_bank(
        "citybank", dbtools.fresh_database_url("sqlite", tmp_path), zmks={CITY_A: zmk}, suite=suite
    )
    city.delay_first_s = 1.0  # the bank holds its first request longer than the switch waits
    city.enrol(PAN_CITY, suite)
    config = switch_config(
        name="city-a", code=CITY_A, endpoints=[_endpoint("citybank", city.port, timeout_ms=300)],
        routes=[{"prefix": "623548", "endpoint": "citybank"}],
    )  # fmt: skip
    service = _switch(config, dbtools.fresh_database_url("sqlite", tmp_path), {"zmk:to/citybank": zmk}, suite)

    async def scenario() -> None:
        await city.start()
        await service.start()
        terminal = await Terminal.connect(service, suite=suite)
        try:
            request, _ = terminal.purchase(city, PAN_CITY, suite, amount_fen=4_000, atc=1)
            loop = asyncio.get_running_loop()
            started = loop.time()
            answer = await terminal.client.exchange(request)
            assert (
                answer["39"] == "68" and loop.time() - started < 1.0
            )  # within the switch's timeout, not the bank's
            [reversal] = _queue(service)
            assert (reversal.mti, reversal.fields["11"], reversal.fields["39"]) == (
                "0400",
                request["11"],
                "98",
            )
            await _until(lambda: _queue(service)[0].status == "delivered")
            assert _queue(service)[0].response_code == "00"
        finally:
            await terminal.close()
            await service.shutdown(grace_s=5)
            await city.stop()

    asyncio.run(scenario())
    assert city.balance(PAN_CITY) == 100_000  # approved late, then reversed: nets to zero
    assert city.merchant_balance("M00000000000001") == 0
    assert city.invariants() == []


def test_restart_delivers_undelivered_advices(tmp_path, db_url):
    suite = GM
    zmk = new_zmk(suite)
    city = make_bank(
        "citybank", dbtools.fresh_database_url("sqlite", tmp_path), zmks={CITY_A: zmk}, suite=suite
    )
    city.enrol(PAN_CITY, suite)
    config = switch_config(
        name="city-a", code=CITY_A, endpoints=[_endpoint("citybank", city.port)],
        routes=[{"prefix": "623548", "endpoint": "citybank", "standin": "small"}],
        standin={"small": {"approve_max_fen": 5_000}},
    )  # fmt: skip

    async def first_life() -> None:
        service = _switch(config, db_url, {"zmk:to/citybank": zmk}, suite)
        await service.start()
        terminal = await Terminal.connect(service, suite=suite)
        for atc, amount in ((1, 1_000), (2, 2_000)):
            request, _ = terminal.purchase(city, PAN_CITY, suite, amount_fen=amount, atc=atc)
            assert (await terminal.client.exchange(request))["39"] == "00"
        await terminal.close()
        await service.shutdown(grace_s=5)
        assert [i.status for i in _queue(service)] == ["pending", "pending"]
        service.engine.dispose()

    async def second_life() -> SwitchService:
        await city.start()
        service = _switch(config, db_url, {"zmk:to/citybank": zmk}, suite)  # same database, new process state
        await service.start()
        try:
            await _until(lambda: all(i.status == "delivered" for i in _queue(service)))
        finally:
            await service.shutdown(grace_s=5)
            await city.stop()
        return service

    asyncio.run(first_life())
    service = asyncio.run(second_life())
    assert [(i.mti, i.response_code) for i in _queue(service)] == [("0220", "00"), ("0220", "00")]
    assert city.balance(PAN_CITY) == 100_000 - 3_000
    assert city.invariants() == []


@SUITES
def test_acquirer_reversal_while_bank_down_is_stored_and_delivered(tmp_path, suite):
    zmk = new_zmk(suite)
    city = make_bank(
        "citybank", dbtools.fresh_database_url("sqlite", tmp_path), zmks={CITY_A: zmk}, suite=suite
    )
    city.enrol(PAN_CITY, suite)
    config = switch_config(
        name="city-a", code=CITY_A, endpoints=[_endpoint("citybank", city.port)],
        routes=[{"prefix": "623548", "endpoint": "citybank"}],
    )  # fmt: skip
    service = _switch(config, dbtools.fresh_database_url("sqlite", tmp_path), {"zmk:to/citybank": zmk}, suite)

    async def scenario() -> None:
        await city.start()
        await service.start()
        terminal = await Terminal.connect(service, suite=suite)
        try:
            request, _ = terminal.purchase(city, PAN_CITY, suite, amount_fen=3_300, atc=1)
            assert (await terminal.client.exchange(request))["39"] == "00"
            assert city.balance(PAN_CITY) == 100_000 - 3_300
            await city.stop()  # the bank goes down before the terminal's reversal (card removed)
            reversal = builders.reversal(request, reason="06")
            answer = await terminal.client.exchange(reversal)
            assert (answer["t"], answer["39"]) == ("0410", "00")  # the switch took it over
            [item] = _queue(service)
            assert (item.mti, item.status, item.fields["39"], item.fields["33"]) == (
                "0400",
                "pending",
                "06",
                CITY_A,
            )
            await city.start()
            await _until(lambda: _queue(service)[0].status == "delivered")
            assert _queue(service)[0].response_code == "00"
        finally:
            await terminal.close()
            await service.shutdown(grace_s=5)
            await city.stop()

    asyncio.run(scenario())
    assert city.balance(PAN_CITY) == 100_000
    assert city.invariants() == []


def test_slow_bank_does_not_hold_up_another_and_bad_pans(tmp_path):
    suite = GM
    zmk = new_zmk(suite)
    city = make_bank(
        "citybank", dbtools.fresh_database_url("sqlite", tmp_path), zmks={CITY_A: zmk}, suite=suite
    )
    rural = make_bank(
        "ruralbank", dbtools.fresh_database_url("sqlite", tmp_path), zmks={CITY_A: zmk}, suite=suite
    )
    city.delay_first_s = 1.5  # slow, but within the switch's 4 s timeout
    city.enrol(PAN_CITY, suite)
    rural.enrol(PAN_RURAL, suite)
    config = switch_config(
        name="city-a", code=CITY_A,
        endpoints=[_endpoint("citybank", city.port, timeout_ms=4_000), _endpoint("ruralbank", rural.port)],
        routes=[{"prefix": "623548", "endpoint": "citybank"}, {"prefix": "621700", "endpoint": "ruralbank"}],
        default="ruralbank",
    )  # fmt: skip
    service = _switch(
        config,
        dbtools.fresh_database_url("sqlite", tmp_path),
        {"zmk:to/citybank": zmk, "zmk:to/ruralbank": zmk},
        suite,
    )

    async def scenario() -> None:
        await city.start(), await rural.start()
        await service.start()
        slow_terminal = await Terminal.connect(service, suite=suite, terminal_id="T0000001")
        fast_terminal = await Terminal.connect(service, suite=suite, terminal_id="T0000002")
        try:
            loop = asyncio.get_running_loop()
            slow_request, _ = slow_terminal.purchase(city, PAN_CITY, suite, amount_fen=100, atc=1)
            slow = asyncio.create_task(slow_terminal.client.exchange(slow_request))
            await asyncio.sleep(0.2)
            started = loop.time()
            fast_request, _ = fast_terminal.purchase(rural, PAN_RURAL, suite, amount_fen=200, atc=1)
            assert (await fast_terminal.client.exchange(fast_request))["39"] == "00"
            assert loop.time() - started < 1.0 and not slow.done()
            assert (await slow)["39"] == "00"
            short, _ = fast_terminal.purchase(rural, "62170000001", suite, amount_fen=1, atc=2)
            assert (await fast_terminal.client.exchange(short))["39"] == "14"
            settlement = builders.settlement(
                terminal=fast_terminal.terminal, stan=90, when=datetime.now(UTC), debit_count=1, debit_fen=200
            )
            answer = await fast_terminal.client.exchange(settlement)
            # both banks asked (the slow one holds nothing of this terminal): 1 purchase of 200
            assert (answer["t"], answer["39"]) == ("0510", "00"), answer
            assert builders.parse_settlement_totals(answer)["debit_fen"] == 200
            wrong = builders.settlement(
                terminal=fast_terminal.terminal, stan=91, when=datetime.now(UTC), debit_count=2, debit_fen=300
            )
            answer = await fast_terminal.client.exchange(wrong)
            assert answer["39"] == "95"  # the sum of the banks' totals is in F63
            assert answer["63"] == builders.settlement_totals(debit_count=1, debit_fen=200)
            # the slow bank's totals for the other terminal come through the switch too
            settlement = builders.settlement(
                terminal=slow_terminal.terminal, stan=92, when=datetime.now(UTC), debit_count=1, debit_fen=100
            )
            assert (await slow_terminal.client.exchange(settlement))["39"] == "00"
        finally:
            await slow_terminal.close(), await fast_terminal.close()
            await service.shutdown(grace_s=5)
            await city.stop(), await rural.stop()

    asyncio.run(scenario())
    assert city.balance(PAN_CITY) == 100_000 - 100 and rural.balance(PAN_RURAL) == 100_000 - 200


@SUITES
def test_timeout_with_stand_in_sends_an_advice_not_a_reversal_and_posts_once(tmp_path, suite):
    """The late original (approved by the bank) and the stand-in advice share one ledger key."""
    zmk = new_zmk(suite)
    city = make_bank(
        "citybank", dbtools.fresh_database_url("sqlite", tmp_path), zmks={CITY_A: zmk}, suite=suite
    )
    city.delay_first_s = 1.0
    city.enrol(PAN_CITY, suite)
    config = switch_config(
        name="city-a", code=CITY_A, endpoints=[_endpoint("citybank", city.port, timeout_ms=300)],
        routes=[{"prefix": "623548", "endpoint": "citybank", "standin": "small"}],
        standin={"small": {"approve_max_fen": 5_000}},
    )  # fmt: skip
    service = _switch(config, dbtools.fresh_database_url("sqlite", tmp_path), {"zmk:to/citybank": zmk}, suite)

    async def scenario() -> None:
        await city.start()
        await service.start()
        terminal = await Terminal.connect(service, suite=suite)
        try:
            request, _ = terminal.purchase(city, PAN_CITY, suite, amount_fen=4_000, atc=1)
            answer = await terminal.client.exchange(request)
            assert (answer["39"], answer["38"]) == ("00", "S" + request["11"][-5:])
            [advice] = _queue(service)
            assert (advice.mti, advice.key.split(":")[0]) == ("0220", "standin")
            with read_transaction(service.engine) as conn:
                [row] = conn.execute(standins.select()).all()
            assert (row.outage, row.amount_fen) == ("timeout", 4_000)
            await _until(lambda: _queue(service)[0].status == "delivered")
        finally:
            await terminal.close()
            await service.shutdown(grace_s=5)
            await city.stop()

    asyncio.run(scenario())
    assert city.balance(PAN_CITY) == 100_000 - 4_000  # once, though both the original and the advice arrived
    assert city.merchant_balance("M00000000000001") == 4_000
    assert city.invariants() == []
