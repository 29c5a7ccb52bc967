"""slurm target: 500 deferred jobs followed by one triggerer, against a naive per-job poller.

Starts the test suite's real one-node Slurm (flexorch_provider/dev/testbed/slurm.py; needs root and
slurm-wlm), submits N jobs that wait in the queue (each wants all 4 GPUs, so one runs at a
time and the rest pend), then measures, in the same run:

- flexorch: N ``FlexJobTrigger``s in one asyncio loop, as in a triggerer; squeue calls and
  CPU time (this process + its children) per poll interval;
- naive: what one deferrable operator per task does — its own ``squeue -j <id>`` per job
  per interval; the same counters for one interval.

    .venv/bin/python bench/slurm_polling.py [--jobs 500] [--intervals 5]

Goal (DESIGN.md): 500 deferred Slurm jobs cost 1 squeue per cluster per poll interval.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from flexorch_provider.backends import slurm
from flexorch_provider.backends.base import ResolvedJob
from flexorch_provider.dev.testbed.slurm import start_cluster
from flexorch_provider.resolve import load_workload
from flexorch_provider.triggers.job import FlexJobTrigger

INTERVAL = 1.0


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Counter:
    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.rounds = 0  # backend.poll calls: one per batch per interval
        self._real = slurm.Cluster.run
        self._real_poll = slurm.SlurmBackend.poll

    def __enter__(self) -> Counter:
        real = self._real

        def counting(cluster, argv, stdin=None):
            self.calls[argv[0]] = self.calls.get(argv[0], 0) + 1
            return real(cluster, argv, stdin)

        real_poll = self._real_poll

        def counting_poll(backend, handles):
            self.rounds += 1
            return real_poll(backend, handles)

        slurm.Cluster.run = counting  # type: ignore[method-assign]
        slurm.SlurmBackend.poll = counting_poll  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc) -> None:
        slurm.Cluster.run = self._real  # type: ignore[method-assign]
        slurm.SlurmBackend.poll = self._real_poll  # type: ignore[method-assign]


async def follow_all(handles, seconds: float) -> None:
    triggers = [FlexJobTrigger(h.to_dict(), poll_interval=INTERVAL) for h in handles]

    async def drain(t):
        async for _ in t.run():
            return

    tasks = [asyncio.create_task(drain(t)) for t in triggers]
    await asyncio.sleep(seconds)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--intervals", type=int, default=5)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="flexorch-bench-slurm-"))
    cluster = start_cluster(base, "127.0.0.1")
    backend = slurm.SlurmBackend()
    try:
        w = load_workload({"name": "bench", "kind": "batch", "target": "slurm", "run": "sleep 600",
                           "resources": {"gpus": "A100:4"}})  # fmt: skip
        started = time.perf_counter()
        handles = [backend.submit(ResolvedJob.for_run(w, f"bench/job/{i}/-1")) for i in range(args.jobs)]
        print(f"submitted {len(handles)} jobs in {time.perf_counter() - started:.1f} s")

        with Counter() as batched:
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            asyncio.run(follow_all(handles, args.intervals * INTERVAL + 0.5))
            cpu_b, wall_b = cpu_seconds() - cpu0, time.perf_counter() - t0
        rounds_b = batched.calls.get("squeue", 0)

        with Counter() as naive:
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            for h in handles:  # one interval of a per-job poller
                backend.poll([h])
            cpu_n, wall_n = cpu_seconds() - cpu0, time.perf_counter() - t0

        intervals = max(batched.rounds, 1)  # poll rounds of the shared batcher, one per interval
        calls_b = rounds_b / intervals
        naive_calls = naive.calls.get("squeue", 0)
        print(f"{'':36}{'squeue calls':>13}{'CPU s':>9}")
        print(f"{'flexorch, per poll interval':36}{calls_b:>13.2f}{cpu_b / intervals:>9.3f}"
              f"   ({rounds_b} squeue calls in {batched.rounds} poll rounds, {wall_b:.1f} s; other calls: "
              f"{ {k: v for k, v in batched.calls.items() if k != 'squeue'} })")  # fmt: skip
        print(f"{'naive per-job poller, one interval':36}{naive_calls:>13}{cpu_n:>9.3f}   (took {wall_n:.1f} s)")
        print(f"ratio: {naive_calls / calls_b:.0f}x fewer squeue calls; CPU per interval "
              f"{(cpu_b / intervals) / cpu_n:.3f}x the naive poller's")  # fmt: skip
        print(f"goal: 1 squeue per cluster per interval: {'met' if calls_b <= 1.05 else 'NOT met'}")
    finally:
        cluster.run("scancel", "-u", "root", check=False)
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
