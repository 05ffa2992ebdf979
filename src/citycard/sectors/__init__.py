"""Sector rules and services on the citizen card (DESIGN.md §2): transit, health, social, campus…

A sector package sits above ``platform``, ``ledger`` and ``host`` and uses them only through their
public functions; its rule modules are pure functions over data.
"""
