"""FlexOperator on a real Airflow stack: scheduler + triggerer + dag-processor + api-server.

Covers what dag.test() cannot: live log lines while the job runs (trigger logs in the
task log), mark-failed → the job's process group is gone, and a worker killed mid-run →
the retry reattaches to the same job (exactly one job process ever started). The same on
the ssh fleet: mark-failed → nothing left on the host; the triggerer killed mid-job → a new
triggerer follows the same remote job to the end, which started once. And on the real
Slurm: a pending job's reason in the task log, mark-failed → scancel, the triggerer killed
mid-job → the same Slurm job followed to the end, submitted once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import FLEET_CONN
from tests.e2e.stack import AirflowStack, free_port

pytestmark = pytest.mark.e2e
SECRET = "hf_e2eSecretValue42"
SPILL_AFTER_S = 20  # flex_e2e_spill's max_pending
ROOT = Path(__file__).parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "e2e-stack"

DAG_FILE = """
import pendulum
from datetime import timedelta
from airflow.sdk import DAG
from flexorch_provider import FlexOperator

RUNS = {runs!r}
LOCAL = {{"local": {{"run_dir": RUNS}}}}
START = pendulum.datetime(2025, 1, 1, tz="UTC")

with DAG("flex_e2e_live", schedule=None, start_date=START):
    FlexOperator(task_id="hello", spec={example!r}, overrides=LOCAL, poll_interval=1)

with DAG("flex_e2e_kill", schedule=None, start_date=START):
    FlexOperator(task_id="long", spec={{"name": "long", "kind": "batch", "run": "echo started; sleep 300", **LOCAL}},
                 poll_interval=1)

with DAG("flex_e2e_kill_in_worker", schedule=None, start_date=START):
    FlexOperator(task_id="early", poll_interval=1, defer_after=600,
                 spec={{"name": "early", "kind": "batch", "run": "echo started; sleep 303", **LOCAL}})

with DAG("flex_e2e_reattach", schedule=None, start_date=START):
    FlexOperator(task_id="once", deferrable=False, poll_interval=1, retries=2, retry_delay=timedelta(seconds=1),
                 spec={{"name": "once", "kind": "batch", **LOCAL,
                       "run": "echo start >> {starts}; echo running; sleep 45; echo finished"}})

SLURM = {{"target": "slurm", "kind": "training"}}
with DAG("flex_e2e_slurm_pending", schedule=None, start_date=START):
    FlexOperator(task_id="hog", poll_interval=1,
                 spec={{"name": "hog", **SLURM, "resources": {{"gpus": "A100:4"}}, "run": "sleep 8"}})
    FlexOperator(task_id="waiter", poll_interval=1,
                 spec={{"name": "waiter", **SLURM, "resources": {{"gpus": "A100:4"}}, "run": "sleep 8"}})

with DAG("flex_e2e_slurm_kill", schedule=None, start_date=START):
    FlexOperator(task_id="train", poll_interval=1, spec={{"name": "train", **SLURM, "run": "echo started; sleep 300"}})

with DAG("flex_e2e_slurm_triggerer", schedule=None, start_date=START):
    FlexOperator(task_id="train", poll_interval=1,
                 spec={{"name": "train", **SLURM, "run": "for i in $(seq 1 20); do echo tick $i; sleep 1; done"}})

with DAG("flex_e2e_slurm_adopt", schedule=None, start_date=START):
    # the retry starts 15 s after the worker dies: the 3 s job has ended by then
    FlexOperator(task_id="once", deferrable=False, poll_interval=1, retries=1, retry_delay=timedelta(seconds=15),
                 spec={{"name": "adopt", **SLURM, "run": "echo start >> {adopt_starts}; sleep 3; echo finished"}})

with DAG("flex_e2e_slurm_secret", schedule=None, start_date=START):
    FlexOperator(task_id="train", poll_interval=1,
                 spec={{"name": "train", **SLURM, "secrets": {{"HF_TOKEN": "variable:flex_e2e_model_ref"}},
                       "run": "echo token=$HF_TOKEN; echo done"}})

