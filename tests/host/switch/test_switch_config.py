"""Switch config validation, BIN routing and stand-in decisions (pure parts of citycard.host.switch)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from citycard.host.switch.config import SwitchConfigError, load_switch_config, parse_switch_config
from citycard.host.switch.routing import RoutingTable
from citycard.host.switch.standin import advice_for, decide, reversal_for
from citycard.iso8583 import builders

BASE = {
    "switch": {"name": "city-a", "institution_id": "04510000", "default_route": "province"},
    "endpoints": [
        {"name": "bank-a", "kind": "issuer", "port": 9701, "timeout_ms": 500},
        {"name": "bank-b", "kind": "issuer", "port": 9702},
        {"name": "province", "kind": "switch", "port": 9800},
    ],
    "routes": [
        {"prefix": "6235", "endpoint": "bank-b"},
        {"prefix": "623548", "endpoint": "bank-a", "standin": "small"},
    ],
    "standin": {"small": {"approve_max_fen": 10_000}},
}


def _error(mutate) -> str:
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(SwitchConfigError) as info:
        parse_switch_config(data)
    return str(info.value)


def test_valid_config_parses_with_defaults():
    config = parse_switch_config(BASE)
    assert config.switch.require_mac is True
    assert config.endpoint("bank-a").timeout_s == 0.5
    assert config.endpoint("bank-b").timeout_ms == 2_000
    assert config.standin["small"].kinds == ("authorisation", "purchase")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["routes"].append({"prefix": "6235", "endpoint": "bank-a"}),
            "BIN prefix '6235' is routed twice",
        ),
        (
            lambda d: d["routes"][0].update(endpoint="nope"),
            "routes[0] (prefix 6235) names unknown endpoint 'nope'",
        ),
        (
            lambda d: d["routes"][1].update(standin="big"),
            "routes[1] (prefix 623548) names unknown stand-in rule 'big'",
        ),
        (
            lambda d: d["switch"].update(default_route="nope"),
            "switch.default_route names unknown endpoint 'nope'",
        ),
        (
            lambda d: d["endpoints"][0].update(port=70000),
            "endpoints[0].port: Input should be less than or equal to 65535",
        ),
        (
            lambda d: d["endpoints"][1].update(timeout_ms=5),
            "endpoints[1].timeout_ms: Input should be greater than or equal to 10",
        ),
        (
            lambda d: d["endpoints"][0].update(colour="red"),
            "endpoints[0].colour: Extra inputs are not permitted",
        ),
        (
            lambda d: d["endpoints"].append({"name": "bank-a", "kind": "issuer", "port": 1}),
            "endpoint 'bank-a' is defined twice",
        ),
        (
            lambda d: d["endpoints"][0].update(kind="bank"),
            "endpoints[0].kind: Input should be 'issuer' or 'switch'",
        ),
        (
            lambda d: d["standin"]["small"].update(kinds=["ec_load"]),
            "standin.small.kinds[0]: Input should be 'authorisation' or 'purchase'",
        ),
        (
            lambda d: d["standin"]["small"].update(approve_max_fen=-1),
            "standin.small.approve_max_fen: Input should be greater than or equal to 0",
        ),
        (lambda d: d["routes"][0].update(prefix="62a5"), "routes[0].prefix: String should match pattern"),
        (
            lambda d: d["switch"].update(institution_id="0451-0000"),
            "switch.institution_id: String should match pattern",
        ),
        (lambda d: d.pop("switch"), "switch: Field required"),
    ],
)
def test_config_errors_are_precise(mutate, message):
    assert message in _error(mutate)


def test_load_reports_file_toml_and_missing_file(tmp_path: Path):
    bad = tmp_path / "switch.toml"
    bad.write_text("[switch\nname = 1\n")
    with pytest.raises(SwitchConfigError, match=r"switch\.toml: not valid TOML"):
        load_switch_config(bad)
    with pytest.raises(SwitchConfigError, match="cannot read"):
        load_switch_config(tmp_path / "absent.toml")
    bad.write_text('[switch]\nname = "a"\ninstitution_id = "1"\n[[endpoints]]\nname = "x"\nkind = "issuer"\n')
    with pytest.raises(SwitchConfigError, match=r"switch\.toml: endpoints\[0\]\.port: Field required"):
        load_switch_config(bad)


def test_shipped_example_configs_load():
    root = Path(__file__).resolve().parents[3] / "src" / "citycard" / "data" / "hosts"
    paths = sorted(root.glob("switch-*.toml"))
    assert len(paths) >= 2
    for path in paths:
        assert load_switch_config(path).endpoints


def test_longest_prefix_wins_and_default_route():
    table = RoutingTable(parse_switch_config(BASE))
    assert table.route("6235480000000017").endpoint == "bank-a"
    assert table.route("6235480000000017").standin.approve_max_fen == 10_000
    assert table.route("6235990000000017").endpoint == "bank-b"
    assert table.route("6235990000000017").standin is None
    default = table.route("6217000000000017")
    assert (default.endpoint, default.prefix) == ("province", None)
    with pytest.raises(ValueError, match=r"PAN must be 12\.\.19 digits"):
        table.route("62354800")


def test_no_default_route_means_no_destination():
    data = copy.deepcopy(BASE)
    data["switch"].pop("default_route")
    assert RoutingTable(parse_switch_config(data)).route("6217000000000017") is None


def _purchase(amount_fen: int) -> dict:
    from datetime import UTC, datetime

    return builders.financial(
        "purchase",
        terminal=builders.Terminal("T0000001", "M00000000000001", acquirer_id="04519999"),
        card=builders.Card("6235480000000017", psn=1),
        amount_fen=amount_fen, stan=123, when=datetime(2026, 11, 27, 4, 0, tzinfo=UTC),
        ic=bytes.fromhex("9F2608" + "11" * 8), pin_block=bytes(8),
    )  # fmt: skip


def test_standin_rules_per_kind_amount_and_outage():
    rule = parse_switch_config(BASE).standin["small"]
    assert decide(rule, kind="purchase", amount_fen=10_000, stan="000123", outage="down").approved
    assert (
        decide(rule, kind="purchase", amount_fen=10_001, stan="000123", outage="down").response_code == "91"
    )
    assert decide(rule, kind="ec_load", amount_fen=1, stan="000123", outage="down").response_code == "91"
    assert (
        decide(rule, kind="purchase", amount_fen=10_001, stan="000123", outage="timeout").response_code
        == "68"
    )
    assert decide(None, kind="purchase", amount_fen=1, stan="000123", outage="down").response_code == "91"


def test_advice_and_reversal_keep_the_original_identity():
    request = _purchase(500)
    decision = decide(parse_switch_config(BASE).standin["small"], kind="purchase", amount_fen=500,
                      stan=request["11"], outage="down")  # fmt: skip
    advice = advice_for(request, decision)
    assert builders.classify(advice).name == "advice"
    assert (advice["t"], advice["39"], advice["38"]) == ("0220", "00", "S00123")
    assert all(advice[k] == request[k] for k in ("2", "4", "7", "11", "32", "41", "42", "55"))
    assert "52" not in advice and "26" not in advice
    reversal = reversal_for(request)
    assert (reversal["t"], reversal["39"], reversal["11"]) == ("0400", "98", request["11"])
    with pytest.raises(ValueError, match="only a stand-in approval"):
        advice_for(request, decide(None, kind="purchase", amount_fen=1, stan="000123", outage="down"))
