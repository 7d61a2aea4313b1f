"""Fixtures for the netns tests (owned by that part)."""
