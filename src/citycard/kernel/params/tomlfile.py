"""Reading a terminal parameter table: the shipped default or a file, then TOML, with precise errors."""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any


def read_table(
    path: str | os.PathLike[str] | None, *, default: str, what: str, error: type[ValueError]
) -> tuple[str, str]:
    """``(text, source)`` of ``path``, or of the shipped ``citycard/<default>`` when ``path`` is None."""
    if path is None:
        return resources.files("citycard").joinpath(default).read_text(encoding="utf-8"), Path(default).name
    source = str(path)
    try:
        return Path(path).read_text(encoding="utf-8"), source
    except OSError as exc:
        raise error(f"{source}: cannot read the {what}: {exc.strerror}") from None


def parse_toml(text: str, *, source: str, error: type[ValueError]) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source}: not valid TOML: {exc}") from None
