"""Replacement (issue 6 acceptance: "moves the EC balance exactly once even when the request is
repeated or the process dies midway"), personalisation a kernel can pay with, SQLite and PostgreSQL.

The crash test runs the replacement in a subprocess that SIGKILLs itself right after a step
(after the new card image is written; after the ledger move; after the commit), then repeats the
call: the ledger shows one move and ``check_invariants`` finds nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.platform import test_cards_support as support
from tests.platform.test_cards_support import ACTOR, card_in_state, fund_ec

from citycard.card import load_card
from citycard.db import read_transaction, write_transaction
from citycard.host.issuer import tables as issuer_tables
from citycard.hsm import SoftHSM
from citycard.kernel.context import Terminal, TerminalProfile
from citycard.kernel.outcome import Outcome
from citycard.kernel.params import AidTable, CapkTable
from citycard.kernel.qpboc import run_qpboc
from citycard.ledger import balance_fen, check_invariants, find_posting
from citycard.platform import cards, events
from citycard.platform.errors import Conflict
from citycard.reader import InProcessTransport

hsm = support.hsm  # the module-scoped HSM fixture
EC_FEN = 12_345
FARE_FEN = 200
REPO = Path(__file__).resolve().parents[2]


def tap(hsm: SoftHSM, image: Path, amount_fen: int):
    card = load_card(image, hsm=hsm)
    card.interface = "contactless"
    terminal = Terminal(profile=TerminalProfile(), aids=AidTable.load(), capks=CapkTable.load().with_hsm(hsm))
    with InProcessTransport(card) as transport:
        return run_qpboc(transport, terminal, amount_fen=amount_fen)


def ec_shadow(conn, row) -> int:
    c = issuer_tables.cards.c
    return conn.execute(select(c.ec_balance_fen).where(c.pan == row.pan, c.psn == row.psn)).scalar_one()


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_a_personalised_card_pays_with_the_kernel(engine, hsm, tmp_path, suite) -> None:
    with write_transaction(engine) as conn:
        card_id = card_in_state(conn, "active", hsm=hsm, image_dir=tmp_path, suite=suite)
        row = cards.record(conn, card_id)
    image = Path(row.image_path)
    assert image.parent == tmp_path and image.exists()
    result = tap(hsm, image, 1)  # a new card's chip starts with EC 0: the kernel goes online
    assert result.kind is Outcome.ONLINE_REQUEST, result.reasons
    assert result.batch_record is None or result.batch_record.pan == row.pan


@pytest.mark.parametrize("suite", ["GM", "INTL"])
def test_replace_moves_the_ec_balance_once_and_the_new_chip_pays(engine, hsm, tmp_path, suite) -> None:
    with write_transaction(engine) as conn:
        old_id = card_in_state(conn, "active", hsm=hsm, image_dir=tmp_path, suite=suite)
        old_ec = fund_ec(conn, old_id, EC_FEN)
        cards.report_loss(conn, old_id, formal=True, actor=ACTOR)
        seq = events.last_seq(conn)
        new = cards.replace(conn, old_id, hsm=hsm, image_dir=tmp_path, actor=ACTOR)
    with read_transaction(engine) as conn:
        old, fresh = cards.record(conn, old_id), cards.record(conn, new["id"])
        assert (old.state, old.replaced_by_id) == ("replaced", fresh.id)
        assert (fresh.state, fresh.replaces_id, fresh.cardholder_id) == ("active", old.id, old.cardholder_id)
        assert fresh.pan != old.pan and fresh.deposit_fen == support.rules_deposit() and old.deposit_fen == 0
        new_ec = f"citybank:ec:{fresh.pan}:{fresh.psn:02d}"
        assert balance_fen(conn, old_ec) == 0 and balance_fen(conn, new_ec) == EC_FEN
        assert ec_shadow(conn, old) == 0 and ec_shadow(conn, fresh) == EC_FEN
        posting = find_posting(conn, f"replace:{old_id}")
        assert posting is not None and {
            (line.account, line.debit_fen, line.credit_fen) for line in posting.lines
        } == {
            (old_ec, EC_FEN, 0),
            (new_ec, 0, EC_FEN),
        }
        assert check_invariants(conn) == []
        kinds = [e.kind for e in events.read(conn, after=seq)]
        assert kinds[-1] == "card.replaced" and "card.issued" in kinds and "card.activated" in kinds
        replaced = events.read(conn, after=seq, kinds={"card.replaced"})[0]
        assert replaced.payload["new_card_id"] == fresh.id and replaced.payload["ec_moved_fen"] == EC_FEN
        c = issuer_tables.cards.c
        status = conn.execute(select(c.status).where(c.pan == old.pan)).scalar_one()
        assert status == "lost"  # the lost card stays lost at the issuer
    with pytest.raises(Conflict), write_transaction(engine) as conn:
        cards.replace(conn, old_id, hsm=hsm, image_dir=tmp_path, actor=ACTOR)
    with read_transaction(engine) as conn:
        assert balance_fen(conn, new_ec) == EC_FEN and check_invariants(conn) == []
    # the new chip carries the moved balance and pays offline with it
    result = tap(hsm, Path(fresh.image_path), FARE_FEN)
    assert result.kind is Outcome.APPROVED_OFFLINE, result.reasons
    assert result.balance_fen_after == EC_FEN - FARE_FEN
    assert result.batch_record is not None and result.batch_record.pan == fresh.pan


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from citycard.db import make_engine, write_transaction
    from citycard.hsm import SoftHSM
    from citycard.platform import card_money, card_perso, cards

    url, store, key_file, image_dir, card_id, crash_at = sys.argv[1:]
    hsm = SoftHSM.open(store, master_key_file=key_file)

    def die_after(module, name):
        original = getattr(module, name)
        def wrapper(*args, **kwargs):
            original(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        setattr(module, name, wrapper)

    if crash_at == "image_written":
        die_after(card_perso, "personalise_image")
    elif crash_at == "ec_moved":
        die_after(card_money, "move_ec_balance")
    engine = make_engine(url)
    with write_transaction(engine) as conn:
        cards.replace(conn, int(card_id), hsm=hsm, image_dir=Path(image_dir), actor="crash-test")
    if crash_at == "committed":
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.parametrize("crash_at", ["image_written", "ec_moved", "committed"])
def test_replace_killed_midway_then_repeated_moves_once(engine, db_url, tmp_path, crash_at) -> None:
    store, key_file = tmp_path / "hsm-keys.json", tmp_path / "hsm-master.key"
    key_file.write_text(os.urandom(32).hex())
    key_file.chmod(0o600)
    durable = SoftHSM.open(store, master_key_file=key_file)
    images = tmp_path / "images"
    with write_transaction(engine) as conn:
        old_id = card_in_state(conn, "lost", hsm=durable, image_dir=images)
        old_ec = fund_ec(conn, old_id, EC_FEN)
    child = subprocess.run(
        [sys.executable, "-c", CHILD, db_url, str(store), str(key_file), str(images), str(old_id), crash_at],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert child.returncode == -9, child.stderr  # killed by SIGKILL, as planned
    with read_transaction(engine) as conn:
        state = cards.record(conn, old_id).state
        moved = find_posting(conn, f"replace:{old_id}")
        if crash_at == "committed":
            assert state == "replaced" and moved is not None
        else:  # the transaction died with the process: nothing of the replacement is left
            assert state == "lost" and moved is None and balance_fen(conn, old_ec) == EC_FEN
    hsm_again = SoftHSM.open(store, master_key_file=key_file)
    if crash_at == "committed":
        with pytest.raises(Conflict), write_transaction(engine) as conn:
            cards.replace(conn, old_id, hsm=hsm_again, image_dir=images, actor=ACTOR)
    else:
        with write_transaction(engine) as conn:
            cards.replace(conn, old_id, hsm=hsm_again, image_dir=images, actor=ACTOR)
    with pytest.raises(Conflict), write_transaction(engine) as conn:  # once more, as a retrying client would
        cards.replace(conn, old_id, hsm=hsm_again, image_dir=images, actor=ACTOR)
    with read_transaction(engine) as conn:
        old = cards.record(conn, old_id)
        fresh = cards.record(conn, old.replaced_by_id)
        new_ec = f"citybank:ec:{fresh.pan}:{fresh.psn:02d}"
        assert balance_fen(conn, old_ec) == 0 and balance_fen(conn, new_ec) == EC_FEN
        moves = [p for p in _postings_touching(conn, old_ec) if p.startswith("replace:")]
        assert moves == [f"replace:{old_id}"]
        assert check_invariants(conn) == []
        replacements = [
            c for c in cards.list_for_cardholder(conn, old.cardholder_id) if c["replaces_id"] == old_id
        ]
        assert len(replacements) == 1


def _postings_touching(conn, account: str) -> list[str]:
    from citycard.ledger.tables import ledger_lines, ledger_postings

    rows = conn.execute(
        select(ledger_postings.c.key)
        .join(ledger_lines, ledger_lines.c.posting_id == ledger_postings.c.id)
        .where(ledger_lines.c.account_id.in_(_account_ids(conn, account)))
        .distinct()
    )
    return sorted(r.key for r in rows)


def _account_ids(conn, code: str):
    from citycard.ledger.tables import ledger_accounts

    return select(ledger_accounts.c.id).where(ledger_accounts.c.code == code)


def test_two_concurrent_replacements_move_the_balance_once(engine, hsm, tmp_path) -> None:
    """Two desks (or a client retrying before the first answer) replace the same card at once: one
    wins, the other gets Conflict after waiting for the card's row lock."""
    with write_transaction(engine) as conn:
        old_id = card_in_state(conn, "lost_oral", hsm=hsm, image_dir=tmp_path)
        old_ec = fund_ec(conn, old_id, EC_FEN)
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def desk(name: str) -> None:
        start.wait()
        try:
            with write_transaction(engine) as conn:
                cards.replace(conn, old_id, hsm=hsm, image_dir=tmp_path / name, actor=f"desk:{name}")
            outcomes.append("replaced")
        except Conflict as refused:
            outcomes.append(refused.code)

    threads = [threading.Thread(target=desk, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["card.invalid_transition", "replaced"]
    with read_transaction(engine) as conn:
        old = cards.record(conn, old_id)
        fresh = cards.record(conn, old.replaced_by_id)
        assert balance_fen(conn, old_ec) == 0
        assert balance_fen(conn, f"citybank:ec:{fresh.pan}:{fresh.psn:02d}") == EC_FEN
        assert check_invariants(conn) == []


def test_a_bureau_replacement_hands_back_the_store_data_script(engine, hsm, tmp_path) -> None:
    with write_transaction(engine) as conn:
        old_id = card_in_state(conn, "lost", hsm=hsm, image_dir=tmp_path)
        fund_ec(conn, old_id, EC_FEN)
        new = cards.replace(conn, old_id, hsm=hsm, image_dir=None, actor=ACTOR)
        assert new["state"] == "active" and cards.record(conn, new["id"]).image_path is None
        script = new["perso_script"]
        assert script["pan_masked"] == new["pan_masked"] and script["ec_balance_fen"] == EC_FEN
        assert check_invariants(conn) == []


def test_replace_reloads_the_sector_applications_onto_the_new_chip(engine, hsm, tmp_path) -> None:
    """P4's applications.reload_all through cards.replace: the transit record is written on the new
    chip (read back with READ CAPP DATA from the saved image) and listed in card.replaced."""
    from citycard.platform import applications
    from citycard.platform.application_catalogue import catalogue, encode_record

    transit = {"city_code": "3301", "concession": "01"}
    with write_transaction(engine) as conn:
        old_id = card_in_state(conn, "active", hsm=hsm, image_dir=tmp_path)
        applications.load(conn, old_id, "transit", hsm=hsm, data=transit, actor=ACTOR)
        cards.report_loss(conn, old_id, formal=False, actor=ACTOR)
        new = cards.replace(conn, old_id, hsm=hsm, image_dir=tmp_path, actor=ACTOR)
        assert [a["app_id"] for a in applications.on_card(conn, new["id"])] == ["transit"]
        assert applications.on_card(conn, old_id) == []
        [replaced] = events.read(conn, kinds={"card.replaced"}, card_id=old_id)
        assert [a["app_id"] for a in replaced.payload["applications_reloaded"]] == ["transit"]
        image = Path(cards.record(conn, new["id"]).image_path)
    app = catalogue()["transit"]
    chip = load_card(image, hsm=hsm)
    chip.interface = "contact"
    chip.power_on()
    assert chip.process(bytes.fromhex("00A4040005A00000033300"))[-2:] == b"\x90\x00"
    answer = chip.process(bytes.fromhex("80B400") + bytes([app.sfi << 3, 2]) + app.record_id)
    assert (answer[:-2], answer[-2:]) == (encode_record(app, transit), b"\x90\x00")
