"""Data preparation: the DGIs of each shipped profile, checked from the outside as a terminal and a
card would read them — records, AFLs, ODA over exactly the signed records, keys against the HSM."""

from __future__ import annotations

import datetime as dt

import pytest

from citycard.card.perso import (
    ENCIPHERED_DGIS,
    PreparedCard,
    PrepareError,
    load_profile,
    luhn_check_digit,
    luhn_valid,
    parse_profile,
    pin_block_format_2,
    prepare_card,
)
from citycard.card.perso.profile import profiles_dir
from citycard.crypto import oda, rsa, sm2
from citycard.crypto.capk import UNIONPAY_RID
from citycard.crypto.keys import derive_card_key, key_check_value
from citycard.crypto.suite import GM, INTL
from citycard.emv import decode, decode_one, parse_dol
from citycard.hsm import SoftHSM

from .conftest import PROFILES, TODAY
from .test_profile import dual_suite_profile

h = bytes.fromhex


# --- reading a prepared card as the card and a terminal would --------------------------------


def records_of(card: PreparedCard) -> dict[tuple[int, int], bytes]:
    """Record DGIs SSRR: application records live in SFI 1–10 (0D01/0E01 are not records)."""
    return {
        (d.number >> 8, d.number & 0xFF): d.data
        for d in card.dgis
        if 1 <= d.number >> 8 <= 10 and d.number & 0xFF
    }


def afl_entries(afl: bytes) -> list[tuple[int, int, int, int]]:
    return [(afl[i] >> 3, afl[i + 1], afl[i + 2], afl[i + 3]) for i in range(0, len(afl), 4)]


def read_tags(card: PreparedCard, gpo_dgi: int) -> dict[str, bytes]:
    """The tags a terminal reads with the AFL of ``gpo_dgi`` (each once, checked)."""
    records = records_of(card)
    tags: dict[str, bytes] = {}
    for sfi, first, last, _ in afl_entries(card.dgi(gpo_dgi).data[2:]):
        for number in range(first, last + 1):
            for obj in decode_one(records[sfi, number], tag="70").children or ():
                assert obj.tag not in tags, f"{obj.tag} read twice"
                tags[obj.tag] = obj.value
    return tags


def static_data(card: PreparedCard, gpo_dgi: int, *, with_aip: bool = True) -> bytes:
    """Book 3 §10.3, computed here independently of prepare.py."""
    records = records_of(card)
    gpo = card.dgi(gpo_dgi).data
    out = b""
    for sfi, first, _, count in afl_entries(gpo[2:]):
        for number in range(first, first + count):
            template = records[sfi, number]
            out += decode_one(template, tag="70").value if sfi <= 10 else template
    return out + (gpo[:2] if with_aip else b"")


def decipher(hsm: SoftHSM, card: PreparedCard, number: int) -> bytes:
    dgi = card.dgi(number)
    assert dgi.encrypted
    return hsm.decipher_perso_dgi(card.perso_kek_label, card.perso_suite, dgi.data)


def objects(data: bytes) -> dict[str, bytes]:
    return {obj.tag: obj.value for obj in decode(data)}


# --- records and AFLs --------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROFILES)
def test_records_are_70_templates_that_decode(prepared: dict[str, PreparedCard], name: str) -> None:
    records = records_of(prepared[name])
    assert records
    for (sfi, number), template in records.items():
        obj = decode_one(template, tag="70")
        assert obj.children, f"record {sfi}/{number} is empty"
        assert len(template) <= 254
        assert "9F79" not in {child.tag for child in obj.children}


@pytest.mark.parametrize("name", PROFILES)
def test_afls_name_exactly_the_records_present(prepared: dict[str, PreparedCard], name: str) -> None:
    card = prepared[name]
    records = set(records_of(card))
    named = set()
    for gpo_dgi in (0x9104, 0x9105):
        gpo = card.dgi(gpo_dgi).data
        assert len(gpo) >= 6 and (len(gpo) - 2) % 4 == 0
        for sfi, first, last, count in afl_entries(gpo[2:]):
            assert 1 <= first <= last and count <= last - first + 1
            named |= {(sfi, n) for n in range(first, last + 1)}
    assert named == records


