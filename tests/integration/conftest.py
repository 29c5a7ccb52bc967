"""Fixtures with real servers for the integration tests."""

from __future__ import annotations

import os

import pytest

from tests.integration.sshd import SshFleet, start_fleet

FLEET_CONN = "flexorch_test_fleet"


@pytest.fixture(scope="session")
def ssh_fleet(tmp_path_factory) -> SshFleet:
    """Four sshd hosts on loopback and an Airflow connection (from the environment) for them."""
    fleet = start_fleet(tmp_path_factory.mktemp("ssh-fleet"), 4)
    os.environ[f"AIRFLOW_CONN_{FLEET_CONN.upper()}"] = fleet.connection_json()
    try:
        yield fleet
    finally:
        fleet.stop()
