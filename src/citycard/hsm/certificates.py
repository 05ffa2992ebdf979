"""ODA keys in the software HSM: test CAs, issuer keys, certificates, SDA, and the CAPK table.

Private keys are stored wrapped like any other key: RSA as PKCS#8 DER, SM2 as the 32-byte
scalar. Their "KCV" is a fingerprint, the leftmost 3 bytes of SHA-256 over the public key (RSA
modulus ‖ exponent, SM2 x ‖ y), checked on every unwrap. Test CAs are generated here on demand;
no private key of a real scheme CA is ever stored. The only private key that leaves the HSM is a
fresh ICC key, returned once for the card image it belongs to and never stored.

CAPKs are public: they are kept unwrapped in the key-store file, and their checksum is checked
again each time the store is read (:mod:`citycard.crypto.capk` gives the rule for both suites).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from citycard.crypto import capk as capk_module
from citycard.crypto import oda, rsa, sm2
from citycard.crypto.capk import Capk, CapkError
from citycard.crypto.suite import GM, INTL, Suite
from citycard.hsm.keystore import KeyStore
from citycard.hsm.keytypes import HSMError, KeyInfo, check_label, suite_named

if TYPE_CHECKING:
    from collections.abc import Callable

RSA_CA_BITS_DEFAULT = 1984  # the largest EMV CA key (Book 2 §5.1: N_CA ≤ 248 bytes)
RSA_ISSUER_BITS_DEFAULT = 1408
RSA_ICC_BITS_DEFAULT = 1024
DAC_BYTES = 2  # data authentication code (9F45)
PrivateKey = rsa.RsaPrivateKey | bytes
_TYPE_FOR = {  # (role, signature mechanism) → key type
    ("CA", "rsa"): "CA-RSA",
    ("CA", "sm2"): "CA-SM2",
    ("ISSUER", "rsa"): "ISSUER-RSA",
    ("ISSUER", "sm2"): "ISSUER-SM2",
}


def public_fingerprint(public_key: oda.PublicKey) -> bytes:
    """The KCV of an asymmetric key: SHA-256(modulus ‖ exponent) or SHA-256(x ‖ y), leftmost 3 bytes."""
    return hashlib.sha256(public_key.key + public_key.exponent).digest()[:3]


def encode_private_key(private_key: PrivateKey) -> bytes:
    """RSA → PKCS#8 DER; SM2 → the 32-byte scalar as it is."""
    if isinstance(private_key, rsa.RsaPrivateKey):
        return private_key.to_cryptography().private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    return private_key


def decode_private_key(raw: bytes, suite: Suite) -> PrivateKey:
    if suite.signature == "sm2":
        return raw
    # The DER was authenticated by AES-GCM, so OpenSSL's slow consistency check is skipped.
    loaded = serialization.load_der_private_key(raw, None, unsafe_skip_rsa_key_validation=True)
    return rsa.RsaPrivateKey.from_cryptography(loaded)  # type: ignore[arg-type]


def _capk_name(rid: bytes, index: int) -> str:
    return f"{rid.hex().upper()}/{index:02X}"


def capk_to_record(capk: Capk) -> dict[str, Any]:
    return {
        "rid": capk.rid.hex().upper(),
        "index": capk.index,
        "suite": capk.suite.name,
        "key": capk.key.hex().upper(),
        "exponent": capk.exponent.hex().upper(),
        "expiry": capk.expiry.isoformat() if capk.expiry else None,
        "checksum": capk.checksum.hex().upper(),
    }


def capk_from_record(name: str, record: dict[str, Any]) -> Capk:
    try:
        return Capk.from_record(
            rid=bytes.fromhex(record["rid"]),
            index=int(record["index"]),
            suite=suite_named(record["suite"]),
            key=bytes.fromhex(record["key"]),
            exponent=bytes.fromhex(record["exponent"]),
            checksum=bytes.fromhex(record["checksum"]),
            expiry=dt.date.fromisoformat(record["expiry"]) if record.get("expiry") else None,
        )
    except (CapkError, KeyError, TypeError, ValueError) as exc:
        raise HSMError(f"stored CAPK {name} is damaged: {exc}") from None


@dataclass(frozen=True, slots=True)
class IccKeyAndCertificate:
    """A fresh ICC key pair for one card image and its certificate tags (9F46, 9F48, 9F47).

    ``private_key`` (RSA key or 32 SM2 bytes) goes into the card image and nowhere else; it is
    left out of ``repr``. Unpacks as ``private_key, tags``.
    """

    private_key: PrivateKey = field(repr=False)
    tags: dict[str, bytes]
    public_key: oda.PublicKey

    def __iter__(self) -> Iterator[Any]:
        return iter((self.private_key, self.tags))


