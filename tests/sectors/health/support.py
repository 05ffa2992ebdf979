"""Helpers the health tests share (no tests here): an institution's record key in software (the
tests stand in for the hospital SAM where the desk is not involved), visit records signed the way
the desk signs them, and hospitals made through the real API (institution, API key, binding)."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, replace
from typing import Any

import httpx

from citycard.card.health.records import VisitRecord
from citycard.crypto import record_signature, rsa, sm2

WHEN = dt.datetime(2026, 11, 27, 2, 30, tzinfo=dt.UTC)


def rsa_record_key() -> rsa.RsaPrivateKey:
    from cryptography.hazmat.primitives.asymmetric import rsa as crypto_rsa

    return rsa.RsaPrivateKey.from_cryptography(
        crypto_rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )


class Signer:
    """An institution's record key: SM2 (GM) or RSA-2048 (INTL)."""

    def __init__(self, suite: str, rsa_key: rsa.RsaPrivateKey | None = None) -> None:
        self.suite = suite
        self.private: Any = sm2.generate_private_key() if suite == "GM" else (rsa_key or rsa_record_key())
        self.algorithm = record_signature.SM2_SM3 if suite == "GM" else record_signature.RSA_PKCS1_SHA256
        self.public = record_signature.public_key_bytes(self.private)

    def sign(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record signed as the desk signs it (VisitRecord: canonical bytes with key id)."""
        visit = VisitRecord.from_dict(record)
        visit = replace(visit, signature_alg=record_signature.ALGORITHMS[self.algorithm],
                        key_id=record_signature.key_id(self.public, algorithm=self.algorithm))  # fmt: skip
        signature = record_signature.sign(self.private, visit.canonical_bytes(), algorithm=self.algorithm)
        return replace(visit, signature=signature).to_dict()


def record_for(
    institution_id: str, amount_fen: int, insurance_fen: int, visit_no: str = "V-1"
) -> dict[str, Any]:
    return {"institution_id": institution_id, "visit_at": WHEN.isoformat(), "department": "内科",
            "diagnosis_code": "J06.9", "amount_fen": amount_fen, "insurance_fen": insurance_fen,
            "visit_no": visit_no}  # fmt: skip


def new_key() -> str:
    return "hc-" + secrets.token_hex(8)


@dataclass
class Hospital:
    institution_id: str
    merchant_id: str
    signer: Signer
    headers: dict[str, str]  # the HIS's X-API-Key


def make_hospital(base_url: str, operator_headers: dict[str, str], *, suite: str = "GM",
                  signer: Signer | None = None, merchant_id: str | None = None) -> Hospital:  # fmt: skip
    """A hospital through the API: the institution (its record key), a sector API key, the binding."""
    signer = signer or Signer(suite)
    institution_id = "H" + secrets.token_hex(3).upper()
    merchant_id = merchant_id or f"8985{secrets.randbelow(10**11):011d}"
    with httpx.Client(base_url=base_url, headers=operator_headers, timeout=60) as op:
        made = op.post("/v1/healthcare/institutions", headers={"Idempotency-Key": new_key()}, json={
            "institution_id": institution_id, "name": f"医院 {institution_id}", "merchant_id": merchant_id,
            "suite": signer.suite, "public_key_hex": signer.public.hex()})  # fmt: skip
        assert made.status_code == 201, made.text
        key = op.post("/v1/auth/api-keys", headers={"Idempotency-Key": new_key()},
                      json={"name": f"his-{institution_id.lower()}", "role": "sector", "subject": "health"})  # fmt: skip
        assert key.status_code == 201, key.text
        bound = op.post("/v1/healthcare/institutions/bindings", headers={"Idempotency-Key": new_key()},
                        json={"institution_id": institution_id, "principal": f"key:{key.json()['id']}"})  # fmt: skip
        assert bound.status_code == 201, bound.text
    return Hospital(institution_id, merchant_id, signer, {"X-API-Key": key.json()["key"]})
