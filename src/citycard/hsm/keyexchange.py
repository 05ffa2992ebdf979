"""Key exchange operations of the software HSM: session keys generated here and sent out only
enciphered under a terminal or zone master key, with their check values.

Sign-on (pboc-notes §10; CUPS POS 0800 with F60.3 = 003, double-length keys) gives a peer a fresh
PIN key (PIK) and MAC key (MAK). The host generates both here, enciphers each under the peer's
master key (a ``TMK`` for a terminal, a ``ZMK`` for a bank or switch) and returns them in field 62:

====  ======  ==============================================================
from  bytes   content
====  ======  ==============================================================
0     16      PIK enciphered under the master key (ECB; 2 blocks 3DES, 1 SM4)
16    4       PIK check value: first 4 bytes of the PIK encrypting a zero block
20    16      MAK enciphered under the master key
36    4       MAK check value
====  ======  ==============================================================

This is the usual CUPS POS layout of the 签到 reply for double-length keys (16-byte key + 4-byte
check value per key, PIK first) — UNCERTAIN against the current CUPS POS document; a GM (SM4)
terminal uses the same layout with SM4 keys (also UNCERTAIN).

Session keys are *volatile*: they live in this object's memory only, under the labels
``pik:<peer>`` and ``mak:<peer>``, never in the key store file. After a restart every peer signs
on again (that is what CUPS terminals do each day anyway). Both sides use the same calls: the host
:meth:`~KeyExchangeOperations.generate_session_keys`, the terminal
:meth:`~KeyExchangeOperations.install_session_keys` from the F62 it received.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from citycard.crypto.keys import adjust_odd_parity, key_check_value
from citycard.crypto.mac import pad_method_2
from citycard.crypto.suite import Suite
from citycard.hsm.keystore import KeyStore
from citycard.hsm.keytypes import KEY_TYPES, HSMError, KeyInfo, check_label

F62_KEY_BYTES = 16  # a double-length 3DES key or an SM4 key
F62_CHECK_BYTES = 4  # CUPS POS check value length (UNCERTAIN: some hosts send 8)
F62_SESSION_BYTES = 2 * (F62_KEY_BYTES + F62_CHECK_BYTES)
MAC_BYTES = 8  # ISO 8583 F64 is b64
PIN_BLOCK_BYTES = 8  # ISO 9564-1 format 0
SESSION_KEY_KINDS = ("PIK", "MAK")  # order in F62
SESSION_USAGES = {"PIK": frozenset({"pin-encipher", "pin-decipher"}), "MAK": frozenset({"mac"})}
SESSION_PEERS_MAX = 100_000  # bound on the volatile table: one entry per signed-on terminal or bank


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The result of a key exchange: labels of the volatile keys, F62 to send, and the check values."""

    peer: str
    suite: Suite
    pik_label: str
    mak_label: str
    f62: bytes  # PIK‖check‖MAK‖check, keys enciphered under the master key
    pik_kcv_hex: str
    mak_kcv_hex: str

    def __repr__(self) -> str:
        return f"SessionKeys({self.peer}, {self.suite.name}; PIK KCV {self.pik_kcv_hex}, MAK KCV {self.mak_kcv_hex})"


def session_label(kind: str, peer: str) -> str:
    """``pik:<peer>`` / ``mak:<peer>``; the peer is an F41 terminal ID or an F32 institution code.

    >>> session_label("MAK", "T0000001")
    'mak:T0000001'
    """
    if kind not in SESSION_KEY_KINDS:
        raise HSMError(f"session key kind must be PIK or MAK, got {kind!r}")
    return check_label(f"{kind.lower()}:{peer}")


def check_value(key: bytes, suite: Suite) -> bytes:
    """The 4-byte check value of a session key (the key encrypting one zero block)."""
    return key_check_value(key, suite=suite, length=F62_CHECK_BYTES)


