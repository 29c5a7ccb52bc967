"""Fixtures with real servers for the integration tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.integration.sshd import SshFleet, start_fleet

FLEET_CONN = "flexorch_test_fleet"


@pytest.fixture(scope="session")
def ssh_fleet(tmp_path_factory) -> SshFleet:
    """Four sshd hosts, each in its own network namespace, and an Airflow connection (from the environment) for them."""
    # sshd reads authorized keys as the host's account: the folder must not be root-only
    base = Path(tempfile.mkdtemp(prefix="flexorch-ssh-fleet-"))
    base.chmod(0o755)
    fleet = start_fleet(base, 4)
    os.environ[f"AIRFLOW_CONN_{FLEET_CONN.upper()}"] = fleet.connection_json()
    try:
        yield fleet
    finally:
        fleet.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def restart_host(ssh_fleet):
    """Bring killed hosts back after a test, whatever the test's outcome."""
    killed = []

    def restart(host) -> None:
        killed.append(host)

    yield restart
    for host in killed:
        if host.proc is None:
            host.start()
