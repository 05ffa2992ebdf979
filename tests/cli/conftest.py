"""Run the real ``citycard`` entry point in a subprocess, as a user's script would."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest


@dataclass
class Result:
    code: int
    out: str
    err: str


def _run(*args: str, stdin: str | None = None, timeout: float = 120) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "citycard.cli.main", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def citycard():
    """``citycard(*args)`` → Result(code, out, err) from a real process."""
    return _run
