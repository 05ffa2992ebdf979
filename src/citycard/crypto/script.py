"""Issuer-script secure messaging: command MAC, data encipherment and PIN change blocks.

PBOC secure messaging (pboc-notes §3, §4.4): the MAC covers CLA INS P1 P2 Lc ‖ ATC ‖ ARQC ‖ command
data, with Lc counting the 4-byte MAC, padded by ISO/IEC 9797-1 method 2, under the MAC session key;
the leftmost 4 bytes are appended to the command. Enciphered data (PIN change/unblock) uses the ENC
session key.
"""

from __future__ import annotations

from citycard.crypto.cryptogram import pboc_mac
from citycard.crypto.mac import pad_method_2
from citycard.crypto.suite import Suite

SCRIPT_MAC_BYTES = 4
MAX_SCRIPT_DATA_BYTES = 239  # Lc ≤ 255 including the MAC and room for header growth
EC_BALANCE_FEN_MAX = 999_999_999_999


def script_mac(
    mac_session_key: bytes,
    *,
    header: bytes,
    tag_9f36: bytes,
    tag_9f26: bytes,
    data: bytes,
    suite: Suite,
) -> bytes:
    """The 4-byte MAC of an issuer-script command (header = CLA INS P1 P2 Lc, Lc including the MAC)."""
    if len(header) != 5:
        raise ValueError(f"command header must be 5 bytes (CLA INS P1 P2 Lc), got {len(header)}")
    if header[4] != len(data) + SCRIPT_MAC_BYTES:
        raise ValueError(f"Lc {header[4]:02X} must equal data length {len(data)} + 4 MAC bytes")
    if len(tag_9f36) != 2:
        raise ValueError(f"ATC (9F36) must be 2 bytes, got {len(tag_9f36)}")
    if len(tag_9f26) != 8:
        raise ValueError(f"ARQC (9F26) must be 8 bytes, got {len(tag_9f26)}")
    return pboc_mac(
        mac_session_key, header + tag_9f36 + tag_9f26 + data, suite=suite, length=SCRIPT_MAC_BYTES
    )


def build_script_command(
    mac_session_key: bytes,
    *,
    cla: int,
    ins: int,
    p1: int,
    p2: int,
    data: bytes,
    tag_9f36: bytes,
    tag_9f26: bytes,
    suite: Suite,
) -> bytes:
    """A complete secure-messaging command APDU: header ‖ data ‖ MAC (case 3, no Le)."""
    if len(data) > MAX_SCRIPT_DATA_BYTES:
        raise ValueError(
            f"script command data must be at most {MAX_SCRIPT_DATA_BYTES} bytes, got {len(data)}"
        )
    header = bytes([cla, ins, p1, p2, len(data) + SCRIPT_MAC_BYTES])
    mac = script_mac(
        mac_session_key, header=header, tag_9f36=tag_9f36, tag_9f26=tag_9f26, data=data, suite=suite
    )
    return header + data + mac


def ec_load_command(
    mac_session_key: bytes, *, new_balance_fen: int, tag_9f36: bytes, tag_9f26: bytes, suite: Suite
) -> bytes:
    """PUT DATA 9F79 (electronic-cash top-up, 圈存): ``04DA9F790A`` ‖ new balance n12 ‖ MAC.

    The balance is absolute, not a delta (pboc-notes §6).
    """
    if not 0 <= new_balance_fen <= EC_BALANCE_FEN_MAX:
        raise ValueError(f"EC balance must be 0 to {EC_BALANCE_FEN_MAX} fen, got {new_balance_fen}")
    balance = bytes.fromhex(f"{new_balance_fen:012d}")
    return build_script_command(
        mac_session_key,
        cla=0x04,
        ins=0xDA,
        p1=0x9F,
        p2=0x79,
        data=balance,
        tag_9f36=tag_9f36,
        tag_9f26=tag_9f26,
        suite=suite,
    )


def encipher_script_data(enc_session_key: bytes, data: bytes, *, suite: Suite, cbc: bool = False) -> bytes:
    """Encipher confidential script data: pad method 2, then ECB (PBOC test tools) or CBC with IV zero."""
    suite.check_key(enc_session_key, "ENC session key")
    padded = pad_method_2(data, suite.block_bytes)
    if cbc:
        return suite.cbc_encrypt(enc_session_key, padded)
    return suite.ecb_encrypt(enc_session_key, padded)


def decipher_script_data(enc_session_key: bytes, data: bytes, *, suite: Suite, cbc: bool = False) -> bytes:
    """Reverse :func:`encipher_script_data` and strip the method-2 padding (card side)."""
    suite.check_key(enc_session_key, "ENC session key")
    plain = suite.cbc_decrypt(enc_session_key, data) if cbc else suite.ecb_decrypt(enc_session_key, data)
    stripped = plain.rstrip(b"\x00")
    if not stripped.endswith(b"\x80"):
        raise ValueError("enciphered script data has no 80 padding marker")
    return stripped[:-1]


def _check_pin(pin: str) -> None:
    if not pin.isdigit() or not 4 <= len(pin) <= 12:
        raise ValueError(f"PIN must be 4 to 12 digits, got {len(pin)} characters")


def _new_pin_field(pin: str) -> int:
    """0N ‖ PIN ‖ F… (8 bytes), N the number of PIN digits."""
    _check_pin(pin)
    return int((f"{len(pin):02X}" + pin).ljust(16, "F"), 16)


def _current_pin_field(pin: str) -> int:
    """PIN ‖ 0… (8 bytes), the current PIN as XORed into a PIN change with the current PIN."""
    _check_pin(pin)
    return int(pin.ljust(16, "0"), 16)


def pin_change_block(*, new_pin: str, card_ac_key: bytes, current_pin: str | None = None) -> bytes:
    """The 8-byte PIN data of PIN CHANGE/UNBLOCK (VIS/PBOC; pboc-notes §4.4).

    D1 = 00000000 ‖ bytes 4–7 of the card AC key; D2 = 0N ‖ PIN ‖ F…; with the current PIN also
    XOR the current PIN padded with 0. The result is prefixed with its length 08 before encipherment.

    >>> key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    >>> pin_change_block(new_pin="1234", card_ac_key=key).hex().upper()
    '041234FF76543210'
    """
    if len(card_ac_key) != 16:
        raise ValueError(f"card AC key must be 16 bytes, got {len(card_ac_key)}")
    d1 = bytes(4) + card_ac_key[4:8]
    block = int.from_bytes(d1, "big") ^ _new_pin_field(new_pin)
    if current_pin is not None:
        block ^= _current_pin_field(current_pin)
    return block.to_bytes(8, "big")


def pin_change_command(
    *,
    mac_session_key: bytes,
    enc_session_key: bytes,
    new_pin: str,
    card_ac_key: bytes,
    tag_9f36: bytes,
    tag_9f26: bytes,
    suite: Suite,
    current_pin: str | None = None,
) -> bytes:
    """PIN CHANGE/UNBLOCK ``84 24 00 01|02``: enciphered 08 ‖ PIN data, then the script MAC."""
    block = pin_change_block(new_pin=new_pin, card_ac_key=card_ac_key, current_pin=current_pin)
    enciphered = encipher_script_data(enc_session_key, b"\x08" + block, suite=suite)
    return build_script_command(
        mac_session_key,
        cla=0x84,
        ins=0x24,
        p1=0x00,
        p2=0x01 if current_pin is not None else 0x02,
        data=enciphered,
        tag_9f36=tag_9f36,
        tag_9f26=tag_9f26,
        suite=suite,
    )