SSH = {{"connection": {conn!r}, "hosts": [{host!r}]}}
with DAG("flex_e2e_ssh_kill", schedule=None, start_date=START):
    FlexOperator(task_id="remote_long", poll_interval=1,
                 spec={{"name": "remote-long", "kind": "batch", "target": "ssh", "ssh": SSH,
                       "run": "echo started; exec sleep 301"}})

with DAG("flex_e2e_spill", schedule=None, start_date=START):
    FlexOperator(task_id="train", poll_interval=1, defer_after=0,
                 spec={{"name": "spill", "kind": "training", "target": ["slurm", "ssh"], "max_pending": {spill_after},
                       "resources": {{"gpus": 1}}, "ssh": {{"connection": {conn!r}, "hosts": [{gpu_host!r}]}},
                       "run": "echo start >> starts.txt; echo ran with GPU $CUDA_VISIBLE_DEVICES"}})

with DAG("flex_e2e_ssh_triggerer", schedule=None, start_date=START):
    FlexOperator(task_id="remote_once", poll_interval=1,
                 spec={{"name": "remote-once", "kind": "batch", "target": "ssh", "ssh": SSH,
                       "run": "echo start >> starts.txt; for i in $(seq 1 25); do echo tick $i; sleep 1; done"}})

with DAG("flex_e2e_ssh_moved", schedule=None, start_date=START):
    FlexOperator(task_id="moved", poll_interval=1,
                 spec={{"name": "moved", "kind": "batch", "target": "ssh", "ssh": SSH,
                       "run": "echo start >> starts.txt; for i in $(seq 1 40); do echo tick $i; sleep 1; done"}})
"""


def group_alive(pgid: int) -> bool:
    out = subprocess.run(["ps", "-e", "-o", "pgid=,stat="], capture_output=True, text=True, check=True).stdout
    return any(p.split()[0] == str(pgid) and not p.split()[1].startswith("Z") for p in out.splitlines() if p.strip())


@pytest.fixture(scope="module")
def stack(tmp_path_factory, ssh_fleet, slurm_cluster):
    base = tmp_path_factory.mktemp("stack")
    dags, runs = base / "dags", base / "runs"
    dags.mkdir()
    runs.mkdir()
    starts = base / "starts.txt"
    (dags / "flex_e2e_dags.py").write_text(
        textwrap.dedent(
            DAG_FILE.format(
                runs=str(runs),
                example=str(ROOT / "spec_examples" / "hello-local.yaml"),
                starts=str(starts),
                adopt_starts=str(base / "adopt-starts.txt"),
                conn=FLEET_CONN,
                host=ssh_fleet.hosts[0].entry,
                gpu_host=ssh_fleet.hosts[3].entry,
                spill_after=SPILL_AFTER_S,
            )
        )
    )
    conn_env = f"AIRFLOW_CONN_{FLEET_CONN.upper()}"
    s = AirflowStack(base / "home", dags, {conn_env: os.environ[conn_env], "AIRFLOW_VAR_FLEX_E2E_MODEL_REF": SECRET})
    s.runs, s.starts = runs, starts  # type: ignore[attr-defined]
    s.start()
    try:
        yield s
    finally:
        s.stop()
        s.save_logs(ARTIFACTS)


def trigger_started(task_log: str) -> bool:
    """The triggerer runs the task's trigger (its "trigger <name> starting" line is in the task log).
    Mark-failed cancels a deferred job through the running trigger's on_kill; a trigger the
    triggerer has not picked up yet cannot act (README, "Known limits")."""
    return any(line.startswith("trigger ") and line.endswith(" starting") for line in task_log.splitlines())


def ticks(task_log: str, after_trigger_start: bool = False) -> list[str]:
    """The job's "tick N" lines in the task log (only those the trigger streamed, if asked)."""
    lines = task_log.splitlines()
    if after_trigger_start:
        starts = [i for i, line in enumerate(lines) if trigger_started(line)]
        lines = lines[starts[0] + 1 :] if starts else []
    return [line.strip() for line in lines if line.strip().startswith("tick ")]