@pytest.mark.parametrize("name", PROFILES)
def test_last_contactless_record_holds_9f74_and_9f69_not_5f24(
    prepared: dict[str, PreparedCard], name: str
) -> None:
    card = prepared[name]
    sfi, _, last, _ = afl_entries(card.dgi(0x9105).data[2:])[-1]
    tags = {obj.tag: obj.value for obj in decode_one(records_of(card)[sfi, last]).children or ()}
    assert tags["9F74"] == b"ECC001"
    assert tags["9F69"][0] == 0x01 and len(tags["9F69"]) == 8  # fDDA version 01
    assert tags["9F69"][-1] == (0x01 if name.startswith("citizen-card") else 0x00)  # DF61
    assert "5F24" not in tags
    assert "5F24" in read_tags(card, 0x9105)  # read, in an earlier record


@pytest.mark.parametrize("name", PROFILES)
def test_card_data_in_the_records(prepared: dict[str, PreparedCard], name: str) -> None:
    card = prepared[name]
    tags = read_tags(card, 0x9104)
    assert tags["5A"].hex().upper().rstrip("F") == card.pan
    assert tags["5F34"] == h(card.psn)
    assert tags["5F24"] == h("350331") and tags["5F25"] == h("250315")
    assert card.expiry == dt.date(2035, 3, 31) and card.effective == TODAY
    assert tags["57"].hex().upper().startswith(f"{card.pan}D3503220")
    assert tags["9F08"] == h("0030") and tags["5F28"] == h("0156")
    assert tags["8C"] == h("9F02069F03069F1A0295055F2A029A039C019F37049F21039F4E14")
    parse_dol(tags["8D"])


# --- offline data authentication -------------------------------------------------------------


@pytest.mark.parametrize("name", PROFILES)
@pytest.mark.parametrize("gpo_dgi", [0x9104, 0x9105], ids=["contact", "contactless"])
def test_icc_certificate_recovers_over_exactly_the_signed_records(
    prepared: dict[str, PreparedCard], hsm: SoftHSM, name: str, gpo_dgi: int
) -> None:
    card = prepared[name]
    tags = read_tags(card, gpo_dgi)
    assert tags["9F4A"] == h("82")
    capk = hsm.get_capk(UNIONPAY_RID, tags["8F"][0])
    assert capk == card.capks[card.suites[0].name]
    issuer = oda.recover_issuer_public_key(
        capk, tags["90"], tags.get("92", b""), tags.get("9F32", b""), pan=tags["5A"], today=TODAY
    )
    assert issuer.ok, issuer.reasons
    signed = static_data(card, gpo_dgi)
    icc = oda.recover_icc_public_key(
        issuer.public_key,
        tags["9F46"],
        tags.get("9F48", b""),
        tags.get("9F47", b""),
        signed,
        pan=tags["5A"],
        today=TODAY,
    )
    assert icc.ok, icc.reasons
    assert icc.public_key == card.icc_public_keys[card.suites[0].name]
    # the AIP is part of the signed data (9F4A = 82), and no other record is
    assert not oda.recover_icc_public_key(
        issuer.public_key,
        tags["9F46"],
        tags.get("9F48", b""),
        tags.get("9F47", b""),
        static_data(card, gpo_dgi, with_aip=False),
    ).valid
    records = records_of(card)
    extra = decode_one(records[1, 1]).value
    assert not oda.recover_icc_public_key(
        issuer.public_key, tags["9F46"], tags.get("9F48", b""), tags.get("9F47", b""), extra + signed
    ).valid
    if "93" in tags:
        assert oda.verify_sda(issuer.public_key, tags["93"], signed).valid


def test_sda_only_where_the_profile_asks(prepared: dict[str, PreparedCard]) -> None:
    assert "93" in read_tags(prepared["pboc-debit-intl"], 0x9104)
    assert "93" not in read_tags(prepared["pboc-debit-gm"], 0x9104)


@pytest.mark.parametrize("name", PROFILES)
def test_icc_private_key_dgis_hold_the_certified_key(
    prepared: dict[str, PreparedCard], hsm: SoftHSM, name: str
) -> None:
    card = prepared[name]
    public = card.icc_public_keys[card.suites[0].name]
    if card.suites[0] is INTL:
        qinv, dq, dp, q, p = (int.from_bytes(decipher(hsm, card, n), "big") for n in range(0x8201, 0x8206))
        key = rsa.RsaPrivateKey.from_numbers(p=p, q=q, e=3)
        assert (key.exponent_p, key.exponent_q, key.coefficient) == (dp, dq, qinv)
        assert key.modulus_bytes == public.key
        assert len(decipher(hsm, card, 0x8201)) == len(public.key) // 2
    else:
        assert sm2.public_key(decipher(hsm, card, 0x8040)) == public.key


