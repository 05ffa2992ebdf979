"""Batch TC verification for clearing: many offline TCs and IAD balance MACs in one HSM call.

The same checks as :meth:`SoftHSM.verify_arqc` and :meth:`SoftHSM.verify_iad_mac` (pboc-notes
§2.4, §4.1–4.3), arranged for thousands of taps of a few thousand cards: each IMK is unwrapped and
checked for its usage once per call, the card keys of all the call's cards come from ONE ECB call
per IMK (option A's Y ‖ Y⊕FF…FF of every card, one after another), and the session keys of all of a
card's ATCs from ONE ECB call under that card key (the session-key input blocks
000000000000‖ATC ‖ 000000000000‖ATC⊕FFFF of every ATC; ECB encrypts each block alone). Only the
two MACs per tap need a key of their own. The MACs and the session-key ECB run on the system's
libcrypto when it is usable (:mod:`citycard.crypto.libcrypto`: re-keyed contexts instead of fresh
``cryptography`` ones), else on ``cryptography``. Clear keys exist only inside
this function (the HSM layer); the caller gets a reason or ``None`` per tap.
"""

from __future__ import annotations

import hmac
import os
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import algorithms, modes

from citycard.crypto import libcrypto
from citycard.crypto.blockcipher import _encryptor  # the verified context constructor (blockcipher)
from citycard.crypto.keys import adjust_odd_parity, option_a_input
from citycard.crypto.mac import pad_method_2, retail_mac, sm4_cbc_mac
from citycard.crypto.suite import SUITES, Suite

TAPS_PER_CALL_MAX = 100_000  # a worker's partition is far smaller
ATCS_PER_CARD_MAX = 65_536  # a 2-byte ATC

_SUITES = {suite.name: suite for suite in SUITES}
_BY_IAD_ID = {suite.iad_algorithm_id: suite for suite in SUITES}
_SIX_ZEROS = bytes(6)
_INVERT = bytes(255 - b for b in range(256))  # bytes.translate table: every bit flipped
_ECB, _CBC_8, _CBC_16 = modes.ECB(), modes.CBC(bytes(8)), modes.CBC(bytes(16))  # immutable, shared


class TapToVerify(NamedTuple):
    """One offline tap: the card, its ATC (9F36), the AC input, the TC (9F26) and the IAD (9F10)."""

    tag_5a: str
    tag_5f34: str
    tag_9f36: bytes
    ac_input: bytes
    tag_9f26: bytes
    tag_9f10: bytes


def _session_keys(card_key: bytes, atcs: Sequence[bytes], suite: Suite, ecb: Any) -> list[bytes]:
    """The PBOC session keys of ``atcs`` under one card key, in one ECB call ``ecb(key, blocks)``
    (crypto.keys.session_key)."""
    zeros, invert = _SIX_ZEROS, _INVERT
    blocks = b"".join([zeros + atc + zeros + atc.translate(invert) for atc in atcs])  # ATC ⊕ FFFF
    out = ecb(card_key, blocks)
    keys = [out[i : i + 16] for i in range(0, len(out), 16)]
    return [adjust_odd_parity(key) for key in keys] if suite.block_bytes == 8 else keys


def _card_keys(imk: bytes, cards: Sequence[tuple[str, str]], suite: Suite) -> list[bytes]:
    """crypto.keys.derive_card_key of every (PAN, PSN) under one issuer master key, in one ECB call:
    option A's Y ‖ (Y ⊕ FF…FF) of every card one after another (two 3DES blocks or one SM4 block
    each; ECB encrypts each block alone), 16 bytes of key per card."""
    suite.check_key(imk, "issuer master key")
    invert = _INVERT
    blocks = []
    for pan, psn in cards:
        y = option_a_input(tag_5a=pan, tag_5f34=psn)
        blocks.append(y + y.translate(invert))
    out = suite.master_ecb_encrypt(imk, b"".join(blocks))
    keys = [out[i : i + 16] for i in range(0, len(out), 16)]
    return [adjust_odd_parity(key) for key in keys] if suite.block_bytes == 8 else keys


