"""A card with both suites, personalised from a profile, as a terminal sees it (docs/card.md §3).

The profile is the citizen card with a second suite: GM certificates in SFI 3, INTL certificates in
SFI 5, AFL entries selected by suite, and an EC balance to spend. Data preparation in a SoftHSM,
STORE DATA into a blank card through the card OS; then per DF69 a qPBOC purchase and a contact
transaction, each checked the way a terminal and the issuer would: READ RECORD of the AFL the GPO
returned, the certificate chain from the CAPK the records name (RSA E0 or SM2 E1), fDDA / DDA / CDA
with ``citycard.crypto.oda``, the AC with the HSM (``imk-ac-intl`` / ``imk-ac-gm``).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from citycard.card import Card, load_card, new_card
from citycard.card.pboc import PbocApplication
from citycard.card.perso import PreparedCard, load_profile, perso_script, prepare_card
from citycard.card.perso.prepare import Dgi
from citycard.card.perso.profile import profiles_dir
from citycard.card.sw import CardError
from citycard.crypto import oda
from citycard.crypto.capk import UNIONPAY_RID
from citycard.crypto.cryptogram import pboc_ac_data
from citycard.crypto.iad import parse_iad
from citycard.crypto.suite import GM, INTL, Suite
from citycard.emv import TLV, build_dol, decode, decode_one, encode, find
from citycard.emv.dol import split_dol_data
from citycard.hsm import SoftHSM

h = bytes.fromhex
AID = h("A000000333010101")
TODAY = {
    "9A": h("250315"),
    "9F1A": h("0156"),
    "5F2A": h("0156"),
    "9F03": bytes(6),
    "95": bytes(5),
    "9C": h("00"),
}
CAPK_INDEX = {"INTL": 0xE0, "GM": 0xE1}
GPO_DGI = {  # docs/card.md §3, a card with both suites
    ("contact", "INTL"): 0x9104,
    ("contactless", "INTL"): 0x9105,
    ("contact", "GM"): 0x9106,
    ("contactless", "GM"): 0x9107,
}
PDOL_CONTACT, PDOL_CONTACTLESS = (
    "9F7A019F02065F2A02DF6901",
    "9F66049F02069F03069F1A0295055F2A029A039C019F3704DF6001DF6901",
)


def dual_profile_text() -> str:
    """citizen-card-gm with INTL too (GM listed first: the DGIs must not depend on the order)."""
    text = (profiles_dir() / "citizen-card-gm.toml").read_text()
    edits = [
        ('name = "citizen-card-gm"', 'name = "citizen-card-dual"'),
        ('suites = ["GM"]', 'suites = ["GM", "INTL"]'),
        ("ec_initial_balance_fen = 0 ", "ec_initial_balance_fen = 50000 "),
        ('tags = ["8F", "90"]', 'tags = ["8F", "90"]\nsuite = "GM"'),
        ('tags = ["9F46", "9F49"]', 'tags = ["9F46", "9F49"]\nsuite = "GM"'),
    ]
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    entry = "  { sfi = 3, first = 1, last = 2 },\n"
    assert text.count(entry) == 2  # contact and contactless
    text = text.replace(
        entry,
        '  { sfi = 3, first = 1, last = 2, suites = ["GM"] },\n'
        '  { sfi = 5, first = 1, last = 3, suites = ["INTL"] },\n',
    )
    return (
        text
        + """
[[records]]                       # INTL: the issuer certificate of the 1984-bit CA fills a record
sfi = 5
record = 1
tags = ["90"]
suite = "INTL"

[[records]]
sfi = 5
record = 2
tags = ["8F", "9F32", "92"]
suite = "INTL"

