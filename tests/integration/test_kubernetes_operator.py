"""FlexOperator on the kubernetes target through real Airflow (dag.test: task runner,
execution API and the deferred trigger in line) against the Kubernetes emulator."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pendulum
import pytest

from tests.conftest import KUBE_CONN
from tests.integration.kube import Behaviour

DAG_FILE = """
import pendulum
from airflow.sdk import DAG
from flexorch_provider import FlexOperator

def spec(name, **extra):
    return {{"name": name, "kind": "batch", "target": "kubernetes", "image": "python:3.11-slim",
             "run": "python -c 'print(1)' --day {{{{ ds }}}}",
             "kubernetes": {{"connection": {conn!r}, "namespace": "jobs"}}, **extra}}

with DAG("flex_k8s_it", schedule=None, start_date=pendulum.datetime(2025, 1, 1)) as dag:
    FlexOperator(task_id="k8s_ok", spec=spec("k8s-ok"), poll_interval=0.2)
    FlexOperator(task_id="k8s_fails", spec=spec("k8s-fails"), poll_interval=0.2)
    FlexOperator(task_id="k8s_evicted", poll_interval=0.2, spec=spec("k8s-evicted",
                 retries={{"recover": 2, "recover_delay": "1s"}}, checkpoint_dir="/ckpt",
                 kubernetes={{"connection": {conn!r}, "namespace": "jobs", "checkpoint_claim": "ckpt"}}))
"""


@pytest.fixture(scope="module")
def dag_run(kube_cluster):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    kube_cluster.behaviours["k8s-ok"] = Behaviour(log=["evaluating", "accuracy 0.91"], exit_code=0)
    kube_cluster.behaviours["k8s-fails"] = Behaviour(log=["CUDA out of memory"], exit_code=2)
    kube_cluster.behaviours["k8s-evicted"] = Behaviour(log=["step 1"], evict="EvictionByEvictionAPI")
    kube_cluster.core.create_namespaced_persistent_volume_claim("jobs", {"apiVersion": "v1",
        "kind": "PersistentVolumeClaim", "metadata": {"name": "ckpt", "namespace": "jobs"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})  # fmt: skip
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "flex_k8s_it_dag.py"
    path.write_text(textwrap.dedent(DAG_FILE.format(conn=KUBE_CONN)))
    db.resetdb()
    bag = DagBag(str(path))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["flex_k8s_it"].test(logical_date=pendulum.datetime(2025, 5, 6, tz="UTC"))


def test_kubernetes_tasks_succeed_and_fail_through_airflow(dag_run, kube_cluster):
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states == {"k8s_ok": "success", "k8s_fails": "failed", "k8s_evicted": "success"}
    jobs = kube_cluster.batch.list_namespaced_job("jobs").items
    ok = next(j for j in jobs if j.metadata.labels["flexorch.io/name"] == "k8s-ok")
    command = ok.spec.template.spec.containers[0].command
    assert command == ["/bin/sh", "-c", "python -c 'print(1)' --day 2025-05-06"]  # templated in the worker
    assert ok.metadata.annotations["flexorch.io/run-key"].startswith("flex_k8s_it/k8s_ok/")


def test_xcom_names_the_kubernetes_job(dag_run):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == "flex_k8s_it", XComModel.key == "return_value")
        values = {r.task_id: r.value for r in rows}
    ok = values["k8s_ok"] if isinstance(values["k8s_ok"], dict) else json.loads(values["k8s_ok"])
    assert ok["target"] == "kubernetes" and ok["state"] == "succeeded" and ok["exit_code"] == 0


def test_an_evicted_pod_is_recovered_in_the_same_try_on_the_same_claim(dag_run, kube_cluster):
    """The cluster evicts the first pod: the task submits a new Job (not a retry), which knows it is
    restart 1 after an eviction and mounts the same folder of the same claim."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    ti = next(t for t in dag_run.get_task_instances() if t.task_id == "k8s_evicted")
    assert ti.try_number == 1
    jobs = [j for j in kube_cluster.batch.list_namespaced_job("jobs").items
            if j.metadata.labels["flexorch.io/name"] == "k8s-evicted"]  # fmt: skip
    evicted = kube_cluster.behaviours["k8s-evicted"].evicted
    assert len(jobs) == 2 and len(evicted) == 1 and evicted[0] in {j.metadata.name for j in jobs}
    second = next(j for j in jobs if j.metadata.name not in evicted)
    main = second.spec.template.spec.containers[0]
    env = {e.name: e.value for e in main.env}
    assert (env["FLEXORCH_RESTART_COUNT"], env["FLEXORCH_RESTART_CAUSE"]) == ("1", "evicted")
    paths = {tuple((m.mount_path, m.sub_path) for m in j.spec.template.spec.containers[0].volume_mounts) for j in jobs}
    assert len(paths) == 1  # both pods: the same folder of the claim
    with create_session() as session:
        row = session.query(XComModel).filter(XComModel.dag_id == "flex_k8s_it", XComModel.task_id == "k8s_evicted",
                                              XComModel.key == "flexorch_restarts").one()  # fmt: skip
    value = row.value if isinstance(row.value, dict) else json.loads(row.value)
    assert value == {"count": 1, "cause": "evicted"}
