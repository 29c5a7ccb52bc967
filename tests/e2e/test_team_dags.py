"""Teams kept apart after submit by Airflow's own permissions: a real stack with the FAB auth
manager (per-DAG permissions), the roles `flexorch policy roles` prints, and each team's submit DAG
granted to its roles by the policy's ``airflow_roles``. A user of one team cannot read, trigger or
stop another team's submissions, and `flexorch submit`/`logs`/`cancel` work with those roles."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from flexorch_provider.client.api import Api, Login
from flexorch_provider.dag_factory.folder import CACHE_DIR_ENV, SPECS_DIR_ENV
from flexorch_provider.dev.stack import LOADER_FILE, loader_source
from flexorch_provider.exceptions import ClientError
from tests.e2e.stack import AirflowStack

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "e2e-team-dags"
FLEXORCH = str(Path(sys.executable).parent / "flexorch")
FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
NLP, CV = "flexorch-submit-nlp", "flexorch-submit-cv"
POLICY = """\
teams:
  nlp:
    members: [alice]
    targets: [local]
    max_timeout: 30m
    airflow_roles: [nlp-users]
  cv:
    members: [bob]
    targets: [local]
    max_timeout: 30m
    airflow_roles: [cv-users]
"""
USERS = {"admin": "Admin", "alice": "nlp-users", "bob": "cv-users"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("team-dags")
    dags, specs = base / "dags", base / "specs"
    dags.mkdir()
    specs.mkdir()
    (specs / "flexorch_policy.yaml").write_text(POLICY)
    s = AirflowStack(
        base / "home",
        dags,
        {
            "AIRFLOW__CORE__AUTH_MANAGER": FAB,
            SPECS_DIR_ENV: str(specs),
            CACHE_DIR_ENV: str(base / "cache"),
            "FLEXORCH_RUN_DIR": str(base / "runs"),
            "FLEXORCH_STATE_DIR": str(base / "state"),
        },
        all_admins=False,
    )
    s.start()
    try:
        # the roles first (FAB refuses a DAG whose access_control names a missing role), then the DAGs
        roles = subprocess.run([FLEXORCH, "policy", "roles", str(specs)], capture_output=True, text=True, check=True)
        for line in roles.stdout.splitlines():
            if line and not line.startswith("#"):
                done = s.cli(*shlex.split(line)[1:])
                assert done.returncode == 0, line + "\n" + done.stdout[-1000:] + done.stderr[-2000:]
        for user, role in USERS.items():
            s.passwords[user] = f"pw-{user}-{time.time_ns()}"
            made = s.cli("users", "create", "-u", user, "-p", s.passwords[user], "-r", role, "-f", user, "-l", "x",
                         "-e", f"{user}@example.org")  # fmt: skip
            assert made.returncode == 0, made.stderr[-2000:]
        (dags / LOADER_FILE).write_text(loader_source())
        s.wait_dag(NLP, timeout=120)
        s.wait_dag(CV, timeout=30)
        yield s
    finally:
        s.stop()
        s.save_logs(ARTIFACTS)


def _as(stack: AirflowStack, user: str) -> Api:
    return Api(Login(stack.url, user, stack.password(user)))


def _cli(stack: AirflowStack, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FLEXORCH"))}
    env.update(FLEXORCH_API_URL=stack.url, FLEXORCH_USER=user, FLEXORCH_PASSWORD=str(stack.password(user)),
               FLEXORCH_CONFIG=str(stack.home / f"login-{user}.json"))  # fmt: skip
    return subprocess.run([FLEXORCH, *args], env=env, capture_output=True, text=True, timeout=240)


def _status(call) -> int:  # type: ignore[no-untyped-def]
    try:
        call()
    except ClientError as e:
        return int(e.status or 0)
    return 200


def test_each_team_reads_runs_and_stops_only_its_own_submissions(stack, tmp_path):
    alice, bob = _as(stack, "alice"), _as(stack, "bob")
    assert (alice.dag_id, bob.dag_id) == (NLP, CV)  # what `flexorch submit` picks for each
    listed = {d["dag_id"] for d in bob.call("GET", "/api/v2/dags", query={"limit": 100})["dags"]}
    assert CV in listed and NLP not in listed  # bob does not even see the other team's DAG

    gate = tmp_path / "go"
    (tmp_path / "held.yaml").write_text(
        "name: held\nkind: batch\ntarget: local\ntimeout: 10m\n"
        f"run: 'echo held-started; while [ ! -e {gate} ]; do sleep 0.2; done; echo held-done'\n"
    )
    detached = _cli(stack, "alice", "submit", str(tmp_path / "held.yaml"), "--detach")
    assert detached.returncode == 0, detached.stdout + detached.stderr
    run_id = next(ln for ln in detached.stdout.splitlines() if " as run " in ln).split(" as run ")[1].split()[0]

    def started() -> bool:
        try:
            return any("held-started" in str(e.get("event")) for e in alice.log(run_id, "run", 1, 0))
        except ClientError as e:  # the mapped task instance is not there yet
            if e.status != 404:
                raise
            return False

    stack.wait_for(started, 120, "the job to start")

    # bob, with the API and with the CLI: the run, its log, its XCom and its DAG are not his
    path = f"/api/v2/dags/{NLP}/dagRuns/{run_id}"
    assert _status(lambda: bob.call("GET", path)) == 403
    assert _status(lambda: bob.call("GET", f"{path}/taskInstances/run/logs/1", query={"map_index": 0})) == 403
    assert _status(lambda: bob.call("GET", f"{path}/taskInstances/check/xcomEntries/return_value")) == 403
    assert _status(lambda: bob.call("PATCH", path, {"state": "failed"})) == 403
    conf = {"spec": "name: x\nkind: batch\nrun: echo\n", "step": None, "set": []}
    assert _status(lambda: bob.call("POST", f"/api/v2/dags/{NLP}/dagRuns", {"logical_date": None, "conf": conf})) == 403
    cancel = _cli(stack, "bob", "cancel", run_id)  # his CLI looks in his own team's DAG: no such run there
    assert cancel.returncode == 1 and "not found" in cancel.stderr, cancel.stdout + cancel.stderr
    assert alice.run(run_id)["state"] == "running"

    # alice follows and stops her own run with the same roles
    logs = _cli(stack, "alice", "logs", run_id)
    assert logs.returncode == 0 and "[held] held-started" in logs.stdout, logs.stdout + logs.stderr
    cancelled = _cli(stack, "alice", "cancel", run_id)
    assert cancelled.returncode == 0 and f"cancelled run {run_id}" in cancelled.stdout, cancelled.stderr
    assert alice.run(run_id)["state"] == "failed"
    gate.touch()

    # and a whole submission as bob runs to the end on his team's DAG
    (tmp_path / "mine.yaml").write_text("name: mine\nkind: batch\ntarget: local\ntimeout: 5m\nrun: echo cv-ok\n")
    done = _cli(stack, "bob", "submit", str(tmp_path / "mine.yaml"))
    assert done.returncode == 0 and "[mine] cv-ok" in done.stdout, done.stdout + done.stderr
    with pytest.raises(urllib.error.HTTPError):  # the flexorch app also needs a login with FAB
        urllib.request.urlopen(f"{stack.url}/flexorch/api/me", timeout=30)
