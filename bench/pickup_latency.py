"""A spec dropped into a running stack → its DAG in ``/api/v2/dags``: how long?

Starts the embedded stack (tuned intervals: min_file_process_interval and
refresh_interval 2 s, as in TESTBED.md), then alternately drops a new flexorch spec into
the specs folder and a new hand-written Python DAG file into the dags folder (the
baseline: what Airflow itself does for a plain DAG file), and times each until the REST
API lists the DAG.

    .venv/bin/python bench/pickup_latency.py [--drops 5]

Goal (DESIGN.md): a dropped spec is visible in ≤ 5 s with tuned settings.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexorch_provider.dag_factory.folder import CACHE_DIR_ENV, SPECS_DIR_ENV
from flexorch_provider.dev.stack import LOADER_FILE, AirflowStack, loader_source

SPEC = "name: {name}\nkind: batch\ntarget: local\nrun: echo {name}\n"
PY_DAG = (
    "# a hand-written airflow DAG\nfrom airflow.sdk import DAG\n"
    "from airflow.providers.standard.operators.bash import BashOperator\n"
    "with DAG({name!r}, schedule=None):\n    BashOperator(task_id='batch', bash_command='echo {name}')\n"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drops", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flexorch-bench-pickup-"))
    dags, specs = work / "dags", work / "specs"
    specs.mkdir(parents=True)
    dags.mkdir()
    (dags / LOADER_FILE).write_text(loader_source())
    (specs / "first.yaml").write_text(SPEC.format(name="first"))
    stack = AirflowStack(
        work / "home", dags, {SPECS_DIR_ENV: str(specs), CACHE_DIR_ENV: str(work / "cache")}, scratch=True
    )
    times: dict[str, list[float]] = {"flexorch spec": [], "python DAG file": []}
    try:
        stack.start()
        stack.wait_dag("first", timeout=120)
        for i in range(args.drops):
            for label in times:
                name = f"drop-{'spec' if label == 'flexorch spec' else 'py'}-{i}"
                started = time.monotonic()
                if label == "flexorch spec":
                    (specs / f"{name}.yaml").write_text(SPEC.format(name=name))
                else:
                    (dags / f"{name.replace('-', '_')}.py").write_text(PY_DAG.format(name=name))
                stack.wait_for(lambda n=name: stack.dag(n), 120, f"{name} in the REST API", interval=0.1)
                times[label].append(time.monotonic() - started)
    finally:
        stack.stop()
    base = statistics.median(times["python DAG file"])
    print(f"time from dropping a file to its DAG in /api/v2/dags ({args.drops} drops each, median / max)")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"{label:<18}{median:>7.2f} s {max(values):>7.2f} s {median / base:>8.2f}× python DAG file")
    worst = max(times["flexorch spec"])
    print(f"goal: ≤ 5 s → {'met' if worst <= 5 else 'NOT met'} (worst {worst:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
