"""FlexOperator on the ssh target through real Airflow (dag.test: task runner, execution
API and the deferred trigger in line) against the real sshd fleet."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pendulum
import pytest

from tests.integration.conftest import FLEET_CONN

DAG_FILE = """
import pendulum
from airflow.sdk import DAG
from flexorch_provider import FlexOperator, FlexServiceOperator

def spec(run, **extra):
    return {{"name": "s", "kind": "batch", "target": "ssh", "run": run,
             "ssh": {{"connection": {conn!r}, "hosts": {hosts!r}}}, **extra}}

with DAG("flex_ssh_it", schedule=None, start_date=pendulum.datetime(2025, 1, 1)) as dag:
    FlexOperator(task_id="remote_ok", spec=spec("echo remote day {{{{ ds }}}} on $(whoami)"), poll_interval=0.2)
    FlexOperator(task_id="remote_sync", spec=spec("echo sync"), deferrable=False, poll_interval=0.2)
    FlexOperator(task_id="remote_fails", spec=spec("echo boom; exit 5"), poll_interval=0.2)

    svc = {{"name": "it-svc", "kind": "service", "target": "ssh", "replicas": 2,
           "run": "echo serving day {{{{ ds }}}}; exec sleep 600",
           "health": {{"command": "true", "grace": "10s"}},
           "ssh": {{"connection": {conn!r}, "hosts": {svc_hosts!r}}}}}
    deploy = FlexServiceOperator(task_id="svc_deploy", spec=svc)
    undeploy = FlexServiceOperator(task_id="svc_undeploy", spec=svc, action="undeploy")
    deploy >> undeploy
"""


@pytest.fixture(scope="module")
def dag_run(ssh_fleet):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    dags_folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    path = dags_folder / "flex_ssh_it_dag.py"
    # the dead host first: every task must skip it and land on the live one
    hosts = [ssh_fleet.hosts[0].entry + ":1", ssh_fleet.hosts[0].entry]
    svc_hosts = ssh_fleet.entries(2)
    path.write_text(textwrap.dedent(DAG_FILE.format(conn=FLEET_CONN, hosts=hosts, svc_hosts=svc_hosts)))
    db.resetdb()
    bag = DagBag(str(path))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag("flex_ssh_it").test(logical_date=pendulum.datetime(2025, 5, 6, tz="UTC"))


def test_ssh_tasks_succeed_and_fail_through_airflow(dag_run):
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states == {
        "remote_ok": "success", "remote_sync": "success", "remote_fails": "failed",
        "svc_deploy": "success", "svc_undeploy": "success",
    }  # fmt: skip


def test_xcom_names_the_ssh_job(dag_run, ssh_fleet):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == "flex_ssh_it", XComModel.key == "return_value")
        values = {r.task_id: r.value for r in rows}
    ok = values["remote_ok"]
    ok = ok if isinstance(ok, dict) else __import__("json").loads(ok)
    assert ok["target"] == "ssh" and ok["state"] == "succeeded" and ok["exit_code"] == 0
    assert ok["job_id"].endswith("@" + ssh_fleet.hosts[0].entry)  # the dead first host was skipped


def test_a_service_deploys_and_undeploys_through_airflow(dag_run, ssh_fleet):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == "flex_ssh_it", XComModel.key == "return_value")
        values = {r.task_id: r.value for r in rows}
    deployed = values["svc_deploy"]
    deployed = deployed if isinstance(deployed, dict) else __import__("json").loads(deployed)
    assert deployed["target"] == "ssh" and deployed["action"] == "deploy" and deployed["service"] == "it-svc"
    assert [r["host"] for r in deployed["replicas"]] == ssh_fleet.entries(2)
    # the replicas logged the templated day, and undeploy stopped them
    for host in ssh_fleet.hosts[:2]:
        logs = list((host.home / ".flexorch" / "services").glob("service-it-svc-*/.retired/*/1/log"))
        assert logs and "serving day 2025-05-06" in logs[-1].read_text()
        assert not host.processes("sleep 600")