def assert_each_tick_once_give_or_take_a_poll(task_log: str, count: int) -> None:
    """After a triggerer restart the new trigger resumes from the old one's checkpoint, which
    trails by one poll (1 s here, one tick a second): at most 2 lines appear twice."""
    seen = ticks(task_log)
    assert set(seen) == {f"tick {i}" for i in range(1, count + 1)}, seen
    assert len(seen) - count <= 2, f"{len(seen) - count} tick lines repeated: {seen}"


def test_the_stack_runs_on_its_own_postgresql_as_users_deploy(stack):
    """What users deploy: Airflow's DAG rows are in the stack's PostgreSQL (unless a run asked for
    SQLite with FLEXORCH_STACK_DB=sqlite)."""
    if os.environ.get("FLEXORCH_STACK_DB") == "sqlite":
        assert stack.db.kind == "sqlite"
        return
    assert stack.db.kind == "postgres", stack.db.describe()
    import psycopg2

    stack.wait_dag("flex_e2e_live")
    with psycopg2.connect(host=str(stack.db.server.socket_dir), user="airflow", dbname="airflow") as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT dag_id FROM dag")
            in_db = {row[0] for row in cur.fetchall()}
    assert "flex_e2e_live" in in_db
    assert set(stack.dag_ids()) <= in_db


def test_local_example_succeeds_with_live_logs(stack):
    stack.wait_dag("flex_e2e_live")
    run_id = stack.trigger("flex_e2e_live")
    seen_while_running = False
    deadline = time.time() + 120
    while time.time() < deadline:
        ti = stack.ti("flex_e2e_live", run_id, "hello")
        if ti.get("state") in ("success", "failed"):
            break
        if ti.get("state") in ("running", "deferred"):
            log = stack.task_log("flex_e2e_live", run_id, "hello", ti.get("try_number") or 1)
            if "step 1" in log and "[flexorch] succeeded" not in log:
                seen_while_running = True
        time.sleep(0.5)
    ti = stack.wait_ti_state("flex_e2e_live", run_id, "hello", {"success", "failed"}, 10)
    log = stack.task_log("flex_e2e_live", run_id, "hello", ti["try_number"])
    assert ti["state"] == "success", log[-3000:]
    assert "hello from flexorch" in log and "step 5" in log
    assert seen_while_running, "job output only appeared after the job finished"


def test_mark_failed_cancels_the_job(stack):
    stack.wait_dag("flex_e2e_kill")
    run_id = stack.trigger("flex_e2e_kill")
    stack.wait_ti_state("flex_e2e_kill", run_id, "long", {"deferred"}, 120)
    pgid_files = stack.wait_for(lambda: [p for p in stack.runs.rglob("job.pgid") if "kill" in str(p)], 30, "job start")
    pgid = int(pgid_files[0].read_text())
    assert group_alive(pgid)
    stack.wait_for(lambda: trigger_started(stack.task_log("flex_e2e_kill", run_id, "long", 1)), 60, "the trigger")
    stack.api("PATCH", f"/api/v2/dags/flex_e2e_kill/dagRuns/{run_id}/taskInstances/long", {"new_state": "failed"})
    stack.wait_for(lambda: not group_alive(pgid), 60, "the job's process group to be gone")
    # the supervisor writes its result just after the group is gone
    stack.wait_for(lambda: (pgid_files[0].parent / "result.json").exists(), 15, "the job's result file")


