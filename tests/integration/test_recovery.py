"""Long jobs survive the infrastructure (retries.recover) through real Airflow (dag.test: the task
runner and execution API in line) on the real ssh fleet and the real Slurm: a job that counts steps
and keeps them in FLEXORCH_CHECKPOINT_DIR goes on from where it was, in the same try."""

from __future__ import annotations

import os
import subprocess
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pendulum
import pytest

from flexorch_provider.backends.base import JobState, ResolvedJob
from flexorch_provider.backends.slurm import SlurmBackend
from flexorch_provider.resolve import load_workload
from tests.integration.conftest import FLEET_CONN
from tests.integration.follow import all_lines, wait_finished

COUNTER = """\
ckpt="$FLEXORCH_CHECKPOINT_DIR/step"
step=$(cat "$ckpt" 2>/dev/null || echo 0)
echo "start at step $step, restart ${FLEXORCH_RESTART_COUNT:-?} (${FLEXORCH_RESTART_CAUSE:-none}) as $(whoami)"
while [ "$step" -lt 24 ]; do
  step=$((step + 1)); echo "$step" > "$ckpt.tmp"; mv "$ckpt.tmp" "$ckpt"; echo "step $step"; sleep 0.25
done
echo finished
"""
DAG_FILE = """
import pendulum
from airflow.sdk import DAG
from flexorch_provider import FlexOperator

with DAG("flex_recover_it", schedule=None, start_date=pendulum.datetime(2025, 1, 1)) as dag:
    FlexOperator(task_id="counts", deferrable=False, poll_interval=0.2, spec={{
        "name": "counter", "kind": "training", "target": "ssh", "run": {counter!r},
        "checkpoint_dir": {shared!r}, "retries": {{"count": 0, "recover": 2, "recover_delay": "1s"}},
        "ssh": {{"connection": {conn!r}, "hosts": {hosts!r}}}}})
    FlexOperator(task_id="user_error", deferrable=False, poll_interval=0.2, spec={{
        "name": "broken", "kind": "batch", "target": "ssh", "run": "echo broken; exit 1",
        "retries": {{"count": 0, "recover": 2, "recover_delay": "1s"}},
        "ssh": {{"connection": {conn!r}, "hosts": {hosts!r}}}}})
"""


def controller_log(cluster, lines: int = 30) -> list[str]:
    """The end of slurmctld's log, for a failure's message."""
    try:
        return (cluster.base / "slurmctld.log").read_text().splitlines()[-lines:]
    except OSError as e:
        return [f"no slurmctld.log: {e}"]


@pytest.fixture
def shared():
    """Storage both hosts mount (here: one folder); its accounts differ, a real fleet's would not."""
    folder = Path(tempfile.mkdtemp(prefix="flexorch-ckpt-"))
    folder.chmod(0o777)
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=False)


def test_a_host_lost_mid_run_goes_on_elsewhere_from_its_checkpoint_in_the_same_try(
    ssh_fleet, restart_host, shared, capfd
):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    first, second = ssh_fleet.hosts[2], ssh_fleet.hosts[3]
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "flex_recover_it_dag.py"
    path.write_text(textwrap.dedent(DAG_FILE.format(counter=COUNTER, shared=str(shared), conn=FLEET_CONN,
                                                    hosts=[first.entry, second.entry])))  # fmt: skip
    db.resetdb()
    bag = DagBag(str(path))
    assert not bag.import_errors, bag.import_errors

    def kill_when_five_steps_are_kept() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            steps = [p for p in shared.glob("*/step") if p.read_text().strip().isdigit()]
            if steps and int(steps[0].read_text()) >= 5:
                subprocess.run(["chmod", "-R", "a+rwX", str(shared)], check=True)  # one account on a real fleet
                restart_host(first)
                first.kill()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_five_steps_are_kept, daemon=True)
    killer.start()
    run = bag.get_dag("flex_recover_it").test(logical_date=pendulum.datetime(2025, 5, 6, tz="UTC"))
    killer.join(5)
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    counts = tis["counts"]
    assert counts.state == "success" and counts.try_number == 1, counts.state
    log = capfd.readouterr().out  # dag.test writes the task log to stdout
    print(
        "\n".join(line for line in log.splitlines() if "start at" in line or "recovery" in line or "finished" in line)
    )
    assert "recovery 1 of 2 (not counted in retries)" in log, log[-4000:]
    starts = [line for line in log.splitlines() if "start at step " in line]
    assert len(starts) == 2 and "start at step 0, restart 0 (none)" in starts[0], starts
    resumed = int(starts[1].split("start at step ")[1].split(",")[0])
    assert resumed >= 5 and f"restart 1 (host_lost) as {second.user}" in starts[1], starts
    assert "finished" in log
    assert tis["user_error"].state == "failed"  # a failure of the job's own: no recovery
    assert log.count("submitting it again") == 1  # the job's own failure (user_error): no recovery


