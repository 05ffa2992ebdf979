"""`citycard terminal blacklist build|check` through a real process.

The process runs the real entry point (``citycard.cli.main.main``: its exit codes and one-line
errors) with this command group mounted as ``terminal``, as the lead registers it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from citycard.kernel.params import ExceptionFile, random_test_entries

ENTRY = """
import sys, typer
sys.argv[0] = "citycard"
from citycard.cli import main as entry
from citycard.cli import terminal_params
root = typer.Typer(name="citycard", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
root.add_typer(terminal_params.app, name="terminal")
entry.app = root
entry.main()
"""


def citycard(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}  # Rich help: no wrapping inside the example line
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("bl") / "blacklist.bin"
    result = citycard("terminal", "blacklist", "build", "--count", "20000", "--out", str(path), "--seed", "5")
    return path, result


def test_build_writes_the_seeded_random_list(built):
    path, result = built
    assert result.returncode == 0, result.stderr
    listed = ExceptionFile.load(path, full_check=True)
    expected = ExceptionFile.build(random_test_entries(20_000, seed=5), version=1)
    assert listed.to_bytes() == expected.to_bytes()
    assert result.stdout.startswith(
        f"wrote {path}: 20,000 entries, list version 1, 220,064 bytes, body SHA-256 "
    )
    assert expected.body_sha256.hex().upper() in result.stdout


def test_build_json(tmp_path):
    out = tmp_path / "b.bin"
    result = citycard(
        "terminal", "blacklist", "build", "--count", "10", "--out", str(out), "--list-version", "9", "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["entries"], report["list_version"], report["bytes"]) == (10, 9, 64 + 110)
    assert report["body_sha256"] == ExceptionFile.load(out).body_sha256.hex().upper()


def test_check_blocked_exits_1_and_not_blocked_exits_0(built):
    path, _ = built
    entries = list(random_test_entries(20_000, seed=5))
    pan, psn = next((pan, psn) for pan, psn in entries if psn == "01")
    blocked = citycard("terminal", "blacklist", "check", str(path), pan, "--psn", psn)
    assert (blocked.returncode, blocked.stdout, blocked.stderr) == (1, "blocked\n", "")
    other = citycard("terminal", "blacklist", "check", str(path), pan, "--psn", "02")
    assert (other.returncode, other.stdout) == (0, "not blocked\n")
    wildcard_pan = next(pan for pan, psn in entries if psn is None)
    any_psn = citycard("terminal", "blacklist", "check", str(path), wildcard_pan, "--psn", "42", "--json")
    assert any_psn.returncode == 1
    assert json.loads(any_psn.stdout) == {
        "pan": wildcard_pan[:6] + "*" * (len(wildcard_pan) - 10) + wildcard_pan[-4:],
        "psn": "42",
        "blocked": True,
        "list_version": 1,
        "entries": 20_000,
    }


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("6212345678", "--psn", "01"), "error: PAN must be 12 to 19 digits, got 10\n"),
        (
            ("6212345678901234", "--psn", "1A"),
            "error: PSN (5F34) must be 1 or 2 digits (00 to 99), got '1A'\n",
        ),
    ],
)
def test_check_bad_input_is_one_error_line_exit_2(built, args, error):
    path, _ = built
    result = citycard("terminal", "blacklist", "check", str(path), *args)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", error)


def test_check_a_corrupt_or_missing_file_is_one_error_line_exit_2(built, tmp_path):
    path, _ = built
    corrupt = tmp_path / "corrupt.bin"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    result = citycard("terminal", "blacklist", "check", str(corrupt), "6212345678901234")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {corrupt}: exception file body is corrupt: SHA-256 ")
    assert result.stderr.count("\n") == 1
    missing = citycard("terminal", "blacklist", "check", str(tmp_path / "none.bin"), "6212345678901234")
    assert (missing.returncode, missing.stderr) == (
        2,
        f"error: {tmp_path / 'none.bin'}: cannot read the exception file: No such file or directory\n",
    )


def test_build_bad_input_exits_2(tmp_path):
    too_many = citycard(
        "terminal", "blacklist", "build", "--count", "5000001", "--out", str(tmp_path / "x.bin")
    )
    assert (too_many.returncode, too_many.stderr) == (
        2,
        "error: --count must be 0 to 5,000,000, got 5,000,001\n",
    )
    no_folder = citycard(
        "terminal", "blacklist", "build", "--count", "1", "--out", str(tmp_path / "no" / "x.bin")
    )
    assert (no_folder.returncode, no_folder.stderr) == (
        2,
        f"error: --out: folder {tmp_path / 'no'} does not exist\n",
    )
    missing = citycard("terminal", "blacklist", "build", "--count", "1")
    assert missing.returncode == 2 and missing.stderr.startswith("error: Missing option '--out'")


def test_help_shows_an_example():
    result = citycard("terminal", "blacklist", "build", "--help")
    assert result.returncode == 0
    assert "Usage: citycard terminal blacklist build [OPTIONS]" in result.stdout
    assert "citycard terminal blacklist build --count 1000000 --out blacklist.bin --seed 1" in result.stdout
