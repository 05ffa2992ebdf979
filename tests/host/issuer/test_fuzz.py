"""Malformed and mutated requests never crash process_batch: every request gets an answer with F39,
in order, and the ledger stays healthy (hypothesis)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citycard.iso8583.message import Iso8583Error, encode

from .conftest import healthy

FIELDS = ["2", "3", "4", "11", "14", "22", "23", "25", "41", "42", "49", "52", "55", "60", "61"]
VALUES = st.one_of(
    st.text(alphabet="0123456789", min_size=0, max_size=20),
    st.binary(min_size=0, max_size=40),
    st.sampled_from(["000000", "600000", "030000", "0000000000000001", "156", "840", "2201"]),
)
MUTATION = st.tuples(st.sampled_from(["drop", "set"]), st.sampled_from(FIELDS), VALUES)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(st.lists(MUTATION, max_size=4), min_size=1, max_size=4), data=st.data())
def test_mutated_requests_always_get_an_answer(issuer, enrol, mutations, data):
    card = enrol(data.draw(st.sampled_from(["INTL", "GM"])))
    requests = []
    for changes in mutations:
        request = card.request(data.draw(st.sampled_from(["purchase", "ec_load", "authorisation"])), 100)
        for action, field, value in changes:
            if action == "drop":
                request.pop(field, None)
            else:
                request[field] = value
        requests.append(request)
    answers = issuer.process_batch(requests)
    assert len(answers) == len(requests)
    for request, answer in zip(requests, answers, strict=True):
        assert isinstance(answer.get("39"), str) and len(answer["39"]) == 2
        if answer["39"] == "00":
            assert answer.get("11") == request.get("11")
        encode(answer)  # a valid CUPS message, whatever the request held
    assert healthy(issuer)


TAGS = st.sampled_from(
    ["9F26", "9F27", "9F10", "82", "95", "9A", "DF31", "5F2A", "9F7C", "DF8101", "8A", "57"]
)


@settings(max_examples=300, deadline=None)
@given(
    objects=st.dictionaries(TAGS, st.binary(max_size=40), max_size=8),
    template=st.booleans(),
)
def test_the_fast_field55_reader_agrees_with_the_tlv_decoder(objects, template):
    from citycard.emv.tlv import TLV, decode_dict
    from citycard.emv.tlv import encode as tlv_encode
    from citycard.host.issuer.participants import primitive_tags

    items = [TLV(tag, value) for tag, value in objects.items()]
    if template:
        items.append(TLV("71", children=[TLV("9F18", b"\x00\x00\x00\x01"), TLV("86", b"\x84\x1e")]))
    data = tlv_encode(items)
    expected = {t: v for t, v in decode_dict(data).items() if isinstance(v, bytes)}
    assert primitive_tags(data) == expected


@settings(max_examples=500, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=60), st.sampled_from([bytes.fromhex("9F0283000000"), b"\x9f\x02\x84" + bytes(4)])
    )
)
def test_the_fast_field55_reader_refuses_what_the_decoder_refuses(data):
    from citycard.emv.tlv import TLVError, decode
    from citycard.host.issuer.participants import primitive_tags

    try:
        objects = decode(data, padding=False)
        general_ok = len({o.tag for o in objects}) == len(objects)
    except TLVError:
        general_ok = False
    try:
        primitive_tags(data)
        fast_ok = True
    except Iso8583Error:
        fast_ok = False
    if general_ok:
        assert fast_ok  # every valid F55 is read (the fast reader does not look inside templates)
