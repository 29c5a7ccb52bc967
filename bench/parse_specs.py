"""Parse time of a dags folder with N specs: flexorch's loader vs N plain Python DAG files and vs
astronomer dag-factory.

The three folders describe the same N DAGs of mixed kinds (one-task jobs, 3-step pipelines,
services), are loaded through Airflow's real ``DagBag`` in a fresh interpreter per
measurement (imports excluded), and are measured in the same run, interleaved, median of
``--repeat``. flexorch is measured twice: cold (empty spec cache, every file parsed and
validated) and warm (unchanged specs, the case of every re-parse by the dag-processor).

    .venv/bin/python bench/parse_specs.py [--specs 1000] [--repeat 3]

dag-factory is not installed into the product's environment (it registers an Airflow plugin that
every ``airflow`` command would load): ``scripts/bootstrap.sh`` puts it, without its dependencies
(Airflow's own), in ``.bench-deps/``, which only its measurement puts on ``PYTHONPATH``.

Goals: warm < 3 s and ≤ 0.5× dag-factory (DESIGN.md); cold ≤ 2× and warm ≤ 1.5× the plain
Python files (the baseline: what the same DAGs cost written by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexorch_provider.dev.stack import LOADER_FILE, loader_source

KINDS = ("batch", "training", "inference", "pipeline", "service")
BENCH_DEPS = Path(__file__).resolve().parents[1] / ".bench-deps"  # dag-factory, kept out of .venv


def flexorch_spec(i: int) -> str:
    kind = KINDS[i % len(KINDS)]
    head = f"name: {kind}-{i}\nkind: {kind}\nowner: team-{i % 7}\ntags: [bench]\ndescription: bench job {i}\n"
    if kind == "pipeline":
        return head + textwrap.dedent(f"""\
            schedule: "0 {i % 24} * * *"
            start_date: 2025-01-01
            target: local
            env: {{DAY: "{{{{ ds }}}}"}}
            retries: 1
            steps:
              - name: extract
                run: echo extract {i}
              - name: train
                kind: training
                after: extract
                run: echo train {i}
                resources: {{cpus: 2, memory: 4Gi}}
              - name: report
                after: [train]
                run: echo report {i}
            """)
    if kind == "service":
        return head + textwrap.dedent(f"""\
            target: kubernetes
            image: ghcr.io/acme/api:{i}
            run: [python, -m, api, --port, "8000"]
            replicas: 2
            port: 8000
            health: {{http: /healthz}}
            """)
    return head + textwrap.dedent(f"""\
        schedule: "@daily"
        start_date: 2025-01-01
        target: local
        run: echo {kind} {i} {{{{ ds }}}}
        env: {{A: "1"}}
        resources: {{cpus: 1, memory: 1Gi}}
        timeout: 1h
        retries: 2
        """)


def dagfactory_yaml(i: int) -> str:
    """The same DAG for dag-factory: BashOperator tasks with the same commands and settings."""
    dag_id, dag = bash_dag(i)
    return yaml.safe_dump({dag_id: dag}, sort_keys=False)


def python_dag(i: int) -> str:
    """The same DAG as a plain Python file, the way people write them by hand: the baseline."""
    dag_id, dag = bash_dag(i)
    args = dag["default_args"]
    lines = [
        "import datetime",
        "from airflow.sdk import DAG",
        "from airflow.providers.standard.operators.bash import BashOperator",
        "",
        f"with DAG({dag_id!r}, schedule={dag['schedule']!r}, start_date=datetime.datetime(2025, 1, 1), "
        f"description={dag['description']!r}, tags={dag['tags']!r}, default_args={{'owner': {args['owner']!r}}}):",
    ]
    for t in dag["tasks"]:
        kwargs = [f"task_id={t['task_id']!r}", f"bash_command={t['bash_command']!r}"]
        kwargs += [f"{k}={t[k]!r}" for k in ("env", "retries") if k in t]
        if "execution_timeout" in t:
            kwargs.append(f"execution_timeout=datetime.timedelta(hours={t['execution_timeout']['hours']})")
        lines.append(f"    t_{t['task_id']} = BashOperator({', '.join(kwargs)})")
        lines += [f"    t_{dep} >> t_{t['task_id']}" for dep in t.get("dependencies", [])]
    return "\n".join(lines) + "\n"


def bash_dag(i: int) -> tuple[str, dict[str, Any]]:
    """DAG i as BashOperator tasks (dag-factory's YAML form; the plain Python file says the same)."""
    kind = KINDS[i % len(KINDS)]
    bash = "airflow.providers.standard.operators.bash.BashOperator"
    dag: dict[str, Any] = {
        "default_args": {"owner": f"team-{i % 7}", "start_date": "2025-01-01"},
        "description": f"bench job {i}",
        "tags": ["bench", f"kind:{kind}"],
    }
    if kind == "pipeline":
        dag["schedule"] = f"0 {i % 24} * * *"
        env = {"DAY": "{{ ds }}"}
        dag["tasks"] = [
            {"task_id": "extract", "operator": bash, "bash_command": f"echo extract {i}", "env": env, "retries": 1},
            {"task_id": "train", "operator": bash, "bash_command": f"echo train {i}", "env": env, "retries": 1,
             "dependencies": ["extract"]},
            {"task_id": "report", "operator": bash, "bash_command": f"echo report {i}", "env": env, "retries": 1,
             "dependencies": ["train"]},
        ]  # fmt: skip
    elif kind == "service":
        dag["schedule"] = None
        dag["tasks"] = [{"task_id": "deploy", "operator": bash, "bash_command": "python -m api --port 8000"}]
    else:
        dag["schedule"] = "@daily"
        dag["tasks"] = [
            {"task_id": kind, "operator": bash, "bash_command": f"echo {kind} {i} {{{{ ds }}}}", "env": {"A": "1"},
             "retries": 2, "execution_timeout": {"__type__": "datetime.timedelta", "hours": 1}},
        ]  # fmt: skip
    return f"{kind}-{i}", dag


MEASURE = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
import logging; logging.disable(logging.CRITICAL)
from airflow.dag_processing.dagbag import DagBag
import airflow.sdk
t = time.perf_counter()
bag = DagBag(sys.argv[1])
elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "dags": len(bag.dags), "errors": len(bag.import_errors)}))
"""


def measure(folder: Path, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(folder)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"measuring {folder} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not (BENCH_DEPS / "dagfactory").is_dir():
        raise SystemExit(f"dag-factory is not in {BENCH_DEPS}: run scripts/bootstrap.sh")

    work = Path(tempfile.mkdtemp(prefix="flexorch-bench-parse-"))
    try:
        flex, factory, plain = work / "flexorch", work / "dagfactory", work / "python"
        (flex / "specs").mkdir(parents=True)
        (factory / "configs").mkdir(parents=True)
        plain.mkdir()
        (flex / LOADER_FILE).write_text(loader_source())
        (factory / "dagfactory_dags.py").write_text(
            "# airflow DAG loader for dag-factory\nfrom pathlib import Path\nfrom dagfactory import load_yaml_dags\n"
            "load_yaml_dags(globals_dict=globals(), dags_folder=str(Path(__file__).parent / 'configs'))\n"
        )
        for i in range(args.specs):
            name = f"{KINDS[i % len(KINDS)]}-{i}"
            (flex / "specs" / f"{name}.yaml").write_text(flexorch_spec(i))
            (factory / "configs" / f"{name}.yaml").write_text(dagfactory_yaml(i))
            (plain / f"{name.replace('-', '_')}.py").write_text(python_dag(i))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
            "AIRFLOW_HOME": str(work / "home"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "600",
            "AIRFLOW__DAG_FACTORY__ENABLE_TELEMETRY": "False",
            "DO_NOT_TRACK": "1",
            "FLEXORCH_CACHE_DIR": str(work / "cache"),
            "FLEXORCH_SUBMIT_DAG": "0",  # the specs' DAGs only, like for like with dag-factory
        }
        runs: dict[str, list[float]] = {"plain Python": [], "flexorch (cold)": [], "flexorch (warm)": [],
                                        "dag-factory": []}  # fmt: skip
        counts: dict[str, int] = {}
        order = (
            ("plain Python", plain),
            ("flexorch (cold)", flex),
            ("flexorch (warm)", flex),
            ("dag-factory", factory),
        )
        for _ in range(args.repeat):
            shutil.rmtree(work / "cache", ignore_errors=True)
            for label, folder in order:
                result = measure(folder, {**env, "PYTHONPATH": str(BENCH_DEPS)} if folder == factory else env)
                if result["errors"] or result["dags"] < args.specs:
                    # dag-factory logs a YAML it cannot load and carries on: count the DAGs too
                    raise SystemExit(
                        f"{label}: {result['dags']} DAGs of {args.specs}, {result['errors']} import errors"
                    )
                runs[label].append(result["seconds"])
                counts[label] = int(result["dags"])
        median = {k: statistics.median(v) for k, v in runs.items()}
        base, py = median["dag-factory"], median["plain Python"]
        print(f"{args.specs} specs, median of {args.repeat} interleaved runs, one fresh interpreter each")
        print(f"{'loader':<18}{'DAGs':>6}{'seconds':>10}{'× plain Python':>16}{'× dag-factory':>16}")
        for label, seconds in median.items():
            print(f"{label:<18}{counts[label]:>6}{seconds:>10.2f}{seconds / py:>16.2f}{seconds / base:>16.2f}")
        cold, warm = median["flexorch (cold)"], median["flexorch (warm)"]
        ok = warm < 3.0 and warm / base <= 0.5
        print(f"goal: warm < 3 s and ≤ 0.5× dag-factory → {'met' if ok else 'NOT met'}")
        print(f"goal: cold ≤ 2× plain Python ({cold / py:.2f}×) and warm ≤ 1.5× ({warm / py:.2f}×) → "
              f"{'met' if cold / py <= 2 and warm / py <= 1.5 else 'NOT met'}")  # fmt: skip
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