def _retail_mac(key: bytes, data: bytes) -> bytes:
    """crypto.mac.retail_mac (ISO/IEC 9797-1 MAC algorithm 3, IV zero) over padded ``data`` of two
    blocks or more, without the layers between it and the cipher context: single DES (K1‖K1‖K1) CBC
    over all blocks but the last, then one 3DES (K1‖K2‖K1) of chaining value ⊕ last block."""
    k1 = key[:8]
    chaining = _encryptor(TripleDES(k1 + k1 + k1), _CBC_8).update(data[:-8])[-8:]
    last = (int.from_bytes(chaining, "big") ^ int.from_bytes(data[-8:], "big")).to_bytes(8, "big")
    return _encryptor(TripleDES(key + k1), _ECB).update(last)


def _sm4_cbc_mac(key: bytes, data: bytes) -> bytes:
    """crypto.mac.sm4_cbc_mac (IV zero) over padded ``data``, straight to the cipher context."""
    return _encryptor(algorithms.SM4(key), _CBC_16).update(data)[-16:]


_BLOCK_MACS = {"INTL": _retail_mac, "GM": _sm4_cbc_mac}


# ISO/IEC 9797-1 padding method 2 by block size: the suffix for data of length ≡ i (mod block)
_PADS = {block: [pad_method_2(bytes(i), block)[i:] for i in range(block)] for block in (8, 16)}


def _block_ciphers() -> tuple[dict[str, Any], dict[str, Any]]:
    """Per suite name, for one call: the block MAC, and ECB under a key used once (session keys) —
    libcrypto's when usable, else cryptography's."""
    fast = libcrypto.load()
    if fast is None:
        return _BLOCK_MACS, {suite.name: suite.ecb_encrypt for suite in SUITES}
    macs = {"INTL": fast.retail_mac, "GM": fast.sm4_cbc_mac}
    return macs, {"INTL": fast.tdes_ecb_encrypt, "GM": fast.sm4_ecb_encrypt}


def _same_as_crypto_mac() -> bool:
    """The direct MACs above give crypto.mac's answers (checked once, on import)."""
    key, data = bytes(range(1, 17)), bytes(range(40, 88))
    return _retail_mac(key, data[:40]) == retail_mac(key, data[:40]) and _sm4_cbc_mac(
        key, data
    ) == sm4_cbc_mac(key, data)


assert _same_as_crypto_mac(), "tc_batch's direct MACs disagree with crypto.mac"


class TcBatchOperations:
    """Mixed into :class:`~citycard.hsm.SoftHSM` (its ``_use``)."""

    _use: Any

    def verify_taps(
        self,
        taps: Sequence[TapToVerify | tuple[str, str, bytes, bytes, bytes, bytes]],
        labels: Mapping[str, Any],
    ) -> list[str | None]:
        """Per tap, ``None`` when its TC and its IAD EC balance MAC verify, else why not.

        ``labels`` maps a suite name (``INTL``/``GM``) to an object with ``imk_ac`` and ``imk_mac``
        labels in this HSM (clearing's SuiteLabels); the suite of a tap is its IAD's algorithm id (byte 8).
        The IAD must carry the EC balance IDD (clearing's parser checks it before).
        """
        if len(taps) > TAPS_PER_CALL_MAX:
            raise ValueError(f"{len(taps)} taps in one call; limit {TAPS_PER_CALL_MAX}")
        reasons: list[str | None] = [None] * len(taps)
        groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)  # (suite, PAN, PSN) → taps
        for index, (pan, psn, _, _, _, iad) in enumerate(taps):  # plain tuples in this order do too
            suite = _BY_IAD_ID.get(iad[7]) if len(iad) >= 19 else None
            if suite is None:
                reasons[index] = "IAD 9F10 names no known algorithm or has no EC balance"
            elif suite.name not in labels:
                reasons[index] = f"no issuer keys for suite {suite.name}"
            else:
                groups[(suite.name, pan, psn)].append(index)
        imks: dict[str, tuple[bytes, bytes]] = {}
        for name in {suite for suite, _, _ in groups}:
            wanted = labels[name]
            ac_info, imk_ac = self._use(wanted.imk_ac, "arqc")
            mac_info, imk_mac = self._use(wanted.imk_mac, "iad-mac")
            if ac_info.suite.name != name or mac_info.suite.name != name:
                raise ValueError(f"labels for suite {name} name keys of another suite")
            imks[name] = (imk_ac, imk_mac)
        block_macs, ecbs = _block_ciphers()
        cards: dict[str, list[tuple[str, str]]] = defaultdict(list)  # suite → its cards, in groups' order
        for name, pan, psn in groups:
            cards[name].append((pan, psn))
        card_keys = {  # (suite, PAN, PSN) → (AC card key, MAC card key)
            (name, pan, psn): pair
            for name, members in cards.items()
            for (pan, psn), pair in zip(
                members,
                zip(
                    _card_keys(imks[name][0], members, _SUITES[name]),
                    _card_keys(imks[name][1], members, _SUITES[name]),
                    strict=True,
                ),
                strict=True,
            )
        }
        native = _native_verify()
        if native is not None and _verify_native(native, taps, groups, card_keys, reasons):
            return reasons
        for group, indexes in groups.items():
            card_ac, card_mac = card_keys[group]
            _verify_card(taps, indexes, group[0], card_ac, card_mac, block_macs, ecbs, reasons)
        return reasons