# --- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROFILES)
def test_kcvs_match_the_keys_derived_in_the_hsm(
    prepared: dict[str, PreparedCard], hsm: SoftHSM, name: str
) -> None:
    card = prepared[name]
    suite = card.suites[0]
    tag = suite.name.lower()
    keys = hsm.export_card_keys_for_personalisation(
        {"AC": f"imk-ac-{tag}", "MAC": f"imk-mac-{tag}", "ENC": f"imk-enc-{tag}"},
        tag_5a=card.pan,
        tag_5f34=card.psn,
        suite=suite,
    )
    kcv_dgi, key_dgi = (0x9000, 0x8000) if suite is INTL else (0x9030, 0x8030)
    expected = b"".join(key_check_value(keys[kind], suite=suite) for kind in ("AC", "MAC", "ENC"))
    assert card.dgi(kcv_dgi).data == expected
    assert decipher(hsm, card, key_dgi) == keys["AC"] + keys["MAC"] + keys["ENC"]
    assert dict(card.kcvs[suite.name]) == keys.kcvs()
    other = 0x8030 if suite is INTL else 0x8000
    with pytest.raises(KeyError):
        card.dgi(other)


@pytest.mark.parametrize("name", PROFILES)
def test_pin_dgis(prepared: dict[str, PreparedCard], hsm: SoftHSM, name: str) -> None:
    card = prepared[name]
    assert card.dgi(0x9010).data == h("0303")
    assert decipher(hsm, card, 0x8010) == h("26123456FFFFFFFF")


def test_pin_block_format_2() -> None:
    assert pin_block_format_2("1234").hex().upper() == "241234FFFFFFFFFF"
    assert pin_block_format_2("123456789012").hex().upper() == "2C123456789012FF"
    with pytest.raises(PrepareError, match="PIN must be 4 to 12 digits, got 3 characters"):
        pin_block_format_2("123")


@pytest.mark.parametrize("name", PROFILES)
def test_secret_dgis_are_enciphered_and_ordered(prepared: dict[str, PreparedCard], name: str) -> None:
    card = prepared[name]
    numbers = [d.number for d in card.dgis]
    assert {d.number for d in card.dgis if d.encrypted} == ENCIPHERED_DGIS & set(numbers)
    records = [n for n in numbers if n < 0x0D00]
    assert numbers[: len(records)] == sorted(records)
    tail = [n for n in numbers if n >= 0x0D00]
    kcv, keys = (0x9000, 0x8000) if card.suites[0] is INTL else (0x9030, 0x8030)
    assert tail.index(kcv) + 1 == tail.index(keys)  # KCVs just before the keys they check
    assert tail[:6] == [0x9102, 0x9103, 0x9104, 0x9105, 0x0D01, 0x0E01]
    assert numbers[-1] == (
        0x8020 if name.startswith("citizen-card") else 0x8205 if card.suites[0] is INTL else 0x8040
    )
    for d in card.dgis:
        if d.encrypted:
            assert len(d.data) % card.perso_suite.block_bytes == 0


# --- card-internal objects, FCI, Part 14 ----------------------------------------------------------


@pytest.mark.parametrize("name", PROFILES)
def test_risk_management_and_initial_values(prepared: dict[str, PreparedCard], name: str) -> None:
    card = prepared[name]
    risk = objects(card.dgi(0x0D01).data)
    assert risk["9F77"] == h("000000100000")  # 1000 yuan in fen, n12
    assert risk["9F78"] == h("000000100000" if name != "pboc-ec-only-gm" else "000000050000")
    assert risk["9F6D"] == h("000000000000")
    assert (risk["9F58"], risk["9F59"]) == (b"\x03", b"\x05")
    assert risk["9F51"] == h("0156") and risk["9F57"] == h("0156")
    assert risk["9F4F"] == h("9A039F21039F02069F03069F1A025F2A029F4E149C019F3602")
    assert risk["DF4F"] == h("9A039F21039F1A029F4E149F3602")
    assert ("DF62" in risk) == (name.startswith("citizen-card"))
    initial = objects(card.dgi(0x0E01).data)
    assert (
        initial["9F79"] == h("000000000000") and initial["9F36"] == h("0000") and initial["9F17"] == b"\x03"
    )
    assert card.ec_balance_fen == 0


