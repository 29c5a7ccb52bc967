"""Target choice: time from a task's start to its job running when the first target is full.

A real one-node Slurm whose four fake A100s are held by another job for ``--hold`` seconds
(started afresh before every measurement), and a real sshd host whose stand-in nvidia-smi
reports two free L4s (flexorch_provider/dev/testbed; needs root, slurmctld, openssh-server). The
same spec, ``target: [slurm, ssh]`` with one GPU, run by FlexOperator.execute (not deferred):

    first-accepts (the default)   Slurm takes it and queues it: it runs when the GPUs come back
    max_pending                   it waits on Slurm that long, then moves to ssh
    first-free                    the inventory shows Slurm full and ssh free: ssh at once

"Running" is the moment the job's first line ran (it prints the clock), so each row is what a
user waits. The baseline is the default order, measured in the same run.

    .venv/bin/python bench/placement.py [--repeat 3] [--hold 20] [--max-pending 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONN = "flexorch_bench_fleet"
L4_PAIR = ("0, GPU-0b1c2d3e-0000-4000-8000-00000000dd01, NVIDIA L4, 23034, 0, 0\n"
           "1, GPU-0b1c2d3e-0000-4000-8000-00000000dd02, NVIDIA L4, 23034, 0, 0\n")  # fmt: skip


class Ti:
    """What FlexOperator.execute reads from its task instance, and the XComs it pushes."""

    dag_id, task_id, map_index, try_number = "bench_placement", "train", -1, 1

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def hog(seconds: float) -> Any:
    from flexorch_provider.backends.base import JobState, ResolvedJob
    from flexorch_provider.backends.slurm import SlurmBackend
    from flexorch_provider.resolve import load_workload

    w = load_workload({"name": "hog", "kind": "batch", "target": "slurm", "run": f"sleep {seconds}",
                       "resources": {"gpus": "A100:4"}})  # fmt: skip
    backend = SlurmBackend()
    handle = backend.submit(ResolvedJob(run_key=f"bench/hog/{time.time_ns()}/-1", name="hog", kind="batch",
                                        workload=w, run=w.run))  # fmt: skip
    deadline = time.time() + 60
    while backend.poll([handle])[handle.job_id].state != JobState.RUNNING:
        if time.time() > deadline:
            raise SystemExit("the job holding Slurm's GPUs did not start")
        time.sleep(0.2)
    return handle


def start_to_running(host: str, policy: dict[str, Any], i: int) -> tuple[float, str]:
    """(seconds from execute() to the job's first line, the target it ran on)."""
    from flexorch_provider.backends.base import JobHandle
    from flexorch_provider.backends.registry import get_backend
    from flexorch_provider.operators.flex import FlexOperator

    spec = {"name": "bench", "kind": "training", "target": ["slurm", "ssh"], "resources": {"gpus": 1},
            "ssh": {"connection": CONN, "hosts": [host]}, "run": "echo ran at $(date +%s.%N)", **policy}  # fmt: skip
    op = FlexOperator(task_id="train", spec=spec, deferrable=False, poll_interval=0.5)
    ti = Ti(f"bench-{i}-{time.time_ns()}")
    started = time.time()
    out = op.execute({"ti": ti})
    handle = JobHandle.from_dict(ti.xcom["job"]["handle"])
    lines = get_backend(handle.target).read_logs(handle, 0).lines
    ran = next(float(line.split()[-1]) for line in lines if line.startswith("ran at "))
    return ran - started, str(out["target"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds the other job holds Slurm's GPUs")
    parser.add_argument("--max-pending", type=float, default=5.0)
    args = parser.parse_args()
    import logging

    import flexorch_provider.links as links
    from flexorch_provider.backends.slurm import SlurmBackend
    from flexorch_provider.dev.testbed.fleet import SUBNET, start_fleet
    from flexorch_provider.dev.testbed.slurm import start_cluster

    logging.getLogger("airflow.task").setLevel(logging.WARNING)  # the jobs' own lines: not the bench's output
    links.push = lambda *a, **k: None  # no Airflow task here to store the link on
    links.job_url = lambda *a, **k: ""
    base = Path(tempfile.mkdtemp(prefix="flexorch-bench-placement-"))
    base.chmod(0o755)
    fleet = start_fleet(base / "fleet", 1)
    os.environ[f"AIRFLOW_CONN_{CONN.upper()}"] = fleet.connection_json()
    fleet.hosts[0].fake_nvidia_smi(L4_PAIR)
    cluster = start_cluster(base / "slurm", f"{SUBNET}.1")
    policies = {
        "first-accepts (default)": {},
        f"max_pending {args.max_pending:g}s": {"max_pending": args.max_pending},
        "first-free": {"target_policy": "first-free"},
    }
    times: dict[str, list[float]] = {name: [] for name in policies}
    where: dict[str, set[str]] = {name: set() for name in policies}
    held = []
    try:
        for i in range(args.repeat):
            for name, policy in policies.items():  # interleaved: each row sees the same machine
                held.append(hog(args.hold))
                seconds, target = start_to_running(fleet.hosts[0].entry, policy, i)
                times[name].append(seconds)
                where[name].add(target)
                SlurmBackend().cancel(held[-1])
    finally:
        for h in held:
            SlurmBackend().cancel(h)
        cluster.stop()
        fleet.stop()
        shutil.rmtree(base, ignore_errors=True)
    baseline = statistics.median(times["first-accepts (default)"])
    print(f"median of {args.repeat}; Slurm's 4 GPUs held for {args.hold:g} s from just before each start; "
          "ssh has 2 free")  # fmt: skip
    print(f"{'policy':<26}{'start → running':>16}{'× default':>11}  ran on")
    for name in policies:
        m = statistics.median(times[name])
        print(f"{name:<26}{m:>14.2f} s{m / baseline:>10.2f}×  {', '.join(sorted(where[name]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