def _verify_card(
    taps: Sequence[Any],
    indexes: Sequence[int],
    name: str,
    card_ac: bytes,
    card_mac: bytes,
    block_macs: Mapping[str, Any],
    ecbs: Mapping[str, Any],
    reasons: list[str | None],
) -> None:
    """The taps ``indexes`` of one card (suite ``name``, its AC and MAC card keys) in Python: why
    each does not verify into ``reasons``."""
    suite = _SUITES[name]
    block_mac, ecb, pads = block_macs[name], ecbs[name], _PADS[suite.block_bytes]
    balance_pad = b"\x00" + pads[8 % len(pads)]  # after ATC ‖ balance: 00, then method 2
    atcs = [taps[i][2] for i in indexes]
    ac_keys = _session_keys(card_ac, atcs, suite, ecb)
    mac_keys = _session_keys(card_mac, atcs, suite, ecb)
    for index, ac_key, mac_key in zip(indexes, ac_keys, mac_keys, strict=True):
        _, _, atc, ac_input, tc, iad = taps[index]
        # crypto.cryptogram.pboc_mac without its argument checks (the inputs are built here),
        # padded by method 2 (pads: the suffix by length modulo the block)
        ac_data = ac_input + pads[len(ac_input) % len(pads)]
        if not hmac.compare_digest(block_mac(ac_key, ac_data)[:8], tc):
            reasons[index] = f"TC 9F26 does not verify ({name})"
            continue
        # 9F10: 8 standard bytes, then 0A 01 balance(5) MAC(4) (pboc-notes §2.4); MAC input
        # ATC ‖ balance ‖ 00, 8 bytes: padded, two blocks of 8 or one of 16
        balance_mac = block_mac(mac_key, atc + iad[10:15] + balance_pad)[:4]
        if not hmac.compare_digest(balance_mac, iad[15:19]):
            reasons[index] = f"IAD EC balance MAC does not verify ({name})"


NATIVE_ENV = "CITYCARD_NATIVE"  # "0": never use the C loop (as clearing.record.NATIVE_ENV)
_SUITE_CODES = {"INTL": 0, "GM": 1}  # hsm._tc_native's suite numbers
_native_lock = threading.Lock()
_native_state: dict[str, Any] = {}  # "verify": the checked C function, or None


def _verify_native(
    native: Any,
    taps: Sequence[Any],
    groups: Mapping[tuple[str, str, str], list[int]],
    card_keys: Mapping[tuple[str, str, str], tuple[bytes, bytes]],
    reasons: list[str | None],
) -> bool:
    """Every grouped tap verified by the C loop (``hsm._tc_native.verify``), its reasons into
    ``reasons``; ``False`` (nothing written) when a tap is not in the shape the C loop takes —
    then the Python loop answers, as it would have."""
    order: list[int] = []
    tap_list: list[Any] = []
    key_list: list[tuple[int, bytes, bytes]] = []
    for group, indexes in groups.items():
        pair = (_SUITE_CODES[group[0]], *card_keys[group])
        order += indexes
        tap_list += [taps[i] for i in indexes]
        key_list += [pair] * len(indexes)
    try:
        statuses = native(tap_list, key_list)
    except (TypeError, ValueError):
        return False
    for index, status in zip(order, statuses, strict=True):
        if status:
            name = _BY_IAD_ID[taps[index][5][7]].name
            reasons[index] = (
                f"TC 9F26 does not verify ({name})"
                if status == 1
                else f"IAD EC balance MAC does not verify ({name})"
            )
    return True