[[records]]
sfi = 5
record = 3
tags = ["9F46", "9F47", "9F48", "9F49"]
suite = "INTL"
"""
    )


@dataclass(frozen=True)
class Issued:
    hsm: SoftHSM
    prepared: PreparedCard

    @property
    def pan(self) -> str:
        return self.prepared.pan


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    path = tmp_path_factory.mktemp("profile") / "citizen-card-dual.toml"
    path.write_text(dual_profile_text())
    hsm = SoftHSM.ephemeral()
    prepared = prepare_card(load_profile(path), hsm, seed=11)
    assert [s.name for s in prepared.suites] == ["GM", "INTL"]
    return Issued(hsm, prepared)


def personalise(issued: Issued, prepared: PreparedCard | None = None, image: Path | None = None) -> Card:
    """A blank card and the perso script through ``Card.process``; every block must answer 9000."""
    prepared = prepared or issued.prepared
    card = new_card(
        [PbocApplication(AID)], hsm=issued.hsm, image_path=image, perso_suite=prepared.perso_suite
    )
    card.power_on()
    for apdu in perso_script(prepared).apdus:
        assert card.process(apdu)[-2:] == h("9000"), apdu[:5].hex().upper()
    assert card.applications[0].personalised
    return card


def transmit(card: Card, apdu: bytes) -> bytes:
    response = card.process(apdu)
    assert response[-2:] == h("9000"), f"{apdu[:4].hex().upper()} answered {response[-2:].hex().upper()}"
    return response[:-2]


def select(card: Card, interface: str) -> bytes:
    card.power_on()
    card.interface = interface
    return transmit(card, h("00A4040008") + AID + b"\x00")


def gpo(card: Card, fci: bytes, values: dict[str, bytes]) -> tuple[bytes, bytes]:
    """(PDOL data, GPO answer) with the PDOL of the FCI (values it does not ask for are left out)."""
    pdol = find(decode(fci), "9F38")
    data = build_dol(pdol.value if pdol else b"", values)
    return data, transmit(card, h("80A80000") + bytes([len(data) + 2, 0x83, len(data)]) + data + b"\x00")


def read_afl(card: Card, afl: bytes) -> tuple[dict[str, bytes], bytes]:
    """READ RECORD every AFL record: (the tags read, the records signed for ODA)."""
    tags: dict[str, bytes] = {}
    signed = b""
    for i in range(0, len(afl), 4):
        sfi, first, last, oda_count = afl[i] >> 3, afl[i + 1], afl[i + 2], afl[i + 3]
        for number in range(first, last + 1):
            template = decode_one(transmit(card, bytes([0x00, 0xB2, number, sfi << 3 | 4, 0x00])), tag="70")
            for obj in template.children or ():
                assert obj.tag not in tags, f"{obj.tag} read twice"
                tags[obj.tag] = obj.value
            if number < first + oda_count:
                signed += template.value
    return tags, signed


def icc_public_key(
    issued: Issued, tags: dict[str, bytes], signed: bytes, aip: bytes, suite: Suite
) -> oda.PublicKey:
    """The terminal's ODA: CAPK named by 8F, issuer then ICC certificate (9F4A = 82: AIP signed)."""
    assert tags["8F"] == bytes([CAPK_INDEX[suite.name]])
    capk = issued.hsm.get_capk(UNIONPAY_RID, tags["8F"][0])
    assert capk.suite is suite and capk == issued.prepared.capks[suite.name]
    issuer = oda.recover_issuer_public_key(
        capk, tags["90"], tags.get("92", b""), tags.get("9F32", b""), pan=issued.pan
    )
    assert issuer.valid, issuer.reasons
    icc = oda.recover_icc_public_key(
        issuer.public_key,
        tags["9F46"],
        tags.get("9F48", b""),
        tags.get("9F47", b""),
        signed + aip,
        pan=issued.pan,
    )
    assert icc.valid, icc.reasons
    assert icc.public_key.suite is suite
    assert icc.public_key == issued.prepared.icc_public_keys[suite.name]
    return icc.public_key


def gpo_dgi_data(issued: Issued, interface: str, suite: Suite) -> bytes:
    """What the contract says the GPO answers: 9104/9105 for INTL, 9106/9107 for GM."""
    return issued.prepared.dgi(GPO_DGI[interface, suite.name]).data


