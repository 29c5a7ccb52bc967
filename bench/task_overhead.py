"""Trigger → run end on the embedded stack: a FlexOperator running a local job of 1 s, 8 s and 30 s
against a BashOperator sleeping as long (the same stack, interleaved).

What the ratio shows is what flexorch adds to a task: the worker follows the job for
``defer_after``, defers, the trigger notices the end up to a poll later, and a deferred task
resumes no sooner than the resume hold after deferring (the Airflow 3.3.2 race workaround).

    .venv/bin/python bench/task_overhead.py [--repeat 3] [--durations 1,8,30]

Goal (issue 19): ≤ 1.2× for each duration.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexorch_provider.dev.stack import AirflowStack

DAGS = """
import datetime as dt
from airflow.sdk import DAG
from airflow.providers.standard.operators.bash import BashOperator
from flexorch_provider.operators.flex import FlexOperator

for seconds in {durations!r}:
    with DAG(f"flex_{{seconds}}", schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False):
        FlexOperator(task_id="job", spec={{"name": f"overhead-{{seconds}}", "kind": "batch", "target": "local",
                                           "run": f"sleep {{seconds}}"}})
    with DAG(f"bash_{{seconds}}", schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False):
        BashOperator(task_id="job", bash_command=f"sleep {{seconds}}")
"""


def run_once(stack: AirflowStack, dag_id: str) -> float:
    started = time.time()
    run_id = stack.trigger(dag_id)

    def ended() -> dict | None:
        r = stack.dag_run(dag_id, run_id)
        return r if r["state"] in ("success", "failed") else None

    run = stack.wait_for(ended, 600, dag_id)
    if run["state"] != "success":
        raise RuntimeError(f"{dag_id} {run_id}: {run['state']}")
    end = dt.datetime.fromisoformat(run["end_date"].replace("Z", "+00:00")).timestamp()
    return end - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--durations", default="1,8,30")
    args = parser.parse_args()
    durations = [int(d) for d in args.durations.split(",")]
    base = Path(tempfile.mkdtemp(prefix="flexorch-bench-overhead-"))
    dags = base / "dags"
    dags.mkdir()
    (dags / "overhead.py").write_text(DAGS.format(durations=durations))
    stack = AirflowStack(base / "home", dags, {"FLEXORCH_RUN_DIR": str(base / "runs")}, scratch=True)
    stack.start()
    rows: dict[tuple[str, int], list[float]] = {}
    try:
        for d in durations:
            stack.wait_dag(f"flex_{d}", 120)
            stack.wait_dag(f"bash_{d}", 120)
        for d in durations:  # one warm-up each: the first task of a kind pays imports
            run_once(stack, f"flex_{d}")
            run_once(stack, f"bash_{d}")
        for _ in range(args.repeat):
            for d in durations:
                for kind in ("bash", "flex"):
                    rows.setdefault((kind, d), []).append(run_once(stack, f"{kind}_{d}"))
    finally:
        stack.stop()
    print(f"\n{'job':>6} {'BashOperator s':>15} {'FlexOperator s':>15} {'ratio':>7}   (median of {args.repeat})")
    for d in durations:
        b, f = statistics.median(rows[("bash", d)]), statistics.median(rows[("flex", d)])
        print(f"{d:>5}s {b:15.1f} {f:15.1f} {f / b:6.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
