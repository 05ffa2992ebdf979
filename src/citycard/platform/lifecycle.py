"""The card lifecycle as an audited state machine (issue 6 item 2).

States (:class:`CardState`) and the allowed transitions per action (:data:`TRANSITIONS`) are data;
:func:`transition` is the only writer of ``platform_cards.state``: it checks the action is
allowed from the current state (else :class:`Conflict` ``card.invalid_transition`` with nothing
changed), updates the row only if its state is still the one read (a concurrent change loses with
the same error), and writes the audit row (actor, from, to, action, reason, at UTC) in the same
transaction.

``dormant`` is a flag beside the state, never a state: a dormant card keeps working.

>>> allowed_actions(CardState.ACTIVE)
['cancel', 'replace', 'report_loss_formal', 'report_loss_oral']
>>> target("unblock", CardState.LOST_ORAL)
<CardState.ACTIVE: 'active'>
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, insert, update

from citycard.db import utc_now
from citycard.platform import tables
from citycard.platform.errors import Conflict, InvalidInput


class CardState(StrEnum):
    APPLIED = "applied"
    APPROVED = "approved"
    PREPARED = "prepared"  # data preparation done: PAN/PSN/expiry allocated
    PERSONALISED = "personalised"  # a card image exists, or a bureau script was handed out
    ISSUED = "issued"  # enrolled at the issuer (status blocked until activation)
    ACTIVE = "active"
    LOST_ORAL = "lost_oral"  # 口头挂失: an oral report, already blocking
    LOST = "lost"  # 正式挂失: the formal written report
    REPLACED = "replaced"  # a new card took over (final)
    CANCELLED = "cancelled"  # 销户: refunded (final)


assert tuple(CardState) == tables.CARD_STATES, "CardState and the table's CHECK must agree"

S = CardState
LOSS_STATES = frozenset({S.LOST_ORAL, S.LOST})
ENROLLED_STATES = frozenset({S.ISSUED, S.ACTIVE, S.LOST_ORAL, S.LOST, S.REPLACED})  # known to the issuer
FINAL_STATES = frozenset({S.REPLACED, S.CANCELLED})

# action → (states it may start from, state it ends in)
TRANSITIONS: dict[str, tuple[frozenset[CardState], CardState]] = {
    "approve": (frozenset({S.APPLIED}), S.APPROVED),
    "prepare": (frozenset({S.APPROVED}), S.PREPARED),
    "personalise": (frozenset({S.PREPARED}), S.PERSONALISED),
    "issue": (frozenset({S.PERSONALISED}), S.ISSUED),
    "activate": (frozenset({S.ISSUED}), S.ACTIVE),
    "report_loss_oral": (frozenset({S.ISSUED, S.ACTIVE}), S.LOST_ORAL),
    "report_loss_formal": (frozenset({S.ISSUED, S.ACTIVE, S.LOST_ORAL}), S.LOST),
    "unblock": (LOSS_STATES, S.ACTIVE),
    "replace": (frozenset({S.ISSUED, S.ACTIVE, S.LOST_ORAL, S.LOST}), S.REPLACED),
    "cancel": (frozenset(CardState) - FINAL_STATES, S.CANCELLED),
}


def allowed_actions(state: CardState | str) -> list[str]:
    """The actions allowed from ``state``, sorted (for the console's buttons)."""
    return sorted(action for action, (sources, _) in TRANSITIONS.items() if CardState(state) in sources)


def target(action: str, state: CardState | str) -> CardState:
    """The state ``action`` leads to from ``state``, or :class:`Conflict` ``card.invalid_transition``."""
    if action not in TRANSITIONS:
        raise InvalidInput("card.action", f"unknown card action {action!r}")
    sources, to = TRANSITIONS[action]
    if CardState(state) not in sources:
        allowed = ", ".join(allowed_actions(state)) or "none"
        raise Conflict(
            "card.invalid_transition",
            f"cannot {action.replace('_', ' ')} a card that is {state} (allowed: {allowed})",
        )
    return to


def transition(
    conn: Connection,
    card: Any,
    action: str,
    *,
    actor: str,
    reason: str = "",
    at: datetime | None = None,
    **values: Any,
) -> CardState:
    """Move ``card`` (a ``platform_cards`` row) by ``action``, set ``values`` too, write the audit row."""
    to = target(action, card.state)
    actor, reason = check_actor(actor), check_reason(reason)
    at = at or utc_now()
    c = tables.cards.c
    done = conn.execute(
        update(tables.cards)
        .where(c.id == card.id, c.state == card.state)
        .values(state=to.value, updated_at=at, **values)
    )
    if done.rowcount != 1:  # someone moved it since we read it
        raise Conflict("card.invalid_transition", f"card {card.id} changed state concurrently; read it again")
    audit(conn, card.id, action, from_state=card.state, to_state=to.value, actor=actor, reason=reason, at=at)
    return to


def audit(
    conn: Connection,
    card_id: int,
    action: str,
    *,
    from_state: str | None,
    to_state: str,
    actor: str,
    reason: str,
    at: datetime,
) -> None:
    conn.execute(
        insert(tables.card_audit).values(
            card_id=card_id, action=action, from_state=from_state, to_state=to_state, actor=actor,
            reason=reason, at=at,
        )
    )  # fmt: skip


def check_actor(actor: Any) -> str:
    if (
        not isinstance(actor, str)
        or not actor.strip()
        or len(actor) > tables.ACTOR_CHARS
        or not actor.isprintable()
    ):
        raise InvalidInput(
            "card.actor", f"actor must be a printable name of 1..{tables.ACTOR_CHARS} characters",
            fields={"actor": "bad"},
        )  # fmt: skip
    return actor.strip()


def check_reason(reason: Any) -> str:
    if not isinstance(reason, str) or len(reason) > tables.REASON_CHARS or not reason.isprintable():
        raise InvalidInput(
            "card.reason", f"reason must be printable text of at most {tables.REASON_CHARS} characters",
            fields={"reason": "bad"},
        )  # fmt: skip
    return reason.strip()
