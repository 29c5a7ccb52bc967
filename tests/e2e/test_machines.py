"""flexorch on the Airflow production runs: CeleryExecutor with Redis, the api-server, scheduler,
dag-processor and a triggerer on machine a, Celery workers on machines b and c, a second
triggerer on machine d, each machine with its own hostname, homes and disk view
(:mod:`tests.e2e.machines`); flexorch's store is the metadata database's PostgreSQL, named by an
Airflow connection. Jobs run on the real Slurm (through its login node) and the real ssh fleet.

What one machine's disk knew before (the ledger, a service's state, a trigger's log cursor) must
hold across machines: one budget for the team whichever worker checks, one desired state per
service whichever machine deployed it or watches it, and jobs that outlive the triggerer
following them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from flexorch_provider.submission import submit_dag_id
from tests.conftest import FLEET_CONN, LOGIN_CONN
from tests.e2e.machines import Machines
from tests.e2e.stack import cli

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "e2e-machines"
SUBMIT = submit_dag_id("ml")
PORT = 8107
POLICY = f"""\
teams:
  ml:
    members: [bob]
    targets: [slurm]
    connections: [{LOGIN_CONN}]
    gpu_hours: {{limit: 0.17, per: day}}
    max_concurrent: 1
  platform:
    members: [admin]
    targets: [local, ssh]
    connections: [{FLEET_CONN}]
    services: true
"""
DAG_FILE = """
import pendulum
from datetime import timedelta
from airflow.sdk import DAG
from flexorch_provider import FlexOperator

START = pendulum.datetime(2025, 1, 1, tz="UTC")
SSH = {{"connection": {conn!r}, "hosts": [{host!r}]}}

with DAG("ticker", schedule=None, start_date=START):
    FlexOperator(task_id="ticks", poll_interval=1,
                 spec={{"name": "ticker", "kind": "batch", "target": "ssh", "ssh": SSH,
                       "run": "echo start >> starts.txt; for i in $(seq 1 60); do echo tick $i; sleep 1; done"}})

with DAG("local_once", schedule=None, start_date=START):
    FlexOperator(task_id="once", poll_interval=1, retries=1, retry_delay=timedelta(seconds=1),
                 spec={{"name": "local-once", "kind": "batch", "target": "local", "timeout": "2m",
                       "run": "echo start >> {starts}; for i in $(seq 1 45); do echo tick $i; sleep 1; done"}})
