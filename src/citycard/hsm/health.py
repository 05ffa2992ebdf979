"""The hospital SAM in the HSM: health-card keys and institution signing keys (pboc-notes §8.1).

A real hospital desk holds a SAM card that diversifies each health card's read and update keys
and runs EXTERNAL AUTHENTICATE and the secure-messaging writes (WS/T 543 SAM specification, not
public; UNCERTAIN). Here the SAM is the HSM: no clear health key ever leaves it.

Keys (labels):

- ``health-<gm|intl>-<ddf1|df01|df02|df03>-<rk|uk>``: the masters (type HEALTH-MK) of each DF's
  read key (RK) and update key (UK); a card's key is E(master)[D ‖ ~D] with D its chip serial
  (:func:`citycard.crypto.health_sm.diversify`). :meth:`create_health_masters` makes them.
- ``institution-<id>-<gm|intl>``: an institution's record-signing key (INSTITUTION-SM2 or
  INSTITUTION-RSA, RSA 2048 bits, e = 65537), from :meth:`create_institution_key`.

Operations, each by reference: the enciphered perso DGI 8060 and KCVs for loading
(:meth:`health_perso_keys`), the EXTERNAL AUTHENTICATE cryptogram (:meth:`health_auth_cryptogram`),
a whole secure-messaging command (:meth:`health_sm_command`), a record signature
(:meth:`sign_institution_record`) and an institution's public key and key id.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa as crypto_rsa

from citycard.crypto import health_sm, oda, record_signature, rsa, sm2
from citycard.crypto.keys import key_check_value
from citycard.crypto.suite import GM, INTL, Suite
from citycard.hsm.certificates import encode_private_key, public_fingerprint
from citycard.hsm.keytypes import KEY_TYPES, HSMError, KeyInfo, KeyType

# The SAM's key types (KEY_TYPES is the one table usages are checked against; these are additions).
HEALTH_TYPES = {
    "HEALTH-MK": KeyType(
        "HEALTH-MK",
        "symmetric",
        frozenset({"health-perso", "health-auth", "health-sm"}),
        "health card DF key master",
    ),
    "INSTITUTION-SM2": KeyType(
        "INSTITUTION-SM2", "sm2", frozenset({"sign-record"}), "institution record key, SM2"
    ),
    "INSTITUTION-RSA": KeyType(
        "INSTITUTION-RSA", "rsa", frozenset({"sign-record"}), "institution record key, RSA"
    ),
}
for _name, _type in HEALTH_TYPES.items():
    KEY_TYPES.setdefault(_name, _type)
USAGE_TEXT = {
    "health-perso": "derive health card keys for loading",
    "health-auth": "compute a health card authentication cryptogram",
    "health-sm": "build a health card secure-messaging command",
    "sign-record": "sign an institution's record",
}
SUITE_LABELS = {GM.name: "gm", INTL.name: "intl"}
DFS = ("DDF1", "DF01", "DF02", "DF03")
KEY_KINDS = ("RK", "UK")
KEY_NAMES = tuple(f"{df}-{kind}" for df in DFS for kind in KEY_KINDS)  # = card.health.files.KEY_NAMES
RSA_INSTITUTION_BITS = 2048
INSTITUTION_ID_CHARS = 16


def master_label(suite: Suite, df: str, kind: str, *, prefix: str = "health") -> str:
    """``health-gm-df02-uk`` …"""
    if df not in DFS or kind not in KEY_KINDS:
        raise HSMError(f"health key {df}-{kind}: DF one of {', '.join(DFS)}, kind RK or UK")
    return f"{prefix}-{SUITE_LABELS[suite.name]}-{df.lower()}-{kind.lower()}"


def institution_label(institution_id: str, suite: Suite) -> str:
    if not isinstance(institution_id, str) or not 1 <= len(institution_id) <= INSTITUTION_ID_CHARS:
        raise HSMError(
            f"institution id must be 1 to {INSTITUTION_ID_CHARS} characters, got {institution_id!r}"
        )
    return f"institution-{institution_id}-{SUITE_LABELS[suite.name]}"


class HealthPersoKeys(dict[str, str]):
    """What loading a health application needs of the HSM: ``dgi_8060`` (the eight card keys
    enciphered under the perso transport key) and ``dgi_9060`` (their KCVs), hex."""


class HealthSamOperations:
    """Mixed into :class:`~citycard.hsm.SoftHSM` (its key store, ``_use``, ``_clear``, ``_forget``)."""

    _store: Any
    _use: Any
    _clear: Any
    _forget: Any
    generate_key: Any
    encipher_perso_dgi: Any

    # --- the masters --------------------------------------------------------------------------
    def create_health_masters(self, suite: Suite, *, prefix: str = "health") -> list[KeyInfo]:
        """Generate the eight DF key masters of ``suite`` that are missing; return all eight."""
        out = []
        for name in KEY_NAMES:
            df, kind = name.split("-")
            label = master_label(suite, df, kind, prefix=prefix)
            if label in self._store:
                out.append(self._store.info(label))
            else:
                out.append(self.generate_key(label, "HEALTH-MK", suite))
        return out

    def _health_card_key(
        self, suite: Suite, df: str, kind: str, diversifier: bytes, usage: str, prefix: str
    ) -> bytes:
        label = master_label(suite, df, kind, prefix=prefix)
        info, master = self._use(label, usage)
        if info.suite != suite:
            raise HSMError(f"key {label!r} belongs to suite {info.suite.name}, not {suite.name}")
        try:
            return health_sm.diversify(master, diversifier=diversifier, suite=suite)
        except ValueError as exc:
            raise HSMError(f"health card key {df}-{kind}: {exc}") from None

    def health_perso_keys(
        self, suite: Suite, *, diversifier: bytes, perso_label: str = "perso-kek", prefix: str = "health"
    ) -> HealthPersoKeys:
        """DGI 8060 (RK‖UK of DDF1, DF01, DF02, DF03 for this card, enciphered under the perso
        transport key in ``suite``'s cipher) and DGI 9060 (KCVs): the keys never leave in clear."""
        keys = [
            self._health_card_key(suite, *name.split("-"), diversifier, "health-perso", prefix)
            for name in KEY_NAMES
        ]
        kcvs = b"".join(key_check_value(key, suite=suite) for key in keys)
        enciphered = self.encipher_perso_dgi(perso_label, suite, b"".join(keys))
        return HealthPersoKeys(dgi_8060=enciphered.hex().upper(), dgi_9060=kcvs.hex().upper())

    def health_auth_cryptogram(
        self, suite: Suite, *, df: str, diversifier: bytes, challenge: bytes, prefix: str = "health"
    ) -> bytes:
        """EXTERNAL AUTHENTICATE data for ``df``'s read key of this card and the card's challenge."""
        read_key = self._health_card_key(suite, df, "RK", diversifier, "health-auth", prefix)
        try:
            return health_sm.auth_cryptogram(read_key, challenge=challenge, suite=suite)
        except ValueError as exc:
            raise HSMError(f"authentication cryptogram: {exc}") from None

    def health_sm_command(
        self,
        suite: Suite,
        *,
        df: str,
        diversifier: bytes,
        challenge: bytes,
        header: bytes,
        plain: bytes,
        prefix: str = "health",
    ) -> bytes:
        """A whole secure-messaging write: ``header`` (CLA 04 INS P1 P2) ‖ Lc ‖ E(SK)[plain] ‖ MAC,
        SK the session key of ``df``'s update key and the card's challenge."""
        if len(header) != health_sm.HEADER_BYTES or header[0] != 0x04:
            raise HSMError("a health secure-messaging header is 04 INS P1 P2")
        update_key = self._health_card_key(suite, df, "UK", diversifier, "health-sm", prefix)
        try:
            session = health_sm.session_key(update_key, challenge=challenge, suite=suite)
            data = health_sm.wrap(session, header=header, plain=plain, suite=suite)
        except ValueError as exc:
            raise HSMError(f"secure-messaging command: {exc}") from None
        return header + bytes([len(data)]) + data

    # --- institution signing keys -------------------------------------------------------------------
    def create_institution_key(self, institution_id: str, suite: Suite, *, replace: bool = False) -> KeyInfo:
        """Generate ``institution_id``'s record-signing key: SM2 (GM) or RSA-2048, e = 65537 (INTL)."""
        label = institution_label(institution_id, suite)
        if label in self._store and not replace:
            raise HSMError(f"key label {label!r} already exists (use replace=True to overwrite it)")
        if suite.signature == "sm2":
            private: rsa.RsaPrivateKey | bytes = sm2.generate_private_key()
            type_name = "INSTITUTION-SM2"
        else:
            generated = crypto_rsa.generate_private_key(public_exponent=65537, key_size=RSA_INSTITUTION_BITS)
            private = rsa.RsaPrivateKey.from_cryptography(generated)
            type_name = "INSTITUTION-RSA"
        kcv = public_fingerprint(oda.PublicKey.of(private, suite))
        info = self._store.add(
            label,
            type_name,
            suite,
            encode_private_key(private),
            kcv=kcv,
            meta={"institution": institution_id},
            replace=replace,
        )
        self._forget(label)
        return info

    def _institution(self, institution_id: str, suite: Suite, usage: str) -> tuple[KeyInfo, Any]:
        label = institution_label(institution_id, suite)
        if label not in self._store:
            raise HSMError(f"the HSM holds no {suite.name} record key of institution {institution_id!r}")
        return self._use(label, usage)

    def institution_public_key(self, institution_id: str, suite: Suite) -> bytes:
        """The institution's public key: SM2 x‖y (64) or RSA DER SubjectPublicKeyInfo."""
        label = institution_label(institution_id, suite)
        if label not in self._store:
            raise HSMError(f"the HSM holds no {suite.name} record key of institution {institution_id!r}")
        info = self._store.info(label)
        if info.key_type not in ("INSTITUTION-SM2", "INSTITUTION-RSA"):
            raise HSMError(f"key {label!r} (type {info.key_type}) is no institution key")
        return record_signature.public_key_bytes(self._clear(label))

    def sign_institution_record(
        self, institution_id: str, suite: Suite, message: bytes, *, pss: bool = False
    ) -> tuple[int, bytes, bytes]:
        """(algorithm id, key id, signature) of ``message`` under the institution's key."""
        info, private = self._institution(institution_id, suite, "sign-record")
        algorithm = record_signature.algorithm_for(suite, pss=pss)
        public = record_signature.public_key_bytes(private)
        signing_key: Any = private
        if isinstance(private, rsa.RsaPrivateKey):  # the OpenSSL object, made once per key entry
            cache = self.__dict__.setdefault("_openssl_record_keys", {})
            cached = cache.get(info.label)
            if cached is None or cached[0] is not info:
                cached = cache[info.label] = (info, record_signature.openssl_private(private))
            signing_key = cached[1]
        try:
            signature = record_signature.sign(signing_key, message, algorithm=algorithm)
        except record_signature.SignatureError as exc:
            raise HSMError(f"institution {institution_id}: {exc}") from None
        return algorithm, record_signature.key_id(public, algorithm=algorithm), signature


__all__ = [
    "HEALTH_TYPES",
    "KEY_NAMES",
    "USAGE_TEXT",
    "HealthPersoKeys",
    "HealthSamOperations",
    "institution_label",
    "master_label",
]
