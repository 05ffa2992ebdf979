"""One clearing intake, printing records/s and CPU µs per record of the parent and the workers.

    .venv/bin/python benchmarks/clearing_ab.py 10000 2 [URL]
    PYTHONPATH=/tmp/base/src .venv/bin/python benchmarks/clearing_ab.py 10000 2   # another checkout

Run it alternately against two checkouts (``git archive HEAD src | tar -x -C /tmp/base``) for a
before/after comparison on a shared machine (docs/clearing.md "Measured").
"""

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import citycard
from citycard.clearing.store import intake
from citycard.cli.bench_clearing import _prepare

n = int(sys.argv[1])
workers = int(sys.argv[2])
db = sys.argv[3] if len(sys.argv) > 3 else None
with tempfile.TemporaryDirectory() as d:
    engine, spec, uploads = _prepare(Path(d), n, db)
    c0 = time.process_time()
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = intake(engine, "b", uploads, keys=spec, workers=workers)
    s = time.perf_counter() - t
    c = time.process_time() - c0
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    chc = (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
    print(
        json.dumps(
            {
                "src": citycard.__file__.split("/src/")[0],
                "w": workers,
                "rps": round(n / s),
                "parent_cpu_us": round(c / n * 1e6, 1),
                "children_cpu_us": round(chc / n * 1e6, 1),
            }
        )
    )