def verify_ac(
    issued: Issued, suite: Suite, values: dict[str, bytes], *, aip: bytes, atc: bytes, iad: bytes, ac: bytes
) -> None:
    """The issuer's check: the AC verifies under this suite's IMK-AC in the HSM, not the other's."""
    parsed = parse_iad(iad)
    assert parsed.suite is suite
    data = pboc_ac_data(
        tag_9f02=values["9F02"],
        tag_9f03=values["9F03"],
        tag_9f1a=values["9F1A"],
        tag_95=values["95"],
        tag_5f2a=values["5F2A"],
        tag_9a=values["9A"],
        tag_9c=values["9C"],
        tag_9f37=values["9F37"],
        tag_82=aip,
        tag_9f36=atc,
        cvr=parsed.cvr_field,
    )
    for label, expected in (
        (f"imk-ac-{suite.name.lower()}", True),
        (f"imk-ac-{other(suite).name.lower()}", False),
    ):
        assert (
            issued.hsm.verify_arqc(
                label, tag_5a=issued.pan, tag_5f34="01", tag_9f36=atc, data=data, tag_9f26=ac
            )
            is expected
        ), label


def other(suite: Suite) -> Suite:
    return GM if suite is INTL else INTL


def qpboc_purchase(issued: Issued, card: Card, suite: Suite, df69: bytes | None, amount: int = 100) -> int:
    """A qPBOC offline purchase with fDDA 01, checked end to end; the balance after it."""
    fci = select(card, "contactless")
    values = {
        **TODAY,
        "9F66": h("28000080"),
        "9F02": h(f"{amount:012d}"),
        "9F37": h("5A6B7C8D"),
        "DF60": h("00"),
    }
    if df69 is not None:
        values["DF69"] = df69
    _, answer = gpo(card, fci, values)
    fields = {obj.tag: obj.value for obj in decode_one(answer, tag="77").children or ()}
    assert fields["9F27"] == h("40")  # TC: approved offline
    expected = gpo_dgi_data(issued, "contactless", suite)
    assert fields["82"] + fields["94"] == expected
    tags, signed = read_afl(card, fields["94"])
    assert ("9F32" in tags) == (suite is INTL)  # only this suite's certificates were read
    icc = icc_public_key(issued, tags, signed, fields["82"], suite)
    terminal = oda.fdda_terminal_dynamic_data(
        version=1,
        tag_9f37=values["9F37"],
        tag_9f02=values["9F02"],
        tag_5f2a=values["5F2A"],
        tag_9f69=tags["9F69"],
    )
    result = oda.verify_dynamic_signature(icc, fields["9F4B"], terminal, suite=suite)
    assert result.valid, result.reasons
    verify_ac(
        issued, suite, values, aip=fields["82"], atc=fields["9F36"], iad=fields["9F10"], ac=fields["9F26"]
    )
    assert issued.hsm.verify_iad_mac(
        f"imk-mac-{suite.name.lower()}",
        tag_5a=issued.pan,
        tag_5f34="01",
        tag_9f36=fields["9F36"],
        tag_9f10=fields["9F10"],
    )
    return int(fields["9F5D"].hex())


@pytest.mark.parametrize(("df69", "suite"), [(h("00"), INTL), (h("01"), GM)], ids=["DF69=00", "DF69=01"])
def test_qpboc_purchase_in_the_suite_df69_chooses(issued: Issued, df69: bytes, suite: Suite) -> None:
    card = personalise(issued)
    assert qpboc_purchase(issued, card, suite, df69) == 50000 - 100