def start_counter(backend, kind: str, run: str = COUNTER, **fields):
    """The counter on Slurm (checkpoint in the home the nodes share), once it has counted to 4."""
    w = load_workload({"name": "counter", "kind": "training", "target": "slurm", "run": run,
                       "checkpoint_dir": ".flexorch/test-checkpoints", **fields})  # fmt: skip
    job = ResolvedJob.for_run(w, f"d/{kind}/{time.time_ns()}/-1", env={"FLEXORCH_RESTART_COUNT": "0",
                                                                       "FLEXORCH_RESTART_CAUSE": ""})  # fmt: skip
    handle = backend.submit(job)
    deadline = time.time() + 90
    while time.time() < deadline and not any(line.startswith("step 4") for line in all_lines(backend, handle)):
        time.sleep(0.2)
    return handle


def nudge_when_pending(backend, handle) -> None:
    """Slurm holds a requeued job back two minutes (BeginTime): once it is pending again, an operator's
    nudge (not within the second of the requeue: slurmd refuses a credential revoked that second, and
    the job fails)."""
    deadline = time.time() + 60
    while backend.poll([handle])[handle.job_id].state != JobState.PENDING and time.time() < deadline:
        time.sleep(0.2)
    assert backend.poll([handle])[handle.job_id].state == JobState.PENDING, all_lines(backend, handle)
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={handle.job_id}", "StartTime=now"], check=True, capture_output=True)


def test_a_requeued_slurm_job_goes_on_from_its_checkpoint(slurm_cluster, tmp_path):
    """scontrol requeue (what a preemption with PreemptMode=REQUEUE does): the same job id runs again,
    its output appended, FLEXORCH_RESTART_COUNT counting the requeue."""
    backend = SlurmBackend()
    handle = start_counter(backend, "requeue")
    subprocess.run(["scontrol", "requeue", handle.job_id], check=True, capture_output=True)
    nudge_when_pending(backend, handle)
    seen: list = []
    status = wait_finished(backend, handle, 180, seen=seen)
    lines = all_lines(backend, handle)
    assert status.state == JobState.SUCCEEDED, "\n".join(
        [*lines, *map(repr, seen[-5:]), *controller_log(slurm_cluster)]
    )
    starts = [line for line in lines if line.startswith("start at step")]
    print("\n".join(starts))
    assert len(starts) == 2 and starts[0].startswith("start at step 0, restart 0"), lines
    assert int(starts[1].split("start at step ")[1].split(",")[0]) >= 4 and "restart 1 (requeued)" in starts[1]
    assert lines[-1] == "finished" or "finished" in lines


def test_a_preempted_slurm_job_is_warned_requeued_and_goes_on_from_its_checkpoint(slurm_cluster, tmp_path):
    """A job of partition urgent (PriorityTier 10) takes the node from a running job of partition gpu
    (PreemptMode=REQUEUE): Slurm sends the job SIGTERM (it says so, and KillWait later SIGKILL) and
    requeues it; it goes on from its checkpoint as restart 1 (requeued), same job id, in the same try."""
    backend = SlurmBackend()
    saver = "trap 'echo \"saving at step $step (SIGTERM)\"; exit 143' TERM\n" + COUNTER
    handle = start_counter(backend, "preempt", saver, slurm={"partition": "gpu"})
    # both of the node's CPUs: only the counter's going frees them
    urgent = subprocess.run(["sbatch", "--parsable", "--partition=urgent", "--cpus-per-task=2", "--output=/dev/null",
                             "--wrap", "sleep 1"], check=True, capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    try:
        nudge_when_pending(backend, handle)
        shown = subprocess.run(["scontrol", "show", "job", handle.job_id], capture_output=True, text=True).stdout
        assert "Restarts=1" in shown, shown
        seen: list = []
        status = wait_finished(backend, handle, 180, seen=seen)
    finally:
        subprocess.run(["scancel", urgent.stdout.strip()], capture_output=True)
    lines = all_lines(backend, handle)
    assert status.state == JobState.SUCCEEDED, "\n".join(
        [*lines, *map(repr, seen[-5:]), *controller_log(slurm_cluster)]
    )
    starts = [line for line in lines if line.startswith("start at step")]
    print("\n".join([*starts, *(x for x in lines if x.startswith("saving"))]))
    assert any(line.startswith("saving at step") for line in lines), lines  # the preemption's SIGTERM came first
    assert len(starts) == 2 and starts[0].startswith("start at step 0, restart 0"), lines
    assert int(starts[1].split("start at step ")[1].split(",")[0]) >= 4 and "restart 1 (requeued)" in starts[1]
    assert "finished" in lines
