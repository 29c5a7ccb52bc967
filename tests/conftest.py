"""Test-wide setup: a private AIRFLOW_HOME before anything imports airflow; the ssh fleet."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from flexorch_provider.dev.testbed.fleet import (  # standard library only: no airflow import yet
    SUBNET,
    SshFleet,
    start_fleet,
)
from flexorch_provider.dev.testbed.slurm import ExtraNode, SlurmCluster, start_cluster

_HOME = Path(tempfile.mkdtemp(prefix="flexorch-test-airflow-"))
os.environ.setdefault("AIRFLOW_HOME", str(_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_HOME / 'airflow.db'}")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(_HOME / "dags"))
(_HOME / "dags").mkdir(exist_ok=True)


# one Slurm per machine: a test that starts another (the demo's) restarts this one afterwards
SESSION_SLURM: dict[str, object] = {}

# --- a fleet of real sshd hosts (integration and e2e tests) -------------------------------
FLEET_CONN = "flexorch_test_fleet"
LOGIN_CONN = "flexorch_test_slurm_login"
KUBE_CONN = "flexorch_test_kube"


@pytest.fixture(scope="session")
def ssh_fleet(tmp_path_factory) -> SshFleet:
    """Four sshd hosts, each in its own network namespace, and an Airflow connection (environment) for them."""
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


@pytest.fixture(scope="session")
def slurm_cluster(ssh_fleet) -> SlurmCluster:
    """A real Slurm: node localhost with 4 fake a100 GPUs (partition gpu, the default) and nodes fx-n1,
    fx-n2 in the fleet's third and fourth hosts' network namespaces (partition multi); its controller
    is reachable from the fleet's hosts too, and the fleet's first host is the login node of
    connection LOGIN_CONN."""
    base = Path(tempfile.mkdtemp(prefix="flexorch-slurm-"))
    # partition multi: two more nodes, each a slurmd in a fleet host's network namespace (multi-node jobs)
    extra = [ExtraNode(f"fx-n{i}", h.namespace, h.address) for i, h in enumerate(ssh_fleet.hosts[2:4], 1)]
    cluster = start_cluster(base, f"{SUBNET}.1", extra)
    SESSION_SLURM.update(base=base, controller_addr=f"{SUBNET}.1")
    os.environ[f"AIRFLOW_CONN_{LOGIN_CONN.upper()}"] = ssh_fleet.login_connection_json(ssh_fleet.hosts[0])
    try:
        yield cluster
    finally:
        cluster.stop()
        SESSION_SLURM.clear()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def kube_cluster():
    """The Kubernetes API emulator with fake controllers (tests/integration/kube.py), and a
    connection (kubeconfig file) for it."""
    import json

    from tests.integration.kube import FakeCluster

    base = Path(tempfile.mkdtemp(prefix="flexorch-kube-"))
    cluster = FakeCluster(base)
    os.environ[f"AIRFLOW_CONN_{KUBE_CONN.upper()}"] = json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": str(cluster.kubeconfig)}}
    )
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
