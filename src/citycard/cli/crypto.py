"""`citycard crypto`: the cryptogram calculator payment engineers reach for every day.

Scripts depend on these exact commands and flags; hex output is uppercase; bad input prints one
precise line on stderr and exits 2.
"""

from __future__ import annotations

from typing import Annotated

import typer

from citycard.cli.common import fail, guarded, parse_hex, to_hex
from citycard.crypto import suite_for_alg
from citycard.crypto.cryptogram import generate_ac, generate_arpc, pboc_mac
from citycard.crypto.keys import derive_card_key, session_key
from citycard.crypto.suite import Suite

app = typer.Typer(
    help="PBOC key derivation, session keys, cryptograms, ARPC, MACs and SM2 signature checks.",
    no_args_is_help=True,
)

Alg = Annotated[str, typer.Option("--alg", help="Algorithm suite: 3des (international) or sm4 (national).")]


def _suite(alg: str) -> Suite:
    try:
        return suite_for_alg(alg)
    except ValueError as exc:
        fail(f"--alg: {exc}")


@app.command("derive-card-key")
@guarded
def derive_card_key_command(
    imk: Annotated[str, typer.Option("--imk", help="Issuer master key, 16 bytes hex.")],
    pan: Annotated[str, typer.Option("--pan", help="PAN (5A) digits.")],
    psn: Annotated[str, typer.Option("--psn", help="PAN sequence number (5F34), two digits.")],
    alg: Alg = "3des",
) -> None:
    """Card key by EMV option A (3DES, odd parity) or its SM4 variant.

    Example: citycard crypto derive-card-key --imk 0123456789ABCDEFFEDCBA9876543210
    --pan 12345678901234567 --psn 01   → 73AD54688CEF2934B0979857E3C719F1
    """
    suite = _suite(alg)
    key = parse_hex(imk, "--imk")
    print(to_hex(derive_card_key(key, tag_5a=pan, tag_5f34=psn, suite=suite)))


@app.command("session-key")
@guarded
def session_key_command(
    card_key: Annotated[str, typer.Option("--card-key", help="Card (ICC master) key, 16 bytes hex.")],
    atc: Annotated[str, typer.Option("--atc", help="Application transaction counter (9F36), 2 bytes hex.")],
    alg: Alg = "3des",
) -> None:
    """PBOC session (process) key: the card key encrypting 000000000000‖ATC and 000000000000‖~ATC.

    Example: citycard crypto session-key --card-key 0123456789ABCDEFFEDCBA9876543210 --atc 0001 --alg sm4
    """
    suite = _suite(alg)
    key = parse_hex(card_key, "--card-key")
    print(to_hex(session_key(key, tag_9f36=parse_hex(atc, "--atc"), suite=suite)))


@app.command("ac")
@guarded
def ac_command(
    session_key_hex: Annotated[str, typer.Option("--session-key", help="AC session key, 16 bytes hex.")],
    data: Annotated[str, typer.Option("--data", help="CDOL data to authenticate, hex.")],
    alg: Alg = "3des",
) -> None:
    """Application cryptogram (8 bytes): padding method 2, then MAC algorithm 3 or SM4 CBC-MAC.

    Example: citycard crypto ac --session-key AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB
    --data 000000002000000000000000012400000080000124110309003804823E58000001  → 3B76CF10FECD8789
    """
    suite = _suite(alg)
    key = parse_hex(session_key_hex, "--session-key")
    print(to_hex(generate_ac(key, parse_hex(data, "--data"), suite=suite)))


@app.command("arpc")
@guarded
def arpc_command(
    session_key_hex: Annotated[str, typer.Option("--session-key", help="AC session key, 16 bytes hex.")],
    arqc: Annotated[str, typer.Option("--arqc", help="ARQC (9F26), 8 bytes hex.")],
    arc: Annotated[
        str, typer.Option("--arc", help="Authorisation response code (8A), 2 bytes hex, e.g. 3030.")
    ],
    alg: Alg = "3des",
) -> None:
    """ARPC by method 1: the session key encrypting ARQC ⊕ (ARC ‖ 00…).

    Example: citycard crypto arpc --session-key AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBB
    --arqc 1234567890ABCDEF --arc 0000  → F5E6F44147E2F1B0
    """
    suite = _suite(alg)
    key = parse_hex(session_key_hex, "--session-key")
    result = generate_arpc(
        key, tag_9f26=parse_hex(arqc, "--arqc"), tag_8a=parse_hex(arc, "--arc"), suite=suite
    )
    print(to_hex(result))


@app.command("mac")
@guarded
def mac_command(
    session_key_hex: Annotated[str, typer.Option("--session-key", help="MAC session key, 16 bytes hex.")],
    data: Annotated[str, typer.Option("--data", help="Data to MAC, hex (e.g. script header‖ATC‖ARQC‖data).")],
    alg: Alg = "3des",
    length: Annotated[int, typer.Option("--length", help="MAC length in bytes: 4 or 8.")] = 8,
) -> None:
    """PBOC MAC: padding method 2, MAC algorithm 3 (3DES) or SM4 CBC-MAC, leftmost 4 or 8 bytes.

    Example: citycard crypto mac --session-key 0123456789ABCDEFFEDCBA9876543210
    --data 8424000008FFFF1234567890123456  → E07B8DF1B4184282
    """
    suite = _suite(alg)
    if length not in (4, 8):
        fail(f"--length: must be 4 or 8, got {length}")
    key = parse_hex(session_key_hex, "--session-key")
    print(to_hex(pboc_mac(key, parse_hex(data, "--data"), suite=suite, length=length)))


@app.command("sm2-verify")
@guarded
def sm2_verify_command(
    public_key: Annotated[
        str, typer.Option("--public-key", help="SM2 public key x‖y (64 bytes) or 04‖x‖y, hex.")
    ],
    message: Annotated[str, typer.Option("--message", help="Signed message M, hex.")],
    signature: Annotated[str, typer.Option("--signature", help="Signature r‖s, 64 bytes hex.")],
    user_id: Annotated[str, typer.Option("--id", help="Signer's user ID (ASCII).")] = "1234567812345678",
) -> None:
    """Verify an SM2 signature (GB/T 32918, e = SM3(Z_A ‖ M)); prints valid (exit 0) or invalid (exit 1).

    Example: citycard crypto sm2-verify --public-key 09F9…AD13 --message 6D65737361676520646967657374
    --signature F5A0…C1AA
    """
    from citycard.crypto import sm2

    key = parse_hex(public_key, "--public-key")
    if len(key) not in (64, 65):
        fail(f"--public-key: must be 64 bytes (x‖y) or 65 bytes (04‖x‖y), got {len(key)}")
    sig = parse_hex(signature, "--signature", length=64)
    ok = sm2.verify(key, parse_hex(message, "--message"), sig, user_id=user_id.encode())
    print("valid" if ok else "invalid")
    raise typer.Exit(0 if ok else 1)