"""


@pytest.fixture(scope="module")
def machines(tmp_path_factory, ssh_fleet, slurm_cluster):
    base = tmp_path_factory.mktemp("machines")
    source = base / "source"  # the repository every machine syncs its dags and specs folders from
    (source / "dags").mkdir(parents=True)
    (source / "specs").mkdir()
    shared = Path(tempfile.mkdtemp(prefix="flexorch-machines-"))  # outside every machine's folder; the
    shared.chmod(0o755)  # fleet's and Slurm's job accounts read it too (a gate file)
    from flexorch_provider.dev.stack import LOADER_FILE, loader_source

    (source / "dags" / LOADER_FILE).write_text(loader_source())
    (source / "dags" / "machines_dags.py").write_text(textwrap.dedent(DAG_FILE.format(
        conn=FLEET_CONN, host=ssh_fleet.hosts[0].entry, starts=str(shared / "local-starts.txt"))))  # fmt: skip
    (source / "specs" / "flexorch_policy.yaml").write_text(POLICY)
    web = {"name": "web", "kind": "service", "owner": "platform", "target": "ssh", "replicas": 1, "port": PORT,
           "run": ["python3", "-m", "http.server", str(PORT)],
           "health": {"http": "/", "interval": "1s", "grace": "5s", "timeout": "2s"},
           "ssh": {"connection": FLEET_CONN, "hosts": [h.entry for h in ssh_fleet.hosts[1:3]]}}  # fmt: skip
    (source / "specs" / "web.yaml").write_text(json.dumps(web))
    env = {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,bob:user",
        "FLEXORCH_SUBMIT_DAG": "1",
        "FLEXORCH_UI_TTL": "0.5",
        # seven Airflow processes on two cores: at the stack's 5 s a busy triggerer lost triggers unasked
        "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "8",
        **{f"AIRFLOW_CONN_{c.upper()}": os.environ[f"AIRFLOW_CONN_{c.upper()}"] for c in (FLEET_CONN, LOGIN_CONN)},
        # uploaded code: a folder outside every machine's own, as a mount they all share would be
        "FLEXORCH_CODE_STORE": (shared / "code-store").as_uri(),
    }
    m = Machines(base, source, env)
    m.start()
    try:
        m.add_worker("b")
        m.add_worker("c")
        m.add_triggerer("d")
        m.wait_workers()
        for dag_id in (SUBMIT, "web", "web-watch", "ticker", "local_once"):
            m.wait_dag(dag_id, timeout=120)
        m.shared = shared  # type: ignore[attr-defined]
        yield m
    finally:
        try:
            run_id = m.trigger("web", conf={"action": "undeploy"})
            m.wait_for(lambda: m.dag_run("web", run_id)["state"] in ("success", "failed"), 120, "undeploy")
        except Exception:
            pass
        m.stop()
        m.save_logs(ARTIFACTS)
        shutil.rmtree(shared, ignore_errors=True)


def finished(m: Machines, dag_id: str, run_id: str, timeout: float = 180) -> str:
    state = m.wait_for(lambda: m.dag_run(dag_id, run_id).get("state") in ("success", "failed") and
                       m.dag_run(dag_id, run_id)["state"], timeout, f"{dag_id} {run_id} to end")  # fmt: skip
    return str(state)


def hostname(m: Machines, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
    ti = m.api("GET", path + (f"/{map_index}" if map_index >= 0 else ""))
    return str(ti.get("hostname"))


def submitted(m: Machines, spec: Path) -> str:
    """``flexorch submit --detach`` as bob: the run id."""
    out = cli(m, "bob", "submit", "--detach", str(spec))
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("==> submitted "))
    return line.split(" as run ")[1].split()[0]


def usage_events(m: Machines, run_id: str) -> list[dict[str, Any]]:
    rows = m.sql("SELECT record FROM flexorch_records WHERE space = 'usage' ORDER BY id")
    return [e for e in (json.loads(r[0]) for r in rows) if e.get("run") == run_id]


def test_a_team_budget_is_one_across_workers_and_the_api_server(machines, tmp_path):
    m = machines
    gate = m.shared / "budget-go"  # type: ignore[attr-defined]
    spec = tmp_path / "budgeted.yaml"
    spec.write_text(
        f"name: budgeted\nkind: batch\ntarget: slurm\ntimeout: 10m\nresources: {{gpus: 1}}\n"
        f"slurm: {{connection: {LOGIN_CONN}}}\n"
        f"run: |\n  echo first line\n  while [ ! -e {gate} ]; do sleep 0.2; done\n  echo last line\n"
    )
    m.route("b")
    first = submitted(m, spec)
    m.wait_for(lambda: any(t["task_id"] == "run" and t["state"] == "deferred" for t in m.task_instances(SUBMIT, first)),
               120, "the first job to run on Slurm")  # fmt: skip
    assert hostname(m, SUBMIT, first, "check") == "machine-b"

    m.route("c")  # the second submission is checked on the other worker, while the first runs
    second = submitted(m, spec)
    assert finished(m, SUBMIT, second) == "failed"
    assert hostname(m, SUBMIT, second, "check") == "machine-c"
    text = m.disk_log(SUBMIT, second, "check", 1, "c")
    assert "refused: team ml: 1 of 1 concurrent runs are live" in text, text[-3000:]

    time.sleep(15)  # the job holds its GPU a while: 1 GPU × 15 s is 0.004 of the 0.17 GPU-hours
    gate.touch()
    assert finished(m, SUBMIT, first) == "success"
    # the first job's try started on b and resumed on c after its trigger: one start, one end
    kinds = [e["t"] for e in usage_events(m, first)]
    assert kinds.count("start") == 1 and kinds.count("end") == 1, kinds
    third = submitted(m, spec)
    assert finished(m, SUBMIT, third) == "failed"
    text = m.disk_log(SUBMIT, third, "check", 1, "c")
    assert "refused: team ml: 0.0" in text and (
        " of 0.17 GPU-hours used today; this submission asks up to 1 GPUs × 10m" in text
    ), text[-3000:]
    used = text.split("refused: team ml: ")[1].split(" of ")[0]
    # what the api-server shows (machine a, no worker's disk) is what the check used
    usage = m.api("GET", "/flexorch/api/usage")
    team = next(t for t in usage["teams"] if t["team"] == "ml")
    print(f"check on machine-c: {used} GPU-hours used; api-server: {json.dumps(team)[:300]}")
    assert f"{float(team['gpu_hours']['used']):.2f}" == used and float(team["gpu_hours"]["used"]) > 0


def test_a_local_job_is_followed_where_it_runs_and_a_retry_elsewhere_refuses(machines):
    m = machines
    starts = m.shared / "local-starts.txt"  # type: ignore[attr-defined]
    m.route("b")
    run_id = m.trigger("local_once")
    m.wait_for(lambda: starts.exists(), 120, "the local job to start")
    assert hostname(m, "local_once", run_id, "once") == "machine-b"
    assert m.ti("local_once", run_id, "once")["state"] == "running"  # kept in its worker, not deferred

    def seen() -> dict[str, Any] | None:
        rows = m.api("GET", "/flexorch/api/jobs")["jobs"]
        return next((r for r in rows if r.get("dag_id") == "local_once" and r.get("state") == "running"), None)

    row = m.wait_for(seen, 60, "the api-server to see the local job")
    assert "runs on the worker machine-b" in row["reason"], row  # not "lost": machine a cannot see it

    m.route("c")
    m.remove("worker-b")  # the machine dies; the scheduler retries the task, on c
    try:
        ti = m.wait_for(lambda: (t := m.ti("local_once", run_id, "once")) and t["try_number"] == 2 and
                        t["state"] in ("failed", "success") and t, 180, "the retry to end")  # fmt: skip
        text = m.disk_log("local_once", run_id, "once", 2, "c")
        assert ti["state"] == "failed" and ti["hostname"] == "machine-c", text[-3000:]
        assert "was started on the worker machine-b and may still run there" in text, text[-3000:]
        assert starts.read_text() == "start\n"  # one copy: c did not start a second
    finally:
        m.restart("worker-b")
        m.wait_workers()


def test_code_uploaded_through_the_api_server_runs_on_a_worker_from_the_shared_store(machines, tmp_path):
    """`flexorch submit` sends the code to the api-server (machine a); the check and the run on worker c
    read it from the code store, never from the api-server's disk."""
    m = machines
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text('import socket\nprint("trained from", socket.gethostname())\n')
    (project / "train.yaml").write_text(
        f"name: coded\nkind: batch\ntarget: slurm\ntimeout: 10m\ncode: .\nslurm: {{connection: {LOGIN_CONN}}}\n"
        "run: python3 train.py\n"
    )
    m.route("c")
    out = cli(m, "bob", "submit", "--detach", str(project / "train.yaml"))
    assert out.returncode == 0, out.stdout + out.stderr
    [sent] = [ln for ln in out.stdout.splitlines() if ln.startswith("==> code ")]
    digest = sent.split()[2].rstrip(":")
    run_id = (
        next(ln for ln in out.stdout.splitlines() if ln.startswith("==> submitted ")).split(" as run ")[1].split()[0]
    )
    assert finished(m, SUBMIT, run_id) == "success", m.disk_log(SUBMIT, run_id, "run", 1, map_index=0)[-3000:]
    assert hostname(m, SUBMIT, run_id, "run", 0) == "machine-c"
    text = m.disk_log(SUBMIT, run_id, "run", 1, "c", map_index=0)
    assert f"code {digest}: 2 files" in text and "trained from" in text, text[-3000:]
    assert len(list((m.shared / "code-store").glob(f"{digest}*.tar.gz"))) == 1  # type: ignore[attr-defined]
    assert not list(m.folder("a").rglob(f"{digest}*")), "the bundle is on the api-server's disk"


