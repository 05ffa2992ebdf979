"""SM2 timing: medians of sign, verify with a fresh key each run, and verify with a cached key table.

Run: .venv/bin/python benchmarks/sm2_timing.py [--runs 300]; prints one JSON object (milliseconds).
Every run is timed alone with perf_counter; keys, messages and signatures are made before timing, so
"verify fresh" measures verify(cache=False) on a key it has never seen, with no table for that key.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import time

from citycard.crypto import sm2


def _check(ok: bool) -> None:
    if not ok:
        raise SystemExit("sm2_timing: a good signature did not verify")


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e3, 4)


def measure(runs: int = 300) -> dict:
    message = secrets.token_bytes(96)  # the size of a PBOC certificate's signed data, roughly
    clock = time.perf_counter

    signer = sm2.generate_private_key()
    # Warm-up outside the timings: G's tables (built on first use) and the signing-key cache.
    _check(sm2.verify(sm2.public_key(signer), message, sm2.sign(signer, message)))
    sign_s = []
    for _ in range(runs):
        t0 = clock()
        sm2.sign(signer, message)
        sign_s.append(clock() - t0)

    keys = [sm2.generate_private_key() for _ in range(runs)]
    cases = [(sm2.public_key(d), sm2.sign(d, message)) for d in keys]
    fresh_s = []
    for pk, sig in cases:
        t0 = clock()
        ok = sm2.verify(pk, message, sig)
        fresh_s.append(clock() - t0)
        _check(ok)

    ca_pk, ca_sig = cases[0]
    sm2.verify(ca_pk, message, ca_sig, cache=True)  # builds the key's table once
    cached_s = []
    for _ in range(runs):
        t0 = clock()
        ok = sm2.verify(ca_pk, message, ca_sig, cache=True)
        cached_s.append(clock() - t0)
        _check(ok)

    return {
        "runs": runs,
        "load_average_1min": round(os.getloadavg()[0], 2),  # other CPU work slows these up to ~1.8x
        "sign_ms": _median_ms(sign_s),
        "verify_fresh_key_ms": _median_ms(fresh_s),
        "verify_cached_key_ms": _median_ms(cached_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="timed runs per operation (default 300)")
    print(json.dumps(measure(parser.parse_args().runs)))


if __name__ == "__main__":
    main()
