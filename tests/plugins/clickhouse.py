"""Fixtures for the clickhouse tests (owned by that part)."""