def test_mark_failed_before_deferring_cancels_the_job_from_the_worker(stack):
    """Within defer_after the worker follows the job: mark-failed reaches the operator's on_kill."""
    stack.wait_dag("flex_e2e_kill_in_worker")
    run_id = stack.trigger("flex_e2e_kill_in_worker")
    stack.wait_ti_state("flex_e2e_kill_in_worker", run_id, "early", {"running"}, 120)
    find = lambda: [p for p in stack.runs.rglob("job.pgid") if "in-worker" in str(p)]  # noqa: E731
    pgid_file = stack.wait_for(find, 30, "job start")[0]
    pgid = int(pgid_file.read_text())
    assert group_alive(pgid)
    stack.api("PATCH", f"/api/v2/dags/flex_e2e_kill_in_worker/dagRuns/{run_id}/taskInstances/early",
              {"new_state": "failed"})  # fmt: skip
    stack.wait_for(lambda: not group_alive(pgid), 60, "the job's process group to be gone")
    result = stack.wait_for(lambda: (pgid_file.parent / "result.json").exists(), 15, "the job's result file")
    assert result and '"cancelled"' in (pgid_file.parent / "result.json").read_text()
    assert stack.ti("flex_e2e_kill_in_worker", run_id, "early")["state"] == "failed"


def _task_processes(marker: str) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,args="], capture_output=True, text=True, check=True).stdout
    pids = []
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if args.startswith(marker):
            pids.append(int(pid))
    return pids


def test_worker_killed_mid_run_then_retry_reattaches(stack):
    stack.wait_dag("flex_e2e_reattach")
    run_id = stack.trigger("flex_e2e_reattach")
    ti = stack.wait_ti_state("flex_e2e_reattach", run_id, "once", {"running"}, 120)
    stack.wait_for(lambda: stack.starts.exists(), 60, "the job to start")
    # the task process Airflow titles "airflow worker -- <ti id>": SIGKILL, as when a worker dies
    workers = stack.wait_for(lambda: _task_processes(f"airflow worker -- {ti['id']}"), 10, "the task process")
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    ti = stack.wait_ti_state("flex_e2e_reattach", run_id, "once", {"success", "failed"}, 180)
    log = stack.task_log("flex_e2e_reattach", run_id, "once", ti["try_number"])
    assert ti["state"] == "success", log[-3000:]
    assert ti["try_number"] >= 2
    assert stack.starts.read_text().splitlines() == ["start"], "the job was started more than once"


def test_a_slurm_job_that_ended_while_its_worker_was_dead_is_adopted_not_run_again(stack, slurm_cluster):
    """The worker dies before the task records anything; the job goes on and succeeds. The retry
    finds it by run key, takes its result and streams its log: one job ran, its lines reached
    the task log."""
    stack.wait_dag("flex_e2e_slurm_adopt")
    run_id = stack.trigger("flex_e2e_slurm_adopt")
    ti = stack.wait_ti_state("flex_e2e_slurm_adopt", run_id, "once", {"running"}, 120)
    starts = stack.runs.parent / "adopt-starts.txt"
    stack.wait_for(lambda: starts.exists(), 60, "the Slurm job to start")
    workers = stack.wait_for(lambda: _task_processes(f"airflow worker -- {ti['id']}"), 10, "the task process")
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    ti = stack.wait_ti_state("flex_e2e_slurm_adopt", run_id, "once", {"success", "failed"}, 180)
    log = stack.task_log("flex_e2e_slurm_adopt", run_id, "once", ti["try_number"])
    assert ti["state"] == "success" and ti["try_number"] >= 2, log[-3000:]
    assert "had already succeeded, but no earlier try recorded it" in log, log[-3000:]
    assert "finished" in [line.strip() for line in log.splitlines()], log[-3000:]
    assert starts.read_text().splitlines() == ["start"], "the job ran more than once"
    assert len(_slurm_jobs_named(slurm_cluster, "flex_e2e_slurm_adopt", "once")) == 1


