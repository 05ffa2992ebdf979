"""Part 14 extended-application files: opening, reading, and a trip record that lands with its fare."""

from __future__ import annotations

from citycard.card.pboc import PbocApplication
from citycard.crypto.blockcipher import des_cbc_encrypt, sm4_cbc_encrypt, tdes_ecb_encrypt, xor
from citycard.crypto.mac import pad_method_2

h = bytes.fromhex
OK = 0x9000
RECORD_KEY = h("606162636465666768696A6B6C6D6E6F")
TRIP_ID = h("0570")
TRIP_EMPTY = TRIP_ID + bytes(62)
TRIP_ENTERED = TRIP_ID + h("01") + b"LINE2/STATION07" + bytes(46)


def operator_mac(suite, key: bytes, header: bytes, data: bytes, atc: bytes) -> bytes:
    """The PSAM's side: CBC-MAC with IV zeros ‖ ATC (3DES retail MAC or SM4), leftmost 4 bytes."""
    padded = pad_method_2(header + data, suite.block_bytes)
    iv = bytes(suite.block_bytes - 2) + atc
    if suite.block_bytes == 16:
        return sm4_cbc_encrypt(key, padded, iv)[-16:][:4]
    chain = des_cbc_encrypt(key[:8], padded[:-8], iv)[-8:] if len(padded) > 8 else iv
    return tdes_ecb_encrypt(key, xor(chain, padded[-8:]))[:4]


def append(card, kit, record: bytes, *, key_index: int = 0, sfi: int = 0x15) -> bytes:
    atc = card.app.txn.atc
    data = card.suite.ecb_encrypt(kit.CAPP_KEYS[key_index], RECORD_KEY) + record
    header = bytes([0x04, 0xE2, 0x00, sfi << 3, len(data) + 4])
    return header + data + operator_mac(card.suite, kit.CAPP_KEYS[key_index], header, data, atc)


def update(card, record: bytes, *, key: bytes = RECORD_KEY, sfi: int = 0x15, atc: bytes = b"") -> bytes:
    atc = atc or card.app.txn.atc
    header = bytes([0x84, 0xDE, 0x00, sfi << 3, len(record) + 4])
    return header + record + operator_mac(card.suite, key, header, record, atc)


def opened(card, kit):
    card.gpo_qpboc(amount=0, ttq="28000000")
    assert card.send(append(card, kit, TRIP_EMPTY))[1] == OK
    return card


def test_open_and_read_a_record(card, kit):
    opened(card, kit)
    assert card.send("80B400A8020570") == (TRIP_EMPTY, OK)
    assert card.send(append(card, kit, TRIP_EMPTY))[1] == 0x6A80  # already opened
    assert card.send("80B400A8020571")[1] == 0x6A83
    assert card.send("80B400B0020570")[1] == 0x6A82  # SFI 16 not declared
    assert card.send("80B400F0020100")[1] == 0x6981  # the cyclic file is read with READ RECORD
    assert card.send("80B400A8010500")[1] == 0x6700
    assert card.send("80B401A8020570")[1] == 0x6A86


def test_append_record_checks(card, kit):
    card.select("contactless")
    assert card.send("04E200A816" + "00" * 22)[1] == 0x6985  # no GPO yet: no ATC for the MAC
    card.gpo_qpboc(amount=0, ttq="28000000")
    command = bytearray(append(card, kit, TRIP_EMPTY))
    command[-2] ^= 0xFF
    assert card.send(bytes(command))[1] == 0x6988
    plain = bytes([0x00]) + append(card, kit, TRIP_EMPTY)[1:]
    assert card.send(plain)[1] == 0x6982
    assert card.send("80B400A8020570")[1] == 0x6A83  # nothing opened


def test_trip_record_commits_with_the_tc(card, kit, sealer):
    opened(card, kit)
    data, sw = card.gpo_qpboc(amount=200, ttq="28000000", df60=1)
    assert sw == OK and data.find(h("9F270140")) > 0
    assert card.app.counters.ec_balance_fen == 5000  # pending: nothing debited yet
    seen = []
    card.ctx.on_save = lambda: seen.append(card.app.to_image(sealer))
    assert card.send(update(card, TRIP_ENTERED)) == (b"", OK)
    saved = seen[-1]  # one save holds the fare, the log record and the trip record
    assert saved["state"]["ec_balance_fen"] == 4800
    assert saved["capp"]["files"][0]["records"] == [TRIP_ENTERED.hex().upper()]
    entries = saved["logs"]["transaction"]["entries"]  # the opening tap logged ATC 6
    assert len(entries) == 2 and entries[0].endswith("0007") and "000000000200" in entries[0]
    assert card.send("80B400A8020570")[0] == TRIP_ENTERED
    assert card.send("80CA9F7900")[0] == h("9F7906000000004800")


