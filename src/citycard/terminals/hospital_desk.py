"""The hospital desk program (issue 8 item 2): one citizen card, two applications, three wires.

At the window the desk:

1. **identifies** the patient from the card's health application (``HealthCardReader``: SELECT the
   health DDF1, read the identity files with the hospital SAM's read key) and finds them in the
   platform's patient index over HTTP (``POST /v1/healthcare/patients/lookup`` with the health
   card number), **registering** a patient file when the hospital has none;
2. asks the platform for the **insurance share** of the bill (the rules table, ``/quotes``);
3. takes the **self-pay part online** through the debit/credit application: the contact kernel
   (``run_contact``) with an ISO 8583 acquirer link over TCP to the issuer host, which checks the
   ARQC and debits the patient's bank account (ARPC back, TC from the card);
4. signs the visit record with the institution's key in the HSM, **pushes it** to the platform
   (``/visits``), records the payment (``/payments``), **settles** the insurance share
   (``/settlements``: ``insurer:<scheme>`` → ``hospital:<id>`` in the ledger), and **writes the same
   record to the card** (``append_visit``: under the DF03 update key in secure messaging) — the
   platform first, so a card pulled out mid-write loses nothing that cannot be written again;
5. can read the card's visits back and check they **agree** with the platform's.

Every platform write carries an idempotency key derived from (institution, visit number, step), so
a desk that crashed and runs the visit again replays instead of writing twice. A declined or failed
payment stops the visit before anything is written to the card or the platform.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from citycard.card.health.records import VisitRecord
from citycard.crypto.suite import Suite
from citycard.terminals.health_card import HealthCardReader, HospitalSam, InstitutionSigner

HTTP_TIMEOUT_S = 30.0
VISITS_COMPARED_MAX = 200


class DeskError(Exception):
    """A step of the desk failed; ``step`` names it (nothing after it was done)."""

    def __init__(self, step: str, detail: str, *, code: str | None = None, status: int | None = None):
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.detail = detail
        self.code = code
        self.status = status


class HisClient:
    """The hospital information system's side of ``/v1/healthcare`` (an API key bound to the hospital)."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = HTTP_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None) -> None:  # fmt: skip
        self.http = httpx.Client(base_url=base_url, headers={"X-API-Key": api_key}, timeout=timeout_s,
                                 transport=transport)  # fmt: skip

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> HisClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(self, step: str, method: str, url: str, *, body: Any = None, key: str | None = None,
             params: dict[str, Any] | None = None) -> Any:  # fmt: skip
        headers = {"Idempotency-Key": key} if key else {}
        try:
            answer = self.http.request(method, url, json=body, headers=headers, params=params)
        except httpx.HTTPError as exc:
            raise DeskError(step, f"the platform cannot be reached: {exc}") from None
        if answer.status_code >= 400:
            try:
                problem = answer.json()
            except ValueError:
                problem = {}
            raise DeskError(step, problem.get("detail", answer.text[:200]), code=problem.get("code"),
                            status=answer.status_code)  # fmt: skip
        return answer.json()

    def institutions(self) -> list[dict[str, Any]]:
        return self.call("institutions", "GET", "/v1/healthcare/institutions")["items"]


@dataclass
class DeskVisit:
    """What one visit at the window did."""

    patient: dict[str, Any]
    quote: dict[str, Any]
    payment: dict[str, Any] | None
    record: VisitRecord
    platform_visit: dict[str, Any]
    settlement: dict[str, Any]
    log: list[str] = field(default_factory=list)
    step_ms: dict[str, float] = field(default_factory=dict)  # wall time of each step

    def to_dict(self) -> dict[str, Any]:
        return {"patient": self.patient, "quote": self.quote, "payment": self.payment,
                "record": self.record.to_dict(), "platform_visit": self.platform_visit,
                "settlement": self.settlement, "log": self.log, "step_ms": self.step_ms}  # fmt: skip


