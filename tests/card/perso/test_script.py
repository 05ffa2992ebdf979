"""STORE DATA framing, the perso-script file, and no clear key anywhere in it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from citycard.card.perso import (
    Dgi,
    PersoScript,
    PreparedCard,
    ScriptError,
    perso_script,
    select_apdu,
    store_data_apdus,
    store_data_blocks,
)
from citycard.card.perso.script import check_apdus, dgi_length_field
from citycard.hsm import SoftHSM

from .conftest import PROFILES

h = bytes.fromhex


def reassemble(apdus: list[bytes]) -> list[tuple[int, bytes, bool]]:
    """The card's side: STORE DATA blocks back into (DGI, value, enciphered), continuation included."""
    out: list[tuple[int, bytes, bool]] = []
    pending: tuple[int, int, bytearray, bool] | None = None  # dgi, length, value so far, enciphered
    for apdu in apdus:
        data, enciphered = apdu[5:], bool(apdu[2] & 0x30)
        if pending is not None:
            dgi, length, value, flag = pending
            assert flag == enciphered
            value += data
            if len(value) >= length:
                assert len(value) == length
                out.append((dgi, bytes(value), flag))
                pending = None
            continue
        offset = 0
        while offset < len(data):
            dgi, length, offset = (
                int.from_bytes(data[offset : offset + 2], "big"),
                data[offset + 2],
                offset + 3,
            )
            if length == 0xFF:
                length, offset = int.from_bytes(data[offset : offset + 2], "big"), offset + 2
            value = data[offset : offset + length]
            offset += length
            if len(value) < length:
                pending = (dgi, length, bytearray(value), enciphered)
            else:
                out.append((dgi, value, enciphered))
    assert pending is None
    return out


@pytest.mark.parametrize("name", PROFILES)
@pytest.mark.parametrize("group", [False, True], ids=["one-dgi-a-block", "grouped"])
def test_store_data_framing(prepared: dict[str, PreparedCard], name: str, group: bool) -> None:
    card = prepared[name]
    script = perso_script(card, group=group)
    apdus = list(script.apdus)
    assert apdus[0] == bytes.fromhex("00A4040008") + card.aid + b"\x00"
    store = apdus[1:]
    for number, apdu in enumerate(store):
        cla, ins, p1, p2, lc = apdu[:5]
        assert (cla, ins, p2, lc) == (0x80, 0xE2, number, len(apdu) - 5)
        assert lc <= 255
        assert bool(p1 & 0x80) == (number == len(store) - 1)  # last block only
        assert p1 & 0x7F in (0x00, 0x30)
    assert reassemble(store) == [(d.number, d.data, d.encrypted) for d in card.dgis]
    split = [d.name for d in card.dgis if len(d.data) > 252]  # DGI ‖ L ‖ value over 255 bytes
    assert split == (["0301"] if name.endswith("-intl") else [])  # the 1984-bit CA's certificate
    if group:
        assert len(store) < len(card.dgis)
    else:
        assert len(store) == len(card.dgis) + len(split)


def test_a_dgi_longer_than_a_block_is_split_as_cps_does() -> None:
    record = Dgi(0x0301, b"\x70\x81\xfb" + bytes(251), what="a 254-byte record")
    key = Dgi(0x8000, bytes(56), encrypted=True)
    long = Dgi(0x9999, bytes(range(256)) * 2)  # 512 bytes: FF xx xx length
    blocks = store_data_blocks([Dgi(0x9010, h("0303")), record, key, long], group=True)
    apdus = store_data_apdus(blocks)
    assert [b.dgis for b in blocks] == [
        ("9010",),
        ("0301",),
        ("0301",),
        ("8000",),
        ("9999",),
        ("9999",),
        ("9999",),
    ]
    assert apdus[1][5:8] == h("0301FE") and len(apdus[1]) == 5 + 255
    assert apdus[2][5:] == bytes(2)  # the rest of the value, no header
    assert apdus[3][2] == 0x30  # enciphered block, alone
    assert apdus[4][5:10] == h("9999FF0200")
    assert apdus[-1][2] == 0x80 and [a[3] for a in apdus] == list(range(7))
    assert reassemble(apdus) == [
        (0x9010, h("0303"), False),
        (0x0301, record.data, False),
        (0x8000, bytes(56), True),
        (0x9999, long.data, False),
    ]


def test_grouping_never_mixes_clear_and_enciphered_dgis() -> None:
    dgis = [
        Dgi(0x9010, h("0303")),
        Dgi(0x8010, bytes(16), encrypted=True),
        Dgi(0x9000, bytes(9)),
        Dgi(0x9030, bytes(9)),
    ]
    blocks = store_data_blocks(dgis, group=True)
    assert [(b.dgis, b.encrypted) for b in blocks] == [
        (("9010",), False),
        (("8010",), True),
        (("9000", "9030"), False),
    ]


