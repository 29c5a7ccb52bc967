"""GPU inventory over SSH: one host, and 16 hosts in parallel, against plain SSHHook commands.

Real sshd hosts, each in its own network namespace (the test suite's fleet; needs root),
with the tests' nvidia-smi stand-in printing recorded CSV (no GPU here: the time measured
is flexorch's — connection, one command, parsing — not the driver's). Every measurement
starts without pooled connections, like a fresh sensor poke.

    .venv/bin/python bench/gpu_inventory.py [--repeat 7]

Goal (DESIGN.md): GPU inventory of one SSH host ≤ 300 ms.
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

sys.path.insert(0, str(Path(__file__).parents[1]))

from bench.ssh_submit import cold, plain_hook_command, plain_hook_parallel
from flexorch_provider.dev.testbed.fleet import start_fleet
from flexorch_provider.inventory import inventory
from flexorch_provider.inventory.pools import SshPool
from tests.integration.test_gpu_inventory import DATA

CONN = "flexorch_bench_fleet"


def timed_inventory(entries: list[str]) -> float:
    cold()
    pool = SshPool(name="bench", source="ssh", connection=CONN, hosts=entries)
    started = time.perf_counter()
    inv = inventory(pool)
    elapsed = time.perf_counter() - started
    assert inv.total == 4 * len(entries), [(n.name, n.state, n.detail) for n in inv.nodes]
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="flexorch-bench-gpus-"))
    base.chmod(0o755)
    fleet = start_fleet(base, 16)
    os.environ[f"AIRFLOW_CONN_{CONN.upper()}"] = fleet.connection_json()
    for host in fleet.hosts:
        host.fake_nvidia_smi(
            (DATA / "nvidia-smi-mixed.csv").read_text(), (DATA / "nvidia-smi-mixed-apps.csv").read_text()
        )
    try:
        timed_inventory(fleet.entries(16))  # warm the hosts' page cache once
        plain, plain16, one, sixteen = [], [], [], []
        for _ in range(args.repeat):
            plain.append(plain_hook_command(fleet.hosts[0].entry))
            plain16.append(plain_hook_parallel(fleet.entries(16)))
            one.append(timed_inventory(fleet.entries(1)))
            sixteen.append(timed_inventory(fleet.entries(16)))
    finally:
        cold()
        fleet.stop()
        shutil.rmtree(base, ignore_errors=True)
    m_plain, m_plain16, m_one, m_16 = (statistics.median(v) for v in (plain, plain16, one, sixteen))
    print(f"median of {args.repeat}, cold connections each time")
    print(f"{'plain SSHHook connect + true':<38}{m_plain:>8.3f} s   1.00× (baseline)")
    print(f"{'flexorch inventory, 1 host':<38}{m_one:>8.3f} s {m_one / m_plain:>6.2f}× baseline")
    print(f"{'plain SSHHook on 16 hosts at once':<38}{m_plain16:>8.3f} s {m_plain16 / m_plain:>6.2f}× baseline")
    print(f"{'flexorch inventory, 16 hosts':<38}{m_16:>8.3f} s {m_16 / m_one:>6.2f}× one host, "
          f"{m_16 / m_plain16:.2f}× plain 16")  # fmt: skip
    print(f"goal: one host ≤ 300 ms: {'met' if m_one <= 0.3 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
