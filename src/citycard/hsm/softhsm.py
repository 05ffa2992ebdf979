"""The software HSM: keys by label, operations by key reference, clear keys only inside this object.

Every operation names a usage and the key's type must allow it (``keystore.KEY_TYPES``), so an
IMK-AC cannot MAC a script and an issuer key cannot certify an issuer. Two exports of clear keys
exist, both for personalising a card image: :meth:`SoftHSM.export_card_keys_for_personalisation`
(the card's AC/MAC/ENC keys) and the ICC private key returned by
:meth:`SoftHSM.create_icc_key_and_certificate`. Nothing else returns, logs or prints a clear key:
``repr`` shows the store and the key count, errors name labels and KCVs.

Unwrapped keys of recently used labels are kept in a bounded in-memory cache (``CACHE_KEYS_MAX``),
so an issuer verifying thousands of ARQCs a second unwraps its IMK once. Python cannot wipe
``bytes``; the cache is dropped with the object.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from citycard.crypto import cryptogram, iad, oda, script
from citycard.crypto.keys import adjust_odd_parity, derive_card_key, key_check_value, session_key
from citycard.crypto.suite import Suite
from citycard.hsm.capp import CappOperations
from citycard.hsm.cardimage import CardImageOperations, aes_key_check_value
from citycard.hsm.certificates import CertificateOperations, decode_private_key, public_fingerprint
from citycard.hsm.health import USAGE_TEXT as HEALTH_USAGE_TEXT
from citycard.hsm.health import HealthSamOperations
from citycard.hsm.keyexchange import KeyExchangeOperations
from citycard.hsm.keystore import KeyStore, default_store_path
from citycard.hsm.keytypes import KEY_TYPES, HSMError, KeyInfo, check_label, key_type
from citycard.hsm.masterkey import MASTER_KEY_BYTES, load_master_key
from citycard.hsm.pin import PinOperations
from citycard.hsm.tc_batch import TcBatchOperations

CACHE_KEYS_MAX = 256
CARD_KEY_KINDS = {"AC": "IMK-AC", "MAC": "IMK-MAC", "ENC": "IMK-ENC"}  # personalisation kind → IMK type
USAGE_TEXT = {
    "card-keys": "derive card keys for personalisation",
    "arqc": "verify an ARQC",
    "arpc": "generate an ARPC",
    "pin-block": "give the card AC key half of a PIN change block",
    "iad-mac": "verify the EC balance MAC of an IAD",
    "script-mac": "MAC an issuer script command",
    "script-enc": "encipher issuer script data",
    "certify-issuer": "sign an issuer public key certificate",
    "certify-icc": "sign an ICC public key certificate",
    "sign-static-data": "sign static application data",
    "card-image-seal": "seal a card image item",
    "card-image-open": "open a sealed card image item",
    "perso-encipher": "encipher a personalisation DGI",
    "perso-decipher": "decipher a personalisation DGI",
}
USAGE_TEXT.update(HEALTH_USAGE_TEXT)  # the hospital SAM (hsm/health.py)


class CardKeys(dict[str, bytes]):
    """Clear card keys by kind (``AC``/``MAC``/``ENC``) for a card image; ``repr`` shows KCVs only."""

    def __init__(self, keys: Mapping[str, bytes], *, suite: Suite):
        super().__init__(keys)
        self.suite = suite

    def kcvs(self) -> dict[str, str]:
        return {kind: key_check_value(key, suite=self.suite).hex().upper() for kind, key in self.items()}

    def __repr__(self) -> str:
        shown = ", ".join(f"{kind}: KCV {kcv}" for kind, kcv in self.kcvs().items())
        return f"CardKeys({self.suite.name}; {shown})"

    __str__ = __repr__


class SoftHSM(
    CertificateOperations,
    CardImageOperations,
    PinOperations,
    KeyExchangeOperations,
    CappOperations,
    HealthSamOperations,
    TcBatchOperations,
):
    """A software HSM over a :class:`KeyStore`. Build it with :meth:`open` or :meth:`ephemeral`.

    Symmetric operations are here; test CAs, issuer keys, certificates and CAPKs come from
    :class:`~citycard.hsm.certificates.CertificateOperations`, card-image sealing and perso DGI
    encipherment from :class:`~citycard.hsm.cardimage.CardImageOperations`.

    >>> from citycard.crypto import INTL
    >>> hsm = SoftHSM.ephemeral()
    >>> hsm.import_key("imk-ac", "IMK-AC", INTL, bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")).kcv_hex
    '08D7B4'
    >>> hsm
    SoftHSM(path=memory, keys=1)
    """

    def __init__(self, store: KeyStore):
        self._store = store
        self._cache: OrderedDict[str, tuple[KeyInfo, Any]] = OrderedDict()  # label → (entry info, material)
        self._cache_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        master_key_file: str | os.PathLike[str] | None = None,
    ) -> SoftHSM:
        """The HSM on the key-store file ``path`` (default ``<data dir>/hsm-keys.json``).

        The master key comes from ``master_key_file`` if given, else ``CITYCARD_HSM_MASTER_KEY``,
        else ``<data dir>/hsm-master.key`` (created on first use, mode 0600).
        """
        key_file = Path(master_key_file) if master_key_file is not None else None
        master_key, source = load_master_key(key_file)
        store_path = Path(path) if path is not None else default_store_path()
        return cls(KeyStore(master_key, path=store_path, master_key_source=source))

    @classmethod
    def ephemeral(cls) -> SoftHSM:
        """An HSM with a random master key and nothing on disk, for tests and demos."""
        return cls(KeyStore(secrets.token_bytes(MASTER_KEY_BYTES)))

    def __repr__(self) -> str:
        return f"SoftHSM(path={self._store.path or 'memory'}, keys={len(self._store)})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a SoftHSM holds clear keys and cannot be pickled")

    @property
    def path(self) -> Path | None:
        return self._store.path

    @property
    def master_kcv_hex(self) -> str:
        return self._store.master_kcv_hex

    # --- key management -------------------------------------------------------------------------
    def generate_key(self, label: str, key_type_name: str, suite: Suite, *, replace: bool = False) -> KeyInfo:
        """A random symmetric key (3DES keys with odd parity) stored under ``label``."""
        self._check_symmetric_type(key_type_name, "generate_key")
        key = secrets.token_bytes(suite.key_bytes)
        if suite.block_bytes == 8:
            key = adjust_odd_parity(key)
        return self._put_symmetric(label, key_type_name, suite, key, replace=replace)

    def import_key(
        self, label: str, key_type_name: str, suite: Suite, clear_key: bytes, *, replace: bool = False
    ) -> KeyInfo:
        """Store a known clear symmetric key (test IMKs, a key from a key ceremony) under ``label``."""
        self._check_symmetric_type(key_type_name, "import_key")
        if len(clear_key) != suite.key_bytes:
            raise HSMError(
                f"{suite.cipher.upper()} key must be {suite.key_bytes} bytes, got {len(clear_key)}"
            )
        return self._put_symmetric(label, key_type_name, suite, bytes(clear_key), replace=replace)

    def key_info(self, label: str) -> KeyInfo:
        return self._store.info(label)

    def list_keys(self) -> list[KeyInfo]:
        return self._store.infos()

    def delete_key(self, label: str) -> None:
        self._store.delete(label)
        self._forget(label)

    def check_keys(self) -> list[KeyInfo]:
        """Unwrap every key and check its KCV (an audit of the whole store); raises on the first bad one."""
        infos = self._store.infos()
        for info in infos:
            self._forget(info.label)
            self._clear(info.label)
        return infos

    def _check_symmetric_type(self, key_type_name: str, operation: str) -> None:
        kind = key_type(key_type_name).material
        if kind != "symmetric":
            maker = "card_image_key" if kind == "aes" else "create_test_ca or create_issuer_key"
            raise HSMError(f"{operation} makes 3DES/SM4 keys; a {key_type_name} key is made by {maker}")

    def _put_symmetric(
        self, label: str, key_type_name: str, suite: Suite, key: bytes, *, replace: bool
    ) -> KeyInfo:
        check_label(label)
        kcv = key_check_value(key, suite=suite)
        info = self._store.add(label, key_type_name, suite, key, kcv=kcv, replace=replace)
        self._forget(label)
        return info

    # --- the cache of unwrapped keys -------------------------------------------------------
    def _forget(self, label: str) -> None:
        with self._cache_lock:
            self._cache.pop(label, None)

    def _clear(self, label: str) -> Any:
        """The unwrapped key material of ``label`` (KCV checked on unwrap), from the cache if there.

        A cache entry counts only while the store still holds the very entry it was unwrapped from,
        so a key replaced or deleted (even by another thread mid-call) is never served stale.
        """
        info = self._store.info(label)
        with self._cache_lock:
            cached = self._cache.get(label)
            if cached is not None and cached[0] is info:
                self._cache.move_to_end(label)
                return cached[1]
        info, raw = self._store.unwrap(label)
        material = self._load_material(info, raw)
        with self._cache_lock:
            self._cache[label] = (info, material)
            while len(self._cache) > CACHE_KEYS_MAX:
                self._cache.popitem(last=False)
        return material

    def _load_material(self, info: KeyInfo, raw: bytes) -> Any:
        """Decode unwrapped key material and check it against the stored KCV or fingerprint."""
        kind = key_type(info.key_type).material
        if kind == "symmetric":
            material: Any = raw
            kcv = key_check_value(raw, suite=info.suite)
        elif kind == "aes":
            material, kcv = raw, aes_key_check_value(raw)
        else:
            material = decode_private_key(raw, info.suite)
            kcv = public_fingerprint(oda.PublicKey.of(material, info.suite))
        if kcv.hex().upper() != info.kcv_hex:
            raise HSMError(
                f"key {info.label!r} unwraps to KCV {kcv.hex().upper()}, but the store records {info.kcv_hex}"
            )
        return material

    def _use(self, label: str, usage: str) -> tuple[KeyInfo, Any]:
        """The key's info and material after checking that its type allows ``usage``."""
        info = self._store.info(label)
        if usage not in KEY_TYPES[info.key_type].usages:
            allowed = ", ".join(name for name, kt in KEY_TYPES.items() if usage in kt.usages)
            raise HSMError(
                f"key {label!r} (type {info.key_type}) may not {USAGE_TEXT[usage]} (that needs {allowed})"
            )
        return info, self._clear(label)

    def _card_key(self, label: str, usage: str, *, tag_5a: str, tag_5f34: str) -> tuple[Suite, bytes]:
        info, imk = self._use(label, usage)
        return info.suite, derive_card_key(imk, tag_5a=tag_5a, tag_5f34=tag_5f34, suite=info.suite)

    def _session_key(
        self, label: str, usage: str, *, tag_5a: str, tag_5f34: str, tag_9f36: bytes
    ) -> tuple[Suite, bytes]:
        suite, card_key = self._card_key(label, usage, tag_5a=tag_5a, tag_5f34=tag_5f34)
        return suite, session_key(card_key, tag_9f36=tag_9f36, suite=suite)

    # --- personalisation: the one export of clear symmetric keys ------------------------------
    def export_card_keys_for_personalisation(
        self, imk_labels: Mapping[str, str], *, tag_5a: str, tag_5f34: str, suite: Suite
    ) -> CardKeys:
        """Card keys (EMV option A or its SM4 variant) for personalising a card image.

        ``imk_labels`` maps a kind (``AC``, ``MAC``, ``ENC``) to the label of an IMK of that type
        and of ``suite``. This is the only call that returns clear symmetric keys; the result's
        ``repr`` shows KCVs only.
        """
        keys: dict[str, bytes] = {}
        for kind, label in imk_labels.items():
            wanted = CARD_KEY_KINDS.get(kind.upper())
            if wanted is None:
                raise HSMError(f"card key kind {kind!r} is not one of {', '.join(CARD_KEY_KINDS)}")
            info = self._store.info(label)
            if info.key_type != wanted:
                raise HSMError(
                    f"card key {kind.upper()} needs an {wanted} key; {label!r} has type {info.key_type}"
                )
            if info.suite != suite:
                raise HSMError(f"key {label!r} belongs to suite {info.suite.name}, not {suite.name}")
            keys[kind.upper()] = self._card_key(label, "card-keys", tag_5a=tag_5a, tag_5f34=tag_5f34)[1]
        return CardKeys(keys, suite=suite)

    # --- authorisation: ARQC and ARPC ------------------------------------------------------------
    def verify_arqc(
        self, imk_ac_label: str, *, tag_5a: str, tag_5f34: str, tag_9f36: bytes, data: bytes, tag_9f26: bytes
    ) -> bool:
        """True when ``tag_9f26`` is the card's cryptogram over ``data`` (the CDOL1 AC input).

        Card key from the IMK-AC, PBOC session key from the ATC, then the AC compared in constant
        time (JR/T 0025.7 / .17; pboc-notes §4.1–4.3). The suite is the key's.
        """
        suite, sk = self._session_key(
            imk_ac_label, "arqc", tag_5a=tag_5a, tag_5f34=tag_5f34, tag_9f36=tag_9f36
        )
        return cryptogram.verify_ac(sk, data, tag_9f26=tag_9f26, suite=suite)

    def generate_arpc(
        self,
        imk_ac_label: str,
        *,
        tag_5a: str,
        tag_5f34: str,
        tag_9f36: bytes,
        tag_9f26: bytes,
        tag_8a: bytes,
    ) -> bytes:
        """ARPC method 1 for the ARQC ``tag_9f26`` and response code ``tag_8a`` under the AC session key."""
        suite, sk = self._session_key(
            imk_ac_label, "arpc", tag_5a=tag_5a, tag_5f34=tag_5f34, tag_9f36=tag_9f36
        )
        return cryptogram.generate_arpc(sk, tag_9f26=tag_9f26, tag_8a=tag_8a, suite=suite)

    def verify_arqc_and_generate_arpc(
        self,
        imk_ac_label: str,
        *,
        tag_5a: str,
        tag_5f34: str,
        tag_9f36: bytes,
        data: bytes,
        tag_9f26: bytes,
        tag_8a: bytes,
    ) -> tuple[bool, bytes]:
        """(ARQC good, ARPC for ``tag_8a``) with one key derivation. The ARPC is computed either way:
        the issuer decides which response code to send when the ARQC fails.
        """
        self._use(imk_ac_label, "arpc")
        suite, sk = self._session_key(
            imk_ac_label, "arqc", tag_5a=tag_5a, tag_5f34=tag_5f34, tag_9f36=tag_9f36
        )
        ok = cryptogram.verify_ac(sk, data, tag_9f26=tag_9f26, suite=suite)
        return ok, cryptogram.generate_arpc(sk, tag_9f26=tag_9f26, tag_8a=tag_8a, suite=suite)

    def verify_iad_mac(
        self, imk_mac_label: str, *, tag_5a: str, tag_5f34: str, tag_9f36: bytes, tag_9f10: bytes
    ) -> bool:
        """True when the electronic-cash balance MAC in the PBOC IAD (9F10) is right for this ATC."""
        suite, sk = self._session_key(
            imk_mac_label, "iad-mac", tag_5a=tag_5a, tag_5f34=tag_5f34, tag_9f36=tag_9f36
        )
        iad_suite = iad.parse_iad(tag_9f10).suite
        if iad_suite != suite:
            raise HSMError(
                f"IAD (9F10) names suite {iad_suite.name}, but key {imk_mac_label!r} belongs to {suite.name}"
            )
        return iad.verify_iad_mac(sk, tag_9f10=tag_9f10, tag_9f36=tag_9f36)

    # --- issuer scripts -------------------------------------------------------------------------
    def script_command(
        self,
        imk_mac_label: str,
        *,
        tag_5a: str,
        tag_5f34: str,
        tag_9f36: bytes,
        tag_9f26: bytes,
        cla: int,
        ins: int,
        p1: int,
        p2: int,
        data: bytes,
    ) -> bytes:
        """A secure-messaging script command: header ‖ data ‖ 4-byte MAC under the MAC session key."""
        suite, sk = self._session_key(
            imk_mac_label, "script-mac", tag_5a=tag_5a, tag_5f34=tag_5f34, tag_9f36=tag_9f36
        )
        return script.build_script_command(
            sk, cla=cla, ins=ins, p1=p1, p2=p2, data=data, tag_9f36=tag_9f36, tag_9f26=tag_9f26, suite=suite
        )

    def ec_load_script(
        self,
        imk_mac_label: str,
        *,
        tag_5a: str,
        tag_5f34: str,
        tag_9f36: bytes,
        tag_9f26: bytes,
        new_balance_fen: int,
    ) -> bytes:
        """The electronic-cash top-up command ``04DA9F790A`` ‖ new balance (n12) ‖ MAC (圈存)."""
        suite, sk = self._session_key(
            imk_mac_label, "script-mac", tag_5a=tag_5a, tag_5f34=tag_5f34, tag_9f36=tag_9f36
        )
        return script.ec_load_command(
            sk, new_balance_fen=new_balance_fen, tag_9f36=tag_9f36, tag_9f26=tag_9f26, suite=suite
        )

    def pin_change_script(
        self,
        imk_mac_label: str,
        imk_enc_label: str,
        imk_ac_label: str,
        *,
        tag_5a: str,
        tag_5f34: str,
        tag_9f36: bytes,
        tag_9f26: bytes,
        new_pin: str,
        current_pin: str | None = None,
    ) -> bytes:
        """PIN CHANGE/UNBLOCK ``8424000x``: PIN block from the card AC key, enciphered under the ENC
        session key, MACed under the MAC session key. The three IMKs must share one suite.
        """
        where = {"tag_5a": tag_5a, "tag_5f34": tag_5f34}
        mac_suite, mac_sk = self._session_key(imk_mac_label, "script-mac", tag_9f36=tag_9f36, **where)
        enc_suite, enc_sk = self._session_key(imk_enc_label, "script-enc", tag_9f36=tag_9f36, **where)
        ac_suite, card_ac_key = self._card_key(imk_ac_label, "pin-block", **where)
        if not mac_suite == enc_suite == ac_suite:
            raise HSMError(
                f"PIN change keys must share one suite; got MAC {mac_suite.name}, ENC {enc_suite.name}, "
                f"AC {ac_suite.name}"
            )
        return script.pin_change_command(
            mac_session_key=mac_sk,
            enc_session_key=enc_sk,
            new_pin=new_pin,
            card_ac_key=card_ac_key,
            tag_9f36=tag_9f36,
            tag_9f26=tag_9f26,
            suite=mac_suite,
            current_pin=current_pin,
        )
