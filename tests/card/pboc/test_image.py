"""Persistence: the image round trip, sealed secrets, save-before-answer, the ATC that never repeats."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citycard.card.apdu import Command
from citycard.card.pboc import PbocApplication
from citycard.card.sw import CardError
from citycard.crypto.script import ec_load_command
from citycard.emv.dol import build_dol
from citycard.emv.tlv import decode_dict

h = bytes.fromhex
OK = 0x9000


def atc_of(answer: bytes) -> bytes:
    inner = decode_dict(answer)
    return inner["77"]["9F36"] if "77" in inner else inner["80"][1:3]


def test_image_round_trip_and_no_clear_secret(card, kit, sealer):
    image = card.app.to_image(sealer)
    text = json.dumps(image)
    secrets = [*kit.card_keys(card.suite), h(f"24{kit.PIN}".ljust(16, "F")), *kit.CAPP_KEYS]
    icc = kit.pki(card.suite.name).icc_key
    secrets.append(icc if isinstance(icc, bytes) else icc.prime_p.to_bytes(48, "big"))
    for secret in secrets:
        assert secret.hex().upper() not in text.upper()
    again = PbocApplication.from_image(json.loads(text), sealer)
    assert again.to_image(sealer) == image
    card.app = again
    assert card.send("80CA9F7900")[0] == h("9F7906000000005000")
    data, sw = card.gpo_qpboc(amount=100, ttq="28000000")  # keys and ICC key came back
    assert sw == OK and decode_dict(data)["77"]["9F27"] == h("40")


def test_atc_never_repeats_across_restarts_and_tears(card, kit, sealer):
    on_disk = []
    card.ctx.on_save = lambda: on_disk.append(card.app.to_image(sealer))
    seen = []
    for _ in range(3):
        card.gpo_contact(amount=100)  # contact GPO: ATC saved, nothing else yet
        card.app = PbocApplication.from_image(on_disk[-1], sealer)  # killed between GPO and GAC
        card.ctx.on_save = lambda: on_disk.append(card.app.to_image(sealer))
        answer, _ = card.gpo_qpboc(amount=100, ttq="28000000")
        seen.append(atc_of(answer))
        card.app = PbocApplication.from_image(on_disk[-1], sealer)
        card.ctx.on_save = lambda: on_disk.append(card.app.to_image(sealer))
        card.gpo_contact()
        seen.append(atc_of(card.gac(0x80, card.cdol1())[0]))
    assert len(set(seen)) == len(seen) == 6
    assert card.app.counters.ec_balance_fen == 5000 - 3 * 100  # only the qPBOC approvals debited


def test_every_state_change_is_saved_before_the_answer(card, kit, sealer):
    """After each command the live image equals the last saved one: nothing changed unsaved."""
    saved = [card.app.to_image(sealer)]
    card.ctx.on_save = lambda: saved.append(card.app.to_image(sealer))

    def step(apdu, *, changes: bool) -> tuple[bytes, int]:
        before = len(saved)
        data, sw = card.send(apdu)
        assert card.app.to_image(sealer) == saved[-1], apdu.hex() if isinstance(apdu, bytes) else apdu
        assert (len(saved) > before) == changes
        return data, sw

    card.select("contact")
    step("80CA9F7900", changes=False)
    step("00B2010C00", changes=False)
    step(h("80A800000C830A") + h("00000000000000015600") + b"\x00", changes=True)  # GPO (DF69 00)
    step("0020008008249999FFFFFFFFFF", changes=True)
    step("0020008008241234FFFFFFFFFF", changes=True)
    step("0084000000", changes=False)
    data, _ = step(bytes([0x80, 0xAE, 0x80, 0x00, len(card.cdol1())]) + card.cdol1() + b"\x00", changes=True)
    atc, arqc = data[3:5], data[5:13]
    top_up = ec_load_command(
        card.issuer_key(1, atc), new_balance_fen=9000, tag_9f36=atc, tag_9f26=arqc, suite=card.suite
    )
    step(top_up, changes=True)
    step(top_up[:-1] + bytes([top_up[-1] ^ 1]), changes=True)  # failed script: the flag is saved
    step(bytes([0x80, 0xAE, 0x40, 0x00, len(card.cdol2())]) + card.cdol2() + b"\x00", changes=True)
    card.select("contactless")
    step(_qpboc_gpo(card), changes=True)


def _qpboc_gpo(card) -> bytes:
    body = build_dol(
        card.app.data.fci_tag("contactless", "9F38"), card.qpboc_values(amount=100, ttq="28000000")
    )
    return h("80A80000") + bytes([len(body) + 2, 0x83, len(body)]) + body + b"\x00"


KNOWN_INS = [0xA8, 0xB2, 0xCA, 0x20, 0x84, 0x88, 0xAE, 0x82, 0xDA, 0x1E, 0x18, 0x16, 0x24, 0xE2, 0xB4, 0xDE]
COMMAND_BYTES = st.one_of(
    st.binary(min_size=4, max_size=40),
    st.tuples(
        st.sampled_from([0x00, 0x04, 0x80, 0x84]),
        st.sampled_from(KNOWN_INS),
        st.integers(0, 255),
        st.integers(0, 255),
        st.binary(max_size=80),
    ).map(lambda c: bytes(c[:4]) + (bytes([len(c[4])]) + c[4] if c[4] else b"") + b"\x00"),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    apdus=st.lists(COMMAND_BYTES, min_size=1, max_size=6),
    interface=st.sampled_from(["contact", "contactless"]),
)
def test_random_commands_only_ever_give_status_words(card, apdus, interface):
    card.select(interface)
    card.gpo_contact(amount=100) if interface == "contact" else card.gpo_qpboc(amount=100)
    for apdu in apdus:
        try:
            command = Command.parse(apdu)
        except CardError:
            continue
        try:
            response = card.app.process(command, card.ctx)
        except CardError as exc:
            assert 0x6000 <= exc.sw <= 0x6FFF
        else:
            assert response.sw == OK