def test_length_field() -> None:
    assert [dgi_length_field(n).hex().upper() for n in (0, 127, 128, 254, 255, 0xFFFF)] == [
        "00", "7F", "80", "FE", "FF00FF", "FFFFFF",
    ]  # fmt: skip
    with pytest.raises(ScriptError, match="a DGI holds 0 to 65535 bytes, got 65536"):
        dgi_length_field(0x10000)


def test_too_many_blocks() -> None:
    with pytest.raises(ScriptError, match="257 STORE DATA blocks, P2 counts at most 256"):
        store_data_blocks([Dgi(0x0101 + i, b"\x70\x00") for i in range(257)])


def test_select_apdu() -> None:
    assert select_apdu(h("A000000333010106")).hex().upper() == "00A4040008A00000033301010600"
    with pytest.raises(ScriptError):
        select_apdu(h("A0"))


# --- the script file ----------------------------------------------------------------------------


def clear_secrets(hsm: SoftHSM, card: PreparedCard) -> list[bytes]:
    """Every clear secret of ``card``: card keys exported from the HSM, then each deciphered DGI."""
    secrets = []
    for suite in card.suites:
        tag = suite.name.lower()
        keys = hsm.export_card_keys_for_personalisation(
            {"AC": f"imk-ac-{tag}", "MAC": f"imk-mac-{tag}", "ENC": f"imk-enc-{tag}"},
            tag_5a=card.pan,
            tag_5f34=card.psn,
            suite=suite,
        )
        secrets += [keys["AC"], keys["MAC"], keys["ENC"]]
    for dgi in card.dgis:
        if dgi.encrypted:
            clear = hsm.decipher_perso_dgi(card.perso_kek_label, card.perso_suite, dgi.data)
            step = 16 if dgi.number in (0x8000, 0x8030, 0x8020) else len(clear)
            secrets += [clear[i : i + step] for i in range(0, len(clear), step)]
    return secrets


@pytest.mark.parametrize("name", PROFILES)
def test_no_clear_key_in_the_script_file(
    prepared: dict[str, PreparedCard], hsm: SoftHSM, name: str, tmp_path: Path
) -> None:
    card = prepared[name]
    path = tmp_path / "perso.json"
    perso_script(card).save(path)
    text = path.read_text()
    secrets = clear_secrets(hsm, card)
    assert len(secrets) >= 5
    for secret in secrets:
        assert secret.hex().upper() not in text.upper()
        assert secret.hex().upper() not in repr(card).upper()
    assert "26123456FFFFFFFF" not in text  # the PIN block
    document = json.loads(text)
    assert document["format"] == "citycard-perso-script/1"
    assert document["pan_masked"] == card.pan_masked and card.pan not in json.dumps(
        {k: v for k, v in document.items() if k != "apdus"}
    )
    assert document["kcvs"][card.suites[0].name] == dict(card.kcvs[card.suites[0].name])
    assert document["transport_key"]["label"] == "perso-kek"
    assert document["transport_key"]["kcv"] == hsm.key_info("perso-kek").kcv_hex
    assert document["capks"][card.suites[0].name]["index"] == (
        "E0" if card.suites[0].name == "INTL" else "E1"
    )
    enciphered = [d["dgi"] for d in document["dgis"] if d["enciphered"]]
    assert set(enciphered) == {d.name for d in card.dgis if d.encrypted}


def test_script_file_round_trip_and_corruption(prepared: dict[str, PreparedCard], tmp_path: Path) -> None:
    script = perso_script(prepared["citizen-card-gm"])
    path = tmp_path / "perso.json"
    script.save(path)
    loaded = PersoScript.load(path)
    assert loaded.apdus == script.apdus and loaded.suite == "GM" and loaded.aid == script.aid
    document = json.loads(path.read_text())
    document["apdus"][2] = document["apdus"][2][:6] + "05" + document["apdus"][2][8:]
    with pytest.raises(ScriptError, match="APDU 2 has block number 05, expected 01"):
        PersoScript.from_json(document)
    apdus = list(script.apdus)
    last = apdus[-1]
    apdus[-1] = last[:2] + bytes([last[2] & 0x7F]) + last[3:]
    with pytest.raises(ScriptError, match=r"P1 b8 \(last block\) must be set on the last block only"):
        check_apdus(apdus, aid=script.aid)
    with pytest.raises(ScriptError, match="format must be 'citycard-perso-script/1'"):
        PersoScript.from_json({"format": "other"})
