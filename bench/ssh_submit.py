"""ssh target: task start → remote job running, and a fleet deploy on 16 hosts vs 1.

Real sshd hosts, each in its own network namespace (the test suite's fleet, flexorch_provider/dev/testbed/fleet.py; needs root
and openssh-server). Every measurement starts without pooled connections, like a fresh
task process. Baseline in the same run: one plain SSHHook command (connect + ``true``),
what Airflow's own SSHOperator pays before it runs anything.

    .venv/bin/python bench/ssh_submit.py [--repeat 7]

Goals (DESIGN.md): start → job running ≤ 1 s; ``all`` on 16 hosts ≤ 1.5× one host. On one
small machine the 16 "hosts" share its cores (every handshake and remote python3 start
runs on the same CPUs), so the plain-SSHHook-on-16-hosts row shows the floor here, and the
row below it the floor for anything that starts python3 on each host (as the runner does).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexorch_provider.backends import ssh, sshpool
from flexorch_provider.backends.base import JobState, ResolvedJob
from flexorch_provider.dev.testbed.fleet import start_fleet
from flexorch_provider.resolve import load_workload

CONN = "flexorch_bench_fleet"


def job(hosts: list[str], placement: str, i: int) -> ResolvedJob:
    w = load_workload({"name": "bench", "kind": "batch", "target": "ssh", "run": "sleep 30",
                       "ssh": {"connection": CONN, "hosts": hosts, "placement": placement}})  # fmt: skip
    return ResolvedJob.for_run(w, f"bench/t/{placement}-{len(hosts)}-{i}-{time.time_ns()}/-1")


def cold() -> None:
    sshpool.forget_all()


def start_to_running(backend: ssh.SshBackend, hosts: list[str], placement: str, i: int) -> tuple[float, float]:
    """(submit → running as the task sees it: the status the submit answered with, as the
    operator's first look takes it; submit → a separate status poll says running)."""
    cold()
    started = time.perf_counter()
    handle = backend.submit(job(hosts, placement, i))
    status = handle.first_status
    if status is None or status.state != JobState.RUNNING:
        raise SystemExit(f"the submit did not answer with a running status: {status}")
    submitted = time.perf_counter() - started
    while backend.poll([handle])[handle.job_id].state != JobState.RUNNING:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    backend.cancel(handle)
    return submitted, elapsed


def plain_hook_command(entry: str, command: str = "true") -> float:
    from airflow.providers.ssh.hooks.ssh import SSHHook

    host = sshpool.Host.parse(entry)
    started = time.perf_counter()
    hook = SSHHook(ssh_conn_id=CONN, remote_host=host.host or "", port=host.port, username=host.user)
    with hook.get_conn() as client:
        _, stdout, _ = client.exec_command(command)
        stdout.channel.recv_exit_status()
    return time.perf_counter() - started


def plain_hook_parallel(entries: list[str], command: str = "true") -> float:
    """The floor for a fleet: a plain SSHHook command on every host at once (threads)."""
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(entries)) as pool:
        list(pool.map(lambda e: plain_hook_command(e, command), entries))
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="flexorch-bench-ssh-"))
    base.chmod(0o755)
    fleet = start_fleet(base, 16)
    os.environ[f"AIRFLOW_CONN_{CONN.upper()}"] = fleet.connection_json()
    backend = ssh.SshBackend()
    try:
        start_to_running(backend, fleet.entries(16), "all", -1)  # installs the runner everywhere once
        plain, plain16, python16, one, sixteen = [], [], [], [], []
        for i in range(args.repeat):
            plain.append(plain_hook_command(fleet.hosts[0].entry))
            plain16.append(plain_hook_parallel(fleet.entries(16)))
            python16.append(plain_hook_parallel(fleet.entries(16), "python3 -S -c pass"))
            one.append(start_to_running(backend, fleet.entries(1), "any", i))
            sixteen.append(start_to_running(backend, fleet.entries(16), "all", i))
    finally:
        cold()
        fleet.stop()
        shutil.rmtree(base, ignore_errors=True)
    m_plain, m_plain16, m_python16 = statistics.median(plain), statistics.median(plain16), statistics.median(python16)
    s_one, m_one = (statistics.median(x[k] for x in one) for k in (0, 1))
    s_16, m_16 = (statistics.median(x[k] for x in sixteen) for k in (0, 1))
    print(f"median of {args.repeat}, cold connections each time")
    print(f"{'plain SSHHook connect + true':<40}{m_plain:>8.3f} s   1.00× (baseline)")
    print(f"{'flexorch submit → running, 1 host':<40}{s_one:>8.3f} s {s_one / m_plain:>6.2f}× baseline")
    print(f"{'  + a separate status poll':<40}{m_one:>8.3f} s {m_one / m_plain:>6.2f}× baseline")
    print(f"{'plain SSHHook on 16 hosts at once':<40}{m_plain16:>8.3f} s {m_plain16 / m_plain:>6.2f}× baseline")
    print(f"{'  the same, running python3 -S -c pass':<40}{m_python16:>8.3f} s {m_python16 / m_plain:>6.2f}× baseline, "
          f"{m_python16 / m_plain16:.2f}× plain 16 (the floor for a runner in python)")  # fmt: skip
    print(f"{'flexorch all submit → running, 16 hosts':<40}{s_16:>8.3f} s {s_16 / s_one:>6.2f}× one host, "
          f"{s_16 / m_plain16:.2f}× plain 16")  # fmt: skip
    print(f"{'  + a separate status poll':<40}{m_16:>8.3f} s {m_16 / m_one:>6.2f}× one host, "
          f"{m_16 / m_plain16:.2f}× plain 16")  # fmt: skip
    print(f"goals: start → running ≤ 1 s: {'met' if s_one <= 1 else 'NOT met'}; "
          f"16 hosts ≤ 1.5× one: {'met' if s_16 / s_one <= 1.5 else 'NOT met'}; "
          f"16 hosts ≤ 1.5× plain 16: {'met' if s_16 / m_plain16 <= 1.5 else 'NOT met'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