def test_ssh_mark_failed_leaves_nothing_on_the_host(stack, ssh_fleet):
    host = ssh_fleet.hosts[0]
    stack.wait_dag("flex_e2e_ssh_kill")
    run_id = stack.trigger("flex_e2e_ssh_kill")
    stack.wait_ti_state("flex_e2e_ssh_kill", run_id, "remote_long", {"deferred"}, 120)
    stack.wait_for(lambda: host.processes("sleep 301"), 30, "the remote job to start")
    log = lambda: stack.task_log("flex_e2e_ssh_kill", run_id, "remote_long", 1)  # noqa: E731
    stack.wait_for(lambda: trigger_started(log()), 60, "the triggerer to run the trigger")
    stack.api("PATCH", f"/api/v2/dags/flex_e2e_ssh_kill/dagRuns/{run_id}/taskInstances/remote_long",
              {"new_state": "failed"})  # fmt: skip
    stack.wait_for(lambda: not host.processes("sleep 301"), 60, "the remote process to be gone")
    # the supervisor writes its result just after the job's process group is gone
    results = stack.wait_for(
        lambda: list((host.home / ".flexorch" / "runs").glob("flex-e2e-ssh-kill-remote-long-*/1/result.json")),
        15, "the job's result file",
    )  # fmt: skip
    assert '"cancelled"' in results[0].read_text()


def test_triggerer_killed_mid_ssh_job_a_new_one_follows_the_same_job(stack, ssh_fleet):
    host = ssh_fleet.hosts[0]
    stack.wait_dag("flex_e2e_ssh_triggerer")
    run_id = stack.trigger("flex_e2e_ssh_triggerer")
    log = lambda: stack.task_log("flex_e2e_ssh_triggerer", run_id, "remote_once", 1)  # noqa: E731
    stack.wait_for(lambda: len(ticks(log(), after_trigger_start=True)) >= 5, 120, "the trigger to stream ticks")
    stack.kill("triggerer")
    time.sleep(2)
    stack.restart("triggerer")
    ti = stack.wait_ti_state("flex_e2e_ssh_triggerer", run_id, "remote_once", {"success", "failed"}, 180)
    text = stack.task_log("flex_e2e_ssh_triggerer", run_id, "remote_once", ti["try_number"])
    assert ti["state"] == "success", text[-3000:]
    assert "tick 25" in text and ti["try_number"] == 1  # the same try, followed to the end
    assert_each_tick_once_give_or_take_a_poll(text, 25)
    starts = list((host.home / ".flexorch" / "runs").glob("flex-e2e-ssh-triggerer-remote-once-*/*/starts.txt"))
    assert len(starts) == 1 and starts[0].read_text() == "start\n", "the remote job was started more than once"


