"""``flexorch up``: the embedded Airflow (LocalExecutor on a private PostgreSQL, or SQLite where
none is installed) with a folder of specs.

It writes the drop-in loader into ``<home>/dags``, points it at the specs folder, starts
api-server, scheduler, dag-processor and triggerer (and with ``--demo-targets`` an ssh fleet and a
Slurm on this machine), keeps paused the DAGs whose specs name connections this Airflow does
not have (:class:`Gate`), optionally runs DAGs end to end with their logs streamed to the
terminal, prints where the UI is and how to log in, and stops every process it started on Ctrl-C.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flexorch_provider.cli.needs import folder_needs
from flexorch_provider.client.progress import new_lines
from flexorch_provider.dag_factory.folder import SPECS_DIR_ENV
from flexorch_provider.dev.stack import LOADER_FILE, AirflowStack, loader_source
from flexorch_provider.exceptions import FlexorchError
from flexorch_provider.policy.model import FILE_NAME, POLICY_ENV

FINISHED = {"success", "failed"}
GATE_INTERVAL_S = 5  # how often a new or edited spec's DAG is checked for what it needs


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


class Gate:
    """Keeps every DAG paused until what its spec needs exists (see :mod:`.needs`).

    Each :meth:`apply` looks at the DAGs Airflow has now: one seen for the first time is unpaused
    if its spec's connections all exist, else it stays paused (Airflow creates them paused here)
    and the reason is printed once. A DAG this gate paused is unpaused once its connections
    appear; one the user paused or unpaused afterwards is left as they set it. State:
    ``<home>/flexorch-up.json``."""

    def __init__(self, stack: AirflowStack, specs: Path) -> None:
        self.stack = stack
        self.specs = specs
        self.path = stack.home / "flexorch-up.json"
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            state = {}
        self.seen: set[str] = set(state.get("seen", []))
        self.held: dict[str, list[str]] = dict(state.get("held", {}))

    def _have(self, conn_id: str) -> bool:
        if f"AIRFLOW_CONN_{conn_id.upper()}" in self.stack.env:
            return True
        try:
            self.stack.api("GET", f"/api/v2/connections/{urllib.parse.quote(conn_id)}")
        except urllib.error.HTTPError:
            return False
        return True

    def _set_paused(self, dag_id: str, paused: bool) -> None:
        self.stack.api("PATCH", f"/api/v2/dags/{urllib.parse.quote(dag_id)}", {"is_paused": paused})

    def apply(self) -> dict[str, list[str]]:
        """One pass; returns the DAGs held back now, each with what it needs."""
        present = set(self.stack.dag_ids())
        by_dag = {d: n for n in folder_needs(self.specs) for d in n.dag_ids}
        have: dict[str, bool] = {}

        def cached_have(conn_id: str) -> bool:
            if conn_id not in have:
                have[conn_id] = self._have(conn_id)
            return have[conn_id]

        for dag_id in sorted(present):
            needs = by_dag.get(dag_id)
            missing = needs.missing(cached_have) if needs is not None else []
            if missing and dag_id not in self.seen:
                self._set_paused(dag_id, True)
                self.held[dag_id] = missing
                _say(f"    paused {dag_id}: needs {', '.join(missing)}")
            elif not missing and (dag_id not in self.seen or dag_id in self.held):
                self._set_paused(dag_id, False)
                if self.held.pop(dag_id, None) is not None:
                    _say(f"    unpaused {dag_id}: what it needs exists now")
            elif missing and dag_id in self.held:
                self.held[dag_id] = missing
            self.seen.add(dag_id)
        self.path.write_text(json.dumps({"seen": sorted(self.seen), "held": self.held}, indent=1))
        return {d: m for d, m in self.held.items() if d in present}

    def settle(self, dag_ids: Iterable[str], timeout: float = 90) -> None:
        """Wait until these DAGs are parsed, then apply once (before they are triggered)."""
        for dag_id in dag_ids:
            self.stack.wait_dag(dag_id, timeout=timeout)
        self.apply()


def _start_demo_targets(home: Path) -> Any:
    from flexorch_provider.dev.testbed.demo import start_targets

    _say("==> starting the demo's targets (an ssh fleet and a Slurm on this machine; see the README)")
    targets = start_targets(home)
    for line in targets.started:
        _say(f"    {line}")
    for target, why in targets.missing.items():
        _say(f"    {target}: not started: {why}")
    return targets


DEV_POLICY_HEADER = "# Written by `flexorch up` for this embedded stack"
DEV_POLICY = """\
{header}: without a policy every `flexorch submit` is
# refused. Edit it (then it is yours: it is not written again), or put your own flexorch_policy.yaml
# beside the specs. admin may do anything; teams given with --user NAME:ROLE:TEAM get tight limits
# to try the policy with (flexorch policy audit lists what is open).
teams:
  dev:
    members: [admin]
    targets: [local, ssh, slurm, kubernetes]
    secrets: ["*"]
    services: true
{teams}default_team: dev
"""
TEAM_RULES = "targets: [local, ssh, slurm], max_gpus: 2, max_timeout: 1h, max_concurrent: 2, gpu_hours: {limit: 4}"
ROLES = ("viewer", "user", "op", "admin")


def parse_users(values: list[str]) -> list[tuple[str, str, str | None]]:
    """``NAME:ROLE[:TEAM]`` → (name, role, team); ValueError says what is wrong."""
    out = []
    for value in values:
        parts = value.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"--user {value!r}: write NAME:ROLE or NAME:ROLE:TEAM (roles: {', '.join(ROLES)})")
        name, role = parts[0], parts[1].lower()
        if role not in ROLES:
            raise ValueError(f"--user {value!r}: role {parts[1]!r} is not one of {', '.join(ROLES)}")
        if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name) or (
            len(parts) == 3 and not re.fullmatch(r"[a-z0-9-]{1,63}", parts[2])
        ):
            raise ValueError(
                f"--user {value!r}: names are letters, digits and _.@- ; teams lowercase letters, digits, -"
            )
        if name == "admin":
            raise ValueError("--user admin: the stack has its admin already")
        out.append((name, role, parts[2] if len(parts) == 3 else None))
    return out


def _dev_policy(home: Path, specs: Path, users: list[tuple[str, str, str | None]] | None = None) -> Path | None:
    """The policy this stack's submissions use when the specs folder has none (and $FLEXORCH_POLICY
    names none): ``<home>/flexorch_policy.yaml``, written again while it is flexorch's own text (so
    ``--user`` teams follow the command line), left alone once someone has edited it."""
    if os.environ.get(POLICY_ENV) or (specs / FILE_NAME).exists():
        return None
    teams: dict[str, list[str]] = {}
    for name, _, team in users or []:
        if team is not None:
            teams.setdefault(team, []).append(name)
    body = DEV_POLICY.format(
        header=DEV_POLICY_HEADER,
        teams="".join(f"  {t}: {{members: [{', '.join(m)}], {TEAM_RULES}}}\n" for t, m in sorted(teams.items())),
    )
    path = home / FILE_NAME
    if not path.exists() or _unedited(path.read_text(encoding="utf-8")):
        path.write_text(body + _seal(body), encoding="utf-8")
    return path


def _seal(body: str) -> str:
    return f"# flexorch up {hashlib.sha256(body.encode()).hexdigest()[:16]}\n"


def _unedited(text: str) -> bool:
    """The file is still what `flexorch up` wrote (its last line seals the rest)."""
    body, _, last = text.rstrip("\n").rpartition("\n")
    return bool(body) and _seal(body + "\n") == last + "\n"


def run_up(args: argparse.Namespace) -> int:
    home = Path(args.home).resolve()
    specs = Path(args.specs).resolve()
    if not specs.is_dir():
        print(f"error: {args.specs} is not a folder; pass --specs DIR with your spec files", file=sys.stderr)
        return 2
    dags = home / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    (dags / LOADER_FILE).write_text(loader_source(), encoding="utf-8")
    env = {
        SPECS_DIR_ENV: str(specs),
        "FLEXORCH_RUN_DIR": str(home / "runs"),
        # every DAG starts paused; the gate unpauses those whose connections exist
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }
    try:
        users = parse_users(args.user or [])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dev_policy = _dev_policy(home, specs, users)
    if dev_policy is not None:
        env[POLICY_ENV] = str(dev_policy)
    try:
        stack = AirflowStack(home, dags, env, port=args.port, all_admins=False, db=args.db)
        stack.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = ",".join(
            ["admin:admin", *(f"{name}:{role}" for name, role, _ in users)]
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
    targets = None
    try:
        if args.demo_targets:
            targets = _start_demo_targets(home)
            stack.env.update(targets.env)
        _say(f"==> starting Airflow in {home} (LocalExecutor, {stack.db.describe()}); specs from {specs}")
        if dev_policy is not None:
            _say(
                f"==> submissions follow {dev_policy} (written for this stack: edit it, or add {FILE_NAME} to the specs)"
            )
        stack.start()
        _say(f"==> Airflow is up at {stack.url}")
        gate = Gate(stack, specs)
        gate.settle(args.run or [])
        for dag_id in args.run or []:
            held = gate.apply().get(dag_id)
            if held:
                _say(f"==> not running {dag_id}: it needs {', '.join(held)}")
                continue
            state = _follow_run(stack, dag_id, timeout=args.run_timeout)
            _say(f"==> {dag_id}: {state}")
            if state != "success":
                status = 1
        if not args.exit_after_run:
            password = stack.password() or "(see simple_auth_manager_passwords.json.generated in the home folder)"
            _say("")
            _say(f"    Airflow UI:  {stack.url}")
            _say(f"    log in as:   admin / {password}")
            for name, role, team in users:
                said = stack.password(name) or "(see the passwords file in the home folder)"
                _say(f"                 {name} / {said}  ({role}{f', team {team}' if team else ''})")
            _say(f"    DAGs from:   {specs} (edit or add a spec; it shows up within seconds)")
            _say(f"    logs:        {home}/*.log")
            _say(f"    airflow CLI: . {home}/airflow.env && airflow dags list")
            _say("    Ctrl-C stops Airflow and every job it started.")
            while not stop.wait(GATE_INTERVAL_S):
                gate.apply()
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError, FlexorchError) as e:
        print(f"error: {e}", file=sys.stderr)
        status = 1
    finally:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        _say("==> stopping Airflow")
        stack.stop()
        if targets is not None:
            _say("==> stopping the demo's targets")
            targets.stop()
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
        "--user",
        action="append",
        metavar="NAME:ROLE[:TEAM]",
        help="another login (role viewer, user, op or admin; repeatable); with TEAM, the stack's policy gets "
        "that team with tight limits, to try submissions and the policy as that user",
    )
    p.add_argument(
        "--db",
        choices=("auto", "postgres", "sqlite"),
        default=None,
        help="metadata database: a private PostgreSQL (needs Debian's postgresql), SQLite, or auto "
        "(PostgreSQL where it can run; default, also $FLEXORCH_STACK_DB)",
    )
    p.add_argument(
        "--run",
        metavar="DAG_ID",
        action="append",
        help="trigger this DAG once it is parsed and stream its log (repeatable: one after the other)",
    )
    p.add_argument(
        "--demo-targets",
        action="store_true",
        help="also start an ssh fleet and a one-node Slurm with fake GPUs on this machine (root, Debian), "
        "with connections demo_fleet / demo_slurm and a gpu_pools.yaml for them",
    )
    p.add_argument("--run-timeout", type=float, default=600, help="seconds to wait for --run")
    p.add_argument("--exit-after-run", action="store_true", help="stop after --run instead of waiting for Ctrl-C")
    p.set_defaults(func=run_up)