@dataclass
class HospitalDesk:
    """One window of hospital ``institution_id`` (see the module note).

    ``terminal`` is the kernel's :class:`citycard.kernel.context.Terminal`; ``acquirer_for`` makes a
    connected :class:`~citycard.terminals.acquirer_link.Iso8583AcquirerLink` for one payment (or
    None: the desk then takes no payment, and a visit with a self-pay part is refused).
    """

    institution_id: str
    suite: Suite
    hsm: Any
    his: HisClient
    terminal: Any = None
    acquirer_for: Any = None
    directory: dict[str, bytes] = field(default_factory=dict)

    # --- the card ------------------------------------------------------------------------------
    def sam(self) -> HospitalSam:
        if not self.directory:
            self.refresh_directory()
        return HospitalSam(self.hsm, self.institution_id, directory=self._public_key)

    def _public_key(self, institution_id: str, suite: Suite) -> bytes:
        if institution_id not in self.directory:
            self.refresh_directory()
        if institution_id in self.directory:
            return self.directory[institution_id]
        return self.hsm.institution_public_key(institution_id, suite)

    def refresh_directory(self) -> None:
        """The record keys of every hospital, from the platform (to check other hospitals' records)."""
        for item in self.his.institutions():
            if item.get("public_key_hex"):
                self.directory[item["id"]] = bytes.fromhex(item["public_key_hex"])

    def reader(self, transport: Any) -> HealthCardReader:
        reader = HealthCardReader(transport, sam=self.sam())
        reader.select()
        return reader

    # --- the steps -----------------------------------------------------------------------------------
    def identify(self, transport: Any) -> dict[str, Any]:
        """The card's identity (health application) and the patient index entry at this hospital."""
        identity = self.reader(transport).read_identity()
        patient = self.his.call("lookup", "POST", "/v1/healthcare/patients/lookup",
                                body={"health_card_no": identity.card_no})  # fmt: skip
        return {"identity": identity.to_dict(), **patient}

    def register(self, transport: Any, *, file_no: str, scheme: str | None = None) -> dict[str, Any]:
        """A patient file at this hospital for the card's holder (the index entry when there is one)."""
        found = self.identify(transport)
        if found["registration"] is not None:
            return found
        body = {"health_card_no": found["identity"]["card_no"], "file_no": file_no, "scheme": scheme}
        made = self.his.call("register", "POST", "/v1/healthcare/registrations", body=body,
                             key=f"{self.institution_id}:register:{file_no}")  # fmt: skip
        return {"identity": found["identity"], **made}

    def pay(self, transport: Any, amount_fen: int) -> dict[str, Any]:
        """The self-pay part through the debit/credit application, online to the issuer."""
        from citycard.kernel.contact import run_contact
        from citycard.kernel.outcome import Outcome

        if self.terminal is None or self.acquirer_for is None:
            raise DeskError("pay", "this desk has no payment terminal")
        link = self.acquirer_for()
        try:
            result = run_contact(transport, self.terminal, amount_fen=amount_fen, acquirer=link)
            link.complete(result)
        finally:
            close = getattr(link.client, "close", None)
            if callable(close):
                close()
        request, answer = link.last_request or {}, link.last_response or {}
        if result.kind is not Outcome.APPROVED_ONLINE:
            raise DeskError("pay", f"{result.kind.value}: {result.reasons[-1] if result.reasons else ''}",
                            code=(answer.get("39") or None))  # fmt: skip
        return {"amount_fen": amount_fen, "pan_masked": result.pan_masked, "psn": int(result.psn or 0),
                "terminal_id": request.get("41", ""), "stan": request.get("11", ""),
                "response_code": answer.get("39", ""), "authorisation_code": (answer.get("38") or None),
                "paid_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(), "log": list(link.log)}  # fmt: skip

    def visit(
        self,
        transport: Any,
        *,
        visit_no: str,
        department: str,
        diagnosis_code: str,
        amount_fen: int,
        kind: str = "outpatient",
        visit_at: dt.datetime | None = None,
    ) -> DeskVisit:
        """One visit end to end (module note, steps 2–4)."""
        log: list[str] = []
        step_ms: dict[str, float] = {}
        clock = [time.perf_counter()]

        def lap(step: str) -> None:
            now = time.perf_counter()
            step_ms[step] = round((now - clock[0]) * 1000, 1)
            clock[0] = now

        found = self.identify(transport)
        lap("identify")
        if found["registration"] is None:
            raise DeskError("visit", f"the patient has no file at {self.institution_id}: register first")
        holder, card_id = found["cardholder_id"], found["card_id"]
        at = (visit_at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(microsecond=0)
        quote = self.his.call("quote", "POST", "/v1/healthcare/quotes", body={
            "cardholder_id": holder, "kind": kind, "amount_fen": amount_fen, "visit_at": at.isoformat()})  # fmt: skip
        lap("quote")
        log.append(
            f"quote: {quote['scheme']} pays {quote['insurance_fen']} fen, patient {quote['self_pay_fen']} fen"
        )
        payment = None
        if quote["self_pay_fen"]:
            payment = self.pay(transport, quote["self_pay_fen"])
            lap("pay online")
            log += payment.pop("log")
            log.append(
                f"paid {payment['amount_fen']} fen online: STAN {payment['stan']} F39 {payment['response_code']}"
            )
        draft = VisitRecord(self.institution_id, at, department, diagnosis_code, amount_fen,
                            quote["insurance_fen"], visit_no=visit_no)  # fmt: skip
        signed = InstitutionSigner(self.hsm, self.institution_id, self.suite).sign(draft)
        lap("sign")
        # The platform first: once the money has moved, the visit, the payment and the share must be
        # recorded even if the card is pulled out before its write (the card is then written again).
        pushed = self.his.call("push visit", "POST", "/v1/healthcare/visits", body={
            "cardholder_id": holder, "card_id": card_id, "kind": kind, "record": signed.to_dict()},
            key=f"{self.institution_id}:visit:{visit_no}")  # fmt: skip
        lap("push visit")
        if payment is not None:
            self.his.call("record payment", "POST", "/v1/healthcare/payments",
                          body={"visit_no": visit_no, **payment}, key=f"{self.institution_id}:pay:{visit_no}")  # fmt: skip
        settlement = self.his.call("settle", "POST", "/v1/healthcare/settlements", body={"visit_no": visit_no},
                                   key=f"{self.institution_id}:settle:{visit_no}")  # fmt: skip
        lap("record payment and settle")
        log.append(
            f"settled {settlement['insurance_fen']} fen: {settlement['from_account']} → {settlement['to_account']}"
        )
        self.write_to_card(transport, signed)
        lap("write card")
        log.append(
            f"visit {visit_no} written to the card ({signed.signature_alg}, key {signed.key_id.hex().upper()})"
        )
        return DeskVisit(found, quote, payment, signed, pushed, settlement, log, step_ms)

    def write_to_card(self, transport: Any, signed: VisitRecord) -> VisitRecord:
        """Write a signed visit record (the one on the platform) into the card's next visit slot."""
        from citycard.terminals.health_card import HealthCardError

        try:
            reader = self.reader(transport)  # the kernel left the debit application selected
            return reader.append_visit(
                signed, signer=InstitutionSigner(self.hsm, self.institution_id, self.suite)
            )
        except HealthCardError as exc:
            raise DeskError("write card", f"{exc}; the visit {signed.visit_no} is on the platform: write it to the "
                            "card again (HospitalDesk.write_to_card)") from None  # fmt: skip

    def card_visits(self, transport: Any) -> list[VisitRecord]:
        """The visit records on the card, each signature checked with its institution's key."""
        return self.reader(transport).read_visits()

    def own_platform_visits(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while len(items) < VISITS_COMPARED_MAX:
            page = self.his.call("own visits", "GET", "/v1/healthcare/visits",
                                 params={"limit": 200, **({"cursor": cursor} if cursor else {})})  # fmt: skip
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        return items


def compare_visits(on_card: list[VisitRecord], on_platform: list[dict[str, Any]]) -> list[str]:
    """Differences between the card's visit records and the platform's (``record`` of each visit,
    as ``VisitRecord.to_dict()``), matched by (institution, visit number). Empty when they agree.
    The card keeps the last five outpatient visits, so only the card's records must all be found."""
    platform = {}
    for item in on_platform:
        record = VisitRecord.from_dict(item["record"])
        platform[(record.institution_id, record.visit_no)] = record
    problems = []
    for record in on_card:
        other = platform.get((record.institution_id, record.visit_no))
        if other is None:
            problems.append(f"{record.institution_id}/{record.visit_no}: on the card, not on the platform")
        elif other.to_bytes() != record.to_bytes():
            problems.append(f"{record.institution_id}/{record.visit_no}: the card and the platform differ")
    return problems
