"""Alembic revisions, one chain: 0001_ledger → 0002_issuer → 0003_switch → …"""
