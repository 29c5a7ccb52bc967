"""The demo's targets (``flexorch up --demo-targets``): an SSH fleet and a Slurm on this machine.

What it starts, where it can (root, Debian's packages from ``scripts/system-deps.sh``):

- **ssh**: two sshd hosts in network namespaces (:mod:`.fleet`), accounts ``flexorch-demo1``
  and ``flexorch-demo2``, reached through the Airflow connection ``demo_fleet`` whose extra
  ``host_aliases`` maps the names the example specs use (``gpu-box-1``, ``gpu-box-2``) to them.
  Each host's ``nvidia-smi`` is a stand-in answering with two recorded L4 GPUs: no GPU is real.
- **slurm**: one node ``localhost`` with 4 GPUs that are device files, not GPUs (:mod:`.slurm`);
  the connection ``demo_slurm`` logs in to the first fleet host as its login node, as a real
  cluster would be reached. Slurm needs the fleet (its login node); without it, it is not started.
- a ``gpu_pools.yaml`` for both (``flexorch gpus`` and the flexorch page show them).

Kubernetes is not started: no API server can run here, and an emulator's pods run nothing, so
showing them green would not be honest. Where a target cannot start, :attr:`DemoTargets.missing`
says why; the DAGs that need it stay paused (``flexorch up`` pauses every DAG whose spec names a
connection this Airflow does not have).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from flexorch_provider.dev.testbed.fleet import SUBNET, SshFleet, start_fleet
from flexorch_provider.dev.testbed.slurm import CONF, MARK, SlurmCluster, start_cluster

FLEET_CONN = "demo_fleet"
SLURM_CONN = "demo_slurm"
HOST_NAMES = ("gpu-box-1", "gpu-box-2")
ACCOUNT_PREFIX = "flexorch-demo"
POOLS_FILE = "gpu_pools.yaml"
# nvidia-smi --query-gpu CSV (index, uuid, name, memory total/used MiB, utilization %): two idle L4s
STAND_IN_GPUS = "".join(f"{i}, GPU-5e1d0000-0000-4000-8000-00000000000{i}, NVIDIA L4, 23034, 0, 0\n" for i in (0, 1))
NO_KUBERNETES = (
    "no Kubernetes API server can run on this machine, and the demo does not emulate one; point the "
    "connection kubernetes_default at a real cluster to run these"
)


@dataclass
class DemoTargets:
    """What was started: the stack's extra environment (connections, pools file), one line per
    target for the terminal, and why a target is missing."""

    env: dict[str, str] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    fleet: SshFleet | None = None
    slurm: SlurmCluster | None = None
    base: Path | None = None

    def stop(self) -> None:
        if self.slurm is not None:
            self.slurm.stop()
            self.slurm = None
        if self.fleet is not None:
            self.fleet.stop()
            self.fleet = None
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None


def _fleet_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, one account per host)"
    for tool, package in (("/usr/sbin/sshd", "openssh-server"), ("/usr/bin/ssh-keygen", "openssh-client")):
        if not Path(tool).exists():
            return f"{tool} is missing (apt-get install {package})"
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        return "ip and nsenter are missing (apt-get install iproute2 util-linux)"
    return None


def _slurm_problem() -> str | None:
    for tool in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged"):
        if not Path(tool).exists():
            return f"{tool} is missing (apt-get install slurmctld slurmd slurm-client munge)"
    if CONF.exists() and not CONF.read_text(errors="replace").startswith(MARK):
        return f"{CONF} belongs to a real Slurm on this machine: the demo leaves it alone"
    return None


def start_targets(pools_dir: Path) -> DemoTargets:
    """Start the fleet and Slurm where they can run; ``pools_dir`` gets the demo's gpu_pools.yaml."""
    targets = DemoTargets(missing={"kubernetes": NO_KUBERNETES})
    problem = _fleet_problem()
    if problem:
        targets.missing["ssh"] = problem
        targets.missing["slurm"] = "its login node is a fleet host, and the fleet did not start"
        return targets
    # sshd reads each account's authorized keys as that account: the folder must not be root-only
    targets.base = Path(tempfile.mkdtemp(prefix="flexorch-demo-targets-"))
    targets.base.chmod(0o755)
    try:
        fleet = start_fleet(targets.base / "fleet", len(HOST_NAMES), account_prefix=ACCOUNT_PREFIX)
    except Exception as e:
        targets.missing["ssh"] = f"the fleet did not start: {e}"
        targets.missing["slurm"] = "its login node is a fleet host, and the fleet did not start"
        return targets
    targets.fleet = fleet
    for host in fleet.hosts:
        host.fake_nvidia_smi(STAND_IN_GPUS)
    aliases = dict(zip(HOST_NAMES, fleet.entries(), strict=True))
    conn = json.loads(fleet.connection_json())
    conn["extra"]["host_aliases"] = aliases
    targets.env[f"AIRFLOW_CONN_{FLEET_CONN.upper()}"] = json.dumps(conn)
    targets.started.append(
        f"ssh: {len(fleet.hosts)} sshd hosts in network namespaces, connection {FLEET_CONN} ("
        + ", ".join(f"{name} → {entry}" for name, entry in aliases.items())
        + "); their nvidia-smi is a stand-in reporting 2 × L4 each (no real GPU)"
    )
    pools: dict[str, dict[str, object]] = {
        "demo-fleet": {"source": "ssh", "connection": FLEET_CONN, "hosts": list(HOST_NAMES)}
    }
    problem = _slurm_problem()
    if problem:
        targets.missing["slurm"] = problem
    else:
        try:
            targets.slurm = start_cluster(targets.base / "slurm", f"{SUBNET}.1")
        except Exception as e:
            targets.missing["slurm"] = f"Slurm did not start: {e}"
    if targets.slurm is not None:
        targets.env[f"AIRFLOW_CONN_{SLURM_CONN.upper()}"] = fleet.login_connection_json(fleet.hosts[0])
        targets.started.append(
            f"slurm: slurmctld + slurmd, one node with 4 GPUs that are device files (partition gpu); "
            f"connection {SLURM_CONN} logs in to {HOST_NAMES[0]} as the login node"
        )
        pools["demo-slurm"] = {"source": "slurm", "connection": SLURM_CONN, "partition": "gpu"}
    pools_dir.mkdir(parents=True, exist_ok=True)
    pools_file = pools_dir / POOLS_FILE
    pools_file.write_text(
        "# written by flexorch up --demo-targets: the demo's GPU pools (stand-ins, see the README)\n"
        + json.dumps(pools, indent=2)  # JSON is YAML
        + "\n",
        encoding="utf-8",
    )
    targets.env["FLEXORCH_GPU_POOLS"] = str(pools_file)
    return targets
