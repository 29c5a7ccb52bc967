"""Capacity-aware targets on real servers: the real Slurm with its four fake A100s all held by a
long job, and ssh fleet hosts with stand-in L4s (two free on one host, both busy on another),
through dag.test() (the real task runner, execution API and trigger).

- target_policy first-free goes to ssh at once, and Slurm never sees the job;
- max_pending moves a job that waits on Slurm to ssh, from the worker and from the trigger, and
  Slurm shows the job it left CANCELLED;
- with every target full it keeps its place on Slurm and says so, and runs there once the GPUs
  are given back.
"""

from __future__ import annotations

import os
import textwrap
import threading
import time
from pathlib import Path

import pendulum
import pytest

from flexorch_provider.backends.base import ResolvedJob
from flexorch_provider.backends.slurm import SlurmBackend
from flexorch_provider.resolve import load_workload
from tests.conftest import FLEET_CONN

L4_PAIR = ("0, GPU-0b1c2d3e-0000-4000-8000-00000000bb01, NVIDIA L4, 23034, 0, 0\n"
           "1, GPU-0b1c2d3e-0000-4000-8000-00000000bb02, NVIDIA L4, 23034, 0, 0\n")  # fmt: skip
BOTH_BUSY = ("GPU-0b1c2d3e-0000-4000-8000-00000000bb01, 4242, 1000\n"
             "GPU-0b1c2d3e-0000-4000-8000-00000000bb02, 4243, 1000\n")  # fmt: skip

DAG_FILE = """
import pendulum
from airflow.sdk import DAG
from flexorch_provider import FlexOperator

def spec(host, **extra):
    return {{"name": "t", "kind": "training", "run": "echo ran on $FLEXORCH_RUN_DIR with GPU $CUDA_VISIBLE_DEVICES",
             "target": ["slurm", "ssh"], "resources": {{"gpus": 1}},
             "ssh": {{"connection": {conn!r}, "hosts": [host]}}, **extra}}

with DAG("choice_it", schedule=None, start_date=pendulum.datetime(2025, 1, 1)) as dag:
    a = FlexOperator(task_id="first_free", spec=spec({free!r}, target_policy="first-free"), poll_interval=0.5)
    b = FlexOperator(task_id="spill_worker", spec=spec({free!r}, max_pending=3), deferrable=False,
                     poll_interval=0.5)
    c = FlexOperator(task_id="spill_trigger", spec=spec({free!r}, max_pending=3), defer_after=0,
                     poll_interval=0.5)
    d = FlexOperator(task_id="all_full", spec=spec({busy!r}, max_pending=2), deferrable=False,
                     poll_interval=0.5, trigger_rule="all_done")
    a >> b >> c >> d
"""


def _hog() -> ResolvedJob:
    w = load_workload({"name": "hog", "kind": "batch", "target": "slurm", "run": "sleep 600",
                       "resources": {"gpus": "A100:4"}})  # fmt: skip
    return ResolvedJob(run_key=f"choice/hog/{time.time_ns()}/-1", name="hog", kind="batch", workload=w, run=w.run)


def _wait(what, check, seconds=60.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def run(slurm_cluster, ssh_fleet):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    free, busy = ssh_fleet.hosts[1], ssh_fleet.hosts[2]
    free.fake_nvidia_smi(L4_PAIR)
    busy.fake_nvidia_smi(L4_PAIR, BOTH_BUSY)
    slurm = SlurmBackend()
    hog = slurm.submit(_hog())
    released = {}

    def release_when_all_full_has_waited():
        """Give the GPUs back once all_full has waited past max_pending on Slurm (and been told no
        other target has room): then it runs there."""
        try:
            _wait("all_full pending on Slurm", lambda: [j for j in slurm_cluster.live_jobs()
                                                        if "all-full" in j and "PENDING" in j], 600)  # fmt: skip
            time.sleep(2 + 8)
            released["at"] = time.time()
        finally:
            slurm.cancel(hog)

    releaser = threading.Thread(target=release_when_all_full_has_waited, daemon=True)
    try:
        _wait("the hog to hold every GPU", lambda: any("RUNNING" in j for j in slurm_cluster.live_jobs()))
        releaser.start()
        dags_folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
        (dags_folder / "choice_it_dag.py").write_text(
            textwrap.dedent(DAG_FILE.format(conn=FLEET_CONN, free=free.entry, busy=busy.entry))
        )
        db.resetdb()
        bag = DagBag(str(dags_folder))
        assert not bag.import_errors, bag.import_errors
        dr = bag.get_dag("choice_it").test(logical_date=pendulum.datetime(2025, 3, 4, tz="UTC"))
        releaser.join(timeout=30)
        yield dr, released, free
    finally:
        slurm.cancel(hog)
        free.fake_nvidia_smi(None)
        busy.fake_nvidia_smi(None)
        (Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "choice_it_dag.py").unlink(missing_ok=True)


def _xcom(dr, task_id, key="return_value"):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id=dr.dag_id, run_id=dr.run_id, task_id=task_id, key=key).one()
        return row.value


def _states(dr):
    return {ti.task_id: ti.state for ti in dr.get_task_instances()}


def _slurm_state(slurm_cluster, job_id):
    return {line.split("|")[0]: line.split("|")[2] for line in slurm_cluster.jobs()}.get(job_id)


def test_first_free_goes_where_gpus_are_free_and_slurm_never_sees_it(run, slurm_cluster):
    dr, _, free = run
    assert _states(dr)["first_free"] == "success"
    assert _xcom(dr, "first_free")["target"] == "ssh"
    choice = _xcom(dr, "first_free", "job")["choice"]
    seen = {s["target"]: s for s in choice["seen"]}
    assert seen["slurm"]["fits"] is False and seen["slurm"]["detail"].startswith("0 of 4 GPUs free (A100 ×4)")
    assert seen["ssh"]["fits"] is True and seen["ssh"]["detail"].endswith(f"on 1 node: {free.entry}")
    assert choice["chosen"] == "ssh" and choice["moves"] == []
    assert not [j for j in slurm_cluster.jobs() if "first-free" in j]


@pytest.mark.parametrize("task", ["spill_worker", "spill_trigger"])
def test_max_pending_moves_a_waiting_job_from_slurm_to_ssh_and_cancels_it_there(run, slurm_cluster, task):
    dr, _, _ = run
    assert _states(dr)[task] == "success"
    assert _xcom(dr, task)["target"] == "ssh"
    (move,) = _xcom(dr, task, "job")["choice"]["moves"]
    assert (move["from"], move["to"]) == ("slurm", "ssh")
    assert "Resources" in move["reason"]  # the scheduler's reason, as squeue gave it
    assert _slurm_state(slurm_cluster, move["job_id"]) == "CANCELLED"
    assert not [j for j in slurm_cluster.live_jobs() if task.replace("_", "-") in j]


def test_with_every_target_full_it_keeps_its_place_on_slurm_and_runs_there(run, slurm_cluster):
    dr, released, _ = run
    assert _states(dr)["all_full"] == "success"
    assert _xcom(dr, "all_full")["target"] == "slurm"
    choice = _xcom(dr, "all_full", "job")["choice"]
    assert choice["moves"] == [] and choice["stays"], choice
    stay = choice["stays"][0]
    assert stay["on"] == "slurm" and "Resources" in stay["reason"]
    assert stay["seen"][0]["target"] == "ssh" and stay["seen"][0]["fits"] is False
    assert stay["at"] < released["at"]  # it was told "no room" before the GPUs came back
