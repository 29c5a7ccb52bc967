"""A real Slurm cluster with fake GPUs on this machine: the slurm target of the demo
(``flexorch up --demo-targets``) and of the test suite.

munge, slurmctld and slurmd from Debian's slurm-wlm, one node ``localhost`` with 2 CPUs and
4 "a100" GPUs (character devices made with mknod, so GRES binds and sets
CUDA_VISIBLE_DEVICES as on a real node), in partition ``gpu`` (the default). Optionally more
nodes, partition ``multi``, for multi-node jobs: each is a slurmd of its own in a network
namespace (an ssh fleet host's: its own address, reached over the fleet's bridge) and a UTS
namespace with the node's name as hostname; jobs on two of them meet over that network as on
two machines. State, spool and logs live in a private folder.

The configuration is written to ``/etc/slurm/slurm.conf`` (marked as ours) so that every
client finds it — the tests' own process and login shells on the ssh fleet's hosts, which
reach slurmctld on the fleet bridge's address. An existing slurm.conf that is not ours is
never touched: the fixture refuses to start instead. Needs root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CONF = Path("/etc/slurm/slurm.conf")
MARK = "# flexorch test cluster"
GPUS = 4


@dataclass(frozen=True)
class ExtraNode:
    """A node of partition ``multi``: its name, the network namespace its slurmd runs in, its address there."""

    name: str
    namespace: str
    address: str


@dataclass
class SlurmCluster:
    base: Path
    controller_addr: str

    def run(self, *argv: str, check: bool = True) -> str:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        return done.stdout

    def jobs(self) -> list[str]:
        """Lines of squeue for every job the controller still knows (any state)."""
        return [x for x in self.run("squeue", "-h", "-t", "all", "-o", "%i|%j|%T|%u").splitlines() if x.strip()]

    def live_jobs(self) -> list[str]:
        return [x for x in self.jobs() if x.split("|")[2] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")]

    def stop(self) -> None:
        _kill_ours(self.base)
        if CONF.exists() and CONF.read_text().startswith(MARK):
            CONF.unlink()
            (CONF.parent / "gres.conf").unlink(missing_ok=True)


def _config(base: Path, addr: str, extra: Sequence[ExtraNode] = ()) -> str:
    # the extra nodes come before localhost: after it, Slurm 22.05's slurmd refuses the file ("Duplicated
    # NodeHostName fx-n1"), whatever their NodeHostName
    nodes = [f"NodeName={n.name} NodeAddr={n.address} CPUs=2 RealMemory=2000 State=UNKNOWN" for n in extra]
    multi = [f"PartitionName=multi Nodes={','.join(n.name for n in extra)} MaxTime=INFINITE State=UP"] if extra else []
    return "\n".join(
        [
            MARK,
            "ClusterName=flexorch",
            f"SlurmctldHost=localhost({addr})",
            "SlurmUser=root",
            "AuthType=auth/munge",
            f"StateSaveLocation={base}/state",
            f"SlurmdSpoolDir={base}/spool/%n",
            f"SlurmctldPidFile={base}/slurmctld.pid",
            f"SlurmdPidFile={base}/slurmd-%n.pid",
            f"SlurmctldLogFile={base}/slurmctld.log",
            f"SlurmdLogFile={base}/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "GresTypes=gpu",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={base}/jobcomp.txt",
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
            "ReturnToService=2",
            "MinJobAge=300",
            "KillWait=2",
            # partition urgent preempts partition gpu: its jobs get SIGTERM and are requeued at once (22.05)
            "PreemptType=preempt/partition_prio",
            "PreemptMode=REQUEUE",
            *nodes,
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=4000 Gres=gpu:a100:{GPUS} State=UNKNOWN",
            "PartitionName=gpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1",
            "PartitionName=urgent Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF",
            *multi,
            "",
        ]
    )


def _kill_ours(base: Path) -> None:
    """SIGKILL the slurmctld and slurmd this cluster started: the pids in its own pid files, and only
    while that pid is still the daemon named (a real Slurm on the machine is never touched)."""
    for pid_file in [
        *sorted(base.glob("slurmd*.pid")),
        base / "slurmctld.pid",
    ]:  # every node's slurmd, then the controller
        name = "slurmctld" if pid_file.name.startswith("slurmctld") else "slurmd"
        try:
            pid = int(pid_file.read_text().strip())
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError):
            continue
        if comm == name:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.time() + 5
            while _alive(pid) and time.time() < deadline:
                time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has let go of its ports already


def _folders_of_our_conf() -> list[Path]:
    """The folders an existing slurm.conf of ours keeps its pid files in."""
    if not CONF.exists() or not CONF.read_text().startswith(MARK):
        return []
    return [
        Path(line.split("=", 1)[1].strip()).parent
        for line in CONF.read_text().splitlines()
        if line.startswith(("SlurmctldPidFile=", "SlurmdPidFile="))
    ]


def start_cluster(base: Path, controller_addr: str, extra: Sequence[ExtraNode] = ()) -> SlurmCluster:
    if CONF.exists() and not CONF.read_text().startswith(MARK):
        raise RuntimeError(f"{CONF} exists and is not the test cluster's: refusing to replace a real configuration")
    # an earlier run's daemons (a crashed run's too: the folder our slurm.conf names), by their pid
    # files: never another Slurm on this machine
    for earlier in {base, *_folders_of_our_conf()}:
        _kill_ours(earlier)
    shutil.rmtree(base, ignore_errors=True)
    for sub in ("state", "spool", "dev", *(f"spool/{n}" for n in ("localhost", *(x.name for x in extra)))):
        (base / sub).mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    for i in range(GPUS):
        subprocess.run(["mknod", str(base / "dev" / f"nvidia{i}"), "c", "195", str(i)], check=True)
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(_config(base, controller_addr, extra))
    (CONF.parent / "gres.conf").write_text(
        f"{MARK}\nAutoDetect=off\nNodeName=localhost Name=gpu Type=a100 File={base}/dev/nvidia[0-{GPUS - 1}]\n"
    )
    # munge: the system daemon (one per machine), started if it is not running
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        subprocess.run(["install", "-d", "-o", "munge", "-g", "munge", "-m", "0755", "/run/munge"], check=True)
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
    subprocess.run(["/usr/sbin/slurmctld"], check=True)
    subprocess.run(["/usr/sbin/slurmd", "-N", "localhost"], check=True)
    # each extra node: its network namespace, a UTS namespace named after it and a mount namespace whose
    # /etc/hosts names every node, as a cluster's DNS would (libraries that look their own host name up,
    # gloo among them, find the node's address); slurmd daemonizes
    hosts = base / "hosts"
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{n.address} {n.name}\n" for n in extra))
    hosts.chmod(0o644)
    for node in extra:
        subprocess.run(["nsenter", f"--net=/run/netns/{node.namespace}", "unshare", "--uts", "--mount", "--", "sh",
                        "-c", 'hostname "$1" && mount --bind "$2" /etc/hosts && exec /usr/sbin/slurmd -N "$1"', "sh",
                        node.name, str(hosts)], check=True)  # fmt: skip
    cluster = SlurmCluster(base, controller_addr)
    deadline = time.time() + 30
    while time.time() < deadline:
        out = subprocess.run(["timeout", "3", "sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
        if out.returncode == 0 and set(out.stdout.split()) == {"idle"}:
            return cluster
        time.sleep(0.3)
    log = (base / "slurmctld.log").read_text()[-2000:] if (base / "slurmctld.log").exists() else ""
    raise RuntimeError(f"the test Slurm node did not become idle in 30 s: {out.stdout} {out.stderr}\n{log}")


if __name__ == "__main__":  # a manual check: python -m flexorch_provider.dev.testbed.slurm
    c = start_cluster(Path("/tmp/flexorch-slurm-manual"), os.environ.get("ADDR", "127.0.0.1"))
    print(c.run("sinfo", "-N", "-O", "NodeList:20,Gres:30,GresUsed:40,StateLong:12"))
