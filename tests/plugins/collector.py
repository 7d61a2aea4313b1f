"""Fixtures for the collector tests (owned by that part)."""