@pytest.mark.parametrize("name", PROFILES)
def test_fci_templates(prepared: dict[str, PreparedCard], name: str) -> None:
    card = prepared[name]
    profile = load_profile(name)
    for number, pdol in ((0x9102, profile.dols.pdol_contact), (0x9103, profile.dols.pdol_contactless)):
        fci = {obj.tag: obj for obj in decode(card.dgi(number).data)}
        assert fci["50"].value == profile.application.label.encode()
        assert fci["87"].value == b"\x01"
        assert fci["9F38"].value == pdol
        discretionary = {obj.tag: obj.value for obj in fci["BF0C"].children or ()}
        assert discretionary["9F4D"] == h("0B0A") and discretionary["DF4D"] == h("0C0A")
        assert ("DF61" in discretionary) == (number == 0x9103 and name.startswith("citizen-card"))
    assert parse_dol(profile.dols.pdol_contactless)[0][0] == "9F66"


def test_part14_dgis(prepared: dict[str, PreparedCard], hsm: SoftHSM) -> None:
    card = prepared["citizen-card-gm"]
    assert card.dgi(0xA001).data == h(
        "15010000400400"  # variable-record, 64-byte records, 1024 bytes
        "1E020000400A40"  # cyclic, 10 records of 64 bytes
        "16010000400200"  # spare files for sector applications
        "17010000400200"
        "18010000400200"
    )
    keys = decipher(hsm, card, 0x8020)
    assert len(keys) == 5 * 16
    kcvs = b"".join(key_check_value(keys[i : i + 16], suite=GM) for i in range(0, len(keys), 16))
    assert card.dgi(0x9020).data == kcvs
    derived = hsm.export_card_keys_for_personalisation(
        {"ENC": "imk-capp-gm-15"}, tag_5a=card.pan, tag_5f34=card.psn, suite=GM
    )
    assert keys[:16] == derived["ENC"]
    assert card.kcvs["part14"]["15"] == kcvs[:3].hex().upper()
    assert set(objects(card.dgi(0x0E01).data)) >= {"DF63"}
    assert "DF60" in [t for t, _ in parse_dol(load_profile("citizen-card-gm").dols.pdol_contactless)]


# --- PAN, PSN, Luhn --------------------------------------------------------------------------


def test_luhn() -> None:
    assert luhn_check_digit("7992739871") == "3"
    assert luhn_valid("4111111111111111") and luhn_valid("6011111111111117")
    assert not luhn_valid("4111111111111112")
    assert luhn_check_digit("623548000000000") == "8"  # 6·2→3, 2, 3·2=6, 5, 4·2=8, 8: 32


@pytest.mark.parametrize("name", PROFILES)
def test_generated_pan(prepared: dict[str, PreparedCard], name: str) -> None:
    pan = prepared[name].pan
    assert len(pan) == 16 and pan.startswith("623548") and luhn_valid(pan)
    assert prepared[name].pan_masked == f"623548******{pan[-4:]}"


def test_seeded_pan_is_reproducible_and_an_explicit_pan_is_checked(hsm: SoftHSM) -> None:
    profile = load_profile("pboc-ec-only-gm")
    first = prepare_card(profile, hsm, seed=99, today=TODAY)
    assert prepare_card(profile, hsm, seed=99, today=TODAY).pan == first.pan
    body = "623548123456789"
    good = body + luhn_check_digit(body)
    card = prepare_card(profile, hsm, pan=good, psn="02", pin="9876", today=TODAY)
    assert (card.pan, card.psn) == (good, "02")
    assert decipher(hsm, card, 0x8010) == h("249876FFFFFFFFFF")
    wrong = body + str((int(good[-1]) + 1) % 10)
    with pytest.raises(PrepareError) as error:
        prepare_card(profile, hsm, pan=wrong, today=TODAY)
    assert (
        str(error.value)
        == f"PAN 623548******{wrong[-4:]}: Luhn check digit should be {good[-1]}, got {wrong[-1]}"
    )
    with pytest.raises(PrepareError, match="does not start with the profile's BIN 623548"):
        prepare_card(profile, hsm, pan="4111111111111111", today=TODAY)
    with pytest.raises(PrepareError, match="PAN must be 16 digits for profile pboc-ec-only-gm, got 15"):
        prepare_card(profile, hsm, pan=body, today=TODAY)
    with pytest.raises(PrepareError, match=r"PSN \(5F34\) must be 2 digits, got '1'"):
        prepare_card(profile, hsm, psn="1", today=TODAY)


