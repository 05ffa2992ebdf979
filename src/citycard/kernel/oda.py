"""The kernel's offline data authentication step (EMV Book 3 §10.3, Book 2 §5–6; pboc-notes §4.5).

Every check of a certificate or a signature is :mod:`citycard.crypto.oda` — the same functions
``citycard oda check`` calls, so the two always agree. This module adds what only a terminal
knows: which CA key (the CAPK table by RID and index 8F, with its expiry), the revocation list,
today's date, which data are signed (the records flagged in the AFL, the AIP when 9F4A lists 82),
and the TVR/TSI bits:

- data needed for ODA missing (8F, 90, 9F46, 9F4B, 93; 9F32/9F47 for RSA) → "ICC data missing" and
  the method's failure bit;
- CA key unknown or expired, issuer certificate revoked or expired, any certificate or
  signature failing → the failure bit of the method: "SDA failed", "DDA failed" (DDA and fDDA) or
  "CDA failed"; the reasons say which check failed;
- TSI "offline data authentication performed" whenever a method was attempted.

:func:`icc_public_key` recovers the issuer and ICC keys; :func:`fdda`, :func:`sda`, :func:`dda`
and :func:`cda` are the methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from citycard.crypto import oda as crypto_oda
from citycard.crypto.oda import ODAError, OdaResult, PublicKey
from citycard.emv.dol import DOLError, parse_dol
from citycard.kernel.card_link import CardLink, CardLinkError, parse_template
from citycard.kernel.context import Transaction
from citycard.kernel.params import CapkTable, CapkTableError

FAILURE_BITS = {"sda": "sda_failed", "dda": "dda_failed", "fdda": "dda_failed", "cda": "cda_failed"}
DEFAULT_DDOL = bytes.fromhex("9F3704")  # when neither the card (9F49) nor the AID row gives one


class OdaFailed(Exception):  # noqa: N818 — internal: one failed check, with its reason
    pass


@dataclass(frozen=True, slots=True)
class OdaKeys:
    issuer: PublicKey
    icc: PublicKey | None  # None for SDA (no ICC key)


def _need(tx: Transaction, tags: tuple[str, ...]) -> None:
    missing = [tag for tag in tags if not tx.card.get(tag)]
    if missing:
        tx.tvr.set("icc_data_missing")
        raise OdaFailed(f"data for ODA missing: {', '.join(missing)}")


def _check(result: OdaResult) -> PublicKey | None:
    if not result.valid:
        raise OdaFailed("; ".join(result.reasons))
    if result.expired:
        raise OdaFailed(f"{result.name} expired at the end of {result.expiry[:2]}/{result.expiry[2:]}")  # type: ignore[index]
    return result.public_key


def _static_data(tx: Transaction) -> bytes:
    """Records flagged for ODA, then the AIP when the SDA tag list (9F4A) is 82 (Book 3 §10.3)."""
    if tx.oda_record_problem:
        raise OdaFailed(tx.oda_record_problem)
    tag_list = tx.card.get("9F4A")
    if tag_list is None:
        return tx.static_data
    if tag_list != b"\x82":
        raise OdaFailed(f"static data tag list (9F4A) is {tag_list.hex().upper()}; only 82 is allowed")
    return tx.static_data + tx.card.get("82", b"")


def issuer_public_key(tx: Transaction, capks: CapkTable) -> PublicKey:
    """CA key (RID of the AID, index 8F) → issuer public key (90/92/9F32), checked and not revoked."""
    _need(tx, ("8F", "90"))
    index = tx.card["8F"]
    if len(index) != 1:
        raise OdaFailed(f"CA public key index (8F) must be 1 byte, got {len(index)}")
    rid = tx.aid[:5]
    try:
        capk = capks.lookup(rid, index[0], today=tx.today)
    except CapkTableError as exc:  # not found, or expired
        raise OdaFailed(str(exc)) from None
    if capk.suite.signature == "rsa":
        _need(tx, ("9F32",))
    result = crypto_oda.recover_issuer_public_key(
        capk,
        tx.card["90"],
        tx.card.get("92", b""),
        tx.card.get("9F32", b""),
        pan=tx.pan,
        today=tx.today,
        revocation_list=capks.revocation_list,
    )
    key = _check(result)
    if key is None:
        raise AssertionError("a valid issuer certificate without its key")
    return key


def icc_public_key(tx: Transaction, capks: CapkTable) -> OdaKeys:
    """Issuer key, then the ICC key from 9F46/9F48/9F47 over the static data (Book 2 §6.4)."""
    issuer = issuer_public_key(tx, capks)
    _need(tx, ("9F46",) if issuer.suite.signature == "sm2" else ("9F46", "9F47"))
    result = crypto_oda.recover_icc_public_key(
        issuer,
        tx.card["9F46"],
        tx.card.get("9F48", b""),
        tx.card.get("9F47", b""),
        _static_data(tx),
        pan=tx.pan,
        today=tx.today,
    )
    return OdaKeys(issuer, _check(result))


def run(tx: Transaction, method: str, check: Callable[[], None]) -> bool:
    """Run ``check`` (a callable doing the method's work); set the TVR/TSI bits; True on success."""
    tx.tsi.set("offline_data_authentication_performed")
    try:
        check()
    except (OdaFailed, ODAError) as exc:
        tx.tvr.set(FAILURE_BITS[method])
        tx.reasons.append(f"{method.upper()} failed: {exc}")
        tx.log(method.upper(), f"failed: {exc}")
        return False
    tx.log(method.upper(), "passed")
    return True


def fdda_terminal_data(tx: Transaction) -> bytes:
    """The terminal data an fDDA signature covers: version 01 when the reader supports it and the
    card answered 9F69 starting 01, else version 00 (pboc-notes §4.5)."""
    tag_9f69 = tx.card.get("9F69", b"")
    if tx.ttq.is_set("fdda_version_01_supported") and tag_9f69[:1] == b"\x01":
        return crypto_oda.fdda_terminal_dynamic_data(
            version=1,
            tag_9f37=tx.terminal["9F37"],
            tag_9f02=tx.terminal["9F02"],
            tag_5f2a=tx.terminal["5F2A"],
            tag_9f69=tag_9f69,
        )
    return crypto_oda.fdda_terminal_dynamic_data(version=0, tag_9f37=tx.terminal["9F37"])


def fdda(tx: Transaction, capks: CapkTable) -> bool:
    """qPBOC fDDA: the 9F4B of the GPO answer over the fDDA terminal data (pboc-notes §5.2)."""

    def check() -> None:
        _need(tx, ("9F4B",))
        keys = icc_public_key(tx, capks)
        if keys.icc is None:
            raise AssertionError("fDDA without an ICC key")
        _check(crypto_oda.verify_dynamic_signature(keys.icc, tx.card["9F4B"], fdda_terminal_data(tx)))

    return run(tx, "fdda", check)


def sda(tx: Transaction, capks: CapkTable) -> bool:
    """SDA: the signed static application data (93) over the static data (Book 2 §5.4)."""

    def check() -> None:
        _need(tx, ("93",))
        issuer = issuer_public_key(tx, capks)
        _check(crypto_oda.verify_sda(issuer, tx.card["93"], _static_data(tx)))

    return run(tx, "sda", check)


def ddol_data(tx: Transaction) -> bytes:
    """DDOL data: the card's DDOL (9F49), else the AID row's default DDOL, which must hold 9F37."""
    ddol = tx.card.get("9F49")
    if ddol is None:
        ddol = (tx.aid_params.ddol_default if tx.aid_params is not None else b"") or DEFAULT_DDOL
    try:
        entries = parse_dol(ddol)
    except DOLError as exc:
        raise OdaFailed(f"DDOL: {exc}") from None
    if "9F37" not in dict(entries):
        raise OdaFailed("the DDOL does not ask for the unpredictable number (9F37)")
    return tx.dol_data(ddol)


def dda(link: CardLink, tx: Transaction, capks: CapkTable) -> bool:
    """DDA: INTERNAL AUTHENTICATE with the DDOL data, then the 9F4B over it (Book 2 §6.5)."""

    def check() -> None:
        keys = icc_public_key(tx, capks)
        if keys.icc is None:
            raise AssertionError("DDA without an ICC key")
        data = ddol_data(tx)
        reply = link.internal_authenticate(data)
        if not reply.ok:
            raise OdaFailed(f"INTERNAL AUTHENTICATE answered {reply.sw:04X}")
        try:
            template = parse_template(reply.data, "INTERNAL AUTHENTICATE", "80", "77")
        except CardLinkError as exc:
            raise OdaFailed(exc.reason) from None
        if template.tag == "80":
            signature = template.value
        else:
            found = next((o.value for o in template.children or [] if o.tag == "9F4B"), None)
            if found is None:
                raise OdaFailed("INTERNAL AUTHENTICATE answer without 9F4B")
            signature = found
        _check(crypto_oda.verify_dynamic_signature(keys.icc, signature, data))

    return run(tx, "dda", check)


def cda(
    tx: Transaction,
    keys: OdaKeys | None,
    *,
    response_tlvs: bytes,
    cdol1_data: bytes,
    cdol2_data: bytes = b"",
) -> bytes | None:
    """CDA on a GENERATE AC answer (Book 2 §6.6.2): the AC the signature carries, or None on failure."""
    recovered: dict[str, bytes] = {}

    def check() -> None:
        if keys is None or keys.icc is None:
            raise OdaFailed("no ICC public key for CDA")
        signature = next(
            (v for tag, v in _top_level(response_tlvs) if tag == "9F4B"),
            None,
        )
        if signature is None:
            raise OdaFailed("GENERATE AC answer without the signed dynamic application data (9F4B)")
        result = crypto_oda.verify_cda(
            keys.icc,
            signature,
            tag_9f37=tx.terminal["9F37"],
            pdol_data=tx.pdol_data,
            cdol1_data=cdol1_data,
            cdol2_data=cdol2_data,
            response_tlvs=response_tlvs,
        )
        _check(result)
        recovered["ac"] = result.fields["ac"]

    if not run(tx, "cda", check):
        return None
    return recovered["ac"]


def _top_level(response_tlvs: bytes) -> list[tuple[str, bytes]]:
    from citycard.emv.tlv import decode

    objects = decode(response_tlvs)
    if len(objects) == 1 and objects[0].tag == "77":
        objects = objects[0].children or []
    return [(obj.tag, obj.value) for obj in objects]
