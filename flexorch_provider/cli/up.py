"""``flexorch up``: the embedded Airflow (LocalExecutor on a private PostgreSQL, or SQLite where
none is installed) with a folder of specs.

It writes the drop-in loader into ``<home>/dags``, points it at the specs folder, starts
api-server, scheduler, dag-processor and triggerer, optionally runs one DAG end to end
with its log streamed to the terminal, prints where the UI is and how to log in, and
stops every process it started on Ctrl-C.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from flexorch_provider.client.follow import new_lines
from flexorch_provider.dag_factory.folder import SPECS_DIR_ENV
from flexorch_provider.devstack import LOADER_FILE, AirflowStack, loader_source
from flexorch_provider.exceptions import FlexorchError

FINISHED = {"success", "failed"}


def _say(message: str) -> None:
    print(message, flush=True)


def _follow_run(stack: AirflowStack, dag_id: str, timeout: float) -> str:
    """Trigger ``dag_id`` now and stream its task logs until the run finishes; returns its state."""
    stack.wait_dag(dag_id, timeout=90)
    now = dt.datetime.now(dt.UTC).isoformat()
    run_id = stack.trigger(dag_id, logical_date=now)
    _say(f"==> triggered {dag_id} (run {run_id}); its log:")
    printed: dict[tuple[str, int], collections.Counter[tuple[str, str]]] = {}
    complete: set[tuple[str, int]] = set()
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = stack.dag_run(dag_id, run_id).get("state")
        for ti in sorted(stack.task_instances(dag_id, run_id), key=lambda t: t.get("start_date") or ""):
            task_id, tries = ti["task_id"], int(ti.get("try_number") or 0)
            for attempt in range(1, tries + 1):  # an earlier try's last lines, once, when a retry starts
                if (task_id, attempt) in complete:
                    continue
                done = printed.setdefault((task_id, attempt), collections.Counter())
                label = task_id if attempt == 1 else f"{task_id} try {attempt}"
                for line in new_lines(stack.task_log_entries(dag_id, run_id, task_id, attempt), done):
                    _say(f"    [{label}] {line}")
                if attempt < tries:
                    complete.add((task_id, attempt))
        if state in FINISHED:
            return str(state)
        time.sleep(1)
    return "timed out"


def run_up(args: argparse.Namespace) -> int:
    home = Path(args.home).resolve()
    specs = Path(args.specs).resolve()
    if not specs.is_dir():
        print(f"error: {args.specs} is not a folder; pass --specs DIR with your spec files", file=sys.stderr)
        return 2
    dags = home / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    (dags / LOADER_FILE).write_text(loader_source(), encoding="utf-8")
    try:
        stack = AirflowStack(
            home,
            dags,
            {SPECS_DIR_ENV: str(specs), "FLEXORCH_RUN_DIR": str(home / "runs")},
            port=args.port,
            all_admins=False,
            db=args.db,
        )
    except FlexorchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        _say(f"==> starting Airflow in {home} (LocalExecutor, {stack.db.describe()}); specs from {specs}")
        stack.start()
        _say(f"==> Airflow is up at {stack.url}")
        if args.run:
            state = _follow_run(stack, args.run, timeout=args.run_timeout)
            _say(f"==> {args.run}: {state}")
            if state != "success":
                status = 1
        if not args.exit_after_run:
            password = stack.password() or "(see simple_auth_manager_passwords.json.generated in the home folder)"
            _say("")
            _say(f"    Airflow UI:  {stack.url}")
            _say(f"    log in as:   admin / {password}")
            _say(f"    DAGs from:   {specs} (edit or add a spec; it shows up within seconds)")
            _say(f"    logs:        {home}/*.log")
            _say(f"    airflow CLI: . {home}/airflow.env && airflow dags list")
            _say("    Ctrl-C stops Airflow and every job it started.")
            while not stop.wait(1):
                pass
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        status = 1
    finally:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        _say("==> stopping Airflow")
        stack.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        _say("==> stopped")
    return status


def add_parser(sub: Any) -> None:
    p = sub.add_parser("up", help="start a local Airflow with a folder of specs (the demo); Ctrl-C stops it")
    p.add_argument("--specs", default="specs", help="folder of spec files (default: ./specs)")
    p.add_argument("--home", default=".flexorch-up", help="AIRFLOW_HOME for the embedded stack")
    p.add_argument("--port", type=int, default=8080, help="UI/API port (another free port if taken)")
    p.add_argument(
        "--db",
        choices=("auto", "postgres", "sqlite"),
        default=None,
        help="metadata database: a private PostgreSQL (needs Debian's postgresql), SQLite, or auto "
        "(PostgreSQL where it can run; default, also $FLEXORCH_STACK_DB)",
    )
    p.add_argument("--run", metavar="DAG_ID", help="trigger this DAG once it is parsed and stream its log")
    p.add_argument("--run-timeout", type=float, default=600, help="seconds to wait for --run")
    p.add_argument("--exit-after-run", action="store_true", help="stop after --run instead of waiting for Ctrl-C")
    p.set_defaults(func=run_up)
