"""`citycard bench ...`: speed scenarios that print medians (JSON with ``--json``).

Benchmarks are not tests: they measure, they do not assert. Each figure is the median of several
timed rounds (or of many single operations), measured in this process after a warm-up.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from citycard.crypto import GM, INTL, Suite

app = typer.Typer(help="Speed scenarios; medians, JSON with --json.", no_args_is_help=True)

ARQC_BATCH = 1_000  # verifications per timed round, each for a different card
ARQC_ROUNDS = 31  # short rounds, many of them: this VM's speed shifts every second or so
SM2_VERIFY_RUNS = 1_000
SM2_SIGN_RUNS = 1_000
RSA_RECOVER_RUNS = 1_000
_IMK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


def _median_ms(operation: Callable[[int], Any], runs: int) -> float:
    """Median wall time of ``operation(i)`` for i in range(runs), in milliseconds."""
    samples = []
    clock = time.perf_counter
    for i in range(runs):
        started = clock()
        operation(i)
        samples.append(clock() - started)
    return statistics.median(samples) * 1000


def arqc_verify_per_s(suite: Suite, *, batch: int = ARQC_BATCH, rounds: int = ARQC_ROUNDS) -> float:
    """ARQC verifications per second: derive card key + session key + MAC compare, a new card each time."""
    from citycard.crypto.cryptogram import generate_ac, verify_ac
    from citycard.crypto.keys import derive_card_key, session_key

    data = bytes.fromhex("000000002000000000000000015600000080000156261127003804823E7C00") + bytes(6)
    cards = []
    for i in range(batch):
        pan, atc = f"623548970{i:07d}", (i % 65_000 + 1).to_bytes(2, "big")
        sk = session_key(
            derive_card_key(_IMK, tag_5a=pan, tag_5f34="01", suite=suite), tag_9f36=atc, suite=suite
        )
        cards.append((pan, atc, generate_ac(sk, data, suite=suite)))

    def one_round() -> float:
        started = time.perf_counter()
        for pan, atc, arqc in cards:
            card_key = derive_card_key(_IMK, tag_5a=pan, tag_5f34="01", suite=suite)
            sk = session_key(card_key, tag_9f36=atc, suite=suite)
            if not verify_ac(sk, data, tag_9f26=arqc, suite=suite):
                raise AssertionError("benchmark ARQC failed to verify")
        return time.perf_counter() - started

    one_round()  # warm-up
    return batch / statistics.median(one_round() for _ in range(rounds))


def baseline_3des_context_per_s(*, batch: int = ARQC_BATCH, rounds: int = ARQC_ROUNDS) -> float:
    """Bare `cryptography` 3DES contexts created and used per second: the yardstick for the machine.

    An ARQC verify needs three such contexts (card key → session key, then the MAC's DES-CBC and
    final 3DES), so ``arqc_verify_per_s["3des"] / baseline`` shows how close the code is to the floor.
    """
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    keys = [i.to_bytes(24, "big") for i in range(batch)]
    block, ecb = bytes(16), modes.ECB()

    def one_round() -> float:
        started = time.perf_counter()
        for key in keys:
            Cipher(TripleDES(key), ecb).encryptor().update(block)
        return time.perf_counter() - started

    one_round()
    return batch / statistics.median(one_round() for _ in range(rounds))


def sm2_verify_ms(runs: int = SM2_VERIFY_RUNS) -> float:
    """Median SM2 verify time with a fresh public key each time (no cached per-key table)."""
    from citycard.crypto import sm2

    cases = []
    for i in range(runs):
        d = sm2.generate_private_key()
        message = f"citycard bench {i}".encode()
        cases.append((sm2.public_key(d), message, sm2.sign(d, message)))

    def verify(i: int) -> None:
        if not sm2.verify(*cases[i], cache=False):
            raise AssertionError("benchmark SM2 signature failed to verify")

    return _median_ms(verify, runs)


def sm2_sign_ms(runs: int = SM2_SIGN_RUNS) -> float:
    """Median SM2 sign time (e = SM3(Z_A ‖ M) included)."""
    from citycard.crypto import sm2

    d = sm2.generate_private_key()
    messages = [f"citycard bench {i}".encode() for i in range(runs)]
    sm2.sign(d, b"warm-up")
    return _median_ms(lambda i: sm2.sign(d, messages[i]), runs)


def rsa1984_recover_ms(runs: int = RSA_RECOVER_RUNS) -> float:
    """Median time to recover and check an issuer certificate under a 1984-bit CA (exponent 3)."""
    from citycard.crypto import oda, rsa
    from citycard.crypto.capk import generate_test_ca

    ca = generate_test_ca(INTL, bits=1984, exponent=3)
    issuer_private = rsa.generate_rsa_key(1408, 3)
    issued = oda.issuer_certificate(
        ca.private_key,
        oda.PublicKey.of(issuer_private, INTL),
        issuer_id=bytes.fromhex("623548FF"),
        expiry="1230",
        serial=b"\x00\x00\x01",
        suite=INTL,
    )

    def recover(_: int) -> None:
        result = oda.recover_issuer_public_key(ca.capk, issued.certificate, issued.remainder, issued.exponent)
        if not result.valid:
            raise AssertionError("benchmark issuer certificate failed to verify")

    recover(0)
    return _median_ms(recover, runs)


@app.command("crypto")
def crypto_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print only the JSON result.")] = False,
) -> None:
    """ARQC verifications per second (3DES and SM4), SM2 verify and sign, RSA-1984 certificate recovery.

    Prints medians: {"arqc_verify_per_s": {"3des": N, "sm4": N}, "sm2_verify_ms": X,
    "sm2_sign_ms": X, "rsa1984_recover_ms": X, "baseline_3des_context_per_s": N}; the baseline
    (bare `cryptography` 3DES contexts, measured in the same process) lets runs on machines of
    different speed be compared as ratios.
    """
    steps: list[tuple[str, Callable[[], float]]] = [
        ("ARQC verify, 3DES", lambda: arqc_verify_per_s(INTL)),
        ("ARQC verify, SM4", lambda: arqc_verify_per_s(GM)),
        ("SM2 verify, fresh key", sm2_verify_ms),
        ("SM2 sign", sm2_sign_ms),
        ("RSA-1984 certificate recovery", rsa1984_recover_ms),
        ("baseline: bare 3DES context", baseline_3des_context_per_s),
    ]
    figures: list[float] = []
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=json_output) as progress:
        task = progress.add_task("benchmarking", total=len(steps))
        for label, step in steps:
            progress.update(task, description=label)
            figures.append(step())
            progress.advance(task)
    result = {
        "arqc_verify_per_s": {"3des": round(figures[0]), "sm4": round(figures[1])},
        "sm2_verify_ms": round(figures[2], 3),
        "sm2_sign_ms": round(figures[3], 3),
        "rsa1984_recover_ms": round(figures[4], 3),
        "baseline_3des_context_per_s": round(figures[5]),
    }
    if json_output:
        print(json.dumps(result))
        return
    table = Table(title="citycard bench crypto (medians)")
    table.add_column("scenario")
    table.add_column("median", justify="right")
    for (label, _), figure, unit in zip(steps, figures, ("/s", "/s", " ms", " ms", " ms", "/s"), strict=True):
        table.add_row(label, f"{figure:,.0f}{unit}" if unit == "/s" else f"{figure:.3f}{unit}")
    Console().print(table)
    print(json.dumps(result))


from citycard.cli import (  # noqa: E402, F401
    bench_api,
    bench_auth,
    bench_blacklist,
    bench_card,
    bench_clearing,
    bench_health,
    bench_tap,
)
