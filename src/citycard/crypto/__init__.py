"""PBOC 3.0 cryptography as pure functions on bytes, in both algorithm suites (INTL and GM)."""

from citycard.crypto.suite import GM, INTL, SUITES, Suite, suite_for_alg, suite_for_df69

__all__ = ["GM", "INTL", "SUITES", "Suite", "suite_for_alg", "suite_for_df69"]