class CertificateOperations:
    """The ODA half of :class:`citycard.hsm.SoftHSM` (a mixin over its key store and key usage)."""

    _store: KeyStore
    _use: Callable[[str, str], tuple[KeyInfo, Any]]
    _clear: Callable[[str], Any]
    _forget: Callable[[str], None]

    # --- keys -----------------------------------------------------------------------------
    def create_test_ca(
        self,
        label: str,
        suite: Suite,
        *,
        rid: bytes = capk_module.UNIONPAY_RID,
        index: int,
        bits: int = RSA_CA_BITS_DEFAULT,
        exponent: int = 3,
        expiry: dt.date | None = None,
        replace: bool = False,
    ) -> Capk:
        """Generate a test CA for ``suite`` (never a scheme's key), store its private key under
        ``label`` and its CAPK in the CAPK table; return the CAPK. ``bits``/``exponent``: RSA only.
        """
        name = _capk_name(rid, index)
        self._check_new_label(label, replace=replace)
        if self._store.get_capk(name) is not None and not replace:
            raise HSMError(f"CAPK {name} already exists (use replace=True to overwrite it)")
        try:
            ca = capk_module.generate_test_ca(
                suite, rid=rid, index=index, bits=bits, exponent=exponent, expiry=expiry
            )
        except (CapkError, rsa.RSAError) as exc:
            raise HSMError(f"test CA {label!r}: {exc}") from None
        meta = {"rid": rid.hex().upper(), "index": index}
        self._put_private(label, "CA", suite, ca.private_key, meta=meta, replace=replace)
        self._store.put_capk(name, capk_to_record(ca.capk))
        return ca.capk

    def create_issuer_key(
        self,
        label: str,
        suite: Suite,
        *,
        bits: int = RSA_ISSUER_BITS_DEFAULT,
        exponent: int = 3,
        replace: bool = False,
    ) -> KeyInfo:
        """Generate an issuer ODA key pair (RSA ``bits``/``exponent`` for INTL, SM2 for GM)."""
        self._check_new_label(label, replace=replace)
        return self._put_private(
            label, "ISSUER", suite, _generate(suite, bits, exponent, label), replace=replace
        )

    def public_key(self, label: str) -> oda.PublicKey:
        """The public half of a stored CA or issuer key."""
        info = self._store.info(label)
        if info.key_type not in _TYPE_FOR.values():
            raise HSMError(f"key {label!r} (type {info.key_type}) has no public key")
        return oda.PublicKey.of(self._clear(label), info.suite)

    def _check_new_label(self, label: str, *, replace: bool) -> None:
        check_label(label)
        if label in self._store and not replace:
            raise HSMError(f"key label {label!r} already exists (use replace=True to overwrite it)")

    def _put_private(
        self,
        label: str,
        role: str,
        suite: Suite,
        private_key: PrivateKey,
        *,
        meta: dict[str, Any] | None = None,
        replace: bool,
    ) -> KeyInfo:
        type_name = _TYPE_FOR[role, suite.signature]
        kcv = public_fingerprint(oda.PublicKey.of(private_key, suite))
        encoded = encode_private_key(private_key)
        info = self._store.add(label, type_name, suite, encoded, kcv=kcv, meta=meta, replace=replace)
        self._forget(label)
        return info

    # --- certificates and signatures --------------------------------------------------------
    def sign_issuer_certificate(
        self,
        ca_label: str,
        issuer_label: str,
        *,
        issuer_identifier: str | bytes,
        expiry: str | bytes,
        serial: bytes,
    ) -> dict[str, bytes]:
        """The CA certifies the issuer key: tags 90 (+ 92, 9F32 for RSA) and 8F, the CA's index.

        ``issuer_identifier``: 3 to 8 leading PAN digits, or the 4-byte cn field; ``expiry`` MMYY;
        ``serial`` 3 bytes (Book 2 §5.1 Table 6; PBOC format 12).
        """
        ca_info, ca_key = self._use(ca_label, "certify-issuer")
        issuer_info = self._store.info(issuer_label)
        if not issuer_info.key_type.startswith("ISSUER-"):
            raise HSMError(f"key {issuer_label!r} (type {issuer_info.key_type}) is not an issuer key")
        if issuer_info.suite != ca_info.suite:
            raise HSMError(
                f"issuer key {issuer_label!r} is {issuer_info.suite.name}, CA {ca_label!r} is {ca_info.suite.name}"
            )
        if isinstance(issuer_identifier, str):
            digits = issuer_identifier
            if not digits.isdigit() or not 3 <= len(digits) <= 8:
                raise HSMError(f"issuer identifier must be 3 to 8 digits, got {issuer_identifier!r}")
            issuer_identifier = bytes.fromhex(digits.ljust(8, "F"))
        try:
            issued = oda.issuer_certificate(
                ca_key,
                self.public_key(issuer_label),
                issuer_id=issuer_identifier,
                expiry=expiry,
                serial=serial,
                suite=ca_info.suite,
            )
        except oda.ODAError as exc:
            raise HSMError(f"issuer certificate for {issuer_label!r}: {exc}") from None
        return {**issued.as_tags("issuer"), "8F": bytes([self._store.meta(ca_label)["index"]])}

    def create_icc_key_and_certificate(
        self,
        issuer_label: str,
        *,
        pan: str,
        expiry: str | bytes,
        serial: bytes,
        static_data: bytes,
        bits: int = RSA_ICC_BITS_DEFAULT,
        exponent: int = 3,
    ) -> IccKeyAndCertificate:
        """A fresh ICC key pair and its certificate by the issuer key (9F46, + 9F48, 9F47 for RSA).

        The ICC private key is returned for the card image (the one allowed export of a private
        key) and not stored. ``static_data`` is the static data to be authenticated (Book 2 §6.1).
        """
        info, issuer_key = self._use(issuer_label, "certify-icc")
        icc_private = _generate(info.suite, bits, exponent, f"ICC key for {issuer_label!r}")
        icc_public = oda.PublicKey.of(icc_private, info.suite)
        try:
            issued = oda.icc_certificate(
                issuer_key,
                icc_public,
                pan=pan,
                expiry=expiry,
                serial=serial,
                static_data=static_data,
                suite=info.suite,
            )
        except oda.ODAError as exc:
            raise HSMError(f"ICC certificate by {issuer_label!r}: {exc}") from None
        return IccKeyAndCertificate(icc_private, issued.as_tags("icc"), icc_public)

    def sign_static_data(self, issuer_label: str, static_data: bytes, dac: bytes) -> bytes:
        """Signed static application data, tag 93, with the data authentication code ``dac`` (9F45)."""
        info, issuer_key = self._use(issuer_label, "sign-static-data")
        if len(dac) != DAC_BYTES:
            raise HSMError(f"data authentication code (9F45) must be {DAC_BYTES} bytes, got {len(dac)}")
        try:
            return oda.sign_static_data(issuer_key, static_data, tag_9f45=dac, suite=info.suite)
        except oda.ODAError as exc:
            raise HSMError(f"SDA by {issuer_label!r}: {exc}") from None

    # --- the CAPK table ---------------------------------------------------------------------
    def import_capk(
        self,
        rid: bytes,
        index: int,
        modulus: bytes,
        exponent: bytes,
        checksum: bytes,
        expiry: dt.date | None = None,
        *,
        suite: Suite | None = None,
        replace: bool = False,
    ) -> Capk:
        """Add a CA public key after checking its SHA-1 checksum (DF03) over RID ‖ index ‖ key ‖ exponent.

        For an SM2 CAPK ``modulus`` is the point x‖y and ``exponent`` is empty; ``suite`` defaults
        to GM then, INTL otherwise. Importing the same key again is a no-op; a different key under
        the same RID and index needs ``replace=True``.
        """
        suite = suite or (GM if not exponent else INTL)
        try:
            capk = Capk.from_record(
                rid=rid,
                index=index,
                suite=suite,
                key=modulus,
                exponent=exponent,
                checksum=checksum,
                expiry=expiry,
            )
        except CapkError as exc:
            raise HSMError(f"CAPK refused: {exc}") from None
        name = _capk_name(rid, index)
        existing = self._store.get_capk(name)
        if existing is not None and existing != capk_to_record(capk) and not replace:
            raise HSMError(f"a different CAPK {name} already exists (use replace=True to overwrite it)")
        self._store.put_capk(name, capk_to_record(capk))
        return capk

    def get_capk(self, rid: bytes, index: int) -> Capk:
        name = _capk_name(rid, index)
        record = self._store.get_capk(name)
        if record is None:
            raise HSMError(f"no CAPK {name} in the HSM")
        return capk_from_record(name, record)

    def list_capks(self) -> list[Capk]:
        return [capk_from_record(name, record) for name, record in self._store.capk_records()]


def _generate(suite: Suite, bits: int, exponent: int, what: str) -> PrivateKey:
    try:
        if suite.signature == "sm2":
            return sm2.generate_private_key()
        return rsa.generate_rsa_key(bits, exponent)
    except rsa.RSAError as exc:
        raise HSMError(f"{what}: {exc}") from None


__all__ = ["CertificateOperations", "IccKeyAndCertificate", "public_fingerprint"]
