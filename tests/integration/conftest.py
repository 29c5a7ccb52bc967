"""Fixtures with real servers for the integration tests: see tests/conftest.py (shared with e2e)."""

from tests.conftest import FLEET_CONN

__all__ = ["FLEET_CONN"]