class KeyExchangeOperations:
    """The key-exchange half of :class:`citycard.hsm.SoftHSM` (a mixin over its key store and key usage)."""

    _store: KeyStore
    _use: Callable[[str, str], tuple[KeyInfo, Any]]
    _clear: Callable[[str], Any]

    # --- the volatile session-key table ----------------------------------------------------------
    def _sessions(self) -> tuple[dict[str, tuple[Suite, str, bytes]], threading.Lock]:
        # created lazily: the mixin has no __init__ of its own; dict.setdefault is atomic
        table = self.__dict__.setdefault("_session_keys", {})
        lock = self.__dict__.setdefault("_session_lock", threading.Lock())
        return table, lock

    def _master_key(self, label: str) -> tuple[Suite, bytes]:
        info = self._store.info(label)
        if "key-exchange" not in KEY_TYPES[info.key_type].usages:
            raise HSMError(
                f"key {label!r} (type {info.key_type}) may not encipher session keys (that needs TMK or ZMK)"
            )
        return info.suite, self._clear(label)

    def _session(self, label: str, usage: str) -> tuple[Suite, bytes]:
        table, _ = self._sessions()
        entry = table.get(label)
        if entry is None:
            raise HSMError(f"no session key {label!r}: the peer has not signed on since the HSM started")
        suite, kind, key = entry
        if usage not in SESSION_USAGES[kind]:
            raise HSMError(f"session key {label!r} ({kind}) may not be used for {usage}")
        return suite, key

    def _put_sessions(self, peer: str, suite: Suite, keys: dict[str, bytes]) -> None:
        table, lock = self._sessions()
        labels = {kind: session_label(kind, peer) for kind in keys}
        with lock:
            if len(table) + len(keys) > 2 * SESSION_PEERS_MAX and labels["MAK"] not in table:
                raise HSMError(f"session key table full ({SESSION_PEERS_MAX} peers)")
            for kind, key in keys.items():
                table[labels[kind]] = (suite, kind, key)

    def has_session_key(self, label: str) -> bool:
        return label in self._sessions()[0]

    def session_key_kcv(self, label: str) -> str:
        """The 4-byte check value (hex) of a volatile session key."""
        table, _ = self._sessions()
        if label not in table:
            raise HSMError(f"no session key {label!r}")
        suite, _, key = table[label]
        return check_value(key, suite).hex().upper()

    def drop_session_keys(self, peer: str) -> None:
        """Forget a peer's PIK and MAK (sign-off)."""
        table, lock = self._sessions()
        with lock:
            for kind in SESSION_KEY_KINDS:
                table.pop(session_label(kind, peer), None)

    # --- key exchange ---------------------------------------------------------------------------
    def generate_session_keys(self, master_label: str, *, peer: str) -> SessionKeys:
        """Fresh PIK and MAK for ``peer``, kept here and returned enciphered under ``master_label``.

        The master key's suite decides the session keys' suite (3DES keys get odd parity).
        """
        suite, master = self._master_key(master_label)
        keys: dict[str, bytes] = {}
        for kind in SESSION_KEY_KINDS:
            key = secrets.token_bytes(suite.key_bytes)
            keys[kind] = adjust_odd_parity(key) if suite.block_bytes == 8 else key
        f62 = b"".join(
            suite.ecb_encrypt(master, keys[k]) + check_value(keys[k], suite) for k in SESSION_KEY_KINDS
        )
        self._put_sessions(peer, suite, keys)
        return SessionKeys(
            peer=peer,
            suite=suite,
            pik_label=session_label("PIK", peer),
            mak_label=session_label("MAK", peer),
            f62=f62,
            pik_kcv_hex=check_value(keys["PIK"], suite).hex().upper(),
            mak_kcv_hex=check_value(keys["MAK"], suite).hex().upper(),
        )

    def install_session_keys(self, master_label: str, *, peer: str, f62: bytes) -> SessionKeys:
        """Decipher the PIK and MAK of a sign-on reply (F62) under ``master_label`` and keep them.

        Each key's check value must match, else :class:`HSMError` and nothing is installed.
        """
        if len(f62) < F62_SESSION_BYTES:
            raise HSMError(f"F62 must hold {F62_SESSION_BYTES} bytes of session keys, got {len(f62)}")
        suite, master = self._master_key(master_label)
        keys: dict[str, bytes] = {}
        step = F62_KEY_BYTES + F62_CHECK_BYTES
        for index, kind in enumerate(SESSION_KEY_KINDS):
            part = f62[index * step : (index + 1) * step]
            key = suite.ecb_decrypt(master, part[:F62_KEY_BYTES])
            expected, got = part[F62_KEY_BYTES:], check_value(key, suite)
            if not hmac.compare_digest(expected, got):
                raise HSMError(
                    f"{kind} from F62 has check value {got.hex().upper()}, the host sent {expected.hex().upper()}"
                    f" (wrong master key {master_label!r}?)"
                )
            keys[kind] = key
        self._put_sessions(peer, suite, keys)
        return SessionKeys(
            peer=peer,
            suite=suite,
            pik_label=session_label("PIK", peer),
            mak_label=session_label("MAK", peer),
            f62=bytes(f62[:F62_SESSION_BYTES]),
            pik_kcv_hex=check_value(keys["PIK"], suite).hex().upper(),
            mak_kcv_hex=check_value(keys["MAK"], suite).hex().upper(),
        )

    # --- MAC and PIN under session keys ---------------------------------------------------------
    def session_mac(self, mak_label: str, data: bytes) -> bytes:
        """The 8-byte F64 MAC over ``data`` under a session MAK: ISO 9797-1 padding method 2, then
        MAC algorithm 3 (INTL) or SM4 CBC-MAC (GM), leftmost 8 bytes — as :mod:`citycard.iso8583.mac`.
        """
        suite, key = self._session(mak_label, "mac")
        return suite.block_mac(key, pad_method_2(bytes(data), suite.block_bytes))[:MAC_BYTES]

    def verify_session_mac(self, mak_label: str, data: bytes, mac: bytes) -> bool:
        """Constant-time check of an F64 MAC under a session MAK."""
        return hmac.compare_digest(self.session_mac(mak_label, data), bytes(mac))

    def encipher_pin_block(self, pik_label: str, *, pin: str, pan: str) -> bytes:
        """F52: the ISO 9564-1 format 0 PIN block enciphered under the session PIK (terminal side).

        INTL: 3DES ECB of the 8-byte block (F52). GM: SM4 ECB of the block padded by ISO 9797-1
        method 2 to 16 bytes (SM4 is approved for PIN encipherment by GB/T 21078.4-2023 = ISO 9564-2
        MOD); 16 bytes do not fit F52 (b64), so GM terminals send it in F57 (docs/hosts.md "Online
        PIN"; the padding convention and the field are UNCERTAIN for CUPS).
        """
        suite, key = self._session(pik_label, "pin-encipher")
        block = pin_block_format_0(pin, pan)
        if suite.block_bytes == PIN_BLOCK_BYTES:
            return suite.ecb_encrypt(key, block)
        return suite.ecb_encrypt(key, pad_method_2(block, suite.block_bytes)[: suite.block_bytes])

    def session_key_suite(self, label: str) -> Suite:
        """The suite of a volatile session key (that of the master key it came under)."""
        table, _ = self._sessions()
        if label not in table:
            raise HSMError(f"no session key {label!r}")
        return table[label][0]

    def translate_pin_block(self, pik_label: str, to_label: str, *, pin_block: bytes) -> bytes:
        """Re-encipher an F52 PIN block from a terminal's session PIK to a stored PIN key (the issuer's
        zone PIN key), inside the HSM: the clear block never leaves this method.

        From a 3DES PIK: 8 bytes; from an SM4 PIK: 16 bytes whose clear form ends in the method-2
        padding. To a 3DES key: the 8-byte block. To an SM4 key: block ‖ 80 00…00 (ISO 9797-1 method 2
        to 16 bytes), the convention the issuer's :meth:`verify_pin_block` expects — UNCERTAIN for CUPS GM.
        """
        suite, pik = self._session(pik_label, "pin-decipher")
        if len(pin_block) != suite.block_bytes:
            raise HSMError(
                f"PIN block under a {suite.cipher.upper()} PIK must be {suite.block_bytes} bytes, "
                f"got {len(pin_block)}"
            )
        info = self._store.info(to_label)
        if info.key_type != "PIN":
            raise HSMError(
                f"key {to_label!r} (type {info.key_type}) is not a PIN key; translation needs type PIN"
            )
        clear = suite.ecb_decrypt(pik, bytes(pin_block))
        if suite.block_bytes > PIN_BLOCK_BYTES:
            padding = clear[PIN_BLOCK_BYTES:]
            clear = clear[:PIN_BLOCK_BYTES]
            if not hmac.compare_digest(padding, b"\x80" + bytes(suite.block_bytes - PIN_BLOCK_BYTES - 1)):
                raise HSMError("the SM4 PIN block does not decipher to a padded format-0 block")
        target = self._clear(to_label)
        if info.suite.block_bytes > PIN_BLOCK_BYTES:
            clear += b"\x80" + bytes(info.suite.block_bytes - PIN_BLOCK_BYTES - 1)
        return info.suite.ecb_encrypt(target, clear)


def pin_block_format_0(pin: str, pan: str) -> bytes:
    """ISO 9564-1 format 0: (0 ‖ len ‖ PIN ‖ F-padding) XOR (0000 ‖ 12 rightmost PAN digits before the check digit).

    >>> pin_block_format_0("1234", "4000001234567899").hex().upper()
    '041234FEDCBA9876'
    """
    if not (4 <= len(pin) <= 12 and pin.isdigit()):
        raise HSMError("PIN must be 4 to 12 digits")
    if not (13 <= len(pan) <= 19 and pan.isdigit()):
        raise HSMError("PAN must be 13 to 19 digits")
    pin_field = bytes.fromhex(f"0{len(pin):X}{pin}".ljust(16, "F"))
    pan_field = bytes.fromhex("0000" + pan[-13:-1])
    return bytes(a ^ b for a, b in zip(pin_field, pan_field, strict=True))
