"""Who may call what: the ROLE TABLE, as data (route name → allowed roles).

One dependency (:func:`citycard.api.auth.authorize`) looks the called route up here; a route that
is missing from the table is refused to everyone (fail closed), and a test checks that every
route of the app has an entry. Roles (issue 6 item 6; ``terminal`` is ours, for validators and POS
that download blacklists and report the version they hold):

* ``operator``   — the card operator's staff: everything about cardholders and cards;
* ``bank``       — the issuing bank: read cards, block (loss report) and unblock;
* ``sector``     — a sector system (health, transit…): read cards of consenting cardholders,
  load/unload its applications, pull and acknowledge its events;
* ``regulator``  — reads everything, changes nothing;
* ``cardholder`` — a person: their own cardholder record and cards, report their own card lost;
* ``terminal``   — blacklist download and version report.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    operator = "operator"
    bank = "bank"
    sector = "sector"
    regulator = "regulator"
    cardholder = "cardholder"
    terminal = "terminal"


class _Public(frozenset):  # type: ignore[type-arg]
    """The marker for "no credential needed" (login, health). A subclass instance, because CPython
    shares one empty ``frozenset()``: an entry that lists no role by mistake must not be public."""


PUBLIC: frozenset[Role] = _Public()

_OP = Role.operator
_BANK = Role.bank
_SECTOR = Role.sector
_REG = Role.regulator
_HOLDER = Role.cardholder
_TERM = Role.terminal


def _roles(*roles: Role) -> frozenset[Role]:
    if not roles:
        raise ValueError("a role-table entry lists at least one role (use PUBLIC for public routes)")
    return frozenset(roles)


ROLE_TABLE: dict[str, frozenset[Role]] = {
    # auth
    "auth.login": PUBLIC,
    "auth.logout": _roles(_OP, _BANK, _SECTOR, _REG, _HOLDER),
    "auth.me": _roles(_OP, _BANK, _SECTOR, _REG, _HOLDER, _TERM),
    "auth.create_user": _roles(_OP),
    "auth.create_api_key": _roles(_OP),
    "auth.list_api_keys": _roles(_OP, _REG),
    "auth.revoke_api_key": _roles(_OP),
    "health": PUBLIC,
    # cardholders
    "cardholders.register": _roles(_OP),
    "cardholders.find": _roles(_OP, _REG, _BANK),
    "cardholders.get": _roles(_OP, _REG, _BANK, _SECTOR, _HOLDER),
    "cardholders.cards": _roles(_OP, _REG, _BANK, _HOLDER),
    "cardholders.consents": _roles(_OP, _REG, _HOLDER),
    "cardholders.grant_consent": _roles(_OP, _HOLDER),
    "cardholders.revoke_consent": _roles(_OP, _HOLDER),
    # cards
    "cards.apply": _roles(_OP),
    "cards.by_pan": _roles(_OP, _REG, _BANK),
    "cards.get": _roles(_OP, _REG, _BANK, _SECTOR, _HOLDER),
    "cards.status": _roles(_OP, _REG, _BANK, _SECTOR, _HOLDER, _TERM),
    "cards.timeline": _roles(_OP, _REG, _HOLDER),
    "cards.approve": _roles(_OP),
    "cards.prepare": _roles(_OP),
    "cards.personalise": _roles(_OP),
    "cards.issue": _roles(_OP),
    "cards.activate": _roles(_OP, _HOLDER),
    "cards.report_loss": _roles(_OP, _BANK, _HOLDER),
    "cards.unblock": _roles(_OP, _BANK),
    "cards.replace": _roles(_OP),
    "cards.cancel": _roles(_OP),
    # applications
    "applications.catalogue": _roles(_OP, _REG, _BANK, _SECTOR, _HOLDER),
    "applications.on_card": _roles(_OP, _REG, _SECTOR, _HOLDER),
    "applications.load": _roles(_OP, _SECTOR),
    "applications.unload": _roles(_OP, _SECTOR),
    # blacklist
    "blacklist.full": _roles(_OP, _REG, _BANK, _TERM),
    "blacklist.delta": _roles(_OP, _REG, _BANK, _TERM),
    "blacklist.versions": _roles(_OP, _REG, _BANK, _TERM),
    "blacklist.publish": _roles(_OP),
    "blacklist.report_version": _roles(_TERM, _OP),
    "blacklist.stale": _roles(_OP, _REG),
    # exchange
    "exchange.subscribe": _roles(_OP),
    "exchange.events": _roles(_SECTOR, _OP, _REG),
    "exchange.ack": _roles(_SECTOR, _OP),
    # validators and taxi terminals (api/routers/terminals.py)
    "clearing.uploads": _roles(_TERM),
    "terminals.parameters": _roles(_TERM, _OP),
    "terminals.report_versions": _roles(_TERM, _OP),
    "terminals.versions": _roles(_OP, _REG, _TERM),
    # healthcare: hospitals' information systems (sector keys bound to an institution) and patients
    "healthcare.create_institution": _roles(_OP),
    "healthcare.institutions": _roles(_OP, _REG, _SECTOR, _HOLDER),
    "healthcare.bind": _roles(_OP),
    "healthcare.lookup": _roles(_SECTOR),
    "healthcare.register": _roles(_SECTOR),
    "healthcare.book": _roles(_SECTOR),
    "healthcare.appointments": _roles(_SECTOR),
    "healthcare.appointment_state": _roles(_SECTOR),
    "healthcare.quote": _roles(_SECTOR),
    "healthcare.push_visit": _roles(_SECTOR),
    "healthcare.own_visits": _roles(_SECTOR),
    "healthcare.record_payment": _roles(_SECTOR),
    "healthcare.settle": _roles(_SECTOR),
    "healthcare.patient": _roles(_OP, _REG, _HOLDER),
    "healthcare.patient_visits": _roles(_SECTOR, _REG, _HOLDER),
    "healthcare.consents": _roles(_OP, _REG, _HOLDER),
    "healthcare.grant": _roles(_OP, _HOLDER),
    "healthcare.revoke": _roles(_OP, _HOLDER),
    "healthcare.audit": _roles(_OP, _REG, _HOLDER),
}
