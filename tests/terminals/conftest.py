"""The kernel tests' cards, HSM and CAPKs, shared with the terminal-program tests."""

from tests.kernel.conftest import (  # noqa: F401 — pytest fixtures, used by name
    blacklist,
    capks,
    hsm,
    issued_cards,
    new_card,
)