def fleet_servers(fleet: Any) -> list[tuple[Any, int]]:
    return [(h, int(p.split()[0])) for h in fleet.hosts[1:3] for p in h.processes(f"http.server {PORT}")]


def service(m: Machines) -> dict[str, Any]:
    return dict(m.api("GET", "/flexorch/api/services/web"))


def healthy(m: Machines) -> dict[str, Any] | None:
    s = service(m)
    return s if s["healthy"] == 1 and s["running"] == 1 else None


def test_a_service_is_watched_and_stays_undeployed_whichever_machine_acted(machines, ssh_fleet):
    m = machines
    m.route("c")
    deployed = m.trigger("web")
    assert finished(m, "web", deployed) == "success"
    assert hostname(m, "web", deployed, "deploy") == "machine-c"
    m.wait_for(lambda: healthy(m), 90, "one healthy replica")
    [(_, pid)] = fleet_servers(ssh_fleet)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)  # the watcher (a trigger on machine a or d) restores it

    def restored() -> bool:
        return any(p != pid for _, p in fleet_servers(ssh_fleet)) and healthy(m) is not None

    m.wait_for(restored, 90, "the killed replica restored")
    print(f"deployed on machine-c; killed replica healthy again after {time.monotonic() - killed:.1f}s")

    m.route("b")
    undeployed = m.trigger("web", conf={"action": "undeploy"})
    assert finished(m, "web", undeployed) == "success"
    assert hostname(m, "web", undeployed, "deploy") == "machine-b"
    m.wait_for(lambda: not fleet_servers(ssh_fleet), 60, "the replica stopped")
    reconciled = m.trigger("web-reconcile")  # a reconcile tick after the undeploy does not deploy
    assert finished(m, "web-reconcile", reconciled) == "success"
    for name in ("triggerer", "triggerer-d"):  # every triggerer restarts: none brings it back
        m.kill(name)
        m.restart(name)
    time.sleep(20)  # the watch trigger runs again (1 s health interval) on whichever triggerer
    assert not fleet_servers(ssh_fleet), "an undeployed service came back"
    assert service(m)["deployed"] is False