@pytest.mark.parametrize(("df69", "suite"), [(h("00"), INTL), (h("01"), GM)], ids=["DF69=00", "DF69=01"])
def test_contact_transaction_in_the_suite_df69_chooses(issued: Issued, df69: bytes, suite: Suite) -> None:
    card = personalise(issued)
    fci = select(card, "contact")
    pdol_data, answer = gpo(card, fci, {**TODAY, "9F7A": h("00"), "9F02": h("000000001000"), "DF69": df69})
    gpo_data = decode_one(answer, tag="80").value
    assert gpo_data == gpo_dgi_data(issued, "contact", suite)
    aip, afl = gpo_data[:2], gpo_data[2:]
    tags, signed = read_afl(card, afl)
    assert ("9F32" in tags) == (suite is INTL)
    icc = icc_public_key(issued, tags, signed, aip, suite)

    # DDA: INTERNAL AUTHENTICATE with the DDOL (9F49) data
    assert tags["9F49"] == h("9F3704")
    un = h("CAFEBABE")
    signature = decode_one(transmit(card, h("0088000004") + un + b"\x00"), tag="80").value
    result = oda.verify_dynamic_signature(icc, signature, un, suite=suite)
    assert result.valid, result.reasons

    # first GENERATE AC: ARQC with CDA, the AC checked by the issuer's HSM
    values = {
        **TODAY,
        "9F02": h("000000001000"),
        "9F37": h("0BADCAFE"),
        "9F21": h("063000"),
        "9F4E": b"CITY BUS",
    }
    cdol1 = build_dol(tags["8C"], values)
    response = transmit(card, bytes([0x80, 0xAE, 0x90, 0x00, len(cdol1)]) + cdol1 + b"\x00")
    inner = {obj.tag: obj.value for obj in decode_one(response, tag="77").children or ()}
    assert inner["9F27"] == h("80")
    cda = oda.verify_cda(
        icc,
        inner["9F4B"],
        tag_9f37=values["9F37"],
        pdol_data=pdol_data,
        cdol1_data=cdol1,
        response_tlvs=response,
        suite=suite,
    )
    assert cda.valid, cda.reasons
    verify_ac(
        issued,
        suite,
        split_dol_data(tags["8C"], cdol1),
        aip=aip,
        atc=inner["9F36"],
        iad=inner["9F10"],
        ac=cda.fields["ac"],
    )


def with_pdols_without_df69(prepared: PreparedCard) -> PreparedCard:
    """The same card with FCIs whose PDOLs do not ask for DF69 (no profile may do this)."""
    dgis = []
    for dgi in prepared.dgis:
        if dgi.number in (0x9102, 0x9103):
            objects = [
                TLV("9F38", obj.value.replace(h("DF6901"), b"")) if obj.tag == "9F38" else obj
                for obj in decode(dgi.data)
            ]
            assert h("DF6901") not in encode(objects)
            dgi = Dgi(dgi.number, encode(objects), what=dgi.what)
        dgis.append(dgi)
    return dataclasses.replace(prepared, dgis=tuple(dgis))


def test_without_df69_the_card_prefers_sm(issued: Issued) -> None:
    """DF69 absent from the PDOL data: GM, SM being preferred when the card holds both suites."""
    card = personalise(issued, with_pdols_without_df69(issued.prepared))
    assert qpboc_purchase(issued, card, GM, None) == 50000 - 100
    fci = select(card, "contact")
    assert find(decode(fci), "9F38").value == h(PDOL_CONTACT.replace("DF6901", ""))
    _, answer = gpo(card, fci, {**TODAY, "9F7A": h("00"), "9F02": h("000000001000")})
    assert decode_one(answer, tag="80").value == gpo_dgi_data(issued, "contact", GM)


def test_a_terminal_that_does_not_know_df69_gets_intl(issued: Issued) -> None:
    """A terminal fills an unknown PDOL tag with zeros (Book 3 §5.4): DF69 = 00, the INTL suite."""
    card = personalise(issued)
    fci = select(card, "contact")
    assert find(decode(fci), "9F38").value == h(PDOL_CONTACT)
    _, answer = gpo(card, fci, {**TODAY, "9F7A": h("00"), "9F02": h("000000001000")})  # no DF69 value
    assert decode_one(answer, tag="80").value == gpo_dgi_data(issued, "contact", INTL)
    assert find(decode(select(card, "contactless")), "9F38").value == h(PDOL_CONTACTLESS)


