"""Helpers shared by the command groups: hex parsing, one-line errors, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer

EXIT_BAD_INPUT = 2


def fail(message: str) -> NoReturn:
    """Print one precise line on stderr and exit 2 (bad input)."""
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(EXIT_BAD_INPUT)


def parse_hex(value: str, what: str, *, length: int | None = None) -> bytes:
    """Parse a hex argument, allowing spaces; reject odd length and non-hex with a precise message."""
    text = "".join(value.split())
    if len(text) % 2:
        fail(f"{what}: odd-length hex ({len(text)} digits)")
    try:
        data = bytes.fromhex(text)
    except ValueError:
        bad = next((c for c in text if c not in "0123456789abcdefABCDEF"), "?")
        fail(f"{what}: not hex (bad character {bad!r})")
    if length is not None and len(data) != length:
        fail(f"{what}: must be {length} bytes, got {len(data)}")
    return data


def to_hex(data: bytes) -> str:
    return data.hex().upper()


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


@contextmanager
def bad_input_exits() -> Iterator[None]:
    """Turn a ValueError from a library function into one error line and exit code 2."""
    try:
        yield
    except ValueError as exc:
        fail(str(exc))


def guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator form of :func:`bad_input_exits` that keeps the command's signature for Typer."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with bad_input_exits():
            return func(*args, **kwargs)

    return wrapper


IMK_LABELS_DEFAULT = {"INTL": ("imk-ac-intl", "imk-mac-intl"), "GM": ("imk-ac-gm", "imk-mac-gm")}


def parse_suite_labels(items: list[str], option: str = "--labels") -> dict[str, tuple[str, str]]:
    """``SUITE=IMK_AC,IMK_MAC`` items over the default IMK labels; one error line and exit 2 on a bad one."""
    chosen = dict(IMK_LABELS_DEFAULT)
    for item in items:
        suite, _, pair = item.partition("=")
        ac, _, mac = pair.partition(",")
        if suite.upper() not in IMK_LABELS_DEFAULT or not ac or not mac:
            fail(f"{option} {item!r}: expected INTL=AC_LABEL,MAC_LABEL or GM=…")
        chosen[suite.upper()] = (ac, mac)
    return chosen