def test_aborted_transaction_discards_both(card, kit):
    opened(card, kit)
    card.gpo_qpboc(amount=200, ttq="28000000", df60=1)
    atc = card.app.txn.atc
    card.app.deselect()  # the card left the field, or the terminal selected something else
    card.select("contactless")
    assert card.send(update(card, TRIP_ENTERED, atc=atc))[1] == 0x6985
    assert card.app.counters.ec_balance_fen == 5000
    assert card.send("80B400A8020570")[0] == TRIP_EMPTY
    assert card.send("00B2025C00")[1] == 0x6A83  # only the opening tap's log record


def test_wrong_mac_commits_nothing(card, kit):
    opened(card, kit)
    card.gpo_qpboc(amount=200, ttq="28000000", df60=1)
    assert card.send(update(card, TRIP_ENTERED, key=bytes(16)))[1] == 0x6988
    assert card.app.counters.ec_balance_fen == 5000
    assert card.send("80B400A8020570")[0] == TRIP_EMPTY


def test_cache_update_needs_an_offline_approval_with_df60(card, kit):
    opened(card, kit)
    card.gpo_qpboc(amount=200, ttq="28000000", df60=0)  # approved, but not a CAPP transaction
    assert card.send(update(card, TRIP_ENTERED))[1] == 0x6985
    card.gpo_qpboc(amount=30_000, ttq="26000000", df60=1)  # goes online: no offline approval
    assert card.send(update(card, TRIP_ENTERED))[1] == 0x6985
    assert card.send("80B400A8020570")[0] == TRIP_EMPTY


def test_cyclic_history_file(card, kit):
    card.gpo_qpboc(amount=100, ttq="28000000", df60=1)
    entry = h("0001") + b"TRIP" + bytes(26)
    assert card.send(bytes([0x80, 0xDE, 0x00, 0xF0, len(entry)]) + entry)[1] == OK
    assert card.send("00B201F400") == (entry, OK)
    assert card.send("00B202F400")[1] == 0x6A83
    assert card.app.counters.ec_balance_fen == 4900


def test_part14_state_survives_the_image(card, kit, sealer):
    opened(card, kit)
    card.gpo_qpboc(amount=200, ttq="28000000", df60=1)
    card.send(update(card, TRIP_ENTERED))
    image = card.app.to_image(sealer)
    assert RECORD_KEY.hex().upper() not in str(image)
    card.app = PbocApplication.from_image(image, sealer)
    card.gpo_qpboc(amount=100, ttq="28000000", df60=1)
    assert card.send(update(card, TRIP_EMPTY)) == (b"", OK)  # the record key came back sealed
    assert card.app.counters.ec_balance_fen == 4700


def test_issuer_update_under_the_opening_key_outside_a_purchase(card, kit):
    """The platform's unload/reload (docs/applications.md): 84 DE with the opening key's MAC after
    any GPO rewrites an opened record, no purchase; a record key's MAC there is still 6985."""
    opened(card, kit)
    card.gpo_contact(amount=0)
    invalid = TRIP_ID + h("00") + bytes(61)
    assert card.send(update(card, invalid, key=RECORD_KEY))[1] == 0x6985  # a sector key: a purchase only
    assert card.send(update(card, invalid, key=kit.CAPP_KEYS[1]))[1] == 0x6985  # another file's key
    assert card.send(update(card, h("0571") + bytes(62), key=kit.CAPP_KEYS[0]))[1] == 0x6A83
    assert card.send("80B400A8020570")[0] == TRIP_EMPTY
    balance = card.app.counters.ec_balance_fen
    assert card.send(update(card, invalid, key=kit.CAPP_KEYS[0])) == (b"", OK)
    assert card.send("80B400A8020570")[0] == invalid
    assert card.app.counters.ec_balance_fen == balance  # nothing debited, nothing pending