def test_the_gpo_dgis_follow_the_suite_not_the_profile_order(issued: Issued) -> None:
    prepared = issued.prepared
    numbers = [d.number for d in prepared.dgis]
    assert [n for n in numbers if 0x9104 <= n <= 0x9107] == [0x9104, 0x9105, 0x9106, 0x9107]
    sfis = {
        n: {prepared.dgi(n).data[i] >> 3 for i in range(2, len(prepared.dgi(n).data), 4)}
        for n in range(0x9104, 0x9108)
    }
    assert sfis == {0x9104: {1, 2, 4, 5}, 0x9105: {1, 2, 4, 5}, 0x9106: {1, 2, 3, 4}, 0x9107: {1, 2, 3, 4}}


def test_the_image_keeps_both_suites(issued: Issued, tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    personalise(issued, image=path)
    card = load_card(path, hsm=issued.hsm)
    balance = qpboc_purchase(issued, card, GM, h("01"))
    card = load_card(path, hsm=issued.hsm)
    assert qpboc_purchase(issued, card, INTL, h("00")) == balance - 100
    app = card.applications[0]
    assert isinstance(app, PbocApplication)
    assert set(app.data.gpo) == {"contact", "contactless", "contact/GM", "contactless/GM"}
    assert [s.name for s in app.secrets.suites()] == ["INTL", "GM"]
    assert app.secrets.rsa_key is not None and app.secrets.sm2_key is not None


def test_a_dual_suite_card_without_9107_is_refused_at_the_last_block(issued: Issued, kit) -> None:
    prepared = dataclasses.replace(
        issued.prepared, dgis=tuple(d for d in issued.prepared.dgis if d.number != 0x9107)
    )
    card = new_card([PbocApplication(AID)], hsm=issued.hsm, perso_suite=prepared.perso_suite)
    card.power_on()
    answers = [card.process(apdu)[-2:].hex().upper() for apdu in perso_script(prepared).apdus]
    assert answers == ["9000"] * (len(answers) - 1) + ["6985"]
    app = card.applications[0]
    assert not app.personalised
    with pytest.raises(CardError) as refused:
        app.finish_personalisation(kit.ScriptedContext())
    assert refused.value.sw == 0x6985
    assert refused.value.reason == (
        "personalisation incomplete: a card with both suites' keys needs the contactless GPO data of GM "
        "(9107) as well as that of INTL (9105)"
    )


def test_citycard_card_new_makes_a_dual_suite_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same profile through the CLI: the card it writes answers each suite's AFL."""
    monkeypatch.setenv("CITYCARD_DATA_DIR", str(tmp_path))  # the subprocess inherits it
    monkeypatch.delenv("CITYCARD_HSM_MASTER_KEY", raising=False)
    profile, image = tmp_path / "citizen-card-dual.toml", tmp_path / "card.json"
    profile.write_text(dual_profile_text())
    command = [sys.executable, "-m", "citycard.cli.main", "card", "new", "--profile", str(profile)]
    done = subprocess.run(
        [*command, "--out", str(image), "--json"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["suites"] == ["GM", "INTL"]
    assert summary["capks"] == {"GM": "A000000333/E1", "INTL": "A000000333/E0"}
    card = load_card(image, hsm=SoftHSM.open())
    app = card.applications[0]
    assert isinstance(app, PbocApplication)
    for df69, sfi in ((h("00"), 5), (h("01"), 3)):  # INTL certificates in SFI 5, GM's in SFI 3
        fci = select(card, "contact")
        _, answer = gpo(card, fci, {**TODAY, "9F7A": h("00"), "9F02": h("000000000100"), "DF69": df69})
        afl = decode_one(answer, tag="80").value[2:]
        assert {afl[i] >> 3 for i in range(0, len(afl), 4)} == {1, 2, 4, sfi}