def _native_verify() -> Any:
    """``hsm._tc_native.verify`` bound to the libcrypto :mod:`~citycard.crypto.libcrypto` opened,
    once per process, and only when it answers what the Python loop answers on sample taps of both
    suites (good, bad TC, bad balance MAC); else ``None`` — not built, no usable libcrypto, a
    disagreement, or ``CITYCARD_NATIVE=0``."""
    if os.environ.get(NATIVE_ENV, "1") == "0" or os.environ.get(libcrypto.DISABLE_ENV, "1") == "0":
        return None
    with _native_lock:
        if not _native_state:
            _native_state["verify"] = _bind_native()
        return _native_state["verify"]


def _bind_native() -> Any:
    try:
        from citycard.hsm import _tc_native
    except ImportError:
        return None
    addresses = libcrypto.addresses()
    if addresses is None:
        return None
    try:
        _tc_native.bind(addresses)
        taps, keys, expected = _sample_taps()
        if _tc_native.verify(taps, keys) != expected:
            return None
    except (TypeError, ValueError, KeyError):
        return None
    return _tc_native.verify


def _sample_taps() -> tuple[list[tuple[Any, ...]], list[tuple[int, bytes, bytes]], bytes]:
    """Taps of two cards per suite, several ATCs and AC input lengths, some with a wrong TC or
    balance MAC, and what the Python loop answers for them (0 good, 1 TC, 2 balance MAC)."""
    macs, ecbs = _block_ciphers()
    taps: list[tuple[Any, ...]] = []
    keys: list[tuple[int, bytes, bytes]] = []
    for name, code in _SUITE_CODES.items():
        suite = _SUITES[name]
        pads = _PADS[suite.block_bytes]
        for card in range(2):
            card_ac = bytes((card * 29 + code * 7 + i * 13) & 0xFF for i in range(16))
            card_mac = bytes((card * 31 + code * 5 + i * 17 + 1) & 0xFF for i in range(16))
            pair = (code, card_ac, card_mac)
            for atc_value in (1, 2, 0x00FF, 0xFFFE):
                atc = atc_value.to_bytes(2, "big")
                ac_input = bytes((atc_value + i * 3) & 0xFF for i in range(37 + atc_value % 5))
                (ac_key,) = _session_keys(card_ac, [atc], suite, ecbs[name])
                (mac_key,) = _session_keys(card_mac, [atc], suite, ecbs[name])
                tc = macs[name](ac_key, ac_input + pads[len(ac_input) % len(pads)])[:8]
                balance = atc_value.to_bytes(5, "big")
                mac = macs[name](mac_key, atc + balance + b"\x00" + pads[8 % len(pads)])[:4]
                iad = bytes([0x07, 1, 1, 3, 0x90, 0, 0, suite.iad_algorithm_id, 0x0A, 0x01]) + balance + mac
                if atc_value == 2:
                    tc = bytes([tc[0] ^ 1]) + tc[1:]
                if atc_value == 0x00FF:
                    iad = iad[:-1] + bytes([iad[-1] ^ 0x80])
                taps.append(("6235480000000000", f"{card:02d}", atc, ac_input, tc, iad))
                keys.append(pair)
    reasons: list[str | None] = [None] * len(taps)
    for start in range(0, len(taps), 4):
        name = "INTL" if keys[start][0] == 0 else "GM"
        indexes = range(start, start + 4)
        _verify_card(taps, indexes, name, keys[start][1], keys[start][2], macs, ecbs, reasons)
    codes = bytes(0 if r is None else 1 if r.startswith("TC") else 2 for r in reasons)
    assert codes.count(0) and codes.count(1) and codes.count(2), "the sample lacks a good or a bad tap"
    return taps, keys, codes
