"""The card's money in the ledger (issue 6 item 2): deposit, the EC balance move of a replacement,
the refund of a cancellation. Every movement is one balanced posting under an idempotency key
(STYLE.md, the ledger's shape), so a repeated call posts once.

Accounts: the card's EC account is the issuer's (``ISSUER:ec:PAN:PSN``, opened by the issuer's
``enrol_card``; it mirrors the chip's 9F79). The platform adds ``platform:cashdesk`` (money that
enters or leaves through the service desk; may go negative, like the issuer's funding account)
and ``platform:deposits`` (the card deposits held).

| movement | debit | credit | key |
|---|---|---|---|
| deposit at issue | platform:cashdesk | platform:deposits | ``deposit:<card id>`` |
| replacement | old EC account | new EC account | ``replace:<old card id>`` |
| cancellation refund | EC account (balance), platform:deposits (deposit) | platform:cashdesk | ``refund:<card id>`` |
"""

from __future__ import annotations

from sqlalchemy import Connection

from citycard.ledger import AccountKind, Layer, Line, PostingRequest, balance_fen, open_account, post

CASHDESK_ACCOUNT = "platform:cashdesk"
DEPOSITS_ACCOUNT = "platform:deposits"


def open_platform_accounts(conn: Connection) -> None:
    """Open the platform's own accounts (idempotent)."""
    open_account(
        conn, CASHDESK_ACCOUNT, AccountKind.FUNDING, allow_negative=True, name="platform service desk"
    )
    open_account(conn, DEPOSITS_ACCOUNT, AccountKind.ISSUER, name="card deposits held")


def collect_deposit(conn: Connection, card_id: int, deposit_fen: int) -> None:
    """The deposit paid at the desk when the card is issued."""
    if deposit_fen == 0:
        return
    open_platform_accounts(conn)
    post(
        conn,
        PostingRequest(
            key=f"deposit:{card_id}",
            lines=(
                Line(CASHDESK_ACCOUNT, debit_fen=deposit_fen),
                Line(DEPOSITS_ACCOUNT, credit_fen=deposit_fen),
            ),
            layer=Layer.SETTLED,
            memo=f"card {card_id} deposit",
        ),
    )


def ec_balance_fen(conn: Connection, ec_account: str) -> int:
    """The EC account's balance over all layers (the issuer's shadow of the chip's 9F79)."""
    return balance_fen(conn, ec_account)


def move_ec_balance(
    conn: Connection, *, old_card_id: int, old_ec_account: str, new_ec_account: str, amount_fen: int
) -> int:
    """Move ``amount_fen`` (the balance the new chip was personalised with) from the replaced card's
    EC account to its replacement's; returns the amount moved.

    Key ``replace:<old card id>``: a second call finds the posting and moves nothing more (the
    ledger answers ``created=False`` for the same lines, refuses other lines).
    """
    amount = amount_fen
    if amount <= 0:
        return 0
    post(
        conn,
        PostingRequest(
            key=f"replace:{old_card_id}",
            lines=(Line(old_ec_account, debit_fen=amount), Line(new_ec_account, credit_fen=amount)),
            layer=Layer.SETTLED,
            memo=f"card {old_card_id} replaced: EC balance moved",
        ),
    )
    return amount


def refund(conn: Connection, *, card_id: int, ec_account: str | None, deposit_fen: int) -> int:
    """Pay back the EC balance and the deposit at the desk; returns the refund in fen."""
    ec_fen = ec_balance_fen(conn, ec_account) if ec_account is not None else 0
    lines = []
    if ec_fen > 0:
        lines.append(Line(ec_account or "", debit_fen=ec_fen))
    if deposit_fen > 0:
        lines.append(Line(DEPOSITS_ACCOUNT, debit_fen=deposit_fen))
    total = max(ec_fen, 0) + deposit_fen
    if total == 0:
        return 0
    open_platform_accounts(conn)
    lines.append(Line(CASHDESK_ACCOUNT, credit_fen=total))
    post(
        conn,
        PostingRequest(
            key=f"refund:{card_id}", lines=tuple(lines), layer=Layer.SETTLED, memo=f"card {card_id} cancelled"
        ),
    )
    return total
