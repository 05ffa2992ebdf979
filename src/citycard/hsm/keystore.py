"""The software HSM's key store: every key wrapped under one master key, in a JSON file or in memory.

Wrapping is AES-256-GCM with a fresh 96-bit nonce per key; the associated data binds the wrapped
blob to its label, key type, suite and public metadata, so a blob copied to another entry does not
open. The file holds no clear key: per entry the type, suite, KCV, creation time and the wrapped
blob (base64 of nonce ‖ ciphertext ‖ tag); the master key's own KCV is stored too, so the wrong
master key is reported as such instead of as a pile of broken entries.

Key check values: a symmetric key's KCV is its leftmost 3 bytes encrypting one zero block
(:func:`citycard.crypto.keys.key_check_value`); an asymmetric key's "KCV" is a fingerprint, the
leftmost 3 bytes of SHA-256 over its public key (RSA modulus ‖ exponent, SM2 x ‖ y); the master
key's KCV is AES-256 encrypting one zero block, leftmost 3 bytes (:mod:`citycard.hsm.masterkey`).

One process owns a key-store file: each change rewrites the whole file atomically (temporary
file in the same directory, fsync, ``os.replace``), so a crash leaves the old or the new store,
never a torn one, but two writers would overwrite each other's additions.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from citycard.crypto.suite import SUITES, Suite
from citycard.hsm.keytypes import KEY_TYPES, HSMError, KeyInfo, check_label, key_type, suite_named
from citycard.hsm.masterkey import (
    KCV_BYTES,
    MASTER_KEY_BYTES,
    STORE_FILE_NAME,
    data_dir,
    fsync_dir,
    master_key_kcv,
)

NONCE_BYTES = 12
STORE_FORMAT = "citycard-hsm-keystore"
STORE_VERSION = 1
KEYS_MAX = 10_000  # the whole file is rewritten on each change; past this, use a real HSM
CAPKS_MAX = 1_024
STORE_FILE_BYTES_MAX = 64 * 1024 * 1024
WRAPPED_KEY_BYTES_MAX = 4_096  # an RSA-1984 PKCS#8 DER is about 1.2 KB


def default_store_path() -> Path:
    return data_dir() / STORE_FILE_NAME


@dataclass(frozen=True, slots=True)
class _Entry:
    info: KeyInfo
    meta: Mapping[str, Any]  # public metadata bound to the wrapped key (e.g. a CA's RID and index)
    wrapped: bytes  # nonce ‖ AES-GCM ciphertext ‖ tag


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _associated_data(label: str, key_type_name: str, suite: Suite, meta: Mapping[str, Any]) -> bytes:
    bound = {"v": STORE_VERSION, "label": label, "type": key_type_name, "suite": suite.name, "meta": meta}
    return json.dumps(bound, sort_keys=True, separators=(",", ":")).encode()


class KeyStore:
    """Wrapped keys by label plus public CAPK records, in a JSON file (``path``) or only in memory.

    Thread-safe: one lock guards the entries and the file.
    """

    def __init__(self, master_key: bytes, *, path: Path | None = None, master_key_source: str = "memory"):
        if len(master_key) != MASTER_KEY_BYTES:
            raise HSMError(f"master key must be {MASTER_KEY_BYTES} bytes, got {len(master_key)}")
        self._aead = AESGCM(master_key)
        self._master_kcv = master_key_kcv(master_key).hex().upper()
        self._master_key_source = master_key_source
        self.path = path
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._capks: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            self._load(path)

    def __repr__(self) -> str:
        return f"KeyStore(path={self.path or 'memory'}, keys={len(self._entries)})"

    @property
    def master_kcv_hex(self) -> str:
        return self._master_kcv

    # --- entries ----------------------------------------------------------------------------
    def add(
        self,
        label: str,
        key_type_name: str,
        suite: Suite,
        key_material: bytes,
        *,
        kcv: bytes,
        meta: Mapping[str, Any] | None = None,
        replace: bool = False,
    ) -> KeyInfo:
        """Wrap ``key_material`` under the master key and store it (and the file) under ``label``."""
        check_label(label)
        fixed_suite = key_type(key_type_name).suite_name
        if fixed_suite is not None and fixed_suite != suite.name:
            raise HSMError(f"a {key_type_name} key belongs to suite {fixed_suite}, not {suite.name}")
        meta = dict(meta or {})
        info = KeyInfo(label, key_type_name, suite, kcv.hex().upper(), _now())
        nonce = secrets.token_bytes(NONCE_BYTES)
        aad = _associated_data(label, key_type_name, suite, meta)
        entry = _Entry(info, meta, nonce + self._aead.encrypt(nonce, key_material, aad))
        with self._lock:
            if label in self._entries and not replace:
                raise HSMError(f"key label {label!r} already exists (use replace=True to overwrite it)")
            if label not in self._entries and len(self._entries) >= KEYS_MAX:
                raise HSMError(f"key store holds its maximum of {KEYS_MAX} keys")
            previous = self._entries.get(label)
            self._entries[label] = entry
            try:
                self._save()
            except OSError:
                self._restore(label, previous)
                raise
        return info

    def delete(self, label: str) -> None:
        with self._lock:
            previous = self._entry(label)
            del self._entries[label]
            try:
                self._save()
            except OSError:
                self._restore(label, previous)
                raise

    def info(self, label: str) -> KeyInfo:
        return self._entry(label).info

    def meta(self, label: str) -> Mapping[str, Any]:
        return self._entry(label).meta

    def infos(self) -> list[KeyInfo]:
        with self._lock:
            return [self._entries[label].info for label in sorted(self._entries)]

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, label: object) -> bool:
        return label in self._entries

    def unwrap(self, label: str) -> tuple[KeyInfo, bytes]:
        """The entry's info and its clear key material; only :class:`SoftHSM` calls this."""
        entry = self._entry(label)
        info = entry.info
        nonce, sealed = entry.wrapped[:NONCE_BYTES], entry.wrapped[NONCE_BYTES:]
        try:
            return info, self._aead.decrypt(
                nonce, sealed, _associated_data(label, info.key_type, info.suite, entry.meta)
            )
        except InvalidTag:
            raise HSMError(
                f"wrapped key {label!r} does not open under the master key (KCV {self._master_kcv}): "
                "the blob was altered or moved from another label, type or suite"
            ) from None

    def _entry(self, label: str) -> _Entry:
        try:
            return self._entries[label]
        except KeyError:
            raise HSMError(f"no key labelled {label!r} in {self._where()}") from None

    def _restore(self, label: str, previous: _Entry | None) -> None:
        if previous is None:
            self._entries.pop(label, None)
        else:
            self._entries[label] = previous

    # --- CAPKs (public, stored as given) ------------------------------------------------------
    def put_capk(self, name: str, record: dict[str, Any]) -> None:
        with self._lock:
            if name not in self._capks and len(self._capks) >= CAPKS_MAX:
                raise HSMError(f"key store holds its maximum of {CAPKS_MAX} CA public keys")
            previous = self._capks.get(name)
            self._capks[name] = record
            try:
                self._save()
            except OSError:
                if previous is None:
                    del self._capks[name]
                else:
                    self._capks[name] = previous
                raise

    def get_capk(self, name: str) -> dict[str, Any] | None:
        return self._capks.get(name)

    def capk_records(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return sorted(self._capks.items())

    # --- the file -------------------------------------------------------------------------
    def _where(self) -> str:
        return f"key store {self.path}" if self.path is not None else "the in-memory key store"

    def _document(self) -> dict[str, Any]:
        keys = {
            label: {
                "type": entry.info.key_type,
                "suite": entry.info.suite.name,
                "kcv": entry.info.kcv_hex,
                "created_at": entry.info.created_at.isoformat(),
                "meta": dict(entry.meta),
                "wrapped": base64.b64encode(entry.wrapped).decode("ascii"),
            }
            for label, entry in sorted(self._entries.items())
        }
        return {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "master_kcv": self._master_kcv,
            "keys": keys,
            "capks": dict(sorted(self._capks.items())),
        }

    def _save(self) -> None:
        if self.path is None:
            return
        text = json.dumps(self._document(), indent=1, sort_keys=False) + "\n"
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, self.path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        fsync_dir(self.path.parent)

    def _load(self, path: Path) -> None:
        size = path.stat().st_size
        if size > STORE_FILE_BYTES_MAX:
            raise HSMError(f"key store {path} is {size} bytes, more than the {STORE_FILE_BYTES_MAX} allowed")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HSMError(f"key store {path} is not valid JSON: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != STORE_FORMAT:
            raise HSMError(f"{path} is not a citycard HSM key store (no format {STORE_FORMAT!r})")
        if document.get("version") != STORE_VERSION:
            raise HSMError(
                f"key store {path} has version {document.get('version')!r}; this code reads {STORE_VERSION}"
            )
        stored_kcv = document.get("master_kcv")
        if stored_kcv != self._master_kcv:
            raise HSMError(
                f"master key does not open key store {path} (KCV of master key {self._master_kcv} "
                f"from {self._master_key_source} differs from the store's {stored_kcv})"
            )
        keys, capks = document.get("keys"), document.get("capks")
        if not isinstance(keys, dict) or not isinstance(capks, dict):
            raise HSMError(f"key store {path} must have 'keys' and 'capks' objects")
        if len(keys) > KEYS_MAX or len(capks) > CAPKS_MAX:
            raise HSMError(f"key store {path} holds more than {KEYS_MAX} keys or {CAPKS_MAX} CA public keys")
        self._entries = {label: _parse_entry(path, label, raw) for label, raw in keys.items()}
        self._capks = capks


def _parse_entry(path: Path, label: str, raw: Any) -> _Entry:
    def bad(what: str) -> HSMError:
        return HSMError(f"key store {path}, key {label!r}: {what}")

    try:
        check_label(label)
    except HSMError as exc:
        raise bad(str(exc)) from None
    if not isinstance(raw, dict):
        raise bad("entry must be an object")
    type_name, suite_name = raw.get("type"), raw.get("suite")
    if type_name not in KEY_TYPES:
        raise bad(f"unknown key type {type_name!r}")
    if suite_name not in {suite.name for suite in SUITES}:
        raise bad(f"unknown suite {suite_name!r}")
    if KEY_TYPES[type_name].suite_name not in (None, suite_name):
        raise bad(f"a {type_name} key cannot belong to suite {suite_name}")
    kcv = raw.get("kcv")
    if not isinstance(kcv, str) or not re.fullmatch(r"[0-9A-F]{6}", kcv):
        raise bad(f"KCV must be {2 * KCV_BYTES} upper-case hex digits, got {kcv!r}")
    try:
        created_at = dt.datetime.fromisoformat(raw.get("created_at", ""))
    except (TypeError, ValueError):
        raise bad(f"created_at {raw.get('created_at')!r} is not an ISO-8601 time") from None
    if created_at.tzinfo is None:
        raise bad(f"created_at {raw['created_at']!r} has no time zone")
    meta = raw.get("meta", {})
    if not isinstance(meta, dict):
        raise bad("meta must be an object")
    try:
        wrapped = base64.b64decode(raw.get("wrapped", ""), validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise bad("wrapped key is not base64") from None
    if not NONCE_BYTES + 16 < len(wrapped) <= WRAPPED_KEY_BYTES_MAX:
        raise bad(f"wrapped key has {len(wrapped)} bytes")
    info = KeyInfo(label, type_name, suite_named(suite_name), kcv, created_at.astimezone(dt.UTC))
    return _Entry(info, meta, wrapped)