# --- two suites, HSM policy, limits of the record size ---------------------------------------


def test_dual_suite_card_carries_both_key_sets_and_certificates(hsm: SoftHSM) -> None:
    card = prepare_card(parse_profile(dual_suite_profile(), source="dual.toml"), hsm, seed=3, today=TODAY)
    numbers = {d.number for d in card.dgis}
    assert {0x9104, 0x9105, 0x9106, 0x9107, 0x8000, 0x8030, 0x9000, 0x9030, 0x8040} <= numbers
    assert set(range(0x8201, 0x8206)) <= numbers
    for gpo_dgi, suite in ((0x9104, INTL), (0x9106, GM)):  # by suite, not by the order of `suites`
        tags = read_tags(card, gpo_dgi)
        capk = card.capks[suite.name]
        assert capk.suite is suite
        issuer = oda.recover_issuer_public_key(capk, tags["90"], tags.get("92", b""), tags.get("9F32", b""))
        assert issuer.valid, issuer.reasons
        icc = oda.recover_icc_public_key(
            issuer.public_key,
            tags["9F46"],
            tags.get("9F48", b""),
            tags.get("9F47", b""),
            static_data(card, gpo_dgi),
        )
        assert icc.valid, icc.reasons
    assert card.perso_suite is GM


def test_missing_keys_are_not_created_for_a_real_issuer() -> None:
    text = (
        (profiles_dir() / "pboc-debit-gm.toml")
        .read_text()
        .replace("create_missing = true", "create_missing = false")
    )
    profile, hsm = parse_profile(text), SoftHSM.ephemeral()
    with pytest.raises(PrepareError) as error:
        prepare_card(profile, hsm, today=TODAY)
    assert str(error.value) == (
        "the HSM has no personalisation transport key 'perso-kek'; import it, or set issuer.create_missing"
    )
    hsm.generate_key("perso-kek", "PERSO-KEK", GM)
    with pytest.raises(PrepareError) as error:
        prepare_card(profile, hsm, today=TODAY)
    assert str(error.value) == (
        "the HSM has no key 'imk-ac-gm' (IMK-AC, GM); import it, or set issuer.create_missing for a test issuer"
    )
    assert [info.label for info in hsm.list_keys()] == ["perso-kek"]  # nothing was created


def test_imks_imported_by_label_are_used(hsm: SoftHSM) -> None:
    """A known IMK under the profile's label gives the card key option A derives from it."""
    fresh = SoftHSM.ephemeral()
    imk = h("0123456789ABCDEFFEDCBA9876543210")
    fresh.import_key("imk-ac-intl", "IMK-AC", INTL, imk)
    card = prepare_card(load_profile("pboc-debit-intl"), fresh, pan="6235480000000008", psn="01", today=TODAY)
    card_key = derive_card_key(imk, tag_5a="6235480000000008", tag_5f34="01", suite=INTL)
    assert card.dgi(0x9000).data[:3] == key_check_value(card_key, suite=INTL)


def test_a_record_too_long_is_refused() -> None:
    text = (profiles_dir() / "pboc-debit-intl.toml").read_text()
    assert "ca_rsa_bits = 1984" in text  # a 248-byte issuer certificate
    text = text.replace('tags = ["90"]', 'tags = ["90", "8F"]')
    text = text.replace('tags = ["8F", "9F32", "92"]', 'tags = ["9F32", "92"]')
    with pytest.raises(PrepareError) as error:
        prepare_card(parse_profile(text), SoftHSM.ephemeral(), today=TODAY)
    assert str(error.value) == "record SFI 3 record 1 is 257 bytes, at most 254: move a tag to another record"


def test_prepared_card_shows_no_key() -> None:
    card_text = repr(prepare_card(load_profile("pboc-ec-only-gm"), SoftHSM.ephemeral(), seed=1, today=TODAY))
    assert card_text.startswith("PreparedCard(pboc-ec-only-gm, 623548******") and "DGIs" in card_text