def test_a_trigger_that_moves_to_another_triggerer_leaves_its_job_running(stack, ssh_fleet):
    """Two triggerers; the one following the job stalls past the health threshold (SIGSTOP): Airflow
    hands the trigger to the other and, once the first wakes, cancels its copy "by user action",
    calling on_kill. The task is still deferred, so the job is not cancelled: the new triggerer
    follows it to the end, in the same try, started once."""
    host = ssh_fleet.hosts[0]
    dag = "flex_e2e_ssh_moved"
    stack.wait_dag(dag)
    run_id = stack.trigger(dag)
    log = lambda: stack.task_log(dag, run_id, "moved", 1)  # noqa: E731
    stack.wait_for(lambda: len(ticks(log(), after_trigger_start=True)) >= 3, 120, "the trigger to stream ticks")
    # the first one holds the trigger; now a second is there (its own log server port)
    stack.add("triggerer-2", "triggerer", env={"AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port())})
    try:
        time.sleep(3)
        first = stack.procs["triggerer"].pid
        os.killpg(first, signal.SIGSTOP)
        time.sleep(12)  # heartbeats stop: past the 5 s threshold, the trigger is handed over
        os.killpg(first, signal.SIGCONT)
        ti = stack.wait_ti_state(dag, run_id, "moved", {"success", "failed"}, 180)
        text = stack.task_log(dag, run_id, "moved", ti["try_number"])
        assert ti["state"] == "success" and ti["try_number"] == 1, text[-3000:]
        assert "tick 40" in text
        # the handover happened (the stall was long enough), on_kill was called, and left the job alone
        assert "Trigger cancelled by user action, invoking on_kill" in text, text[-3000:]
        assert "cancelled while the task is still deferred: this trigger moved to another triggerer" in text
        assert_each_tick_once_give_or_take_a_poll(text, 40)  # the new triggerer resumed from the cursor
        starts = list((host.home / ".flexorch" / "runs").glob("flex-e2e-ssh-moved-moved-*/*/starts.txt"))
        assert len(starts) == 1 and starts[0].read_text() == "start\n", "the remote job was started more than once"
    finally:
        stack.remove("triggerer-2")  # gone for good: the tests after this one wait on the stack's components


def _slurm_jobs_named(cluster, dag_id: str, task_id: str) -> list[list[str]]:
    prefix = f"flexorch-{dag_id}-{task_id}".replace("_", "-")[:49]
    return [j.split("|") for j in cluster.jobs() if j.split("|")[1].startswith(prefix)]


def test_slurm_pending_reason_shows_in_the_task_log(stack):
    stack.wait_dag("flex_e2e_slurm_pending")
    run_id = stack.trigger("flex_e2e_slurm_pending")
    states = {t: stack.wait_ti_state("flex_e2e_slurm_pending", run_id, t, {"success", "failed"}, 180)
              for t in ("hog", "waiter")}  # fmt: skip
    logs = {t: stack.task_log("flex_e2e_slurm_pending", run_id, t, ti["try_number"]) for t, ti in states.items()}
    assert all(ti["state"] == "success" for ti in states.values()), logs
    # both want all 4 GPUs: whichever came second waited, and its log says why
    assert any("is pending: Resources" in text for text in logs.values()), logs


def test_slurm_mark_failed_cancels_the_job(stack, slurm_cluster):
    stack.wait_dag("flex_e2e_slurm_kill")
    run_id = stack.trigger("flex_e2e_slurm_kill")
    stack.wait_ti_state("flex_e2e_slurm_kill", run_id, "train", {"deferred"}, 120)
    log = lambda: stack.task_log("flex_e2e_slurm_kill", run_id, "train", 1)  # noqa: E731
    stack.wait_for(lambda: trigger_started(log()), 60, "the triggerer to run the trigger")
    (job,) = _slurm_jobs_named(slurm_cluster, "flex_e2e_slurm_kill", "train")
    assert job[2] == "RUNNING"
    stack.api("PATCH", f"/api/v2/dags/flex_e2e_slurm_kill/dagRuns/{run_id}/taskInstances/train",
              {"new_state": "failed"})  # fmt: skip
    stack.wait_for(
        lambda: _slurm_jobs_named(slurm_cluster, "flex_e2e_slurm_kill", "train")[0][2] == "CANCELLED", 60, "scancel"
    )


def test_triggerer_killed_mid_slurm_job_the_same_job_is_followed(stack, slurm_cluster):
    stack.wait_dag("flex_e2e_slurm_triggerer")
    run_id = stack.trigger("flex_e2e_slurm_triggerer")
    log = lambda: stack.task_log("flex_e2e_slurm_triggerer", run_id, "train", 1)  # noqa: E731
    stack.wait_for(lambda: len(ticks(log(), after_trigger_start=True)) >= 5, 120, "the trigger to stream ticks")
    stack.kill("triggerer")
    time.sleep(2)
    stack.restart("triggerer")
    ti = stack.wait_ti_state("flex_e2e_slurm_triggerer", run_id, "train", {"success", "failed"}, 180)
    text = stack.task_log("flex_e2e_slurm_triggerer", run_id, "train", ti["try_number"])
    assert ti["state"] == "success" and ti["try_number"] == 1, text[-3000:]
    assert "tick 20" in text
    assert_each_tick_once_give_or_take_a_poll(text, 20)
    jobs = _slurm_jobs_named(slurm_cluster, "flex_e2e_slurm_triggerer", "train")
    assert len(jobs) == 1 and jobs[0][2] == "COMPLETED", jobs


def test_triggerer_killed_while_a_job_waits_to_move_leaves_exactly_one_job(stack, slurm_cluster, ssh_fleet):
    """max_pending on the real stack: the job waits on Slurm (every GPU held), the triggerer dies
    and comes back around its deadline; the job moves to ssh in the same try, Slurm shows the
    job it left cancelled, and the job ran once."""
    from flexorch_provider.backends.base import JobState, ResolvedJob
    from flexorch_provider.backends.slurm import SlurmBackend
    from flexorch_provider.resolve import load_workload

    host = ssh_fleet.hosts[3]
    host.fake_nvidia_smi("0, GPU-0b1c2d3e-0000-4000-8000-00000000cc01, NVIDIA L4, 23034, 0, 0\n")
    hog_spec = load_workload({"name": "hog", "kind": "batch", "target": "slurm", "run": "sleep 600",
                              "resources": {"gpus": "A100:4"}})  # fmt: skip
    slurm = SlurmBackend()
    hog = slurm.submit(ResolvedJob(run_key=f"e2e/hog/{time.time_ns()}/-1", name="hog", kind="batch",
                                   workload=hog_spec, run=hog_spec.run))  # fmt: skip
    try:
        stack.wait_for(lambda: slurm.poll([hog])[hog.job_id].state == JobState.RUNNING, 60, "the hog to hold every GPU")
        stack.wait_dag("flex_e2e_spill")
        run_id = stack.trigger("flex_e2e_spill")
        log = lambda: stack.task_log("flex_e2e_spill", run_id, "train", 1)  # noqa: E731
        waiting = stack.wait_for(
            lambda: [j for j in _slurm_jobs_named(slurm_cluster, "flex_e2e_spill", "train") if j[2] == "PENDING"],
            120, "the job to wait on Slurm",
        )  # fmt: skip
        pending_since = time.time()
        stack.wait_for(lambda: trigger_started(log()), 60, "the trigger")
        stack.kill("triggerer")
        time.sleep(max(0.0, pending_since + SPILL_AFTER_S + 2 - time.time()))  # its deadline passes meanwhile
        stack.restart("triggerer")
        ti = stack.wait_ti_state("flex_e2e_spill", run_id, "train", {"success", "failed"}, 180)
        text = stack.task_log("flex_e2e_spill", run_id, "train", ti["try_number"])
        assert ti["state"] == "success" and ti["try_number"] == 1, text[-3000:]
        assert "cancelled there, moving it to ssh" in text and "pending: Resources" in text
        assert "ran with GPU 0" in text
        jobs = _slurm_jobs_named(slurm_cluster, "flex_e2e_spill", "train")
        assert [j[0] for j in jobs] == [waiting[0][0]] and jobs[0][2] == "CANCELLED", jobs
        starts = list((host.home / ".flexorch" / "runs").glob("flex-e2e-spill-train-*/*/starts.txt"))
        assert len(starts) == 1 and starts[0].read_text() == "start\n", "the job ran more than once"
    finally:
        slurm.cancel(hog)
        host.fake_nvidia_smi(None)


def test_a_secret_a_slurm_job_prints_is_masked_in_the_task_log(stack):
    stack.wait_dag("flex_e2e_slurm_secret")
    run_id = stack.trigger("flex_e2e_slurm_secret")
    ti = stack.wait_ti_state("flex_e2e_slurm_secret", run_id, "train", {"success", "failed"}, 180)
    log = stack.task_log("flex_e2e_slurm_secret", run_id, "train", ti["try_number"])
    assert ti["state"] == "success", log[-3000:]
    assert "token=***" in log and "done" in log
    assert SECRET not in log