def holder(m: Machines) -> tuple[str, int] | None:
    """The machine and the job id of the triggerer running the ticker's trigger."""
    rows = m.sql(
        "SELECT j.hostname, j.id FROM task_instance ti JOIN trigger t ON ti.trigger_id = t.id "
        "JOIN job j ON t.triggerer_id = j.id WHERE ti.dag_id = 'ticker' AND ti.state = 'deferred'"
    )
    return (str(rows[0][0]).removeprefix("machine-"), int(rows[0][1])) if rows else None


def ticks(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith("tick ")]


def test_a_job_outlives_a_killed_and_a_stalled_triggerer(machines, ssh_fleet):
    """The triggerer following a job is killed outright, then the next one stalls past the health
    threshold (SIGSTOP): each time the other triggerer takes the trigger over and resumes the log
    from the cursor in the shared store, in the same try, the job started once. (Each triggerer
    writes its own file per trigger, on its own disk: Airflow opens it anew, truncating, when a
    trigger comes back to a triggerer that held it before, so the test never sends it back.)"""
    m = machines
    component = {"a": "triggerer", "d": "triggerer-d"}
    run_id = m.trigger("ticker")
    log = lambda: m.disk_log("ticker", run_id, "ticks")  # noqa: E731

    def own(h: tuple[str, int]) -> list[str]:
        return ticks(m.disk_log("ticker", run_id, "ticks", 1, h[0], files=f".trigger.{h[1]}.log"))

    def streaming(*before: int) -> tuple[str, int]:
        """A triggerer (not one of ``before``) once its own file shows it streaming the job one poll
        at a time: past the burst of its first read, which catches up on the lines since the
        cursor (that burst is one poll's lines too, and would all repeat after a handover)."""
        h = m.wait_for(lambda: (h := holder(m)) and h[1] not in before and own(h) and h, 120, "a new holder")
        caught_up = len(own(h))
        m.wait_for(lambda: len(own(h)) >= caught_up + 2, 60, f"machine-{h[0]} to stream two more polls")
        return h

    first = streaming()
    m.kill(component[first[0]])  # its machine dies; it comes back as a new triggerer
    m.restart(component[first[0]])
    second = streaming(first[1])  # the trigger taken over after the kill
    group = m.procs[component[second[0]]].pid
    os.killpg(group, signal.SIGSTOP)
    time.sleep(16)  # its heartbeat stops: past the threshold the other triggerer takes the trigger
    os.killpg(group, signal.SIGCONT)
    third = streaming(first[1], second[1])  # and after the stall
    ti = m.wait_ti_state("ticker", run_id, "ticks", {"success", "failed"}, 180)
    text = log()
    assert ti["state"] == "success" and ti["try_number"] == 1, text[-3000:]
    seen = ticks(text)
    assert set(seen) == {f"tick {i}" for i in range(1, 61)}, seen
    # each of the two handovers resumed from the shared cursor, at most one 1 s poll (one tick a second) behind
    assert len(seen) - 60 <= 4, f"{len(seen) - 60} tick lines repeated: {seen}"
    stalled = m.disk_log("ticker", run_id, "ticks", 1, second[0], files=f".trigger.{second[1]}.log")
    assert "cancelled while the task is still deferred: this trigger moved to another triggerer" in stalled
    starts = list((ssh_fleet.hosts[0].home / ".flexorch" / "runs").glob("ticker-ticks-*/*/starts.txt"))
    assert len(starts) == 1 and starts[0].read_text() == "start\n", "the remote job was started more than once"
    print(f"trigger on machine-{first[0]}, killed → machine-{second[0]}, stalled → machine-{third[0]}; "
          f"{len(seen) - 60} tick lines repeated")  # fmt: skip
